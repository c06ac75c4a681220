//! A cgroup of one test's own, under the host's cgroup v2 hierarchy: an
//! agent given it as `--cgroup-root` with `--socket-lb-namespaces=all`
//! translates the sockets of the processes in it, and no other test's.
//! Pod processes join it through `weir-pod-socket` (a thread of the test
//! process cannot leave the process's cgroup); a benchmark, which runs one
//! topology per process, moves itself in and out ([`TestCgroup::enter`]).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{bins, cmd, netns::NetNs};

/// How the probe's socket talks to its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockMode {
    /// TCP, connecting without blocking and then polling (std's
    /// `connect_timeout`).
    Tcp,
    /// TCP with a blocking `connect(2)`.
    TcpBlocking,
    /// An unconnected UDP socket: `sendto`, and the reply's source.
    Udp,
    /// A connected UDP socket.
    UdpConnected,
}

impl SockMode {
    fn arg(self) -> &'static str {
        match self {
            SockMode::Tcp => "tcp",
            SockMode::TcpBlocking => "tcp-blocking",
            SockMode::Udp => "udp",
            SockMode::UdpConnected => "udp-connected",
        }
    }

    /// The IP protocol number.
    pub fn proto(self) -> u8 {
        match self {
            SockMode::Tcp | SockMode::TcpBlocking => 6,
            SockMode::Udp | SockMode::UdpConnected => 17,
        }
    }
}

/// What one `weir-pod-socket` run saw.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The socket's cookie (the key of its reverse translations).
    pub cookie: u64,
    /// The reply's first word and the peer, or the error and its errno.
    pub result: Result<(String, SocketAddr), (String, Option<i32>)>,
}

pub struct TestCgroup {
    path: PathBuf,
    /// The cgroup this process was in when it first entered this one.
    home: std::sync::Mutex<Option<PathBuf>>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestCgroup {
    pub fn new() -> Self {
        let root = weir_datapath::cgroup::default_cgroup_root().expect("a cgroup v2 hierarchy (socket-level load balancing needs one)");
        let path = root.join(format!("weir-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path, home: std::sync::Mutex::new(None) }
    }

    /// Moves this whole process (every thread) into the cgroup: its
    /// sockets connected from now on are the agent's to translate. For a
    /// process that runs one topology (the benchmarks), never a test
    /// binary, whose tests share the process.
    pub fn enter(&self) -> std::io::Result<()> {
        let mut home = self.home.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        if home.is_none() {
            let own = std::fs::read_to_string("/proc/self/cgroup")?;
            let rel = own.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| std::io::Error::other("no cgroup v2 entry in /proc/self/cgroup"))?;
            let root = self.path.parent().ok_or_else(|| std::io::Error::other("a cgroup without a parent"))?;
            *home = Some(root.join(rel.trim_start_matches('/')));
        }
        std::fs::write(self.path.join("cgroup.procs"), std::process::id().to_string())
    }

    /// Moves this process back to the cgroup it came from.
    pub fn leave(&self) -> std::io::Result<()> {
        let home = self.home.lock().map_err(|_| std::io::Error::other("poisoned"))?.clone();
        match home {
            Some(h) => std::fs::write(h.join("cgroup.procs"), std::process::id().to_string()),
            None => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The agent flags that attach the socket programs here, for every
    /// namespace's sockets.
    pub fn agent_args(&self) -> Vec<String> {
        vec!["--socket-lb-namespaces=all".into(), "--cgroup-root".into(), self.path.display().to_string()]
    }

    fn probe_argv(&self, ns: &NetNs, mode: SockMode, ip: IpAddr, port: u16) -> Vec<String> {
        let bin = bins::path("weir-pod-socket");
        [bin.as_path(), &self.path, &ns.path()]
            .iter()
            .map(|p| p.to_str().expect("utf-8 path").to_string())
            .chain([mode.arg().to_string(), ip.to_string(), port.to_string()])
            .collect()
    }

    /// One socket in `ns` (a pod's or the node's), opened by a process in
    /// this cgroup, sends one request to `ip`:`port`; the socket is closed when this returns.
    pub fn probe(&self, ns: &NetNs, mode: SockMode, ip: impl Into<IpAddr>, port: u16) -> Probe {
        let argv = self.probe_argv(ns, mode, ip.into(), port);
        let out = cmd::run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
        Probe::parse(&out)
    }

    /// As [`TestCgroup::probe`], but the socket stays open until the
    /// returned [`Held`] drops (or is released).
    pub fn probe_held(&self, ns: &NetNs, mode: SockMode, ip: impl Into<IpAddr>, port: u16) -> Held {
        let argv = self.probe_argv(ns, mode, ip.into(), port);
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .arg("hold")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap_or_else(|e| panic!("reading {argv:?}: {e}"));
        let probe = Probe::parse(&line);
        Held { probe, child: Some(child) }
    }
}

/// A probe whose socket is still open.
pub struct Held {
    pub probe: Probe,
    child: Option<std::process::Child>,
}

impl Held {
    /// Closes the socket (the probe process exits) and returns what it saw.
    pub fn release(mut self) -> Probe {
        self.close();
        self.probe.clone()
    }

    fn close(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.close();
    }
}

impl Probe {
    fn parse(out: &str) -> Probe {
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("weir-pod-socket printed {out:?}: {e}"));
        let cookie = v["cookie"].as_u64().expect("a cookie");
        let result = match v["error"].as_str() {
            Some(e) => Err((e.to_string(), v["errno"].as_i64().map(|n| n as i32))),
            None => Ok((
                v["reply"].as_str().expect("a reply").to_string(),
                v["peer"].as_str().and_then(|p| p.parse().ok()).expect("a peer"),
            )),
        };
        Probe { cookie, result }
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.leave();
        // The probes have exited; a cgroup is removable once the kernel
        // has let go of its last process.
        let start = Instant::now();
        while std::fs::remove_dir(&self.path).is_err() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
