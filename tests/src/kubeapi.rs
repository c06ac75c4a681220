//! A scripted Kubernetes API server for tests (there is no real one
//! here). It lists the objects it is given (a whole list, or pages when
//! the client sends `limit`, continued by `continue` tokens), serves
//! single objects by name, and streams watches: objects changed through
//! [`Live`] reach every open watch of their kind as ADDED, MODIFIED or
//! DELETED events, each with its own resourceVersion, and a watch from
//! an older resourceVersion gets what it missed first. A watch with
//! `sendInitialEvents=true` (a streaming list, Kubernetes' WatchList)
//! first gets every object as ADDED, then a BOOKMARK annotated
//! `k8s.io/initial-events-end`. It records every request's target. It
//! runs inside a namespace, on that namespace's loopback.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    time::Duration,
};

use serde_json::Value;

use crate::netns::NetNs;

/// The list path of each kind weir reads, with its apiVersion. The last
/// two are weir's CRDs: served only when objects of their kind are given
/// (else 404, as an API server without the CRD installed answers).
const KINDS: [(&str, &str, &str); 8] = [
    ("/api/v1/services", "Service", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/api/v1/nodes", "Node", "v1"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice", "discovery.k8s.io/v1"),
    ("/apis/networking.k8s.io/v1/networkpolicies", "NetworkPolicy", "networking.k8s.io/v1"),
    ("/apis/policy.weir.dev/v1alpha1/clusternetworkpolicies", "ClusterNetworkPolicy", "policy.weir.dev/v1alpha1"),
    ("/apis/policy.weir.dev/v1alpha1/weirnetworkpolicies", "WeirNetworkPolicy", "policy.weir.dev/v1alpha1"),
];
const CRDS: usize = 2;

/// How long one watch stays open before the server ends it (the client
/// watches again from its last resourceVersion).
const WATCH_SECONDS: u64 = 290;

/// Every object of the YAML files in `dir`.
pub fn objects_in(dir: &std::path::Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        out.extend(objects_of(&text));
    }
    out
}

/// Every object of one YAML text (documents separated by `---`).
pub fn objects_of(text: &str) -> Vec<Value> {
    text.split("\n---").filter_map(|doc| serde_yaml_ng::from_str::<Value>(doc).ok()).filter(|v| v["kind"].is_string()).collect()
}

/// Serves `objects` inside `ns`; returns the port on 127.0.0.1.
pub fn serve(ns: &NetNs, objects: Vec<Value>) -> u16 {
    serve_switchable(ns, objects).0
}

/// Whether the scripted API server answers. While down it answers every
/// request with 503; the first watch of each kind after it comes back
/// gets 410 Gone (its history was compacted during the outage), so the
/// client relists, as a real API server makes it do after a long outage.
#[derive(Clone, Default)]
pub struct Switch {
    down: Arc<AtomicBool>,
    outages: Arc<AtomicU64>,
    expired: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Switch {
    pub fn set_down(&self, down: bool) {
        if down && !self.down.swap(true, Ordering::SeqCst) {
            self.outages.fetch_add(1, Ordering::SeqCst);
        } else if !down {
            self.down.store(false, Ordering::SeqCst);
        }
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Whether this watch is the first of its path since the last outage.
    fn expire_once(&self, path: &str) -> bool {
        let outages = self.outages.load(Ordering::SeqCst);
        let mut e = self.expired.lock().unwrap_or_else(|p| p.into_inner());
        let seen = e.entry(path.to_string()).or_insert(0);
        let first = *seen < outages;
        *seen = outages;
        first
    }
}

/// [`serve`], with a [`Switch`] to take the server down and back up.
pub fn serve_switchable(ns: &NetNs, objects: Vec<Value>) -> (u16, Switch) {
    let (port, live) = serve_live(ns, objects, Vec::new());
    (port, live.switch)
}

/// [`serve`], plus `unlisted` objects that a GET by name finds but no list
/// or watch has yet: objects created a moment ago.
pub fn serve_with_unlisted(ns: &NetNs, objects: Vec<Value>, unlisted: Vec<Value>) -> u16 {
    serve_live(ns, objects, unlisted).0
}

/// The objects, and every change made since the server started.
struct Store {
    rv: u64,
    /// Per list path: each object by its item path.
    lists: BTreeMap<&'static str, BTreeMap<String, Value>>,
    unlisted: BTreeMap<String, Value>,
    /// (resourceVersion, list path, the event's JSON line).
    history: Vec<(u64, &'static str, String)>,
    /// Each whole list as last served, until its kind changes (a real API
    /// server answers these from its watch cache, not by encoding
    /// 100,000 objects afresh for every client).
    encoded: BTreeMap<&'static str, std::sync::Arc<String>>,
    /// Every request's target (path and query), in order.
    requests: Vec<String>,
    /// Whether streaming lists are served (the WatchList feature); when
    /// not, a watch asking for them is refused as a real API server with
    /// the feature off refuses it (422 Invalid).
    watch_list: bool,
}

struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running scripted API server whose objects can change: each change is
/// one watch event.
#[derive(Clone)]
pub struct Live {
    shared: Arc<Shared>,
    pub switch: Switch,
}

impl Live {
    /// Creates or replaces `obj` (ADDED or MODIFIED); returns its new
    /// resourceVersion.
    pub fn apply(&self, obj: Value) -> u64 {
        self.change(obj, false)
    }

    /// Deletes `obj` (matched by kind, namespace and name).
    pub fn delete(&self, obj: Value) -> u64 {
        self.change(obj, true)
    }

    /// Every request's target so far (path and query), in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Serves streaming lists (the default) or refuses them, as an API
    /// server with the WatchList feature off does.
    pub fn set_watch_list(&self, on: bool) {
        self.shared.lock().watch_list = on;
    }

    fn change(&self, mut obj: Value, delete: bool) -> u64 {
        let (list, _, _) = kind_of(&obj).unwrap_or_else(|| panic!("the scripted API server serves no kind {}", obj["kind"]));
        let item = item_path(list, &obj);
        let mut s = self.shared.lock();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        s.encoded.remove(list);
        let objects = s.lists.entry(list).or_default();
        let ty = if delete {
            objects.remove(&item);
            "DELETED"
        } else if objects.insert(item, obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let line = serde_json::json!({"type": ty, "object": obj}).to_string() + "\n";
        s.history.push((rv, list, line));
        drop(s);
        self.shared.changed.notify_all();
        rv
    }
}

fn kind_of(obj: &Value) -> Option<(&'static str, &'static str, &'static str)> {
    KINDS.iter().copied().find(|(_, kind, _)| obj["kind"] == *kind)
}

/// Where a GET finds one object of the list at `list`.
fn item_path(list: &str, obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match obj["metadata"]["namespace"].as_str() {
        Some(n) if obj["kind"] != "Namespace" && obj["kind"] != "Node" && obj["kind"] != "ClusterNetworkPolicy" => {
            // /api/v1/pods -> /api/v1/namespaces/<n>/pods
            let (base, plural) = list.rsplit_once('/').unwrap_or(("", list));
            format!("{base}/namespaces/{n}/{plural}/{name}")
        }
        _ => format!("{list}/{name}"),
    }
}

/// [`serve`], returning a [`Live`] handle to change the objects while
/// clients watch, and with `unlisted` objects only a GET by name finds.
pub fn serve_live(ns: &NetNs, objects: Vec<Value>, unlisted: Vec<Value>) -> (u16, Live) {
    let mut store = Store { rv: 1, lists: BTreeMap::new(), unlisted: BTreeMap::new(), history: Vec::new(), encoded: BTreeMap::new(), requests: Vec::new(), watch_list: true };
    for (i, (list, kind, _)) in KINDS.iter().enumerate() {
        let served = i < KINDS.len() - CRDS || objects.iter().any(|o| o["kind"] == *kind);
        if served {
            store.lists.insert(list, BTreeMap::new());
        }
    }
    for mut o in objects {
        let Some((list, _, _)) = kind_of(&o) else { continue };
        o["metadata"]["resourceVersion"] = Value::String("1".into());
        store.lists.entry(list).or_default().insert(item_path(list, &o), o);
    }
    for o in unlisted {
        let Some((list, _, _)) = kind_of(&o) else { continue };
        store.unlisted.insert(item_path(list, &o), o);
    }
    let live = Live { shared: Arc::new(Shared { store: Mutex::new(store), changed: Condvar::new() }), switch: Switch::default() };
    // Encoded ahead, as a watch cache holds them.
    for (list, _, _) in KINDS {
        let _ = list_or_get(&live, list, list);
    }
    let server = live.clone();
    let (ptx, prx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _ = ptx.send(listener.local_addr().expect("addr").port());
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let server = server.clone();
            std::thread::spawn(move || respond(conn, &server));
        }
    });
    (prx.recv_timeout(Duration::from_secs(5)).expect("API server port"), live)
}

/// One query parameter of `target`, percent-decoding left out (the
/// values used here need none).
fn query<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    target.split_once('?')?.1.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn respond(mut conn: std::net::TcpStream, server: &Live) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let req = String::from_utf8_lossy(&buf).to_string();
    let target = req.split_whitespace().nth(1).unwrap_or("").to_string();
    let path = target.split('?').next().unwrap_or("");
    server.shared.lock().requests.push(target.clone());
    let switch = &server.switch;
    if switch.is_down() {
        let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"ServiceUnavailable","code":503}"#;
        let _ = conn.write_all(format!("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
        return;
    }
    let (served, watch_list) = {
        let s = server.shared.lock();
        (s.lists.contains_key(path), s.watch_list)
    };
    if target.contains("watch=true") && served && !watch_list && query(&target, "sendInitialEvents") == Some("true") {
        // What kube-apiserver answers with the WatchList feature gate off.
        let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled","reason":"Invalid","details":{"group":"meta.k8s.io","kind":"ListOptions","causes":[{"reason":"FieldValueForbidden","message":"Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled","field":"sendInitialEvents"}]},"code":422}"#;
        let _ = conn.write_all(format!("HTTP/1.1 422 Unprocessable Entity\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
        return;
    }
    if target.contains("watch=true") && served {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        if switch.expire_once(path) {
            let ev = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#.to_string() + "\n";
            let _ = conn.write_all(format!("{:x}\r\n{ev}\r\n0\r\n\r\n", ev.len()).as_bytes());
            return;
        }
        let mut from: u64 = query(&target, "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        if query(&target, "sendInitialEvents") == Some("true") {
            match send_initial_events(&mut conn, server, path) {
                Some(rv) => from = rv,
                None => return,
            }
        }
        stream_watch(&mut conn, server, path, from);
        return;
    }
    match list_or_get(server, path, &target) {
        Some(body) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body.as_bytes()));
        }
        None => {
            let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#;
            let _ = conn.write_all(format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
        }
    }
}

/// A list (whole, or the page `limit` and `continue` ask for) or one
/// object by its path.
fn list_or_get(server: &Live, path: &str, target: &str) -> Option<std::sync::Arc<String>> {
    let mut s = server.shared.lock();
    let limit: Option<usize> = query(target, "limit").and_then(|v| v.parse().ok()).filter(|n| *n > 0);
    if limit.is_none() {
        if let Some(body) = s.encoded.get(path) {
            return Some(body.clone());
        }
    }
    if let Some(objects) = s.lists.get(path) {
        let (list, kind, api) = KINDS.iter().copied().find(|(l, _, _)| *l == path)?;
        // The continue token is the index of the page's first item.
        let first: usize = query(target, "continue").and_then(|v| v.parse().ok()).unwrap_or(0);
        let items: Vec<&Value> = objects.values().skip(first).take(limit.unwrap_or(usize::MAX)).collect();
        let next = first + items.len();
        let mut meta = serde_json::json!({"resourceVersion": s.rv.to_string()});
        if limit.is_some() && next < objects.len() {
            meta["continue"] = Value::String(next.to_string());
            meta["remainingItemCount"] = Value::from(objects.len() - next);
        }
        let body = std::sync::Arc::new(serde_json::json!({"apiVersion": api, "kind": format!("{kind}List"), "metadata": meta, "items": items}).to_string());
        if limit.is_none() {
            s.encoded.insert(list, body.clone());
        }
        return Some(body);
    }
    s.lists.values().find_map(|l| l.get(path)).or_else(|| s.unlisted.get(path)).map(|o| std::sync::Arc::new(o.to_string()))
}

/// A streaming list's start: every object of the list at `path` as an
/// ADDED event, then the BOOKMARK that ends the initial events, at the
/// store's resourceVersion, which it returns (`None`: the client left).
fn send_initial_events(conn: &mut std::net::TcpStream, server: &Live, path: &str) -> Option<u64> {
    let (_, kind, api) = KINDS.iter().copied().find(|(l, _, _)| *l == path)?;
    let (lines, rv) = {
        let s = server.shared.lock();
        let lines: Vec<String> = s.lists.get(path).into_iter().flat_map(|l| l.values()).map(|o| serde_json::json!({"type": "ADDED", "object": o}).to_string() + "\n").collect();
        (lines, s.rv)
    };
    let end = serde_json::json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}).to_string() + "\n";
    // Chunks written a thousand at a time: one syscall per object would
    // make the server, not the agent, the slow part of a 100,000-Pod list.
    for batch in lines.chunks(1000).chain(std::iter::once(std::slice::from_ref(&end))) {
        let mut out = String::new();
        for line in batch {
            out.push_str(&format!("{:x}\r\n{line}\r\n", line.len()));
        }
        conn.write_all(out.as_bytes()).ok()?;
    }
    Some(rv)
}

/// Streams the events of the list at `path` after resourceVersion
/// `from`, then each new one as it happens, until the server goes down,
/// the client leaves, or [`WATCH_SECONDS`] pass.
fn stream_watch(conn: &mut std::net::TcpStream, server: &Live, path: &str, mut from: u64) {
    let start = std::time::Instant::now();
    let mut s = server.shared.lock();
    while start.elapsed() < Duration::from_secs(WATCH_SECONDS) && !server.switch.is_down() {
        let events: Vec<(u64, String)> = s.history.iter().filter(|(rv, list, _)| *rv > from && *list == path).map(|(rv, _, l)| (*rv, l.clone())).collect();
        if events.is_empty() {
            s = server.shared.changed.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
            continue;
        }
        drop(s);
        for (rv, line) in events {
            if conn.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).is_err() {
                return;
            }
            from = rv;
        }
        s = server.shared.lock();
    }
}

/// A kubeconfig file for the server on `port` (removed on drop).
pub struct Kubeconfig(pub PathBuf);

impl Kubeconfig {
    pub fn new(port: u16) -> Self {
        let p = std::env::temp_dir().join(crate::names::unique("kubeconfig"));
        std::fs::write(
            &p,
            format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"),
        )
        .expect("kubeconfig");
        Kubeconfig(p)
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
