//! Conntrack housekeeping from userspace: collecting stale entries and
//! purging the flows of removed backends. The liveness rule is
//! `weir_logic::ct`, the one the kernel uses.

use std::collections::HashSet;

use aya::maps::{HashMap, MapData};
use weir_common::{
    config::DatapathConfig,
    ct::{CtEntry, CtKey, CT_F_HAIRPIN, CT_SVC_FWD, CT_SVC_REV},
    maps::{CONFIG, CT},
};
use weir_logic::ct::is_alive;

use crate::{pinned, pins::PinLayout, DatapathError};

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The other direction's key of a service flow entry.
pub fn twin_key(key: &CtKey, e: &CtEntry, cfg: &DatapathConfig) -> Option<CtKey> {
    match key.kind {
        CT_SVC_FWD => {
            let dst = if e.flags & CT_F_HAIRPIN != 0 { cfg.hairpin_addr } else { key.saddr };
            Some(CtKey { saddr: e.nat_addr, daddr: dst, sport: e.nat_port, dport: key.sport, proto: key.proto, kind: CT_SVC_REV, _pad: 0 })
        }
        CT_SVC_REV => Some(CtKey {
            saddr: e.orig_addr,
            daddr: e.nat_addr,
            sport: key.dport,
            dport: e.nat_port,
            proto: key.proto,
            kind: CT_SVC_FWD,
            _pad: 0,
        }),
        _ => None,
    }
}

/// The pinned conntrack map.
pub struct Conntrack {
    map: HashMap<MapData, CtKey, CtEntry>,
    cfg: DatapathConfig,
}

impl Conntrack {
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        let map = pinned::hash(layout, CT)?;
        let cfg_map = pinned::array::<DatapathConfig>(layout, CONFIG)?;
        let cfg = match cfg_map.get(&0, 0) {
            Ok(c) if c.ct_udp_timeout_s != 0 => c,
            _ => DatapathConfig::DEFAULT,
        };
        Ok(Self { map, cfg })
    }

    /// Every entry (key, value).
    pub fn entries(&self) -> Vec<(CtKey, CtEntry)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Deletes entries whose flow is dead: the entry and its twin are both
    /// past their expiry at `now_ns`. Returns how many were deleted.
    pub fn gc(&mut self, now_ns: u64) -> usize {
        let entries = self.entries();
        let alive: HashSet<CtKey> = entries.iter().filter(|(_, e)| is_alive(e, now_ns)).map(|(k, _)| *k).collect();
        let mut deleted = 0;
        for (k, e) in &entries {
            if alive.contains(k) {
                continue;
            }
            let twin_alive = twin_key(k, e, &self.cfg).is_some_and(|t| alive.contains(&t));
            if !twin_alive && self.map.remove(k).is_ok() {
                deleted += 1;
            }
        }
        deleted
    }

    /// Deletes the flows of `(svc_id, backend_id)` pairs; `svc_id` None
    /// matches every service. Returns how many entries were deleted.
    pub fn purge(&mut self, svc_id: Option<u32>, backend_ids: &HashSet<u32>) -> usize {
        if backend_ids.is_empty() {
            return 0;
        }
        let doomed: Vec<CtKey> = self
            .entries()
            .into_iter()
            .filter(|(_, e)| backend_ids.contains(&e.backend_id) && svc_id.is_none_or(|s| s == e.svc_id))
            .map(|(k, _)| k)
            .collect();
        doomed.iter().filter(|k| self.map.remove(k).is_ok()).count()
    }

    /// Deletes matching entries; returns how many.
    pub fn flush(&mut self, mut pred: impl FnMut(&CtKey, &CtEntry) -> bool) -> usize {
        let doomed: Vec<CtKey> = self.entries().into_iter().filter(|(k, e)| pred(k, e)).map(|(k, _)| k).collect();
        doomed.iter().filter(|k| self.map.remove(k).is_ok()).count()
    }
}
