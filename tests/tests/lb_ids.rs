//! Service and backend ids, on the real pinned maps: an id freed before
//! an agent restart is never handed out again (`WEIR_LB_IDS`), and every
//! IPv6 frontend is named by its id (`WEIR_SVC_ADDRS`) from before the
//! frontend exists until after it is gone. Both are what a conntrack entry
//! that keeps only ids needs: an id in a flow's entry names one address
//! for the entry's whole life. And every service has its programming time
//! (`WEIR_SVC_TIMES`, by id) however many services there are.

use std::{
    collections::HashMap as StdHashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{Array, HashMap, MapData};
use weir_common::{
    lb::{Backend, FrontendKey, LbIds, Service},
    maps::{BACKENDS, FRONTENDS, LB_IDS, SVC_ADDRS, SVC_TIMES},
};
use weir_datapath::{
    lb::{
        spec::{Protocol, Selection},
        Lb,
    },
    pinned, LoadOptions, PinLayout,
};
use weir_tests::{services::cluster_ip, testrun};

fn frontends(layout: &PinLayout) -> StdHashMap<FrontendKey, Service> {
    let m: HashMap<MapData, FrontendKey, Service> = pinned::hash(layout, FRONTENDS).expect("frontends");
    m.iter().filter_map(Result::ok).collect()
}

fn backends(layout: &PinLayout) -> StdHashMap<u32, Backend> {
    let m: HashMap<MapData, u32, Backend> = pinned::hash(layout, BACKENDS).expect("backends");
    m.iter().filter_map(Result::ok).collect()
}

fn names(layout: &PinLayout) -> HashMap<MapData, u32, FrontendKey> {
    pinned::hash(layout, SVC_ADDRS).expect("svc addrs")
}

fn name_list(layout: &PinLayout) -> StdHashMap<u32, FrontendKey> {
    names(layout).iter().filter_map(Result::ok).collect()
}

/// The service id of the frontend on `port` of `vip`.
fn svc_id(layout: &PinLayout, vip: impl Into<std::net::IpAddr>, port: u16) -> u32 {
    let addr = vip.into().into();
    frontends(layout).iter().find(|(k, _)| k.addr == addr && k.port == port.to_be()).map(|(_, s)| s.id).expect("the frontend is programmed")
}

/// The backend id of `addr`.
fn backend_id(layout: &PinLayout, addr: Ipv4Addr) -> u32 {
    let a = std::net::IpAddr::V4(addr).into();
    backends(layout).iter().find(|(_, b)| b.addr == a).map(|(id, _)| *id).expect("the backend is programmed")
}

#[test]
fn an_id_freed_before_a_restart_is_never_handed_out_again() {
    testrun::in_fresh_datapath(LoadOptions { lb_table_slots: 4096, ..LoadOptions::default() }, |layout, _dp| {
        let (vip_a, vip_b, vip_c) = (Ipv4Addr::new(10, 96, 9, 1), Ipv4Addr::new(10, 96, 9, 2), Ipv4Addr::new(10, 96, 9, 3));
        let (b1, b2, b3) = (Ipv4Addr::new(10, 244, 9, 1), Ipv4Addr::new(10, 244, 9, 2), Ipv4Addr::new(10, 244, 9, 3));
        let mut lb = Lb::open(layout).expect("open lb maps");
        lb.upsert(&cluster_ip(vip_a, 80, Protocol::Tcp, &[(b1, 8080)])).expect("A");
        lb.upsert(&cluster_ip(vip_b, 80, Protocol::Tcp, &[(b2, 8080)])).expect("B");
        // B has the largest service id and its backend the largest backend
        // id; both go, and then the agent restarts.
        let (a_id, b_id, b2_id) = (svc_id(layout, vip_a, 80), svc_id(layout, vip_b, 80), backend_id(layout, b2));
        assert!(b_id > a_id);
        lb.remove(&cluster_ip(vip_b, 80, Protocol::Tcp, &[(b2, 8080)]).frontend).expect("remove B");
        assert!(!backends(layout).contains_key(&b2_id), "B's backend is deleted with it");
        drop(lb);

        let mut lb = Lb::open(layout).expect("reopen lb maps");
        lb.upsert(&cluster_ip(vip_c, 80, Protocol::Tcp, &[(b3, 8080)])).expect("C");
        let (c_id, b3_id) = (svc_id(layout, vip_c, 80), backend_id(layout, b3));
        assert!(c_id > b_id, "C got service id {c_id}; B's {b_id} was freed before the restart and must not come back");
        assert!(b3_id > b2_id, "C's backend got id {b3_id}; B's backend's {b2_id} must not come back");

        // The marks cover every id handed out.
        let marks: Array<MapData, LbIds> = pinned::array(layout, LB_IDS).expect("lb ids");
        let m = marks.get(&0, 0).expect("the marks");
        assert!(m.next_svc_id > c_id && m.next_backend_id > b3_id, "{m:?}");
    });
}

#[test]
fn ids_an_agent_from_before_the_marks_handed_out_are_covered_at_the_next_start() {
    testrun::in_fresh_datapath(LoadOptions { lb_table_slots: 4096, ..LoadOptions::default() }, |layout, _dp| {
        let (vip_a, vip_b, vip_c) = (Ipv4Addr::new(10, 96, 9, 1), Ipv4Addr::new(10, 96, 9, 2), Ipv4Addr::new(10, 96, 9, 3));
        let be = |i| [(Ipv4Addr::new(10, 244, 9, i), 8080)];
        let mut lb = Lb::open(layout).expect("open lb maps");
        lb.upsert(&cluster_ip(vip_a, 80, Protocol::Tcp, &be(1))).expect("A");
        lb.upsert(&cluster_ip(vip_b, 80, Protocol::Tcp, &be(2))).expect("B");
        let b_id = svc_id(layout, vip_b, 80);
        drop(lb);
        // An agent from before WEIR_LB_IDS left no marks.
        let mut marks: Array<MapData, LbIds> = pinned::array(layout, LB_IDS).expect("lb ids");
        marks.set(0, LbIds::default(), 0).expect("clear the marks");
        // This agent starts, and B goes before it hands out any id.
        let mut lb = Lb::open(layout).expect("the upgraded agent");
        lb.remove(&cluster_ip(vip_b, 80, Protocol::Tcp, &be(2)).frontend).expect("remove B");
        drop(lb);
        let mut lb = Lb::open(layout).expect("restart");
        lb.upsert(&cluster_ip(vip_c, 80, Protocol::Tcp, &be(3))).expect("C");
        let c_id = svc_id(layout, vip_c, 80);
        assert!(c_id > b_id, "C got service id {c_id}; B's {b_id} was handed out by the older agent and must not come back");
    });
}

#[test]
fn an_ipv6_frontend_is_named_by_its_id_until_it_is_removed_and_repairs_restore_the_names() {
    testrun::in_fresh_datapath(LoadOptions { lb_table_slots: 4096, ..LoadOptions::default() }, |layout, _dp| {
        let vip6 = "fd00:10:96::1".parse::<Ipv6Addr>().expect("vip");
        let be6 = "fd00:10:244::5".parse::<Ipv6Addr>().expect("backend");
        let v6 = cluster_ip(vip6, 53, Protocol::Udp, &[(be6, 5353)]);
        let v4 = cluster_ip(Ipv4Addr::new(10, 96, 9, 1), 53, Protocol::Udp, &[(Ipv4Addr::new(10, 244, 9, 5), 5353)]);
        let mut lb = Lb::open(layout).expect("open lb maps");
        lb.upsert(&v6).expect("IPv6 service");
        lb.upsert(&v4).expect("IPv4 service");
        let id6 = svc_id(layout, vip6, 53);
        let key6 = *frontends(layout).iter().find(|(_, s)| s.id == id6).expect("frontend").0;
        assert_eq!(name_list(layout), StdHashMap::from([(id6, key6)]), "the IPv6 frontend is named, the IPv4 one is not");

        // Drift: a name deleted and a stray one added behind the agent's back.
        let mut m = names(layout);
        m.remove(&id6).expect("delete the name");
        m.insert(999_999, key6, 0).expect("a stray name");
        assert_eq!(lb.repair().expect("repair"), 2);
        assert_eq!(name_list(layout), StdHashMap::from([(id6, key6)]));

        // An agent from before the map left its IPv6 frontends unnamed:
        // the next start names them.
        names(layout).remove(&id6).expect("delete the name");
        drop(lb);
        let mut lb = Lb::open(layout).expect("reopen");
        assert_eq!(name_list(layout), StdHashMap::from([(id6, key6)]));

        lb.remove(&v6.frontend).expect("remove the IPv6 service");
        assert!(name_list(layout).is_empty(), "the name goes with its frontend");
    });
}

#[test]
fn a_failed_write_of_an_ipv6_frontend_leaves_no_name_behind() {
    // Room for one frontend and its address's marker.
    testrun::in_fresh_datapath(LoadOptions { lb_table_slots: 4096, frontends: 2, ..LoadOptions::default() }, |layout, _dp| {
        let vip6 = "fd00:10:96::1".parse::<Ipv6Addr>().expect("vip");
        let be6 = "fd00:10:244::5".parse::<Ipv6Addr>().expect("backend");
        let mut lb = Lb::open(layout).expect("open lb maps");
        lb.upsert(&cluster_ip(vip6, 53, Protocol::Udp, &[(be6, 5353)])).expect("the first port fits");
        let before = name_list(layout);
        assert_eq!(before.len(), 1);
        // A second port of the same address: named (the names have room
        // for one more), then its frontend does not fit.
        let e = lb.upsert(&cluster_ip(vip6, 54, Protocol::Udp, &[(be6, 5354)])).expect_err("no room for a second frontend");
        assert!(e.to_string().contains("WEIR_FRONTENDS"), "{e}");
        assert_eq!(name_list(layout), before, "the failed write's name is taken back");
    });
}

#[test]
fn every_service_has_its_programming_time_past_65536_services() {
    // 65,600 services (and their VIP markers) fit the frontends; the
    // times map used to stop at 65,536 whatever the frontends' capacity.
    const SERVICES: u32 = 65_600;
    let opts = LoadOptions { frontends: 2 * SERVICES + 16, lb_table_slots: SERVICES + 16, ..LoadOptions::default() };
    testrun::in_fresh_datapath(opts, |layout, _dp| {
        let mut lb = Lb::open(layout).expect("open lb maps");
        for i in 0..SERVICES {
            let vip = Ipv4Addr::from(0x0a60_0000 + i);
            let mut spec = cluster_ip(vip, 80, Protocol::Tcp, &[(Ipv4Addr::new(10, 244, 9, 1), 8080)]);
            spec.selection = Selection::Random;
            lb.upsert(&spec).unwrap_or_else(|e| panic!("service {i}: {e}"));
        }
        let times: HashMap<MapData, u32, u64> = pinned::hash(layout, SVC_TIMES).expect("times");
        let stamped = times.keys().filter_map(Result::ok).count();
        assert_eq!(stamped, SERVICES as usize, "every service's programming time is recorded");
    });
}
