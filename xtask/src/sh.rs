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

/// Lines kept of each failed test's output, from its panic on.
const DIGEST_LINES: usize = 8;
/// Characters kept of each of those lines.
const DIGEST_WIDTH: usize = 240;

/// Totals over every `test result:` line cargo test printed, and the
/// first lines of each failed test's panic (printed again at the end of
/// the run, where a reader of only its last lines finds them).
#[derive(Debug, Default)]
pub struct TestSummary {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Each failed test and the start of its panic message.
    pub failures: Vec<(String, Vec<String>)>,
    /// Inside a `---- <test> stdout ----` block: the lines seen since its
    /// panic line (`None` before it).
    open: Option<(String, Option<Vec<String>>)>,
}

impl TestSummary {
    /// Adds one line of cargo test's output: a `test result: ok. 3 passed;
    /// 0 failed; 1 ignored; ...` line, or a line of a failure's output.
    pub fn add_line(&mut self, line: &str) {
        if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
            self.close();
            self.open = Some((name.to_string(), None));
            return;
        }
        // The list of names ends the outputs; a backtrace (RUST_BACKTRACE)
        // ends what is worth repeating.
        if self.open.is_some() && (line == "failures:" || line.starts_with("test result:") || line.trim_start().starts_with("stack backtrace:")) {
            self.close();
        }
        if let Some((_, kept)) = &mut self.open {
            match kept {
                None if line.contains("panicked at") => *kept = Some(vec![line.chars().take(DIGEST_WIDTH).collect()]),
                Some(k) if k.len() < DIGEST_LINES => k.push(line.chars().take(DIGEST_WIDTH).collect()),
                _ => {}
            }
        }
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

    fn close(&mut self) {
        if let Some((name, kept)) = self.open.take() {
            self.failures.push((name, kept.unwrap_or_default()));
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

    #[test]
    fn keeps_the_start_of_each_failed_tests_panic() {
        let mut s = TestSummary::default();
        for l in [
            "failures:",
            "",
            "---- a::first stdout ----",
            "some log line",
            "",
            "thread 'a::first' (12) panicked at tests/tests/a.rs:3:5:",
            "the thing failed: 3",
            "stack backtrace:",
            "   0: __rustc::rust_begin_unwind",
            "---- a::second stdout ----",
            "thread 'a::second' (13) panicked at tests/tests/a.rs:9:5:",
            "timed out",
            "",
            "failures:",
            "    a::first",
            "    a::second",
            "",
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        ] {
            s.add_line(l);
        }
        let names: Vec<&str> = s.failures.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a::first", "a::second"]);
        assert_eq!(s.failures[0].1, ["thread 'a::first' (12) panicked at tests/tests/a.rs:3:5:", "the thing failed: 3"]);
        assert_eq!(s.failures[1].1[1], "timed out");
        assert_eq!(s.failed, 2);
    }
}
