//! The Kubernetes source: kube-rs watchers over Service, EndpointSlice,
//! Pod, Namespace, Node and NetworkPolicy (k8s-openapi types) and weir's
//! ClusterNetworkPolicy and WeirNetworkPolicy, with in-cluster config or
//! kubeconfig through `kube::Config::infer`.
//!
//! A cluster without weir's CRDs answers their list with 404: the kind
//! counts as listed and empty (so the agent still becomes ready), and the
//! watcher keeps retrying, so installing the CRDs later takes effect.
//!
//! Every (re)list is delivered as one `Change::Replace` of the whole kind,
//! so an object deleted while the watch was down is deleted here too: a
//! watch gap can never lose a deletion (the failure mode of
//! cilium/cilium#48050).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client,
};
use weir_crds::{ClusterNetworkPolicy, WeirNetworkPolicy};
use weir_model::{validate::validate, Change, Kind, Object, ObjectKey, PodObject, Warning};

use super::{SourceEvent, Sender, StreamingLists};

/// Sends `Synced` once every kind has completed its first list.
struct SyncTracker {
    remaining: AtomicUsize,
    sent: AtomicBool,
}

impl SyncTracker {
    async fn listed(&self, tx: &Sender) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 && !self.sent.swap(true, Ordering::AcqRel) {
            let _ = tx.send(SourceEvent::Synced).await;
        }
    }
}

/// Connects with `kube::Config::infer` and starts the watchers.
///
/// The client's own retry layer is off: it retries a 503 or 429 up to 15
/// times with delays growing to 1,000 s, so a watch would hang through an
/// outage without a word and the agent would stay ready while blind. The
/// watchers' jittered backoff (0.8 s to 30 s) retries instead, and every
/// failure reaches the probes.
pub fn spawn(tx: Sender, opts: super::KubeOptions) -> super::PodLookup {
    let cell = Arc::new(std::sync::OnceLock::new());
    let lookup = super::PodLookup::kube(cell.clone());
    tokio::spawn(async move {
        let client = kube::Config::infer().await.map_err(kube::Error::InferConfig).and_then(|mut config| {
            config.default_retry = false;
            Client::try_from(config)
        });
        match client {
            Ok(client) => {
                let _ = cell.set(client.clone());
                run(client, tx, opts);
            }
            Err(error) => tracing::error!(%error, "cannot reach the Kubernetes API (kube::Config::infer)"),
        }
    });
    lookup
}

/// What kube-proxy watches, and weir with it: Services not claimed by
/// another proxy, and their EndpointSlices except those of headless
/// Services (which have no ClusterIP to balance).
pub const SERVICE_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name";
pub const ENDPOINTSLICE_SELECTOR: &str = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

/// The list/watch parameters of one kind: kube-proxy's label selectors,
/// and lists served from the API server's watch cache
/// (`resourceVersion=0`, ListSemantic::Any), as client-go's informers
/// list, so that 4,000 agents relisting do not each cost a quorum read of
/// etcd. The watch cache ignores `limit` at `resourceVersion=0` (and
/// kube-rs drops the resourceVersion when a limit is set), so these lists
/// are not paginated. Bookmarks stay on (kube's default).
pub fn watch_config(kind: Kind, streaming: bool) -> watcher::Config {
    let mut c = watcher::Config::default().any_semantic();
    c.page_size = None;
    if streaming {
        // The initial state as watch events (`sendInitialEvents`), parsed
        // one object at a time, instead of one list body read whole.
        c = c.streaming_lists();
    }
    match kind {
        Kind::Service => c.labels(SERVICE_SELECTOR),
        Kind::EndpointSlice => c.labels(ENDPOINTSLICE_SELECTOR),
        _ => c,
    }
}

/// Starts one watcher per kind on `client`.
pub fn run(client: Client, tx: Sender, opts: super::KubeOptions) {
    let tracker = Arc::new(SyncTracker { remaining: AtomicUsize::new(Kind::ALL.len()), sent: AtomicBool::new(false) });
    tokio::spawn(watch(Api::<Service>::all(client.clone()), Kind::Service, |o| Object::Service(Box::new(o)), tx.clone(), tracker.clone(), opts));
    tokio::spawn(watch(Api::<EndpointSlice>::all(client.clone()), Kind::EndpointSlice, Object::EndpointSlice, tx.clone(), tracker.clone(), opts));
    // Pods in weir's slim type: a list of every Pod is parsed into it
    // directly, never into the upstream type.
    tokio::spawn(watch(Api::<PodObject>::all(client.clone()), Kind::Pod, |o| Object::Pod(Box::new(o)), tx.clone(), tracker.clone(), opts));
    tokio::spawn(watch(Api::<Namespace>::all(client.clone()), Kind::Namespace, Object::Namespace, tx.clone(), tracker.clone(), opts));
    tokio::spawn(watch(Api::<Node>::all(client.clone()), Kind::Node, |o| Object::Node(Box::new(o)), tx.clone(), tracker.clone(), opts));
    tokio::spawn(watch(Api::<NetworkPolicy>::all(client.clone()), Kind::NetworkPolicy, Object::NetworkPolicy, tx.clone(), tracker.clone(), opts));
    tokio::spawn(watch(Api::<ClusterNetworkPolicy>::all(client.clone()), Kind::ClusterNetworkPolicy, Object::ClusterNetworkPolicy, tx.clone(), tracker.clone(), opts));
    tokio::spawn(watch(Api::<WeirNetworkPolicy>::all(client), Kind::WeirNetworkPolicy, Object::WeirNetworkPolicy, tx, tracker, opts));
}

/// The API does not serve the kind at all (its CRD is not installed).
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
            // A real API server answers an unserved group with a plain-text 404.
            s.is_not_found() || s.code == 404
        }
        _ => false,
    }
}

/// The API server answered a request with a refusal that retrying will
/// not change (a 4xx other than 404, 408, 410 and 429): for a streaming
/// list, an API server whose WatchList feature is off (422 Invalid) or
/// that predates it (it refuses `resourceVersionMatch` on a watch).
fn refused(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return false,
    };
    (400..500).contains(&code) && ![404, 408, 410, 429].contains(&code)
}

/// Validates an object from the API; invalid ones become a warning.
fn checked(o: Object) -> Result<Object, Warning> {
    match validate(&o) {
        Ok(()) => Ok(o),
        Err(e) => Err(Warning { file: None, object: Some(o.key().to_string()), field: Some(e.field), message: e.message }),
    }
}

async fn watch<K>(api: Api<K>, kind: Kind, wrap: fn(K) -> Object, tx: Sender, tracker: Arc<SyncTracker>, opts: super::KubeOptions)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    // default_backoff: exponential (0.8 s to 30 s) with jitter, so that
    // agents that lost the API server together do not come back together.
    let mut streaming = opts.streaming_lists != StreamingLists::Never;
    let start = |streaming: bool| watcher(api.clone(), watch_config(kind, streaming)).default_backoff().boxed();
    let mut stream = start(streaming);
    let mut buffer: Option<Vec<Object>> = None;
    // Objects the (re)list held that failed validation: they keep their
    // previous version.
    let mut rejected: Vec<ObjectKey> = Vec::new();
    let mut warnings = Vec::new();
    let mut first_list = true;
    let mut failing = false;
    while let Some(ev) = stream.next().await {
        let at = Instant::now();
        // Every error is reported (its time tells a resumed watch from a
        // failing one); a success only when it ends a failure. `Init` is
        // no success: the watcher yields it before the list it starts.
        let now_failing = match &ev {
            Err(error) => Some(!(kind.is_crd() && not_served(error))),
            Ok(watcher::Event::Init) => None,
            Ok(_) => Some(false),
        };
        if let Some(now_failing) = now_failing.filter(|f| *f || failing) {
            failing = now_failing;
            if tx.send(SourceEvent::WatchHealth { kind, failing }).await.is_err() {
                return;
            }
        }
        let (changes, listed) = match ev {
            Ok(watcher::Event::Apply(o)) => match checked(wrap(o)) {
                Ok(o) => (vec![Change::Upsert(o)], false),
                Err(w) => {
                    warnings.push(w);
                    (Vec::new(), false)
                }
            },
            Ok(watcher::Event::Delete(o)) => (vec![Change::Delete(wrap(o).key())], false),
            Ok(watcher::Event::Init) => {
                buffer = Some(Vec::new());
                rejected.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                let o = wrap(o);
                let key = o.key();
                match checked(o) {
                    Ok(o) => buffer.get_or_insert_with(Vec::new).push(o),
                    Err(w) => {
                        warnings.push(w);
                        rejected.push(key);
                    }
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                (vec![Change::Replace { kind, objects: buffer.take().unwrap_or_default(), rejected: std::mem::take(&mut rejected) }], true)
            }
            Err(error) if kind.is_crd() && not_served(&error) => {
                if first_list {
                    tracing::warn!(kind = kind.as_str(), "the API does not serve this kind (CRD not installed?): treating it as empty; retrying with backoff");
                    first_list = false;
                    tracker.listed(&tx).await;
                }
                continue;
            }
            Err(error) if streaming && opts.streaming_lists == StreamingLists::Auto && refused(&error) => {
                tracing::warn!(kind = kind.as_str(), %error, "the API server refused a streaming list (WatchList off?); listing instead");
                streaming = false;
                buffer = None;
                rejected.clear();
                stream = start(false);
                continue;
            }
            Err(error) => {
                tracing::warn!(kind = kind.as_str(), %error, "watch error; retrying with backoff");
                continue;
            }
        };
        let warnings = std::mem::take(&mut warnings);
        if tx.send(SourceEvent::Changes { changes, warnings, at }).await.is_err() {
            return;
        }
        if listed && first_list {
            first_list = false;
            tracker.listed(&tx).await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The kube source against recorded API-server responses: a scripted
    //! HTTP server plays list, watch, a 410 Gone watch error (the watch
    //! gap), and a relist in which an object has disappeared and another
    //! was edited into something invalid.

    use std::{
        collections::BTreeSet,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
        sync::mpsc,
    };
    use weir_model::{ClusterState, Kind};

    use super::*;

    fn service(name: &str, ip: &str) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}","namespace":"default","resourceVersion":"5"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}"#
        )
    }

    fn list(kind: &str, api_version: &str, rv: &str, items: &[String]) -> String {
        format!(r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{{"resourceVersion":"{rv}"}},"items":[{}]}}"#, items.join(","))
    }

    /// Recorded responses: the services list shrinks across a watch gap.
    struct Script {
        service_lists: usize,
        requests: Vec<String>,
    }

    async fn respond(mut conn: tokio::net::TcpStream, script: Arc<Mutex<Script>>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let req = String::from_utf8_lossy(&buf).to_string();
        let target = req.split_whitespace().nth(1).unwrap_or("").to_string();
        let is_watch = target.contains("watch=true");
        let path = target.split('?').next().unwrap_or("").to_string();
        let (list_body, watch_gone) = {
            let mut s = script.lock().expect("script");
            s.requests.push(target.clone());
            match (path.as_str(), is_watch) {
                ("/api/v1/services", false) => {
                    s.service_lists += 1;
                    let items = if s.service_lists == 1 {
                        vec![service("a", "10.96.0.1"), service("b", "10.96.0.2")]
                    } else {
                        // "b" is gone; "a" was edited to an invalid address.
                        vec![service("a", "10.96.0.300")]
                    };
                    (Some(list("ServiceList", "v1", &format!("{}", s.service_lists * 10), &items)), false)
                }
                // The first services watch hits a compacted history: 410 Gone.
                ("/api/v1/services", true) => (None, s.service_lists == 1),
                ("/api/v1/pods", false) => (Some(list("PodList", "v1", "1", &[])), false),
                ("/api/v1/namespaces", false) => (Some(list("NamespaceList", "v1", "1", &[])), false),
                ("/api/v1/nodes", false) => (Some(list("NodeList", "v1", "1", &[])), false),
                ("/apis/discovery.k8s.io/v1/endpointslices", false) => {
                    (Some(list("EndpointSliceList", "discovery.k8s.io/v1", "1", &[])), false)
                }
                ("/apis/networking.k8s.io/v1/networkpolicies", false) => {
                    (Some(list("NetworkPolicyList", "networking.k8s.io/v1", "1", &[])), false)
                }
                // weir's cluster policy CRD is installed; WeirNetworkPolicy
                // is not (404 below): the source must still sync.
                ("/apis/policy.weir.dev/v1alpha1/clusternetworkpolicies", false) => {
                    let cnp = serde_json::json!({"apiVersion": "policy.weir.dev/v1alpha1", "kind": "ClusterNetworkPolicy", "metadata": {"name": "deny-db", "resourceVersion": "1"}, "spec": {"priority": 10, "subject": {}, "ingress": [{"name": "no-web", "action": "Deny", "peers": [{"pods": {}}]}]}});
                    (Some(list("ClusterNetworkPolicyList", "policy.weir.dev/v1alpha1", "1", &[cnp.to_string()])), false)
                }
                _ => (None, false),
            }
        };
        if let Some(body) = list_body {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            return;
        }
        if !is_watch {
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            return;
        }
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .await;
        if watch_gone {
            let ev = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#.to_string() + "\n";
            let _ = conn.write_all(format!("{:x}\r\n{ev}\r\n0\r\n\r\n", ev.len()).as_bytes()).await;
            return;
        }
        // Any other watch: open and quiet.
        tokio::time::sleep(Duration::from_secs(30)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_deleted_during_a_watch_gap_is_gone_after_the_relist() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(Mutex::new(Script { service_lists: 0, requests: Vec::new() }));
        let s2 = script.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(respond(conn, s2.clone()));
            }
        });
        let url: http::Uri = format!("http://{addr}").parse().expect("url");
        let client = Client::try_from(kube::Config::new(url)).expect("client");
        let (tx, mut rx) = mpsc::channel(64);
        // Lists: the recorded responses are lists and plain watches.
        run(client, tx, crate::KubeOptions { streaming_lists: StreamingLists::Never });

        let mut state = ClusterState::new();
        let mut seen_b = false;
        let mut synced = false;
        let names = |st: &ClusterState| -> BTreeSet<String> { st.service_keys().into_iter().map(|(_, n)| n).collect() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ev = tokio::time::timeout_at(deadline, rx.recv()).await;
            let Ok(Some(ev)) = ev else {
                let s = script.lock().expect("script");
                panic!("no relist within 20 s; state {:?}; requests {:?}", names(&state), s.requests);
            };
            match ev {
                SourceEvent::Changes { changes, .. } => {
                    for c in changes {
                        state.apply(c);
                    }
                }
                SourceEvent::Synced => synced = true,
                SourceEvent::WatchHealth { .. } => {}
            }
            let n = names(&state);
            if n.contains("b") {
                seen_b = true;
            }
            if seen_b && synced && n == BTreeSet::from(["a".to_string()]) {
                break;
            }
        }
        assert_eq!(state.counts()[&Kind::Service], 1);
        let a = state.service(&("default".to_string(), "a".to_string())).expect("a");
        assert_eq!(a.cluster_ips, vec!["10.96.0.1".parse::<std::net::IpAddr>().expect("ip")], "the relist's invalid edit of a keeps its previous version");
        assert_eq!(state.counts()[&Kind::ClusterNetworkPolicy], 1, "the cluster policy was listed");
        assert_eq!(state.counts()[&Kind::WeirNetworkPolicy], 0, "a kind without its CRD counts as empty");
        assert_eq!(state.policies().len(), 1, "and compiles");
        let s = script.lock().expect("script");
        assert!(s.service_lists >= 2, "the watcher relisted after the 410: {:?}", s.requests);
        // kube-proxy's selectors, and lists from the watch cache.
        let of = |path: &str| -> Vec<&String> { s.requests.iter().filter(|r| r.starts_with(&format!("{path}?"))).collect() };
        let services = of("/api/v1/services");
        assert!(!services.is_empty() && services.iter().all(|r| r.contains("labelSelector=%21service.kubernetes.io%2Fservice-proxy-name")), "{services:?}");
        let slices = of("/apis/discovery.k8s.io/v1/endpointslices");
        assert!(
            !slices.is_empty() && slices.iter().all(|r| r.contains("labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name")),
            "{slices:?}"
        );
        let pods = of("/api/v1/pods");
        assert!(pods.iter().all(|r| !r.contains("labelSelector")), "{pods:?}");
        let lists: Vec<&&String> = pods.iter().chain(&services).filter(|r| !r.contains("watch=true")).collect();
        assert!(!lists.is_empty() && lists.iter().all(|r| r.contains("resourceVersion=0")), "lists from the watch cache: {lists:?}");
    }
}
