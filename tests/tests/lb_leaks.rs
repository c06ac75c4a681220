//! A failed service write leaks nothing: the backends it created, the
//! selection-table slots it took or overwrote, the source ranges and the
//! VIP marker it added are given back, on the real pinned maps with a
//! tiny selection table.

use std::net::{IpAddr, Ipv4Addr};

use weir_common::maps::SOURCE_RANGES_MAX_ENTRIES;
use weir_datapath::{
    lb::{dump, spec::Protocol, Lb},
    LoadOptions, PinLayout,
};
use weir_desired::policy::Prefix;
use weir_tests::{services::cluster_ip, testrun};

fn with_lb(slots: u32, f: impl FnOnce(&mut Lb, &PinLayout) + Send + 'static) {
    testrun::in_fresh_datapath(LoadOptions { lb_table_slots: slots, ..LoadOptions::default() }, move |layout, _dp| {
        let mut lb = Lb::open(layout).expect("open lb maps");
        f(&mut lb, layout);
    });
}

fn backends(n: u8) -> Vec<(Ipv4Addr, u16)> {
    (0..n).map(|i| (Ipv4Addr::new(10, 244, 9, 10 + i), 8080)).collect()
}

#[test]
fn a_service_that_does_not_fit_the_table_leaves_no_backend_behind() {
    with_lb(256, |lb, _| {
        lb.upsert(&cluster_ip(Ipv4Addr::new(10, 96, 9, 1), 80, Protocol::Tcp, &backends(1))).expect("101 slots fit");
        let before = lb.entry_counts();
        // 3 backends need 307 slots: more than the table has.
        let e = lb.upsert(&cluster_ip(Ipv4Addr::new(10, 96, 9, 2), 80, Protocol::Tcp, &[(Ipv4Addr::new(10, 244, 9, 50), 1), (Ipv4Addr::new(10, 244, 9, 51), 1), (Ipv4Addr::new(10, 244, 9, 52), 1)]));
        assert_eq!(e.map_err(|e| e.kind()).err(), Some("lb_table_full"));
        assert_eq!(lb.entry_counts(), before, "(frontends, backends, slots) as before the failed write");
    });
}

#[test]
fn a_write_that_fails_after_taking_slots_gives_them_back_and_an_update_in_place_is_undone() {
    with_lb(1024, |lb, layout| {
        // A takes every source-range entry there is.
        let mut a = cluster_ip(Ipv4Addr::new(10, 96, 9, 1), 80, Protocol::Tcp, &backends(1));
        a.source_ranges = (0..SOURCE_RANGES_MAX_ENTRIES).map(|i| Prefix::host(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)))).collect();
        lb.upsert(&a).expect("A");
        let before = lb.entry_counts();
        let dump_before = dump::dump(layout).expect("dump");

        // B: backends made, 101 slots taken, then its range does not fit.
        let mut b = cluster_ip(Ipv4Addr::new(10, 96, 9, 2), 80, Protocol::Tcp, &[(Ipv4Addr::new(10, 244, 9, 60), 80)]);
        b.source_ranges = vec![Prefix::host(IpAddr::V4(Ipv4Addr::new(12, 0, 0, 1)))];
        assert!(lb.upsert(&b).is_err(), "no room for B's source range");
        assert_eq!(lb.entry_counts(), before, "B's backend, slots and VIP marker given back");

        // A again, its one backend replaced (the table rewritten in place)
        // and one range more: the range fails, the table is A's again.
        let mut a2 = a.clone();
        a2.endpoints = cluster_ip(Ipv4Addr::new(10, 96, 9, 1), 80, Protocol::Tcp, &[(Ipv4Addr::new(10, 244, 9, 70), 8080)]).endpoints;
        a2.source_ranges.push(Prefix::host(IpAddr::V4(Ipv4Addr::new(12, 0, 0, 2))));
        assert!(lb.upsert(&a2).is_err());
        assert_eq!(lb.entry_counts(), before);
        assert_eq!(dump::dump(layout).expect("dump"), dump_before, "the maps hold exactly A as it was");

        // Everything given back is usable: B fits once A is gone.
        lb.remove(&a.frontend).expect("remove A");
        lb.upsert(&b).expect("B now fits");
    });
}

#[test]
fn a_service_whose_entries_vanished_behind_the_agents_back_is_still_removed() {
    use weir_common::lb::{Backend, FrontendKey, Service};
    with_lb(1024, |lb, layout| {
        let vip = Ipv4Addr::new(10, 96, 9, 1);
        let a = cluster_ip(vip, 80, Protocol::Tcp, &backends(2));
        lb.upsert(&a).expect("A");
        // Its frontend, its VIP marker and its backends deleted by someone
        // else (bpftool, a `weir` command): the kernel answers the agent's
        // deletes with ENOENT, and the entries are gone either way.
        let mut frontends: aya::maps::HashMap<aya::maps::MapData, FrontendKey, Service> =
            weir_datapath::pinned::hash(layout, "WEIR_FRONTENDS").expect("frontends");
        let keys: Vec<FrontendKey> = frontends.keys().map(|k| k.expect("key")).collect();
        assert_eq!(keys.len(), 2, "A's frontend and its VIP marker");
        for k in &keys {
            frontends.remove(k).expect("delete behind the agent's back");
        }
        let mut backends_map: aya::maps::HashMap<aya::maps::MapData, u32, Backend> =
            weir_datapath::pinned::hash(layout, "WEIR_BACKENDS").expect("backends");
        let ids: Vec<u32> = backends_map.keys().map(|k| k.expect("key")).collect();
        assert_eq!(ids.len(), 2);
        for id in &ids {
            backends_map.remove(id).expect("delete behind the agent's back");
        }
        lb.remove(&a.frontend).expect("removing entries that are already gone is done, not an error");
        // (Its selection-table slots wait out their grace period.)
        let (services, backend_ids, _) = lb.entry_counts();
        assert_eq!((services, backend_ids), (0, 0), "nothing of A is left in the agent's books");
        lb.upsert(&a).expect("A again");
        assert_eq!(frontends.keys().count(), 2, "and it is programmed afresh");
    });
}
