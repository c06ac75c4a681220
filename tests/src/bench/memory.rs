//! Memory per tracked flow: weir's conntrack map entries against the
//! kernel's nf_conntrack entries for the same flows, plus weir's whole
//! BPF map footprint (its maps are preallocated).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use crate::{cmd, netns::NetNs};

#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct FlowMemory {
    /// Connections held open through the ClusterIP while measuring.
    pub flows: usize,
    /// Tracking entries the dataplane holds for them (see [`Tracked`]).
    pub entries: u64,
    /// Kernel memory per flow for that tracking, bytes.
    pub bytes_per_flow: f64,
    /// weir only: memory of all its BPF maps (preallocated whether used or
    /// not), MiB.
    pub bpf_maps_mib: f64,
}

/// Opens `n` connections from `ns` to `dst:port` and exchanges one line
/// on each, so every flow is established in both directions.
pub fn hold(ns: &NetNs, dst: IpAddr, port: u16, n: usize) -> Vec<TcpStream> {
    ns.run(move || {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from((dst, port)), Duration::from_secs(2)) else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            if s.write_all(b"hi\n").is_err() {
                continue;
            }
            let mut line = String::new();
            let Ok(clone) = s.try_clone() else { continue };
            if BufReader::new(clone).read_line(&mut line).is_ok() && !line.is_empty() {
                held.push(s);
            }
        }
        held
    })
}

/// `bytes_memlock` and `max_entries` of a pinned map, from bpftool.
fn map_memory(pin: &Path) -> Option<(f64, f64)> {
    let out = cmd::output(&["bpftool", "-j", "map", "show", "pinned", pin.to_str()?]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mem = v.get("bytes_memlock")?.as_f64()?;
    let max = v.get("max_entries")?.as_f64()?;
    Some((mem, max))
}

/// What one dataplane tracks right now.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracked {
    /// Tracking entries: for weir, conntrack entries (`WEIR_CT4`,
    /// `WEIR_CT`, `WEIR_CT6_MASQ`) and pods' socket reverse entries (`WEIR_SOCK_REVNAT_POD`,
    /// what a connection translated at connect holds instead); for the
    /// baselines, nf_conntrack entries in the node namespace.
    pub entries: u64,
    /// The kernel memory those entries take, bytes.
    pub bytes: f64,
    /// weir only: all its BPF maps, MiB.
    pub maps_mib: f64,
}

/// What one dataplane tracks right now.
pub fn tracked(dataplane_is_weir: bool, bpffs: &Path, node: &NetNs) -> Tracked {
    if dataplane_is_weir {
        let maps = bpffs.join("maps");
        let layout = weir_datapath::PinLayout::new(bpffs);
        let all = weir_datapath::ct::Conntrack::open(&layout).map(|c| c.entries()).unwrap_or_default();
        let v4 = all.iter().filter(|(k, _)| k.is_v4()).count() as f64;
        let whole6 = all.iter().filter(|(k, e)| !k.is_v4() && weir_logic::ct6::keeps_addrs(k.kind, e.flags)).count() as f64;
        let v6 = all.len() as f64 - v4 - whole6;
        let sockets = weir_datapath::cgroup::SockRevNat::open_pods(&layout).map(|m| m.count()).unwrap_or(0) as f64;
        // Each entry costs what its own map charges per entry (WEIR_CT4
        // for IPv4 flows, WEIR_CT for IPv6, WEIR_CT6_MASQ for masqueraded
        // IPv6 replies, the pods' socket table).
        let per = |map: &str| map_memory(&maps.join(map)).map_or(0.0, |(mem, max)| mem / max.max(1.0));
        let bytes = v4 * per("WEIR_CT4") + v6 * per("WEIR_CT") + whole6 * per(weir_common::maps::CT6_MASQ) + sockets * per(weir_common::maps::SOCK_REVNAT_POD);
        let total: f64 = std::fs::read_dir(&maps)
            .map(|d| d.filter_map(Result::ok).filter_map(|e| map_memory(&e.path())).map(|(m, _)| m).sum())
            .unwrap_or(0.0);
        Tracked { entries: (v4 + v6 + whole6 + sockets) as u64, bytes, maps_mib: total / (1024.0 * 1024.0) }
    } else {
        let entries: u64 = node.exec(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).trim().parse().unwrap_or(0);
        Tracked { entries, bytes: entries as f64 * conntrack_objsize().unwrap_or(0.0), maps_mib: 0.0 }
    }
}

/// Memory for `flows` held flows, from what was tracked before and after
/// opening them (earlier measurements leave closing entries behind).
pub fn measure(before: Tracked, after: Tracked, flows: usize) -> FlowMemory {
    FlowMemory {
        flows,
        entries: after.entries.saturating_sub(before.entries),
        bytes_per_flow: if flows > 0 { (after.bytes - before.bytes).max(0.0) / flows as f64 } else { 0.0 },
        bpf_maps_mib: after.maps_mib,
    }
}

/// The object size of the nf_conntrack slab cache.
fn conntrack_objsize() -> Option<f64> {
    let slab = std::fs::read_to_string("/proc/slabinfo").ok()?;
    slab.lines().find(|l| l.split_whitespace().next() == Some("nf_conntrack"))?.split_whitespace().nth(3)?.parse().ok()
}
