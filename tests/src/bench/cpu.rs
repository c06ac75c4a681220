//! Where the benchmark's threads run. On a 2-core machine the load
//! generator and the backends' servers left to the scheduler meet a
//! different placement in every slice (in one cell, 32 keep-alive
//! connections swung between about 70k and 115k requests/s from slice to
//! slice), which buries the dataplanes' differences. The load generator
//! runs on CPU 0 and every server on CPU 1, on every dataplane and both
//! sides of every pair alike.

/// The CPU the client pod's load generators run on.
const LOAD_GENERATOR: usize = 0;
/// The CPU the backends' servers run on.
const SERVERS: usize = 1;

/// The calling thread's placement until this drops, when it is restored.
pub struct Pinned {
    before: Option<libc::cpu_set_t>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(set) = &self.before {
            // SAFETY: a cpu_set_t read by sched_getaffinity, of its own size.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
        }
    }
}

/// Runs the calling thread on the load generator's CPU.
pub fn load_generator() -> Pinned {
    pin(LOAD_GENERATOR)
}

/// Runs the calling thread on the servers' CPU.
pub fn servers() -> Pinned {
    pin(SERVERS)
}

/// Pins the calling thread to `cpu` when it may run there and on another
/// CPU too; else (one CPU, or `cpu` not among its CPUs) leaves it, and so
/// does a failure.
fn pin(cpu: usize) -> Pinned {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills
    // it, CPU_ISSET and CPU_SET read and write inside it for a cpu below
    // CPU_SETSIZE, and sched_setaffinity reads it; each call gets the
    // set's own size.
    unsafe {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut before) != 0 || !libc::CPU_ISSET(cpu, &before) || libc::CPU_COUNT(&before) < 2 {
            return Pinned { before: None };
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size, &set) != 0 {
            return Pinned { before: None };
        }
        Pinned { before: Some(before) }
    }
}

#[cfg(test)]
mod tests {
    /// The CPUs the calling thread may run on.
    fn affinity() -> Vec<usize> {
        // SAFETY: a zeroed cpu_set_t filled by sched_getaffinity, of its own
        // size, and CPU_ISSET reads inside it below CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
            (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
        }
    }

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_and_gets_its_placement_back() {
        std::thread::spawn(|| {
            let before = affinity();
            for (pin, cpu) in [(super::load_generator as fn() -> super::Pinned, super::LOAD_GENERATOR), (super::servers, super::SERVERS)] {
                {
                    let _p = pin();
                    let want = if before.len() >= 2 && before.contains(&cpu) { vec![cpu] } else { before.clone() };
                    assert_eq!(affinity(), want, "pinned for CPU {cpu}");
                }
                assert_eq!(affinity(), before, "restored after CPU {cpu}");
            }
        })
        .join()
        .expect("the pinning thread");
    }
}
