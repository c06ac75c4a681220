//! The selection table grows: services that do not fit `WEIR_LB_TABLE`
//! make the agent rebuild it larger (the upgrade's migration, in the
//! running agent) instead of failing with "table full". Established
//! connections survive the swap, pods wired afterwards get programs over
//! the new table, and a restart with the original `--lb-table-slots`
//! keeps the grown table.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use weir_tests::{
    services::yaml_service,
    traffic::{ask_name, tcp_connect, tcp_name, tcp_server, Reply},
    Node, Pod,
};

const T: Duration = Duration::from_millis(1500);
const LONG_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 60, 1);
/// Services added at once: one endpoint each, so 101 slots each; 1,010
/// slots with the first service's 101 do not fit the 256 the agent
/// starts with.
const MORE: u8 = 10;

fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 61, 1 + i)
}

fn table_pin(node: &Node) -> std::path::PathBuf {
    node.bpffs().join("maps").join("WEIR_LB_TABLE")
}

fn map_info(pin: &Path) -> (u32, u32) {
    let info = aya::maps::MapInfo::from_pin(pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    (info.id(), info.max_entries())
}

/// The capacity /metrics reports for the selection table, once it is at
/// least `min` (the gauge follows the reconcile that logged).
fn capacity_in_metrics(node: &Node, min: u64) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let m = node.agent_http("/metrics");
        let n: u64 = m
            .lines()
            .find(|l| l.starts_with("weir_map_capacity{map=\"WEIR_LB_TABLE\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no WEIR_LB_TABLE capacity gauge in:\n{m}"));
        if n >= min || start.elapsed() > Duration::from_secs(3) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn every_service_answers(client: &Pod, what: &str) {
    for i in 0..MORE {
        let name = tcp_name(client.ns(), vip(i), 80, T).unwrap_or_else(|e| panic!("{what}: {} from {}: {e}", vip(i), client.name));
        assert_eq!(name, "b", "{what}: {}", vip(i));
    }
}

#[test]
fn services_past_the_tables_size_grow_it_without_breaking_a_connection() {
    let node = Node::new();
    let b = node.pod("b", Ipv4Addr::new(10, 244, 60, 2));
    let client = node.pod("client", Ipv4Addr::new(10, 244, 60, 3));
    let _long = tcp_server(b.ns(), 8080, Reply::NamePerLine("b".into()));
    let _short = tcp_server(b.ns(), 8081, Reply::Name("b".into()));
    let ep = [(b.ip, true, true, false)];
    node.write_source("long.yaml", yaml_service("long", LONG_VIP, 80, "TCP", 8080, &ep).as_bytes());
    let mut agent = node.start_agent_with(&["--lb-table-slots", "256"]);
    agent.wait_synced();
    agent.wait_attached(&b.host_if, b.host_ifindex);
    agent.wait_attached(&client.host_if, client.host_ifindex);
    let (old_id, slots) = map_info(&table_pin(&node));
    assert_eq!(slots, 256);
    let mut conn = tcp_connect(client.ns(), LONG_VIP, 80, T).expect("a long-lived connection through the first service");
    assert_eq!(ask_name(&mut conn).expect("first answer"), "b");

    // Ten services in one change: 1,010 more slots than the table has.
    let more: String = (0..MORE).map(|i| yaml_service(&format!("more-{i}"), vip(i), 80, "TCP", 8081, &ep)).collect::<Vec<_>>().join("---\n");
    let n = agent.log_text().matches("reconciled").count();
    node.write_source("more.yaml", more.as_bytes());
    agent.wait_for_log("reconciled", n + 1);
    let log = agent.log_text();
    assert!(!log.contains("lb_table_full") && !log.contains("programming failed"), "no service failed:\n{log}");
    assert_eq!(log.matches("grew the selection table").count(), 1, "one growth for the whole batch:\n{log}");
    let (new_id, slots) = map_info(&table_pin(&node));
    assert!(new_id != old_id && slots >= 1_111, "the pinned table was rebuilt larger: {slots} slots");
    assert_eq!(capacity_in_metrics(&node, u64::from(slots)), u64::from(slots), "/metrics reports the new capacity");
    assert!(node.agent_http("/metrics").lines().any(|l| l == "weir_lb_table_growths_total 1"), "/metrics counts the growth:\n{}", node.agent_http("/metrics"));
    assert!(!node.bpffs().join("maps-next").exists(), "nothing is left staged");

    every_service_answers(&client, "after growing");
    assert_eq!(ask_name(&mut conn).expect("the connection made before the growth still works"), "b");

    // A pod wired after the growth gets programs over the new table.
    let late = node.pod("late", Ipv4Addr::new(10, 244, 60, 4));
    agent.wait_attached(&late.host_if, late.host_ifindex);
    every_service_answers(&late, "a pod wired after the growth");

    // A restart with the original size keeps the grown table.
    agent.restart_with(&["--lb-table-slots", "256"]);
    agent.wait_for_log("initial sync", 2);
    assert!(agent.log_text().contains("keeping the pinned selection table"), "{}", agent.log_text());
    assert_eq!(map_info(&table_pin(&node)), (new_id, slots), "the same table, same size");
    every_service_answers(&client, "after a restart with --lb-table-slots 256");
    assert_eq!(ask_name(&mut conn).expect("the connection survives the restart too"), "b");
}
