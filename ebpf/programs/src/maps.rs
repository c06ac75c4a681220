//! Map definitions. Names and sizes come from `weir_common::maps`; every map
//! is pinned by name so a restarted agent and the CLI find the same state.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use weir_common::{
    maps::{DP_ERRORS_MAX_ENTRIES, IF_STATS_MAX_ENTRIES},
    stats::{IfStats, IfStatsKey},
};

#[map(name = "WEIR_IF_STATS")]
pub static IF_STATS: PerCpuHashMap<IfStatsKey, IfStats> =
    PerCpuHashMap::pinned(IF_STATS_MAX_ENTRIES, 0);

#[map(name = "WEIR_DP_ERRORS")]
pub static DP_ERRORS: PerCpuArray<u64> = PerCpuArray::pinned(DP_ERRORS_MAX_ENTRIES, 0);
