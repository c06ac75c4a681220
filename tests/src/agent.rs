//! weir-agent running inside a node namespace, stopped on drop.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{bins, node::Node};

pub struct Agent {
    child: Option<Child>,
    extra_args: Vec<String>,
    log: PathBuf,
    bpffs: PathBuf,
    run_dir: PathBuf,
    netns: PathBuf,
    source_dir: PathBuf,
    node_name: String,
    /// `--source`: `dir:<source_dir>` unless set.
    source: Option<String>,
    env: Vec<(String, String)>,
    /// Where the log stood when the running process started (the log is
    /// appended across restarts).
    run_log_start: usize,
}

impl Agent {
    pub fn start(node: &Node) -> Self {
        Self::start_with(node, &[])
    }

    /// Starts the agent with extra command-line arguments.
    pub fn start_with(node: &Node, extra_args: &[&str]) -> Self {
        Self::start_reading(node, node.source_dir(), extra_args)
    }

    /// Starts the agent reading `source_dir` (several nodes' agents read one
    /// directory, as every agent of a cluster watches one API server).
    pub fn start_reading(node: &Node, source_dir: &std::path::Path, extra_args: &[&str]) -> Self {
        Self::launch(node, source_dir, None, Vec::new(), extra_args)
    }

    /// Starts the agent on the Kubernetes source (`--source kube`) with
    /// `kubeconfig` (it is up once its process runs; its first sync waits
    /// for the API server).
    pub fn start_kube(node: &Node, kubeconfig: &std::path::Path, extra_args: &[&str]) -> Self {
        let env = vec![("KUBECONFIG".into(), kubeconfig.display().to_string())];
        Self::launch(node, node.source_dir(), Some("kube".into()), env, extra_args)
    }

    fn launch(node: &Node, source_dir: &std::path::Path, source: Option<String>, env: Vec<(String, String)>, extra_args: &[&str]) -> Self {
        let mut agent = Self {
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            log: std::env::temp_dir().join(format!("{}.agent.log", node.ns().name())),
            bpffs: node.bpffs().to_path_buf(),
            run_dir: node.run_dir().to_path_buf(),
            netns: node.ns().path(),
            source_dir: source_dir.to_path_buf(),
            node_name: node.ns().name().to_string(),
            source,
            env,
            run_log_start: 0,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        self.spawn_process();
        self.wait_log_count("weir-agent ready", self.ready_count() + 1, Duration::from_secs(20));
    }

    /// Starts the agent again (after [`Agent::stop_with`]) with other
    /// arguments, and `env` added, without waiting for it to be ready (it
    /// may stop early on purpose, or refuse to start).
    pub fn launch_again(&mut self, extra_args: &[&str], env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "agent still running");
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        self.env.retain(|(k, _)| !env.iter().any(|(e, _)| e == k));
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.spawn_process();
    }

    /// Forgets the environment variable `key` for later starts.
    pub fn unset_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Waits up to `timeout` for the agent to exit on its own; `None` if
    /// it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn spawn_process(&mut self) {
        self.run_log_start = self.log_text().len();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(bins::path("weir-agent"))
            .arg("--source")
            .arg(self.source.clone().unwrap_or_else(|| format!("dir:{}", self.source_dir.display())))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--node-name")
            .arg(&self.node_name)
            .args(&self.extra_args)
            // Several agents share the host's cgroup hierarchy here, so
            // each translates only its own node's sockets unless a test
            // gives it a cgroup of its own and asks for more.
            .args(if self.extra_args.iter().any(|a| a.starts_with("--socket-lb-namespaces")) { &[][..] } else { &["--socket-lb-namespaces=node"][..] })
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning weir-agent");
        self.child = Some(child);
    }

    fn ready_count(&self) -> usize {
        self.log_text().matches("weir-agent ready").count()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        if !self.log_count_within(needle, count, timeout) {
            panic!("weir-agent did not log `{needle}` within {timeout:?}:\n{}", self.log_text());
        }
    }

    /// Whether the log contains `needle` at least `count` times within
    /// `timeout` (benchmarks: a dataplane that is too slow is reported,
    /// not a panic). Panics if the agent exits meanwhile.
    pub fn log_count_within(&mut self, needle: &str, count: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log_text().matches(needle).count() >= count {
                return true;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("weir-agent exited ({status}) before `{needle}`:\n{}", self.log_text());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits until the agent has programmed its initial state (the source
    /// delivered everything and the first full sync ran).
    /// After a restart, that of the running process.
    pub fn wait_synced(&mut self) {
        let before = self.log_text().get(..self.run_log_start).map_or(0, |l| l.matches("initial sync").count());
        self.wait_log_count("initial sync", before + 1, Duration::from_secs(20));
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_for_log(&mut self, needle: &str, count: usize) {
        self.wait_log_count(needle, count, Duration::from_secs(20));
    }

    /// [`Agent::wait_for_log`] with a timeout of the caller's (benchmarks).
    pub fn wait_for_log_within(&mut self, needle: &str, count: usize, timeout: Duration) {
        self.wait_log_count(needle, count, timeout);
    }

    /// The pin paths of an interface's links.
    pub fn link_pins(&self, ifname: &str, ifindex: u32) -> [PathBuf; 2] {
        let links = self.bpffs.join("links");
        [
            links.join(format!("{ifname}@{ifindex}@from_pod")),
            links.join(format!("{ifname}@{ifindex}@to_pod")),
        ]
    }

    /// Waits until both pod programs are pinned for the interface and the
    /// agent has learned the addresses routed to it (without them the
    /// programs drop everything the pod sends as spoofed).
    pub fn wait_attached(&self, ifname: &str, ifindex: u32) {
        let pins = self.link_pins(ifname, ifindex);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if pins.iter().all(|p| p.exists()) && !self.link_addrs(ifindex).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{ifname} not attached (programs and addresses) within 10s:\n{}", self.log_text());
    }

    /// The addresses the agent wrote to `WEIR_LINKS` for `ifindex`.
    pub fn link_addrs(&self, ifindex: u32) -> Vec<std::net::IpAddr> {
        let layout = weir_datapath::PinLayout::new(&self.bpffs);
        weir_datapath::links::LinkAddrs::open(&layout).ok().and_then(|l| l.all().remove(&ifindex)).unwrap_or_default()
    }

    /// Sends `signal` and waits for the agent to exit; returns its status.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent is not running");
        // SAFETY: kill has no memory-safety preconditions; the PID is our child's.
        unsafe { libc::kill(child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("weir-agent ignored signal {signal} for 10s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the agent again after [`Agent::stop_with`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        self.spawn();
    }

    /// Stops the agent (SIGTERM) and starts it again with other extra
    /// arguments: a reconfiguration.
    pub fn restart_with(&mut self, extra_args: &[&str]) {
        if self.child.is_some() {
            self.stop_with(libc::SIGTERM);
        }
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }

    /// The agent's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::cmd::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(3));
        }
        // A failing test shows the agent's log; a benchmark run stopped by
        // Ctrl-C unwinds too (`bench::interrupt`) and has nothing to show.
        if std::thread::panicking() && !crate::bench::interrupt::interrupted() {
            eprintln!("--- weir-agent log ({}) ---\n{}", self.log.display(), self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
