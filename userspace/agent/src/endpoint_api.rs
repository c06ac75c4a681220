//! The local endpoint API (`weir_cni::agent` has the protocol): weir-cni
//! registers a pod it has just wired and waits for the answer. Served on a
//! Unix socket that only root can open (`--run-dir`/agent.sock, mode
//! 0600, in a 0700 directory); the main loop does the work
//! (`endpoints::Endpoints`), this module only speaks HTTP.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper::{Method, StatusCode};
use tokio::sync::{mpsc, oneshot};
use weir_cni::agent::{ApiError, Programmed, Registration, ENDPOINTS_PATH, STATUS_PATH};

use crate::{
    http::{self, Limits, Request, Response},
    metrics::Metrics,
};

/// The longest a registration may wait (its `timeoutMs` is clamped to it).
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Why a registration was not confirmed: an HTTP status and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

pub type Reply = oneshot::Sender<Result<Programmed, Refusal>>;

/// A request for the main loop.
pub enum ApiCall {
    Register { reg: Registration, reply: Reply },
    Unregister { container_id: String, ifname: String, reply: oneshot::Sender<()> },
}

fn json(status: StatusCode, body: String) -> Response {
    Response::new(status, "application/json", body)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::to_string(&ApiError { error: message.into() }).unwrap_or_default();
    json(status, body)
}

/// Checks what becomes map keys, names and file content.
pub fn check(reg: &Registration) -> Result<(), String> {
    let name_ok = |s: &str| !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !name_ok(&reg.namespace) {
        return Err(format!("namespace {:?} is not a Kubernetes name", reg.namespace));
    }
    if !name_ok(&reg.name) {
        return Err(format!("name {:?} is not a Kubernetes name", reg.name));
    }
    if reg.container_id.is_empty() || !reg.container_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Err(format!("containerId {:?} must be [A-Za-z0-9_.-]+", reg.container_id));
    }
    if reg.ifname.is_empty() || reg.ifname.len() > 15 || reg.ifname.contains('/') {
        return Err(format!("ifname {:?} is not an interface name", reg.ifname));
    }
    if !crate::pods::is_pod_interface(&reg.host_interface) || reg.host_interface.len() > 15 {
        return Err(format!("hostInterface {:?} is not a weir pod interface (weir + 11 hex characters)", reg.host_interface));
    }
    if reg.addresses.is_empty() || reg.addresses.len() > weir_common::link::LINK_ADDRS_MAX {
        return Err(format!("addresses: {} given, 1-{} allowed", reg.addresses.len(), weir_common::link::LINK_ADDRS_MAX));
    }
    Ok(())
}

fn outcome(status: StatusCode) -> &'static str {
    match status {
        StatusCode::OK => "programmed",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "error",
    }
}

async fn register(body: &[u8], tx: &mpsc::Sender<ApiCall>, metrics: &Metrics) -> Response {
    let r = register_inner(body, tx).await;
    metrics.registrations.get_or_create(&crate::metrics::KindLabels { kind: outcome(r.status).into() }).inc();
    r
}

async fn register_inner(body: &[u8], tx: &mpsc::Sender<ApiCall>) -> Response {
    let reg: Registration = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the registration: {e}")),
    };
    if let Err(why) = check(&reg) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let wait = Duration::from_millis(reg.timeout_ms).min(MAX_WAIT);
    let (reply, answer) = oneshot::channel();
    if tx.send(ApiCall::Register { reg, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    }
    // The main loop answers by the deadline; this only guards against a
    // loop that does not.
    match tokio::time::timeout(wait + Duration::from_secs(2), answer).await {
        Ok(Ok(Ok(p))) => json(StatusCode::OK, serde_json::to_string(&p).unwrap_or_default()),
        Ok(Ok(Err(r))) => error(r.status, r.message),
        Ok(Err(_)) | Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the agent did not answer in time"),
    }
}

async fn unregister(path: &str, tx: &mpsc::Sender<ApiCall>) -> Response {
    let rest = path.strip_prefix(ENDPOINTS_PATH).and_then(|r| r.strip_prefix('/')).unwrap_or("");
    let Some((container_id, ifname)) = rest.split_once('/').filter(|(c, i)| !c.is_empty() && !i.is_empty() && !i.contains('/')) else {
        return error(StatusCode::NOT_FOUND, format!("{path}: expected {ENDPOINTS_PATH}/<containerID>/<ifname>"));
    };
    let (reply, done) = oneshot::channel();
    let call = ApiCall::Unregister { container_id: container_id.into(), ifname: ifname.into(), reply };
    if tx.send(call).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    }
    match tokio::time::timeout(Duration::from_secs(10), done).await {
        Ok(Ok(())) => Response::new(StatusCode::NO_CONTENT, "application/json", ""),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "the agent did not answer in time"),
    }
}

async fn answer(req: Request, tx: mpsc::Sender<ApiCall>, metrics: Arc<Metrics>) -> Response {
    match (&req.method, req.path.as_str()) {
        (&Method::POST, ENDPOINTS_PATH) => register(&req.body, &tx, &metrics).await,
        (&Method::DELETE, p) if p.starts_with(ENDPOINTS_PATH) => unregister(p, &tx).await,
        (&Method::GET, STATUS_PATH) => match metrics.probes.readiness() {
            Ok(()) => json(StatusCode::OK, "{\"ready\":true}".into()),
            Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        _ => error(StatusCode::NOT_FOUND, format!("{} {}: no such call", req.method, req.path)),
    }
}

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another process serves {0} (a second agent for this node?)")]
    InUse(PathBuf),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, #[source] source: std::io::Error },
}

/// Binds `socket` (replacing a stale one a dead agent left) and serves it.
pub async fn serve(socket: &Path, tx: mpsc::Sender<ApiCall>, metrics: Arc<Metrics>) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
        let path = path.to_path_buf();
        move |source| ServeError::Io { what, path, source }
    }
    if let Some(dir) = socket.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("creating", dir))?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(ServeError::InUse(socket.to_path_buf()));
        }
        std::fs::remove_file(socket).map_err(io("removing the stale socket", socket))?;
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(io("binding", socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod 0600", socket))?;
    let limits = Limits { max_connections: 256, connection_lifetime: MAX_WAIT + Duration::from_secs(10), max_body: 16 * 1024 };
    Ok(http::serve(listener, limits, move |req: Request| answer(req, tx.clone(), metrics.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registration {
        Registration {
            namespace: "shop".into(),
            name: "web-0".into(),
            container_id: "abc123".into(),
            ifname: "eth0".into(),
            host_interface: "weir0123456789a".into(),
            addresses: vec!["10.244.1.9".parse().expect("ip")],
            timeout_ms: 1000,
        }
    }

    #[test]
    fn a_registration_is_checked_field_by_field() {
        assert_eq!(check(&reg()), Ok(()));
        type Spoil = fn(&mut Registration);
        let cases: [(&str, Spoil); 6] = [
            ("namespace", |r| r.namespace = "Shop/../x".into()),
            ("name", |r| r.name = String::new()),
            ("containerId", |r| r.container_id = "../etc".into()),
            ("ifname", |r| r.ifname = "a/b".into()),
            ("hostInterface", |r| r.host_interface = "eth0".into()),
            ("addresses", |r| r.addresses.clear()),
        ];
        for (field, break_it) in cases {
            let mut r = reg();
            break_it(&mut r);
            let e = check(&r).expect_err(field);
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }
}
