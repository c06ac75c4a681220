//! Waiting for a condition the datapath or the agent reaches on its own.

use std::time::{Duration, Instant};

/// Waits until `f` holds, polling every 20 ms; panics naming `what`
/// after 10 s.
pub fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}
