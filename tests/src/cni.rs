//! weir-cni invoked directly, as a runtime invokes it: in a node namespace,
//! with host-local IPAM from Debian's containernetworking-plugins, its
//! records and leases in directories of the test's own.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{json, Value};

use crate::{bins, netns::NetNs, node::tempdir::TempDir, Node};

pub struct Env {
    pub node: Node,
    pub pod: NetNs,
    pub records: TempDir,
    pub leases: TempDir,
    /// CNI_PATH for every call.
    pub cni_path: String,
    /// PATH for every call (the test's own by default).
    pub path: String,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Self {
        Self {
            node: Node::new(),
            pod: NetNs::new("wcp"),
            records: TempDir::new("weir-rec"),
            leases: TempDir::new("weir-lease"),
            cni_path: "/usr/lib/cni".into(),
            path: std::env::var("PATH").unwrap_or_default(),
        }
    }

    pub fn conf(&self, subnet: &str) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "weirnet",
            "type": "weir-cni",
            "mtu": 1400,
            "dataDir": self.records.path(),
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": self.leases.path()},
            // No agent in these tests: pods start without one (fail open).
            "agent": {"socket": self.node.agent_socket(), "failOpen": true},
        })
    }

    /// Runs weir-cni in the node namespace; returns (exit ok, stdout JSON).
    pub fn cni(&self, command: Option<&str>, vars: &[(&str, &str)], stdin: &[u8]) -> (bool, Value) {
        // By absolute path: PATH is the one weir-cni gets, which may be empty.
        let mut c = Command::new("/usr/bin/nsenter");
        c.arg(format!("--net={}", self.node.ns().path().display())).arg(bins::path("weir-cni"));
        c.env_clear().env("PATH", &self.path).env("CNI_PATH", &self.cni_path);
        if let Some(cmd) = command {
            c.env("CNI_COMMAND", cmd);
        }
        for (k, v) in vars {
            c.env(k, v);
        }
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn weir-cni");
        child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        let v = if out.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&out.stdout).expect("stdout is JSON") };
        (out.status.success(), v)
    }

    pub fn attach_vars(&self, id: &str) -> Vec<(&'static str, String)> {
        self.attach_vars_in(id, &self.pod)
    }

    pub fn attach_vars_in(&self, id: &str, pod: &NetNs) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0".to_string()),
        ]
    }

    pub fn run(&self, command: &str, id: &str, conf: &Value) -> (bool, Value) {
        self.run_in(command, id, &self.pod, conf)
    }

    /// `command` for container `id` whose namespace is `pod`.
    pub fn run_in(&self, command: &str, id: &str, pod: &NetNs, conf: &Value) -> (bool, Value) {
        let vars = self.attach_vars_in(id, pod);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.cni(Some(command), &vars, conf.to_string().as_bytes())
    }

    /// GC with `valid` as the config's `cni.dev/valid-attachments` (or
    /// without the key when `None`).
    pub fn gc(&self, conf: &Value, valid: Option<Value>) -> (bool, Value) {
        let mut gc = conf.clone();
        if let Some(v) = valid {
            gc["cni.dev/valid-attachments"] = v;
        }
        self.cni(Some("GC"), &[], gc.to_string().as_bytes())
    }

    pub fn weir_links(&self) -> Vec<String> {
        self.node.ns().links_with_prefix("weir")
    }

    /// host-local's leases (files named by IP).
    pub fn leases(&self) -> Vec<String> {
        let dir: PathBuf = self.leases.path().join("weirnet");
        std::fs::read_dir(dir).map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with("10.")).collect()).unwrap_or_default()
    }

    /// Files in weir-cni's record directory (records and their locks).
    pub fn records(&self) -> usize {
        std::fs::read_dir(self.records.path()).map(|rd| rd.count()).unwrap_or(0)
    }

    pub fn record_of(&self, id: &str) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(self.records.path().join(format!("{id}_eth0.json"))).ok()?).ok()
    }

    pub fn assert_clean(&self, what: &str) {
        assert!(self.weir_links().is_empty(), "{what}: no links left: {:?}", self.weir_links());
        assert!(self.leases().is_empty(), "{what}: no leases left: {:?}", self.leases());
        assert_eq!(self.records(), 0, "{what}: no records left");
    }
}

/// A CNI_PATH directory holding `scripted-ipam`: host-local behind a shell
/// script that a test steers with files in the same directory.
/// - `fail-del`: container IDs (one a line) whose DEL fails with code 11;
/// - `kill-after-add`: when present, ADD kills its caller (weir-cni) with
///   SIGKILL right after host-local has taken the lease, as a node
///   crashing half-way through ADD would;
/// - `speaks-1.1`: when present, the plugin speaks CNI 1.1.0 and records
///   every GC call's configuration in `gc-calls`.
pub struct ScriptedIpam {
    dir: TempDir,
}

impl Default for ScriptedIpam {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedIpam {
    pub fn new() -> Self {
        let dir = TempDir::new("weir-ipam");
        let d = dir.path().display();
        let script = format!(
            r#"#!/bin/sh
# scripted-ipam: host-local, steered by files in {d}
if [ "$CNI_COMMAND" = DEL ] && /bin/grep -qx "$CNI_CONTAINERID" {d}/fail-del 2>/dev/null; then
  echo '{{"cniVersion":"1.0.0","code":11,"msg":"lease store unavailable"}}'
  exit 1
fi
if [ -e {d}/speaks-1.1 ]; then
  # A CNI 1.1 IPAM plugin: it has GC (recorded, not acted on), and hands
  # everything else to host-local at 1.0.0 (same result shape).
  case "$CNI_COMMAND" in
    VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}'; exit 0;;
    GC) /bin/cat >> {d}/gc-calls; echo >> {d}/gc-calls; exit 0;;
  esac
  out=$(/bin/sed 's/"cniVersion":"1.1.0"/"cniVersion":"1.0.0"/' | /usr/lib/cni/host-local); rc=$?
  printf '%s' "$out" | /bin/sed 's/"cniVersion":"1.0.0"/"cniVersion":"1.1.0"/'
  exit $rc
fi
out=$(/usr/lib/cni/host-local); rc=$?
if [ "$CNI_COMMAND" = ADD ] && [ -e {d}/kill-after-add ]; then kill -9 $PPID; fi
printf '%s' "$out"
exit $rc
"#
        );
        let p = dir.path().join("scripted-ipam");
        std::fs::write(&p, script).expect("write scripted-ipam");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn fail_del_for(&self, ids: &[&str]) {
        std::fs::write(self.dir.path().join("fail-del"), ids.iter().map(|i| format!("{i}\n")).collect::<String>()).expect("fail-del");
    }

    pub fn kill_after_add(&self, on: bool) {
        let p = self.dir.path().join("kill-after-add");
        if on {
            std::fs::write(p, b"").expect("kill-after-add");
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Makes the plugin a CNI 1.1 one with GC.
    pub fn speak_1_1(&self) {
        std::fs::write(self.dir.path().join("speaks-1.1"), b"").expect("speaks-1.1");
    }

    /// The configurations GC was called with.
    pub fn gc_calls(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("gc-calls"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("GC call JSON"))
            .collect()
    }

    /// `conf` with its IPAM plugin swapped for this one.
    pub fn conf(&self, conf: &Value) -> Value {
        let mut c = conf.clone();
        c["ipam"]["type"] = json!("scripted-ipam");
        c
    }
}
