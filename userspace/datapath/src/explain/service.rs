//! The service half of an explanation, as `lb::forward` (and the socket
//! programs) decide it: which frontend entry serves the flow, whether a
//! new flow is refused, and which backend it gets.

use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use weir_common::{
    addr::Addr,
    ct::{CtKey, CT_STATE_CLOSED, CT_STATE_CLOSING, CT_SVC_FWD, CT_SVC_REV},
    drop::DropReason,
    lb::{svc_kind, AffinityKey, Backend, FrontendKey, Service, SourceRangeKey, PROTO_TCP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_LOCAL_ONLY},
};
use weir_logic::{
    ct::is_alive,
    frontend::{external_entry, refuse_new, Origin, Refusal},
    hash::flow_hash,
    select::{affinity_valid, choose_slot, eligible, has_affinity, SlotChoice},
};

use super::{ct_key, proto_name, BackendChoice, Maps, Packet, ServiceMatch, Why};
use crate::{lb::spec::Kind, DatapathError};

/// The frontend a packet's destination names.
pub(super) enum Frontend {
    /// Not a frontend.
    None,
    /// A ClusterIP on a port it does not serve.
    UnknownPort,
    /// `external`: the entry that serves only traffic from outside.
    Service { svc: Service, external: bool },
}

pub(super) fn describe(svc: &Service, p: &Packet, external: bool) -> ServiceMatch {
    ServiceMatch {
        // As frontends are written everywhere: `[fd00::1]:80/tcp` for IPv6.
        frontend: format!("{}/{}", std::net::SocketAddr::new(p.dst, p.dport), proto_name(p.proto)),
        service_id: svc.id,
        kind: Kind::from_number(svc_kind(svc.flags)).as_str(),
        entry: if external { "external" } else { "internal" },
        endpoints: if svc.flags & SVC_F_LOCAL_ONLY != 0 { "local" } else { "cluster" },
        eligible_backends: svc.backend_count,
    }
}

/// The verdict and the words for a refused new flow.
pub(super) fn refusal_words(r: Refusal, origin: Origin) -> (&'static str, String) {
    let how = |answer: &str| if origin == Origin::Host { "refused at connect() (EPERM)".to_string() } else { answer.to_string() };
    let (verdict, words) = match r {
        Refusal::Drop(DropReason::NotInSourceRanges) => ("drop", "the client is outside the service's loadBalancerSourceRanges: dropped (not_in_source_ranges)".into()),
        Refusal::Drop(DropReason::NoLocalEndpoints) => {
            ("drop", format!("the service has no endpoint on this node and only local ones count: {} (no_local_endpoints)", how("dropped")))
        }
        Refusal::Drop(reason) => ("drop", format!("dropped ({})", reason.as_str())),
        Refusal::Reject(reason) => ("reject", format!("the service has no usable endpoint: {} ({})", how("TCP RST / ICMP port unreachable"), reason.as_str())),
    };
    // The socket programs can only refuse: the connect() fails at once.
    (if origin == Origin::Host { "reject" } else { verdict }, words)
}

impl Maps {
    /// The frontend entry that serves a flow from `origin` to `dst`.
    pub(super) fn frontend(&self, dst: Addr, p: &Packet, origin: Origin) -> Frontend {
        let mut fk = FrontendKey { addr: dst, port: p.dport.to_be(), proto: p.proto, scope: SCOPE_INTERNAL };
        match self.frontends.get(&fk, 0) {
            Ok(svc) if external_entry(&svc, origin) => {
                fk.scope = SCOPE_EXTERNAL;
                match self.frontends.get(&fk, 0) {
                    Ok(ext) => Frontend::Service { svc: ext, external: true },
                    Err(_) => Frontend::Service { svc, external: false },
                }
            }
            Ok(svc) => Frontend::Service { svc, external: false },
            Err(_) => {
                fk.port = 0;
                fk.proto = 0;
                if self.frontends.get(&fk, 0).is_ok() {
                    Frontend::UnknownPort
                } else {
                    Frontend::None
                }
            }
        }
    }

    /// Why a new flow from `client` is refused, if it is. The node's own
    /// processes are inside every source range, as kube-proxy allows them.
    pub(super) fn refusal(&self, svc: &Service, client: Addr, origin: Origin) -> Option<Refusal> {
        refuse_new(svc, || origin == Origin::Host || self.in_source_ranges(svc.id, client))
    }

    fn in_source_ranges(&self, svc_id: u32, client: Addr) -> bool {
        self.source_ranges.get(&Key::new(32 + 128, SourceRangeKey { svc_id, addr: client }), 0).is_ok()
    }

    /// The backend a live flow of this tuple already has, as `lb::forward`
    /// keeps it (unless a SYN reopens a finished flow).
    pub(super) fn existing_flow(&self, svc: &Service, p: &Packet, client: Addr, vip: Addr, now: u64) -> Option<BackendChoice> {
        let cfg = self.config();
        let e = self.ct.read(&ct_key(client, vip, p.sport, p.dport, p.proto, CT_SVC_FWD))?;
        let dst = weir_logic::ct::backend_sees(e.flags, &cfg, client);
        let rkey = CtKey { saddr: e.nat_addr, daddr: dst, sport: e.nat_port, dport: e.orig_port, proto: p.proto, kind: CT_SVC_REV, _pad: 0 };
        let live = is_alive(&e, now) || self.ct_alive(&rkey, now).is_some();
        let reopened = p.proto == PROTO_TCP && (e.state == CT_STATE_CLOSING || e.state == CT_STATE_CLOSED);
        if !live || e.svc_id != svc.id || reopened {
            return None;
        }
        let b = self.backend(e.backend_id).filter(|b| b.addr == e.nat_addr && b.port == e.nat_port)?;
        Some(choice(e.backend_id, &b, Why::ExistingConntrack))
    }

    /// The backend for a new flow, as `lb::select_backend` chooses it. The
    /// socket programs have no source port yet and hash at random, so any
    /// slot may come up for the node's own processes.
    pub(super) fn select(&self, svc: &Service, p: &Packet, client: Addr, vip: Addr, now: u64, origin: Origin) -> Result<Option<BackendChoice>, DatapathError> {
        if svc.backend_count == 0 {
            return Ok(None);
        }
        if has_affinity(svc) {
            if let Ok(a) = self.affinity.get(&AffinityKey { svc_id: svc.id, client }, 0) {
                if affinity_valid(svc, a.last_ns, now) {
                    if let Some(b) = self.backend(a.backend_id).filter(|b| eligible(b, svc)) {
                        return Ok(Some(choice(a.backend_id, &b, Why::Affinity)));
                    }
                }
            }
        }
        let hash = flow_hash(&client, &vip, p.sport.to_be(), p.dport.to_be(), p.proto);
        let (slot, why) = match choose_slot(svc, hash, 0) {
            SlotChoice::Maglev { slot } if origin != Origin::Host => (slot, Why::Maglev { hash, slot, table_len: svc.table_len }),
            SlotChoice::Maglev { slot } | SlotChoice::Random { slot } => (slot, Why::Random { candidates: svc.backend_count }),
        };
        let window = self.table.window(svc.table_base, svc.table_len)?;
        let Some(id) = window.get(svc.table_base + slot) else { return Ok(None) };
        Ok(self.backend(id).map(|b| choice(id, &b, why)))
    }
}

fn choice(id: u32, b: &Backend, why: Why) -> BackendChoice {
    BackendChoice { backend_id: id, addr: IpAddr::from(b.addr), port: u16::from_be(b.port), why }
}
