//! `weir diff [--source kube|dir:<DIR>] [--node-name N]`: loads the
//! desired state itself (the agent's own source code, run until it has
//! listed everything, and the same pure translation),
//! compares it with the pinned maps, prints each difference and exits 1
//! on drift. Works while the agent is down.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::bail;
use serde::Serialize;
use weir_common::policy::{ID_ANY, ID_CIDR_FIRST};
use weir_datapath::{
    programmed::{self, policy_lines, PolicyLine, ServiceView},
    PinLayout,
};
use weir_desired::policy::Prefix;
use weir_model::{
    policy::{
        translate::{assign, identity_name, translate},
        CompiledPolicy, Ids,
    },
    nodeport::NodePortAddresses,
    translate::{translate_all, NodeContext},
    ClusterState,
};
use weir_source::{SourceEvent, SourceSpec};

use crate::output::{print_table, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the desired state comes from, as the agent's --source: `kube`
    /// (kube::Config::infer) or `dir:<DIR>` (standalone mode's files).
    #[arg(long, default_value = "kube")]
    pub source: String,
    /// The node to compare for (internalTrafficPolicy, local pods); the
    /// agent's --node-name.
    #[arg(long)]
    pub node_name: Option<String>,
    /// The agent's --nodeport-addresses: `primary` (the Node's InternalIP
    /// of each family) or CIDRs, which select among the Node's addresses
    /// and the addresses on --devices.
    #[arg(long, default_value = "primary", value_parser = parse_nodeport_addresses)]
    pub nodeport_addresses: NodePortAddresses,
    /// The agent's --devices (comma-separated): whose addresses
    /// --nodeport-addresses CIDRs may select. Unset: every interface of
    /// this network namespace but loopback.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// The agent's --masquerade-all.
    #[arg(long)]
    pub masquerade_all: bool,
}

fn parse_nodeport_addresses(s: &str) -> Result<NodePortAddresses, String> {
    s.parse().map_err(|e: weir_model::nodeport::BadNodePortAddresses| e.to_string())
}

/// The addresses on `devices` (every non-loopback interface when empty),
/// in this network namespace, as the agent follows them over netlink.
fn device_addrs(devices: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let wanted = if devices.is_empty() { ifa.interface_name != "lo" } else { devices.contains(&ifa.interface_name) };
        let Some(addr) = ifa.address.filter(|_| wanted) else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct ServiceDiff {
    frontend: String,
    origin: Option<String>,
    /// "in-sync", "missing" (desired, not programmed), "extra" (programmed,
    /// not desired) or "differs".
    status: &'static str,
    details: Vec<String>,
    /// Unix seconds of the agent's last write to this service.
    last_programmed: Option<u64>,
}

/// (ingress, egress) isolation; `None` when the endpoint is absent.
type Isolation = Option<(bool, bool)>;

#[derive(Debug, Serialize)]
struct IsolationDiff {
    endpoint: IpAddr,
    desired: Isolation,
    programmed: Isolation,
}

#[derive(Debug, Serialize)]
struct Report {
    in_sync: bool,
    services: Vec<ServiceDiff>,
    /// Policy lines desired but not programmed, and programmed but not desired.
    policy_missing: Vec<PolicyLine>,
    policy_extra: Vec<PolicyLine>,
    /// Endpoints whose isolation differs.
    isolation: Vec<IsolationDiff>,
    warnings: Vec<String>,
}

/// Runs the agent's own source until it has delivered everything that
/// exists (`Synced`), and returns the cluster state it built.
fn load(spec: &SourceSpec) -> anyhow::Result<(ClusterState, Vec<String>)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        weir_source::spawn(spec, tx)?;
        let mut state = ClusterState::new();
        let mut warnings = Vec::new();
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(SourceEvent::Changes { changes, warnings: w, .. })) => {
                    warnings.extend(w.iter().map(ToString::to_string));
                    for c in changes {
                        state.apply(c);
                    }
                }
                Ok(Some(SourceEvent::Synced)) => return Ok((state, warnings)),
                // A failing watch retries; the deadline bounds the wait.
                Ok(Some(SourceEvent::WatchHealth { .. })) => {}
                Ok(None) => bail!("the {spec:?} source stopped before it had listed everything"),
                Err(_) => bail!("the {spec:?} source did not list everything within {SYNC_TIMEOUT:?} (for kube: is the API server reachable with this kubeconfig?)"),
            }
        }
    })
}

/// How long `weir diff` waits for the source's first full listing.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{}s ago", now.saturating_sub(unix))
}

/// The desired policy, named like the programmed one.
fn desired_policy(state: &ClusterState, node: Option<&str>) -> programmed::PolicyView {
    let policies = state.policies();
    let world = state.policy_world();
    let cidrs: BTreeSet<Prefix> = policies.iter().flat_map(CompiledPolicy::cidrs).collect();
    let mut ids = Ids::new();
    assign(&mut ids, &policies, &world, &cidrs, node);
    let s = translate(&policies, &world, &ids, &cidrs, node);
    // An endpoint is named by its lowest address (a dual-stack pod's IPv4
    // one), as `programmed::policy` names it.
    let mut by_id: BTreeMap<u32, IpAddr> = BTreeMap::new();
    for (ip, e) in &s.endpoints {
        by_id.entry(e.id).and_modify(|a| *a = (*a).min(*ip)).or_insert(*ip);
    }
    let cidr_names: BTreeMap<u32, String> = cidrs.iter().filter_map(|c| Some((ids.lookup_cidr(c)?, format!("cidr {c}")))).collect();
    let lines = policy_lines(
        s.entries.iter(),
        |id| by_id.get(&id).copied(),
        |id| match id {
            ID_ANY => "any".into(),
            id if id >= ID_CIDR_FIRST => cidr_names.get(&id).cloned().unwrap_or_else(|| format!("identity {id}")),
            id => ids.pod_labels(id).map_or_else(|| format!("identity {id}"), identity_name),
        },
    );
    let isolation = s.endpoints.iter().map(|(ip, e)| (*ip, (e.ingress_isolated, e.egress_isolated))).collect();
    programmed::PolicyView { isolation, lines }
}

/// Returns whether the maps match the desired state.
pub fn run(layout: &PinLayout, args: &Args, format: Format) -> anyhow::Result<bool> {
    let spec: SourceSpec = args.source.parse()?;
    let (state, mut warnings) = load(&spec)?;
    warnings.extend(state.policy_warnings().iter().map(ToString::to_string));
    let node = args.node_name.as_deref();
    let mut ctx = NodeContext::with_nodeports(&state, node, &args.nodeport_addresses, &device_addrs(&args.devices)?);
    ctx.masquerade_all = args.masquerade_all;
    let mut want = BTreeMap::new();
    for specs in translate_all(&state, &ctx).into_values() {
        for s in specs {
            want.insert(s.frontend, (s.origin.clone(), ServiceView::of_spec(&s)));
        }
    }
    let have = programmed::services(layout)?;
    let mut services = Vec::new();
    for f in want.keys().chain(have.keys()).copied().collect::<BTreeSet<_>>() {
        let (w, h) = (want.get(&f), have.get(&f));
        let mut details = Vec::new();
        let status = match (w, h) {
            (Some(_), None) => "missing",
            (None, Some(_)) => "extra",
            (Some((_, w)), Some((h, _))) if w == h => "in-sync",
            (Some((_, w)), Some((h, _))) => {
                for b in w.backends.difference(&h.backends) {
                    details.push(format!("backend {b} not programmed"));
                }
                for b in h.backends.difference(&w.backends) {
                    details.push(format!("backend {b} programmed but not desired"));
                }
                if w.selection != h.selection {
                    details.push(format!("selection {} desired, {} programmed", w.selection, h.selection));
                }
                if w.affinity_timeout_s != h.affinity_timeout_s {
                    details.push(format!("affinity {:?} desired, {:?} programmed", w.affinity_timeout_s, h.affinity_timeout_s));
                }
                "differs"
            }
            (None, None) => continue,
        };
        services.push(ServiceDiff {
            frontend: f.to_string(),
            origin: w.map(|(o, _)| o.clone()),
            status,
            details,
            last_programmed: h.and_then(|(_, t)| *t),
        });
    }
    let want_pol = desired_policy(&state, node);
    let have_pol = programmed::policy(layout)?;
    let policy_missing: Vec<PolicyLine> = want_pol.lines.difference(&have_pol.lines).cloned().collect();
    let policy_extra: Vec<PolicyLine> = have_pol.lines.difference(&want_pol.lines).cloned().collect();
    let isolation: Vec<_> = want_pol
        .isolation
        .keys()
        .chain(have_pol.isolation.keys())
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|ip| IsolationDiff { endpoint: ip, desired: want_pol.isolation.get(&ip).copied(), programmed: have_pol.isolation.get(&ip).copied() })
        .filter(|d| d.desired != d.programmed)
        .collect();
    let in_sync = services.iter().all(|s| s.status == "in-sync") && policy_missing.is_empty() && policy_extra.is_empty() && isolation.is_empty();
    let report = Report { in_sync, services, policy_missing, policy_extra, isolation, warnings };
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(in_sync);
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let rows: Vec<Vec<String>> = report
        .services
        .iter()
        .map(|s| {
            vec![
                s.frontend.clone(),
                s.origin.clone().unwrap_or_else(|| "-".into()),
                s.status.to_uppercase(),
                s.last_programmed.map_or_else(|| "-".into(), ago),
                s.details.join("; "),
            ]
        })
        .collect();
    print_table(&["FRONTEND", "SERVICE", "STATUS", "PROGRAMMED", "DETAILS"], &rows);
    let fmt_line = |l: &PolicyLine| {
        let ports = match (l.protocol, l.port_bits) {
            (0, _) => "any".to_string(),
            (p, 0) => format!("{}/any", weir_datapath::explain::proto_name(p)),
            (p, 16) => format!("{}/{}", weir_datapath::explain::proto_name(p), l.port),
            (p, b) => format!("{}/{}-{}", weir_datapath::explain::proto_name(p), l.port, u32::from(l.port) + (1u32 << (16 - b)) - 1),
        };
        format!("{} {} {} {ports} {}", l.endpoint, l.direction, l.peer, l.verdict)
    };
    for l in &report.policy_missing {
        println!("policy missing: {}", fmt_line(l));
    }
    for l in &report.policy_extra {
        println!("policy extra:   {}", fmt_line(l));
    }
    for d in &report.isolation {
        println!("isolation of {}: desired {:?} (ingress, egress), programmed {:?}", d.endpoint, d.desired, d.programmed);
    }
    println!("{}", if in_sync { "in sync" } else { "DRIFT" });
    Ok(in_sync)
}
