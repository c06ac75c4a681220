//! A stable text form of desired service state, for golden tests:
//!
//! ```text
//! 10.96.0.10:80/tcp maglev affinity=none  <- default/web:http
//!   -> 10.244.1.2:8080 ready
//!   .. 10.244.1.9:8080 terminating serving
//! 192.0.2.1:30080/tcp NodePort masquerade=pods,outside maglev affinity=none  <- default/web:http
//! ```
//! `->` marks endpoints that take new connections, `..` endpoints kept only
//! for established flows. Frontends other than ClusterIPs name their kind
//! and masquerade (and `local-only`, `split`). Frontends are sorted;
//! endpoints are sorted.

use std::fmt::Write as _;

use crate::spec::{eligible, Endpoint, Kind, Masquerade, Selection, ServiceSpec};

fn conditions(e: &Endpoint) -> String {
    let mut c = Vec::new();
    if e.ready {
        c.push("ready");
    }
    if e.terminating {
        c.push("terminating");
    }
    if e.serving && !e.ready {
        c.push("serving");
    }
    if !e.serving && !e.ready {
        c.push("not-serving");
    }
    c.join(" ")
}

fn masquerade(m: Masquerade) -> &'static str {
    match (m.from_pods, m.from_outside) {
        (true, true) => "pods,outside",
        (true, false) => "pods",
        (false, true) => "outside",
        (false, false) => "none",
    }
}

fn endpoint(e: &Endpoint) -> String {
    match e.addr {
        std::net::IpAddr::V4(a) => format!("{a}:{}", e.port),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", e.port),
    }
}

/// Renders `specs` (any order) as stable text.
pub fn dump(specs: &[ServiceSpec]) -> String {
    let mut sorted: Vec<&ServiceSpec> = specs.iter().collect();
    sorted.sort_by(|a, b| a.frontend.cmp(&b.frontend).then(a.origin.cmp(&b.origin)));
    let mut out = String::new();
    if sorted.is_empty() {
        out.push_str("(no frontends)\n");
    }
    for s in sorted {
        let sel = match s.selection {
            Selection::Maglev => "maglev",
            Selection::Random => "random",
        };
        let aff = s.affinity_timeout_s.map_or("none".to_string(), |t| format!("clientip/{t}s"));
        let _ = write!(out, "{}", s.frontend);
        if s.kind != Kind::ClusterIp {
            let _ = write!(out, " {} masquerade={}", s.kind.as_str(), masquerade(s.masquerade));
            if s.split {
                out.push_str(" split");
            }
        }
        if s.local_only {
            out.push_str(" local-only");
        }
        if !s.source_ranges.is_empty() {
            let r: Vec<String> = s.source_ranges.iter().map(ToString::to_string).collect();
            let _ = write!(out, " sources={}", r.join(","));
        }
        let _ = write!(out, " {sel} affinity={aff}");
        if !s.origin.is_empty() {
            let _ = write!(out, "  <- {}", s.origin);
        }
        out.push('\n');
        let (elig, _) = eligible(&s.endpoints);
        let mut eps: Vec<&Endpoint> = s.endpoints.iter().collect();
        eps.sort();
        eps.dedup();
        if eps.is_empty() && s.local_only {
            out.push_str("  (no local endpoints: new connections are dropped)\n");
        } else if eps.is_empty() {
            out.push_str("  (no endpoints: connections are refused)\n");
        }
        for e in eps {
            let mark = if elig.contains(e) { "->" } else { ".." };
            let _ = writeln!(out, "  {mark} {} {}", endpoint(e), conditions(e));
        }
    }
    out
}
