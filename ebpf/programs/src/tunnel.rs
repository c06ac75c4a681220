//! The VXLAN tunnel between nodes (`--routing vxlan`): the outer
//! destination of a packet for another node's pods, and the checks on
//! encapsulated traffic arriving (its outer source must be a node, its
//! inner source one of that node's pods or the node itself).

use aya_ebpf::{
    bindings::bpf_tunnel_key,
    helpers::generated::{bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use weir_common::{addr::Addr, tunnel::{TUNNEL_MACS, TUNNEL_VNI}};

use crate::maps::{NODES, TUNNEL};

/// The node holding the pod CIDR `addr` is in (a v4-mapped address).
#[inline(always)]
fn node_of(addr: &Addr) -> Option<Addr> {
    let k = Key::new(128, *addr);
    TUNNEL.get(&k).map(|e| e.node)
}

/// A zeroed tunnel key, written in place (a key returned by value is
/// copied out, and that copy of known zeroes becomes a `memset` call).
#[inline(always)]
fn zeroed_key(k: &mut core::mem::MaybeUninit<bpf_tunnel_key>) -> &mut bpf_tunnel_key {
    let w = k.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < core::mem::size_of::<bpf_tunnel_key>() / 4 {
        // SAFETY: in bounds of the 4-aligned struct; volatile keeps LLVM
        // from turning the loop into a memset call.
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte was written; zero is valid for its integers.
    unsafe { k.assume_init_mut() }
}

/// Sets the outer destination of a packet to the node holding `daddr`
/// (wire order) and the inner MACs; false when no node holds `daddr`.
#[inline(never)]
pub fn encapsulate(ctx: &TcContext, daddr: u32) -> bool {
    let Some(node) = node_of(&Addr::from_v4_raw(daddr)) else { return false };
    let mut slot = core::mem::MaybeUninit::uninit();
    let key = zeroed_key(&mut slot);
    key.tunnel_id = TUNNEL_VNI;
    key.tunnel_ttl = 64;
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(node.v4_raw());
    // SAFETY: valid skb and key pointers, the key's size.
    let rc = unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, key, core::mem::size_of::<bpf_tunnel_key>() as u32, 0) };
    rc == 0 && ctx.store(0, &TUNNEL_MACS, 0).is_ok()
}

/// Whether encapsulated traffic with inner source `saddr` (wire order)
/// may come in: the outer source is a node, and the inner source is that
/// node or one of its pods.
#[inline(never)]
pub fn from_peer(ctx: &TcContext, saddr: u32) -> bool {
    let mut slot = core::mem::MaybeUninit::uninit();
    let key = zeroed_key(&mut slot);
    // SAFETY: valid skb and key pointers, the key's size.
    let rc = unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, key, core::mem::size_of::<bpf_tunnel_key>() as u32, 0) };
    // SAFETY: the helper filled the IPv4 member (flags 0).
    let remote = Addr::from_v4_raw(unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be());
    if rc != 0 || key.tunnel_id != TUNNEL_VNI {
        return false;
    }
    // SAFETY: map value reference, read only.
    if unsafe { NODES.get(&remote) }.is_none() {
        return false;
    }
    let inner = Addr::from_v4_raw(saddr);
    inner == remote || node_of(&inner).is_some_and(|n| n == remote)
}
