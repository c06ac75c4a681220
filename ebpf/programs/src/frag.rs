//! Fragments, IPv4 and IPv6: the first fragment of a datagram records its ports once
//! it passed (`WEIR_FRAGS`, keyed as the datagram appears at this hook),
//! and every later fragment takes them back, so that it rides the first
//! fragment's conntrack entry, verdict and translation. A later fragment
//! whose first fragment was not seen, or was dropped, has no entry and is
//! dropped. Later fragments never create state.

use aya_ebpf::bindings::BPF_ANY;
use weir_common::frag::FragKey;

use crate::{
    hdr::{Ipv4Pkt, Ipv6Pkt, Tuple, FRAG_FIRST},
    maps::{scratch, FRAGS},
};

/// A packet of either family as fragments concern it.
pub trait Fragment {
    /// The first fragment of a datagram.
    fn first_fragment(&self) -> bool;
    /// A later fragment: takes the datagram's ports ([`recover`]).
    fn recover_ports(&mut self) -> bool;
    /// A first fragment: remembers its ports ([`prepare`]).
    fn prepare_ports(&self);
}

impl Fragment for Ipv4Pkt {
    #[inline(always)]
    fn first_fragment(&self) -> bool {
        self.frag == FRAG_FIRST
    }
    #[inline(always)]
    fn recover_ports(&mut self) -> bool {
        recover(self)
    }
    #[inline(always)]
    fn prepare_ports(&self) {
        prepare(self)
    }
}

impl Fragment for Ipv6Pkt {
    #[inline(always)]
    fn first_fragment(&self) -> bool {
        self.frag == FRAG_FIRST
    }
    #[inline(always)]
    fn recover_ports(&mut self) -> bool {
        recover_flow(&mut self.t, self.frag_id)
    }
    #[inline(always)]
    fn prepare_ports(&self) {
        prepare_flow(&self.t, self.frag_id)
    }
}

/// A later fragment: fills in the datagram's ports; false when the first
/// fragment is unknown (drop it).
#[inline(never)]
pub fn recover(pkt: &mut Ipv4Pkt) -> bool {
    let mut t = Tuple::of(pkt);
    if !recover_flow(&mut t, pkt.id as u32) {
        return false;
    }
    pkt.sport = t.sport;
    pkt.dport = t.dport;
    true
}

/// Remembers a first fragment (`FRAG_FIRST`) as it arrived, before any
/// translation.
#[inline(never)]
pub fn prepare(pkt: &Ipv4Pkt) {
    prepare_flow(&Tuple::of(pkt), pkt.id as u32);
}

/// Records the first fragment [`prepare`] remembered: it passed.
#[inline(never)]
pub fn commit() {
    if let Some(s) = scratch() {
        let _ = FRAGS.insert(&s.frag_key, &s.frag_val, BPF_ANY as u64);
    }
}

/// [`recover`] for a later fragment of either family: `t` holds its
/// addresses and protocol, `id` its identification.
#[inline(never)]
pub fn recover_flow(t: &mut Tuple, id: u32) -> bool {
    let Some(s) = scratch() else { return false };
    s.frag_key = FragKey { saddr: t.saddr, daddr: t.daddr, id, proto: t.proto, _pad0: 0, _pad1: 0 };
    // SAFETY: map value reference, read only.
    match unsafe { FRAGS.get(&s.frag_key) } {
        Some(v) => {
            t.sport = v.sport;
            t.dport = v.dport;
            true
        }
        None => false,
    }
}

/// [`prepare`] for a first fragment of either family.
#[inline(never)]
pub fn prepare_flow(t: &Tuple, id: u32) {
    if let Some(s) = scratch() {
        s.frag_key = FragKey { saddr: t.saddr, daddr: t.daddr, id, proto: t.proto, _pad0: 0, _pad1: 0 };
        s.frag_val.sport = t.sport;
        s.frag_val.dport = t.dport;
        s.frag_val._pad = 0;
    }
}
