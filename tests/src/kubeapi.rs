//! A scripted Kubernetes API server for tests (there is no real one
//! here): it lists the objects it is given, serves single objects by
//! name, and keeps watches open and quiet. It runs inside a namespace,
//! on that namespace's loopback.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::Value;

use crate::netns::NetNs;

/// The list path of each kind weir reads, with its apiVersion.
const KINDS: [(&str, &str, &str); 6] = [
    ("/api/v1/services", "Service", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/api/v1/nodes", "Node", "v1"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice", "discovery.k8s.io/v1"),
    ("/apis/networking.k8s.io/v1/networkpolicies", "NetworkPolicy", "networking.k8s.io/v1"),
];

/// Every object of the YAML files in `dir`.
pub fn objects_in(dir: &std::path::Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for doc in text.split("\n---") {
            if let Ok(v) = serde_yaml_ng::from_str::<Value>(doc) {
                if v["kind"].is_string() {
                    out.push(v);
                }
            }
        }
    }
    out
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
    serve_inner(ns, objects, Vec::new())
}

/// [`serve`], plus `unlisted` objects that a GET by name finds but no list
/// or watch has yet: objects created a moment ago.
pub fn serve_with_unlisted(ns: &NetNs, objects: Vec<Value>, unlisted: Vec<Value>) -> u16 {
    serve_inner(ns, objects, unlisted).0
}

fn serve_inner(ns: &NetNs, objects: Vec<Value>, unlisted: Vec<Value>) -> (u16, Switch) {
    let switch = Switch::default();
    let sw = switch.clone();
    let mut responses: BTreeMap<String, String> = BTreeMap::new();
    for (path, kind, api) in KINDS {
        let items: Vec<Value> = objects.iter().filter(|o| o["kind"] == kind).cloned().collect();
        let gettable = unlisted.iter().filter(|o| o["kind"] == kind);
        for o in items.iter().chain(gettable) {
            if let Some(name) = o["metadata"]["name"].as_str() {
                let item_path = match o["metadata"]["namespace"].as_str() {
                    Some(n) if kind != "Namespace" && kind != "Node" => path.replacen("/v1/", &format!("/v1/namespaces/{n}/"), 1) + "/" + name,
                    _ => format!("{path}/{name}"),
                };
                responses.insert(item_path, o.to_string());
            }
        }
        let list = serde_json::json!({"apiVersion": api, "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items});
        responses.insert(path.to_string(), list.to_string());
    }
    let (ptx, prx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _ = ptx.send(listener.local_addr().expect("addr").port());
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let responses = responses.clone();
            let sw = sw.clone();
            std::thread::spawn(move || respond(conn, &responses, &sw));
        }
    });
    (prx.recv_timeout(Duration::from_secs(5)).expect("API server port"), switch)
}

fn respond(mut conn: std::net::TcpStream, responses: &BTreeMap<String, String>, switch: &Switch) {
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
    if switch.is_down() {
        let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"ServiceUnavailable","code":503}"#;
        let _ = conn.write_all(format!("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
        return;
    }
    if target.contains("watch=true") {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        if switch.expire_once(path) {
            let ev = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#.to_string() + "\n";
            let _ = conn.write_all(format!("{:x}\r\n{ev}\r\n0\r\n\r\n", ev.len()).as_bytes());
            return;
        }
        // Open and quiet, until the server goes down.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) && !switch.is_down() {
            std::thread::sleep(Duration::from_millis(100));
        }
        return;
    }
    let reply = match responses.get(path) {
        Some(body) => format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
        None => {
            let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#;
            format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        }
    };
    let _ = conn.write_all(reply.as_bytes());
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
