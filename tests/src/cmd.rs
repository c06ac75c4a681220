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
