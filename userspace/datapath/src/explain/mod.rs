//! What the datapath will do with the first packet of a flow, and why —
//! computed with the kernel's own decision code (`weir_logic`) against the
//! live pinned maps. Three entries, as the kernel has them:
//! - from a pod (`from_pod`): source validation, reply of a service flow
//!   (reverse NAT), service frontend (existing flow, affinity, selection
//!   slot, or refusal), then the policy of the flow's two ends;
//! - from a device (`from_net` on an uplink, `from_tunnel`): a forged
//!   local pod source, the frontend's external entry for
//!   externalTrafficPolicy: Local, source ranges, the backend, the
//!   masquerade, and the backend's ingress policy on the client's address;
//! - from the node's own processes (the socket programs): the frontend's
//!   internal entry, the backend the socket is pointed at (no packet is
//!   translated), and the backend pod's ingress, which always admits the
//!   node's own flows.

mod policy;
mod service;

use std::net::IpAddr;

use aya::maps::{lpm_trie::LpmTrie, Array, HashMap, MapData};
use serde::Serialize;
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtKey, CT_SVC_FWD, CT_SVC_REV},
    lb::{AffinityKey, AffinityValue, Backend, FrontendKey, Service, SourceRangeKey, PROTO_TCP, PROTO_UDP},
    link::{LinkInfo, LinkMacs},
    maps::{AFFINITY, BACKENDS, CONFIG, ENDPOINTS, FRONTENDS, IPCACHE, LB_TABLE, LINKS, LINK_MACS, POD_ADDRS, POLICY, SOURCE_RANGES},
    policy::{EndpointInfo, IpInfo, PolicyKeyData, PolicyValue},
};
use weir_logic::{ct::is_alive, frontend::Origin, ipv6};

use crate::{mmap::MmapU32Array, pinned, pins::PinLayout, DatapathError};

use service::Frontend;

/// The packet to explain: the first packet of a flow (a TCP SYN).
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: u8,
}

/// Where the packet enters weir's datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Sent by a local pod (from_pod on its veth).
    Pod,
    /// Arrives on a node device weir is attached to (an uplink's from_net,
    /// or the tunnel's from_tunnel), named for the output.
    Device(String),
    /// Sent by a process of the node itself (the socket programs).
    Host,
}

impl Entry {
    fn origin(&self) -> Origin {
        match self {
            Entry::Pod => Origin::Pod,
            Entry::Device(_) => Origin::Outside,
            Entry::Host => Origin::Host,
        }
    }

    fn describe(&self) -> String {
        match self {
            Entry::Pod => "a local pod".into(),
            Entry::Device(d) => format!("device {d}"),
            Entry::Host => "the node's own processes (socket programs)".into(),
        }
    }
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
    /// ClusterIP, NodePort, LoadBalancer or ExternalIP.
    pub kind: &'static str,
    /// The entry that serves this flow: `external` (the outside-only entry
    /// of an externalTrafficPolicy: Local frontend) or `internal`.
    pub entry: &'static str,
    /// `local` (this node's endpoints only) or `cluster`.
    pub endpoints: &'static str,
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
    /// The node's own flow, admitted whatever the policy says.
    pub from_node: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// Where the packet entered, in words.
    pub entry: String,
    /// "forward", "drop", "reject" or "pass" (not weir's: the node's
    /// stack decides); "depends" for IPv6 link-scope traffic from a
    /// link-local source, whose verdict is the sending link's (isolated or
    /// not), which the address does not name.
    pub verdict: &'static str,
    /// Why, in words.
    pub reason: String,
    pub service: Option<ServiceMatch>,
    pub backend: Option<BackendChoice>,
    /// Address and port after translation, when translated.
    pub nat: Option<(IpAddr, u16)>,
    /// The source address the backend sees when the flow is masqueraded
    /// (the node address, with a port of the masquerade range).
    pub masquerade: Option<IpAddr>,
    /// The pod link (host-side ifindex) whose routed addresses include the
    /// source, for a packet from a pod; `None` there: no pod link owns it,
    /// and from_pod drops it (an IPv6 link-local source aside).
    pub link: Option<u32>,
    /// A packet forwarded to a pod of this node: that pod's link
    /// (host-side ifindex), where the kernel redirects it without a FIB
    /// lookup (`WEIR_POD_ADDRS`, as `fwd` reads it): a translated packet,
    /// and a TCP or UDP one a pod sends another. `None`: the node's FIB
    /// (or its stack) decides.
    pub egress_link: Option<u32>,
    /// A TCP or UDP packet from a pod to the pod behind `egress_link` is
    /// delivered straight into it (`fwd::into_pod`), that link's to_pod
    /// not running; when whole (no fragment), with hops left, no IPv4
    /// options or IPv6 extension headers, and fitting the link, and once
    /// the link's frame header is learned (`WEIR_LINK_MACS`; until then
    /// such a packet takes the link's egress, where to_pod learns it, and
    /// so does a TCP SYN once the header is `LINK_MACS_FRESH_S` old), and
    /// without an offloaded VLAN tag. A translated packet goes in with
    /// IPv4 options or IPv6 extension headers too; an untranslated one
    /// with them goes up the stack.
    pub into_pod: bool,
    /// The address `egress_link` was found for (the receiving pod's).
    #[serde(skip)]
    receiver: Option<IpAddr>,
    /// The flow is already allowed by the policy's conntrack.
    pub policy_conntrack: bool,
    /// A pod's TCP socket asking for this frontend is pointed at the
    /// backend at `connect()` (socket-level load balancing,
    /// `--socket-lb-namespaces all`): its own packets travel untranslated,
    /// pod to pod, and meet the same policy; the translation shown is
    /// what a raw packet meets.
    pub at_connect: bool,
    pub policy: Vec<PolicyStep>,
}

impl Explanation {
    fn new(entry: &Entry) -> Self {
        Self {
            entry: entry.describe(),
            verdict: "forward",
            reason: String::new(),
            service: None,
            backend: None,
            nat: None,
            masquerade: None,
            link: None,
            egress_link: None,
            into_pod: false,
            receiver: None,
            policy_conntrack: false,
            at_connect: false,
            policy: Vec::new(),
        }
    }

    fn end(mut self, verdict: &'static str, reason: impl Into<String>) -> Self {
        self.verdict = verdict;
        self.reason = reason.into();
        self
    }
}

/// The pinned maps explain reads.
pub struct Maps {
    frontends: HashMap<MapData, FrontendKey, Service>,
    backends: HashMap<MapData, u32, Backend>,
    table: MmapU32Array,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    ct: crate::ct::CtMaps,
    config: Array<MapData, DatapathConfig>,
    endpoints: HashMap<MapData, Addr, EndpointInfo>,
    ipcache: LpmTrie<MapData, Addr, IpInfo>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    links: HashMap<MapData, u32, LinkInfo>,
    pod_addrs: HashMap<MapData, Addr, u32>,
    link_macs: HashMap<MapData, u32, LinkMacs>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
}

fn hash<K: aya::Pod, V: aya::Pod>(layout: &PinLayout, name: &'static str) -> Result<HashMap<MapData, K, V>, DatapathError> {
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
            affinity: hash(layout, AFFINITY)?,
            ct: crate::ct::CtMaps::open(layout)?,
            config: pinned::array(layout, CONFIG)?,
            endpoints: pinned::hash(layout, ENDPOINTS)?,
            ipcache: lpm(layout, IPCACHE)?,
            policy: lpm(layout, POLICY)?,
            links: pinned::hash(layout, LINKS)?,
            pod_addrs: hash(layout, POD_ADDRS)?,
            link_macs: hash(layout, LINK_MACS)?,
            source_ranges: lpm(layout, SOURCE_RANGES)?,
        })
    }

    fn config(&self) -> DatapathConfig {
        match self.config.get(&0, 0) {
            Ok(c) if c.ct_udp_timeout_s != 0 => c,
            _ => DatapathConfig::DEFAULT,
        }
    }

    /// The node address of `family_of`'s family the datapath masquerades
    /// to (the Node's InternalIP of that family), once the agent has set
    /// it.
    pub fn node_addr(&self, family_of: IpAddr) -> Option<IpAddr> {
        let a = *self.config().node_addr_for(&Addr::from(family_of));
        (a != Addr::ZERO).then(|| IpAddr::from(a))
    }

    /// The ports masqueraded flows take (`--masquerade-ports`).
    pub fn masq_ports(&self) -> (u16, u16) {
        self.config().masq_ports()
    }

    fn ct_alive(&self, k: &CtKey, now: u64) -> Option<CtEntry> {
        self.ct.get(k).filter(|e| is_alive(e, now))
    }

    fn backend(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }

    /// Explains `p` entering at `entry`, at monotonic time `now_ns`.
    pub fn explain(&self, p: &Packet, entry: &Entry, now_ns: u64) -> Result<Explanation, DatapathError> {
        let mut x = self.decide(p, entry, now_ns)?;
        if x.verdict != "forward" && x.verdict != "pass" {
            x.egress_link = None;
            return Ok(x);
        }
        // Untranslated: the packet's own destination receives it.
        if x.receiver.is_none() && x.nat.is_none() && x.masquerade.is_none() {
            x.receiver = Some(p.dst);
        }
        // The receiver's part (its to_pod's, or `into_pod`'s for it): an
        // address no endpoint names on an isolated pod's link receives
        // nothing, whatever the protocol.
        if let Some(r) = x.receiver {
            if self.local_link(r).is_some_and(|l| self.link_isolated(l)) && self.endpoints.get(&Addr::from(r), 0).is_err() {
                x.egress_link = None;
                return Ok(x.end("drop", format!("{r} is routed to an isolated pod's link but no endpoint names it (not in its podIPs): its flows cannot be judged (unlisted_address)")));
            }
        }
        if x.verdict != "forward" || *entry != Entry::Pod || (p.proto != PROTO_TCP && p.proto != PROTO_UDP) {
            return Ok(x);
        }
        // Between pods of this node, untranslated: to the receiver's link
        // as a translated packet goes.
        if x.nat.is_none() && x.masquerade.is_none() {
            self.to_local(&mut x, p.dst);
        }
        // Straight into the pod once its link's frame header is learned;
        // before, through the link's egress, to learn it. A TCP packet is
        // explained as a connection's SYN, which learns a header that is
        // no longer fresh again.
        let now_s = (now_ns / 1_000_000_000) as u32;
        x.into_pod = x.egress_link.is_some_and(|l| self.link_macs.get(&l, 0).is_ok_and(|m| p.proto != PROTO_TCP || m.fresh(now_s)));
        Ok(x)
    }

    /// `x` goes to `receiver`: to its link, when it is a pod of this node.
    fn to_local(&self, x: &mut Explanation, receiver: IpAddr) {
        x.egress_link = self.local_link(receiver);
        x.receiver = Some(receiver);
    }

    /// The link of a pod of this node that `addr` is routed to.
    fn local_link(&self, addr: IpAddr) -> Option<u32> {
        self.pod_addrs.get(&Addr::from(addr), 0).ok()
    }

    fn decide(&self, p: &Packet, entry: &Entry, now_ns: u64) -> Result<Explanation, DatapathError> {
        let (src, dst) = (Addr::from(p.src), Addr::from(p.dst));
        let mut x = Explanation::new(entry);
        match entry {
            Entry::Pod => {
                // Source validation: only the link the node routes the
                // source to may send from it (IPv6 link scope aside).
                x.link = self.links.iter().filter_map(Result::ok).find(|(_, l)| l.owns(&src)).map(|(i, _)| i);
                let link_src = p.src.is_ipv6() && ipv6::link_scope_source(&src);
                if x.link.is_none() && !link_src {
                    return Ok(x.end("drop", format!("no pod link owns the source {}: a spoofed source is dropped", p.src)));
                }
                if p.src.is_ipv6() {
                    if let Some((verdict, why)) = self.v6_link_rules(x.link, p, dst, link_src) {
                        return Ok(x.end(verdict, why));
                    }
                }
            }
            Entry::Device(d) => {
                if self.pod_addrs.get(&src, 0).is_ok() {
                    return Ok(x.end("drop", format!("{} is a pod of this node: a packet from {d} claiming it is forged (spoofed_source)", p.src)));
                }
                if self.config().is_node_addr(&src) {
                    return Ok(x.end("drop", format!("{} is the node address masqueraded flows come from: a packet from {d} claiming it is forged (spoofed_source)", p.src)));
                }
            }
            Entry::Host => {}
        }
        // The socket programs see no replies: only the packet paths do.
        if *entry != Entry::Host {
            if let Some((nat, client)) = self.reply_of_service_flow(p, src, dst, now_ns) {
                x.nat = Some(nat);
                self.to_local(&mut x, client);
                return Ok(x.end("forward", format!("reply of a service flow: source rewritten to the service address {}", nat.0)));
            }
        }
        // Where policy would look the sender's endpoint up (a new service
        // flow's egress check, or the policy of any other flow): an
        // address no endpoint names on an isolated pod's link goes no
        // further.
        let unlisted = *entry == Entry::Pod && x.link.is_some_and(|i| self.link_isolated(i)) && self.endpoints.get(&src, 0).is_err();
        match self.service_step(&mut x, p, entry, now_ns)? {
            Step::Done => return Ok(x),
            Step::NotAService if *entry == Entry::Host => {
                return Ok(x.end("pass", format!("{}:{} is not a service frontend: the socket is left alone and the node's routing decides", p.dst, p.dport)));
            }
            _ if unlisted => {
                return Ok(x.end("drop", format!("{} is routed to an isolated pod's link but no endpoint names it (not in its podIPs): its flows cannot be judged (unlisted_address)", p.src)));
            }
            Step::NotAService if self.policy_tracked(src, dst, p, now_ns) => {
                x.policy_conntrack = true;
                return Ok(x.end("forward", "the flow is already allowed (policy conntrack)"));
            }
            Step::NotAService | Step::Translated => {}
        }
        let to = x.nat.map_or(dst, |(a, _)| Addr::from(a));
        let to_port = x.nat.map_or(p.dport, |(_, port)| port);
        if let Some(denied) = self.policy_steps(&mut x, p, entry, src, to, to_port) {
            return Ok(x.end("drop", denied));
        }
        if x.reason.is_empty() {
            x.reason = self.forward_reason(&x, entry, p);
            if *entry != Entry::Pod && x.service.is_none() && self.endpoints.get(&dst, 0).is_err() {
                x.verdict = "pass";
            }
        }
        Ok(x)
    }

    /// `pod_v6`'s rules before the service and the policy: link-scope
    /// traffic (a link-local source, a link-local or multicast
    /// destination) passes for a pod under no policy and is dropped for an
    /// isolated one. The verdict and why, or `None` when they let the
    /// packet on.
    fn v6_link_rules(&self, link: Option<u32>, p: &Packet, dst: Addr, link_src: bool) -> Option<(&'static str, String)> {
        let isolated = link.map(|i| self.link_isolated(i));
        if link_src || ipv6::link_scope(&dst) {
            let what = if link_src { format!("the link-local source {}", p.src) } else { format!("the link-scope destination {}", p.dst) };
            return Some(match isolated {
                Some(true) => ("drop", format!("{what}: no rule can name a link-scope peer, so a pod under a policy neither sends nor receives it (ipv6_isolated)")),
                Some(false) => ("pass", format!("{what}: link-scope traffic passes for a pod under no policy")),
                None => ("depends", format!("{what} names no pod link: it passes from a pod under no policy and is dropped from one under a policy (ipv6_isolated)")),
            });
        }
        None
    }

    /// Whether any address of the pod link `ifindex` is under a policy.
    fn link_isolated(&self, ifindex: u32) -> bool {
        self.links.get(&ifindex, 0).is_ok_and(|l| l.any_addr(|a| self.endpoints.get(a, 0).is_ok_and(|e| e.flags != 0)))
    }

    /// The reverse entry of a service flow this packet replies to (a TCP
    /// SYN is never a reply), with the address and port its source is
    /// rewritten to, and the client it goes to.
    fn reply_of_service_flow(&self, p: &Packet, src: Addr, dst: Addr, now: u64) -> Option<((IpAddr, u16), IpAddr)> {
        if p.proto == PROTO_TCP {
            return None;
        }
        // An entry whose service id is gone is no flow to the kernel: the
        // reply goes on untranslated.
        let e = self.ct.read(&ct_key(src, dst, p.sport, p.dport, p.proto, CT_SVC_REV))?;
        let twin = ct_key(e.orig_addr, e.nat_addr, u16::from_be(e.orig_port), u16::from_be(e.nat_port), p.proto, CT_SVC_FWD);
        (is_alive(&e, now) || self.ct_alive(&twin, now).is_some()).then(|| ((IpAddr::from(e.nat_addr), u16::from_be(e.nat_port)), IpAddr::from(e.orig_addr)))
    }

    /// The service half: frontend, refusal or backend, masquerade.
    fn service_step(&self, x: &mut Explanation, p: &Packet, entry: &Entry, now: u64) -> Result<Step, DatapathError> {
        let (src, dst) = (Addr::from(p.src), Addr::from(p.dst));
        let origin = entry.origin();
        let (svc, external) = match self.frontend(dst, p, origin) {
            Frontend::None => return Ok(Step::NotAService),
            Frontend::UnknownPort => {
                let how = if origin == Origin::Host { "refused at connect() (EPERM)" } else { "rejected (TCP RST / ICMP port unreachable)" };
                x.verdict = "reject";
                x.reason = format!("{} is a service address but no service has port {}/{}: {how}", p.dst, p.dport, proto_name(p.proto));
                return Ok(Step::Done);
            }
            Frontend::Service { svc, external } => (svc, external),
        };
        x.service = Some(service::describe(&svc, p, external));
        let etp = if external { " (externalTrafficPolicy: Local, traffic from outside: this node's endpoints only, the client's address kept)" } else { "" };
        let client = if origin == Origin::Host { *self.config().node_addr_for(&src) } else { src };
        // The socket programs keep no conntrack: each connect() chooses.
        if let Some(existing) = self.existing_flow(&svc, p, client, dst, now).filter(|_| origin != Origin::Host) {
            x.nat = Some((existing.addr, existing.port));
            self.to_local(x, existing.addr);
            x.backend = Some(existing);
            x.reason = "an existing service flow keeps its backend (conntrack)".into();
            return Ok(Step::Done);
        }
        if let Some(r) = self.refusal(&svc, client, origin) {
            let (verdict, what) = service::refusal_words(r, origin);
            x.verdict = verdict;
            x.reason = format!("{what}{etp}");
            return Ok(Step::Done);
        }
        let Some(choice) = self.select(&svc, p, client, dst, now, origin)? else {
            x.verdict = "reject";
            x.reason = "the service has no usable endpoint: TCP RST / ICMP port unreachable".into();
            return Ok(Step::Done);
        };
        x.nat = (origin != Origin::Host).then_some((choice.addr, choice.port));
        if let Some((a, _)) = x.nat {
            self.to_local(x, a);
        }
        x.at_connect = origin == Origin::Pod
            && p.proto == PROTO_TCP
            && self.config().sock_scope == weir_common::config::SOCK_SCOPE_ALL
            && weir_logic::frontend::pod_socket_translates(&svc);
        if weir_logic::frontend::masquerades(&svc, &self.config(), &Addr::from(choice.addr), origin) {
            x.masquerade = Some(IpAddr::from(*self.config().node_addr_for(&Addr::from(choice.addr))));
        }
        x.backend = Some(choice);
        Ok(Step::Translated)
    }

    fn forward_reason(&self, x: &Explanation, entry: &Entry, p: &Packet) -> String {
        let isolated = x.policy.iter().any(|s| s.isolated);
        let how = match (&x.masquerade, entry) {
            (Some(m), _) => format!(", masqueraded: the backend sees {m} (a port of 61000-65535)"),
            (None, Entry::Host) => ": connect() goes straight to the backend (no packet is translated); getpeername() and UDP replies report the frontend".into(),
            (None, Entry::Device(_)) if x.backend.is_some() => format!(", not masqueraded: the backend sees the client's address {}", p.src),
            (None, Entry::Pod) if x.at_connect => {
                ": a pod's TCP connect() to it is pointed at the backend by the socket programs, so its packets travel untranslated, pod to pod (a raw packet is translated as shown)".into()
            }
            (None, _) => String::new(),
        };
        match (&x.backend, isolated) {
            (Some(_), true) => format!("load-balanced to a backend the policy allows{how}"),
            (Some(_), false) => format!("load-balanced; no policy isolates either end{how}"),
            (None, true) => "allowed by policy".into(),
            (None, false) if *entry != Entry::Pod && self.endpoints.get(&Addr::from(p.dst), 0).is_err() => {
                format!("{}:{} is no service frontend and no local pod: weir leaves it to the node's stack", p.dst, p.dport)
            }
            (None, false) => "not service traffic, and no policy isolates either end".into(),
        }
    }
}

/// How far the service half took the explanation.
enum Step {
    /// The explanation is complete (a refusal, or an existing flow).
    Done,
    /// A new service flow: the backend is chosen, the policy comes next.
    Translated,
    /// Not a frontend: the policy of the flow's ends decides.
    NotAService,
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "other",
    }
}
