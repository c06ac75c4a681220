//! `weir monitor`: datapath events as they happen, as lines for people or
//! JSON lines. It reads its own ring buffer (`WEIR_MON_EVENTS`), which the
//! kernel fills only while this command renews its lease, so it works
//! with or without the agent and never takes events from it.

use std::{
    net::IpAddr,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, RingBuf};
use serde::Serialize;
use weir_common::{
    drop::DropReason,
    event::{DatapathEvent, ALLOW_HOST, ALLOW_RULE, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, VERDICT_DENY},
    maps::{MON_EVENTS, MON_LEASE},
    policy::{isolation_name_id, DIR_INGRESS, NAME_ENDPOINT, NAME_IDENTITY, NAME_ISOLATION, NAME_RULE},
};
use weir_datapath::{ct::monotonic_ns, explain::proto_name, pinned, PinLayout};

use crate::{output::{addr_port, AddrPort, Format}, policy::{Names, Report}};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Packets dropped or rejected, policy denials included.
    Drop,
    /// Policy verdicts on new flows (allows and denials).
    Verdict,
    /// New service flows and their translation.
    Trace,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Event types to show (repeatable); all when omitted.
    #[arg(long = "type", value_enum)]
    pub types: Vec<Kind>,
    #[command(flatten)]
    pub at: AddrPort,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Line {
    ts_ns: u64,
    kind: &'static str,
    protocol: &'static str,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    translated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_identity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    /// A denial no rule made: the policies isolating the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    isolated_by: Option<String>,
    /// A Log rule matched: its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    logged_by: Option<String>,
    /// An audit-mode policy would decide otherwise: "allow by <rule>" / "deny by <rule>".
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<String>,
    ifindex: u32,
}

fn drop_reason(r: u32) -> &'static str {
    DropReason::ALL.into_iter().find(|d| *d as u32 == r).map_or("unknown", DropReason::as_str)
}

fn line(e: &DatapathEvent, names: &Names) -> Option<Line> {
    let mut l = Line {
        ts_ns: e.ts_ns,
        kind: "",
        protocol: proto_name(e.proto),
        src: IpAddr::from(e.saddr),
        sport: u16::from_be(e.sport),
        dst: IpAddr::from(e.daddr),
        dport: u16::from_be(e.dport),
        translated: None,
        verdict: None,
        direction: None,
        reason: String::new(),
        endpoint: None,
        peer_identity: None,
        peer: None,
        rule: None,
        isolated_by: None,
        logged_by: None,
        audit: None,
        ifindex: e.ifindex,
    };
    match e.kind {
        EVENT_POLICY_VERDICT => {
            l.kind = "verdict";
            let deny = e.verdict == VERDICT_DENY;
            l.verdict = Some(if deny { "deny" } else { "allow" });
            l.direction = Some(if e.direction == DIR_INGRESS { "ingress" } else { "egress" });
            l.reason = if deny {
                drop_reason(e.reason).to_string()
            } else {
                match e.reason as u8 {
                    ALLOW_RULE => "rule".into(),
                    ALLOW_HOST => "host".into(),
                    _ => "not_isolated".into(),
                }
            };
            l.endpoint = Some(names.get(NAME_ENDPOINT, e.endpoint).map_or_else(|| format!("endpoint {}", e.endpoint), str::to_string));
            l.peer_identity = Some(e.peer_identity);
            l.peer = names.get(NAME_IDENTITY, e.peer_identity).map(str::to_string);
            let rule_name = |id: u32| names.get(NAME_RULE, id).map_or_else(|| format!("rule {id}"), str::to_string);
            l.rule = (e.rule != 0).then(|| rule_name(e.rule));
            if deny && e.rule == 0 {
                l.isolated_by = names.get(NAME_ISOLATION, isolation_name_id(e.endpoint, e.direction)).map(str::to_string);
            }
            match Report::of(u32::from(e.flags), e.note_rule, names) {
                Some(Report::Audit(what)) => l.audit = Some(what),
                Some(Report::Log(rule)) => l.logged_by = Some(rule),
                None => {}
            }
        }
        EVENT_DROP => {
            l.kind = "drop";
            l.verdict = Some("deny");
            l.reason = drop_reason(e.reason).to_string();
        }
        EVENT_TRACE => {
            l.kind = "trace";
            l.translated = Some(addr_port(e.nat_addr, u16::from_be(e.nat_port)));
            l.reason = "new service flow".into();
        }
        _ => return None,
    }
    Some(l)
}

fn wanted(l: &Line, a: &Args) -> bool {
    let kind_ok = a.types.is_empty()
        || a.types.iter().any(|k| match k {
            Kind::Drop => l.kind == "drop" || l.verdict == Some("deny"),
            Kind::Verdict => l.kind == "verdict",
            Kind::Trace => l.kind == "trace",
        });
    let translated: Option<std::net::SocketAddr> = l.translated.as_deref().and_then(|t| t.parse().ok());
    let mut addrs = vec![l.src, l.dst];
    let mut ports = vec![l.sport, l.dport];
    if let Some(t) = translated {
        addrs.push(t.ip());
        ports.push(t.port());
    }
    kind_ok && a.at.matches(&addrs, &ports)
}

fn print(l: &Line, format: Format) {
    if format == Format::Json {
        if let Ok(s) = serde_json::to_string(l) {
            println!("{s}");
        }
        return;
    }
    let mut s = format!("{:>14.6} {:<7} {} {} -> {}", l.ts_ns as f64 / 1e9, l.kind.to_uppercase(), l.protocol, addr_port(l.src, l.sport), addr_port(l.dst, l.dport));
    if let Some(t) = &l.translated {
        s.push_str(&format!(" => {t}"));
    }
    if let Some(v) = l.verdict {
        s.push_str(&format!(" {v}"));
    }
    if let Some(d) = l.direction {
        s.push_str(&format!(" {d}"));
    }
    s.push_str(&format!(" ({})", l.reason));
    if let Some(ep) = &l.endpoint {
        s.push_str(&format!(" endpoint {ep}"));
    }
    if let Some(id) = l.peer_identity {
        s.push_str(&format!(" peer {}", l.peer.clone().unwrap_or_else(|| format!("identity {id}"))));
    }
    if let Some(r) = &l.rule {
        s.push_str(&format!(" by {r}"));
    }
    if let Some(p) = &l.isolated_by {
        s.push_str(&format!(" (isolated by {p}; no rule allows it)"));
    }
    if let Some(r) = &l.logged_by {
        s.push_str(&format!(" [logged by {r}]"));
    }
    if let Some(a) = &l.audit {
        s.push_str(&format!(" [audit: would {a}]"));
    }
    println!("{s}");
}

/// How long a lease lasts; renewed twice as often.
const LEASE: Duration = Duration::from_secs(3);

pub fn run(layout: &PinLayout, args: &Args, format: Format) -> anyhow::Result<()> {
    let mut lease: Array<MapData, u64> = pinned::array(layout, MON_LEASE)?;
    let mut ring: RingBuf<MapData> = pinned::typed(layout, MON_EVENTS)?;
    let names = Names::load(layout)?;
    let start = Instant::now();
    let mut renewed = Instant::now() - LEASE;
    let mut shown = 0u64;
    let done = |shown: u64| args.count.is_some_and(|c| shown >= c) || args.duration.is_some_and(|d| start.elapsed().as_secs_f64() >= d);
    while !done(shown) {
        if renewed.elapsed() >= LEASE / 2 {
            lease.set(0, monotonic_ns() + LEASE.as_nanos() as u64, 0)?;
            renewed = Instant::now();
        }
        let mut pfd = libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd on the ring buffer's fd, owned by this frame.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        while let Some(item) = ring.next() {
            let bytes: &[u8] = &item;
            if bytes.len() < std::mem::size_of::<DatapathEvent>() {
                continue;
            }
            // SAFETY: a whole DatapathEvent record (plain data), read unaligned.
            let e: DatapathEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            if let Some(l) = line(&e, &names).filter(|l| wanted(l, args)) {
                print(&l, format);
                shown += 1;
                if done(shown) {
                    break;
                }
            }
        }
    }
    // Stop the kernel writing for no one (it would stop by itself when
    // the lease runs out).
    let _ = lease.set(0, 0, 0);
    Ok(())
}
