//! Network namespace guards.

use std::{
    fs::File,
    path::PathBuf,
    thread,
};

use nix::sched::{setns, CloneFlags};

use crate::{cmd, names};

/// A named network namespace (`/var/run/netns/<name>`), deleted on drop
/// together with every process still inside it.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with a unique name starting with `prefix`, with
    /// `lo` up and IPv6 disabled (the harness is IPv4 unless a test opts in).
    pub fn new(prefix: &str) -> Self {
        let name = names::unique(prefix);
        cmd::run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        cmd::run(&argv)
    }

    /// Sets a sysctl inside the namespace (/proc/sys/net is per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        let kv = format!("{key}={value}");
        self.exec(&["sysctl", "-qw", &kv]);
    }

    /// Runs a command inside the namespace with `nsenter --net=`, which,
    /// unlike `ip netns exec`, keeps /sys/fs/bpf and the cgroup mounts visible.
    pub fn exec(&self, argv: &[&str]) -> String {
        let net = format!("--net={}", self.path().display());
        let mut full = vec!["nsenter", net.as_str()];
        full.extend_from_slice(argv);
        cmd::run(&full)
    }

    /// The ifindex of `ifname` inside this namespace.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", ifname]);
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex for {ifname} in {}: {out}", self.name))
    }

    /// Names of the links in this namespace that start with `prefix`
    /// (without the `@peer` suffix `ip` prints for veths).
    pub fn links_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// The MAC address of `ifname` inside this namespace.
    pub fn mac(&self, ifname: &str) -> String {
        let out = self.ip(&["-o", "link", "show", "dev", ifname]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no MAC for {ifname} in {}: {out}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it
    /// opens belong to the namespace.
    pub fn spawn<F, T>(&self, f: F) -> thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path();
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    fn kill_processes(&self) {
        let out = cmd::output(&["ip", "netns", "pids", &self.name]);
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                if pid == std::process::id() as i32 {
                    continue;
                }
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.kill_processes();
        cmd::run_quiet(&["ip", "netns", "del", &self.name]);
    }
}
