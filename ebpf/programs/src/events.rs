//! Datapath events into the `WEIR_EVENTS` ring buffer.

use aya_ebpf::programs::TcContext;
use weir_common::{addr::Addr, event::EVENT_POLICY_VERDICT, event::{VERDICT_ALLOW, VERDICT_DENY}};
use weir_logic::policy::Decision;

use crate::{conntrack::now_ns, maps::{scratch, EVENTS}, policy::Tuple};

/// Reports a policy verdict. `code`: direction in bits 0..8, the drop or
/// allow reason in bits 8..16. A full ring buffer loses the event (the
/// drop itself is still counted in `WEIR_DROPS`).
#[inline(never)]
pub fn policy_verdict(ctx: &TcContext, t: &Tuple, d: &Decision, endpoint: u32, code: u32) {
    let Some(s) = scratch() else { return };
    let e = &mut s.event;
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
    e.reason = code >> 8;
    // SAFETY: the context pointer is valid for the program's lifetime.
    e.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let _ = EVENTS.output::<weir_common::event::PolicyEvent>(&s.event, 0);
}
