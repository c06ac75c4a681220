//! Where a ClusterIP connection's CPU goes against a direct one's
//! (`weir-bench --perf`): the 32-in-flight short connections again, in
//! pairs of slices as [`Paired::run`] makes them, each side under its own
//! system-wide `perf record` that is enabled only during that side's
//! slices (`-D -1 --control fifo:...`). The samples are summed per CPU and
//! symbol and charged to the side's completed connections, so the table
//! says, per CPU, what a connection costs in every kernel, BPF and user
//! function, through the ClusterIP and pod to pod.
//!
//! The load generator runs on CPU 0 and the servers on CPU 1
//! (`bench::cpu`): the busier CPU bounds the connection rate, and a
//! microsecond on it is a share of a connection's time there.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, sys::stat::Mode, unistd::Pid};

use super::{measure::Latency, paired::Paired};

/// Samples per second per CPU (perf's cpu-clock on this VM).
const FREQ: u32 = 1999;

/// One `perf record -a`, started with its events off, switched on and off
/// through its control FIFO.
struct Recorder {
    child: Child,
    ctl: File,
    ack: BufReader<File>,
}

impl Recorder {
    /// Starts `perf record` writing to `out`, its FIFOs beside it.
    fn start(out: &Path) -> io::Result<Self> {
        let (ctl_path, ack_path) = (out.with_extension("ctl"), out.with_extension("ack"));
        for p in [&ctl_path, &ack_path] {
            let _ = std::fs::remove_file(p);
            nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
        }
        let mut child = Command::new("perf")
            .args(["record", "-a", "-q", "-F", &FREQ.to_string(), "-D", "-1", "--control"])
            .arg(format!("fifo:{},{}", ctl_path.display(), ack_path.display()))
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| if e.kind() == io::ErrorKind::NotFound { io::Error::other("perf is not installed (Debian's linux-perf)") } else { e })?;
        // perf opens the control FIFO for reading first; until it does,
        // a non-blocking open for writing fails (ENXIO).
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctl = loop {
            match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&ctl_path) {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                    if let Some(status) = child.try_wait()? {
                        return Err(io::Error::other(format!("perf record exited at start: {status}")));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            }
        };
        // perf opens the acknowledgement FIFO for writing next, which
        // blocks it until this end is open.
        let ack = BufReader::new(File::open(&ack_path)?);
        let _ = std::fs::remove_file(&ctl_path);
        let _ = std::fs::remove_file(&ack_path);
        Ok(Self { child, ctl, ack })
    }

    /// Sends `cmd` and waits for perf's acknowledgement.
    fn command(&mut self, cmd: &str) -> io::Result<()> {
        self.ctl.write_all(format!("{cmd}\n").as_bytes())?;
        let mut line = String::new();
        if self.ack.read_line(&mut line)? == 0 {
            return Err(io::Error::other(format!("perf record closed its acknowledgements after {cmd}")));
        }
        Ok(())
    }

    /// Stops perf (SIGINT: it writes its file and exits).
    fn finish(mut self) -> io::Result<()> {
        let pid = Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, Signal::SIGINT).map_err(io::Error::from)?;
        let status = self.child.wait()?;
        // perf writes its file and exits by the signal (or with 130).
        if !status.success() && status.code() != Some(130) && std::os::unix::process::ExitStatusExt::signal(&status) != Some(libc::SIGINT) {
            return Err(io::Error::other(format!("perf record: {status}")));
        }
        Ok(())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where a sample was taken: its CPU, its task's command and its symbol.
pub type Site = (u32, String, String);

/// Samples by [`Site`] for one side, and the connections its slices
/// completed.
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub units: u64,
    pub samples: BTreeMap<Site, u64>,
}

impl Side {
    /// µs of CPU per unit over the sites `pick` takes (every sample is
    /// 1/FREQ s of one CPU).
    pub fn us_per_unit(&self, pick: impl Fn(&Site) -> bool) -> f64 {
        let n: u64 = self.samples.iter().filter(|(k, _)| pick(k)).map(|(_, n)| n).sum();
        n as f64 * 1e6 / f64::from(FREQ) / self.units.max(1) as f64
    }

    fn pool(&mut self, other: &Side) {
        self.units += other.units;
        for (k, n) in &other.samples {
            *self.samples.entry(k.clone()).or_default() += n;
        }
    }
}

/// Both sides of one cell.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub vip: Side,
    pub direct: Side,
}

impl Profile {
    pub fn pool(&mut self, other: &Profile) {
        self.vip.pool(&other.vip);
        self.direct.pool(&other.direct);
    }
}

/// `pairs` pairs of slices, each side recorded into `dir`/{vip,direct}.data.
pub fn paired(dir: &Path, pairs: usize, mut vip: impl FnMut() -> Latency, mut direct: impl FnMut() -> Latency) -> io::Result<Profile> {
    std::fs::create_dir_all(dir)?;
    let (vip_data, direct_data) = (dir.join("vip.data"), dir.join("direct.data"));
    let mut rv = Recorder::start(&vip_data)?;
    let mut rd = Recorder::start(&direct_data)?;
    let mut units = (0u64, 0u64);
    let failed: std::cell::RefCell<Option<io::Error>> = Default::default();
    let recorded = |r: &mut Recorder, f: &mut dyn FnMut() -> Latency| -> Latency {
        if let Err(e) = r.command("enable") {
            failed.borrow_mut().get_or_insert(e);
        }
        let l = f();
        if let Err(e) = r.command("disable") {
            failed.borrow_mut().get_or_insert(e);
        }
        l
    };
    Paired::run(
        pairs,
        |_| {
            let l = recorded(&mut rv, &mut vip);
            units.0 += l.samples;
            l
        },
        |_| {
            let l = recorded(&mut rd, &mut direct);
            units.1 += l.samples;
            l
        },
    );
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    rv.finish()?;
    rd.finish()?;
    Ok(Profile { vip: Side { units: units.0, samples: report(&vip_data)? }, direct: Side { units: units.1, samples: report(&direct_data)? } })
}

/// Samples by [`Site`] in a perf data file (`perf report`).
fn report(data: &Path) -> io::Result<BTreeMap<Site, u64>> {
    let out = Command::new("perf")
        .args(["report", "--stdio", "-q", "--sort", "cpu,comm,sym", "-F", "sample,cpu,comm,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("perf report -i {}: {}", data.display(), out.status)));
    }
    Ok(parse_report(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `perf report -F sample,cpu,comm,sym` lines:
/// `  1234  001  weir-bench  [k] name` (a command may hold spaces; the
/// symbol starts at its kind, `[k]`, `[.]`, `[g]`).
fn parse_report(text: &str) -> BTreeMap<Site, u64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(n), Some(cpu)) = (it.next().and_then(|s| s.parse::<u64>().ok()), it.next().and_then(|s| s.parse::<u32>().ok())) else { continue };
        let rest: Vec<&str> = it.collect();
        let Some(kind) = rest.iter().position(|t| t.len() == 3 && t.starts_with('[') && t.ends_with(']')) else { continue };
        let (comm, sym) = (rest[..kind].join(" "), rest[kind..].join(" "));
        *m.entry((cpu, comm, sym)).or_default() += n;
    }
    m
}

/// Symbols perf charges an idle CPU to.
fn idle(sym: &str) -> bool {
    ["pv_native_safe_halt", "default_idle", "intel_idle", "acpi_idle", "cpu_idle_poll", "native_safe_halt", "mwait_idle"].iter().any(|s| sym.ends_with(s))
}

/// What a sample's time was: idle, the agent, weir's BPF programs' own
/// instructions (the maps and helpers they call are kernel functions,
/// listed by name), or the rest.
fn kind(site: &Site) -> &'static str {
    let (_, comm, sym) = site;
    if idle(sym) {
        "idle"
    } else if comm == "weir-agent" {
        "the agent (weir-agent)"
    } else if sym.contains("bpf_prog_") {
        "BPF programs' own instructions"
    } else {
        "everything else"
    }
}

const KINDS: [&str; 4] = ["everything else", "BPF programs' own instructions", "the agent (weir-agent)", "idle"];

/// A Markdown report of `cells` (services, profile): per CPU, µs per
/// connection on each side by kind (busy, the agent, weir's programs,
/// idle), then the `top` symbols (the agent's left out: it is listed
/// whole above) whose time per connection differs most between the sides.
pub fn table(cells: &[(usize, Profile)], top: usize) -> String {
    let mut md = String::new();
    for (n, p) in cells {
        md.push_str(&format!(
            "\n#### {n} services: {} connections through the ClusterIP, {} pod to pod\n\n| CPU | µs per connection | ClusterIP | direct | ClusterIP − direct |\n|---|---|---:|---:|---:|\n",
            p.vip.units, p.direct.units
        ));
        let cpus: std::collections::BTreeSet<u32> = p.vip.samples.keys().chain(p.direct.samples.keys()).map(|(c, _, _)| *c).collect();
        for &c in &cpus {
            let busy = |s: &Side| s.us_per_unit(|k| k.0 == c && kind(k) != "idle");
            let (v, d) = (busy(&p.vip), busy(&p.direct));
            md.push_str(&format!("| {c} | busy | {v:.2} | {d:.2} | {:+.2} |\n", v - d));
            for k in KINDS {
                let of = |s: &Side| s.us_per_unit(|x| x.0 == c && kind(x) == k);
                let (v, d) = (of(&p.vip), of(&p.direct));
                md.push_str(&format!("| {c} | {k} | {v:.2} | {d:.2} | {:+.2} |\n", v - d));
            }
        }
        // By CPU and symbol, whatever the command (the agent's apart).
        let by_sym = |s: &Side| -> BTreeMap<(u32, String), f64> {
            let mut m = BTreeMap::new();
            for (k @ (c, _, sym), _) in &s.samples {
                if matches!(kind(k), "idle" | "the agent (weir-agent)") {
                    continue;
                }
                *m.entry((*c, sym.clone())).or_default() += s.us_per_unit(|x| x == k);
            }
            m
        };
        let (bv, bd) = (by_sym(&p.vip), by_sym(&p.direct));
        let keys: std::collections::BTreeSet<&(u32, String)> = bv.keys().chain(bd.keys()).collect();
        let mut rows: Vec<(&(u32, String), f64, f64)> = keys.into_iter().map(|k| (k, bv.get(k).copied().unwrap_or(0.0), bd.get(k).copied().unwrap_or(0.0))).collect();
        rows.sort_by(|a, b| (b.1 - b.2).abs().total_cmp(&(a.1 - a.2).abs()));
        md.push_str(&format!("\n| CPU | symbol (the {top} that differ most) | ClusterIP µs/conn | direct µs/conn | ClusterIP − direct |\n|---|---|---:|---:|---:|\n"));
        for ((c, sym), v, d) in rows.into_iter().take(top) {
            md.push_str(&format!("| {c} | `{}` | {v:.3} | {d:.3} | {:+.3} |\n", sym.replace('|', "\\|"), v - d));
        }
    }
    md
}

/// Where `--perf` keeps a cell's perf data files.
pub fn cell_dir(out: &Path, services: usize, rep: usize) -> PathBuf {
    out.join("perf").join(format!("{services}-rep{rep}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_line_gives_its_samples_cpu_command_and_symbol() {
        let m = parse_report("   120  000  weir-bench  [k] htab_lru_map_update_elem\n     3  001  tokio worker  [.] tokio::runtime::task::raw::poll\n\n# comment\n     7  001  weir-agent  [k] bpf_prog_6deef7357e7b4530_connect4\n");
        assert_eq!(m.get(&(0, "weir-bench".into(), "[k] htab_lru_map_update_elem".into())), Some(&120));
        assert_eq!(m.get(&(1, "tokio worker".into(), "[.] tokio::runtime::task::raw::poll".into())), Some(&3));
        assert_eq!(m.get(&(1, "weir-agent".into(), "[k] bpf_prog_6deef7357e7b4530_connect4".into())), Some(&7));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn time_is_charged_per_connection_and_told_apart_by_kind() {
        let mut s = Side { units: 4, ..Default::default() };
        s.samples.insert((0, "weir-bench".into(), "[k] f".into()), 2 * u64::from(FREQ));
        s.samples.insert((1, "weir-bench".into(), "[k] f".into()), u64::from(FREQ));
        assert!((s.us_per_unit(|k| k.0 == 0) - 500_000.0).abs() < 1e-6, "2 s of CPU 0 over 4 connections");
        assert!((s.us_per_unit(|k| k.0 == 1) - 250_000.0).abs() < 1e-6, "another CPU's time is its own");
        assert_eq!(kind(&(0, "swapper".into(), "[k] pv_native_safe_halt".into())), "idle");
        assert_eq!(kind(&(0, "weir-agent".into(), "[k] htab_map_hash".into())), "the agent (weir-agent)");
        assert_eq!(kind(&(0, "weir-bench".into(), "[k] bpf_prog_63e69c8c89e45ca6_from_pod".into())), "BPF programs' own instructions");
        assert_eq!(kind(&(0, "weir-bench".into(), "[k] htab_map_hash".into())), "everything else");
    }
}
