//! The ids of IPv6 service entries, checked against their addresses when
//! conntrack leaves a layout that kept both (`WEIR_CT` before v4,
//! `WEIR_CT6_MASQ` v1).
//!
//! From v4 an IPv6 entry names its backend and service by id alone, so an
//! id must name what the entry's addresses say. An agent from before
//! `WEIR_LB_IDS` handed ids out afresh at every start, so an entry older
//! than that agent's last start may carry an id that now names another
//! backend or frontend: narrowed as it is, its flow would widen to that
//! one (its next packet to another pod, a reset). While the entry still
//! holds the addresses, the migration renames it by them, from
//! `WEIR_FRONTENDS`, `WEIR_BACKENDS` and `WEIR_LB_TABLE` as the older
//! agent left them (the ids the new agent adopts): the frontend entry
//! of its address, port, protocol and scope (external for a flow from
//! outside the node, where the frontend has such an entry), and the
//! backend id of its address and port that this frontend lists. An
//! address no id names any more gets id 0, which names nothing, as for a
//! backend that left (the kernel then treats the entry as no flow).

use std::collections::{BTreeSet, HashMap};

use weir_common::{
    addr::Addr,
    ct::{CtEntry, CtKey, CT_SVC_FWD, CT_SVC_REV},
    lb::{Backend, FrontendKey, Service, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_VIP_MARKER},
    maps::{BACKENDS, FRONTENDS, LB_TABLE},
};

use crate::{mmap::MmapU32Array, pinned, pins::PinLayout, DatapathError};

/// An address and port (network order).
type Endpoint = (Addr, u16);
/// A frontend without its scope: address, port (network order), protocol.
type Frontend = (Addr, u16, u8);

/// One frontend entry of `WEIR_FRONTENDS` as the view needs it.
pub struct FrontendIds {
    pub key: FrontendKey,
    pub id: u32,
    /// The backend ids its selection table lists.
    pub members: BTreeSet<u32>,
}

/// The backends and frontends by id, and by address.
#[derive(Default)]
pub struct IdView {
    backends: HashMap<u32, (Endpoint, u8)>,
    by_backend: HashMap<Endpoint, BTreeSet<u32>>,
    frontends: HashMap<u32, Frontend>,
    by_frontend: HashMap<(Frontend, u8), u32>,
    members: HashMap<u32, BTreeSet<u32>>,
}

impl IdView {
    /// From the pinned `WEIR_FRONTENDS` (the ids the next agent adopts),
    /// `WEIR_BACKENDS` and `WEIR_LB_TABLE` (which frontend lists which
    /// backend: since per-frontend backends, one endpoint has an id per
    /// frontend).
    pub fn read(layout: &PinLayout) -> Result<Self, DatapathError> {
        let backends: aya::maps::HashMap<_, u32, Backend> = pinned::hash(layout, BACKENDS)?;
        let frontends: aya::maps::HashMap<_, FrontendKey, Service> = pinned::hash(layout, FRONTENDS)?;
        let table = MmapU32Array::open(layout, LB_TABLE)?;
        let mut listed = Vec::new();
        for (key, svc) in frontends.iter().filter_map(Result::ok).filter(|(_, s)| s.flags & SVC_F_VIP_MARKER == 0) {
            let w = table.window(svc.table_base, svc.table_len)?;
            let members = (0..svc.table_len).filter_map(|slot| w.get(svc.table_base + slot)).collect();
            listed.push(FrontendIds { key, id: svc.id, members });
        }
        Ok(Self::of(backends.iter().filter_map(Result::ok), listed))
    }

    /// From the backends by id and the frontends. Where several frontend
    /// entries share an address, port, protocol and scope, the lowest id
    /// is the one found by them.
    pub fn of(backends: impl IntoIterator<Item = (u32, Backend)>, frontends: impl IntoIterator<Item = FrontendIds>) -> Self {
        let mut v = Self::default();
        for (id, b) in backends {
            v.backends.insert(id, ((b.addr, b.port), b.proto));
            v.by_backend.entry((b.addr, b.port)).or_default().insert(id);
        }
        for f in frontends {
            let tuple = (f.key.addr, f.key.port, f.key.proto);
            v.frontends.insert(f.id, tuple);
            v.by_frontend.entry((tuple, f.key.scope)).and_modify(|i| *i = (*i).min(f.id)).or_insert(f.id);
            v.members.insert(f.id, f.members);
        }
        v
    }

    /// Renames an IPv6 service entry by its addresses (other kinds, and
    /// IPv4 entries, which keep their addresses, are left as they are).
    /// Returns whether an id changed.
    pub fn rename(&self, k: &CtKey, e: &mut CtEntry) -> bool {
        let (backend, frontend) = match k.kind {
            CT_SVC_FWD => ((e.nat_addr, e.nat_port), (k.daddr, k.dport, k.proto)),
            CT_SVC_REV => ((k.saddr, k.sport), (e.nat_addr, e.nat_port, k.proto)),
            _ => return false,
        };
        if k.is_v4() {
            return false;
        }
        let svc_id = if self.frontends.get(&e.svc_id) == Some(&frontend) { e.svc_id } else { self.frontend_id(frontend, e.owner) };
        let backend_id = self.backend_id(backend, k.proto, svc_id, e.backend_id);
        let changed = (backend_id, svc_id) != (e.backend_id, e.svc_id);
        e.backend_id = backend_id;
        e.svc_id = svc_id;
        changed
    }

    /// The id of `frontend` for a flow charged to `owner`: a flow from
    /// outside the node (owner 0) was judged by the frontend's external
    /// entry where it has one, any other by its internal one. 0: none.
    fn frontend_id(&self, frontend: Frontend, owner: u32) -> u32 {
        let scopes = if owner == 0 { [SCOPE_EXTERNAL, SCOPE_INTERNAL] } else { [SCOPE_INTERNAL, SCOPE_EXTERNAL] };
        scopes.iter().find_map(|s| self.by_frontend.get(&(frontend, *s)).copied()).unwrap_or(0)
    }

    /// The id of `backend` (for `proto`) that frontend `svc_id` lists,
    /// `current` when it is one; else the lowest id of that address and
    /// port. 0: none.
    fn backend_id(&self, backend: Endpoint, proto: u8, svc_id: u32, current: u32) -> u32 {
        let Some(ids) = self.by_backend.get(&backend) else { return 0 };
        let fits = |id: &u32| self.backends.get(id).is_some_and(|(_, p)| *p == proto || *p == 0);
        let listed = |id: &u32| self.members.get(&svc_id).is_some_and(|m| m.contains(id));
        let candidates: Vec<u32> = ids.iter().copied().filter(fits).collect();
        if candidates.contains(&current) && (listed(&current) || !candidates.iter().any(listed)) {
            return current;
        }
        candidates.iter().copied().find(listed).or_else(|| candidates.first().copied()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use weir_common::ct::{CT_F_MASQ, CT_POLICY};

    use super::{super::steps::fixtures::{addr6 as a, flow}, *};

    const P80: u16 = 80u16.to_be();
    const P8080: u16 = 8080u16.to_be();

    fn backend(addr: &str, proto: u8) -> Backend {
        Backend { addr: a(addr), port: P8080, proto, flags: 0 }
    }

    fn frontend(vip: &str, proto: u8, scope: u8, id: u32, members: &[u32]) -> FrontendIds {
        FrontendIds { key: FrontendKey { addr: a(vip), port: P80, proto, scope }, id, members: members.iter().copied().collect() }
    }

    fn view() -> IdView {
        // Service 3 (the VIP, TCP) lists backends 7 (b1) and 8 (b2);
        // service 4 another VIP; service 5 the VIP over UDP, whose own
        // ids for b1 and b2 are 9 and 10.
        IdView::of(
            [(7, backend("fd00::b1", 6)), (8, backend("fd00::b2", 6)), (9, backend("fd00::b1", 17)), (10, backend("fd00::b2", 17))],
            [frontend("fd00:96::10", 6, SCOPE_INTERNAL, 3, &[7, 8]), frontend("fd00:96::20", 6, SCOPE_INTERNAL, 4, &[]), frontend("fd00:96::10", 17, SCOPE_INTERNAL, 5, &[9, 10])],
        )
    }

    /// A forward entry of a TCP flow from a pod: client → the VIP:80,
    /// translated to `backend`:8080.
    fn forward(vip: &str, backend: &str) -> (CtKey, CtEntry) {
        let (client, vip, backend) = (a("fd00::2"), a(vip), a(backend));
        let (mut k, mut e) = flow(CT_SVC_FWD, client, vip, backend, client, 0);
        (k.sport, k.dport, e.nat_port) = (40000u16.to_be(), P80, P8080);
        (k, e)
    }

    #[test]
    fn ids_that_name_the_entrys_addresses_stay() {
        let (k, mut e) = forward("fd00:96::10", "fd00::b1");
        assert!(!view().rename(&k, &mut e));
        assert_eq!((e.backend_id, e.svc_id), (7, 3));
    }

    #[test]
    fn a_reused_id_is_renamed_by_the_addresses_the_entry_holds() {
        // Forward: backend b2 and the VIP, under ids 7 (b1's now) and 4
        // (another frontend's now).
        let (k, mut e) = forward("fd00:96::10", "fd00::b2");
        e.svc_id = 4;
        assert!(view().rename(&k, &mut e));
        assert_eq!((e.backend_id, e.svc_id), (8, 3));
        // Reverse (a masqueraded flow's too): the backend is the key's
        // source, the service the value's address.
        let (mut k, mut e) = flow(CT_SVC_REV, a("fd00::b2"), a("fd00:ff::1"), a("fd00:96::10"), a("fd00::2"), CT_F_MASQ);
        (k.sport, e.nat_port, e.svc_id) = (P8080, P80, 4);
        assert!(view().rename(&k, &mut e));
        assert_eq!((e.backend_id, e.svc_id), (8, 3));
    }

    #[test]
    fn a_backend_is_renamed_to_the_id_its_own_frontend_and_protocol_list() {
        // b1's UDP id (9) under the TCP service: b1 has another id there.
        let (k, mut e) = forward("fd00:96::10", "fd00::b1");
        e.backend_id = 9;
        assert!(view().rename(&k, &mut e));
        assert_eq!((e.backend_id, e.svc_id), (7, 3));
        // A UDP flow to b1 under the UDP service keeps its own id.
        let (mut k, mut e) = forward("fd00:96::10", "fd00::b1");
        (k.proto, e.svc_id, e.backend_id) = (17, 5, 9);
        assert!(!view().rename(&k, &mut e));
    }

    #[test]
    fn a_flow_from_outside_is_named_by_the_frontends_external_entry() {
        let external = IdView::of(
            [(7, backend("fd00::b1", 6))],
            [frontend("fd00:96::10", 6, SCOPE_INTERNAL, 3, &[7]), frontend("fd00:96::10", 6, SCOPE_EXTERNAL, 6, &[7])],
        );
        let (k, mut e) = forward("fd00:96::10", "fd00::b1");
        (e.svc_id, e.owner) = (4, 0);
        assert!(external.rename(&k, &mut e));
        assert_eq!(e.svc_id, 6, "from outside the node (owner 0): the external entry");
        let (k, mut e) = forward("fd00:96::10", "fd00::b1");
        e.svc_id = 4;
        assert!(external.rename(&k, &mut e));
        assert_eq!(e.svc_id, 3, "from a pod: the internal one");
    }

    #[test]
    fn an_address_no_id_names_gets_id_zero_and_other_entries_are_left_alone() {
        let (k, mut e) = forward("fd00:96::10", "fd00::99");
        assert!(view().rename(&k, &mut e));
        assert_eq!((e.backend_id, e.svc_id), (0, 3), "the backend left: its flow is no flow");
        let gone = a("fd00::99");
        let (k, mut e) = flow(CT_POLICY, a("fd00::2"), gone, gone, gone, 0);
        assert!(!view().rename(&k, &mut e), "a policy entry names no backend");
        let four = Addr::from(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
        let (k, mut e) = flow(CT_SVC_FWD, four, four, four, four, 0);
        assert!(!view().rename(&k, &mut e), "an IPv4 entry keeps its addresses");
    }
}
