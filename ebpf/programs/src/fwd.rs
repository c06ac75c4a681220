//! Forwarding after NAT: a FIB lookup and a redirect straight to the
//! egress of the destination's interface, skipping the node's IP stack
//! (routing, netfilter, rp_filter). The destination veth's tc egress
//! program still runs, so the pod's ingress policy sees the packet. When
//! the lookup cannot answer, the packet goes up the stack as usual.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::hdr::Ipv4Pkt;

const AF_INET: u8 = 2;

#[inline(never)]
pub fn redirect_v4(ctx: &TcContext, pkt: &Ipv4Pkt) -> i32 {
    // SAFETY: zeroed is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    p.__bindgen_anon_1.tot_len = pkt.tot_len;
    // SAFETY: the context pointer is valid for the program's lifetime.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    p.__bindgen_anon_3.ipv4_src = pkt.saddr;
    p.__bindgen_anon_4.ipv4_dst = pkt.daddr;
    // SAFETY: valid skb and params pointers, correct size.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if ctx.store(0, &p.dmac, 0).is_err() || ctx.store(6, &p.smac, 0).is_err() {
            return TC_ACT_OK as i32;
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(p.ifindex, 0) } as i32;
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // SAFETY: plain helper call; no neighbour params.
        return unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    TC_ACT_OK as i32
}
