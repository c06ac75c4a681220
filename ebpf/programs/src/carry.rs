//! Taking over an entry from the map a migration replaces (see
//! `weir_common::maps::CT_PREV`), for conntrack and masquerade alike: the
//! migration's programs look up the old map when they miss in the new one,
//! in the same layout as it is, from layout v1 converted by the same
//! function as the agent's copy.

use weir_common::{
    ct::{CtEntry, CtKey, CARRY_OVER_SAME},
    ct_v1::{self, CtEntryV1},
};

use crate::maps::scratch;

/// Inserts the old map's entry for `k` into the new map: `from` is the
/// program's carry-over constant (`CARRY_OVER_SAME` or `CARRY_OVER_V1`),
/// `same` and `v1` read the old map in either layout, `insert` writes the
/// new one (`BPF_NOEXIST`). Returns whether an entry was inserted.
#[inline(always)]
pub fn take_over(
    from: u8,
    k: &CtKey,
    same: impl FnOnce(&CtKey) -> Option<*const CtEntry>,
    v1: impl FnOnce(&CtKey) -> Option<*const CtEntryV1>,
    insert: impl FnOnce(&CtKey, &CtEntry) -> bool,
) -> bool {
    // One call of `insert`, which is then inlined: called in two places,
    // it would be a frame of its own on the deepest call chains.
    let entry: *const CtEntry = if from == CARRY_OVER_SAME {
        let Some(old) = same(k) else { return false };
        old
    } else {
        let (Some(old), Some(s)) = (v1(k), scratch()) else { return false };
        // SAFETY: a map value pointer, valid for this program run. The
        // converted entry goes through per-CPU scratch: on the stack it
        // would not fit the deepest call chains.
        ct_v1::write_v2(unsafe { &*old }, &mut s.carried);
        &s.carried
    };
    // SAFETY: a map value pointer (the old map's or scratch's), valid for
    // this program run.
    insert(k, unsafe { &*entry })
}
