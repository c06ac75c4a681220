//! Internet checksum arithmetic (RFC 1071) for headers the datapath builds
//! from scratch (TCP RST, ICMP unreachable), and incremental updates (RFC
//! 1624) for the XDP path, which rewrites packets without the skb
//! checksum helpers. Loops have constant bounds so the verifier accepts
//! them.

/// Adds 16-bit big-endian words of `data` (even length) to `sum`.
#[inline(always)]
pub fn add_words<const N: usize>(mut sum: u32, data: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += ((data[i] as u32) << 8) | data[i + 1] as u32;
        i += 2;
    }
    if N % 2 == 1 {
        sum += (data[N - 1] as u32) << 8;
    }
    sum
}

/// Folds a 32-bit sum into the final one's-complement checksum
/// (host-order u16; store it big-endian).
#[inline(always)]
pub fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// RFC 1624 incremental update of a one's-complement checksum `sum` for a
/// 16-bit word changing from `old` to `new`. All three as stored in the
/// packet (byte order does not matter as long as they are alike).
#[inline(always)]
pub fn replace16(sum: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!sum) + u32::from(!old) + u32::from(new);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// [`replace16`] for a 32-bit field (an IPv4 address), as stored.
#[inline(always)]
pub fn replace32(sum: u16, old: u32, new: u32) -> u16 {
    let sum = replace16(sum, old as u16, new as u16);
    replace16(sum, (old >> 16) as u16, (new >> 16) as u16)
}

/// RFC 1624 update of `sum` (as stored) by a 32-bit one's-complement
/// difference, as `bpf_csum_diff` returns it for a field replaced (the
/// old bytes complemented plus the new, as stored: an IPv6 address in one
/// helper call instead of eight [`replace16`]s).
#[inline(always)]
pub fn apply_diff(sum: u16, diff: u32) -> u16 {
    let mut s = u64::from(!sum) + u64::from(diff);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `bpf_csum_diff(from, 16, to, 16, 0)` returns: the 32-bit
    /// one's-complement sum of the complemented old words and the new ones.
    fn kernel_diff(old: [u32; 4], new: [u32; 4]) -> u32 {
        let mut s: u64 = 0;
        for w in old.iter().map(|w| !w).chain(new) {
            s += u64::from(w);
        }
        while s >> 32 != 0 {
            s = (s & 0xffff_ffff) + (s >> 32);
        }
        s as u32
    }

    #[test]
    fn a_csum_diff_updates_as_the_word_by_word_replacement_does() {
        let cases: [([u32; 4], [u32; 4], u16); 4] = [
            ([0x20010db8, 0, 0, 1], [0xfd000010, 0x0244, 0, 5], 0x1234),
            ([0xffffffff; 4], [0; 4], 0),
            ([0; 4], [0xffffffff; 4], 0xffff),
            ([0x00fd0000, 0x10009600, 0, 0x10000000], [0x00fd0000, 0x10004402, 0x01, 0x05000000], 0xbeef),
        ];
        for (old, new, sum) in cases {
            let mut want = sum;
            for i in 0..4 {
                want = replace32(want, old[i], new[i]);
            }
            assert_eq!(apply_diff(sum, kernel_diff(old, new)), want, "{old:x?} -> {new:x?} on {sum:#x}");
        }
    }

    #[test]
    fn incremental_updates_match_a_full_recompute() {
        // The RFC 1071 example header, with its checksum in place.
        let mut h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        let stored = |h: &[u8; 20]| u16::from_ne_bytes([h[10], h[11]]);
        let word = |h: &[u8; 20], i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        for (src, dst, ttl) in [([10, 244, 1, 5], [203, 0, 113, 10], 63u8), ([255, 255, 255, 255], [0, 0, 0, 0], 1), ([192, 168, 0, 11], [10, 96, 0, 1], 0)] {
            let mut sum = stored(&h);
            let (old_src, old_dst) = (word(&h, 12), word(&h, 16));
            h[12..16].copy_from_slice(&src);
            h[16..20].copy_from_slice(&dst);
            sum = replace32(sum, old_src, word(&h, 12));
            sum = replace32(sum, old_dst, word(&h, 16));
            let old_ttl = u16::from_ne_bytes([h[8], h[9]]);
            h[8] = ttl;
            sum = replace16(sum, old_ttl, u16::from_ne_bytes([h[8], h[9]]));
            let mut zeroed = h;
            zeroed[10] = 0;
            zeroed[11] = 0;
            assert_eq!(sum, finish(add_words(0, &zeroed)).to_be(), "after rewriting to {src:?} -> {dst:?} ttl {ttl}");
            h[10..12].copy_from_slice(&sum.to_ne_bytes());
        }
    }

    #[test]
    fn ipv4_header_checksum_matches_rfc_example() {
        // A known-good IPv4 header with checksum 0xb861.
        let mut h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(add_words(0, &h)), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(finish(add_words(0, &h)), 0);
    }
}
