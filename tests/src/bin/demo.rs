//! The standalone demo: a node namespace with no route out, two pods wired
//! the way weir-cni wires them, weir-agent attaching its programs, real TCP
//! and UDP traffic between the pods, and the counters the datapath kept.
//! Everything it creates is removed when it exits.

use std::{net::Ipv4Addr, time::Duration};

use weir_datapath::{lb::dump::dump, PinLayout};
use weir_tests::{
    services::{ready, yaml_service},
    traffic::{tcp_name, tcp_request, tcp_server, udp_exchange, udp_server, Reply},
    Node,
};

fn main() {
    let timeout = Duration::from_secs(3);
    println!("==> creating node namespace (no route out of the machine) and two pods");
    let node = Node::new();
    let a = node.pod("a", Ipv4Addr::new(10, 244, 0, 2));
    let b = node.pod("b", Ipv4Addr::new(10, 244, 0, 3));
    let c = node.pod("c", Ipv4Addr::new(10, 244, 0, 4));
    println!("    node netns {}  bpffs {}", node.ns().name(), node.bpffs().display());
    println!("    pod a {}  host veth {}", a.ip, a.host_if);
    println!("    pod b {}  host veth {}", b.ip, b.host_if);
    println!("    pod c {}  host veth {}", c.ip, c.host_if);

    println!("==> starting weir-agent --source dir:{}", node.source_dir().display());
    let mut agent = node.start_agent();
    agent.wait_attached(&a.host_if, a.host_ifindex);
    agent.wait_attached(&b.host_if, b.host_ifindex);
    agent.wait_attached(&c.host_if, c.host_ifindex);
    println!("    pod programs attached at tc ingress and egress of every host veth");

    let _udp = udp_server(b.ns(), 5353, Reply::Echo);
    let _tcp = tcp_server(b.ns(), 8080, Reply::Name("pod-b".into()));

    println!("==> UDP: pod a sends 10 datagrams of 100 bytes to {}:5353, pod b echoes them", b.ip);
    match udp_exchange(a.ns(), b.ip, 5353, vec![0x55; 100], 10, timeout) {
        Ok(n) => println!("    {n}/10 answered"),
        Err(e) => println!("    UDP failed: {e}"),
    }
    println!("==> TCP: pod a sends 1 MB to {}:8080", b.ip);
    match tcp_request(a.ns(), b.ip, 8080, vec![0xaa; 1 << 20], timeout) {
        Ok(r) => println!("    pod b answered: {}", String::from_utf8_lossy(&r).trim()),
        Err(e) => println!("    TCP failed: {e}"),
    }

    let vip = Ipv4Addr::new(10, 96, 0, 10);
    println!("==> a Service + EndpointSlice (ClusterIP {vip}:80/tcp -> pods b and c on :8081) written to the agent's directory");
    let _web_b = tcp_server(b.ns(), 8081, Reply::Name("pod-b".into()));
    let _web_c = tcp_server(c.ns(), 8081, Reply::Name("pod-c".into()));
    let yaml = yaml_service("web", vip, 80, "TCP", 8081, &ready(&[b.ip, c.ip]));
    node.write_source("web.yaml", yaml.as_bytes());
    print!("{}", yaml.lines().map(|l| format!("    | {l}\n")).collect::<String>());
    let start = std::time::Instant::now();
    agent.wait_for_log("reconciled", 1);
    println!("    the agent programmed it {:?} after the file was written (50 ms of that is the save debounce)", start.elapsed());
    let (mut nb, mut nc, mut failed) = (0, 0, 0);
    for _ in 0..20 {
        match tcp_name(a.ns(), vip, 80, timeout).as_deref() {
            Ok("pod-b") => nb += 1,
            Ok("pod-c") => nc += 1,
            _ => failed += 1,
        }
    }
    println!("    20 connections from pod a: {nb} to pod-b, {nc} to pod-c, {failed} failed");
    if let Ok(d) = dump(&PinLayout::new(node.bpffs())) {
        println!("    the service maps now hold:");
        print!("{}", d.lines().map(|l| format!("    {l}\n")).collect::<String>());
    }

    println!("==> weir stats (read straight from the pinned maps)");
    let out = node.weir(&["stats"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!("==> cleaning up (agent, namespaces, pins)");
    drop(agent);
}
