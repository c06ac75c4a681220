//! Addresses in map keys and values: always 16 bytes, so every key has
//! room for IPv6. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`).

/// An IPv4-mapped or IPv6 address, in network byte order.
///
/// 4-aligned (every Addr in weir's keys and values sits at a 4-aligned
/// offset, and an LPM key's data follows its u32 prefix length), so that
/// building one is word stores: at alignment 1, BPF has no unaligned
/// stores and LLVM zeroes the v4-mapped prefix with a call to
/// compiler-builtins' byte-wise `memset`, on every Addr-keyed lookup.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, Eq, PartialOrd, Ord)]
pub struct Addr {
    pub bytes: [u8; 16],
}

impl core::hash::Hash for Addr {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

/// Equality as two 64-bit compares: a derived one compiles to a byte-wise
/// `bcmp` loop in BPF, paid on every packet (source validation, backend
/// checks). Same bytes ⇔ same halves, so this agrees with `Hash` and `Ord`.
impl PartialEq for Addr {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.bytes, &other.bytes);
        let a0 = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
        let a1 = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
        let b0 = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let b1 = u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        a0 == b0 && a1 == b1
    }
}

impl Addr {
    pub const ZERO: Addr = Addr { bytes: [0; 16] };

    /// The 16 bytes as four words in memory order (wire order), as the
    /// kernel's FIB lookup and tunnel key take an IPv6 address.
    #[inline(always)]
    pub const fn words(&self) -> [u32; 4] {
        let b = &self.bytes;
        [
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        ]
    }

    /// [`Addr::words`]'s inverse.
    #[inline(always)]
    pub const fn from_words(w: [u32; 4]) -> Addr {
        let (a, b, c, d) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
        Addr { bytes: [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]] }
    }

    /// From an IPv4 address as the 4 bytes found on the wire.
    #[inline(always)]
    pub const fn from_v4_octets(o: [u8; 4]) -> Self {
        Addr { bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3]] }
    }

    /// From an IPv4 address as a u32 loaded from the packet (network order in memory).
    #[inline(always)]
    pub const fn from_v4_raw(raw: u32) -> Self {
        // Four word stores; a byte array literal here lowers to a memset
        // call for the ten zero bytes.
        let words: [u32; 4] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), raw];
        // SAFETY: Addr is 16 plain bytes, 4-aligned, like [u32; 4]; every
        // bit pattern is a valid Addr.
        unsafe { core::mem::transmute::<[u32; 4], Addr>(words) }
    }

    /// Whether the address is IPv4 (v4-mapped). Two word compares: twelve
    /// byte compares cost BPF frames registers and stack.
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        let b = &self.bytes;
        let head = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let mark = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        head == 0 && mark == u32::from_ne_bytes([0, 0, 0xff, 0xff])
    }

    /// The IPv4 address as it sits in a packet (a u32 in network order in memory).
    #[inline(always)]
    pub const fn v4_raw(&self) -> u32 {
        u32::from_ne_bytes([self.bytes[12], self.bytes[13], self.bytes[14], self.bytes[15]])
    }

    #[inline(always)]
    pub const fn v4_octets(&self) -> [u8; 4] {
        [self.bytes[12], self.bytes[13], self.bytes[14], self.bytes[15]]
    }
}

const _: () = assert!(core::mem::size_of::<Addr>() == 16);

crate::user_pod!(Addr);

#[cfg(feature = "user")]
mod user {
    use super::Addr;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    impl From<IpAddr> for Addr {
        fn from(ip: IpAddr) -> Self {
            match ip {
                IpAddr::V4(v4) => Addr::from_v4_octets(v4.octets()),
                IpAddr::V6(v6) => Addr { bytes: v6.octets() },
            }
        }
    }

    impl From<Ipv4Addr> for Addr {
        fn from(ip: Ipv4Addr) -> Self {
            Addr::from_v4_octets(ip.octets())
        }
    }

    impl From<Addr> for IpAddr {
        fn from(a: Addr) -> Self {
            if a.is_v4() {
                IpAddr::V4(Ipv4Addr::from(a.v4_octets()))
            } else {
                IpAddr::V6(Ipv6Addr::from(a.bytes))
            }
        }
    }

    impl core::fmt::Display for Addr {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            IpAddr::from(*self).fmt(f)
        }
    }
}
