//! Selection tables built ahead on every core (`Lb::prebuild`, a cold
//! sync's new frontends) are exactly the tables an upsert builds in
//! place, on the real pinned maps.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{HashMap, MapData};
use weir_common::{
    lb::{Backend, FrontendKey, Service, SVC_F_VIP_MARKER},
    maps::{BACKENDS, FRONTENDS, LB_TABLE},
};
use weir_datapath::{
    lb::{spec::Protocol, Lb},
    mmap::MmapU32Array,
    pinned, LoadOptions, PinLayout,
};
use weir_desired::ServiceSpec;
use weir_tests::{services::cluster_ip, testrun};

/// 150 ClusterIPs with 3 to 12 endpoints each, every address distinct.
fn specs() -> Vec<ServiceSpec> {
    (0..150u32)
        .map(|i| {
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 7, 1)) + i);
            let eps: Vec<(Ipv4Addr, u16)> =
                (0..3 + i % 10).map(|j| (Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + i * 16 + j), 8080)).collect();
            cluster_ip(vip, 80, Protocol::Tcp, &eps)
        })
        .collect()
}

/// Every frontend's selection table, slot by slot, as backend addresses
/// (ids depend on history; the slot order is what the kernel selects by).
fn tables(layout: &PinLayout) -> BTreeMap<String, Vec<String>> {
    let frontends: HashMap<MapData, FrontendKey, Service> = pinned::hash(layout, FRONTENDS).expect("frontends");
    let backends: HashMap<MapData, u32, Backend> = pinned::hash(layout, BACKENDS).expect("backends");
    let backends: BTreeMap<u32, Backend> = backends.iter().filter_map(Result::ok).collect();
    let table = MmapU32Array::open(layout, LB_TABLE).expect("table");
    let mut out = BTreeMap::new();
    for (k, s) in frontends.iter().filter_map(Result::ok).filter(|(_, s)| s.flags & SVC_F_VIP_MARKER == 0) {
        let w = table.window(s.table_base, s.table_len).expect("window");
        let slots = (0..s.table_len)
            .map(|i| {
                let id = w.get(s.table_base + i).unwrap_or(0);
                backends.get(&id).map_or_else(|| format!("missing {id}"), |b| format!("{:?}:{}", b.addr, u16::from_be(b.port)))
            })
            .collect();
        out.insert(format!("{:?}:{}/{}", k.addr, u16::from_be(k.port), k.proto), slots);
    }
    out
}

/// Programs `specs()` into a fresh datapath, with or without building
/// the tables ahead; returns every frontend's table and how many tables
/// were built ahead.
fn programmed(ahead: bool) -> (BTreeMap<String, Vec<String>>, usize) {
    testrun::in_fresh_datapath(LoadOptions { lb_table_slots: 1 << 20, ..LoadOptions::default() }, move |layout, _dp| {
        let mut lb = Lb::open(layout).expect("open lb maps");
        let specs = specs();
        if ahead {
            lb.prebuild(&specs);
        }
        let (built, _) = lb.prebuilt_counts();
        for s in &specs {
            lb.upsert(s).expect("upsert");
        }
        let (_, taken) = lb.prebuilt_counts();
        assert_eq!(taken, built, "every upsert of a new frontend took its table built ahead");
        (tables(layout), built)
    })
}

#[test]
fn tables_built_ahead_on_every_core_are_the_tables_built_in_place() {
    let (ahead, built) = programmed(true);
    let (in_place, none) = programmed(false);
    assert_eq!(none, 0);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert_eq!(built, 150, "one table per new frontend was built ahead");
    }
    assert_eq!(ahead.len(), 150);
    assert_eq!(ahead, in_place, "the same frontends, and the same backend in every slot");
}
