//! Where a ClusterIP connection's CPU goes against a direct one's
//! (`weir-bench --perf`): the 32-in-flight short connections again, in
//! pairs of slices as [`Paired::run`] makes them, each side under its own
//! system-wide `perf record` that is enabled only during that side's
//! slices (`-D -1 --control fifo:...`), sampling every CPU on a fixed
//! period (`cpu-clock`). The samples are summed per CPU and symbol (the
//! node agent's threads apart) and charged to the side's completed
//! connections, so the table says, per CPU, what a connection costs in
//! every kernel, BPF and user function, through the ClusterIP and pod to
//! pod, each difference with the samples' counting noise beside it.
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

/// Samples per second per CPU: perf's `cpu-clock` event, which samples
/// every CPU on a fixed period (1/FREQ s) whether it runs or idles, so a
/// sample is 1/FREQ s of one CPU. 1999 keeps the period off the
/// scheduler tick's multiples.
const FREQ: u32 = 1999;

/// A `perf record` child, killed if it is still running when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One `perf record -a`, started with its events off, switched on and off
/// through its control FIFO.
struct Recorder {
    child: Running,
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
        let child = Command::new("perf")
            .args(["record", "-a", "-q", "-e", "cpu-clock", "-F", &FREQ.to_string(), "-D", "-1", "--control"])
            .arg(format!("fifo:{},{}", ctl_path.display(), ack_path.display()))
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| if e.kind() == io::ErrorKind::NotFound { io::Error::other("perf is not installed (Debian's linux-perf)") } else { e })?;
        let mut child = Running(child);
        // perf opens both FIFOs itself (read and write, non-blocking);
        // until it has, a non-blocking open for writing fails (ENXIO).
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctl = loop {
            match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&ctl_path) {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                    if let Some(status) = child.0.try_wait()? {
                        return Err(io::Error::other(format!("perf record exited at start: {status}")));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        // Opened without blocking (perf may not hold its end yet), then
        // read blocking: an acknowledgement waits for perf.
        let ack = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&ack_path)?;
        nix::fcntl::fcntl(&ack, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty())).map_err(io::Error::from)?;
        let _ = std::fs::remove_file(&ctl_path);
        let _ = std::fs::remove_file(&ack_path);
        Ok(Self { child, ctl, ack: BufReader::new(ack) })
    }

    /// Sends `cmd` and waits for perf's acknowledgement (while perf has
    /// not opened its end, a read finds no writer and returns nothing:
    /// tried again for up to 10 s while perf runs).
    fn command(&mut self, cmd: &str) -> io::Result<()> {
        self.ctl.write_all(format!("{cmd}\n").as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut line = String::new();
        while self.ack.read_line(&mut line)? == 0 {
            if self.child.0.try_wait()?.is_some() || Instant::now() > deadline {
                return Err(io::Error::other(format!("perf record did not acknowledge {cmd}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops perf (SIGINT: it writes its file and exits).
    fn finish(mut self) -> io::Result<()> {
        let pid = Pid::from_raw(self.child.0.id() as i32);
        nix::sys::signal::kill(pid, Signal::SIGINT).map_err(io::Error::from)?;
        let status = self.child.0.wait()?;
        // perf writes its file and exits by the signal (or with 130).
        if !status.success() && status.code() != Some(130) && std::os::unix::process::ExitStatusExt::signal(&status) != Some(libc::SIGINT) {
            return Err(io::Error::other(format!("perf record: {status}")));
        }
        Ok(())
    }
}

/// Where a sample was taken: its CPU, whether in one of the agent's
/// threads, and its symbol.
pub type Site = (u32, bool, String);

/// Samples by [`Site`] for one side, and the connections its slices
/// completed.
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub units: u64,
    pub samples: BTreeMap<Site, u64>,
}

impl Side {
    /// µs of CPU per unit over the sites `pick` takes, and its standard
    /// error (sample counts are Poisson: √n samples).
    pub fn us_per_unit(&self, pick: impl Fn(&Site) -> bool) -> Us {
        let n: u64 = self.samples.iter().filter(|(k, _)| pick(k)).map(|(_, n)| n).sum();
        let per = 1e6 / f64::from(FREQ) / self.units.max(1) as f64;
        (n as f64 * per, (n as f64).sqrt() * per)
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

/// The thread ids of process `pid` (its tasks under /proc).
fn threads(pid: u32) -> std::collections::HashSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// `pairs` pairs of slices, each side recorded into `dir`/{vip,direct}.data;
/// the samples in threads of process `agent` (the node's agent) are told
/// apart. A failure to switch perf on or off ends the run at once (a
/// panic, which unwinds through the recorders and kills them).
pub fn paired(dir: &Path, pairs: usize, agent: Option<u32>, mut vip: impl FnMut() -> Latency, mut direct: impl FnMut() -> Latency) -> io::Result<Profile> {
    std::fs::create_dir_all(dir)?;
    let (vip_data, direct_data) = (dir.join("vip.data"), dir.join("direct.data"));
    let mut agent_threads = agent.map(threads).unwrap_or_default();
    let mut rv = Recorder::start(&vip_data)?;
    let mut rd = Recorder::start(&direct_data)?;
    let mut units = (0u64, 0u64);
    let recorded = |r: &mut Recorder, f: &mut dyn FnMut() -> Latency| -> Latency {
        r.command("enable").unwrap_or_else(|e| panic!("--perf: {e}"));
        let l = f();
        r.command("disable").unwrap_or_else(|e| panic!("--perf: {e}"));
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
    rv.finish()?;
    rd.finish()?;
    agent_threads.extend(agent.map(threads).unwrap_or_default());
    Ok(Profile {
        vip: Side { units: units.0, samples: report(&vip_data, &agent_threads)? },
        direct: Side { units: units.1, samples: report(&direct_data, &agent_threads)? },
    })
}

/// Samples by [`Site`] in a perf data file (`perf report`), those of
/// `agent`'s threads told apart.
fn report(data: &Path, agent: &std::collections::HashSet<u32>) -> io::Result<BTreeMap<Site, u64>> {
    let out = Command::new("perf")
        .args(["report", "--stdio", "-q", "--sort", "cpu,pid,sym", "-F", "sample,cpu,pid,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("perf report -i {}: {}", data.display(), out.status)));
    }
    Ok(parse_report(&String::from_utf8_lossy(&out.stdout), agent))
}

/// Parses `perf report -F sample,cpu,pid,sym` lines:
/// `  1234  001  4242:weir-bench  [k] name` (the thread id, then its
/// command, which may hold spaces; the symbol starts at its kind, `[k]`,
/// `[.]`, `[g]`).
fn parse_report(text: &str, agent: &std::collections::HashSet<u32>) -> BTreeMap<Site, u64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(n), Some(cpu), Some(task)) = (it.next().and_then(|s| s.parse::<u64>().ok()), it.next().and_then(|s| s.parse::<u32>().ok()), it.next()) else { continue };
        let Some(tid) = task.split(':').next().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let rest: Vec<&str> = it.collect();
        let Some(kind) = rest.iter().position(|t| t.len() == 3 && t.starts_with('[') && t.ends_with(']')) else { continue };
        *m.entry((cpu, agent.contains(&tid), rest[kind..].join(" "))).or_default() += n;
    }
    m
}

/// Symbols perf charges an idle CPU to (the halt or poll of an idle loop).
fn idle(sym: &str) -> bool {
    ["safe_halt", "default_idle", "intel_idle", "acpi_idle", "poll_idle", "cpu_idle_poll", "mwait_idle", "cpuidle_enter"].iter().any(|s| sym.contains(s))
}

/// Whether `sym` is a BPF program's own code (`bpf_prog_<tag>_<name>`, as
/// perf names a JITed program), not a kernel function about programs.
fn bpf_program(sym: &str) -> bool {
    sym.strip_prefix("[k] bpf_prog_").and_then(|t| t.get(..17)).is_some_and(|t| t.ends_with('_') && t[..16].bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What a sample's time was: idle, the agent, BPF programs' own
/// instructions (weir's, on the bench's machine; the maps and helpers
/// they call are kernel functions, listed by name), or the rest.
fn kind(site: &Site) -> &'static str {
    let (_, agent, sym) = site;
    if idle(sym) {
        "idle"
    } else if *agent {
        "the agent (any of its threads)"
    } else if bpf_program(sym) {
        "BPF programs' own instructions"
    } else {
        "everything else"
    }
}

const KINDS: [&str; 4] = ["everything else", "BPF programs' own instructions", "the agent (any of its threads)", "idle"];

/// A time per connection and its standard error, µs.
type Us = (f64, f64);

/// `a − b` and its standard error.
fn diff((a, ea): Us, (b, eb): Us) -> Us {
    (a - b, (ea * ea + eb * eb).sqrt())
}

/// A Markdown report of `cells` (services, profile): per CPU, µs per
/// connection on each side by kind (busy, the agent, BPF programs, idle),
/// then the `top` symbols (the agent's left out: it is listed whole
/// above) whose time per connection differs most between the sides, each
/// difference with its standard error (the samples' counting noise only).
pub fn table(cells: &[(usize, Profile)], top: usize) -> String {
    let mut md = String::new();
    for (n, p) in cells {
        md.push_str(&format!(
            "\n#### {n} services: {} connections through the ClusterIP, {} pod to pod\n\n| CPU | µs per connection | ClusterIP | direct | ClusterIP − direct (± s.e.) |\n|---|---|---:|---:|---:|\n",
            p.vip.units, p.direct.units
        ));
        let cpus: std::collections::BTreeSet<u32> = p.vip.samples.keys().chain(p.direct.samples.keys()).map(|(c, _, _)| *c).collect();
        for &c in &cpus {
            let busy = |s: &Side| s.us_per_unit(|k| k.0 == c && kind(k) != "idle");
            let (v, d) = (busy(&p.vip), busy(&p.direct));
            let (x, e) = diff(v, d);
            md.push_str(&format!("| {c} | busy | {:.2} | {:.2} | {x:+.2} ± {e:.2} |\n", v.0, d.0));
            for k in KINDS {
                let of = |s: &Side| s.us_per_unit(|x| x.0 == c && kind(x) == k);
                let (v, d) = (of(&p.vip), of(&p.direct));
                let (x, e) = diff(v, d);
                md.push_str(&format!("| {c} | {k} | {:.2} | {:.2} | {x:+.2} ± {e:.2} |\n", v.0, d.0));
            }
        }
        // By CPU and symbol (the agent's and idle time apart).
        let syms: std::collections::BTreeSet<(u32, &String)> =
            p.vip.samples.keys().chain(p.direct.samples.keys()).filter(|k| !matches!(kind(k), "idle" | "the agent (any of its threads)")).map(|(c, _, sym)| (*c, sym)).collect();
        let mut rows: Vec<((u32, &String), Us, Us)> = syms
            .into_iter()
            .map(|(c, sym)| {
                let of = |s: &Side| s.us_per_unit(|k| k.0 == c && !k.1 && &k.2 == sym);
                ((c, sym), of(&p.vip), of(&p.direct))
            })
            .collect();
        rows.sort_by(|a, b| (b.1 .0 - b.2 .0).abs().total_cmp(&(a.1 .0 - a.2 .0).abs()));
        md.push_str(&format!("\n| CPU | symbol (the {top} that differ most) | ClusterIP µs/conn | direct µs/conn | ClusterIP − direct (± s.e.) |\n|---|---|---:|---:|---:|\n"));
        for ((c, sym), v, d) in rows.into_iter().take(top) {
            let (x, e) = diff(v, d);
            md.push_str(&format!("| {c} | `{}` | {:.3} | {:.3} | {x:+.3} ± {e:.3} |\n", sym.replace('|', "\\|"), v.0, d.0));
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
    fn a_report_line_gives_its_samples_cpu_thread_and_symbol() {
        let agent = [42].into_iter().collect();
        let m = parse_report(
            "   120  000  7:weir-bench  [k] htab_lru_map_update_elem\n     3  001  8:tokio worker  [.] tokio::runtime::task::raw::poll\n\n# comment\n     7  001  42:tokio-runtime-w  [k] bpf_prog_6deef7357e7b4530_connect4\n     2  001  9:x  [.] [unknown]\n",
            &agent,
        );
        assert_eq!(m.get(&(0, false, "[k] htab_lru_map_update_elem".into())), Some(&120));
        assert_eq!(m.get(&(1, false, "[.] tokio::runtime::task::raw::poll".into())), Some(&3), "a command with a space");
        assert_eq!(m.get(&(1, true, "[k] bpf_prog_6deef7357e7b4530_connect4".into())), Some(&7), "the agent's thread, by its id");
        assert_eq!(m.get(&(1, false, "[.] [unknown]".into())), Some(&2));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn time_is_charged_per_connection_and_told_apart_by_kind() {
        let mut s = Side { units: 4, ..Default::default() };
        s.samples.insert((0, false, "[k] f".into()), 2 * u64::from(FREQ));
        s.samples.insert((1, false, "[k] f".into()), u64::from(FREQ));
        let (us, err) = s.us_per_unit(|k| k.0 == 0);
        assert!((us - 500_000.0).abs() < 1e-6, "2 s of CPU 0 over 4 connections");
        assert!((err - 500_000.0 / (2.0 * f64::from(FREQ)).sqrt()).abs() < 1e-6, "√n samples of counting noise");
        assert!((s.us_per_unit(|k| k.0 == 1).0 - 250_000.0).abs() < 1e-6, "another CPU's time is its own");
        assert_eq!(kind(&(0, false, "[k] pv_native_safe_halt".into())), "idle");
        assert_eq!(kind(&(0, false, "[k] acpi_safe_halt".into())), "idle");
        assert_eq!(kind(&(0, true, "[k] htab_map_hash".into())), "the agent (any of its threads)");
        assert_eq!(kind(&(0, false, "[k] bpf_prog_63e69c8c89e45ca6_from_pod".into())), "BPF programs' own instructions");
        assert_eq!(kind(&(0, false, "[k] __bpf_prog_enter_recur".into())), "everything else", "a kernel function about programs");
        assert_eq!(kind(&(0, false, "[k] bpf_prog_run_array".into())), "everything else");
        assert_eq!(kind(&(0, false, "[k] htab_map_hash".into())), "everything else");
    }
}
