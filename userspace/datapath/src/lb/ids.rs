//! Where the id counters may resume after a restart (`WEIR_LB_IDS`).
//!
//! Within one agent run, service and backend ids only climb. An agent
//! start used to rebuild each counter as the largest id in the maps plus
//! one, so an id freed just before a restart (a removed backend, a
//! deleted service) could come back for another address while a flow's
//! conntrack entry still named it. The marks close that: every id handed
//! out is below its mark, and a start resumes from the larger of the mark
//! and the maps. A mark is written a block of ids ahead ([`RESERVE`]), so
//! a cold sync of a million backends writes it a few hundred times, and a
//! restart skips at most a block.

use aya::maps::{Array, MapData};
use weir_common::{lb::LbIds, maps::LB_IDS};

use crate::{pinned, pins::PinLayout, DatapathError};

/// Ids reserved by one write of a mark.
pub(super) const RESERVE: u32 = 4096;

pub(super) struct IdMarks {
    map: Array<MapData, LbIds>,
    /// What the map holds.
    marks: LbIds,
}

impl IdMarks {
    pub(super) fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        let map: Array<MapData, LbIds> = pinned::array(layout, LB_IDS)?;
        let marks = map.get(&0, 0).map_err(|source| DatapathError::Map { name: LB_IDS, source })?;
        Ok(Self { map, marks })
    }

    /// The marks the previous agents left (zero for a fresh datapath).
    pub(super) fn marks(&self) -> LbIds {
        self.marks
    }

    /// Makes the marks cover the ids the maps already hold (an agent from
    /// before the marks left them at zero): ids below `next_svc_id` and
    /// `next_backend_id` are taken.
    pub(super) fn cover(&mut self, next_svc_id: u32, next_backend_id: u32) -> Result<(), DatapathError> {
        let marks = LbIds { next_svc_id: next_svc_id.max(self.marks.next_svc_id), next_backend_id: next_backend_id.max(self.marks.next_backend_id) };
        if marks == self.marks {
            return Ok(());
        }
        self.write(marks)
    }

    /// Records that service id `id` is handed out, before anything names it.
    pub(super) fn svc(&mut self, id: u32) -> Result<(), DatapathError> {
        if id < self.marks.next_svc_id {
            return Ok(());
        }
        self.write(LbIds { next_svc_id: id.saturating_add(RESERVE), ..self.marks })
    }

    /// Records that backend id `id` is handed out, before anything names it.
    pub(super) fn backend(&mut self, id: u32) -> Result<(), DatapathError> {
        if id < self.marks.next_backend_id {
            return Ok(());
        }
        self.write(LbIds { next_backend_id: id.saturating_add(RESERVE), ..self.marks })
    }

    fn write(&mut self, marks: LbIds) -> Result<(), DatapathError> {
        self.map.set(0, marks, 0).map_err(|source| DatapathError::Map { name: LB_IDS, source })?;
        self.marks = marks;
        Ok(())
    }
}
