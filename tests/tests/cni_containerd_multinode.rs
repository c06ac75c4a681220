//! weir-cni under a real containerd on two nodes of the multi-node
//! harness, in both routing modes: each node has its own containerd, its
//! own CNI configuration (written by `weir-agent --install-cni` for the
//! node's pod CIDR, with the pod MTU it derives) and its own agent;
//! containers on different nodes reach each other and a ClusterIP whose
//! backend is on the other node.

use std::{net::Ipv4Addr, time::Duration};

use weir_tests::{
    cluster::Cluster,
    cmd,
    containerd::{global_cni_lock, Containerd, NodeMounts, CNI_BIN_DIR},
    services::{ready, yaml_service},
};

const T: Duration = Duration::from_secs(20);

/// Installs weir-cni for node `i` (plugin into the shared plugin
/// directory, conflist into the node's own), from inside the node's
/// network namespace so the MTU comes from its uplink (named: the node
/// namespaces have no default route).
fn install(c: &Cluster, i: usize, mounts: &NodeMounts, mode: &str) {
    let agent = weir_tests::bins::path("weir-agent").display().to_string();
    let net = format!("--net={}", c.nodes[i].node.ns().path().display());
    let conf = mounts.conf_dir().display().to_string();
    let cidr = c.nodes[i].pod_cidr();
    cmd::run(&["nsenter", &net, &agent, "--install-cni", "--pod-cidr", &cidr, "--routing", mode, "--devices", "eth0", "--cni-bin-dir", CNI_BIN_DIR, "--cni-conf-dir", &conf]);
}

struct Uninstall(String);

impl Drop for Uninstall {
    fn drop(&mut self) {
        let agent = weir_tests::bins::path("weir-agent").display().to_string();
        cmd::run_quiet(&[&agent, "--uninstall-cni", "--cni-bin-dir", CNI_BIN_DIR, "--cni-conf-dir", &self.0]);
    }
}

fn containers_on_two_nodes_reach_each_other_and_a_clusterip_across_nodes(mode: &str) {
    let _lock = global_cni_lock();
    let mut c = Cluster::new(2, &["--routing", mode]);
    let mounts = [NodeMounts::new(), NodeMounts::new()];
    for (i, m) in mounts.iter().enumerate() {
        install(&c, i, m, mode);
    }
    let _uninstall = Uninstall(mounts[0].conf_dir().display().to_string());
    let ctrd = [Containerd::start_in(&c.nodes[0].node, &mounts[0]), Containerd::start_in(&c.nodes[1].node, &mounts[1])];

    let server = ctrd[1].spawn("srv", "while true; do echo hello-from-srv | nc -l -p 8080; done");
    let rec = mounts[1].wait_record(&server);
    let srv_ip: Ipv4Addr = rec["ips"][0].as_str().expect("ip").parse().expect("ip");
    assert!(c.nodes[1].pod_cidr().starts_with(&format!("{}.{}.{}.", srv_ip.octets()[0], srv_ip.octets()[1], srv_ip.octets()[2])), "node 1's container has an address of node 1's pod CIDR: {srv_ip}");
    let host = rec["hostVeth"].as_str().expect("host veth").to_string();
    let ifindex = c.nodes[1].node.ns().ifindex(&host);
    c.nodes[1].agent().wait_attached(&host, ifindex);

    let want_mtu = if mode == "vxlan" { 1450 } else { 1500 };
    let (ok, out) = ctrd[0].run_to_end("cli1", &format!("ip link show eth0; nc -w 3 {srv_ip} 8080 </dev/null"), T);
    assert!(ok && out.contains("hello-from-srv"), "a container on node 0 reaches one on node 1:\n{out}");
    assert!(out.contains(&format!("mtu {want_mtu}")), "the pod MTU weir-agent derived for {mode}:\n{out}");

    let vip = Ipv4Addr::new(10, 96, 40, 20);
    c.write("srv.yaml", &yaml_service("srv", vip, 80, "TCP", 8080, &ready(&[srv_ip])));
    c.wait_for("node 0 programs the service", || String::from_utf8_lossy(&c.nodes[0].node.weir(&["backend", "list"]).stdout).contains(&srv_ip.to_string()));
    let (ok, out) = ctrd[0].run_to_end("cli2", &format!("nc -w 3 {vip} 80 </dev/null"), T);
    assert!(ok && out.contains("hello-from-srv"), "a container on node 0 reaches a ClusterIP served on node 1:\n{out}");
    server.stop();
}

weir_tests::both_routing_modes!(containers_on_two_nodes_reach_each_other_and_a_clusterip_across_nodes);
