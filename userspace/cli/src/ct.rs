//! `weir ct list [filters]` and `weir ct flush [filters]`.

use std::net::IpAddr;

use serde::Serialize;
use weir_common::ct::{CtEntry, CtKey, CT_POLICY, CT_SVC_FWD, CT_SVC_REV, CT_STATE_CLOSED, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_SYN, CT_STATE_UDP, CT_STATE_UDP_STREAM};
use weir_datapath::{
    ct::{monotonic_ns, Conntrack},
    explain::proto_name,
    PinLayout,
};

use crate::output::{addr_port, print_rows, AddrPort, Format};

/// Filters shared by list and flush; every given one must match.
#[derive(Debug, Default, clap::Args)]
pub struct Filter {
    #[command(flatten)]
    pub at: AddrPort,
    /// tcp or udp.
    #[arg(long)]
    pub proto: Option<String>,
    /// service-forward, service-reverse or policy.
    #[arg(long)]
    pub kind: Option<String>,
}

impl Filter {
    fn matches(&self, k: &CtKey) -> bool {
        self.at.matches(&[IpAddr::from(k.saddr), IpAddr::from(k.daddr)], &[u16::from_be(k.sport), u16::from_be(k.dport)])
            && self.proto.as_deref().is_none_or(|p| p.eq_ignore_ascii_case(proto_name(k.proto)))
            && self.kind.as_deref().is_none_or(|kind| kind == kind_name(k.kind))
    }

    fn is_empty(&self) -> bool {
        self.at.is_empty() && self.proto.is_none() && self.kind.is_none()
    }
}

fn kind_name(k: u8) -> &'static str {
    match k {
        CT_SVC_FWD => "service-forward",
        CT_SVC_REV => "service-reverse",
        CT_POLICY => "policy",
        _ => "unknown",
    }
}

fn state_name(s: u8) -> &'static str {
    match s {
        CT_STATE_SYN => "syn",
        CT_STATE_ESTABLISHED => "established",
        CT_STATE_CLOSING => "closing",
        CT_STATE_CLOSED => "closed",
        CT_STATE_UDP => "udp",
        CT_STATE_UDP_STREAM => "udp-stream",
        _ => "unknown",
    }
}

#[derive(Debug, Serialize)]
struct Row {
    kind: &'static str,
    protocol: &'static str,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    state: &'static str,
    /// Seconds until the entry goes stale (negative: stale, awaiting GC).
    expires_in_s: i64,
    /// Service entries: the translation (backend, or the service address on replies).
    nat: Option<String>,
    /// The backend (forward) or service (reverse) id the entry names is
    /// gone, with the address it stood for: the kernel treats the entry
    /// as no flow, and the collector removes it.
    id_gone: bool,
    service_id: Option<u32>,
    backend_id: Option<u32>,
}

fn row(k: &CtKey, e: &CtEntry, now: u64) -> Row {
    let service = k.kind != CT_POLICY;
    let id_gone = weir_logic::ct6::names_gone_id(k, e);
    Row {
        kind: kind_name(k.kind),
        protocol: proto_name(k.proto),
        src: IpAddr::from(k.saddr),
        sport: u16::from_be(k.sport),
        dst: IpAddr::from(k.daddr),
        dport: u16::from_be(k.dport),
        state: state_name(e.state),
        expires_in_s: weir_logic::ct::expires_in_s(e, now),
        nat: (service && !id_gone).then(|| addr_port(e.nat_addr, u16::from_be(e.nat_port))),
        id_gone,
        service_id: service.then_some(e.svc_id),
        backend_id: service.then_some(e.backend_id),
    }
}

pub fn list(layout: &PinLayout, filter: &Filter, format: Format) -> anyhow::Result<()> {
    let ct = Conntrack::open(layout)?;
    let now = monotonic_ns();
    let mut rows: Vec<Row> = ct.entries().iter().filter(|(k, _)| filter.matches(k)).map(|(k, e)| row(k, e, now)).collect();
    rows.sort_by_key(|r| (r.src, r.sport, r.dst, r.dport));
    print_rows(format, &rows, &["KIND", "PROTO", "SOURCE", "DESTINATION", "STATE", "EXPIRES", "NAT"], |r| {
        vec![
            r.kind.into(),
            r.protocol.into(),
            addr_port(r.src, r.sport),
            addr_port(r.dst, r.dport),
            r.state.into(),
            format!("{}s", r.expires_in_s),
            match (&r.nat, r.id_gone) {
                (_, true) if r.kind == kind_name(CT_SVC_FWD) => format!("backend {} gone", r.backend_id.unwrap_or(0)),
                (_, true) => format!("service {} gone", r.service_id.unwrap_or(0)),
                (Some(nat), false) => nat.clone(),
                (None, false) => "-".into(),
            },
        ]
    })
}

pub fn flush(layout: &PinLayout, filter: &Filter, all: bool, format: Format) -> anyhow::Result<()> {
    if filter.is_empty() && !all {
        anyhow::bail!("refusing to flush every conntrack entry without --all (established connections through services and policies would be judged again)");
    }
    let mut ct = Conntrack::open(layout)?;
    let n = ct.flush(|k, _| filter.matches(k));
    if format == Format::Json {
        println!("{}", serde_json::json!({ "flushed": n }));
    } else {
        println!("flushed {n} conntrack entries");
    }
    Ok(())
}
