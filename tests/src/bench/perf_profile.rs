//! Where a ClusterIP connection's CPU goes against a direct one's
//! (`weir-bench --perf`): the 32-in-flight short connections again, in
//! pairs of slices as [`Paired::run`] makes them, each side under its own
//! system-wide `perf record` that is enabled only during that side's
//! slices (`-D -1 --control fifo:...`), sampling every CPU on a fixed
//! period (`cpu-clock`). Each sample is put in the slice it was taken in
//! (perf stamps it with the monotonic clock, and each slice's window is
//! kept), summed per CPU and symbol (the node agent's process apart) per
//! block of two pairs, and charged to the block's completed connections.
//! So the table says, per CPU, what a connection costs in every kernel,
//! BPF and user function, through the ClusterIP and pod to pod, each
//! difference with its standard error over the blocks beside it: the
//! machine's slice-to-slice noise as well as the samples' counting noise.
//!
//! The load generator runs on CPU 0 and the servers on CPU 1
//! (`bench::cpu`): the busier CPU bounds the connection rate, and a
//! microsecond on it is a share of a connection's time there.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    os::{fd::AsFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{signal::Signal, stat::Mode},
    time::{clock_gettime, ClockId},
    unistd::Pid,
};

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
            .args(["record", "-a", "-q", "-e", "cpu-clock", "-F", &FREQ.to_string(), "-k", "CLOCK_MONOTONIC", "-D", "-1", "--control"])
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

    /// Sends `cmd` and waits up to 10 s for perf's acknowledgement (while
    /// perf has not opened its end, a read finds no writer and returns
    /// nothing, and is tried again).
    fn command(&mut self, cmd: &str) -> io::Result<()> {
        self.ctl.write_all(format!("{cmd}\n").as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.child.0.try_wait()?.is_some() {
                return Err(io::Error::other(format!("perf record did not acknowledge {cmd}")));
            }
            if self.ack.buffer().is_empty() {
                let wait = PollTimeout::try_from(left.min(Duration::from_millis(100))).unwrap_or(PollTimeout::ZERO);
                match poll(&mut [PollFd::new(self.ack.get_ref().as_fd(), PollFlags::POLLIN)], wait) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                    Ok(_) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if self.ack.read_line(&mut line)? > 0 {
                return Ok(());
            }
            // The writer closed its end (perf exiting): checked above
            // after a pause rather than in a hot loop.
            std::thread::sleep(Duration::from_millis(10));
        }
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

/// Where a sample was taken: its CPU, whether in the agent's process, and
/// its symbol (`[k] name` in the kernel, `[.] name` in user space).
pub type Site = (u32, bool, String);

/// Samples by [`Site`] over one block of a side's slices (two consecutive
/// pairs, as [`super::paired::ratio`] blocks them), and the connections
/// those slices completed.
#[derive(Clone, Debug, Default)]
pub struct Block {
    pub units: u64,
    pub samples: BTreeMap<Site, u64>,
}

/// One side's blocks, in the order they ran.
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub blocks: Vec<Block>,
}

/// When one slice's recorder was on (`CLOCK_MONOTONIC` seconds, perf's
/// sample clock here), and the connections the slice completed.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: f64,
    end: f64,
    units: u64,
}

impl Side {
    /// Sums `samples` into the blocks of `windows` (slice `i` in block
    /// `i / 2`); returns the side and how many samples fell in no window.
    fn of(samples: impl IntoIterator<Item = (f64, Site)>, windows: &[Window]) -> (Self, u64) {
        let mut blocks = vec![Block::default(); windows.len().div_ceil(2)];
        for (i, w) in windows.iter().enumerate() {
            blocks[i / 2].units += w.units;
        }
        let mut outside = 0;
        for (t, site) in samples {
            // The last window that started at or before the sample.
            let i = windows.partition_point(|w| w.start <= t);
            match i.checked_sub(1).filter(|&i| t <= windows[i].end) {
                Some(i) => *blocks[i / 2].samples.entry(site).or_default() += 1,
                None => outside += 1,
            }
        }
        (Self { blocks }, outside)
    }

    /// Per block, the samples `count` takes and the block's connections.
    fn counts(&self, count: &impl Fn(&Block) -> u64) -> Vec<Count> {
        self.blocks.iter().map(|b| (count(b), b.units)).collect()
    }
}

/// A block's samples of some sites, and its connections.
type Count = (u64, u64);

/// µs of CPU per connection of `n` samples over `units` connections.
fn us(n: u64, units: u64) -> f64 {
    n as f64 * 1e6 / f64::from(FREQ) / units.max(1) as f64
}

/// Both sides of one cell, their blocks paired (block `b` of each side ran
/// in the same four slices' stretch of time).
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub vip: Side,
    pub direct: Side,
    /// Samples in no slice (perf's own start, switched on and off once
    /// before the slices), left out.
    pub outside: u64,
}

/// A time per connection through the ClusterIP, pod to pod, their
/// difference and its standard error (µs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Compared {
    pub vip: f64,
    pub direct: f64,
    pub diff: f64,
    /// Over blocks: the spread of the blocks' own differences over
    /// √blocks, so it holds the machine's slice-to-slice noise as well as
    /// the samples' counting noise. None under two blocks.
    pub se: Option<f64>,
}

impl Profile {
    pub fn pool(&mut self, other: &Profile) {
        self.vip.blocks.extend(other.vip.blocks.iter().cloned());
        self.direct.blocks.extend(other.direct.blocks.iter().cloned());
        self.outside += other.outside;
    }

    /// The sites `count` takes (it sums a block's samples), compared: the
    /// times pooled over every block (all samples over all connections),
    /// and as their difference's standard error that of the mean of the
    /// blocks' own differences (the same to the extent that blocks
    /// complete about as many connections each, as slices of equal
    /// length do). A block in which either side completed no connection
    /// has no time per connection and is left out of both.
    pub fn compare(&self, count: impl Fn(&Block) -> u64) -> Compared {
        let (v, d): (Vec<Count>, Vec<Count>) = self.vip.counts(&count).into_iter().zip(self.direct.counts(&count)).filter(|(a, b)| a.1 > 0 && b.1 > 0).unzip();
        let pooled = |c: &[Count]| us(c.iter().map(|x| x.0).sum(), c.iter().map(|x| x.1).sum());
        let (vip, direct) = (pooled(&v), pooled(&d));
        let diffs: Vec<f64> = v.iter().zip(&d).map(|(a, b)| us(a.0, a.1) - us(b.0, b.1)).collect();
        let n = diffs.len() as f64;
        let se = (diffs.len() >= 2).then(|| {
            let mean = diffs.iter().sum::<f64>() / n;
            (diffs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
        });
        Compared { vip, direct, diff: vip - direct, se }
    }
}

/// The monotonic clock, in seconds: perf stamps its samples with it
/// (`-k CLOCK_MONOTONIC`).
fn now() -> io::Result<f64> {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(io::Error::from)?;
    Ok(t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

/// How long each recorder is switched on before the slices: perf reads
/// the kernel's symbols when it is first switched on, on the CPUs being
/// measured, so that happens before the first slice and is left out.
const WARM_UP: Duration = Duration::from_millis(500);

/// One slice under `r`: switched on, `f`, switched off, its window kept.
/// A failure to switch perf on or off ends the run at once (a panic,
/// which unwinds through the recorders and kills them).
fn recorded(r: &mut Recorder, f: &mut dyn FnMut() -> Latency, windows: &mut Vec<Window>) -> Latency {
    let start = now().unwrap_or_else(|e| panic!("--perf: reading the clock: {e}"));
    r.command("enable").unwrap_or_else(|e| panic!("--perf: {e}"));
    let l = f();
    r.command("disable").unwrap_or_else(|e| panic!("--perf: {e}"));
    let end = now().unwrap_or_else(|e| panic!("--perf: reading the clock: {e}"));
    windows.push(Window { start, end, units: l.samples });
    l
}

/// `pairs` pairs of slices, each side recorded into `dir`/{vip,direct}.data;
/// the samples of process `agent` (the node's agent) are told apart.
pub fn paired(dir: &Path, pairs: usize, agent: Option<u32>, mut vip: impl FnMut() -> Latency, mut direct: impl FnMut() -> Latency) -> io::Result<Profile> {
    std::fs::create_dir_all(dir)?;
    let (vip_data, direct_data) = (dir.join("vip.data"), dir.join("direct.data"));
    let mut rv = Recorder::start(&vip_data)?;
    let mut rd = Recorder::start(&direct_data)?;
    for r in [&mut rv, &mut rd] {
        r.command("enable")?;
        std::thread::sleep(WARM_UP);
        r.command("disable")?;
    }
    let (mut wv, mut wd) = (Vec::new(), Vec::new());
    Paired::run(pairs, |_| recorded(&mut rv, &mut vip, &mut wv), |_| recorded(&mut rd, &mut direct, &mut wd));
    rv.finish()?;
    rd.finish()?;
    let (vip, ov) = Side::of(script(&vip_data, agent)?, &wv);
    let (direct, od) = Side::of(script(&direct_data, agent)?, &wd);
    Ok(Profile { vip, direct, outside: ov + od })
}

/// Every sample in a perf data file (`perf script`): its time and [`Site`],
/// the agent's process told apart.
fn script(data: &Path, agent: Option<u32>) -> io::Result<Vec<(f64, Site)>> {
    let out = Command::new("perf").args(["script", "-F", "pid,tid,cpu,time,ip,sym", "-i"]).arg(data).stderr(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("perf script -i {}: {}", data.display(), out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let samples: Vec<(f64, Site)> = lines.iter().filter_map(|l| parse_sample(l, agent)).collect();
    // Every line is a sample in the fields asked for; lines this cannot
    // read mean perf changed its format, and the table would be wrong.
    if samples.len() < lines.len() {
        return Err(io::Error::other(format!("perf script -i {}: {} of {} lines not read as samples", data.display(), lines.len() - samples.len(), lines.len())));
    }
    Ok(samples)
}

/// The lowest kernel address on x86-64 (the canonical upper half).
const KERNEL_SPACE: u64 = 0xffff_8000_0000_0000;

/// Parses a `perf script -F pid,tid,cpu,time,ip,sym` line:
/// `32290/32724 [000]  3584.143782:  ffffffffc001c0e4 bpf_prog_..._from_pod`
/// (no symbol: `[unknown]`).
fn parse_sample(line: &str, agent: Option<u32>) -> Option<(f64, Site)> {
    let mut it = line.split_whitespace();
    let pid: u32 = it.next()?.split('/').next()?.parse().ok()?;
    let cpu: u32 = it.next()?.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?;
    let time: f64 = it.next()?.strip_suffix(':')?.parse().ok()?;
    let ip = u64::from_str_radix(it.next()?, 16).ok()?;
    let sym: Vec<&str> = it.collect();
    let sym = if sym.is_empty() { "[unknown]".to_string() } else { sym.join(" ") };
    let space = if ip >= KERNEL_SPACE { "[k]" } else { "[.]" };
    Some((time, (cpu, agent == Some(pid), format!("{space} {sym}"))))
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

/// `x ± se`, or `x ± –` without a standard error.
fn pm(c: &Compared, digits: usize) -> String {
    match c.se {
        Some(e) => format!("{:+.*} ± {e:.*}", digits, c.diff, digits),
        None => format!("{:+.*} ± –", digits, c.diff),
    }
}

/// A Markdown report of `cells` (services, profile): per CPU, µs per
/// connection on each side by kind (busy, the agent, BPF programs, idle),
/// then the `top` symbols (the agent's left out: it is listed whole
/// above) whose time per connection differs most between the sides, each
/// difference with its standard error over the blocks.
pub fn table(cells: &[(usize, Profile)], top: usize) -> String {
    let mut md = String::new();
    for (n, p) in cells {
        let units = |s: &Side| s.blocks.iter().map(|b| b.units).sum::<u64>();
        md.push_str(&format!(
            "\n#### {n} services: {} connections through the ClusterIP, {} pod to pod, {} blocks\n\n{} samples outside the slices (perf's own start) left out.\n\n| CPU | µs per connection | ClusterIP | direct | ClusterIP − direct (± s.e.) |\n|---|---|---:|---:|---:|\n",
            units(&p.vip),
            units(&p.direct),
            p.vip.blocks.len(),
            p.outside
        ));
        let sites = || p.vip.blocks.iter().chain(&p.direct.blocks).flat_map(|b| b.samples.keys());
        let cpus: std::collections::BTreeSet<u32> = sites().map(|(c, _, _)| *c).collect();
        let sum = |b: &Block, pick: &dyn Fn(&Site) -> bool| b.samples.iter().filter(|(k, _)| pick(k)).map(|(_, n)| n).sum::<u64>();
        for &c in &cpus {
            let busy = p.compare(|b| sum(b, &|k| k.0 == c && kind(k) != "idle"));
            md.push_str(&format!("| {c} | busy | {:.2} | {:.2} | {} |\n", busy.vip, busy.direct, pm(&busy, 2)));
            for k in KINDS {
                let of = p.compare(|b| sum(b, &|x| x.0 == c && kind(x) == k));
                md.push_str(&format!("| {c} | {k} | {:.2} | {:.2} | {} |\n", of.vip, of.direct, pm(&of, 2)));
            }
        }
        // By CPU and symbol (the agent's and idle time apart).
        let syms: std::collections::BTreeSet<&Site> = sites().filter(|k| !matches!(kind(k), "idle" | "the agent (any of its threads)")).collect();
        let mut rows: Vec<(&Site, Compared)> = syms.into_iter().map(|site| (site, p.compare(|b| b.samples.get(site).copied().unwrap_or(0)))).collect();
        rows.sort_by(|a, b| b.1.diff.abs().total_cmp(&a.1.diff.abs()));
        md.push_str(&format!("\n| CPU | symbol (the {top} that differ most) | ClusterIP µs/conn | direct µs/conn | ClusterIP − direct (± s.e.) |\n|---|---|---:|---:|---:|\n"));
        for ((c, _, sym), x) in rows.into_iter().take(top) {
            md.push_str(&format!("| {c} | `{}` | {:.3} | {:.3} | {} |\n", sym.replace('|', "\\|"), x.vip, x.direct, pm(&x, 3)));
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
    fn a_script_line_gives_its_time_cpu_process_and_symbol() {
        let agent = Some(42);
        let parse = |l| parse_sample(l, agent);
        assert_eq!(parse("    7/7 [000]  3584.143782:  ffffffff81d75181 htab_lru_map_update_elem"), Some((3584.143782, (0, false, "[k] htab_lru_map_update_elem".into()))));
        assert_eq!(
            parse("   42/4711 [001]  3584.2:  ffffffffc001c0e4 bpf_prog_6deef7357e7b4530_connect4"),
            Some((3584.2, (1, true, "[k] bpf_prog_6deef7357e7b4530_connect4".into()))),
            "any thread of the agent's process"
        );
        assert_eq!(parse("    8/9 [001]  1.5:      7f90d0567f36 epoll_wait"), Some((1.5, (1, false, "[.] epoll_wait".into()))), "user space");
        assert_eq!(parse("    8/9 [001]  1.5:      7f90d0567f36"), Some((1.5, (1, false, "[.] [unknown]".into()))), "no symbol");
        assert_eq!(parse("    8/9 [001]  1.5:      7f90d0567f36 std::sync::Once::call once"), Some((1.5, (1, false, "[.] std::sync::Once::call once".into()))));
        assert_eq!(parse(""), None);
        assert_eq!(parse("# comment"), None);
    }

    fn site(cpu: u32, sym: &str) -> Site {
        (cpu, false, format!("[k] {sym}"))
    }

    #[test]
    fn samples_go_to_the_block_of_the_slice_they_were_taken_in() {
        let w = |start, end, units| Window { start, end, units };
        // Four slices, two blocks; a gap between slices (the other side's).
        let windows = [w(10.0, 10.5, 100), w(11.0, 11.5, 100), w(12.0, 12.5, 300), w(13.0, 13.5, 100)];
        let samples = [(10.2, site(0, "f")), (11.5, site(0, "f")), (12.1, site(1, "g")), (13.4, site(0, "f")), (9.0, site(0, "f")), (10.7, site(0, "f")), (14.0, site(0, "f"))];
        let (side, outside) = Side::of(samples, &windows);
        assert_eq!(outside, 3, "before the first slice, between two, after the last");
        assert_eq!(side.blocks.len(), 2);
        assert_eq!((side.blocks[0].units, side.blocks[1].units), (200, 400));
        assert_eq!(side.blocks[0].samples.get(&site(0, "f")), Some(&2), "a slice's end is in it");
        assert_eq!(side.blocks[1].samples.get(&site(0, "f")), Some(&1));
        assert_eq!(side.blocks[1].samples.get(&site(1, "g")), Some(&1));
    }

    #[test]
    fn a_difference_is_pooled_and_its_error_is_the_spread_of_the_blocks() {
        let block = |units, n| Block { units, samples: [(site(0, "f"), n)].into_iter().collect() };
        let hz = u64::from(FREQ);
        // ClusterIP: 1 s of CPU over 1,000 connections in each block (1,000
        // µs each); direct: 0.5 s, then 1 s, over 1,000 (500 and 1,000 µs).
        let p = Profile {
            vip: Side { blocks: vec![block(1000, hz), block(1000, hz)] },
            direct: Side { blocks: vec![block(1000, hz / 2), block(1000, hz)] },
            outside: 0,
        };
        let c = p.compare(|b| b.samples.get(&site(0, "f")).copied().unwrap_or(0));
        assert!((c.vip - 1000.0).abs() < 0.01, "{c:?}");
        assert!((c.direct - 750.0).abs() < 1.0, "pooled over both blocks: {c:?}");
        assert!((c.diff - 250.0).abs() < 1.0, "{c:?}");
        // The blocks' differences are 500 and 0: sd 353.6, over √2.
        assert!((c.se.unwrap_or(0.0) - 250.0).abs() < 1.0, "the spread of the blocks' differences over √blocks: {c:?}");
        let empty = Profile {
            vip: Side { blocks: vec![block(1000, hz), block(0, 0)] },
            direct: Side { blocks: vec![block(1000, hz / 2), block(1000, hz)] },
            outside: 0,
        };
        let c = empty.compare(|b| b.samples.values().sum());
        assert!((c.diff - 500.0).abs() < 1.0 && c.se.is_none(), "a block with no ClusterIP connection is left out: {c:?}");
        let one = Profile { vip: Side { blocks: vec![block(1000, hz)] }, direct: Side { blocks: vec![block(1000, hz)] }, outside: 0 };
        assert_eq!(one.compare(|b| b.samples.values().sum()).se, None, "no error from one block");
        assert!(pm(&one.compare(|b| b.samples.values().sum()), 2).ends_with("± –"));
    }

    #[test]
    fn sites_are_told_apart_by_kind() {
        assert_eq!(kind(&(0, false, "[k] pv_native_safe_halt".into())), "idle");
        assert_eq!(kind(&(0, false, "[k] acpi_safe_halt".into())), "idle");
        assert_eq!(kind(&(0, true, "[k] htab_map_hash".into())), "the agent (any of its threads)");
        assert_eq!(kind(&(0, false, "[k] bpf_prog_63e69c8c89e45ca6_from_pod".into())), "BPF programs' own instructions");
        assert_eq!(kind(&(0, false, "[k] __bpf_prog_enter_recur".into())), "everything else", "a kernel function about programs");
        assert_eq!(kind(&(0, false, "[k] bpf_prog_run_array".into())), "everything else");
        assert_eq!(kind(&(0, false, "[k] htab_map_hash".into())), "everything else");
    }
}
