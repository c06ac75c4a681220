//! `weir service list` and `weir backend list`: the service maps as the
//! kernel reads them.

use std::net::IpAddr;

use aya::maps::{HashMap, MapData};
use serde::Serialize;
use weir_common::{
    lb::{
        svc_kind, Backend, FrontendKey, Service, BACKEND_F_TERMINATING, SCOPE_EXTERNAL, SVC_F_AFFINITY, SVC_F_LOCAL_ONLY, SVC_F_MASQ_LOCAL,
        SVC_F_MASQ_REMOTE, SVC_F_RANDOM, SVC_F_TERMINATING_FALLBACK, SVC_F_VIP_MARKER,
    },
    maps::{BACKENDS, FRONTENDS},
};
use weir_datapath::{explain::proto_name, lb::spec::Kind, pinned, PinLayout};

use crate::output::{addr_port, print_rows, Format};

#[derive(Debug, Serialize)]
struct ServiceRow {
    id: u32,
    address: IpAddr,
    port: u16,
    protocol: &'static str,
    /// ClusterIP, NodePort, LoadBalancer or ExternalIP.
    kind: &'static str,
    /// Whom the entry serves: `all`, or `outside` (the external entry of
    /// an externalTrafficPolicy: Local frontend).
    serves: &'static str,
    /// `local`: this node's endpoints only (internal or external traffic
    /// policy Local); `cluster`: every endpoint.
    endpoints: &'static str,
    /// Whose new flows are masqueraded to the node address.
    masquerade: &'static str,
    selection: &'static str,
    eligible_backends: u32,
    table_base: u32,
    table_len: u32,
    affinity_timeout_s: Option<u32>,
    terminating_fallback: bool,
}

#[derive(Debug, Serialize)]
struct BackendRow {
    id: u32,
    address: IpAddr,
    port: u16,
    protocol: &'static str,
    terminating: bool,
}

pub fn services(layout: &PinLayout, format: Format) -> anyhow::Result<()> {
    let map: HashMap<MapData, FrontendKey, Service> = pinned::hash(layout, FRONTENDS)?;
    let mut rows: Vec<ServiceRow> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, s)| s.flags & SVC_F_VIP_MARKER == 0)
        .map(|(k, s)| ServiceRow {
            id: s.id,
            address: IpAddr::from(k.addr),
            port: u16::from_be(k.port),
            protocol: proto_name(k.proto),
            kind: Kind::from_number(svc_kind(s.flags)).as_str(),
            serves: if k.scope == SCOPE_EXTERNAL { "outside" } else { "all" },
            endpoints: if s.flags & SVC_F_LOCAL_ONLY != 0 { "local" } else { "cluster" },
            masquerade: match (s.flags & SVC_F_MASQ_LOCAL != 0, s.flags & SVC_F_MASQ_REMOTE != 0) {
                (true, true) => "pods,outside",
                (true, false) => "pods",
                (false, true) => "outside",
                (false, false) => "none",
            },
            selection: if s.flags & SVC_F_RANDOM != 0 { "random" } else { "maglev" },
            eligible_backends: s.backend_count,
            table_base: s.table_base,
            table_len: s.table_len,
            affinity_timeout_s: (s.flags & SVC_F_AFFINITY != 0).then_some(s.affinity_timeout_s),
            terminating_fallback: s.flags & SVC_F_TERMINATING_FALLBACK != 0,
        })
        .collect();
    rows.sort_by_key(|r| (r.address, r.port, r.protocol, r.serves));
    let headers = ["ID", "FRONTEND", "KIND", "SERVES", "ENDPOINTS", "MASQUERADE", "SELECTION", "BACKENDS", "SLOTS", "AFFINITY"];
    print_rows(format, &rows, &headers, |r| {
        vec![
            r.id.to_string(),
            format!("{}/{}", addr_port(r.address, r.port), r.protocol),
            r.kind.into(),
            r.serves.into(),
            r.endpoints.into(),
            r.masquerade.into(),
            r.selection.into(),
            r.eligible_backends.to_string(),
            format!("{}+{}", r.table_base, r.table_len),
            r.affinity_timeout_s.map_or("-".into(), |t| format!("{t}s")),
        ]
    })
}

pub fn backends(layout: &PinLayout, format: Format) -> anyhow::Result<()> {
    let map: HashMap<MapData, u32, Backend> = pinned::hash(layout, BACKENDS)?;
    let mut rows: Vec<BackendRow> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(id, b)| BackendRow { id, address: IpAddr::from(b.addr), port: u16::from_be(b.port), protocol: proto_name(b.proto), terminating: b.flags & BACKEND_F_TERMINATING != 0 })
        .collect();
    rows.sort_by_key(|r| r.id);
    print_rows(format, &rows, &["ID", "BACKEND", "STATE"], |r| {
        vec![r.id.to_string(), format!("{}/{}", addr_port(r.address, r.port), r.protocol), if r.terminating { "terminating".into() } else { "-".into() }]
    })
}
