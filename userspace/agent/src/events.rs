//! Reads the datapath's ring buffer of events and counts them in
//! /metrics. Denials, Log-rule matches and audited verdicts are always in
//! it; other allows when `--policy-allow-events` samples them. Log and
//! audit reports are also logged (info), naming the policy and the rule.

use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use prometheus_client::encoding::EncodeLabelSet;
use tokio::io::unix::AsyncFd;
use weir_common::{
    drop::DropReason,
    event::{DatapathEvent, EVENT_POLICY_VERDICT, VERDICT_DENY},
    maps::EVENTS,
    policy::{NameKey, RuleName, DIR_INGRESS, NAME_RULE, PV_AUDIT, PV_AUDIT_DENY, PV_LOG},
};
use weir_datapath::PinLayout;

use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub direction: String,
    pub verdict: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    pub direction: String,
    /// "log" or "audit".
    pub kind: String,
    /// Audit: what the audited policy would do ("allow" or "deny"); log: the verdict.
    pub would: String,
    /// The Log or audited rule, by name (`wcnp policy ingress[0] name`).
    pub rule: String,
}

/// The Log / audit report an event carries, if any.
pub fn report(e: &DatapathEvent, rule_name: impl Fn(u32) -> String) -> Option<ReportLabels> {
    let flags = u32::from(e.flags);
    let direction = if e.direction == DIR_INGRESS { "ingress" } else { "egress" };
    let (kind, would) = if flags & PV_AUDIT != 0 {
        ("audit", if flags & PV_AUDIT_DENY != 0 { "deny" } else { "allow" })
    } else if flags & PV_LOG != 0 {
        ("log", if e.verdict == VERDICT_DENY { "deny" } else { "allow" })
    } else {
        return None;
    };
    let rule = if e.note_rule == 0 { "default".to_string() } else { rule_name(e.note_rule) };
    Some(ReportLabels { direction: direction.into(), kind: kind.into(), would: would.into(), rule })
}

/// Decodes one record; `None` for what is not a whole policy event.
pub fn decode(bytes: &[u8]) -> Option<DatapathEvent> {
    if bytes.len() < std::mem::size_of::<DatapathEvent>() {
        return None;
    }
    // SAFETY: the record holds at least one DatapathEvent, a plain-data
    // repr(C) type; read_unaligned copes with any alignment.
    let e: DatapathEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    (e.kind == EVENT_POLICY_VERDICT).then_some(e)
}

pub fn labels(e: &DatapathEvent) -> VerdictLabels {
    let direction = if e.direction == DIR_INGRESS { "ingress" } else { "egress" };
    let (verdict, reason) = if e.verdict == VERDICT_DENY {
        let r = DropReason::ALL.into_iter().find(|r| *r as u32 == e.reason).map_or("unknown", DropReason::as_str);
        ("deny", r)
    } else {
        let r = match e.reason as u8 {
            weir_common::event::ALLOW_RULE => "rule",
            weir_common::event::ALLOW_HOST => "host",
            _ => "not_isolated",
        };
        ("allow", r)
    };
    VerdictLabels { direction: direction.into(), verdict: verdict.into(), reason: reason.into() }
}

/// Spawns the reader. It runs until the process exits.
pub fn spawn(layout: &PinLayout, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let map = weir_datapath::pinned::open(layout, EVENTS).context("opening the event ring buffer")?;
    let ring: RingBuf<MapData> = RingBuf::try_from(map).context("WEIR_EVENTS is not a ring buffer")?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns
    // the RingBuf, and always returns that same fd.
    let names: Option<aya::maps::HashMap<MapData, NameKey, RuleName>> = weir_datapath::pinned::hash(layout, weir_common::maps::NAMES).ok();
    let rule_name = move |id: u32| {
        names
            .as_ref()
            .and_then(|m| m.get(&NameKey { kind: NAME_RULE, id }, 0).ok())
            .map_or_else(|| format!("rule {id}"), |n| n.as_str().to_string())
    };
    let mut afd = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1).context("registering the event ring buffer with tokio")?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = afd.readable_mut().await else {
                tracing::error!("event ring buffer: readiness failed; events are no longer counted");
                return;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                let bytes: &[u8] = &item;
                if let Some(e) = decode(bytes) {
                    let l = labels(&e);
                    if e.verdict == VERDICT_DENY {
                        tracing::debug!(
                            src = %e.saddr, dst = %e.daddr, sport = u16::from_be(e.sport), dport = u16::from_be(e.dport),
                            proto = e.proto, direction = %l.direction, endpoint = e.endpoint, peer_identity = e.peer_identity,
                            "policy denied a flow"
                        );
                    }
                    metrics.policy_verdicts.get_or_create(&l).inc();
                    if let Some(r) = report(&e, &rule_name) {
                        tracing::info!(
                            src = %e.saddr, dst = %e.daddr, sport = u16::from_be(e.sport), dport = u16::from_be(e.dport),
                            proto = e.proto, direction = %r.direction, verdict = %l.verdict, would = %r.would, rule = %r.rule,
                            "policy {}", r.kind
                        );
                        metrics.policy_reports.get_or_create(&r).inc();
                    }
                }
            }
            guard.clear_ready();
        }
    });
    Ok(())
}
