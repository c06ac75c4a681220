//! The VXLAN tunnel between nodes (`--routing vxlan`): the outer
//! destination of a packet for another node's pods, and the checks on
//! encapsulated traffic arriving (its outer source must be a node, its
//! inner source one of that node's pods or the node itself).
//!
//! Inner packets are IPv4 or IPv6. The outer address is the one the
//! agent wrote for the pod CIDR (`WEIR_TUNNEL`): the node's IPv4
//! InternalIP when it has one, for the CIDRs of both families, so IPv6
//! pod traffic crosses an IPv4 underlay with IPv4's overhead; a node with
//! only an IPv6 InternalIP is reached over IPv6. A node's addresses share
//! one id in `WEIR_NODES`, so a node's IPv6 address is a valid inner
//! source of its IPv4 tunnel (its own and its masqueraded traffic).

use aya_ebpf::{
    bindings::{bpf_tunnel_key, BPF_F_TUNINFO_IPV6},
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
/// (of either family) and the inner MACs; false when no node holds
/// `daddr`.
#[inline(never)]
pub fn encapsulate(ctx: &TcContext, daddr: &Addr) -> bool {
    let Some(node) = node_of(daddr) else { return false };
    let mut slot = core::mem::MaybeUninit::uninit();
    let key = zeroed_key(&mut slot);
    key.tunnel_id = TUNNEL_VNI;
    key.tunnel_ttl = 64;
    let flags = if node.is_v4() {
        key.__bindgen_anon_1.remote_ipv4 = u32::from_be(node.v4_raw());
        0
    } else {
        // The helper copies the IPv6 address as it is: wire order.
        key.__bindgen_anon_1.remote_ipv6 = node.words();
        BPF_F_TUNINFO_IPV6 as u64
    };
    // SAFETY: valid skb and key pointers, the key's size.
    let rc = unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, key, core::mem::size_of::<bpf_tunnel_key>() as u32, flags) };
    rc == 0 && ctx.store(0, &TUNNEL_MACS, 0).is_ok()
}

/// Whether encapsulated traffic with inner source `inner` (of either
/// family) may come in: the outer source is a node, and the inner source
/// is one of that node's addresses or pods.
#[inline(never)]
pub fn from_peer(ctx: &TcContext, inner: &Addr) -> bool {
    let mut slot = core::mem::MaybeUninit::uninit();
    let key = zeroed_key(&mut slot);
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: valid skb and key pointers, the key's size.
    let remote = if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, key, size, 0) } == 0 {
        // SAFETY: the helper filled the IPv4 member (flags 0).
        Addr::from_v4_raw(unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be())
    // SAFETY: as above; an IPv6 outer header needs the flag.
    } else if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, key, size, BPF_F_TUNINFO_IPV6 as u64) } == 0 {
        // SAFETY: the helper filled the IPv6 member (wire order).
        Addr::from_words(unsafe { key.__bindgen_anon_1.remote_ipv6 })
    } else {
        return false;
    };
    if key.tunnel_id != TUNNEL_VNI {
        return false;
    }
    // SAFETY: map value references, read only.
    let Some(id) = (unsafe { NODES.get(&remote) }).copied() else { return false };
    // SAFETY: as above.
    *inner == remote || unsafe { NODES.get(inner) }.is_some_and(|n| *n == id) || node_of(inner).is_some_and(|n| n == remote)
}
