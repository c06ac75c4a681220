//! Paired measurements: short slices through the ClusterIP and pod to pod
//! (the direct path), alternating, so that "× direct" compares two halves
//! measured moments apart rather than two runs seconds apart.

use serde::{Deserialize, Serialize};

use super::{
    measure::Latency,
    stats::{median, ratio_of_pairs, Ratio},
};

/// Slices of one metric, `vip[i]` and `direct[i]` measured back to back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Paired {
    pub vip: Vec<Latency>,
    pub direct: Vec<Latency>,
}

impl Paired {
    /// Runs `pairs` pairs of slices; pair `i` runs the VIP slice first when
    /// `i` is even and the direct one first when it is odd, so neither
    /// side always pays for going first (or second).
    pub fn run(pairs: usize, mut vip: impl FnMut(usize) -> Latency, mut direct: impl FnMut(usize) -> Latency) -> Self {
        let mut p = Paired::default();
        for i in 0..pairs {
            // A run stopped by a signal unwinds between slices, so the
            // topology it measures is removed (`bench::interrupt`).
            super::interrupt::check();
            let (v, d) = if i % 2 == 0 {
                let v = vip(i);
                (v, direct(i))
            } else {
                let d = direct(i);
                (vip(i), d)
            };
            p.vip.push(v);
            p.direct.push(d);
        }
        p
    }

    /// The median of a metric over the VIP slices.
    pub fn vip_median(&self, f: impl Fn(&Latency) -> f64) -> f64 {
        median(self.vip.iter().map(f).collect())
    }

    /// The median of a metric over the direct slices.
    pub fn direct_median(&self, f: impl Fn(&Latency) -> f64) -> f64 {
        median(self.direct.iter().map(f).collect())
    }

    /// Failures over every VIP slice.
    pub fn vip_failures(&self) -> u64 {
        self.vip.iter().map(|l| l.failures).sum()
    }
}

/// Which way a metric is better.
#[derive(Clone, Copy)]
pub enum Better {
    /// A rate: the ratio is VIP / direct.
    Higher,
    /// A latency: the ratio is direct / VIP, so that for both kinds a
    /// ratio below 1 means the ClusterIP path is worse.
    Lower,
}

/// "× direct" of a metric over the runs pooled. Each observation is one
/// block of two consecutive pairs (VIP, direct, direct, VIP): the sums of
/// both sides over a block, so a drift during the measurement (a
/// connection-tracking table filling up, the machine changing speed)
/// weighs on both sides alike. A run's odd last pair is a block alone.
pub fn ratio<'a>(runs: impl IntoIterator<Item = &'a Paired>, better: Better, f: impl Fn(&Latency) -> f64) -> Ratio {
    let mut blocks: Vec<(f64, f64)> = Vec::new();
    for p in runs {
        let valid: Vec<(f64, f64)> = p.vip.iter().zip(&p.direct).map(|(v, d)| (f(v), f(d))).collect();
        for chunk in valid.chunks(2) {
            // No direct figure: nothing to compare with.
            if chunk.iter().any(|(_, d)| *d <= 0.0) {
                continue;
            }
            let (v, d) = chunk.iter().fold((0.0, 0.0), |(a, b), (v, d)| (a + v, b + d));
            // A ClusterIP slice that measured nothing (every request
            // failed) is a ratio of 0, not a gap.
            let failed = chunk.iter().any(|(v, _)| *v <= 0.0);
            blocks.push(match (better, failed) {
                (_, true) => (0.0, 1.0),
                (Better::Higher, false) => (v, d),
                (Better::Lower, false) => (d, v),
            });
        }
    }
    ratio_of_pairs(&blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_s: f64, p99_us: f64) -> Latency {
        Latency { per_s, p99_us, ..Latency::default() }
    }

    #[test]
    fn pairs_alternate_which_side_goes_first() {
        let order = std::cell::RefCell::new(Vec::new());
        let p = Paired::run(
            4,
            |i| {
                order.borrow_mut().push(format!("v{i}"));
                rate(1.0, 0.0)
            },
            |i| {
                order.borrow_mut().push(format!("d{i}"));
                rate(2.0, 0.0)
            },
        );
        assert_eq!(order.into_inner(), ["v0", "d0", "d1", "v1", "v2", "d2", "d3", "v3"]);
        assert_eq!((p.vip.len(), p.direct.len()), (4, 4));
    }

    #[test]
    fn ratios_pool_runs_and_point_the_same_way_for_rates_and_latencies() {
        let a = Paired { vip: vec![rate(90.0, 200.0)], direct: vec![rate(100.0, 100.0)] };
        let b = Paired { vip: vec![rate(45.0, 50.0)], direct: vec![rate(50.0, 25.0)] };
        let c = Paired { vip: vec![rate(1.0, 1.0)], direct: vec![rate(0.0, 10.0)] };
        let r = ratio([&a, &b, &c], Better::Higher, |l| l.per_s);
        assert_eq!((r.median, r.pairs), (0.9, 2), "a block without a direct figure is left out");
        let l = ratio([&a, &b], Better::Lower, |l| l.p99_us);
        assert_eq!((l.median, l.pairs), (0.5, 2), "twice the direct latency is 0.5× direct");
    }

    #[test]
    fn a_clusterip_slice_that_measured_nothing_is_a_ratio_of_zero() {
        let failed = Paired { vip: vec![rate(0.0, 0.0), rate(0.0, 0.0), rate(0.0, 0.0)], direct: vec![rate(10.0, 5.0); 3] };
        for better in [Better::Higher, Better::Lower] {
            let r = ratio([&failed], better, |l| if matches!(better, Better::Higher) { l.per_s } else { l.p99_us });
            assert_eq!((r.median, r.pairs), (0.0, 2));
        }
    }

    #[test]
    fn a_block_of_two_pairs_cancels_a_steady_drift() {
        // Both sides would measure 100, but every slice is 10 slower than
        // the one before: V D D V V D D V.
        let at = |t: f64| rate(100.0 - 10.0 * t, 0.0);
        let p = Paired { vip: vec![at(0.0), at(3.0), at(4.0), at(7.0)], direct: vec![at(1.0), at(2.0), at(5.0), at(6.0)] };
        let r = ratio([&p], Better::Higher, |l| l.per_s);
        assert_eq!((r.median, r.pairs), (1.0, 2), "{r:?}");
    }
}
