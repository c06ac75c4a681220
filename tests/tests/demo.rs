//! `cargo xtask demo` is a smoke test as well as a demo: it exits
//! non-zero when a step does not show what it claims. This runs it as
//! the user would (the binary `cargo xtask demo` runs) and checks that
//! every step ran.

use std::process::Command;

#[test]
fn the_demo_shows_every_step_and_exits_0() {
    weir_tests::privileged::require();
    let out = Command::new(env!("CARGO_BIN_EXE_weir-demo")).output().expect("run weir-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the demo failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    for n in 1..=7 {
        assert!(stdout.contains(&format!("\n=== {n}. ")), "step {n} missing:\n{stdout}");
    }
    assert!(!stdout.contains("FAILED") && stdout.matches("    ok: ").count() >= 15, "every claim checked:\n{stdout}");
    // The logs it keeps for a user are this test's to remove.
    let logs = stdout.lines().find_map(|l| l.split_once("the agents' logs: ").map(|(_, p)| p.trim().to_string())).expect("the logs' directory is printed");
    assert!(std::path::Path::new(&logs).join("node0.agent.log").is_file(), "{logs}");
    std::fs::remove_dir_all(&logs).expect("remove the demo's logs");
}
