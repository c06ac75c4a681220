//! The standalone demo: a node namespace with no route out, two pods wired
//! the way weir-cni wires them, weir-agent attaching its programs, real TCP
//! and UDP traffic between the pods, and the counters the datapath kept.
//! Everything it creates is removed when it exits.

use std::{net::Ipv4Addr, time::Duration};

use weir_tests::{
    traffic::{tcp_request, tcp_server, udp_exchange, udp_server, Reply},
    Node,
};

fn main() {
    let timeout = Duration::from_secs(3);
    println!("==> creating node namespace (no route out of the machine) and two pods");
    let node = Node::new();
    let a = node.pod("a", Ipv4Addr::new(10, 244, 0, 2));
    let b = node.pod("b", Ipv4Addr::new(10, 244, 0, 3));
    println!("    node netns {}  bpffs {}", node.ns().name(), node.bpffs().display());
    println!("    pod a {}  host veth {}", a.ip, a.host_if);
    println!("    pod b {}  host veth {}", b.ip, b.host_if);

    println!("==> starting weir-agent --source dir:{}", node.source_dir().display());
    let agent = node.start_agent();
    agent.wait_attached(&a.host_if, a.host_ifindex);
    agent.wait_attached(&b.host_if, b.host_ifindex);
    println!("    pod programs attached at tc ingress and egress of both host veths");

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

    println!("==> weir stats (read straight from the pinned map)");
    let out = node.weir(&["stats"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!("==> cleaning up (agent, namespaces, pins)");
    drop(agent);
}
