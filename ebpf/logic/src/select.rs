//! Backend selection for a new connection: which slot of the service's
//! range in `WEIR_LB_TABLE` to read.

use weir_common::lb::{Service, SVC_F_AFFINITY, SVC_F_RANDOM};

use crate::maglev;

/// How the slot was chosen (for `weir explain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotChoice {
    /// Maglev: `flow_hash % table_len`.
    Maglev { slot: u32 },
    /// Random: `random % backend_count`.
    Random { slot: u32 },
}

impl SlotChoice {
    #[inline(always)]
    pub fn slot(self) -> u32 {
        match self {
            Self::Maglev { slot } | Self::Random { slot } => slot,
        }
    }
}

/// The slot (relative to `svc.table_base`) for a new connection. `random`
/// is only used by services with random selection.
#[inline(always)]
pub fn choose_slot(svc: &Service, flow_hash: u32, random: u32) -> SlotChoice {
    if svc.flags & SVC_F_RANDOM != 0 {
        let n = if svc.backend_count == 0 { 1 } else { svc.backend_count };
        SlotChoice::Random { slot: random % n }
    } else {
        SlotChoice::Maglev { slot: maglev::slot(flow_hash, svc.table_len) }
    }
}

/// Whether the service uses ClientIP affinity.
#[inline(always)]
pub fn has_affinity(svc: &Service) -> bool {
    svc.flags & SVC_F_AFFINITY != 0 && svc.affinity_timeout_s != 0
}

/// Whether an affinity entry last used at `last_ns` is still valid at `now_ns`.
#[inline(always)]
pub fn affinity_valid(svc: &Service, last_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(last_ns) < (svc.affinity_timeout_s as u64) * 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_and_random_choose_within_range() {
        let maglev = Service { backend_count: 3, table_len: 307, ..Default::default() };
        assert_eq!(choose_slot(&maglev, 1000, 5), SlotChoice::Maglev { slot: 1000 % 307 });
        let random = Service { flags: SVC_F_RANDOM, backend_count: 3, table_len: 3, ..Default::default() };
        assert_eq!(choose_slot(&random, 1000, 5), SlotChoice::Random { slot: 2 });
    }

    #[test]
    fn affinity_expires_after_its_timeout() {
        let svc = Service { flags: SVC_F_AFFINITY, affinity_timeout_s: 10, ..Default::default() };
        assert!(has_affinity(&svc));
        assert!(affinity_valid(&svc, 0, 9_999_999_999));
        assert!(!affinity_valid(&svc, 0, 10_000_000_000));
    }
}
