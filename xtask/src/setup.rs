//! Installs what a fresh machine lacks. Idempotent; when everything is
//! present it only looks, which takes well under a few seconds.

use anyhow::bail;

use crate::sh;

/// Debian packages weir's build, tests, benchmarks and demo need.
const DEB_PACKAGES: &[&str] = &[
    // bpf-linker against LLVM 22 (matches rustc's LLVM).
    "llvm-22-dev",
    "libpolly-22-dev",
    "clang-22",
    "libzstd-dev",
    "zlib1g-dev",
    // Networking, tests and benchmarks.
    "iproute2",
    "iptables",
    "nftables",
    "bpftool",
    "ethtool",
    "tcpdump",
    "iputils-ping",
    "iperf3",
    "wrk",
    "hyperfine",
    // Text in the benchmark plots.
    "fonts-dejavu-core",
    // Container runtime for the CNI tests.
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    // The Helm chart tests run Helm's own SDK from Python (a virtualenv).
    "python3",
    "python3-venv",
];

/// helm-python-sdk (Helm v4's Go SDK as a shared library): the chart tests
/// render and lint with it, no helm binary. Installed into its own
/// virtualenv, which `weir_tests::manifests::helm_python` finds.
const HELM_SDK: &str = "helm-python-sdk==0.2.2";
const HELM_SDK_VENV: &str = ".cache/weir/helm-sdk-0.2.2";

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    sh::step("setup: checking what this machine lacks");
    let root = is_root();
    let missing_debs = missing_packages();
    let bpffs = bpffs_mounted();
    if !root && (!missing_debs.is_empty() || !bpffs) {
        let mut need = Vec::new();
        if !missing_debs.is_empty() {
            need.push(format!("Debian packages: {}", missing_debs.join(" ")));
        }
        if !bpffs {
            need.push("bpffs mounted at /sys/fs/bpf".to_string());
        }
        bail!(
            "setup needs root to install:\n  - {}\nRun it as root (e.g. `sudo -E env PATH=$PATH cargo xtask setup`).",
            need.join("\n  - ")
        );
    }
    if !missing_debs.is_empty() {
        sh::step(&format!("setup: installing {}", missing_debs.join(" ")));
        sh::run("apt-get", &["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(missing_debs.iter().map(String::as_str));
        sh::run_env("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])?;
    }
    if !has_nightly() {
        sh::step("setup: installing the nightly toolchain (minimal)");
        sh::run("rustup", &["toolchain", "install", "nightly", "--profile", "minimal"])?;
    }
    if !has_rust_src() {
        sh::step("setup: adding rust-src to nightly (for -Z build-std=core)");
        sh::run("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"])?;
    }
    if !has_bpf_linker() {
        sh::step(&format!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"));
        let spec = format!("bpf-linker@{BPF_LINKER_VERSION}");
        sh::run_env(
            "cargo",
            &["install", "--force", &spec, "--no-default-features", "--features", "llvm-22"],
            &[("LLVM_PREFIX", LLVM_PREFIX)],
        )?;
    }
    let venv = helm_sdk_venv();
    if !has_helm_sdk(&venv) {
        sh::step(&format!("setup: installing {HELM_SDK} into {}", venv.display()));
        let dir = venv.to_str().unwrap_or_default();
        sh::run("python3", &["-m", "venv", dir])?;
        let pip = venv.join("bin/pip");
        sh::run(pip.to_str().unwrap_or_default(), &["install", "--quiet", HELM_SDK])?;
    }
    if !bpffs {
        sh::step("setup: mounting bpffs at /sys/fs/bpf");
        sh::run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }
    sh::step("setup: complete");
    Ok(())
}

fn is_root() -> bool {
    sh::output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn missing_packages() -> Vec<String> {
    let mut args = vec!["-W", "-f=${Package} ${Status}\n"];
    args.extend_from_slice(DEB_PACKAGES);
    let out = sh::output_any("dpkg-query", &args).unwrap_or_default();
    let installed: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    DEB_PACKAGES
        .iter()
        .filter(|p| !installed.iter().any(|i| i == *p || i.split(':').next() == Some(p)))
        .map(|p| p.to_string())
        .collect()
}

fn has_nightly() -> bool {
    sh::output("rustup", &["toolchain", "list"]).is_some_and(|s| s.lines().any(|l| l.starts_with("nightly")))
}

fn has_rust_src() -> bool {
    sh::output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"])
        .is_some_and(|s| s.lines().any(|l| l.trim() == "rust-src" || l.starts_with("rust-src")))
}

fn has_bpf_linker() -> bool {
    sh::output("bpf-linker", &["--version"]).is_some_and(|s| s.split_whitespace().any(|w| w == BPF_LINKER_VERSION))
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .is_ok_and(|m| m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
        }))
}

fn helm_sdk_venv() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| std::path::PathBuf::from("/root"), std::path::PathBuf::from);
    home.join(HELM_SDK_VENV)
}

fn has_helm_sdk(venv: &std::path::Path) -> bool {
    let py = venv.join("bin/python");
    sh::output(py.to_str().unwrap_or_default(), &["-c", "import helm_python"]).is_some()
}
