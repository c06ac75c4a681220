//! Conntrack from layout v3 to v4 (`WEIR_CT`, IPv6 flows): each value
//! loses both addresses and becomes a `CtTail` (56 B to 24 B), but for
//! the reverse entries of masqueraded flows, which keep them and move to
//! `WEIR_CT6_MASQ` ([`aside`]; the migration converts them to that map's
//! layout and writes them there, see `migrate::copy`). The rule is `weir_logic::ct6::keeps_addrs`, the
//! one the kernel's carry-over and its inserts apply.

use weir_common::ct::CtTail;
use weir_logic::ct6::keeps_addrs;

use super::{ct_v1::bytes, ct_v2::parse};

/// The step for `WEIR_CT`: the key as it is, the value narrowed; an entry
/// that keeps its addresses is not `WEIR_CT`'s any more ([`aside`] takes
/// it).
pub fn step(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (k, e) = parse(key, value)?;
    (!keeps_addrs(k.kind, e.flags)).then(|| (key.to_vec(), bytes(&CtTail::of(&e)).to_vec()))
}

/// A v3 entry that keeps its addresses, as `WEIR_CT6_MASQ` held it in its
/// v1 (v3's bytes; [`super::ct6_masq_v1`] takes it on); `None` for
/// anything else.
pub fn aside(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (k, e) = parse(key, value)?;
    keeps_addrs(k.kind, e.flags).then(|| (key.to_vec(), value.to_vec()))
}

#[cfg(test)]
mod tests {
    use weir_common::ct::{CT_F_MASQ, CT_SVC_FWD, CT_SVC_REV};
    use weir_logic::ct6::widen;

    use super::{super::fixtures::{addr6 as a, flow}, *};

    #[test]
    fn an_entry_loses_its_addresses_and_widens_back_with_every_field() {
        let (client, vip, backend) = (a("fd00::2"), a("fd00:96::10"), a("fd00::5"));
        let (k, e) = flow(CT_SVC_REV, backend, client, vip, client, 0);
        let (nk, nv) = step(bytes(&k), bytes(&e)).expect("an IPv6 reverse entry");
        assert_eq!((nk.as_slice(), nv.len()), (bytes(&k), 24));
        // SAFETY: exactly one CtTail.
        let t = unsafe { core::ptr::read_unaligned(nv.as_ptr().cast::<CtTail>()) };
        assert_eq!(widen(&k, &t, vip), e, "every field, back, with the service's address");
        assert_eq!(aside(bytes(&k), bytes(&e)), None);
        let (k, e) = flow(CT_SVC_FWD, client, vip, backend, client, CT_F_MASQ);
        assert!(step(bytes(&k), bytes(&e)).is_some(), "a masqueraded flow's forward entry keeps no address");
    }

    #[test]
    fn a_masqueraded_reply_entry_moves_aside_whole() {
        let (node, vip, backend, client) = (a("fd00:ff::1"), a("fd00:96::10"), a("fd00::5"), a("fd00::2"));
        let (k, e) = flow(CT_SVC_REV, backend, node, vip, client, CT_F_MASQ);
        assert_eq!(step(bytes(&k), bytes(&e)), None, "not WEIR_CT's in v4");
        assert_eq!(aside(bytes(&k), bytes(&e)), Some((bytes(&k).to_vec(), bytes(&e).to_vec())));
    }

    #[test]
    fn bytes_of_another_size_are_left_behind() {
        assert_eq!(step(&[0; 40], &[0; 64]), None);
        assert_eq!(aside(&[0; 40], &[0; 24]), None);
    }
}
