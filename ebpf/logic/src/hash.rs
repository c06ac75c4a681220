//! The flow hash: the same function in the kernel (Maglev slot) and in
//! userspace (`weir explain`, tests). Murmur3-style mixing over 32-bit words.

use weir_common::addr::Addr;

#[inline(always)]
const fn mix(mut h: u32, mut k: u32) -> u32 {
    k = k.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    h ^= k;
    h = h.rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix_addr(mut h: u32, a: &Addr) -> u32 {
    let b = &a.bytes;
    h = mix(h, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    h = mix(h, u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
    h = mix(h, u32::from_le_bytes([b[8], b[9], b[10], b[11]]));
    mix(h, u32::from_le_bytes([b[12], b[13], b[14], b[15]]))
}

/// Hash of a flow's 5-tuple (ports in network order, as in packets).
#[inline(always)]
pub fn flow_hash(saddr: &Addr, daddr: &Addr, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = 0x5eed_0001u32;
    h = mix_addr(h, saddr);
    h = mix_addr(h, daddr);
    h = mix(h, (sport as u32) << 16 | dport as u32);
    h = mix(h, proto as u32);
    fmix(h ^ 37)
}

/// Seeded hash of arbitrary bytes (userspace: Maglev permutations).
pub fn bytes_hash(seed: u32, data: &[u8]) -> u32 {
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 4];
        last[..rest.len()].copy_from_slice(rest);
        h = mix(h, u32::from_le_bytes(last));
    }
    fmix(h ^ data.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_depends_on_every_field() {
        let a = Addr::from_v4_octets([10, 0, 0, 1]);
        let b = Addr::from_v4_octets([10, 0, 0, 2]);
        let h = flow_hash(&a, &b, 1000, 80, 6);
        assert_ne!(h, flow_hash(&b, &a, 1000, 80, 6));
        assert_ne!(h, flow_hash(&a, &b, 1001, 80, 6));
        assert_ne!(h, flow_hash(&a, &b, 1000, 81, 6));
        assert_ne!(h, flow_hash(&a, &b, 1000, 80, 17));
        assert_eq!(h, flow_hash(&a, &b, 1000, 80, 6));
    }
}
