//! What the pod datapath will do with a packet, and why — computed with
//! the kernel's own decision code (`weir_logic`) against the live pinned
//! maps. It follows `from_pod`'s order: reply of a service flow (reverse
//! NAT), service frontend (existing flow, affinity, selection slot, or
//! rejection), then the policy of the flow's two ends.

use std::net::IpAddr;

use aya::maps::{lpm_trie::{Key, LpmTrie}, Array, HashMap, MapData};
use serde::Serialize;
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtKey, CT_POLICY, CT_SVC_FWD, CT_SVC_REV, CT_STATE_CLOSED, CT_STATE_CLOSING},
    lb::{AffinityKey, AffinityValue, Backend, FrontendKey, Service, PROTO_TCP},
    link::LinkInfo,
    maps::{AFFINITY, BACKENDS, CONFIG, CT, ENDPOINTS, FRONTENDS, IPCACHE, LB_TABLE, LINKS, POLICY},
    policy::{EndpointInfo, IpInfo, PolicyKeyData, PolicyValue, DIR_EGRESS, DIR_INGRESS, POLICY_PREFIX_FULL},
};
use weir_logic::{
    ct::is_alive,
    hash::flow_hash,
    policy::{decide, PolicyMaps},
    select::{affinity_valid, choose_slot, eligible, has_affinity, SlotChoice},
};

use crate::{mmap::MmapU32Array, pinned, pins::PinLayout, DatapathError};

/// The packet to explain: the first packet of a flow (a TCP SYN).
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// A live conntrack entry already names the backend.
    ExistingConntrack,
    /// ClientIP affinity names the backend.
    Affinity,
    /// Maglev: flow hash % table length.
    Maglev { hash: u32, slot: u32, table_len: u32 },
    /// Random selection: the kernel draws a random slot; any of these.
    Random { candidates: u32 },
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceMatch {
    pub frontend: String,
    pub service_id: u32,
    pub eligible_backends: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendChoice {
    pub backend_id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub why: Why,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyStep {
    /// "egress" of the sender or "ingress" of the receiver.
    pub direction: &'static str,
    pub endpoint: IpAddr,
    pub endpoint_id: u32,
    pub isolated: bool,
    pub allowed: bool,
    pub peer_identity: u32,
    pub matched_identity: u32,
    /// The deciding rule id (0: a default verdict).
    pub rule: u32,
    /// `PV_LOG` / `PV_AUDIT` / `PV_AUDIT_DENY` of the deciding entry.
    pub flags: u32,
    /// The Log or audited rule those flags refer to.
    pub note_rule: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// "forward", "drop" or "reject".
    pub verdict: &'static str,
    /// Why, in words.
    pub reason: String,
    pub service: Option<ServiceMatch>,
    pub backend: Option<BackendChoice>,
    /// Address and port after translation, when translated.
    pub nat: Option<(IpAddr, u16)>,
    /// The pod link (host-side ifindex) whose routed addresses include the
    /// source; `None`: no pod link owns it, and from_pod drops it.
    pub link: Option<u32>,
    /// The flow is already allowed by the policy's conntrack.
    pub policy_conntrack: bool,
    pub policy: Vec<PolicyStep>,
}

/// The pinned maps explain reads.
pub struct Maps {
    frontends: HashMap<MapData, FrontendKey, Service>,
    backends: HashMap<MapData, u32, Backend>,
    table: MmapU32Array,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    ct: HashMap<MapData, CtKey, CtEntry>,
    config: Array<MapData, DatapathConfig>,
    endpoints: HashMap<MapData, Addr, EndpointInfo>,
    ipcache: LpmTrie<MapData, Addr, IpInfo>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    links: HashMap<MapData, u32, LinkInfo>,
}

impl PolicyMaps for Maps {
    fn ipcache(&self, addr: &Addr) -> Option<IpInfo> {
        self.ipcache.get(&Key::new(128, *addr), 0).ok()
    }

    fn policy(&self, key: &PolicyKeyData) -> Option<PolicyValue> {
        self.policy.get(&Key::new(POLICY_PREFIX_FULL, *key), 0).ok()
    }
}

fn lru<K: aya::Pod, V: aya::Pod>(layout: &PinLayout, name: &'static str) -> Result<HashMap<MapData, K, V>, DatapathError> {
    HashMap::try_from(pinned::open(layout, name)?).map_err(|source| DatapathError::Map { name, source })
}

fn lpm<K: aya::Pod, V: aya::Pod>(layout: &PinLayout, name: &'static str) -> Result<LpmTrie<MapData, K, V>, DatapathError> {
    LpmTrie::try_from(pinned::open(layout, name)?).map_err(|source| DatapathError::Map { name, source })
}

fn ct_key(s: Addr, d: Addr, sport: u16, dport: u16, proto: u8, kind: u8) -> CtKey {
    CtKey { saddr: s, daddr: d, sport: sport.to_be(), dport: dport.to_be(), proto, kind, _pad: 0 }
}

impl Maps {
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        Ok(Self {
            frontends: pinned::hash(layout, FRONTENDS)?,
            backends: pinned::hash(layout, BACKENDS)?,
            table: MmapU32Array::open(layout, LB_TABLE)?,
            affinity: lru(layout, AFFINITY)?,
            ct: lru(layout, CT)?,
            config: pinned::array(layout, CONFIG)?,
            endpoints: pinned::hash(layout, ENDPOINTS)?,
            ipcache: lpm(layout, IPCACHE)?,
            policy: lpm(layout, POLICY)?,
            links: pinned::hash(layout, LINKS)?,
        })
    }

    fn config(&self) -> DatapathConfig {
        match self.config.get(&0, 0) {
            Ok(c) if c.ct_udp_timeout_s != 0 => c,
            _ => DatapathConfig::DEFAULT,
        }
    }

    fn ct_alive(&self, k: &CtKey, now: u64) -> Option<CtEntry> {
        self.ct.get(k, 0).ok().filter(|e| is_alive(e, now))
    }

    fn backend(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }

    /// Explains `p` at monotonic time `now_ns`.
    pub fn explain(&self, p: &Packet, now_ns: u64) -> Result<Explanation, DatapathError> {
        let (src, dst) = (Addr::from(p.src), Addr::from(p.dst));
        let cfg = self.config();
        let mut x = Explanation { verdict: "forward", reason: String::new(), service: None, backend: None, nat: None, link: None, policy_conntrack: false, policy: Vec::new() };

        // Source validation: only the link the node routes the source to
        // may send from it.
        x.link = self.links.iter().filter_map(Result::ok).find(|(_, l)| l.owns(&src)).map(|(i, _)| i);
        if x.link.is_none() {
            x.verdict = "drop";
            x.reason = format!("no pod link owns the source {}: a spoofed source is dropped", p.src);
            return Ok(x);
        }

        // A reply of a service flow: reverse NAT, no policy (return
        // traffic). A TCP SYN is never a reply.
        let rev = if p.proto == PROTO_TCP { None } else { self.ct.get(&ct_key(src, dst, p.sport, p.dport, p.proto, CT_SVC_REV), 0).ok() };
        if let Some(e) = rev {
            let twin = ct_key(e.orig_addr, e.nat_addr, u16::from_be(e.orig_port), u16::from_be(e.nat_port), p.proto, CT_SVC_FWD);
            if is_alive(&e, now_ns) || self.ct_alive(&twin, now_ns).is_some() {
                x.nat = Some((IpAddr::from(e.nat_addr), u16::from_be(e.nat_port)));
                x.reason = format!("reply of a service flow: source rewritten to the service address {}", IpAddr::from(e.nat_addr));
                return Ok(x);
            }
        }

        let mut fk = FrontendKey { addr: dst, port: p.dport.to_be(), proto: p.proto, scope: 0 };
        let (mut to, mut to_port) = (dst, p.dport);
        match self.frontends.get(&fk, 0) {
            Ok(svc) => {
                x.service = Some(ServiceMatch { frontend: format!("{}:{}/{}", p.dst, p.dport, proto_name(p.proto)), service_id: svc.id, eligible_backends: svc.backend_count });
                let Some(choice) = self.select(&svc, p, src, dst, now_ns, &cfg)? else {
                    x.verdict = "reject";
                    x.reason = "the service has no usable endpoint: TCP RST / ICMP port unreachable".into();
                    return Ok(x);
                };
                to = Addr::from(choice.addr);
                to_port = choice.port;
                x.nat = Some((choice.addr, choice.port));
                let existing = choice.why == Why::ExistingConntrack;
                x.backend = Some(choice);
                if existing {
                    x.reason = "an existing service flow keeps its backend (conntrack)".into();
                    return Ok(x);
                }
            }
            Err(_) => {
                fk.port = 0;
                fk.proto = 0;
                if self.frontends.get(&fk, 0).is_ok() {
                    x.verdict = "reject";
                    x.reason = format!("{} is a service address but no service has port {}/{}", p.dst, p.dport, proto_name(p.proto));
                    return Ok(x);
                }
                if self.policy_tracked(src, dst, p, now_ns) {
                    x.policy_conntrack = true;
                    x.reason = "the flow is already allowed (policy conntrack)".into();
                    return Ok(x);
                }
            }
        }

        // Policy on the translated tuple: the sender's egress, the receiver's ingress.
        let src_ep = self.endpoints.get(&src, 0).ok();
        let dst_ep = self.endpoints.get(&to, 0).ok();
        if let (Some(s), Some(d)) = (src_ep, dst_ep) {
            if s.id == d.id {
                x.reason = "a pod may always reach itself".into();
                return Ok(x);
            }
        }
        for (direction, ep, ep_addr, peer) in [(DIR_EGRESS, src_ep, src, to), (DIR_INGRESS, dst_ep, to, src)] {
            let Some(ep) = ep else { continue };
            let d = decide(self, &ep, direction, &peer, p.proto, to_port);
            x.policy.push(PolicyStep {
                direction: if direction == DIR_EGRESS { "egress" } else { "ingress" },
                endpoint: IpAddr::from(ep_addr),
                endpoint_id: ep.id,
                isolated: d.isolated,
                allowed: d.allowed,
                peer_identity: d.peer_identity,
                matched_identity: d.matched_identity,
                rule: d.rule,
                flags: d.flags,
                note_rule: d.note_rule,
            });
            if !d.allowed {
                x.verdict = "drop";
                let why = if d.rule == 0 { "no rule allows".to_string() } else { format!("rule {} denies", d.rule) };
                x.reason = format!("denied by the {} policy of {} ({why} identity {} on {}/{to_port})", x.policy.last().map_or("", |s| s.direction), IpAddr::from(ep_addr), d.peer_identity, proto_name(p.proto));
                return Ok(x);
            }
        }
        if x.reason.is_empty() {
            x.reason = match (&x.backend, x.policy.iter().any(|s| s.isolated)) {
                (Some(_), true) => "load-balanced to a backend the policy allows".into(),
                (Some(_), false) => "load-balanced; no policy isolates either end".into(),
                (None, true) => "allowed by policy".into(),
                (None, false) => "not service traffic, and no policy isolates either end".into(),
            };
        }
        Ok(x)
    }

    /// As `policy::tracked` for a first packet (a TCP SYN): the opener's
    /// own entry unless a SYN reopens it; a reply only for UDP.
    fn policy_tracked(&self, src: Addr, dst: Addr, p: &Packet, now: u64) -> bool {
        let tcp = p.proto == PROTO_TCP;
        let own = self.ct_alive(&ct_key(src, dst, p.sport, p.dport, p.proto, CT_POLICY), now);
        if own.is_some_and(|e| !(tcp && (e.state == CT_STATE_CLOSING || e.state == CT_STATE_CLOSED))) {
            return true;
        }
        !tcp && self.ct_alive(&ct_key(dst, src, p.dport, p.sport, p.proto, CT_POLICY), now).is_some()
    }

    /// The backend for a new packet of `p`, as `lb::forward` chooses it.
    fn select(&self, svc: &Service, p: &Packet, client: Addr, vip: Addr, now: u64, cfg: &DatapathConfig) -> Result<Option<BackendChoice>, DatapathError> {
        let choice = |id: u32, b: &Backend, why: Why| BackendChoice { backend_id: id, addr: IpAddr::from(b.addr), port: u16::from_be(b.port), why };
        // An existing flow keeps its backend while the backend exists.
        let fkey = ct_key(client, vip, p.sport, p.dport, p.proto, CT_SVC_FWD);
        if let Ok(e) = self.ct.get(&fkey, 0) {
            let dst = weir_logic::ct::backend_sees(e.flags, cfg, client);
            let rkey = CtKey { saddr: e.nat_addr, daddr: dst, sport: e.nat_port, dport: e.orig_port, proto: p.proto, kind: CT_SVC_REV, _pad: 0 };
            let live = is_alive(&e, now) || self.ct_alive(&rkey, now).is_some();
            let reopened = p.proto == PROTO_TCP && (e.state == CT_STATE_CLOSING || e.state == CT_STATE_CLOSED);
            if live && e.svc_id == svc.id && !reopened {
                if let Some(b) = self.backend(e.backend_id).filter(|b| b.addr == e.nat_addr && b.port == e.nat_port) {
                    return Ok(Some(choice(e.backend_id, &b, Why::ExistingConntrack)));
                }
            }
        }
        if svc.backend_count == 0 {
            return Ok(None);
        }
        if has_affinity(svc) {
            if let Ok(a) = self.affinity.get(&AffinityKey { svc_id: svc.id, client }, 0) {
                if affinity_valid(svc, a.last_ns, now) {
                    if let Some(b) = self.backend(a.backend_id) {
                        if eligible(&b, svc) {
                            return Ok(Some(choice(a.backend_id, &b, Why::Affinity)));
                        }
                    }
                }
            }
        }
        let hash = flow_hash(&client, &vip, p.sport.to_be(), p.dport.to_be(), p.proto);
        let (slot, why) = match choose_slot(svc, hash, 0) {
            SlotChoice::Maglev { slot } => (slot, Why::Maglev { hash, slot, table_len: svc.table_len }),
            SlotChoice::Random { slot } => (slot, Why::Random { candidates: svc.backend_count }),
        };
        let window = self.table.window(svc.table_base, svc.table_len)?;
        let Some(id) = window.get(svc.table_base + slot) else { return Ok(None) };
        Ok(self.backend(id).map(|b| choice(id, &b, why)))
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "other",
    }
}
