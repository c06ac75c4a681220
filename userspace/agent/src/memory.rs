//! The agent's allocator: mimalloc (`main.rs` makes it the global
//! allocator).
//!
//! At 4,000 nodes and 100,000 pods the agent's cold start is mostly
//! allocation: parsing the lists, building the models, the Maglev tables
//! and the policy state, then freeing the temporaries. glibc's malloc,
//! even tuned (one arena, fixed mmap and trim thresholds, a trim after the
//! sync), spent much of that time in malloc/free and kept ~60 MiB of freed
//! but fragmented memory. mimalloc's size-class pages make the same work
//! cheaper: cold start 7.6 -> 4.5 s, the initial sync 3.8 -> 2.1 s, and
//! every change's p99 lower (docs/performance.md, "mimalloc").
//!
//! Transparent huge pages are off for the agent ([`no_huge_pages`]):
//! mimalloc asks for them on its arenas, and a 2 MiB page stays resident
//! while any 4 KiB of it is live, so the heap's holes after the initial
//! load cost whole huge pages (10-16 MiB of RSS at 100,000 pods). The
//! agent is a control plane: its maps are small enough for the TLB it has.

use std::ptr::null_mut;

// mimalloc's own API (mimalloc.h), linked by `libmimalloc-sys` with the
// allocator itself; declared here rather than through its `extended`
// feature, which pulls a crate only for C type aliases.
extern "C" {
    fn mi_collect(force: bool);
    fn mi_process_info(
        elapsed_msecs: *mut usize,
        user_msecs: *mut usize,
        system_msecs: *mut usize,
        current_rss: *mut usize,
        peak_rss: *mut usize,
        current_commit: *mut usize,
        peak_commit: *mut usize,
        page_faults: *mut usize,
    );
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`,
/// which also covers memory mimalloc madvised for them). Called first
/// thing in `main`: mimalloc's first arena exists by then, but holds only
/// what the runtime allocated before `main` (huge pages appear on first
/// touch, and almost none of it is touched yet).
pub fn no_huge_pages() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Returns freed memory to the OS at once (after the initial load: the
/// parsing garbage and the lists' buffers; after a burst of changes, once
/// idle) rather than at the allocator's next busy moment: mimalloc purges
/// its delayed frees only as it allocates again.
pub fn release_freed() {
    // SAFETY: mi_collect only walks mimalloc's own structures; forcing
    // it is allowed from any thread.
    unsafe { mi_collect(true) };
}

/// What the allocator holds, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Memory the allocator has committed now (its estimate of its
    /// resident set).
    pub committed: usize,
    /// The most it ever had committed (the initial load's peak).
    pub peak_committed: usize,
}

/// The allocator's usage now (`mi_process_info`).
pub fn usage() -> Usage {
    let (mut committed, mut peak_committed) = (0usize, 0usize);
    // SAFETY: every out-parameter is either null (not wanted) or a valid
    // usize the call writes.
    unsafe {
        mi_process_info(null_mut(), null_mut(), null_mut(), null_mut(), null_mut(), &mut committed, &mut peak_committed, null_mut());
    }
    Usage { committed, peak_committed }
}

#[cfg(test)]
mod tests {
    #[test]
    fn huge_pages_are_off_for_the_process() {
        super::no_huge_pages().expect("prctl");
        // SAFETY: PR_GET_THP_DISABLE takes no pointer.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
        assert_eq!(flag, 1);
    }
}
