//! Stopping a benchmark run half-way without leaving its topology behind.
//!
//! A run's namespaces, veths, pins, cgroups and agents are removed when
//! the values that own them drop. A SIGINT or SIGTERM that killed the
//! process would skip that, and leave an agent programming a namespace
//! nobody measures. Instead, once [`install`] has run, the first signal
//! only raises a flag; [`check`], called between slices, then unwinds the
//! run, so every owner drops and cleans up. A second signal exits at once.
//!
//! A Ctrl-C at a terminal reaches the run's children too (the agents,
//! iperf3, the servers: they share the terminal's process group, so that
//! nothing outlives a killed run), and they exit at once; a step under
//! way may then fail on the way to [`check`]. Such a failure after a
//! signal unwinds the same way and is reported as the interruption it is,
//! without a panic message. `kill -INT <pid>` of the benchmark alone lets
//! the step under way finish.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What the handler writes to stderr on the first signal.
const STOPPING: &[u8] = b"\ninterrupted: stopping after this step and removing what the run created (again to quit at once)\n";

extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap, write(2), _exit(2),
    // and errno kept for the code the signal interrupted.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
    // SAFETY: __errno_location is the thread's errno; write(2) of a static
    // buffer to stderr is async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(2, STOPPING.as_ptr().cast(), STOPPING.len());
        *libc::__errno_location() = errno;
    }
}

/// Routes SIGINT and SIGTERM to the flag [`check`] reads, and keeps the
/// panic messages of whatever fails after one arrived (see the module).
pub fn install() -> nix::Result<()> {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !interrupted() {
            report(info);
        }
    }));
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler does only async-signal-safe work.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// The payload [`check`] unwinds with, which `weir-bench` turns into exit
/// status 130.
#[derive(Debug)]
pub struct Interrupted;

/// Unwinds the calling thread if a signal arrived since [`install`]; a
/// no-op when nothing was installed (tests).
pub fn check() {
    if interrupted() {
        std::panic::resume_unwind(Box::new(Interrupted));
    }
}

/// Whether a signal arrived since [`install`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Runs a benchmark binary's `measure` with SIGINT and SIGTERM routed to
/// [`check`]: a run they stop unwinds out of `measure` (every topology
/// dropped and removed on the way), and the process then exits with
/// status 130, as a shell expects of an interrupted command; so does a
/// run that failed after a signal. `bin` names the binary in its messages.
pub fn run<T>(bin: &str, measure: impl FnOnce() -> T) -> T {
    if let Err(e) = install() {
        eprintln!("{bin}: routing SIGINT and SIGTERM: {e}");
        std::process::exit(1);
    }
    // AssertUnwindSafe: nothing `measure` touched is used after an unwind;
    // the process exits.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(measure)) {
        Ok(v) => v,
        Err(payload) if payload.is::<Interrupted>() || interrupted() => {
            eprintln!("{bin}: interrupted; nothing written");
            std::process::exit(130);
        }
        Err(payload) => std::panic::resume_unwind(payload),
    }
}
