//! `/metrics` (Prometheus text, prometheus-client) and the probes
//! (`/livez`, `/readyz`, `/healthz`; see `probes`), served
//! on `--metrics-addr` by the agent's HTTP server (`http`, hyper).

use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use hyper::StatusCode;

use crate::http::Response;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    /// From the moment the agent sees an event to the moment the maps are written.
    pub programming_latency: Histogram,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub reconcile_errors: Family<KindLabels, Counter>,
    pub objects: Family<KindLabels, Gauge>,
    pub input_warnings: Family<KindLabels, Counter>,
    /// Policies with parts weir cannot compile, enforced fail-closed.
    pub policies_failed_closed: Family<KindLabels, Gauge>,
    pub ct_collected: Counter,
    pub repairs: Counter,
    pub udp_sockets_destroyed: Counter,
    pub netlink_overruns: Counter,
    /// Times the selection table grew (`lb::growth`).
    pub lb_table_growths: Counter,
    /// Registrations by weir-cni, by answer (`programmed`, or the refusal's status).
    pub registrations: Family<KindLabels, Counter>,
    pub registered_pods: Gauge,
    pub policy_verdicts: Family<crate::events::VerdictLabels, Counter>,
    pub policy_reports: Family<crate::events::ReportLabels, Counter>,
    /// Liveness and readiness (`/livez`, `/readyz`).
    pub probes: crate::probes::Probes,
    pub datapath: Arc<crate::dp_metrics::DatapathCollector>,
}

impl Metrics {
    pub fn new(layout: weir_datapath::PinLayout) -> Arc<Self> {
        let mut registry = Registry::with_prefix("weir");
        let datapath = Arc::new(crate::dp_metrics::DatapathCollector::new(layout));
        registry.register_collector(Box::new(datapath.clone()));
        let programming_latency =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(25e-6, 2.0, 18));
        let map_entries = Family::<MapLabels, Gauge>::default();
        let map_capacity = Family::<MapLabels, Gauge>::default();
        let reconcile_errors = Family::<KindLabels, Counter>::default();
        let objects = Family::<KindLabels, Gauge>::default();
        let input_warnings = Family::<KindLabels, Counter>::default();
        let policies_failed_closed = Family::<KindLabels, Gauge>::default();
        let ct_collected = Counter::default();
        let repairs = Counter::default();
        let udp_sockets_destroyed = Counter::default();
        let netlink_overruns = Counter::default();
        let lb_table_growths = Counter::default();
        let registrations = Family::<KindLabels, Counter>::default();
        let registered_pods = Gauge::default();
        let policy_verdicts = Family::<crate::events::VerdictLabels, Counter>::default();
        let policy_reports = Family::<crate::events::ReportLabels, Counter>::default();
        registry.register(
            "programming_latency_seconds",
            "Time from an object event to the datapath maps being written",
            programming_latency.clone(),
        );
        registry.register("map_entries", "Entries in each BPF map", map_entries.clone());
        registry.register("map_capacity", "Capacity of each BPF map", map_capacity.clone());
        registry.register("reconcile_errors", "Reconcile errors by kind", reconcile_errors.clone());
        registry.register("objects", "Cluster objects known, by kind", objects.clone());
        registry.register("input_warnings", "Rejected input (bad files, objects, fields)", input_warnings.clone());
        registry.register(
            "policies_failed_closed",
            "Policies with parts weir cannot compile, enforced fail-closed (Allow rules left out, Deny rules widened), by kind",
            policies_failed_closed.clone(),
        );
        registry.register("conntrack_collected", "Stale conntrack entries collected", ct_collected.clone());
        registry.register("drift_repairs", "Map entries repaired by full resync", repairs.clone());
        registry.register(
            "udp_sockets_destroyed",
            "Connected UDP sockets of the node's processes destroyed because their backend left its service",
            udp_sockets_destroyed.clone(),
        );
        registry.register(
            "netlink_overruns",
            "Times the kernel dropped link and route events (the receive buffer was full) and the agent listed links and routes again",
            netlink_overruns.clone(),
        );
        registry.register(
            "lb_table_growths",
            "Times the service selection table (WEIR_LB_TABLE) grew because services needed more slots; its size is weir_map_capacity{map=\"WEIR_LB_TABLE\"}",
            lb_table_growths.clone(),
        );
        registry.register(
            "endpoint_registrations",
            "Pods weir-cni registered on ADD, by answer (kind=programmed, or the refusal: not_found, conflict, unavailable, error, bad_request)",
            registrations.clone(),
        );
        registry.register("registered_pods", "Pod attachments registered by weir-cni and programmed", registered_pods.clone());
        registry.register(
            "policy_verdicts",
            "Policy verdicts on new flows reported by the datapath (denials always, allows when sampled)",
            policy_verdicts.clone(),
        );
        registry.register(
            "policy_reports",
            "Flows reported by Log rules (kind=log) and by audit-mode policies that would decide otherwise (kind=audit, would=allow|deny), by rule",
            policy_reports.clone(),
        );
        Arc::new(Self {
            registry,
            programming_latency,
            map_entries,
            map_capacity,
            reconcile_errors,
            objects,
            input_warnings,
            policies_failed_closed,
            ct_collected,
            repairs,
            udp_sockets_destroyed,
            netlink_overruns,
            lb_table_growths,
            registrations,
            registered_pods,
            policy_verdicts,
            policy_reports,
            probes: crate::probes::Probes::default(),
            datapath,
        })
    }

    pub fn set_map(&self, map: &str, entries: u64, capacity: u64) {
        let l = MapLabels { map: map.to_string() };
        self.map_entries.get_or_create(&l).set(entries as i64);
        self.map_capacity.get_or_create(&l).set(capacity as i64);
    }

    /// The fill of each conntrack table (one per family, and the IPv6
    /// masqueraded flows' reverse entries).
    pub fn set_conntrack_maps(&self, a: &weir_datapath::ct::CtAccount) {
        self.set_map(weir_common::maps::CT4, a.entries_v4, a.capacity_v4);
        self.set_map(weir_common::maps::CT6_MASQ, a.entries_masq6, a.capacity_masq6);
        self.set_map(weir_common::maps::CT, a.entries.saturating_sub(a.entries_v4 + a.entries_masq6), a.capacity.saturating_sub(a.capacity_v4 + a.capacity_masq6));
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    pub fn set_ready(&self) {
        self.probes.set_synced();
    }
}

fn probe(r: Result<(), String>) -> Response {
    match r {
        Ok(()) => Response::new(StatusCode::OK, "text/plain", "ok\n"),
        Err(why) => Response::new(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
    }
}

/// Serves `/metrics`, `/livez`, `/readyz` and `/healthz` (readiness) until
/// the process exits.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = crate::http::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /livez, /readyz and /healthz");
    crate::http::spawn(listener, move |path: String| {
        let m = metrics.clone();
        async move {
            match path.as_str() {
                "/metrics" => Response::new(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", m.encode()),
                "/livez" => probe(m.probes.liveness()),
                "/readyz" | "/healthz" => probe(m.probes.readiness()),
                _ => Response::new(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
            }
        }
    });
    Ok(())
}
