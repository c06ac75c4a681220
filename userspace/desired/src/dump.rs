//! A stable text form of desired service state, for golden tests:
//!
//! ```text
//! 10.96.0.10:80/tcp maglev affinity=none  <- default/web:http
//!   -> 10.244.1.2:8080 ready
//!   .. 10.244.1.9:8080 terminating serving
//! ```
//! `->` marks endpoints that take new connections, `..` endpoints kept only
//! for established flows. Frontends are sorted; endpoints are sorted.

use std::fmt::Write as _;

use crate::spec::{eligible, Endpoint, Selection, ServiceSpec};

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
        let _ = write!(out, "{} {sel} affinity={aff}", s.frontend);
        if !s.origin.is_empty() {
            let _ = write!(out, "  <- {}", s.origin);
        }
        out.push('\n');
        let (elig, _) = eligible(&s.endpoints);
        let mut eps: Vec<&Endpoint> = s.endpoints.iter().collect();
        eps.sort();
        eps.dedup();
        if eps.is_empty() {
            out.push_str("  (no endpoints: connections are refused)\n");
        }
        for e in eps {
            let mark = if elig.contains(e) { "->" } else { ".." };
            let _ = writeln!(out, "  {mark} {} {}", endpoint(e), conditions(e));
        }
    }
    out
}
