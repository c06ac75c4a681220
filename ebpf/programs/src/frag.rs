//! IPv4 fragments: the first fragment of a datagram records its ports once
//! it passed (`WEIR_FRAGS`, keyed as the datagram appears at this hook),
//! and every later fragment takes them back, so that it rides the first
//! fragment's conntrack entry, verdict and translation. A later fragment
//! whose first fragment was not seen, or was dropped, has no entry and is
//! dropped. Later fragments never create state.

use aya_ebpf::bindings::BPF_ANY;
use weir_common::{addr::Addr, frag::FragKey};

use crate::{
    hdr::Ipv4Pkt,
    maps::{scratch, FRAGS},
};

#[inline(always)]
fn key(pkt: &Ipv4Pkt) -> FragKey {
    FragKey {
        saddr: Addr::from_v4_raw(pkt.saddr),
        daddr: Addr::from_v4_raw(pkt.daddr),
        id: pkt.id as u32,
        proto: pkt.proto,
        _pad0: 0,
        _pad1: 0,
    }
}

/// A later fragment: fills in the datagram's ports; false when the first
/// fragment is unknown (drop it).
#[inline(never)]
pub fn recover(pkt: &mut Ipv4Pkt) -> bool {
    let Some(s) = scratch() else { return false };
    s.frag_key = key(pkt);
    // SAFETY: map value reference, read only.
    match unsafe { FRAGS.get(&s.frag_key) } {
        Some(v) => {
            pkt.sport = v.sport;
            pkt.dport = v.dport;
            true
        }
        None => false,
    }
}

/// Remembers a first fragment (`FRAG_FIRST`) as it arrived, before any
/// translation.
#[inline(never)]
pub fn prepare(pkt: &Ipv4Pkt) {
    if let Some(s) = scratch() {
        s.frag_key = key(pkt);
        s.frag_val.sport = pkt.sport;
        s.frag_val.dport = pkt.dport;
        s.frag_val._pad = 0;
    }
}

/// Records the first fragment [`prepare`] remembered: it passed.
#[inline(never)]
pub fn commit() {
    if let Some(s) = scratch() {
        let _ = FRAGS.insert(&s.frag_key, &s.frag_val, BPF_ANY as u64);
    }
}
