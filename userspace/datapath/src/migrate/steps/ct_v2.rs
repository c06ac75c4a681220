//! Conntrack from layout v2 to v3 (`WEIR_CT`): one table for both
//! families becomes one per family. v3's `WEIR_CT` holds IPv6 flows only,
//! in v2's bytes; an IPv4 flow moves to `WEIR_CT4` with 4-byte addresses
//! ([`narrow`]; the migration writes it there, see `migrate::copy`), the
//! same conversion the kernel's carry-over applies
//! (`weir_common::ct::CtEntry4::narrow`).

use weir_common::ct::{CtEntry, CtEntry4, CtKey, CtKey4};

use super::ct_v1::bytes;

/// The step for `WEIR_CT`: an IPv6 entry as it is; an IPv4 one is not
/// `WEIR_CT`'s any more ([`narrow`] takes it).
pub fn step(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (k, _) = parse(key, value)?;
    (!k.is_v4()).then(|| (key.to_vec(), value.to_vec()))
}

/// An IPv4 entry of v2 as `WEIR_CT4` holds it; `None` for anything else.
pub fn narrow(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (k, e) = parse(key, value)?;
    if !k.is_v4() {
        return None;
    }
    let (k4, e4): (CtKey4, CtEntry4) = (k.narrow(), CtEntry4::narrow(&e));
    Some((bytes(&k4).to_vec(), bytes(&e4).to_vec()))
}

/// Whether a v2 (or v1: the key did not change) key is an IPv4 flow's.
pub fn is_v4_key(key: &[u8]) -> bool {
    key.len() == core::mem::size_of::<CtKey>() && key_of(key).is_v4()
}

fn key_of(key: &[u8]) -> CtKey {
    // SAFETY: the caller checked the length; every bit pattern is a valid
    // CtKey (integers and byte arrays only).
    unsafe { core::ptr::read_unaligned(key.as_ptr().cast::<CtKey>()) }
}

pub(crate) fn parse(key: &[u8], value: &[u8]) -> Option<(CtKey, CtEntry)> {
    if key.len() != core::mem::size_of::<CtKey>() || value.len() != core::mem::size_of::<CtEntry>() {
        return None;
    }
    // SAFETY: exactly one CtEntry's bytes; every bit pattern is valid.
    let e = unsafe { core::ptr::read_unaligned(value.as_ptr().cast::<CtEntry>()) };
    Some((key_of(key), e))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use weir_common::{addr::Addr, ct::{CT_F_MASQ, CT_SVC_FWD}};

    use super::*;

    fn flow(a: Addr, b: Addr) -> (CtKey, CtEntry) {
        super::super::fixtures::flow(CT_SVC_FWD, a, b, b, a, CT_F_MASQ)
    }

    #[test]
    fn an_ipv6_entry_stays_and_an_ipv4_one_moves_narrowed_with_every_field() {
        let (k6, e6) = flow(Addr::from(IpAddr::V6(Ipv6Addr::LOCALHOST)), Addr::from(IpAddr::V6("fd00::5".parse::<Ipv6Addr>().expect("an address"))));
        assert_eq!(step(bytes(&k6), bytes(&e6)), Some((bytes(&k6).to_vec(), bytes(&e6).to_vec())));
        assert_eq!(narrow(bytes(&k6), bytes(&e6)), None);
        assert!(!is_v4_key(bytes(&k6)));

        let (k4, e4) = flow(Addr::from(Ipv4Addr::new(10, 0, 0, 2)), Addr::from(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(step(bytes(&k4), bytes(&e4)), None, "not WEIR_CT's in v3");
        assert!(is_v4_key(bytes(&k4)));
        let (nk, nv) = narrow(bytes(&k4), bytes(&e4)).expect("an IPv4 entry");
        assert_eq!((nk.len(), nv.len()), (16, 32));
        // SAFETY: exactly one key and one entry.
        let (nk, nv) = unsafe { (core::ptr::read_unaligned(nk.as_ptr().cast::<CtKey4>()), core::ptr::read_unaligned(nv.as_ptr().cast::<CtEntry4>())) };
        assert_eq!(nk.widen(), k4, "the key, back");
        assert_eq!(nv.widen(), e4, "every field, back");
        assert_eq!(nk.saddr, u32::from_ne_bytes([10, 0, 0, 2]), "the address as on the wire");
    }

    #[test]
    fn bytes_of_another_size_are_left_behind() {
        assert_eq!(step(&[0; 40], &[0; 64]), None);
        assert_eq!(narrow(&[0; 36], &[0; 56]), None);
        assert!(!is_v4_key(&[0; 16]));
    }
}
