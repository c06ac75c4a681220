//! VXLAN between nodes (`--routing vxlan`): which node holds which pod
//! CIDR, and which addresses are nodes.

use crate::addr::Addr;

/// The VNI of weir's tunnel (one overlay).
pub const TUNNEL_VNI: u32 = 2;

/// The MAC every node's tunnel device has: inner frames carry it as their
/// destination, so the receiving device takes them as its own.
pub const TUNNEL_MAC: [u8; 6] = [0x02, 0x77, 0x65, 0x69, 0x72, 0x00];

/// The inner source MAC of encapsulated frames: not the devices' own (a
/// VXLAN device drops frames from its own MAC as looped back).
pub const TUNNEL_SRC_MAC: [u8; 6] = [0x02, 0x77, 0x65, 0x69, 0x72, 0x01];

/// Both inner MACs, destination then source, as written over an
/// Ethernet header.
pub const TUNNEL_MACS: [u8; 12] = [0x02, 0x77, 0x65, 0x69, 0x72, 0x00, 0x02, 0x77, 0x65, 0x69, 0x72, 0x01];

/// Value of `WEIR_TUNNEL` (LPM trie keyed by a pod CIDR): the node that
/// holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelEndpoint {
    /// The node's InternalIP (the outer destination).
    pub node: Addr,
}

const _: () = assert!(core::mem::size_of::<TunnelEndpoint>() == 16);

crate::user_pod!(TunnelEndpoint);
