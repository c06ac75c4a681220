//! A real containerd (Debian's package) running inside a node namespace,
//! with a busybox image built locally (no registry is reachable), and
//! `ctr run --cni` containers whose network comes from weir-cni.
//!
//! ctr reads CNI configuration from /etc/cni/net.d and plugins from
//! /usr/lib/cni on Debian; tests that use them hold [`global_cni_lock`].

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use crate::{cmd, names, node::Node};

pub const IMAGE: &str = "docker.io/weir/busybox:test";
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Where weir-cni keeps attachment records (its default).
pub const RECORDS_DIR: &str = "/var/lib/weir/cni";
/// host-local's lease directory for the network "weir" (from the conflist).
pub const LEASES_DIR: &str = "/var/lib/cni/networks/weir";

static CNI_LOCK: Mutex<()> = Mutex::new(());

/// Serialises tests that use the host's CNI directories.
pub fn global_cni_lock() -> MutexGuard<'static, ()> {
    CNI_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn sh(script: &str) {
    cmd::run(&["sh", "-ec", script]);
}

/// An OCI image archive of busybox-static: built once into one cache
/// file (`$TMPDIR/weir-busybox-image-v1.tar`, renamed into place), not a
/// directory per test process. Bump the version when the recipe changes.
pub fn image_tarball() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let cached = std::env::temp_dir().join("weir-busybox-image-v1.tar");
        if cached.is_file() {
            return cached;
        }
        let work = std::env::temp_dir().join(names::unique("weir-img"));
        let w = work.display();
        sh(&format!(
            r#"mkdir -p {w}/img/blobs/sha256 {w}/rootfs/bin
cp /bin/busybox {w}/rootfs/bin/busybox
for a in sh ip nc sleep cat echo true ls; do ln -s busybox {w}/rootfs/bin/$a; done
tar -C {w}/rootfs -cf {w}/layer.tar bin
L=$(sha256sum {w}/layer.tar | cut -d' ' -f1); LS=$(stat -c %s {w}/layer.tar); cp {w}/layer.tar {w}/img/blobs/sha256/$L
printf '{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:%s"]}}}}' $L > {w}/config.json
C=$(sha256sum {w}/config.json | cut -d' ' -f1); CS=$(stat -c %s {w}/config.json); cp {w}/config.json {w}/img/blobs/sha256/$C
printf '{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}}]}}' $C $CS $L $LS > {w}/manifest.json
M=$(sha256sum {w}/manifest.json | cut -d' ' -f1); MS=$(stat -c %s {w}/manifest.json); cp {w}/manifest.json {w}/img/blobs/sha256/$M
printf '{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{{"io.containerd.image.name":"{IMAGE}","org.opencontainers.image.ref.name":"test"}}}}]}}' $M $MS > {w}/img/index.json
echo '{{"imageLayoutVersion":"1.0.0"}}' > {w}/img/oci-layout
tar -C {w}/img -cf {w}/image.tar ."#
        ));
        // Another test process may have built it meanwhile: either copy is good.
        let _ = fs::rename(work.join("image.tar"), &cached);
        let _ = fs::remove_dir_all(&work);
        cached
    })
}

/// The CNI directories of one node of several: a persistent mount
/// namespace in which the node's own directories are bound over the
/// host's CNI configuration, host-local leases and weir-cni records, so
/// that containerd and ctr on each node see only that node's network
/// (ctr reads CNI configuration from fixed paths). Plugins stay shared.
/// Hold [`global_cni_lock`] while one exists.
pub struct NodeMounts {
    dir: PathBuf,
    ns_file: PathBuf,
}

/// Where the mount namespace files live: a private bind mount, as
/// `unshare --mount=FILE` requires.
const MOUNT_NS_DIR: &str = "/run/weir-test-mntns";

impl NodeMounts {
    // Not `Default`: making one creates directories and mounts.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        crate::privileged::require();
        let dir = std::env::temp_dir().join(names::unique("weir-node-cni"));
        for sub in ["conf", "lib-cni", "lib-weir"] {
            fs::create_dir_all(dir.join(sub)).expect("node CNI dirs");
        }
        sh(&format!("mkdir -p {MOUNT_NS_DIR}; mountpoint -q {MOUNT_NS_DIR} || {{ mount --bind {MOUNT_NS_DIR} {MOUNT_NS_DIR} && mount --make-private {MOUNT_NS_DIR}; }}"));
        let ns_file = Path::new(MOUNT_NS_DIR).join(names::unique("node"));
        fs::write(&ns_file, b"").expect("mount ns file");
        let m = Self { dir, ns_file };
        cmd::run(&["unshare", &format!("--mount={}", m.ns_file.display()), "--propagation", "private", "true"]);
        for (sub, target) in [("conf", CNI_CONF_DIR), ("lib-cni", "/var/lib/cni"), ("lib-weir", "/var/lib/weir")] {
            fs::create_dir_all(target).expect("mount target");
            let src = m.dir.join(sub).display().to_string();
            cmd::run(&["nsenter", &m.mount_arg(), "mount", "--bind", &src, target]);
        }
        m
    }

    /// `--mount=FILE` for nsenter.
    pub fn mount_arg(&self) -> String {
        format!("--mount={}", self.ns_file.display())
    }

    /// The node's CNI configuration directory (seen as /etc/cni/net.d
    /// inside its mount namespace).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf")
    }

    /// The weir-cni record of a container's eth0 on this node, once ADD
    /// has written it.
    pub fn wait_record(&self, c: &Container) -> serde_json::Value {
        wait_record_at(&self.dir.join("lib-weir/cni"), c)
    }
}

impl Drop for NodeMounts {
    fn drop(&mut self) {
        cmd::run_quiet(&["umount", &self.ns_file.display().to_string()]);
        let _ = fs::remove_file(&self.ns_file);
        let _ = fs::remove_dir_all(&self.dir);
        // The last one out takes the private bind mount with it (users
        // hold the CNI lock, so none is being made meanwhile).
        if fs::read_dir(MOUNT_NS_DIR).is_ok_and(|mut d| d.next().is_none()) {
            cmd::run_quiet(&["umount", MOUNT_NS_DIR]);
            let _ = fs::remove_dir(MOUNT_NS_DIR);
        }
    }
}

/// containerd inside a node namespace, with its own root, state and socket.
pub struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    netns: PathBuf,
    /// `--mount=FILE` when the node has its own CNI directories.
    mount: Option<String>,
}

impl Containerd {
    pub fn start(node: &Node) -> Self {
        Self::start_with(node, None)
    }

    /// containerd (and every ctr call) in the node's mount namespace too.
    pub fn start_in(node: &Node, mounts: &NodeMounts) -> Self {
        Self::start_with(node, Some(mounts.mount_arg()))
    }

    fn start_with(node: &Node, mount: Option<String>) -> Self {
        crate::privileged::require();
        let dir = std::env::temp_dir().join(names::unique("weir-ctrd"));
        fs::create_dir_all(&dir).expect("containerd dir");
        let config = dir.join("containerd.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/containerd.sock\"\n",
                d = dir.display()
            ),
        )
        .expect("containerd config");
        let log = fs::File::create(dir.join("containerd.log")).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.ns().path().display()))
            .args(mount.iter())
            .arg("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawning containerd (Debian package containerd)");
        let c = Self { child: Some(child), dir, netns: node.ns().path(), mount };
        let start = Instant::now();
        while !c.socket().exists() {
            assert!(start.elapsed() < Duration::from_secs(15), "containerd did not start:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let img = image_tarball().display().to_string();
        c.ctr(&["images", "import", &img]);
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr_argv(&self) -> Vec<String> {
        let mut v = vec!["nsenter".to_string(), format!("--net={}", self.netns.display())];
        v.extend(self.mount.iter().cloned());
        v.extend([
            "ctr".into(),
            "--address".into(),
            self.socket().display().to_string(),
            "-n".into(),
            "weir".into(),
        ]);
        v
    }

    /// Runs `ctr ARGS` in the node namespace, panicking on failure.
    pub fn ctr(&self, args: &[&str]) -> String {
        let mut argv = self.ctr_argv();
        argv.extend(args.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        cmd::run(&argv)
    }

    /// `ctr run --cni --rm IMAGE ID sh -c SCRIPT` to completion; returns
    /// (success, stdout + stderr).
    pub fn run_to_end(&self, id: &str, script: &str, timeout: Duration) -> (bool, String) {
        let mut c = self.spawn(id, script);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                let out = c.output();
                c.done = true;
                return (status.success(), out);
            }
            if start.elapsed() > timeout {
                let out = c.output();
                drop(c);
                return (false, format!("timed out after {timeout:?}: {out}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `ctr run --cni --rm` in the background (in the foreground of
    /// ctr, so ctr calls CNI DEL when the task ends, as a runtime would).
    pub fn spawn(&self, id: &str, script: &str) -> Container {
        let out_path = self.dir.join(format!("{id}.out"));
        let out = fs::File::create(&out_path).expect("container output");
        let mut argv = self.ctr_argv();
        argv.extend(["run", "--cni", "--rm", IMAGE, id, "sh", "-c", script].iter().map(|s| s.to_string()));
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawning ctr");
        Container { child, id: id.to_string(), out_path, kill: self.ctr_argv(), done: false }
    }
}

impl Containerd {
    /// The mount points under this containerd's directory, deepest first,
    /// in the mount namespace it runs in.
    pub fn mounts_under_dir(&self) -> Vec<String> {
        let table = match &self.mount {
            Some(ns) => String::from_utf8_lossy(&cmd::output(&["nsenter", ns, "cat", "/proc/self/mounts"]).stdout).into_owned(),
            None => fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
        };
        let dir = format!("{}/", self.dir.display());
        let mut under: Vec<String> = table.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|p| p.starts_with(&dir)).map(str::to_string).collect();
        under.sort_by_key(|p| std::cmp::Reverse(p.len()));
        under.dedup();
        under
    }

    /// This containerd's directory (root, state, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks still there (a container whose CNI ADD failed keeps its
        // task created but never started: a `runc init` waiting in its
        // cgroup) are removed while containerd runs, or they outlive it.
        if self.child.is_some() {
            let argv = self.ctr_argv();
            let mut ls: Vec<&str> = argv.iter().map(String::as_str).collect();
            ls.extend(["task", "ls", "-q"]);
            let out = cmd::output(&ls);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let mut rm: Vec<&str> = argv.iter().map(String::as_str).collect();
                rm.extend(["task", "rm", "-f", id]);
                cmd::run_quiet(&rm);
            }
        }
        if let Some(mut c) = self.child.take() {
            cmd::stop_child(&mut c, libc::SIGTERM, Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.log());
        }
        // Everything mounted under its directories: the snapshotter's root
        // and any task rootfs still mounted under `state` (a container
        // whose start failed keeps its rootfs mounted), deepest first.
        for m in self.mounts_under_dir() {
            match &self.mount {
                Some(ns) => cmd::run_quiet(&["nsenter", ns, "umount", "-R", "-l", &m]),
                None => cmd::run_quiet(&["umount", "-R", "-l", &m]),
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        // The namespace's parent cgroup, once no containerd uses it (a
        // cgroup with children refuses the removal).
        if let Some(root) = weir_datapath::cgroup::default_cgroup_root() {
            let _ = fs::remove_dir(root.join("weir"));
        }
    }
}

/// A running `ctr run --cni --rm` container; killed (and so CNI DEL'd) on drop.
pub struct Container {
    child: Child,
    id: String,
    out_path: PathBuf,
    kill: Vec<String>,
    done: bool,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// Kills the task and waits for ctr to exit (after CNI DEL).
    pub fn stop(mut self) {
        self.kill_and_wait();
    }

    fn kill_and_wait(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let mut argv = self.kill.clone();
        argv.extend(["task", "kill", "-s", "SIGKILL", self.id.as_str()].iter().map(|s| s.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        cmd::run_quiet(&argv);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// The weir-cni record of a container's eth0, once ADD has written its IPs.
pub fn wait_record(c: &Container) -> serde_json::Value {
    wait_record_at(Path::new(RECORDS_DIR), c)
}

fn wait_record_at(dir: &Path, c: &Container) -> serde_json::Value {
    let id = c.id();
    // ctr passes "<namespace>-<id>" as CNI_CONTAINERID.
    let p = dir.join(format!("weir-{id}_eth0.json"));
    let start = Instant::now();
    loop {
        // ADD writes the record before IPAM answers, with no IP yet.
        if let Some(v) = fs::read(&p).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) {
            if v["ips"].as_array().is_some_and(|a| !a.is_empty()) {
                return v;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no weir-cni record for {id}; ctr said:\n{}", c.output());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Installs weir-cni into the host's CNI dirs through the agent's
/// `--install-cni`, and uninstalls (plus leases and records) on drop.
pub struct CniInstall;

impl CniInstall {
    pub fn new(pod_cidr: &str) -> Self {
        let agent = crate::bins::path("weir-agent").display().to_string();
        cmd::run(&[&agent, "--install-cni", "--pod-cidr", pod_cidr, "--cni-bin-dir", CNI_BIN_DIR, "--cni-conf-dir", CNI_CONF_DIR]);
        Self
    }

    /// Installs for `node`'s agent (the conflist names its endpoint API
    /// socket), and makes every container a Kubernetes pod: `ctr` passes
    /// no CNI_ARGS, so a wrapper in front of weir-cni adds what the CRI
    /// plugin adds for the kubelet, K8S_POD_NAMESPACE=`namespace` and
    /// K8S_POD_NAME=<the container's ID>.
    pub fn as_pods(pod_cidr: &str, node: &Node, namespace: &str) -> Self {
        let agent = crate::bins::path("weir-agent").display().to_string();
        let run_dir = node.run_dir().display().to_string();
        cmd::run(&[&agent, "--install-cni", "--pod-cidr", pod_cidr, "--cni-bin-dir", CNI_BIN_DIR, "--cni-conf-dir", CNI_CONF_DIR, "--run-dir", &run_dir]);
        let wrapper = format!(
            "#!/bin/sh\n# ctr names a container's CNI attachment <ctr namespace>-<id>.\nexport CNI_ARGS=\"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=${{CNI_CONTAINERID#weir-}}\"\nexec '{}' \"$@\"\n",
            crate::bins::path("weir-cni").display()
        );
        let dst = Path::new(CNI_BIN_DIR).join("weir-cni");
        let tmp = Path::new(CNI_BIN_DIR).join(".weir-cni.wrapper");
        fs::write(&tmp, wrapper).expect("write the wrapper");
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        fs::rename(&tmp, &dst).expect("install the wrapper");
        Self
    }
}

impl Drop for CniInstall {
    fn drop(&mut self) {
        let agent = crate::bins::path("weir-agent").display().to_string();
        cmd::run_quiet(&[&agent, "--uninstall-cni", "--cni-bin-dir", CNI_BIN_DIR, "--cni-conf-dir", CNI_CONF_DIR]);
        let _ = fs::remove_dir_all(LEASES_DIR);
        let _ = fs::remove_dir_all(RECORDS_DIR);
    }
}
