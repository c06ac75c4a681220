//! kube-proxy's health endpoints, for cloud load balancers:
//! - the node's, on `--healthz-bind-address` (default 0.0.0.0:10256):
//!   `/healthz` and `/livez` answer 200 once the agent has programmed the
//!   cluster state (503 before), with kube-proxy's JSON body;
//! - one per externalTrafficPolicy: Local LoadBalancer service, on its
//!   healthCheckNodePort: 200 with the count of this node's ready
//!   endpoints when there is one, 503 when there is none (kube-proxy's
//!   body and `X-Load-Balancing-Endpoints` header), so the load balancer
//!   sends traffic only to nodes that can serve it locally.
//!
//! A port that cannot be bound (taken by another process) is logged and
//! counted, and tried again at the next sync; nothing here stops the agent.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use hyper::StatusCode;
use weir_model::health::HealthCheck;

use crate::{
    http::{self, Response},
    metrics::{KindLabels, Metrics},
};

fn json_response(ok: bool, body: String) -> Response {
    let (status, body) = if ok { (StatusCode::OK, body) } else { (StatusCode::SERVICE_UNAVAILABLE, body) };
    let mut r = Response::new(status, "application/json", body);
    r.headers.push(("X-Content-Type-Options", "nosniff".into()));
    r
}

fn unix_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs.to_string()
}

/// Serves the node's `/healthz` and `/livez`, healthy once the agent is
/// ready (its first full sync programmed the cluster state).
pub async fn serve_node(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = http::bind(addr).await?;
    tracing::info!(%addr, "serving the node health check (/healthz, /livez)");
    http::spawn(listener, move |path: String| {
        let m = metrics.clone();
        async move {
            let ok = m.probes.is_synced();
            match path.as_str() {
                "/healthz" | "/livez" => {
                    let now = unix_now();
                    let body = format!("{{\"lastUpdated\": \"{now}\",\"currentTime\": \"{now}\",\"nodeEligible\": {ok}}}\n");
                    json_response(ok, body)
                }
                _ => Response::new(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
            }
        }
    });
    Ok(())
}

struct Listener {
    check: Arc<Mutex<HealthCheck>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The per-service health-check servers.
#[derive(Default)]
pub struct ServiceHealth {
    listeners: BTreeMap<u16, Listener>,
}

fn answer(c: &HealthCheck) -> Response {
    let body = format!(
        "{{\"service\": {{\"namespace\": \"{}\",\"name\": \"{}\"}},\"localEndpoints\": {},\"serviceProxyHealthy\": true}}\n",
        c.namespace, c.name, c.local_endpoints
    );
    let mut r = json_response(c.local_endpoints > 0, body);
    r.headers.push(("X-Load-Balancing-Endpoints", c.local_endpoints.to_string()));
    r
}

impl ServiceHealth {
    /// Serves exactly `wanted`: new ports are bound, counts updated in
    /// place, ports no longer wanted closed.
    pub async fn sync(&mut self, wanted: BTreeMap<u16, HealthCheck>, metrics: &Metrics) {
        self.listeners.retain(|port, _| wanted.contains_key(port));
        for (port, check) in wanted {
            if let Some(l) = self.listeners.get(&port) {
                if let Ok(mut c) = l.check.lock() {
                    *c = check;
                }
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let listener = match http::bind(addr).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::error!(%error, port, service = %format!("{}/{}", check.namespace, check.name), "binding the health-check node port");
                    metrics.reconcile_errors.get_or_create(&KindLabels { kind: "health_check_port".into() }).inc();
                    continue;
                }
            };
            tracing::info!(port, service = %format!("{}/{}", check.namespace, check.name), local_endpoints = check.local_endpoints, "serving a health-check node port");
            let shared = Arc::new(Mutex::new(check));
            let for_task = shared.clone();
            let task = http::spawn(listener, move |_path: String| {
                let c = for_task.clone();
                async move {
                    match c.lock() {
                        Ok(c) => answer(&c),
                        Err(_) => Response::new(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "poisoned\n"),
                    }
                }
            });
            self.listeners.insert(port, Listener { check: shared, task });
        }
    }
}
