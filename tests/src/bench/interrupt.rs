//! Stopping a benchmark run half-way without leaving its topology behind.
//!
//! A run's namespaces, veths, pins, cgroups and agents are removed when
//! the values that own them drop. A SIGINT or SIGTERM that killed the
//! process would skip that, and leave an agent programming a namespace
//! nobody measures. Instead, once [`install`] has run, the first signal
//! only raises a flag; [`check`], called between slices, then unwinds the
//! run, so every owner drops and cleans up. A second signal exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What the handler writes to stderr on the first signal.
const STOPPING: &[u8] = b"\ninterrupted: stopping after this step and removing what the run created (again to quit at once)\n";

extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap, write(2), _exit(2).
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
    // SAFETY: write(2) of a static buffer to stderr is async-signal-safe.
    unsafe { libc::write(2, STOPPING.as_ptr().cast(), STOPPING.len()) };
}

/// Routes SIGINT and SIGTERM to the flag [`check`] reads.
pub fn install() -> nix::Result<()> {
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
    if INTERRUPTED.load(Ordering::SeqCst) {
        std::panic::resume_unwind(Box::new(Interrupted));
    }
}

/// Whether [`check`] will unwind.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
