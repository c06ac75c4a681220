//! Datapath counters read from the pinned maps at every scrape: drops by
//! reason, datapath errors, conntrack events; and the conntrack table's
//! fill level and evictions from the collector's last scan.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};
use weir_datapath::{ct::CtAccount, stats, PinLayout};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NorthSouthLabels {
    kind: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// The collector; the agent updates the conntrack scan figures.
#[derive(Debug)]
pub struct DatapathCollector {
    layout: PinLayout,
    ct_entries: AtomicU64,
    ct_live: AtomicU64,
    ct_capacity: AtomicU64,
    /// The highest eviction count seen (a counter never goes down; the
    /// estimate can dip while a scan races with new flows).
    ct_evicted: AtomicU64,
}

impl DatapathCollector {
    pub fn new(layout: PinLayout) -> Self {
        Self { layout, ct_entries: AtomicU64::new(0), ct_live: AtomicU64::new(0), ct_capacity: AtomicU64::new(0), ct_evicted: AtomicU64::new(0) }
    }

    /// Records the figures of a conntrack scan.
    pub fn set_ct(&self, a: &CtAccount) {
        self.ct_entries.store(a.entries, Ordering::Relaxed);
        self.ct_live.store(a.live, Ordering::Relaxed);
        self.ct_capacity.store(a.capacity, Ordering::Relaxed);
        self.ct_evicted.fetch_max(a.evicted, Ordering::Relaxed);
    }

    /// The eviction count reported so far.
    pub fn ct_evicted(&self) -> u64 {
        self.ct_evicted.load(Ordering::Relaxed)
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Ok(drops) = stats::read_drops(&self.layout) {
            let mut m = encoder.encode_descriptor(
                "datapath_drops",
                "Packets the datapath dropped or rejected, by reason",
                None,
                MetricType::Counter,
            )?;
            for (r, n) in drops {
                ConstCounter::new(n).encode(m.encode_family(&ReasonLabels { reason: r.as_str().into() })?)?;
            }
        }
        if let Ok(errors) = stats::read_dp_errors(&self.layout) {
            let mut m = encoder.encode_descriptor("datapath_errors", "Things the datapath could not do, by error", None, MetricType::Counter)?;
            for (e, n) in errors {
                ConstCounter::new(n).encode(m.encode_family(&ErrorLabels { error: e.as_str().into() })?)?;
            }
        }
        // Pinned once the node object is loaded.
        if let Ok(flows) = stats::read_north_south(&self.layout) {
            let mut m = encoder.encode_descriptor(
                "north_south_flows",
                "New flows from outside the node to a frontend, by frontend kind and verdict (new, dropped, rejected)",
                None,
                MetricType::Counter,
            )?;
            for (kind, verdict, n) in flows {
                ConstCounter::new(n).encode(m.encode_family(&NorthSouthLabels { kind: kind.as_str().into(), verdict: verdict.into() })?)?;
            }
        }
        // Pinned once the node object is loaded (counted only with --xdp).
        if let Ok((forward, reply)) = weir_datapath::xdp::packets(&self.layout) {
            let mut m = encoder.encode_descriptor(
                "xdp_packets",
                "Packets of established north-south flows the XDP fast path translated and sent back out, by direction",
                None,
                MetricType::Counter,
            )?;
            for (direction, n) in [("forward", forward), ("reply", reply)] {
                ConstCounter::new(n).encode(m.encode_family(&DirectionLabels { direction: direction.into() })?)?;
            }
        }
        if let Ok(events) = stats::read_ct_stats(&self.layout) {
            let mut m = encoder.encode_descriptor(
                "conntrack_events",
                "Conntrack table events: keys created and deleted, failed inserts, quota refusals, rebuilt halves, remapped ports, carried-over entries, flows admitted past a stale per-pod count (quota_lifted: no agent collecting)",
                None,
                MetricType::Counter,
            )?;
            for (e, n) in events {
                ConstCounter::new(n).encode(m.encode_family(&EventLabels { event: e.as_str().into() })?)?;
            }
        }
        let evicted = ConstCounter::new(self.ct_evicted());
        evicted.encode(encoder.encode_descriptor(
            "conntrack_evictions",
            "Conntrack entries the LRU evicted to make room (live, or expired and not yet collected): created - deleted - present",
            None,
            evicted.metric_type(),
        )?)?;
        let mut m = encoder.encode_descriptor("conntrack_entries", "Conntrack entries at the last collection, all and live", None, MetricType::Gauge)?;
        ConstGauge::new(self.ct_entries.load(Ordering::Relaxed) as i64).encode(m.encode_family(&StateLabels { state: "all".into() })?)?;
        ConstGauge::new(self.ct_live.load(Ordering::Relaxed) as i64).encode(m.encode_family(&StateLabels { state: "live".into() })?)?;
        gauge(&mut encoder, "conntrack_capacity", "Conntrack table capacity", self.ct_capacity.load(Ordering::Relaxed))?;
        if let Ok(share) = weir_datapath::ct::ShareUse::read(&self.layout) {
            let limit_help = "Conntrack entries one pod may hold (--ct-max-per-endpoint; 0: no limit); its new flows beyond it are refused (ct_quota) while an agent keeps the counts fresh";
            gauge(&mut encoder, "conntrack_pod_share_limit", limit_help, share.limit)?;
            let fullest_help = "Conntrack entries held by the pod that holds the most (alert as it nears conntrack_pod_share_limit; weir status names the pod)";
            gauge(&mut encoder, "conntrack_pod_share_fullest", fullest_help, share.fullest_entries)?;
        }
        Ok(())
    }
}

/// One unlabelled gauge.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}
