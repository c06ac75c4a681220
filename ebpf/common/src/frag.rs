//! IPv4 fragment tracking (as Cilium's fragment map): the first fragment
//! of a datagram records its ports, so that every later fragment (which
//! carries no L4 header) gets the same conntrack entry, verdict and NAT.

use crate::addr::Addr;

/// Key of `WEIR_FRAGS`: the datagram, as the program sees it on the wire
/// (before any translation at that hook).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: Addr,
    pub daddr: Addr,
    /// IP identification (IPv4: 16 bits; room for IPv6's 32).
    pub id: u32,
    pub proto: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

/// Value of `WEIR_FRAGS`: the datagram's ports (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<FragKey>() == 40);
const _: () = assert!(core::mem::size_of::<FragValue>() == 8);

crate::user_pod!(FragKey, FragValue);
