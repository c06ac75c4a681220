//! Conntrack from layout v1 to v2 (`WEIR_CT` and `WEIR_SNAT`, whose
//! values are both `CtEntry`): the key as it is, the value converted by
//! `weir_common::ct_v1` (which the kernel's carry-over uses too, and
//! which says what changed).

use weir_common::ct::CtKey;

/// v1's key and value sizes.
pub const KEY_SIZE: u32 = 40;
pub const VALUE_SIZE: u32 = 64;

pub use weir_common::ct_v1::{to_v1, to_v2, CtEntryV1};

const _: () = assert!(core::mem::size_of::<CtKey>() == KEY_SIZE as usize);
const _: () = assert!(core::mem::size_of::<CtEntryV1>() == VALUE_SIZE as usize);

/// The step: the key as it is, the value converted. Bytes of another size
/// are not a v1 entry and are left behind.
pub fn step(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if key.len() != KEY_SIZE as usize || value.len() != VALUE_SIZE as usize {
        return None;
    }
    // SAFETY: `value` holds exactly size_of::<CtEntryV1>() bytes, and every
    // bit pattern is a valid CtEntryV1 (integers and byte arrays only).
    let v1 = unsafe { core::ptr::read_unaligned(value.as_ptr().cast::<CtEntryV1>()) };
    Some((key.to_vec(), bytes(&to_v2(&v1)).to_vec()))
}

/// The bytes of a plain-data value with no implicit padding.
pub(crate) fn bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: used for conntrack keys and entries only, which are repr(C) with
    // every padding byte an explicit field, so every byte is initialised.
    unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::{addr::Addr, ct::{CtEntry, CT_F_MASQ, CT_STATE_ESTABLISHED}};
    use weir_logic::ct::NS_PER_S;

    fn v1() -> CtEntryV1 {
        CtEntryV1 {
            expires_ns: 12 * NS_PER_S + 1,
            nat_addr: Addr::from(std::net::Ipv4Addr::new(10, 0, 0, 2)),
            orig_addr: Addr::from(std::net::Ipv4Addr::new(10, 0, 0, 9)),
            backend_id: 7,
            svc_id: 3,
            nat_port: 8080u16.to_be(),
            orig_port: 40000u16.to_be(),
            state: CT_STATE_ESTABLISHED,
            flags: CT_F_MASQ,
            _pad: 0,
            owner: 12,
            _tail: 0,
        }
    }

    #[test]
    fn every_field_is_kept_and_the_expiry_rounded_up_to_a_second() {
        let old = v1();
        let key = [0xabu8; KEY_SIZE as usize];
        let (k, v) = step(&key, bytes(&old)).expect("a v1 entry converts");
        assert_eq!(k, key, "the key is unchanged");
        assert_eq!(v.len(), core::mem::size_of::<CtEntry>());
        // SAFETY: `v` holds exactly one CtEntry.
        let new = unsafe { core::ptr::read_unaligned(v.as_ptr().cast::<CtEntry>()) };
        assert_eq!(new.expires_s, 13, "12.000000001 s lives until 13 s");
        assert_eq!((new.nat_addr, new.orig_addr), (old.nat_addr, old.orig_addr));
        assert_eq!((new.backend_id, new.svc_id, new.nat_port, new.orig_port), (7, 3, old.nat_port, old.orig_port));
        assert_eq!((new.state, new.flags, new.owner), (CT_STATE_ESTABLISHED, CT_F_MASQ, 12));
        assert_eq!(to_v1(&new), CtEntryV1 { expires_ns: 13 * NS_PER_S, ..old }, "and back, but for the rounding");
    }

    #[test]
    fn an_entry_alive_in_v1_is_alive_in_v2_and_a_stale_one_stays_stale() {
        use weir_logic::ct::is_alive;
        for expires_ns in [NS_PER_S, 5 * NS_PER_S - 1, 5 * NS_PER_S, 5 * NS_PER_S + 1] {
            let new = to_v2(&CtEntryV1 { expires_ns, ..v1() });
            for now in [expires_ns.saturating_sub(1), expires_ns, expires_ns + NS_PER_S] {
                if now < expires_ns {
                    assert!(is_alive(&new, now), "alive at {now} in v1 ({expires_ns})");
                }
                if now >= expires_ns + NS_PER_S {
                    assert!(!is_alive(&new, now), "stale at {now} in v1 ({expires_ns}), and a second later in v2");
                }
            }
        }
        assert_eq!(to_v2(&CtEntryV1 { expires_ns: u64::MAX, ..v1() }).expires_s, u32::MAX, "saturates");
    }

    #[test]
    fn bytes_of_another_size_are_left_behind() {
        assert_eq!(step(&[0; 40], &[0; 56]), None);
        assert_eq!(step(&[0; 36], &[0; 64]), None);
    }
}
