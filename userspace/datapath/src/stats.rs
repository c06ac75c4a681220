//! Reading the interface counters from the pinned maps (no agent needed).

use aya::maps::{PerCpuArray, PerCpuHashMap};
use weir_common::{
    drop::DropReason,
    maps::{DP_ERRORS, DROPS, IF_STATS},
    stats::{Direction, DpError, IfStats, IfStatsKey},
};
use weir_logic::counters::sum;

use crate::{pins::PinLayout, DatapathError};

/// One interface and direction, summed over all CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfStatsRow {
    pub ifindex: u32,
    pub direction: Direction,
    pub stats: IfStats,
}

use crate::pinned::open;

/// Reads every interface counter, sorted by ifindex then direction.
pub fn read_if_stats(layout: &PinLayout) -> Result<Vec<IfStatsRow>, DatapathError> {
    let map = open(layout, IF_STATS)?;
    let map: PerCpuHashMap<_, IfStatsKey, IfStats> =
        PerCpuHashMap::try_from(map).map_err(|source| DatapathError::Map { name: IF_STATS, source })?;
    let mut rows = Vec::new();
    for item in map.iter() {
        let (key, values) = item.map_err(|source| DatapathError::Map { name: IF_STATS, source })?;
        let Some(direction) = Direction::from_u32(key.direction) else { continue };
        rows.push(IfStatsRow { ifindex: key.ifindex, direction, stats: sum(values.iter()) });
    }
    rows.sort_by_key(|r| (r.ifindex, r.direction as u32));
    Ok(rows)
}

/// Reads per-CPU u64 counters at `indices` of the array map `name`, summed over CPUs.
fn read_counters<T: Copy>(
    layout: &PinLayout,
    name: &'static str,
    indices: impl IntoIterator<Item = (T, u32)>,
) -> Result<Vec<(T, u64)>, DatapathError> {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(open(layout, name)?).map_err(|source| DatapathError::Map { name, source })?;
    indices
        .into_iter()
        .map(|(t, i)| {
            let values = map.get(&i, 0).map_err(|source| DatapathError::Map { name, source })?;
            Ok((t, values.iter().sum()))
        })
        .collect()
}

/// Reads the datapath error counters, summed over all CPUs.
pub fn read_dp_errors(layout: &PinLayout) -> Result<Vec<(DpError, u64)>, DatapathError> {
    read_counters(layout, DP_ERRORS, DpError::ALL.map(|e| (e, e as u32)))
}

/// Reads the drop and reject counters per reason, summed over all CPUs.
pub fn read_drops(layout: &PinLayout) -> Result<Vec<(DropReason, u64)>, DatapathError> {
    read_counters(layout, DROPS, DropReason::ALL.map(|r| (r, r as u32)))
}

/// Reads the north-south flow counters (`WEIR_NS_FLOWS`), summed over all
/// CPUs: (frontend kind, verdict name, count) for every kind and verdict.
pub fn read_north_south(layout: &PinLayout) -> Result<Vec<(weir_desired::Kind, &'static str, u64)>, DatapathError> {
    use weir_common::stats::{ns_verdict_name, NS_VERDICTS};
    let kinds = [weir_desired::Kind::ClusterIp, weir_desired::Kind::NodePort, weir_desired::Kind::LoadBalancer, weir_desired::Kind::ExternalIp];
    let idx = kinds.iter().flat_map(|k| (0..NS_VERDICTS).map(move |v| ((*k, ns_verdict_name(v)), k.number() * NS_VERDICTS + v)));
    Ok(read_counters(layout, weir_common::maps::NS_FLOWS, idx)?.into_iter().map(|((k, v), n)| (k, v, n)).collect())
}

/// Reads the conntrack counters (`WEIR_CT_STATS`), summed over all CPUs.
pub fn read_ct_stats(layout: &PinLayout) -> Result<Vec<(weir_common::ct::CtStat, u64)>, DatapathError> {
    use weir_common::ct::CtStat;
    read_counters(layout, weir_common::maps::CT_STATS, CtStat::ALL.map(|s| (s, s as u32)))
}
