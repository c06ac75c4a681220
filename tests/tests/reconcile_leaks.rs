//! The agent's service reconcile on failure and in odd batches: a frontend
//! whose update failed is still removed when its Service goes; a Service
//! deleted and another created with its IP in one change serve at once;
//! a restart releases the backends of services deleted while no agent ran.

use std::{net::Ipv4Addr, time::Duration};

use weir_tests::{
    services::yaml_service,
    traffic::{tcp_request, tcp_server, Reply},
    Node, Pod,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 48, 10);
const T: Duration = Duration::from_millis(1500);

fn name_at(client: &Pod, vip: Ipv4Addr) -> std::io::Result<String> {
    tcp_request(client.ns(), vip, 80, Vec::new(), T).map(|r| String::from_utf8_lossy(&r).split_whitespace().next().unwrap_or_default().to_string())
}

/// The pinned backends, from /metrics, once they are `want` (the gauge
/// follows the reconcile that logged); the last value seen otherwise.
fn backends_in_maps(node: &Node, want: u64) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let m = node.agent_http("/metrics");
        let n = m
            .lines()
            .find(|l| l.starts_with("weir_map_entries{map=\"WEIR_BACKENDS\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no WEIR_BACKENDS gauge in:\n{m}"));
        if n == want || start.elapsed() > Duration::from_secs(3) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_service_deleted_and_another_created_with_its_ip_in_one_change_serves_at_once() {
    let node = Node::new();
    let old = node.pod("old", Ipv4Addr::new(10, 244, 48, 2));
    let new = node.pod("new", Ipv4Addr::new(10, 244, 48, 3));
    let client = node.pod("client", Ipv4Addr::new(10, 244, 48, 4));
    let _s1 = tcp_server(old.ns(), 8080, Reply::Name("old".into()));
    let _s2 = tcp_server(new.ns(), 8080, Reply::Name("new".into()));
    node.write_source("svc.yaml", yaml_service("web-old", VIP, 80, "TCP", 8080, &[(old.ip, true, true, false)]).as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    for p in [&old, &new, &client] {
        agent.wait_attached(&p.host_if, p.host_ifindex);
    }
    assert_eq!(name_at(&client, VIP).expect("web-old"), "old");

    // One change: web-old goes, web-new (which sorts first) takes its IP.
    let n = agent.log_text().matches("reconciled").count();
    node.write_source("svc.yaml", yaml_service("web-new", VIP, 80, "TCP", 8080, &[(new.ip, true, true, false)]).as_bytes());
    agent.wait_for_log("reconciled", n + 1);
    assert_eq!(name_at(&client, VIP).expect("web-new at once, not at the next resync"), "new");
    assert!(!agent.log_text().contains("already belongs to another service"), "{}", agent.log_text());
}

#[test]
fn a_service_whose_update_failed_is_removed_when_it_is_deleted() {
    let node = Node::new();
    let b1 = node.pod("b1", Ipv4Addr::new(10, 244, 49, 2));
    let client = node.pod("client", Ipv4Addr::new(10, 244, 49, 4));
    let _s = tcp_server(b1.ns(), 8080, Reply::Name("b1".into()));
    node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &[(b1.ip, true, true, false)]).as_bytes());
    // 256 slots, and no growth: one backend (101 slots) fits, three (307) do not.
    let mut agent = node.start_agent_with(&["--lb-table-slots", "256", "--lb-table-max-slots", "256"]);
    agent.wait_synced();
    agent.wait_attached(&b1.host_if, b1.host_ifindex);
    agent.wait_attached(&client.host_if, client.host_ifindex);
    assert_eq!(name_at(&client, VIP).expect("web"), "b1");

    let more = [(b1.ip, true, true, false), (Ipv4Addr::new(10, 244, 49, 5), true, true, false), (Ipv4Addr::new(10, 244, 49, 6), true, true, false)];
    node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &more).as_bytes());
    agent.wait_for_log("lb_table_full", 1);
    assert_eq!(name_at(&client, VIP).expect("the failed update left the service as it was"), "b1");

    let n = agent.log_text().matches("reconciled").count();
    node.remove_source("svc.yaml");
    agent.wait_for_log("reconciled", n + 1);
    assert!(name_at(&client, VIP).is_err(), "the deleted service's frontend is gone");
    let out = node.weir(&["service", "list"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&VIP.to_string()), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(backends_in_maps(&node, 0), 0);
}

#[test]
fn a_restart_releases_the_backends_of_services_deleted_while_no_agent_ran() {
    let node = Node::new();
    let ready = Ipv4Addr::new(10, 244, 49, 20);
    let not_ready = Ipv4Addr::new(10, 244, 49, 21);
    node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &[(ready, true, true, false), (not_ready, false, false, false)]).as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    assert_eq!(backends_in_maps(&node, 2), 2, "every endpoint has a backend, ready or not");

    agent.stop_with(libc::SIGTERM);
    node.remove_source("svc.yaml");
    agent.restart();
    agent.wait_for_log("initial sync", 2);
    assert_eq!(backends_in_maps(&node, 0), 0, "the not-ready endpoint's backend goes with its service");
}

#[test]
fn a_connection_to_a_terminating_endpoint_survives_an_agent_restart() {
    let node = Node::new();
    let b1 = node.pod("b1", Ipv4Addr::new(10, 244, 50, 2));
    let b2 = node.pod("b2", Ipv4Addr::new(10, 244, 50, 3));
    let client = node.pod("client", Ipv4Addr::new(10, 244, 50, 4));
    let _s1 = tcp_server(b1.ns(), 9000, Reply::NamePerLine("b1".into()));
    let _s2 = tcp_server(b2.ns(), 9000, Reply::NamePerLine("b2".into()));
    node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", 9000, &[(b2.ip, true, true, false)]).as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    for p in [&b1, &b2, &client] {
        agent.wait_attached(&p.host_if, p.host_ifindex);
    }
    let mut conn = weir_tests::traffic::tcp_connect(client.ns(), VIP, 80, T).expect("connect");
    assert_eq!(weir_tests::traffic::ask_name(&mut conn).expect("b2"), "b2");

    // b2 terminates (serving, not ready); b1 takes new connections.
    let n = agent.log_text().matches("reconciled").count();
    node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", 9000, &[(b1.ip, true, true, false), (b2.ip, false, true, true)]).as_bytes());
    agent.wait_for_log("reconciled", n + 1);
    assert_eq!(weir_tests::traffic::ask_name(&mut conn).expect("the connection to the terminating endpoint"), "b2");

    // A restart adopts the terminating endpoint's backend (no selection
    // table lists it) and the full sync gives it back to its service with
    // the same id: the kernel keeps following the connection.
    agent.stop_with(libc::SIGTERM);
    agent.restart();
    agent.wait_for_log("initial sync", 2);
    assert_eq!(weir_tests::traffic::ask_name(&mut conn).expect("the connection survives the restart"), "b2");
    assert_eq!(backends_in_maps(&node, 2), 2, "one backend per endpoint, none left over");
    let mut fresh = weir_tests::traffic::tcp_connect(client.ns(), VIP, 80, T).expect("a new connection");
    assert_eq!(weir_tests::traffic::ask_name(&mut fresh).expect("b1"), "b1", "new connections go to the ready endpoint");
}
