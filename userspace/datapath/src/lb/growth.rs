//! The selection table grows. A service whose table does not fit
//! `WEIR_LB_TABLE` makes it grow instead of failing: the table is rebuilt
//! larger by the same migration an upgrade runs ([`crate::migrate`]): a
//! new map beside the old one, every slot copied, every pinned link
//! switched to programs over the new map in one `BPF_LINK_UPDATE`, the new
//! pin renamed over the old. Slots keep their indexes, so every service's
//! `table_base` stays valid, and packets are judged throughout (by the old
//! programs until their link is switched, by the new ones after). The
//! objects the agent attaches new links with load again over the new map
//! before their next attach (`loader::LoadedOver`).
//!
//! A batch reserves what its new tables need first ([`Lb::reserve`]), so
//! a cold sync of 10,000 services grows the table once, not once per
//! doubling.

use std::time::{Duration, Instant};

use weir_common::maps::LB_TABLE;
use weir_logic::maglev;

use super::{eligible_idents, frontend_key, Lb, Selection, ServiceSpec, SVC_F_RANDOM};
use crate::{loader::LoadOptions, migrate, mmap::MmapU32Array, DatapathError};

/// How the table may grow.
#[derive(Clone, Copy, Debug)]
pub(super) struct Growth {
    /// The options the datapath was loaded with (the table's size updated
    /// as it grows): a rebuild checks every map against them.
    opts: LoadOptions,
    /// The table never grows past this many slots.
    max_slots: u32,
    /// Growths so far.
    count: u32,
}

/// One growth of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grown {
    pub from: u32,
    pub to: u32,
    /// Pinned links switched to programs over the new table.
    pub links: usize,
    pub took: Duration,
}

impl Lb {
    /// Lets the selection table grow, up to `max_slots`, when services do
    /// not fit; `opts` are the options the datapath was loaded with.
    /// Without this, a service that does not fit fails with
    /// [`DatapathError::LbTableFull`].
    pub fn grow_with(&mut self, opts: LoadOptions, max_slots: u32) {
        let opts = LoadOptions { lb_table_slots: self.slab.capacity(), ..opts };
        self.growth = Some(Growth { opts, max_slots, count: 0 });
    }

    /// How often the table grew since [`Lb::grow_with`].
    pub fn table_growths(&self) -> u32 {
        self.growth.map_or(0, |g| g.count)
    }

    /// Slots the new selection tables of `specs` take: those of frontends
    /// not programmed yet, and of those whose table changes size.
    pub fn slots_wanted<'a>(&self, specs: impl IntoIterator<Item = &'a ServiceSpec>) -> u64 {
        let mut wanted = 0u64;
        for s in specs {
            let n = eligible_idents(s).len() as u32;
            if n == 0 {
                continue;
            }
            let old = self.services.get(&frontend_key(&s.frontend)).map(|o| &o.service);
            let old_len = old.map_or(0, |o| o.table_len);
            let old_random = old.is_some_and(|o| o.flags & SVC_F_RANDOM != 0);
            let len = if s.selection == Selection::Random { n } else { maglev::resize(if old_random { 0 } else { old_len }, n) };
            if len != old_len {
                wanted += u64::from(len);
            }
        }
        wanted
    }

    /// Grows the table ahead of a batch whose new tables need `wanted`
    /// slots, when fewer are free: one rebuild for the whole batch rather
    /// than one per service that does not fit. Nothing when growth is off
    /// or the table is at its maximum (the services that do not fit then
    /// fail one by one).
    pub fn reserve(&mut self, wanted: u64) -> Result<Option<Grown>, DatapathError> {
        let Some(g) = self.growth else { return Ok(None) };
        if wanted <= u64::from(self.slab.free_now()) {
            return Ok(None);
        }
        let capacity = self.slab.capacity();
        match target(capacity, u64::from(self.slab.used()) + wanted, g.max_slots) {
            Some(to) => self.grow_to(g, to).map(Some),
            None => Ok(None),
        }
    }

    /// Grows the table so that a range of `needed` slots fits whatever
    /// the free ranges are; `None` when growth is off or at its maximum.
    pub(super) fn grow_for(&mut self, needed: u32) -> Result<Option<Grown>, DatapathError> {
        let Some(g) = self.growth else { return Ok(None) };
        let capacity = self.slab.capacity();
        match target(capacity, u64::from(capacity) + u64::from(needed), g.max_slots) {
            Some(to) => self.grow_to(g, to).map(Some),
            None => Ok(None),
        }
    }

    fn grow_to(&mut self, mut g: Growth, to: u32) -> Result<Grown, DatapathError> {
        let from = self.slab.capacity();
        let start = Instant::now();
        let fail = |source: DatapathError| DatapathError::LbTableGrowth { from, to, source: Box::new(source) };
        let opts = LoadOptions { lb_table_slots: to, ..g.opts };
        let report = migrate::prepare(&self.layout, &opts).map_err(fail)?;
        let table = MmapU32Array::open(&self.layout, LB_TABLE).map_err(fail)?;
        let now = table.len();
        // A batch in bulk mode (`Lb::bulk`) stays in it on the new table.
        table.map_ahead(self.table_map.ahead());
        self.table_map = table;
        self.slab.grow(now);
        g.opts.lb_table_slots = now;
        g.count += 1;
        self.growth = Some(g);
        let grown = Grown { from, to: now, links: report.links_swapped, took: start.elapsed() };
        tracing::info!(from, to = now, links = grown.links, took_ms = grown.took.as_millis() as u64, "grew the selection table (WEIR_LB_TABLE)");
        Ok(grown)
    }
}

/// The size to grow a table of `capacity` slots to, for `need` slots: a
/// power of two, at least double (so that growths stay rare), at most
/// `max`; `None` when that is no larger than now.
fn target(capacity: u32, need: u64, max: u32) -> Option<u32> {
    let to = need.max(u64::from(capacity) * 2).next_power_of_two().min(u64::from(max));
    (to > u64::from(capacity)).then_some(to as u32)
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn grows_to_a_power_of_two_at_least_double_and_never_past_the_maximum() {
        assert_eq!(target(256, 300, 1 << 20), Some(512));
        assert_eq!(target(256, 2_200, 1 << 20), Some(4_096), "a batch's need at once");
        assert_eq!(target(4_194_304, 10_090_000, 1 << 28), Some(16_777_216), "10,000 services of 10 endpoints");
        assert_eq!(target(256, 2_200, 1_000), Some(1_000), "as far as the maximum allows");
        assert_eq!(target(1_000, 2_200, 1_000), None, "at the maximum");
    }
}
