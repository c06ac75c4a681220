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
//! `WEIR_BACKENDS` and `WEIR_SVC_ADDRS` as the older agent left them
//! (the ids the new agent adopts); an address no id names any more gets
//! id 0, which names nothing, as for a backend that left (the kernel then
//! treats the entry as no flow).

use std::collections::HashMap;

use weir_common::{
    addr::Addr,
    ct::{CtEntry, CtKey, CT_SVC_FWD, CT_SVC_REV},
    lb::{Backend, FrontendKey},
    maps::{BACKENDS, SVC_ADDRS},
};

use crate::{pinned, pins::PinLayout, DatapathError};

/// An address and port (network order).
type Endpoint = (Addr, u16);

/// The backends and frontends by id, and by address.
#[derive(Default)]
pub struct IdView {
    backends: HashMap<u32, Endpoint>,
    by_backend: HashMap<Endpoint, u32>,
    frontends: HashMap<u32, (Addr, u16, u8)>,
    by_frontend: HashMap<(Addr, u16, u8), u32>,
}

impl IdView {
    /// From the pinned `WEIR_BACKENDS` and `WEIR_SVC_ADDRS`.
    pub fn read(layout: &PinLayout) -> Result<Self, DatapathError> {
        let backends: aya::maps::HashMap<_, u32, Backend> = pinned::hash(layout, BACKENDS)?;
        let names: aya::maps::HashMap<_, u32, FrontendKey> = pinned::hash(layout, SVC_ADDRS)?;
        Ok(Self::of(backends.iter().filter_map(Result::ok).map(|(id, b)| (id, (b.addr, b.port))), names.iter().filter_map(Result::ok).map(|(id, f)| (id, (f.addr, f.port, f.proto)))))
    }

    /// From (id, backend) and (id, frontend) pairs. Where several ids name
    /// one address, the lowest is the one found by it.
    pub fn of(backends: impl IntoIterator<Item = (u32, Endpoint)>, frontends: impl IntoIterator<Item = (u32, (Addr, u16, u8))>) -> Self {
        let mut v = Self::default();
        for (id, b) in backends {
            v.backends.insert(id, b);
            v.by_backend.entry(b).and_modify(|i| *i = (*i).min(id)).or_insert(id);
        }
        for (id, f) in frontends {
            v.frontends.insert(id, f);
            v.by_frontend.entry(f).and_modify(|i| *i = (*i).min(id)).or_insert(id);
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
        let backend_id = if self.backends.get(&e.backend_id) == Some(&backend) { e.backend_id } else { self.by_backend.get(&backend).copied().unwrap_or(0) };
        let svc_id = if self.frontends.get(&e.svc_id) == Some(&frontend) { e.svc_id } else { self.by_frontend.get(&frontend).copied().unwrap_or(0) };
        let changed = (backend_id, svc_id) != (e.backend_id, e.svc_id);
        e.backend_id = backend_id;
        e.svc_id = svc_id;
        changed
    }
}

#[cfg(test)]
mod tests {
    use weir_common::ct::{CT_F_MASQ, CT_POLICY};

    use super::{super::steps::fixtures::{addr6 as a, flow}, *};

    const P80: u16 = 80u16.to_be();
    const P8080: u16 = 8080u16.to_be();

    fn view() -> IdView {
        // Backend 7 is b1 (as the entries say), 8 is b2; service 3 the VIP.
        IdView::of([(7, (a("fd00::b1"), P8080)), (8, (a("fd00::b2"), P8080))], [(3, (a("fd00:96::10"), P80, 6)), (4, (a("fd00:96::20"), P80, 6))])
    }

    #[test]
    fn ids_that_name_the_entrys_addresses_stay() {
        let (vip, b1, client) = (a("fd00:96::10"), a("fd00::b1"), a("fd00::2"));
        let (mut k, mut e) = flow(CT_SVC_FWD, client, vip, b1, client, 0);
        k.sport = 40000u16.to_be();
        k.dport = P80;
        e.nat_port = P8080;
        assert!(!view().rename(&k, &mut e));
        assert_eq!((e.backend_id, e.svc_id), (7, 3));
    }

    #[test]
    fn a_reused_id_is_renamed_by_the_addresses_the_entry_holds() {
        let (vip, b2, client) = (a("fd00:96::10"), a("fd00::b2"), a("fd00::2"));
        // Forward: backend b2 and the VIP, under ids 7 (b1's now) and 4
        // (another frontend's now).
        let (mut k, mut e) = flow(CT_SVC_FWD, client, vip, b2, client, 0);
        (k.sport, k.dport, e.nat_port, e.svc_id) = (40000u16.to_be(), P80, P8080, 4);
        assert!(view().rename(&k, &mut e));
        assert_eq!((e.backend_id, e.svc_id), (8, 3));
        // Reverse (a masqueraded flow's too): the backend is the key's
        // source, the service the value's address.
        let (mut k, mut e) = flow(CT_SVC_REV, b2, a("fd00:ff::1"), vip, client, CT_F_MASQ);
        (k.sport, e.nat_port, e.svc_id) = (P8080, P80, 4);
        assert!(view().rename(&k, &mut e));
        assert_eq!((e.backend_id, e.svc_id), (8, 3));
    }

    #[test]
    fn an_address_no_id_names_gets_id_zero_and_other_entries_are_left_alone() {
        let (vip, gone, client) = (a("fd00:96::10"), a("fd00::99"), a("fd00::2"));
        let (mut k, mut e) = flow(CT_SVC_FWD, client, vip, gone, client, 0);
        (k.dport, e.nat_port) = (P80, P8080);
        assert!(view().rename(&k, &mut e));
        assert_eq!((e.backend_id, e.svc_id), (0, 3), "the backend left: its flow is no flow");
        let (k, mut e) = flow(CT_POLICY, client, gone, gone, client, 0);
        assert!(!view().rename(&k, &mut e), "a policy entry names no backend");
        let four = Addr::from(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
        let (k, mut e) = flow(CT_SVC_FWD, four, four, four, four, 0);
        assert!(!view().rename(&k, &mut e), "an IPv4 entry keeps its addresses");
    }
}
