//! Privileged tests need root and a bpffs. They never pass while skipped:
//! a test that cannot run fails, and says what it needs.

use std::path::Path;

/// Panics unless this process can create namespaces and load BPF programs.
pub fn require() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let ci = std::env::var("WEIR_PRIVILEGED_TESTS").is_ok_and(|v| v == "1");
    let why = if euid != 0 {
        Some("this test needs root (network namespaces, BPF)".to_string())
    } else if !Path::new("/sys/fs/bpf").is_dir() || !is_bpffs(Path::new("/sys/fs/bpf")) {
        Some("/sys/fs/bpf is not a mounted bpffs".to_string())
    } else {
        None
    };
    if let Some(why) = why {
        panic!(
            "privileged test cannot run: {why}. Run `cargo xtask test` as root{}",
            if ci { " (WEIR_PRIVILEGED_TESTS=1)" } else { "" }
        );
    }
}

fn is_bpffs(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else { return false };
    // SAFETY: zeroed statfs buffer we own; NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    rc == 0 && magic == 0xcafe_4a11
}
