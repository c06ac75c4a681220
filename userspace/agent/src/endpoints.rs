//! Pods registered by weir-cni (`endpoint_api`): policy from a pod's first
//! packet. A registration waits until the pod is known (from the source's
//! cache, or one GET when the watch has not delivered it yet) and the
//! agent has synced; then its addresses enter the cluster state
//! (`ClusterState::register_local`), the pod's link and policy are
//! programmed at once, and the answer says what the datapath now holds.
//!
//! Registrations are kept in `<run-dir>/endpoints.json`, so a restarted
//! agent programs the same pods the same way before anything else; one
//! goes when weir-cni DEL says so or when its host veth is gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weir_cni::agent::{Programmed, ProgrammedAddress, Registration};
use weir_model::{
    policy::world::{pod_model, NamedPort, PodInfo},
    state::{Affected, PodLookup as Cached},
    ClusterState, Object,
};
use weir_source::{LookupError, PodLookup};

use crate::endpoint_api::{Refusal, Reply, MAX_WAIT};

/// How often an unknown pod is asked for again while its registration waits.
const ASK_EVERY: Duration = Duration::from_millis(500);

/// One registration as kept on disk: what weir-cni sent, and what the
/// agent knew of the pod then (used while the source has no such Pod).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    registration: Registration,
    labels: BTreeMap<String, String>,
    /// Named container ports: (name, protocol number, port).
    ports: Vec<(String, u8, u16)>,
}

/// A registration waiting for its pod, or for the first sync.
pub struct Waiting {
    pub reg: Registration,
    reply: Reply,
    deadline: Instant,
    /// The pod as read from the source (when the watch had not delivered it).
    fetched: Option<PodInfo>,
    asking: bool,
    next_ask: Instant,
}

/// A registration ready to be programmed, with the pod's model.
pub struct Ready {
    pub reg: Registration,
    reply: Reply,
    info: PodInfo,
}

impl Ready {
    pub fn answer(self, result: Result<Programmed, Refusal>) {
        let _ = self.reply.send(result);
    }
}

type PodKey = (String, String);
/// A lookup's result, back to the main loop.
pub type Fetched = (PodKey, Result<Option<Object>, LookupError>);

pub struct Endpoints {
    file: PathBuf,
    node: Option<String>,
    /// (container ID, ifname) → entry.
    registered: BTreeMap<(String, String), Entry>,
    waiting: Vec<Waiting>,
    lookup: PodLookup,
    fetch_tx: mpsc::Sender<Fetched>,
}

impl Endpoints {
    /// Reads the registrations an earlier agent kept. A file that cannot
    /// be read is reported and set aside (`.bad`): those pods get their
    /// addresses from the source again.
    pub fn load(file: PathBuf, node: Option<String>, lookup: PodLookup) -> (Self, mpsc::Receiver<Fetched>) {
        let (fetch_tx, fetch_rx) = mpsc::channel(64);
        let mut e = Self { file, node, registered: BTreeMap::new(), waiting: Vec::new(), lookup, fetch_tx };
        match std::fs::read(&e.file) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Entry>>(&bytes) {
                Ok(entries) => {
                    e.registered = entries.into_iter().map(|x| ((x.registration.container_id.clone(), x.registration.ifname.clone()), x)).collect();
                    tracing::info!(file = %e.file.display(), pods = e.registered.len(), "read the pods weir-cni registered");
                }
                Err(error) => {
                    let bad = e.file.with_extension("json.bad");
                    tracing::error!(file = %e.file.display(), %error, moved_to = %bad.display(), "the registered pods cannot be read; their addresses come from the source again");
                    let _ = std::fs::rename(&e.file, &bad);
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::error!(file = %e.file.display(), %error, "reading the registered pods"),
        }
        (e, fetch_rx)
    }

    /// Puts every registration into `state` (at start-up, before the first sync).
    pub fn restore(&self, state: &mut ClusterState) -> Affected {
        let pods: BTreeSet<PodKey> = self.registered.values().map(|x| pod_key(&x.registration)).collect();
        let mut a = Affected::default();
        for k in pods {
            a.merge(self.put(state, &k));
        }
        a
    }

    /// Forgets registrations whose host veth is not among `present` (links
    /// that went while no agent ran, or a lost event).
    pub fn keep_links(&mut self, state: &mut ClusterState, present: &BTreeSet<String>) -> Affected {
        let gone: Vec<String> = self.registered.values().map(|x| x.registration.host_interface.clone()).filter(|h| !present.contains(h)).collect();
        let mut a = Affected::default();
        for h in gone {
            a.merge(self.forget_link(state, &h));
        }
        a
    }

    /// The host veth `host` is gone: its pod's registration goes with it.
    pub fn forget_link(&mut self, state: &mut ClusterState, host: &str) -> Affected {
        let keys: Vec<(String, String)> = self.registered.iter().filter(|(_, x)| x.registration.host_interface == host).map(|(k, _)| k.clone()).collect();
        let mut a = Affected::default();
        for (id, ifname) in keys {
            a.merge(self.unregister(state, &id, &ifname));
        }
        a
    }

    /// weir-cni DEL (or the link is gone): forgets one attachment.
    pub fn unregister(&mut self, state: &mut ClusterState, container_id: &str, ifname: &str) -> Affected {
        let Some(x) = self.registered.remove(&(container_id.to_string(), ifname.to_string())) else { return Affected::default() };
        tracing::info!(pod = %format!("{}/{}", x.registration.namespace, x.registration.name), container_id, ifname, "pod unregistered");
        self.save();
        self.put(state, &pod_key(&x.registration))
    }

    /// Queues a registration; [`Endpoints::poll`] finishes it.
    pub fn enqueue(&mut self, reg: Registration, reply: Reply) {
        let now = Instant::now();
        let deadline = now + Duration::from_millis(reg.timeout_ms).min(MAX_WAIT);
        tracing::debug!(pod = %format!("{}/{}", reg.namespace, reg.name), host_interface = %reg.host_interface, addresses = ?reg.addresses, "registration");
        self.waiting.push(Waiting { reg, reply, deadline, fetched: None, asking: false, next_ask: now });
    }

    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// When [`Endpoints::poll`] has something to do without any event.
    pub fn wakeup(&self) -> tokio::time::Instant {
        let t = self.waiting.iter().map(|w| if w.asking { w.deadline } else { w.deadline.min(w.next_ask) }).min().unwrap_or_else(|| Instant::now() + MAX_WAIT);
        tokio::time::Instant::from_std(t)
    }

    /// A lookup came back.
    pub fn fetched(&mut self, (key, result): Fetched) {
        for w in self.waiting.iter_mut().filter(|w| pod_key(&w.reg) == key) {
            w.asking = false;
            match &result {
                Ok(Some(Object::Pod(p))) => match pod_model(p) {
                    Some(info) => w.fetched = Some(info),
                    None => w.fetched = None,
                },
                Ok(_) => {}
                Err(error) => tracing::warn!(pod = %format!("{}/{}", key.0, key.1), %error, "reading a registered pod from the API"),
            }
        }
        // A pod the API says does not exist, or that will never own an
        // address, is refused now rather than at the deadline.
        if let Ok(found) = &result {
            let refusal = match found {
                None => Some(Refusal::new(StatusCode::NOT_FOUND, format!("Pod {}/{} does not exist", key.0, key.1))),
                Some(Object::Pod(p)) if pod_model(p).is_none() => {
                    Some(Refusal::new(StatusCode::CONFLICT, format!("Pod {}/{} uses the host network or has finished", key.0, key.1)))
                }
                _ => None,
            };
            if let Some(r) = refusal {
                self.refuse_where(|w| pod_key(&w.reg) == key, &r);
            }
        }
    }

    fn refuse_where(&mut self, pred: impl Fn(&Waiting) -> bool, r: &Refusal) {
        let (refused, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting).into_iter().partition(|w| pred(w));
        self.waiting = keep;
        for w in refused {
            tracing::warn!(pod = %format!("{}/{}", w.reg.namespace, w.reg.name), reason = %r.message, "registration refused");
            let _ = w.reply.send(Err(r.clone()));
        }
    }

    /// Refuses what expired, asks the source for pods it has not
    /// delivered, and returns the registrations that can be programmed now.
    pub fn poll(&mut self, state: &ClusterState, synced: bool) -> Vec<Ready> {
        let now = Instant::now();
        let mut ready = Vec::new();
        for mut w in std::mem::take(&mut self.waiting) {
            let who = format!("{}/{}", w.reg.namespace, w.reg.name);
            let known = match state.pod(&w.reg.namespace, &w.reg.name) {
                Cached::Known(p) => Some(p.clone()),
                Cached::NoNetwork => {
                    let _ = w.reply.send(Err(Refusal::new(StatusCode::CONFLICT, format!("Pod {who} uses the host network or has finished"))));
                    continue;
                }
                Cached::Unknown => w.fetched.clone(),
            };
            if let Some(n) = known.as_ref().and_then(|p| p.node.as_ref()).filter(|n| self.node.as_ref().is_some_and(|me| me != *n)) {
                let _ = w.reply.send(Err(Refusal::new(StatusCode::CONFLICT, format!("Pod {who} is bound to node {n}, not this one"))));
                continue;
            }
            match known {
                Some(info) if synced => {
                    ready.push(Ready { reg: w.reg, reply: w.reply, info });
                    continue;
                }
                _ => {}
            }
            if now >= w.deadline {
                let why = if known.is_none() {
                    format!("Pod {who} is not known to the agent (not delivered by its source{})", if self.lookup.can_ask() { ", and not readable from the API" } else { "" })
                } else {
                    "the agent has not finished its first sync".to_string()
                };
                tracing::warn!(pod = %who, reason = %why, "registration timed out");
                let _ = w.reply.send(Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, why)));
                continue;
            }
            if known.is_none() && self.lookup.can_ask() && !w.asking && now >= w.next_ask {
                w.asking = true;
                w.next_ask = now + ASK_EVERY;
                self.ask(pod_key(&w.reg));
            }
            self.waiting.push(w);
        }
        ready
    }

    fn ask(&self, key: PodKey) {
        let lookup = self.lookup.clone();
        let tx = self.fetch_tx.clone();
        tokio::spawn(async move {
            let r = lookup.get(&key.0, &key.1).await;
            let _ = tx.send((key, r)).await;
        });
    }

    /// Records a ready registration and puts the pod's addresses into `state`.
    pub fn commit(&mut self, state: &mut ClusterState, r: &Ready) -> Affected {
        let entry = Entry {
            registration: r.reg.clone(),
            labels: r.info.labels.as_ref().clone(),
            ports: r.info.ports.iter().map(|p| (p.name.clone(), p.proto, p.port)).collect(),
        };
        self.registered.insert((r.reg.container_id.clone(), r.reg.ifname.clone()), entry);
        self.save();
        self.put(state, &pod_key(&r.reg))
    }

    /// Sets the pod's registration in `state` from every attachment it
    /// has (none: removes it).
    fn put(&self, state: &mut ClusterState, key: &PodKey) -> Affected {
        let mine: Vec<&Entry> = self.registered.values().filter(|x| pod_key(&x.registration) == *key).collect();
        let Some(first) = mine.first() else { return state.unregister_local(&key.0, &key.1) };
        let ips: BTreeSet<IpAddr> = mine.iter().flat_map(|x| x.registration.addresses.iter().copied()).collect();
        state.register_local(PodInfo {
            namespace: key.0.clone(),
            name: key.1.clone(),
            labels: weir_model::policy::interned::shared(first.labels.clone()),
            ips: ips.into_iter().collect(),
            node: self.node.clone(),
            ports: first.ports.iter().map(|(name, proto, port)| NamedPort { name: name.clone(), proto: *proto, port: *port }).collect(),
        })
    }

    /// Writes the registrations (temp file + rename). A failure is logged:
    /// the datapath is programmed either way, only a restart would lose them.
    fn save(&self) {
        use std::os::unix::fs::OpenOptionsExt as _;
        let entries: Vec<&Entry> = self.registered.values().collect();
        let tmp = self.file.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(&entries).map_err(std::io::Error::other)?;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        };
        if let Err(error) = write() {
            tracing::error!(file = %self.file.display(), %error, "saving the registered pods");
        }
    }

    /// Registered attachments.
    pub fn count(&self) -> usize {
        self.registered.len()
    }
}

fn pod_key(r: &Registration) -> PodKey {
    (r.namespace.clone(), r.name.clone())
}

/// What the datapath holds for a ready registration: its link's programs
/// and addresses (`link`), and an endpoint entry per address.
pub fn programmed(reg: &Registration, link: Result<(), String>, endpoint: impl Fn(&IpAddr) -> Option<(u32, u32)>) -> Result<Programmed, Refusal> {
    link.map_err(|why| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {why}", reg.host_interface)))?;
    let addresses = reg
        .addresses
        .iter()
        .map(|a| match endpoint(a) {
            Some((endpoint_id, identity)) => Ok(ProgrammedAddress { address: *a, endpoint_id, identity }),
            None => Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{a} has no endpoint entry: programming its policy failed (see the agent's log)"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Programmed { addresses })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, ip: &str) -> Registration {
        Registration {
            namespace: "shop".into(),
            name: "web-0".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
            host_interface: format!("weir{id:0>11}"),
            addresses: vec![ip.parse().expect("ip")],
            timeout_ms: 60_000,
        }
    }

    fn pod_yaml(node: &str) -> Object {
        let y = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: shop, labels: {{app: web}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: x}}]}}\n");
        Object::Pod(serde_yaml_ng::from_str(&y).expect("pod"))
    }

    #[tokio::test]
    async fn a_registration_waits_for_the_pod_and_the_sync_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("weir-endpoints-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("endpoints.json");
        let _ = std::fs::remove_file(&file);
        let (mut e, _rx) = Endpoints::load(file.clone(), Some("n1".into()), PodLookup::none());
        let mut state = ClusterState::new();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        e.enqueue(reg("1", "10.244.1.9"), tx);
        assert!(e.poll(&state, true).is_empty(), "the pod is not known yet");
        state.apply(weir_model::Change::Upsert(pod_yaml("n1")));
        assert!(e.poll(&state, false).is_empty(), "not before the first sync");
        let ready = e.poll(&state, true);
        assert_eq!(ready.len(), 1);
        assert!(!e.commit(&mut state, &ready[0]).pods.is_empty());
        assert_eq!(state.policy_world().pods[0].ips[0].to_string(), "10.244.1.9");
        ready.into_iter().for_each(|r| r.answer(Err(Refusal::new(StatusCode::OK, "test"))));
        assert!(rx.try_recv().is_ok(), "answered");

        // A restarted agent restores it, and forgets it with its link.
        let (e2, _rx) = Endpoints::load(file.clone(), Some("n1".into()), PodLookup::none());
        let mut fresh = ClusterState::new();
        assert!(!e2.restore(&mut fresh).pods.is_empty());
        let w = fresh.policy_world();
        assert_eq!((w.pods.len(), w.pods[0].labels.get("app").map(String::as_str)), (1, Some("web")), "with the labels it had");
        let mut e2 = e2;
        let present: BTreeSet<String> = ["eth0".to_string()].into();
        assert!(!e2.keep_links(&mut fresh, &present).pods.is_empty(), "its veth is gone");
        assert!(fresh.policy_world().pods.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_pod_of_another_node_or_never_delivered_is_refused() {
        let file = std::env::temp_dir().join(format!("weir-endpoints-{}-b.json", std::process::id()));
        let (mut e, _rx) = Endpoints::load(file.clone(), Some("n1".into()), PodLookup::none());
        let mut state = ClusterState::new();
        state.apply(weir_model::Change::Upsert(pod_yaml("n2")));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        e.enqueue(reg("2", "10.244.1.10"), tx);
        assert!(e.poll(&state, true).is_empty());
        let r = rx.try_recv().expect("answered").expect_err("refused");
        assert!(r.status == StatusCode::CONFLICT && r.message.contains("bound to node n2"), "{r:?}");

        let state = ClusterState::new();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let mut quick = reg("3", "10.244.1.11");
        quick.timeout_ms = 0;
        e.enqueue(quick, tx);
        assert!(e.poll(&state, true).is_empty());
        let r = rx.try_recv().expect("answered").expect_err("refused");
        assert!(r.status == StatusCode::SERVICE_UNAVAILABLE && r.message.contains("not known"), "{r:?}");
        let _ = std::fs::remove_file(&file);
    }
}
