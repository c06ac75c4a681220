//! CNI errors: each failure mode with its spec code, printed as a spec
//! error object on stdout.

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("incompatible CNI version {0}")]
    IncompatibleVersion(String),
    #[error("unsupported field {0}")]
    UnsupportedField(String),
    #[error("invalid environment variable {var}: {why}")]
    InvalidEnv { var: &'static str, why: String },
    #[error("I/O failure: {0}")]
    Io(String),
    #[error("failed to decode the network configuration: {0}")]
    Decode(String),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error("try again later: {0}")]
    TryAgainLater(String),
    /// An error reported by the delegated IPAM plugin, passed through.
    #[error("IPAM plugin {plugin} failed: {msg}")]
    Ipam { plugin: String, code: u32, msg: String, details: String },
    /// A link, address, route or neighbour operation the kernel refused.
    #[error(transparent)]
    Netlink(#[from] crate::nl::NlError),
    /// The agent answered a registration with a refusal.
    #[error("the weir agent did not program the pod: {0}")]
    AgentRefused(String),
    /// STATUS: the plugin cannot serve ADD (the agent is down or not ready).
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("{what}: {detail}")]
    Internal { what: String, detail: String },
}

impl CniError {
    /// The spec's well-known error codes (1-7, 11, 50); 100+ is plugin-specific.
    pub fn code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion(_) => 1,
            Self::UnsupportedField(_) => 2,
            Self::InvalidEnv { .. } => 4,
            Self::Io(_) => 5,
            Self::Decode(_) => 6,
            Self::InvalidConfig(_) => 7,
            Self::TryAgainLater(_) => 11,
            Self::Ipam { code, .. } => *code,
            Self::NotReady(_) => 50,
            Self::AgentRefused(_) => 100,
            Self::Netlink(_) | Self::Internal { .. } => 999,
        }
    }

    pub fn internal(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Internal { what: what.into(), detail: detail.into() }
    }

    /// The spec error object.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct E<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: String,
            details: String,
        }
        let (msg, details) = match self {
            Self::Ipam { msg, details, .. } => (msg.clone(), details.clone()),
            Self::Internal { what, detail } => (what.clone(), detail.clone()),
            other => (other.to_string(), String::new()),
        };
        serde_json::to_string(&E { cni_version, code: self.code(), msg, details })
            .unwrap_or_else(|_| format!("{{\"code\":{}}}", self.code()))
    }
}
