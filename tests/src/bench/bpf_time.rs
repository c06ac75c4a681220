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

/// Every loaded program's id, name, runs and run time (ns), and whether
/// any program could not be read (unloaded between listing and reading).
struct Snapshot {
    programs: BTreeMap<u32, (String, u64, u64)>,
    missed: bool,
}

fn snapshot() -> Snapshot {
    let mut s = Snapshot { programs: BTreeMap::new(), missed: false };
    for p in aya::programs::loaded_programs() {
        match p {
            Ok(p) => {
                s.programs.insert(p.id(), (p.name_as_str().unwrap_or("?").to_string(), p.run_count(), p.run_time().as_nanos() as u64));
            }
            Err(_) => s.missed = true,
        }
    }
    assert!(!s.programs.is_empty(), "--bpf-stats: no BPF program could be read (are we root?)");
    s
}

/// Runs and run time (ns) by program name over a set of slices, and the
/// units (connections, requests) those slices completed.
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub units: u64,
    pub programs: BTreeMap<String, (u64, u64)>,
}

impl Side {
    /// Adds what ran between `before` and `after` over `units` units. A
    /// program absent from `before` counts from zero if it was loaded in
    /// between (ids only grow); if `before` missed it, it is left out
    /// rather than charged its whole history.
    fn add(&mut self, before: &Snapshot, after: &Snapshot, units: u64) {
        self.units += units;
        let newest = before.programs.keys().next_back().copied().unwrap_or(0);
        for (id, (name, runs, ns)) in &after.programs {
            let (r0, n0) = match before.programs.get(id) {
                Some((_, r, n)) => (*r, *n),
                None if *id > newest || !before.missed => (0, 0),
                None => continue,
            };
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
/// program, runs and ns per unit on each side and the difference (of the
/// rounded figures shown, so the columns agree).
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
            md.push_str(&format!("| {n} | {workload} (per {unit}) | {name} | {vr:.2} | {vn:.0} | {dr:.2} | {dn:.0} | {} |\n", difference(vn, dn)));
        }
        let (vt, dt) = (t.vip.total_per_unit(), t.direct.total_per_unit());
        md.push_str(&format!(
            "| {n} | {workload} (per {unit}) | **every program that ran** ({} and {} {unit}s) | | {vt:.0} | | {dt:.0} | {} |\n",
            t.vip.units,
            t.direct.units,
            difference(vt, dt)
        ));
    }
    md
}

/// `a − b` of the two figures as shown (rounded to whole ns), signed;
/// `0` rather than `-0`.
fn difference(a: f64, b: f64) -> String {
    let d = a.round() - b.round();
    if d == 0.0 { "0".into() } else { format!("{d:+.0}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(v: &[(u32, &str, u64, u64)]) -> Snapshot {
        Snapshot { programs: v.iter().map(|(id, n, r, t)| (*id, (n.to_string(), *r, *t))).collect(), missed: false }
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
    fn a_program_the_first_snapshot_missed_is_left_out_not_charged_its_history() {
        let mut s = Side::default();
        let before = Snapshot { missed: true, ..snap(&[(1, "connect4", 10, 1000), (5, "from_pod", 5, 500)]) };
        let after = snap(&[(1, "connect4", 20, 2000), (3, "missed", 900, 90_000), (5, "from_pod", 6, 600), (7, "new", 1, 10)]);
        s.add(&before, &after, 10);
        assert!(!s.programs.contains_key("missed"), "{s:?}");
        assert_eq!(s.per_unit("new"), (0.1, 1.0), "loaded after the first snapshot");
        assert_eq!(s.per_unit("connect4"), (1.0, 100.0));
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
        assert_eq!((difference(1964.4, 1968.6), difference(10.4, 9.6), difference(5.0, 9.0)), ("-5".into(), "0".into(), "-4".into()));
    }
}
