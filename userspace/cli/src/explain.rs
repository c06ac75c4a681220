//! `weir explain [--from-device DEV | --from-host] [<src>[:port]] <dst>:<port>/<tcp|udp>`:
//! what the datapath will do with the first packet of that flow, and why,
//! computed by `weir_datapath::explain` with the kernel's own decision
//! code. By default the packet comes from a local pod; `--from-device`
//! takes it as arriving on a node device weir is attached to, and
//! `--from-host` as sent by one of the node's own processes.

use std::net::IpAddr;

use anyhow::{bail, Context as _};
use weir_datapath::{
    attach::Hook,
    ct::monotonic_ns,
    explain::{Entry, Maps, Packet, Why},
    PinLayout,
};

use weir_common::policy::{isolation_name_id, DIR_EGRESS, DIR_INGRESS, NAME_ENDPOINT, NAME_IDENTITY, NAME_ISOLATION, NAME_RULE};

use crate::output::{addr_port, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The packet arrives on this node device (an uplink in --devices, or
    /// the tunnel device), from outside the node.
    #[arg(long, value_name = "DEVICE", conflicts_with = "from_host")]
    from_device: Option<String>,
    /// The packet is sent by one of the node's own processes (kubelet,
    /// hostNetwork pods): the socket programs decide. The source may then
    /// be left out.
    #[arg(long)]
    from_host: bool,
    /// `[src] dst`: the source address with an optional port
    /// (10.244.0.2 or 10.244.0.2:40000), then the destination address,
    /// port and protocol (10.96.0.10:80/tcp).
    #[arg(required = true, num_args = 1..=2, value_name = "ADDR")]
    addrs: Vec<String>,
}

/// Parses `ip[:port]` (IPv6 as `[ip]:port`).
fn endpoint(s: &str, what: &str, port_required: bool) -> anyhow::Result<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        if port_required {
            bail!("{what} {s:?} needs a port, like {s}:80/tcp");
        }
        return Ok((ip, None));
    }
    let sa: std::net::SocketAddr = s.parse().with_context(|| format!("{what} {s:?} is not an address[:port]"))?;
    Ok((sa.ip(), Some(sa.port())))
}

pub fn parse(src: &str, dst: &str) -> anyhow::Result<Packet> {
    let (src_ip, sport) = endpoint(src, "source", false)?;
    let (dst_part, proto) = dst.rsplit_once('/').with_context(|| format!("destination {dst:?} needs a protocol, like {dst}/tcp"))?;
    let proto = match proto {
        "tcp" | "TCP" => 6,
        "udp" | "UDP" => 17,
        other => bail!("unknown protocol {other:?} (tcp or udp)"),
    };
    let (dst_ip, dport) = endpoint(dst_part, "destination", true)?;
    Ok(Packet { src: src_ip, sport: sport.unwrap_or(40000), dst: dst_ip, dport: dport.unwrap_or(0), proto })
}

/// The device must carry weir's ingress program (from_net or
/// from_tunnel): elsewhere the kernel's own stack decides alone.
fn attached_device(layout: &PinLayout, dev: &str) -> anyhow::Result<Entry> {
    let pins = layout.link_pins()?;
    if pins.iter().any(|l| l.ifname == dev && matches!(l.hook, Hook::FromNet | Hook::FromTunnel)) {
        return Ok(Entry::Device(dev.to_string()));
    }
    let mut attached: Vec<&str> = pins.iter().filter(|l| matches!(l.hook, Hook::FromNet | Hook::FromTunnel)).map(|l| l.ifname.as_str()).collect();
    attached.dedup();
    let list = if attached.is_empty() { "none".to_string() } else { attached.join(", ") };
    bail!("weir has no ingress program on device {dev:?}, so the kernel's stack alone decides there (devices weir is attached to: {list})")
}

pub fn run(layout: &PinLayout, args: &Args, format: Format) -> anyhow::Result<()> {
    let entry = match (&args.from_device, args.from_host) {
        (Some(dev), _) => attached_device(layout, dev)?,
        (None, true) => Entry::Host,
        (None, false) => Entry::Pod,
    };
    let maps = Maps::open(layout)?;
    let (src, dst) = match args.addrs.as_slice() {
        [src, dst] => (src.clone(), dst.clone()),
        [dst] if entry == Entry::Host => {
            // The node's address of the destination's family.
            let family_of = parse("0.0.0.0", dst)?.dst;
            let unspecified = if family_of.is_ipv4() { "0.0.0.0" } else { "::" };
            (maps.node_addr(family_of).map_or_else(|| unspecified.into(), |a| a.to_string()), dst.clone())
        }
        _ => bail!("give a source and a destination (only --from-host may leave out the source)"),
    };
    let p = parse(&src, &dst)?;
    let x = maps.explain(&p, &entry, monotonic_ns())?;
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&x)?);
        return Ok(());
    }
    println!("entry    {}", x.entry);
    println!("packet   {} -> {} {}", addr_port(p.src, p.sport), addr_port(p.dst, p.dport), weir_datapath::explain::proto_name(p.proto));
    if let Some(s) = &x.service {
        let entry = if s.entry == "external" { ", external entry (externalTrafficPolicy: Local)" } else { "" };
        println!("service  {} {} (id {}, endpoints: {}{entry}, {} eligible backends)", s.kind, s.frontend, s.service_id, s.endpoints, s.eligible_backends);
    }
    if let Some(b) = &x.backend {
        let why = match &b.why {
            Why::ExistingConntrack => "existing conntrack entry".to_string(),
            Why::Affinity => "ClientIP affinity".to_string(),
            Why::Maglev { hash, slot, table_len } => format!("maglev: flow hash {hash:#010x} % {table_len} = slot {slot}"),
            Why::Random { candidates } => format!("random: the kernel draws one of {candidates} backends per flow"),
        };
        println!("backend  {} (id {}) — {why}", addr_port(b.addr, b.port), b.backend_id);
    }
    if let Some((a, port)) = x.nat {
        println!("nat      destination -> {}", addr_port(a, port));
    }
    let tcp_udp_from_pod = entry == Entry::Pod && (p.proto == 6 || p.proto == 17);
    match x.egress_link {
        Some(l) if x.into_pod => println!("egress   straight into the pod behind link {l}, a pod of this node (its to_pod does not run), no FIB lookup"),
        Some(l) if tcp_udp_from_pod => println!("egress   the link of a pod of this node (ifindex {l}), no FIB lookup: through its to_pod, which learns the link's frame header; later packets go straight into the pod"),
        Some(l) => println!("egress   the link of a pod of this node (ifindex {l}), no FIB lookup"),
        None => {}
    }
    if let Some(m) = x.masquerade {
        let (lo, hi) = maps.masq_ports();
        println!("masq     source -> {m} (a port of {lo}-{hi})");
    }
    // Names the agent wrote (rules, endpoints, identities, isolating
    // policies); ids alone when there are none.
    let names = crate::policy::Names::load(layout).unwrap_or_default();
    let rule = |id: u32| names.get(NAME_RULE, id).map_or_else(|| format!("rule {id}"), |n| format!("rule {id} ({n})"));
    let peer = |id: u32| names.get(NAME_IDENTITY, id).map_or_else(|| format!("identity {id}"), |n| format!("{n} (identity {id})"));
    for s in &x.policy {
        let dir = if s.direction == "ingress" { DIR_INGRESS } else { DIR_EGRESS };
        let state = if s.from_node {
            "the node's own flow: always admitted".to_string()
        } else if !s.isolated {
            "not isolated".to_string()
        } else if s.allowed && s.rule == 0 {
            format!("allowed by default (peer {}, matched {})", peer(s.peer_identity), s.matched_identity)
        } else if s.allowed {
            format!("allowed by {} (peer {}, matched {})", rule(s.rule), peer(s.peer_identity), s.matched_identity)
        } else if s.rule != 0 {
            format!("DENIED by {} (peer {}, matched {})", rule(s.rule), peer(s.peer_identity), s.matched_identity)
        } else {
            let by = names.get(NAME_ISOLATION, isolation_name_id(s.endpoint_id, dir)).map_or_else(String::new, |n| format!("isolated by {n}; "));
            format!("DENIED ({by}no rule allows {})", peer(s.peer_identity))
        };
        let state = if s.flags & weir_common::policy::PV_AUDIT != 0 {
            let would = if s.flags & weir_common::policy::PV_AUDIT_DENY != 0 { "deny" } else { "allow" };
            format!("{state}; audit: rule {} would {would}", s.note_rule)
        } else if s.flags & weir_common::policy::PV_LOG != 0 {
            format!("{state}; logged by rule {}", s.note_rule)
        } else {
            state
        };
        let ep = names.get(NAME_ENDPOINT, s.endpoint_id).map_or_else(|| format!("endpoint {}", s.endpoint_id), str::to_string);
        println!("policy   {} of {} ({ep}): {state}", s.direction, s.endpoint);
    }
    println!("verdict  {}: {}", x.verdict, x.reason);
    Ok(())
}
