//! Running commands, with failures that say what ran and what it printed.

use std::process::{Command, Output};

/// Runs `argv`, panicking with its stderr if it fails. Returns stdout.
pub fn run(argv: &[&str]) -> String {
    let out = output(argv);
    if !out.status.success() {
        panic!(
            "`{}` failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `argv` and returns its output whatever the exit status.
pub fn output(argv: &[&str]) -> Output {
    let (prog, args) = argv.split_first().expect("empty command");
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawning `{}`: {e}", argv.join(" ")))
}

/// Runs `argv`, ignoring failure (for clean-up paths).
pub fn run_quiet(argv: &[&str]) {
    let _ = output(argv);
}

/// Stops a child we spawned: `signal` by PID, up to `grace` to exit, then
/// SIGKILL. Never matches processes by name.
pub fn stop_child(child: &mut std::process::Child, signal: i32, grace: std::time::Duration) {
    // SAFETY: kill has no memory-safety preconditions; the PID is our child's.
    unsafe { libc::kill(child.id() as i32, signal) };
    let start = std::time::Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
