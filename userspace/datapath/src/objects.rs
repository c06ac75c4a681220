//! The kernel objects, built by build.rs (aya-build) and embedded here.

/// The pod object: `from_pod` (tc ingress) and `to_pod` (tc egress) on host-side pod veths.
pub static POD_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod"));

/// The node object: `from_net` (tc ingress) on the node's uplink devices.
pub static NODE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/node"));

/// The socket object: cgroup `connect4`, `sendmsg4`, `recvmsg4` and
/// `getpeername4`, and their IPv6 twins (socket-level load balancing for
/// the node's processes).
pub static SOCK_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock"));

/// Every object, by name.
pub fn all() -> [(&'static str, &'static [u8]); 3] {
    [("pod", POD_OBJECT), ("node", NODE_OBJECT), ("sock", SOCK_OBJECT)]
}
