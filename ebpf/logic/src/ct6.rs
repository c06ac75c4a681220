//! IPv6 conntrack entries without their addresses (`WEIR_CT` layout v4,
//! see `weir_common::ct`): which entries must keep them, and where the
//! two addresses of every other one come from. The kernel applies the
//! rule in place, userspace through [`widen`]; both use the same
//! decisions here.
//!
//! An IPv6 entry costs the kernel 48 B of element header, 16 B of
//! bucket, a 40-byte key and its value. Two entries per flow within
//! nf_conntrack's 256 B leave 24 B of value, a `CtTail`: the state,
//! expiry, ids, ports, flags and owner, and neither address.
//! - A forward entry's client is its key's source; its backend is
//!   `WEIR_BACKENDS[backend_id]` (a backend id names one address and port
//!   for its whole life, and is never handed out again: `WEIR_LB_IDS`).
//! - A reverse entry's service address is `WEIR_SVC_ADDRS[svc_id]` (the
//!   frontend the id names, written before the frontend, removed after
//!   it); its client is its key's destination, or its key's source for a
//!   hairpin flow (the backend is the client).
//! - A masqueraded flow's reverse key names the node's address where the
//!   client's would be: that entry keeps the client's address, in its own
//!   table (`WEIR_CT6_MASQ`, [`keeps_addrs`]), keyed without the node's
//!   address, which every such key has ([`may_keep_addrs`]): 24 B of key
//!   and 40 of value, so that flow too stays within 256 B ([`widen_masq`]).
//! - Policy entries use no address.

use weir_common::{
    addr::Addr,
    ct::{CtEntry, CtKey, CtMasq6, CtTail, CT_F_HAIRPIN, CT_F_MASQ, CT_SVC_FWD, CT_SVC_REV},
};

/// Whether an IPv6 entry of `kind` with `flags` keeps the client's address
/// (`WEIR_CT6_MASQ`) instead of being a `CtTail` in `WEIR_CT`: the
/// reverse entry of a masqueraded flow. A rule of the entry alone, so a
/// migration can apply it to an old table with no other state.
#[inline(always)]
pub const fn keeps_addrs(kind: u8, flags: u8) -> bool {
    kind == CT_SVC_REV && flags & CT_F_MASQ != 0
}

/// Whether a lookup of `k` that missed `WEIR_CT` may find it in
/// `WEIR_CT6_MASQ`: a reverse key addressed to the node (`node6`), as
/// every masqueraded flow's is. Other keys (every pod-to-pod packet's
/// reply lookup) pay no second lookup.
#[inline(always)]
pub fn may_keep_addrs(k: &CtKey, node6: &Addr) -> bool {
    k.kind == CT_SVC_REV && k.daddr == *node6
}

/// Where an IPv6 `CtTail`'s `nat_addr` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// `WEIR_BACKENDS[id]`'s address (a forward entry).
    Backend(u32),
    /// `WEIR_SVC_ADDRS[id]`'s address (a reverse entry).
    Service(u32),
    /// None: the entry uses no address (policy).
    None,
}

/// Where an IPv6 `CtTail`'s `orig_addr` (the client) comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orig {
    KeySource,
    KeyDestination,
    None,
}

/// The address an entry of `kind` left out, and where it is.
#[inline(always)]
pub const fn nat_of(kind: u8, t: &CtTail) -> Nat {
    match kind {
        CT_SVC_FWD => Nat::Backend(t.backend_id),
        CT_SVC_REV => Nat::Service(t.svc_id),
        _ => Nat::None,
    }
}

/// The client's address of an entry of `kind` with `flags`, in its key.
#[inline(always)]
pub const fn orig_of(kind: u8, flags: u8) -> Orig {
    match kind {
        CT_SVC_FWD => Orig::KeySource,
        CT_SVC_REV if flags & CT_F_HAIRPIN != 0 => Orig::KeySource,
        CT_SVC_REV => Orig::KeyDestination,
        _ => Orig::None,
    }
}

/// [`orig_of`], read from the key.
#[inline(always)]
pub fn orig_addr(k: &CtKey, flags: u8) -> Addr {
    match orig_of(k.kind, flags) {
        Orig::KeySource => k.saddr,
        Orig::KeyDestination => k.daddr,
        Orig::None => Addr::ZERO,
    }
}

/// The entry `k` → `t` as the wide types hold it, `nat` being the
/// address [`nat_of`] names (the zero address if that id is gone; policy
/// entries ignore it).
#[inline(always)]
pub fn widen(k: &CtKey, t: &CtTail, nat: Addr) -> CtEntry {
    let nat_addr = if matches!(nat_of(k.kind, t), Nat::None) { Addr::ZERO } else { nat };
    CtEntry {
        nat_addr,
        orig_addr: orig_addr(k, t.flags),
        expires_s: t.expires_s,
        backend_id: t.backend_id,
        svc_id: t.svc_id,
        nat_port: t.nat_port,
        orig_port: t.orig_port,
        state: t.state,
        flags: t.flags,
        _pad: 0,
        owner: t.owner,
    }
}

/// Whether the widened entry `k` → `e` names a backend or service id that
/// is gone: an IPv6 service entry whose address [`widen`] could not read
/// (no backend or service has the zero address). The kernel treats such
/// an entry as no flow (`Ct::read` returns false); readers that say what
/// the kernel does (`weir explain`, `weir ct`) follow.
#[inline(always)]
pub fn names_gone_id(k: &CtKey, e: &CtEntry) -> bool {
    !k.is_v4() && matches!(k.kind, CT_SVC_FWD | CT_SVC_REV) && e.nat_addr == Addr::ZERO
}

/// The `WEIR_CT6_MASQ` entry `k` → `m` as the wide types hold it: the
/// service's address `svc` ([`nat_of`] names it, as for any reverse
/// entry; the zero address if that id is gone), the client's from the
/// entry.
#[inline(always)]
pub fn widen_masq(k: &CtKey, m: &CtMasq6, svc: Addr) -> CtEntry {
    CtEntry { orig_addr: m.client, ..widen(k, &m.tail, svc) }
}

#[cfg(test)]
mod tests {
    use weir_common::ct::{CT_POLICY, CT_STATE_ESTABLISHED};

    use super::*;

    fn a(last: u8) -> Addr {
        let mut b = [0u8; 16];
        b[0] = 0xfd;
        b[15] = last;
        Addr { bytes: b }
    }

    fn k(kind: u8, s: Addr, d: Addr) -> CtKey {
        CtKey { saddr: s, daddr: d, sport: 1, dport: 2, proto: 6, kind, _pad: 0 }
    }

    fn e(nat: Addr, orig: Addr, flags: u8) -> CtEntry {
        CtEntry {
            nat_addr: nat,
            orig_addr: orig,
            expires_s: 9,
            backend_id: 7,
            svc_id: 3,
            nat_port: 80,
            orig_port: 4000,
            state: CT_STATE_ESTABLISHED,
            flags,
            _pad: 0,
            owner: 12,
        }
    }

    // The addresses of the entries the service path writes
    // (`lb::open`, `rebuild_fwd`, `rebuild_rev`): client c, VIP v,
    // backend b, node n.
    #[test]
    fn every_entry_the_datapath_writes_widens_back_to_itself() {
        let (c, v, b, n) = (a(1), a(2), a(3), a(4));
        let cases = [
            // forward: client → VIP; the backend by id.
            (k(CT_SVC_FWD, c, v), e(b, c, 0), b),
            (k(CT_SVC_FWD, c, v), e(b, c, CT_F_MASQ), b),
            // reverse: backend → client; the VIP by service id.
            (k(CT_SVC_REV, b, c), e(v, c, 0), v),
            // hairpin: the backend is the client, the key names the
            // hairpin address.
            (k(CT_SVC_REV, c, a(9)), e(v, c, CT_F_HAIRPIN), v),
            (k(CT_SVC_FWD, c, v), e(c, c, CT_F_HAIRPIN), c),
        ];
        for (key, entry, nat) in cases {
            assert!(!keeps_addrs(key.kind, entry.flags));
            assert_eq!(widen(&key, &CtTail::of(&entry), nat), entry, "{key:?}");
        }
        // A masqueraded reply names the node: it keeps the client's
        // address, keyed without the node's.
        assert!(keeps_addrs(CT_SVC_REV, CT_F_MASQ));
        let (key, entry) = (k(CT_SVC_REV, b, n), e(v, c, CT_F_MASQ));
        assert!(may_keep_addrs(&key, &n));
        assert_eq!(key.masq6().widen(n), key);
        assert_eq!(widen_masq(&key, &CtMasq6::of(&entry), v), entry);
        assert!(!may_keep_addrs(&k(CT_SVC_REV, b, c), &n), "a reply to a pod is in WEIR_CT");
        assert!(!may_keep_addrs(&k(CT_SVC_FWD, c, n), &n), "forward entries never keep addresses");
    }

    #[test]
    fn a_policy_entry_has_no_address_and_a_gone_id_gives_the_zero_address() {
        let p = k(CT_POLICY, a(1), a(2));
        assert_eq!(nat_of(CT_POLICY, &CtTail::default()), Nat::None);
        let w = widen(&p, &CtTail::of(&e(Addr::ZERO, Addr::ZERO, 0)), a(5));
        assert_eq!((w.nat_addr, w.orig_addr), (Addr::ZERO, Addr::ZERO));
        let rk = k(CT_SVC_REV, a(3), a(1));
        let r = widen(&rk, &CtTail::of(&e(a(2), a(1), 0)), Addr::ZERO);
        assert_eq!(r.nat_addr, Addr::ZERO, "the caller treats it as no entry");
        assert!(names_gone_id(&rk, &r));
        assert!(!names_gone_id(&rk, &widen(&rk, &CtTail::of(&e(a(2), a(1), 0)), a(2))), "an entry whose id is there");
        assert!(!names_gone_id(&p, &w), "a policy entry names no id");
        assert_eq!(nat_of(CT_SVC_FWD, &CtTail { backend_id: 42, ..CtTail::default() }), Nat::Backend(42));
        assert_eq!(nat_of(CT_SVC_REV, &CtTail { svc_id: 5, ..CtTail::default() }), Nat::Service(5));
    }
}
