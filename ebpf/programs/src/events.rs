//! Datapath events: policy verdicts to `WEIR_EVENTS` (the agent's
//! counts) and, while `weir monitor` holds its lease, every event kind to
//! `WEIR_MON_EVENTS`.

use aya_ebpf::programs::TcContext;
use weir_common::{
    drop::DropReason,
    event::{DatapathEvent, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, VERDICT_ALLOW, VERDICT_DENY},
};
use weir_logic::policy::Decision;

use crate::{
    conntrack::{now_ns, precise_ns},
    hdr::Ipv4Pkt,
    maps::{scratch, EVENTS, MON_EVENTS, MON_LEASE},
    policy::Tuple,
};

/// Whether a monitor is watching (its lease has not run out).
#[inline(always)]
pub fn monitoring(now: u64) -> bool {
    MON_LEASE.get(0).is_some_and(|until| *until > now)
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// In a verdict's `code`: also write it to the agent's ring buffer.
pub const TO_AGENT: u32 = 1 << 16;

/// Starts an event for the flow `t` in scratch space (every field the
/// kinds share, the timestamp to the nanosecond); the caller fills in
/// the rest.
#[inline(always)]
fn start(ctx: &TcContext, t: &Tuple, kind: u8, verdict: u8) -> Option<&'static mut DatapathEvent> {
    let e = &mut scratch()?.event;
    *e = DatapathEvent::default();
    e.ts_ns = precise_ns();
    e.saddr = t.saddr;
    e.daddr = t.daddr;
    e.sport = t.sport;
    e.dport = t.dport;
    e.kind = kind;
    e.proto = t.proto;
    e.verdict = verdict;
    e.ifindex = ifindex(ctx);
    Some(e)
}

/// Reports a policy verdict. `code`: direction in bits 0..8, the drop or
/// allow reason in bits 8..16, [`TO_AGENT`]. A full ring buffer loses the
/// event (a denial is still counted in `WEIR_DROPS`).
#[inline(never)]
pub fn policy_verdict(ctx: &TcContext, t: &Tuple, d: &Decision, endpoint: u32, code: u32) {
    let now = now_ns();
    let verdict = if d.allowed { VERDICT_ALLOW } else { VERDICT_DENY };
    let Some(e) = start(ctx, t, EVENT_POLICY_VERDICT, verdict) else { return };
    e.direction = (code & 0xff) as u8;
    e.endpoint = endpoint;
    e.peer_identity = d.peer_identity;
    e.rule = d.rule;
    e.flags = d.flags as u16;
    e.note_rule = d.note_rule;
    e.reason = (code >> 8) & 0xff;
    if code & TO_AGENT != 0 {
        let _ = EVENTS.output::<DatapathEvent>(&*e, 0);
    }
    if monitoring(now) {
        let _ = MON_EVENTS.output::<DatapathEvent>(&*e, 0);
    }
}

/// The monitor's event for `pkt`, or `None` when no monitor watches.
#[inline(always)]
fn monitor_event(ctx: &TcContext, pkt: &Ipv4Pkt, kind: u8, verdict: u8) -> Option<&'static mut DatapathEvent> {
    let now = now_ns();
    if !monitoring(now) {
        return None;
    }
    start(ctx, &Tuple::of(pkt), kind, verdict)
}

/// Reports a packet dropped or rejected for `reason` (monitor only; the
/// drop is counted in `WEIR_DROPS` either way).
#[inline(never)]
pub fn drop(ctx: &TcContext, pkt: &Ipv4Pkt, reason: u32) {
    let Some(e) = monitor_event(ctx, pkt, EVENT_DROP, VERDICT_DENY) else { return };
    e.reason = reason;
    let _ = MON_EVENTS.output::<DatapathEvent>(&*e, 0);
}

/// Counts and reports a packet of the flow `t` (either family) dropped
/// for `reason`; returns the verdict.
#[inline(never)]
pub fn dropped_flow(ctx: &TcContext, t: &Tuple, reason: DropReason) -> i32 {
    crate::errors::drop_reason(reason);
    report_drop(ctx, t, reason as u32);
    aya_ebpf::bindings::TC_ACT_SHOT as i32
}

/// Reports a packet of the flow `t` (either family) dropped or rejected
/// for `reason` (monitor only; the caller counts it).
#[inline(always)]
pub fn report_drop(ctx: &TcContext, t: &Tuple, reason: u32) {
    if monitoring(now_ns()) {
        if let Some(e) = start(ctx, t, EVENT_DROP, VERDICT_DENY) {
            e.reason = reason;
            let _ = MON_EVENTS.output::<DatapathEvent>(&*e, 0);
        }
    }
}

/// Counts and reports a packet dropped for `reason`; returns the verdict.
#[inline(never)]
pub fn dropped(ctx: &TcContext, pkt: &Ipv4Pkt, reason: DropReason) -> i32 {
    crate::errors::drop_reason(reason);
    drop(ctx, pkt, reason as u32);
    aya_ebpf::bindings::TC_ACT_SHOT as i32
}

/// Counts and reports a frame that is not a readable IPv4 packet dropped
/// for `reason` (with its IPv6 addresses, if it has them); returns the
/// verdict.
#[inline(never)]
pub fn dropped_frame(ctx: &TcContext, reason: DropReason) -> i32 {
    crate::errors::drop_reason(reason);
    let now = now_ns();
    if monitoring(now) {
        if let Some(s) = scratch() {
            let e = &mut s.event;
            *e = DatapathEvent::default();
            e.ts_ns = precise_ns();
            if let Ok(eth) = ctx.load::<u16>(12) {
                if u16::from_be(eth) == crate::hdr::ETH_P_IPV6 {
                    let (s, d) = crate::hdr::v6_addrs(ctx);
                    e.saddr = s;
                    e.daddr = d;
                }
            }
            e.kind = EVENT_DROP;
            e.verdict = VERDICT_DENY;
            e.ifindex = ifindex(ctx);
            e.reason = reason as u32;
            let _ = MON_EVENTS.output::<DatapathEvent>(&*e, 0);
        }
    }
    aya_ebpf::bindings::TC_ACT_SHOT as i32
}

/// Reports a new service flow and its translation, the backend
/// `lb::forward` chose (monitor only).
#[inline(never)]
pub fn trace(ctx: &TcContext, pkt: &Ipv4Pkt) {
    let Some(e) = monitor_event(ctx, pkt, EVENT_TRACE, VERDICT_ALLOW) else { return };
    trace_done(e);
}

/// [`trace`] for the flow `t` of either family.
#[inline(never)]
pub fn trace_flow(ctx: &TcContext, t: &Tuple) {
    if !monitoring(now_ns()) {
        return;
    }
    let Some(e) = start(ctx, t, EVENT_TRACE, VERDICT_ALLOW) else { return };
    trace_done(e);
}

/// Adds the translation `lb::forward` chose to a trace event and sends it.
#[inline(always)]
fn trace_done(e: &mut DatapathEvent) {
    let Some(s) = scratch() else { return };
    e.nat_addr = s.fwd.nat_addr;
    e.nat_port = s.fwd.nat_port;
    let _ = MON_EVENTS.output::<DatapathEvent>(&*e, 0);
}
