//! `weir explain <src>[:port] <dst>:<port>/<tcp|udp>`: what the datapath
//! will do with the first packet of that flow, and why, computed by
//! `weir_datapath::explain` with the kernel's own decision code.

use std::net::IpAddr;

use anyhow::{bail, Context as _};
use weir_datapath::{
    ct::monotonic_ns,
    explain::{Maps, Packet, Why},
    PinLayout,
};

use crate::output::Format;

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

pub fn run(layout: &PinLayout, src: &str, dst: &str, format: Format) -> anyhow::Result<()> {
    let p = parse(src, dst)?;
    let maps = Maps::open(layout)?;
    let x = maps.explain(&p, monotonic_ns())?;
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&x)?);
        return Ok(());
    }
    println!("packet   {}:{} -> {}:{} {}", p.src, p.sport, p.dst, p.dport, weir_datapath::explain::proto_name(p.proto));
    if let Some(s) = &x.service {
        println!("service  {} (id {}, {} eligible backends)", s.frontend, s.service_id, s.eligible_backends);
    }
    if let Some(b) = &x.backend {
        let why = match &b.why {
            Why::ExistingConntrack => "existing conntrack entry".to_string(),
            Why::Affinity => "ClientIP affinity".to_string(),
            Why::Maglev { hash, slot, table_len } => format!("maglev: flow hash {hash:#010x} % {table_len} = slot {slot}"),
            Why::Random { candidates } => format!("random: the kernel draws one of {candidates} backends per flow"),
        };
        println!("backend  {}:{} (id {}) — {why}", b.addr, b.port, b.backend_id);
    }
    if let Some((a, port)) = x.nat {
        println!("nat      destination -> {a}:{port}");
    }
    for s in &x.policy {
        let state = if !s.isolated {
            "not isolated".to_string()
        } else if s.allowed && s.rule == 0 {
            format!("allowed by default (peer identity {}, matched {})", s.peer_identity, s.matched_identity)
        } else if s.allowed {
            format!("allowed by rule {} (peer identity {}, matched {})", s.rule, s.peer_identity, s.matched_identity)
        } else if s.rule != 0 {
            format!("DENIED by rule {} (peer identity {}, matched {})", s.rule, s.peer_identity, s.matched_identity)
        } else {
            format!("DENIED (peer identity {})", s.peer_identity)
        };
        let state = if s.flags & weir_common::policy::PV_AUDIT != 0 {
            let would = if s.flags & weir_common::policy::PV_AUDIT_DENY != 0 { "deny" } else { "allow" };
            format!("{state}; audit: rule {} would {would}", s.note_rule)
        } else if s.flags & weir_common::policy::PV_LOG != 0 {
            format!("{state}; logged by rule {}", s.note_rule)
        } else {
            state
        };
        println!("policy   {} of {} (endpoint {}): {state}", s.direction, s.endpoint, s.endpoint_id);
    }
    println!("verdict  {}: {}", x.verdict, x.reason);
    Ok(())
}
