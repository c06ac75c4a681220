//! Datapath events: policy verdicts to `WEIR_EVENTS` (the agent's
//! counts) and, while `weir monitor` holds its lease, every event kind to
//! `WEIR_MON_EVENTS`.

use aya_ebpf::programs::TcContext;
use weir_common::{
    addr::Addr,
    event::{DatapathEvent, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, VERDICT_ALLOW, VERDICT_DENY},
};
use weir_logic::policy::Decision;

use crate::{
    conntrack::now_ns,
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

/// Reports a policy verdict. `code`: direction in bits 0..8, the drop or
/// allow reason in bits 8..16, [`TO_AGENT`]. A full ring buffer loses the
/// event (a denial is still counted in `WEIR_DROPS`).
#[inline(never)]
pub fn policy_verdict(ctx: &TcContext, t: &Tuple, d: &Decision, endpoint: u32, code: u32) {
    let Some(s) = scratch() else { return };
    let e = &mut s.event;
    *e = DatapathEvent::default();
    e.ts_ns = now_ns();
    e.saddr = Addr::from_v4_raw(t.saddr);
    e.daddr = Addr::from_v4_raw(t.daddr);
    e.sport = t.sport;
    e.dport = t.dport;
    e.kind = EVENT_POLICY_VERDICT;
    e.proto = t.proto;
    e.direction = (code & 0xff) as u8;
    e.verdict = if d.allowed { VERDICT_ALLOW } else { VERDICT_DENY };
    e.endpoint = endpoint;
    e.peer_identity = d.peer_identity;
    e.rule = d.rule;
    e.reason = (code >> 8) & 0xff;
    e.ifindex = ifindex(ctx);
    if code & TO_AGENT != 0 {
        let _ = EVENTS.output::<DatapathEvent>(&s.event, 0);
    }
    if monitoring(s.event.ts_ns) {
        let _ = MON_EVENTS.output::<DatapathEvent>(&s.event, 0);
    }
}

/// The monitor's event for `pkt`, started in scratch space, or `None`
/// when no monitor watches.
#[inline(always)]
fn monitor_event(ctx: &TcContext, pkt: &Ipv4Pkt, kind: u8, verdict: u8) -> Option<&'static mut DatapathEvent> {
    let now = now_ns();
    if !monitoring(now) {
        return None;
    }
    let e = &mut scratch()?.event;
    *e = DatapathEvent::default();
    e.ts_ns = now;
    e.saddr = Addr::from_v4_raw(pkt.saddr);
    e.daddr = Addr::from_v4_raw(pkt.daddr);
    e.sport = pkt.sport;
    e.dport = pkt.dport;
    e.kind = kind;
    e.proto = pkt.proto;
    e.verdict = verdict;
    e.ifindex = ifindex(ctx);
    Some(e)
}

/// Reports a packet dropped or rejected for `reason` (monitor only; the
/// drop is counted in `WEIR_DROPS` either way).
#[inline(never)]
pub fn drop(ctx: &TcContext, pkt: &Ipv4Pkt, reason: u32) {
    let Some(e) = monitor_event(ctx, pkt, EVENT_DROP, VERDICT_DENY) else { return };
    e.reason = reason;
    let _ = MON_EVENTS.output::<DatapathEvent>(&*e, 0);
}

/// Reports a new service flow and its translation (monitor only).
#[inline(never)]
pub fn trace(ctx: &TcContext, pkt: &Ipv4Pkt, t: &Tuple) {
    let Some(e) = monitor_event(ctx, pkt, EVENT_TRACE, VERDICT_ALLOW) else { return };
    e.nat_addr = Addr::from_v4_raw(t.daddr);
    e.nat_port = t.dport;
    let _ = MON_EVENTS.output::<DatapathEvent>(&*e, 0);
}
