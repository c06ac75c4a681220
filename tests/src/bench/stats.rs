//! Statistics for a noisy machine: percentiles, and the median of paired
//! ratios with a bootstrap 95 % interval.
//!
//! A "× direct" figure comes from slices measured in pairs (one through
//! the ClusterIP, one pod to pod, alternating which goes first), so drift
//! between the two halves of a pair is small; the ratio of each pair is
//! one observation, and the interval says how far the median of those
//! observations can be trusted.

use serde::Serialize;

/// `p` (0..=1) of already sorted values, nearest rank; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The median of `v`: the middle value, or the mean of the two middle
/// ones (0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of a set of ratios and its bootstrap 95 % interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Ratio {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
    /// Pairs the figure is made of.
    pub pairs: usize,
}

/// Observations below which no interval is shown: a bootstrap of fewer
/// says nothing.
pub const MIN_FOR_INTERVAL: usize = 5;

impl Ratio {
    /// `0.97 (0.95–0.99)`; `0.97 (n=2)` with too few observations for an
    /// interval; `-` without any.
    pub fn show(&self) -> String {
        match self.pairs {
            0 => "-".into(),
            n if n < MIN_FOR_INTERVAL => format!("{:.2} (n={n})", self.median),
            _ => format!("{:.2} ({:.2}–{:.2})", self.median, self.lo, self.hi),
        }
    }
}

/// A small deterministic generator (xorshift64*): the interval of a given
/// set of pairs is reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Resamples drawn for an interval.
const RESAMPLES: usize = 2000;

/// The median of `num / den` over `pairs`, with a percentile-bootstrap
/// 95 % interval (pairs resampled with replacement). Pairs with a zero
/// denominator are left out.
pub fn ratio_of_pairs(pairs: &[(f64, f64)]) -> Ratio {
    let ratios: Vec<f64> = pairs.iter().filter(|(_, d)| *d > 0.0).map(|(n, d)| n / d).collect();
    if ratios.is_empty() {
        return Ratio::default();
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut medians = Vec::with_capacity(RESAMPLES);
    let mut draw = vec![0.0; ratios.len()];
    for _ in 0..RESAMPLES {
        for d in draw.iter_mut() {
            *d = ratios[rng.below(ratios.len())];
        }
        medians.push(median(draw.clone()));
    }
    medians.sort_by(f64::total_cmp);
    Ratio { median: median(ratios.clone()), lo: percentile(&medians, 0.025), hi: percentile(&medians, 0.975), pairs: ratios.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_pairs_give_a_point_interval() {
        let r = ratio_of_pairs(&[(2.0, 2.0); 9]);
        assert_eq!((r.median, r.lo, r.hi, r.pairs), (1.0, 1.0, 1.0, 9));
    }

    #[test]
    fn the_interval_holds_the_median_and_widens_with_spread() {
        let tight: Vec<(f64, f64)> = (0..20).map(|i| (0.95 + (i % 3) as f64 * 0.01, 1.0)).collect();
        let wide: Vec<(f64, f64)> = (0..20).map(|i| (0.6 + (i % 9) as f64 * 0.1, 1.0)).collect();
        let (t, w) = (ratio_of_pairs(&tight), ratio_of_pairs(&wide));
        assert!(t.lo <= t.median && t.median <= t.hi, "{t:?}");
        assert!(w.lo <= w.median && w.median <= w.hi, "{w:?}");
        assert!(w.hi - w.lo > t.hi - t.lo, "{t:?} {w:?}");
        assert!((t.median - 0.96).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn zero_denominators_are_left_out_and_none_is_no_figure() {
        assert_eq!(ratio_of_pairs(&[(1.0, 0.0)]).pairs, 0);
        assert_eq!(ratio_of_pairs(&[(1.0, 0.0), (3.0, 2.0)]).median, 1.5);
        assert_eq!(Ratio::default().show(), "-");
        assert_eq!(ratio_of_pairs(&[(1.0, 2.0), (2.0, 2.0)]).show(), "0.75 (n=2)");
    }

    #[test]
    fn an_even_count_has_the_mean_of_its_middle_values_for_median() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 501.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
