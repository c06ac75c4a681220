//! Where weir's BPF time goes (`weir-bench --bpf-stats`): the run time
//! and run count the kernel keeps for every program while statistics are
//! on (`BPF_ENABLE_STATS`), read around each slice of a paired
//! measurement, so a ClusterIP connection's cost and a direct one's are
//! told apart program by program.
//!
//! Statistics cost every program run two clock reads, so they are on only
//! during these extra slices, after a cell's published measurements.

use std::collections::BTreeMap;

use aya::sys::{enable_stats, Stats, SyscallError};

use super::{measure::Latency, paired::Paired};

/// Every loaded program's id, name, runs and run time (ns).
struct Snapshot(BTreeMap<u32, (String, u64, u64)>);

fn snapshot() -> Snapshot {
    let programs = aya::programs::loaded_programs().filter_map(Result::ok);
    Snapshot(
        programs
            .map(|p| (p.id(), (p.name_as_str().unwrap_or("?").to_string(), p.run_count(), p.run_time().as_nanos() as u64)))
            .collect(),
    )
}

/// Runs and run time (ns) by program name over a set of slices, and the
/// units (connections, requests) those slices completed.
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub units: u64,
    pub programs: BTreeMap<String, (u64, u64)>,
}

impl Side {
    /// Adds what ran between `before` and `after` (a program loaded in
    /// between counts from zero) over `units` units.
    fn add(&mut self, before: &Snapshot, after: &Snapshot, units: u64) {
        self.units += units;
        for (id, (name, runs, ns)) in &after.0 {
            let (r0, n0) = before.0.get(id).map_or((0, 0), |(_, r, n)| (*r, *n));
            if *runs > r0 {
                let e = self.programs.entry(name.clone()).or_default();
                e.0 += runs - r0;
                e.1 += ns.saturating_sub(n0);
            }
        }
    }

    /// Runs per unit and ns per unit of `program`.
    pub fn per_unit(&self, program: &str) -> (f64, f64) {
        let (runs, ns) = self.programs.get(program).copied().unwrap_or_default();
        let u = self.units.max(1) as f64;
        (runs as f64 / u, ns as f64 / u)
    }

    /// ns per unit over every program.
    pub fn total_per_unit(&self) -> f64 {
        self.programs.values().map(|(_, ns)| *ns).sum::<u64>() as f64 / self.units.max(1) as f64
    }
}

/// One workload's BPF time through the ClusterIP and pod to pod.
#[derive(Clone, Debug, Default)]
pub struct BpfTime {
    pub vip: Side,
    pub direct: Side,
}

impl BpfTime {
    /// Pools `other` (another repetition of the same cell) into this one.
    pub fn pool(&mut self, other: &BpfTime) {
        for (mine, theirs) in [(&mut self.vip, &other.vip), (&mut self.direct, &other.direct)] {
            mine.units += theirs.units;
            for (name, (r, n)) in &theirs.programs {
                let e = mine.programs.entry(name.clone()).or_default();
                e.0 += r;
                e.1 += n;
            }
        }
    }
}

/// `pairs` pairs of slices as [`Paired::run`] makes them, with statistics
/// on, each slice's program time charged to its side per completed unit
/// (`Latency::samples`).
pub fn paired(pairs: usize, mut vip: impl FnMut() -> Latency, mut direct: impl FnMut() -> Latency) -> Result<BpfTime, SyscallError> {
    let _on = enable_stats(Stats::RunTime)?;
    let mut t = BpfTime::default();
    let (v, d) = (&mut t.vip, &mut t.direct);
    Paired::run(
        pairs,
        |_| {
            let before = snapshot();
            let l = vip();
            v.add(&before, &snapshot(), l.samples);
            l
        },
        |_| {
            let before = snapshot();
            let l = direct();
            d.add(&before, &snapshot(), l.samples);
            l
        },
    );
    Ok(t)
}

/// A Markdown table of `cells` (services, workload name, unit, time): per
/// program, runs and ns per unit on each side and the difference.
pub fn table(cells: &[(usize, &str, &str, BpfTime)]) -> String {
    let mut md = String::from(
        "| services | workload | program | ClusterIP runs/unit | ClusterIP ns/unit | direct runs/unit | direct ns/unit | ClusterIP − direct ns/unit |\n\
         |---:|---|---|---:|---:|---:|---:|---:|\n",
    );
    for (n, workload, unit, t) in cells {
        let mut names: Vec<&String> = t.vip.programs.keys().chain(t.direct.programs.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let ((vr, vn), (dr, dn)) = (t.vip.per_unit(name), t.direct.per_unit(name));
            md.push_str(&format!("| {n} | {workload} (per {unit}) | {name} | {vr:.2} | {vn:.0} | {dr:.2} | {dn:.0} | {:+.0} |\n", vn - dn));
        }
        let (vt, dt) = (t.vip.total_per_unit(), t.direct.total_per_unit());
        md.push_str(&format!(
            "| {n} | {workload} (per {unit}) | **all** ({} and {} {unit}s) | | {vt:.0} | | {dt:.0} | {:+.0} |\n",
            t.vip.units,
            t.direct.units,
            vt - dt
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(v: &[(u32, &str, u64, u64)]) -> Snapshot {
        Snapshot(v.iter().map(|(id, n, r, t)| (*id, (n.to_string(), *r, *t))).collect())
    }

    #[test]
    fn a_side_charges_each_program_what_ran_between_snapshots_per_unit() {
        let mut s = Side::default();
        let before = snap(&[(1, "connect4", 10, 1000), (2, "from_pod", 5, 500), (3, "idle", 7, 70)]);
        let after = snap(&[(1, "connect4", 30, 9000), (2, "from_pod", 45, 4500), (3, "idle", 7, 70), (4, "new", 2, 40)]);
        s.add(&before, &after, 20);
        assert_eq!(s.per_unit("connect4"), (1.0, 400.0));
        assert_eq!(s.per_unit("from_pod"), (2.0, 200.0));
        assert_eq!(s.per_unit("new"), (0.1, 2.0), "a program loaded in between counts from zero");
        assert!(!s.programs.contains_key("idle"), "a program that did not run is left out");
        assert_eq!(s.total_per_unit(), 602.0);
    }

    #[test]
    fn pooled_repetitions_add_up_and_the_table_shows_the_difference() {
        let mut a = BpfTime::default();
        a.vip.add(&snap(&[]), &snap(&[(1, "connect4", 10, 8000)]), 10);
        a.direct.add(&snap(&[]), &snap(&[(1, "connect4", 10, 2000)]), 10);
        let mut pooled = a.clone();
        pooled.pool(&a);
        assert_eq!(pooled.vip.units, 20);
        assert_eq!(pooled.vip.per_unit("connect4"), (1.0, 800.0));
        let md = table(&[(10, "short", "connection", pooled)]);
        assert!(md.contains("| 10 | short (per connection) | connect4 | 1.00 | 800 | 1.00 | 200 | +600 |"), "{md}");
    }
}
