//! Running commands, loudly.

use std::process::Command;

use anyhow::{bail, Context as _};

pub fn step(what: &str) {
    eprintln!("==> {what}");
}

pub fn run(prog: &str, args: &[&str]) -> anyhow::Result<()> {
    run_env(prog, args, &[])
}

pub fn run_env(prog: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let status = Command::new(prog)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {prog}"))?;
    if !status.success() {
        bail!("`{prog} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Runs a command and returns its stdout, or `None` if it could not run or failed.
pub fn output(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`output`] but returns stdout whatever the exit status.
pub fn output_any(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Totals over every `test result:` line cargo test printed.
#[derive(Debug, Default)]
pub struct TestSummary {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestSummary {
    /// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else { return };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let n = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
            match words.last().copied() {
                Some("passed") => self.passed += n(words.len() - 2),
                Some("failed") => self.failed += n(words.len() - 2),
                Some("ignored") => self.ignored += n(words.len() - 2),
                _ => {}
            }
        }
    }
}

/// Runs cargo test, echoing its output as it comes and totalling the results.
pub fn run_tests(prog: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(bool, TestSummary)> {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new(prog)
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {prog}"))?;
    let mut summary = TestSummary::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading test output")?;
            println!("{line}");
            summary.add_line(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((status.success(), summary))
}

#[cfg(test)]
mod tests {
    use super::TestSummary;

    #[test]
    fn sums_cargo_test_result_lines() {
        let mut s = TestSummary::default();
        s.add_line("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        s.add_line("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        s.add_line("running 3 tests");
        assert_eq!((s.passed, s.failed, s.ignored), (4, 2, 1));
    }
}
