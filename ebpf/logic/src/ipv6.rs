//! The IPv6 extension-header chain, walked to the upper-layer header in a
//! bounded number of steps (RFC 8200 section 4). The kernel programs read
//! the headers with `bpf_skb_load_bytes`; the tests read a byte slice.
//! A chain that cannot be walked (longer than [`MAX_EXT_HEADERS`], cut
//! short by the packet's end, a hop-by-hop header anywhere but first, two
//! fragment headers) is reported, and the programs drop it: a packet
//! whose upper layer the datapath cannot see is never passed.

use weir_common::addr::Addr;

/// IPv6 source addresses a pod may use without owning them: the
/// unspecified address (duplicate address detection) and link-local
/// scope (neighbour discovery), which never leave the link.
#[inline(always)]
pub fn link_scope_source(a: &Addr) -> bool {
    let b = &a.bytes;
    (b[0] == 0xfe && b[1] & 0xc0 == 0x80) || *a == Addr::ZERO
}

/// Link-local unicast, the unspecified address, or multicast: an address
/// no pod owns and no route leaves the link with. No policy rule can name
/// such a peer, so an isolated pod neither sends nor receives its traffic
/// (neighbour discovery and MLD aside).
#[inline(always)]
pub fn link_scope(a: &Addr) -> bool {
    link_scope_source(a) || a.bytes[0] == 0xff
}

/// Next-header values of the extension headers walked.
pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_AH: u8 = 51;
pub const NEXT_DEST_OPTS: u8 = 60;
/// No upper-layer header follows (the walk ends here, with no ports).
pub const NEXT_NONE: u8 = 59;

/// The fixed header's length.
pub const IPV6_HLEN: usize = 40;

/// Extension headers a walkable chain holds at most. RFC 8200's order has
/// six kinds (destination options twice); Linux itself caps the options
/// headers it parses. Eight leaves room and bounds the verifier's work.
pub const MAX_EXT_HEADERS: usize = 8;

/// The fragment header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment's data, in 8-byte units.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// Identification (network order as read).
    pub id: u32,
}

impl Fragment {
    /// A later fragment carries no upper-layer header.
    pub fn is_later(&self) -> bool {
        self.offset != 0
    }
}

/// Where the chain ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upper {
    /// The upper-layer protocol (TCP, UDP, ICMPv6, ESP, ...), or
    /// [`NEXT_NONE`].
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub off: usize,
    /// The fragment header, when the chain holds one.
    pub frag: Option<Fragment>,
}

/// Why a chain could not be walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwalkable {
    /// More than [`MAX_EXT_HEADERS`] extension headers.
    TooLong,
    /// An extension header runs past the packet's end.
    Truncated,
    /// A hop-by-hop header after the fixed header's first (RFC 8200
    /// allows it only there).
    HopByHopNotFirst,
    /// A second fragment header.
    TwoFragmentHeaders,
}

/// Walks the chain that starts with the fixed header's next-header field
/// `first`, in a packet of `len` bytes from the start of the IPv6 header.
/// `read(off)` gives the 8 bytes at `off` (`None` past the packet's end):
/// every extension header is at least 8 bytes long and keeps its next
/// header and length in them; one whose length runs past `len` is
/// [`Unwalkable::Truncated`].
#[inline(always)]
pub fn walk(first: u8, len: usize, mut read: impl FnMut(usize) -> Option<[u8; 8]>) -> Result<Upper, Unwalkable> {
    let (mut next, mut off, mut frag) = (first, IPV6_HLEN, None);
    for i in 0..=MAX_EXT_HEADERS {
        if !matches!(next, NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_FRAGMENT | NEXT_AH | NEXT_DEST_OPTS) {
            return Ok(Upper { proto: next, off, frag });
        }
        if i == MAX_EXT_HEADERS {
            return Err(Unwalkable::TooLong);
        }
        if next == NEXT_HOP_BY_HOP && i != 0 {
            return Err(Unwalkable::HopByHopNotFirst);
        }
        let h = read(off).ok_or(Unwalkable::Truncated)?;
        let hlen = match next {
            NEXT_FRAGMENT => {
                if frag.is_some() {
                    return Err(Unwalkable::TwoFragmentHeaders);
                }
                let field = u16::from_be_bytes([h[2], h[3]]);
                let f = Fragment { offset: field >> 3, more: field & 1 != 0, id: u32::from_ne_bytes([h[4], h[5], h[6], h[7]]) };
                if f.is_later() {
                    // A later fragment holds no header after this one: its
                    // next header names the fragmentable part's first.
                    return Ok(Upper { proto: h[0], off: off + 8, frag: Some(f) });
                }
                frag = Some(f);
                8
            }
            NEXT_AH => (usize::from(h[1]) + 2) * 4,
            _ => (usize::from(h[1]) + 1) * 8,
        };
        next = h[0];
        off += hlen;
        if off > len {
            return Err(Unwalkable::Truncated);
        }
    }
    Err(Unwalkable::TooLong)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const TCP: u8 = 6;
    const UDP: u8 = 17;

    fn a(s: &str) -> Addr {
        Addr { bytes: s.parse::<std::net::Ipv6Addr>().expect("IPv6 address").octets() }
    }

    #[test]
    fn link_scope_is_link_local_unicast_the_unspecified_address_or_multicast() {
        for s in ["fe80::1", "febf:ffff::1", "::"] {
            assert!(link_scope_source(&a(s)) && link_scope(&a(s)), "{s}");
        }
        for s in ["ff02::1", "ff05::2"] {
            assert!(!link_scope_source(&a(s)) && link_scope(&a(s)), "{s}: a destination, never a source");
        }
        for s in ["fec0::1", "fd00:10:244::2", "2001:db8::1", "::1"] {
            assert!(!link_scope(&a(s)), "{s}");
        }
    }

    /// A fixed header (only its next header matters here) and `ext` as
    /// (kind, next, length in bytes) with zero bodies, then 8 bytes of
    /// upper layer.
    fn packet(first: u8, ext: &[(u8, u8, usize)]) -> Vec<u8> {
        let mut p = std::vec![0u8; IPV6_HLEN];
        p[6] = first;
        for &(kind, next, len) in ext {
            let mut h = std::vec![0u8; len];
            h[0] = next;
            h[1] = match kind {
                NEXT_AH => (len / 4 - 2) as u8,
                NEXT_FRAGMENT => 0,
                _ => (len / 8 - 1) as u8,
            };
            p.extend(h);
        }
        p.extend([0u8; 8]);
        p
    }

    fn walk_bytes(p: &[u8]) -> Result<Upper, Unwalkable> {
        walk(p[6], p.len(), |off| p.get(off..off + 8).map(|s| s.try_into().expect("8 bytes")))
    }

    #[test]
    fn a_chain_of_every_kind_is_walked_to_its_upper_layer() {
        let p = packet(NEXT_HOP_BY_HOP, &[(NEXT_HOP_BY_HOP, NEXT_DEST_OPTS, 8), (NEXT_DEST_OPTS, NEXT_ROUTING, 24), (NEXT_ROUTING, NEXT_AH, 16), (NEXT_AH, NEXT_FRAGMENT, 24), (NEXT_FRAGMENT, UDP, 8)]);
        let u = walk_bytes(&p).expect("walkable");
        assert_eq!((u.proto, u.off), (UDP, IPV6_HLEN + 8 + 24 + 16 + 24 + 8));
        assert_eq!(u.frag, Some(Fragment { offset: 0, more: false, id: 0 }));
        assert_eq!(walk_bytes(&packet(TCP, &[])), Ok(Upper { proto: TCP, off: IPV6_HLEN, frag: None }));
        assert_eq!(walk_bytes(&packet(NEXT_NONE, &[])).map(|u| u.proto), Ok(NEXT_NONE));
    }

    #[test]
    fn a_fragment_header_gives_offset_more_and_id() {
        let mut p = packet(NEXT_FRAGMENT, &[(NEXT_FRAGMENT, UDP, 8)]);
        p[IPV6_HLEN + 2..IPV6_HLEN + 4].copy_from_slice(&((185u16 << 3) | 1).to_be_bytes());
        p[IPV6_HLEN + 4..IPV6_HLEN + 8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let f = walk_bytes(&p).expect("walkable").frag.expect("a fragment");
        assert_eq!((f.offset, f.more, f.is_later()), (185, true, true));
        assert_eq!(f.id, u32::from_ne_bytes([0xde, 0xad, 0xbe, 0xef]));
    }

    #[test]
    fn a_later_fragment_ends_the_walk_at_its_fragment_header() {
        // What follows a later fragment's header is data, even when it
        // would read as an extension header.
        let mut p = packet(NEXT_FRAGMENT, &[(NEXT_FRAGMENT, NEXT_DEST_OPTS, 8)]);
        p[IPV6_HLEN + 2..IPV6_HLEN + 4].copy_from_slice(&(8u16 << 3).to_be_bytes());
        p.truncate(IPV6_HLEN + 8 + 4);
        let u = walk_bytes(&p).expect("walkable");
        assert_eq!((u.proto, u.off), (NEXT_DEST_OPTS, IPV6_HLEN + 8));
        assert!(u.frag.is_some_and(|f| f.is_later()));
    }

    #[test]
    fn chains_that_cannot_be_walked_say_why() {
        let long: Vec<(u8, u8, usize)> = (0..=MAX_EXT_HEADERS).map(|i| (NEXT_DEST_OPTS, if i == MAX_EXT_HEADERS { UDP } else { NEXT_DEST_OPTS }, 8)).collect();
        assert_eq!(walk_bytes(&packet(NEXT_DEST_OPTS, &long)), Err(Unwalkable::TooLong));
        let most = &long[1..];
        assert!(walk_bytes(&packet(NEXT_DEST_OPTS, most)).is_ok(), "{MAX_EXT_HEADERS} headers are walked");
        // A header the packet ends inside of, or whose length runs past
        // the packet's end although its first 8 bytes are there.
        assert_eq!(walk_bytes(&packet(NEXT_DEST_OPTS, &[])[..IPV6_HLEN + 4]), Err(Unwalkable::Truncated));
        let mut long_ah = packet(NEXT_AH, &[(NEXT_AH, 156, 16)]);
        long_ah[IPV6_HLEN + 1] = 0x9c;
        assert_eq!(walk_bytes(&long_ah), Err(Unwalkable::Truncated));
        assert_eq!(walk_bytes(&packet(NEXT_DEST_OPTS, &[(NEXT_DEST_OPTS, NEXT_HOP_BY_HOP, 8), (NEXT_HOP_BY_HOP, UDP, 8)])), Err(Unwalkable::HopByHopNotFirst));
        assert_eq!(walk_bytes(&packet(NEXT_FRAGMENT, &[(NEXT_FRAGMENT, NEXT_FRAGMENT, 8), (NEXT_FRAGMENT, UDP, 8)])), Err(Unwalkable::TwoFragmentHeaders));
        // A routing header that loops back on itself is still bounded.
        let looping: Vec<(u8, u8, usize)> = (0..20).map(|_| (NEXT_ROUTING, NEXT_ROUTING, 8)).collect();
        assert_eq!(walk_bytes(&packet(NEXT_ROUTING, &looping)), Err(Unwalkable::TooLong));
    }
}
