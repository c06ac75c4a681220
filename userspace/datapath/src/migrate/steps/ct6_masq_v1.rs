//! `WEIR_CT6_MASQ` from layout v1 to v2: a masqueraded IPv6 flow's reverse
//! entry loses the two addresses something else names (24 + 40 B instead
//! of 40 + 56): the key's destination, the node's IPv6 address in every
//! key the datapath writes there (`weir_logic::ct6::may_keep_addrs`), and
//! the value's service address, which its `svc_id` names in
//! `WEIR_SVC_ADDRS` as for any reverse entry. The client's address stays
//! (`weir_common::ct::CtMasq6`).
//!
//! A v1 key naming another destination (the node's address changed since)
//! was out of the v1 programs' reach; converted, it answers to the node's
//! current address, where a reply matches it only with the same backend,
//! ports and protocol. A step sees an entry's bytes only, so it cannot
//! tell; such an entry expires as any other.

use weir_common::ct::{CtEntry, CtKey, CtMasq6, CtMasqKey6};
use weir_logic::ct6::keeps_addrs;

use super::{ct_v1::bytes, ct_v2::parse};

/// v1's key and value sizes (`CtKey`, `CtEntry`).
pub const KEY_SIZE: u32 = core::mem::size_of::<CtKey>() as u32;
pub const VALUE_SIZE: u32 = core::mem::size_of::<CtEntry>() as u32;

/// The step: a v1 entry (`CtKey` → `CtEntry`) as v2 holds it
/// (`CtMasqKey6` → `CtMasq6`); `None` for bytes of another size or an
/// entry that is not a masqueraded flow's reverse entry (none is written
/// there).
pub fn step(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (k, e) = parse(key, value)?;
    if k.is_v4() || !keeps_addrs(k.kind, e.flags) {
        return None;
    }
    let (mk, m): (CtMasqKey6, CtMasq6) = (k.masq6(), CtMasq6::of(&e));
    Some((bytes(&mk).to_vec(), bytes(&m).to_vec()))
}

#[cfg(test)]
mod tests {
    use weir_common::{
        addr::Addr,
        ct::{CT_F_MASQ, CT_SVC_FWD, CT_SVC_REV},
    };
    use weir_logic::ct6::widen_masq;

    use super::{super::fixtures::{addr6 as a, flow}, *};

    /// A masqueraded flow's reverse entry (backend → the node) of `kind`.
    fn masq_reply(node: Addr, kind: u8, flags: u8) -> (CtKey, CtEntry) {
        flow(kind, a("fd00::5"), node, a("fd00:96::10"), a("2001:db8::7"), flags)
    }

    #[test]
    fn a_masqueraded_reply_keeps_the_clients_address_and_widens_back_with_every_field() {
        let node = a("fd00:ff::1");
        let (k, e) = masq_reply(node, CT_SVC_REV, CT_F_MASQ);
        let (nk, nv) = step(bytes(&k), bytes(&e)).expect("a v1 entry");
        assert_eq!((nk.len(), nv.len()), (24, 40));
        // SAFETY: exactly one key and one value of v2.
        let (mk, m) = unsafe { (core::ptr::read_unaligned(nk.as_ptr().cast::<CtMasqKey6>()), core::ptr::read_unaligned(nv.as_ptr().cast::<CtMasq6>())) };
        let wide = mk.widen(node);
        assert_eq!(wide, k, "the key, with the node's address back");
        assert_eq!(widen_masq(&wide, &m, e.nat_addr), e, "every field, with the service's address by its id");
    }

    #[test]
    fn anything_else_is_left_behind() {
        let node = a("fd00:ff::1");
        let (k, e) = masq_reply(node, CT_SVC_FWD, CT_F_MASQ);
        assert_eq!(step(bytes(&k), bytes(&e)), None, "a forward entry is WEIR_CT's");
        let (k, e) = masq_reply(node, CT_SVC_REV, 0);
        assert_eq!(step(bytes(&k), bytes(&e)), None, "a reply that is not masqueraded is WEIR_CT's");
        assert_eq!(step(&[0; 24], &[0; 40]), None, "v2 bytes");
    }
}
