//! Pod links and the addresses the node routes to them: the source
//! addresses a pod may send from. Filled by the agent from the node's
//! host routes (`<podIP>/32 dev <host veth>`, `/128` for IPv6), learned and
//! followed over rtnetlink, so it holds for pods wired by weir-cni and by
//! hand alike, with or without a Pod object.

use crate::addr::Addr;

/// Addresses one pod link may hold (dual-stack pods hold two).
pub const LINK_ADDRS_MAX: usize = 8;

/// Value of `WEIR_LINKS`, keyed by the host-side veth's ifindex (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// The first `count` entries are the link's addresses.
    pub addrs: [Addr; LINK_ADDRS_MAX],
    pub count: u32,
    pub _pad: u32,
}

/// Value of `WEIR_LINK_MACS`, keyed by a pod link's host-side ifindex
/// (u32): the Ethernet header of frames the node sends the pod over it,
/// destination (the pod's `eth0`) then source (the host side), as it
/// appears on the wire, and when it was learned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkMacs {
    pub pod: [u8; 6],
    pub node: [u8; 6],
    /// CLOCK_MONOTONIC (coarse) seconds when the link's to_pod learned it.
    pub learned_s: u32,
}

/// How old a learned `LinkMacs` may be before the next TCP SYN to the
/// link takes the node's neighbour output to learn it afresh (a
/// neighbour entry the node corrected, for a pod's new MAC). Other
/// packets use it whatever its age: one of them taking the slow way would
/// be overtaken by its flow's next packets.
pub const LINK_MACS_FRESH_S: u32 = 30;

impl LinkMacs {
    /// Whether the header learned at `learned_s` may be used at `now_s`.
    #[inline(always)]
    pub fn fresh(&self, now_s: u32) -> bool {
        now_s.wrapping_sub(self.learned_s) < LINK_MACS_FRESH_S
    }
}

impl LinkInfo {
    /// Whether `a` is one of the link's addresses.
    #[inline(always)]
    pub fn owns(&self, a: &Addr) -> bool {
        let mut i = 0;
        while i < LINK_ADDRS_MAX {
            if (i as u32) >= self.count {
                return false;
            }
            if self.addrs[i] == *a {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether `f` holds for any of the link's addresses.
    #[inline(always)]
    pub fn any_addr(&self, f: impl Fn(&Addr) -> bool) -> bool {
        let mut i = 0;
        while i < LINK_ADDRS_MAX {
            if (i as u32) < self.count && f(&self.addrs[i]) {
                return true;
            }
            i += 1;
        }
        false
    }
}

const _: () = assert!(core::mem::size_of::<LinkInfo>() == 136);

crate::user_pod!(LinkInfo, LinkMacs);
