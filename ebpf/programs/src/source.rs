//! Source validation and what a pod link may carry. A pod may only send
//! from the addresses the node routes to its link (`WEIR_LINKS`, filled by
//! the agent from the node's host routes), of either family; IPv6 from a
//! pod may also come from link-local scope (`pod_v6`,
//! `weir_logic::ipv6::link_scope_source`).

use weir_common::{addr::Addr, link::LinkInfo};

use crate::maps::{ENDPOINTS, LINKS, POD_ADDRS};

#[inline(always)]
fn link(ifindex: u32) -> Option<&'static LinkInfo> {
    // SAFETY: map value reference, valid for the program run; read only.
    unsafe { LINKS.get(&ifindex) }
}

/// Whether the pod on `ifindex` may send from `saddr`: the node routes
/// `saddr` to that link.
#[inline(never)]
pub fn owns(ifindex: u32, saddr: &Addr) -> bool {
    // SAFETY: map value reference, read only.
    unsafe { POD_ADDRS.get(saddr) }.is_some_and(|i| *i == ifindex)
}

/// Whether `addr` belongs to a pod of this node (a packet from outside
/// the node claiming it is forged).
#[inline(never)]
pub fn is_local_pod(addr: &Addr) -> bool {
    // SAFETY: map value reference, read only.
    unsafe { POD_ADDRS.get(addr) }.is_some()
}

/// Whether any pod address of the link is under a policy (isolated for
/// ingress or egress).
#[inline(never)]
pub fn link_isolated(ifindex: u32) -> bool {
    let Some(l) = link(ifindex) else { return false };
    // SAFETY: map value reference, read only.
    l.any_addr(|a| unsafe { ENDPOINTS.get(a) }.is_some_and(|e| e.flags != 0))
}

