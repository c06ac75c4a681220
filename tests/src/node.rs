//! A simulated node: a network namespace with no route out of the machine,
//! its own bpffs pin directory, and the pods wired to it.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use crate::{agent::Agent, bins, cmd, names, netns::NetNs, pod::Pod};

/// The node namespace. It has no default route, so a service packet that
/// weir failed to translate can never leave the machine.
pub struct Node {
    // Field order matters: pins are removed before the namespace goes.
    bpffs: BpffsDir,
    ns: NetNs,
    source_dir: tempdir::TempDir,
    /// The agent's --run-dir (its endpoint API socket, registered pods).
    run_dir: tempdir::TempDir,
}

impl Node {
    pub fn new() -> Self {
        crate::privileged::require();
        let ns = NetNs::new("wn");
        ns.sysctl("net.ipv4.ip_forward", "1");
        let routes = ns.ip(&["route", "show", "default"]);
        assert!(routes.trim().is_empty(), "node namespace must have no default route: {routes}");
        let bpffs = BpffsDir::new(&format!("/sys/fs/bpf/{}", names::unique("weirt")));
        let source_dir = tempdir::TempDir::new("weir-src");
        let run_dir = tempdir::TempDir::new("weir-run");
        Self { bpffs, ns, source_dir, run_dir }
    }

    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// The agent's --bpffs directory for this node.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs.path
    }

    /// The agent's --run-dir for this node.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// The endpoint API socket the node's agent serves (weir-cni calls it).
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir().join("agent.sock")
    }

    /// The agent's standalone source directory for this node.
    pub fn source_dir(&self) -> &Path {
        self.source_dir.path()
    }

    /// Wires a new pod with `ip` to this node (see [`Pod`]).
    pub fn pod(&self, name: &str, ip: Ipv4Addr) -> Pod {
        Pod::new(self, name, ip)
    }

    /// Starts weir-agent inside the node namespace.
    pub fn start_agent(&self) -> Agent {
        Agent::start(self)
    }

    /// Starts weir-agent with extra arguments.
    pub fn start_agent_with(&self, args: &[&str]) -> Agent {
        Agent::start_with(self, args)
    }

    /// Writes a file into the agent's source directory atomically (temp
    /// file + rename), as a careful editor or `kubectl`-style tool would.
    pub fn write_source(&self, name: &str, content: &[u8]) {
        let tmp = self.source_dir().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        let dst = self.source_dir().join(name);
        std::fs::rename(&tmp, &dst).unwrap_or_else(|e| panic!("rename to {}: {e}", dst.display()));
    }

    /// Removes a file from the agent's source directory.
    pub fn remove_source(&self, name: &str) {
        let p = self.source_dir().join(name);
        std::fs::remove_file(&p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
    }

    /// A plain HTTP GET to the agent's default --metrics-addr, from inside
    /// the node namespace; returns the whole response.
    pub fn agent_http(&self, path: &str) -> String {
        let path = path.to_string();
        self.ns.run(move || {
            use std::io::{Read as _, Write as _};
            let addr = "127.0.0.1:9965".parse().expect("addr");
            let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).expect("connect to --metrics-addr");
            s.set_read_timeout(Some(std::time::Duration::from_secs(2))).expect("timeout");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        })
    }

    /// Runs the `weir` CLI inside the node namespace against this node's pins.
    pub fn weir(&self, args: &[&str]) -> std::process::Output {
        let weir = bins::path("weir");
        let net = format!("--net={}", self.ns.path().display());
        let bpffs = self.bpffs().display().to_string();
        let mut argv = vec!["nsenter", &net, weir.to_str().expect("utf-8 path"), "--bpffs", &bpffs];
        argv.extend_from_slice(args);
        cmd::output(&argv)
    }
}

impl Node {
    /// Runs `weir monitor -o json` for `secs` while `traffic` runs; returns
    /// the parsed lines.
    pub fn monitor_while(&self, secs: f64, traffic: impl FnOnce()) -> Vec<serde_json::Value> {
        self.monitor_types_while(secs, &[], traffic)
    }

    /// [`Node::monitor_while`] with `--type` for each of `types`.
    pub fn monitor_types_while(&self, secs: f64, types: &[&str], traffic: impl FnOnce()) -> Vec<serde_json::Value> {
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.ns().path().display()))
            .arg(bins::path("weir"))
            .args(["--bpffs", self.bpffs().to_str().expect("utf-8"), "monitor", "-o", "json", "--duration", &secs.to_string()])
            .args(types.iter().flat_map(|t| ["--type", t]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn weir monitor");
        // The lease is taken at start; give the process a moment to get there.
        std::thread::sleep(std::time::Duration::from_millis(500));
        traffic();
        let out = child.wait_with_output().expect("weir monitor");
        assert!(out.status.success(), "weir monitor: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
            .collect()
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

/// A pin directory on bpffs, removed on drop (which detaches pinned links).
pub struct BpffsDir {
    pub path: PathBuf,
}

impl BpffsDir {
    pub fn new(path: &str) -> Self {
        Self { path: PathBuf::from(path) }
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A minimal temporary directory guard (no extra dependency).
pub mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> Self {
            let p = std::env::temp_dir().join(crate::names::unique(prefix));
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            Self(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
