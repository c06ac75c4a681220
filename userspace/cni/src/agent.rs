//! The local agent's endpoint API, both sides' types and the plugin's
//! client: HTTP/1.1 (hyper) over a Unix socket that only root can open.
//!
//! - `POST /v1/endpoints` with a [`Registration`]: the agent answers 200
//!   with [`Programmed`] once the pod's identity, policy and programs are
//!   in the datapath, or an error ([`ApiError`]).
//! - `DELETE /v1/endpoints/<containerID>/<ifname>`: the agent forgets the
//!   registration (204; also when it had none).
//! - `GET /v1/status`: 200 when the agent can program new pods (its first
//!   full sync is done and its watches are not stale), 503 otherwise.

use std::{net::IpAddr, path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// Where the agent listens, unless the network configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/weir/agent.sock";
pub const ENDPOINTS_PATH: &str = "/v1/endpoints";
pub const STATUS_PATH: &str = "/v1/status";

/// A pod the plugin has just wired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registration {
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    /// The pod-side interface (CNI_IFNAME).
    pub ifname: String,
    /// The host side of the pod's veth.
    pub host_interface: String,
    pub addresses: Vec<IpAddr>,
    /// How long the plugin waits; the agent gives up (and answers) sooner.
    pub timeout_ms: u64,
}

/// One programmed address of a registered pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgrammedAddress {
    pub address: IpAddr,
    pub endpoint_id: u32,
    pub identity: u32,
}

/// The agent's answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Programmed {
    pub addresses: Vec<ProgrammedAddress>,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Why the agent did not confirm.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the weir agent is not reachable at {socket}: {source}")]
    Unreachable { socket: String, source: std::io::Error },
    #[error("the weir agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the weir agent refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// The connection broke before an answer (the agent restarting).
    #[error("the weir agent's connection broke before it answered: {0}")]
    Interrupted(String),
    #[error("talking to the weir agent: {0}")]
    Protocol(String),
}

impl AgentError {
    /// The agent is down or slow (try again), as opposed to refusing.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout(_) | Self::Interrupted(_) => true,
            Self::Refused { status, .. } => *status == 503,
            Self::Protocol(_) => false,
        }
    }
}

/// A client for one call (the plugin is a short-lived process).
pub struct AgentClient<'a> {
    pub socket: &'a Path,
    pub timeout: Duration,
}

impl AgentClient<'_> {
    /// Registers a pod; returns once the agent has programmed it.
    pub fn register(&self, reg: &Registration) -> Result<Programmed, AgentError> {
        let body = serde_json::to_vec(reg).map_err(|e| AgentError::Protocol(e.to_string()))?;
        let (status, body) = self.call(Method::POST, ENDPOINTS_PATH, body)?;
        if status != StatusCode::OK {
            return Err(refused(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| AgentError::Protocol(format!("the agent's answer: {e}")))
    }

    /// Forgets a registration (none is fine).
    pub fn unregister(&self, container_id: &str, ifname: &str) -> Result<(), AgentError> {
        let (status, body) = self.call(Method::DELETE, &format!("{ENDPOINTS_PATH}/{container_id}/{ifname}"), Vec::new())?;
        if status.is_success() { Ok(()) } else { Err(refused(status, &body)) }
    }

    /// Ready to program new pods.
    pub fn status(&self) -> Result<(), AgentError> {
        let (status, body) = self.call(Method::GET, STATUS_PATH, Vec::new())?;
        if status == StatusCode::OK { Ok(()) } else { Err(refused(status, &body)) }
    }

    fn call(&self, method: Method, path: &str, body: Vec<u8>) -> Result<(StatusCode, Bytes), AgentError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().map_err(|e| AgentError::Protocol(e.to_string()))?;
        let socket = self.socket;
        rt.block_on(async {
            let call = async {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|source| AgentError::Unreachable { socket: socket.display().to_string(), source })?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| AgentError::Interrupted(e.to_string()))?;
                tokio::spawn(conn);
                let req = hyper::Request::builder()
                    .method(method)
                    .uri(path)
                    .header(hyper::header::HOST, "weir-agent")
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| AgentError::Protocol(e.to_string()))?;
                let resp = sender.send_request(req).await.map_err(|e| AgentError::Interrupted(e.to_string()))?;
                let status = resp.status();
                let body = resp.into_body().collect().await.map_err(|e| AgentError::Interrupted(e.to_string()))?.to_bytes();
                Ok((status, body))
            };
            tokio::time::timeout(self.timeout, call).await.map_err(|_| AgentError::Timeout(self.timeout))?
        })
    }
}

fn refused(status: StatusCode, body: &[u8]) -> AgentError {
    let message = serde_json::from_slice::<ApiError>(body).map(|e| e.error).unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string());
    AgentError::Refused { status: status.as_u16(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_round_trips_in_camel_case_and_rejects_unknown_fields() {
        let r = Registration {
            namespace: "shop".into(),
            name: "web-0".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
            host_interface: "weir0123456789a".into(),
            addresses: vec!["10.244.1.9".parse().expect("ip")],
            timeout_ms: 10_000,
        };
        let j = serde_json::to_string(&r).expect("json");
        assert!(j.contains("\"containerId\":\"abc\"") && j.contains("\"hostInterface\""), "{j}");
        assert_eq!(serde_json::from_str::<Registration>(&j).expect("back"), r);
        assert!(serde_json::from_str::<Registration>(&j.replace("\"ifname\"", "\"ifnam\"")).is_err());
    }

    #[test]
    fn an_agent_that_drops_the_connection_mid_call_is_transient() {
        let dir = std::env::temp_dir().join(format!("weir-agent-drop-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let socket = dir.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        // Accepts, reads the request, and closes without an answer (an
        // agent killed mid-registration).
        let t = std::thread::spawn(move || {
            use std::io::Read as _;
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
        });
        let c = AgentClient { socket: &socket, timeout: Duration::from_secs(5) };
        let e = c.status().expect_err("no answer");
        assert!(matches!(e, AgentError::Interrupted(_)) && e.is_transient(), "{e}");
        let _ = t.join();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_socket_is_unreachable_and_transient() {
        let c = AgentClient { socket: Path::new("/nonexistent/weir/agent.sock"), timeout: Duration::from_secs(1) };
        let e = c.status().expect_err("no agent");
        assert!(matches!(e, AgentError::Unreachable { .. }) && e.is_transient(), "{e}");
    }
}
