//! Masquerade of pod egress leaving the node (`--masquerade`): which
//! uplink devices translate, to which address and port range, and which
//! destinations are inside the cluster (never translated).
//!
//! A masqueraded flow has two entries in `WEIR_SNAT` (a hash, not an LRU:
//! a full table refuses new flows, counted, instead of evicting live
//! ones), with `WEIR_CT`'s key and value types:
//! - out (`CT_SNAT_OUT`): pod → remote as the pod sent it; holds the node
//!   address and port it leaves with;
//! - in (`CT_SNAT_IN`): remote → node address and port, as the replies
//!   arrive; holds the pod's address and port to restore.
//!
//! `weir_logic::masq::twin` derives one key from the other.

use crate::addr::Addr;

/// Value of `WEIR_MASQ` (uplink → how it masquerades one family, keyed by
/// [`device_key`]). A device without an entry for a family translates
/// nothing of that family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasqDevice {
    /// The source address masqueraded flows leave with.
    pub addr: Addr,
    /// The source ports they are given, host order, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    pub _pad: u32,
}

/// The default source port range (`--masquerade-ports`): above Linux's
/// default ephemeral range (32768–60999), so the node's own connections
/// never take a port a masqueraded flow holds, and outside the NodePort
/// range. A range inside the ephemeral one is reserved by the agent
/// (`net.ipv4.ip_local_reserved_ports`) for the same reason.
pub const PORT_MIN: u16 = 61_000;
pub const PORT_MAX: u16 = 65_535;
/// The lowest port `--masquerade-ports` may take (the privileged ports
/// stay the node's).
pub const PORT_FLOOR: u16 = 1024;

const _: () = assert!(core::mem::size_of::<MasqDevice>() == 24);

/// The bit of a `WEIR_MASQ` key that says IPv6 (an ifindex never reaches
/// it).
pub const KEY_V6: u32 = 1 << 31;

/// The `WEIR_MASQ` key of device `ifindex`'s masquerade of IPv4 (`v4`)
/// or IPv6 pod egress.
#[inline(always)]
pub const fn device_key(ifindex: u32, v4: bool) -> u32 {
    if v4 {
        ifindex
    } else {
        ifindex | KEY_V6
    }
}

crate::user_pod!(MasqDevice);
