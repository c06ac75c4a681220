//! Backend selection for a new connection: which slot of the service's
//! range in `WEIR_LB_TABLE` to read.

use weir_common::lb::{
    Backend, Service, BACKEND_F_TERMINATING, BACKEND_F_UNREADY, BACKEND_F_UNSERVING, SVC_F_AFFINITY, SVC_F_RANDOM,
    SVC_F_TERMINATING_FALLBACK,
};

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

/// Whether `b` may take a new connection of `svc` (kube-proxy's rule):
/// ready endpoints do; serving, terminating ones only while the service
/// has no ready endpoint (its table then holds the fallback). ClientIP
/// affinity never overrides this.
#[inline(always)]
pub fn eligible(b: &Backend, svc: &Service) -> bool {
    if b.flags & (BACKEND_F_UNREADY | BACKEND_F_TERMINATING) == 0 {
        return true;
    }
    svc.flags & SVC_F_TERMINATING_FALLBACK != 0 && b.flags & BACKEND_F_TERMINATING != 0 && b.flags & BACKEND_F_UNSERVING == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_the_endpoint_rules() {
        let svc = Service::default();
        let fallback = Service { flags: SVC_F_TERMINATING_FALLBACK, ..Default::default() };
        let ready = Backend::default();
        let unready = Backend { flags: BACKEND_F_UNREADY, ..Default::default() };
        let terminating = Backend { flags: BACKEND_F_UNREADY | BACKEND_F_TERMINATING, ..Default::default() };
        let gone = Backend { flags: BACKEND_F_UNREADY | BACKEND_F_TERMINATING | BACKEND_F_UNSERVING, ..Default::default() };
        assert!(eligible(&ready, &svc));
        assert!(!eligible(&unready, &svc), "an unready endpoint takes no new connection");
        assert!(!eligible(&unready, &fallback));
        assert!(!eligible(&terminating, &svc));
        assert!(eligible(&terminating, &fallback), "serving + terminating is the fallback");
        assert!(!eligible(&gone, &fallback));
    }

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
