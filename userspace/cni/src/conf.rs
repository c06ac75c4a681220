//! The CNI environment and network configuration, checked the spec's way.

use std::path::PathBuf;

use serde_json::Value;

use crate::{CniError, SUPPORTED_VERSIONS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The CNI_* environment.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
}

pub fn command_from(v: Option<&str>) -> Result<Command, CniError> {
    match v {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some("STATUS") => Ok(Command::Status),
        Some("GC") => Ok(Command::Gc),
        Some(other) => Err(CniError::InvalidEnv { var: "CNI_COMMAND", why: format!("unknown command {other:?}") }),
        None => Err(CniError::InvalidEnv { var: "CNI_COMMAND", why: "not set".into() }),
    }
}

impl Env {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        Self {
            container_id: nonempty("CNI_CONTAINERID"),
            netns: nonempty("CNI_NETNS"),
            ifname: nonempty("CNI_IFNAME"),
            args: nonempty("CNI_ARGS")
                .map(|a| a.split(';').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
                .unwrap_or_default(),
            path: nonempty("CNI_PATH").map(|p| p.split(':').map(PathBuf::from).collect()).unwrap_or_default(),
        }
    }

    pub fn require(&self, var: &'static str) -> Result<&str, CniError> {
        let v = match var {
            "CNI_CONTAINERID" => &self.container_id,
            "CNI_NETNS" => &self.netns,
            "CNI_IFNAME" => &self.ifname,
            _ => &None,
        };
        v.as_deref().ok_or(CniError::InvalidEnv { var, why: "not set".into() })
    }

    /// Checks the container ID and interface name every operation on an
    /// attachment needs: they become file and link names.
    pub fn require_ids(&self) -> Result<(&str, &str), CniError> {
        let id = self.require("CNI_CONTAINERID")?;
        let ifname = self.require("CNI_IFNAME")?;
        if ifname.len() > 15 || ifname == "." || ifname == ".." || ifname.contains('/') || ifname.contains(char::is_whitespace) || ifname.contains(':') {
            return Err(CniError::InvalidEnv { var: "CNI_IFNAME", why: format!("{ifname:?} is not a valid interface name") });
        }
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') || id.starts_with('.') {
            return Err(CniError::InvalidEnv { var: "CNI_CONTAINERID", why: format!("{id:?} must be [A-Za-z0-9_.-] and not start with a dot") });
        }
        Ok((id, ifname))
    }

    /// Checks the variables ADD/CHECK need (and that they are sane).
    pub fn require_attachment(&self) -> Result<(&str, &str, &str), CniError> {
        let (id, ifname) = self.require_ids()?;
        let netns = self.require("CNI_NETNS")?;
        Ok((id, netns, ifname))
    }

    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Fields of other plugins' configs that weir-cni does not support; a
/// copied bridge conflist gets a clear error rather than silent surprises.
const UNSUPPORTED: [&str; 4] = ["ipMasq", "hairpinMode", "promiscMode", "isGateway"];

/// The network configuration on stdin.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub ipam: Option<Value>,
    pub mtu: Option<u32>,
    pub data_dir: PathBuf,
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` as given; checked by [`NetConf::valid_attachments`].
    pub valid_attachments_raw: Option<Value>,
    pub agent: AgentConf,
}

/// The `agent` section: how ADD reaches the local agent, which programs a
/// Kubernetes pod's identity and policy before ADD returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConf {
    /// `socket` (default [`crate::agent::DEFAULT_SOCKET`]).
    pub socket: PathBuf,
    /// `timeoutSeconds` (default 10, 1-300): how long ADD waits for the
    /// agent to program the pod.
    pub timeout: std::time::Duration,
    /// `failOpen` (default false): when the agent is down, slow or refuses,
    /// ADD fails (the runtime retries) rather than start a pod that no
    /// policy holds yet. `true` starts it anyway, with a warning.
    pub fail_open: bool,
}

impl Default for AgentConf {
    fn default() -> Self {
        Self { socket: PathBuf::from(crate::agent::DEFAULT_SOCKET), timeout: std::time::Duration::from_secs(10), fail_open: false }
    }
}

impl AgentConf {
    fn parse(v: Option<&Value>) -> Result<Self, CniError> {
        let mut c = Self::default();
        let Some(v) = v else { return Ok(c) };
        let bad = |why: String| CniError::InvalidConfig(format!("agent: {why}"));
        let obj = v.as_object().ok_or_else(|| bad(format!("{v} is not an object")))?;
        for (k, v) in obj {
            match k.as_str() {
                "socket" => c.socket = PathBuf::from(v.as_str().filter(|s| s.starts_with('/')).ok_or_else(|| bad(format!("socket {v} is not an absolute path")))?),
                "timeoutSeconds" => {
                    let t = v.as_u64().filter(|t| (1..=300).contains(t)).ok_or_else(|| bad(format!("timeoutSeconds {v} is not 1-300")))?;
                    c.timeout = std::time::Duration::from_secs(t);
                }
                "failOpen" => c.fail_open = v.as_bool().ok_or_else(|| bad(format!("failOpen {v} is not a boolean")))?,
                other => return Err(bad(format!("unknown field {other:?} (socket, timeoutSeconds, failOpen)"))),
            }
        }
        Ok(c)
    }
}

pub const DEFAULT_DATA_DIR: &str = "/var/lib/weir/cni";
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

impl NetConf {
    /// Parses and checks a configuration. `needs_ipam` is false for VERSION.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| CniError::Decode(e.to_string()))?;
        let obj = v.as_object().ok_or_else(|| CniError::Decode("the configuration is not a JSON object".into()))?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| CniError::InvalidConfig("cniVersion is missing".into()))?
            .to_string();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::IncompatibleVersion(format!("{cni_version} (weir-cni supports {})", SUPPORTED_VERSIONS.join(", "))));
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| CniError::InvalidConfig("name is missing".into()))?
            .to_string();
        match obj.get("type").and_then(Value::as_str) {
            Some("weir-cni") => {}
            other => return Err(CniError::InvalidConfig(format!("type is {other:?}, expected \"weir-cni\""))),
        }
        if let Some(f) = UNSUPPORTED.iter().find(|f| obj.get(**f).is_some_and(|v| v != &Value::Bool(false))) {
            return Err(CniError::UnsupportedField((*f).to_string()));
        }
        let mtu = match obj.get("mtu") {
            None => None,
            Some(m) => match m.as_u64() {
                Some(m) if (68..=65535).contains(&m) => Some(m as u32),
                _ => return Err(CniError::InvalidConfig(format!("mtu {m} is outside 68-65535"))),
            },
        };
        let ipam = obj.get("ipam").cloned();
        if let Some(i) = &ipam {
            if i.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(CniError::InvalidConfig("ipam.type is missing".into()));
            }
        }
        let data_dir = obj.get("dataDir").and_then(Value::as_str).map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), PathBuf::from);
        let valid_attachments_raw = obj.get(VALID_ATTACHMENTS).cloned();
        let agent = AgentConf::parse(obj.get("agent"))?;
        Ok(Self { cni_version, name, ipam, mtu, data_dir, prev_result: obj.get("prevResult").cloned(), valid_attachments_raw, agent })
    }

    /// GC's list of attachments to keep. Missing or malformed is an error:
    /// read as "keep nothing" it would remove every attachment.
    pub fn valid_attachments(&self) -> Result<Vec<(String, String)>, CniError> {
        let bad = |why: String| CniError::InvalidConfig(format!("{VALID_ATTACHMENTS}: {why}"));
        let list = self.valid_attachments_raw.as_ref().ok_or_else(|| bad("missing; GC removes nothing without it".into()))?;
        let list = list.as_array().ok_or_else(|| bad(format!("{list} is not a list")))?;
        list.iter()
            .enumerate()
            .map(|(i, x)| {
                let field = |k: &str| x.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_string);
                match (field("containerID"), field("ifname")) {
                    (Some(id), Some(ifname)) => Ok((id, ifname)),
                    _ => Err(bad(format!("entry {i} ({x}) needs containerID and ifname strings"))),
                }
            })
            .collect()
    }

    pub fn ipam_type(&self) -> Result<&str, CniError> {
        self.ipam
            .as_ref()
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .ok_or_else(|| CniError::InvalidConfig("ipam section is missing".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn each_bad_config_gets_its_code() {
        assert_eq!(conf("{").map_err(|e| e.code()).err(), Some(6));
        assert_eq!(conf(r#"{"cniVersion":"0.3.1","name":"n","type":"weir-cni"}"#).map_err(|e| e.code()).err(), Some(1));
        assert_eq!(conf(r#"{"cniVersion":"1.0.0","type":"weir-cni"}"#).map_err(|e| e.code()).err(), Some(7));
        assert_eq!(conf(r#"{"cniVersion":"1.1.0","name":"n","type":"bridge"}"#).map_err(|e| e.code()).err(), Some(7));
        assert_eq!(conf(r#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","ipMasq":true}"#).map_err(|e| e.code()).err(), Some(2));
        assert_eq!(conf(r#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","mtu":9}"#).map_err(|e| e.code()).err(), Some(7));
        let ok = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"weir-cni","mtu":1400,"ipam":{"type":"host-local"}}"#).expect("ok");
        assert_eq!((ok.mtu, ok.ipam_type().ok()), (Some(1400), Some("host-local")));
    }

    #[test]
    fn the_agent_section_defaults_to_fail_closed_and_rejects_what_it_does_not_know() {
        let base = r#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni""#;
        let with = |extra: &str| conf(&format!("{base}{extra}}}"));
        assert_eq!(with("").expect("ok").agent, AgentConf::default());
        assert!(!AgentConf::default().fail_open, "fail closed by default");
        let c = with(r#","agent":{"socket":"/run/w/a.sock","timeoutSeconds":3,"failOpen":true}"#).expect("ok").agent;
        assert_eq!((c.socket, c.timeout.as_secs(), c.fail_open), (PathBuf::from("/run/w/a.sock"), 3, true));
        for bad in [r#","agent":"x""#, r#","agent":{"socket":"rel.sock"}"#, r#","agent":{"timeoutSeconds":0}"#, r#","agent":{"failOpen":"yes"}"#, r#","agent":{"failopen":true}"#] {
            assert_eq!(with(bad).map_err(|e| e.code()).err(), Some(7), "{bad}");
        }
    }

    #[test]
    fn env_problems_are_code_4() {
        assert_eq!(command_from(None).map_err(|e| e.code()).err(), Some(4));
        assert_eq!(command_from(Some("FROB")).map_err(|e| e.code()).err(), Some(4));
        let e = Env::from_vars(|k| match k {
            "CNI_CONTAINERID" => Some("abc".into()),
            "CNI_NETNS" => Some("/var/run/netns/x".into()),
            "CNI_IFNAME" => Some("this-name-is-too-long".into()),
            "CNI_ARGS" => Some("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".into()),
            _ => None,
        });
        assert_eq!(e.require_attachment().map_err(|e| e.code()).err(), Some(4));
        assert_eq!(e.arg("K8S_POD_NAME"), Some("web-0"));
        for (id, ifname) in [("../../etc/passwd", "eth0"), ("abc", "../x"), ("abc", ".."), (".hidden", "eth0")] {
            let e = Env::from_vars(|k| match k {
                "CNI_CONTAINERID" => Some(id.into()),
                "CNI_IFNAME" => Some(ifname.into()),
                _ => None,
            });
            assert_eq!(e.require_ids().map_err(|e| e.code()).err(), Some(4), "{id} {ifname}");
        }
    }

    #[test]
    fn gc_needs_a_well_formed_valid_attachments_list() {
        let base = r#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","ipam":{"type":"host-local"}"#;
        let with = |extra: &str| conf(&format!("{base}{extra}}}")).expect("parses").valid_attachments().map_err(|e| e.code());
        assert_eq!(with(""), Err(7), "missing");
        assert_eq!(with(r#","cni.dev/valid-attachments":"all""#), Err(7), "not a list");
        assert_eq!(with(r#","cni.dev/valid-attachments":[{"containerID":"a"}]"#), Err(7), "no ifname");
        assert_eq!(with(r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":7}]"#), Err(7), "ifname not a string");
        assert_eq!(with(r#","cni.dev/valid-attachments":[]"#), Ok(vec![]), "an empty list keeps nothing, as asked");
        assert_eq!(with(r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]"#), Ok(vec![("a".into(), "eth0".into())]));
    }
}
