//! `weir stats -o json`, parsed.

use serde_json::Value;

use crate::node::Node;

/// Counters of one interface, as `weir stats -o json` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
}

impl IfCounters {
    pub fn delta(&self, before: &IfCounters) -> IfCounters {
        IfCounters {
            from_pod_packets: self.from_pod_packets - before.from_pod_packets,
            from_pod_bytes: self.from_pod_bytes - before.from_pod_bytes,
            to_pod_packets: self.to_pod_packets - before.to_pod_packets,
            to_pod_bytes: self.to_pod_bytes - before.to_pod_bytes,
        }
    }
}

/// Runs `weir stats -o json` in the node and returns the whole document.
pub fn weir_stats_json(node: &Node) -> Value {
    let out = node.weir(&["stats", "-o", "json"]);
    assert!(
        out.status.success(),
        "weir stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("weir stats -o json prints JSON")
}

/// The counters of `ifname` from `weir stats -o json` (zero if absent).
pub fn counters(node: &Node, ifname: &str) -> IfCounters {
    let doc = weir_stats_json(node);
    let ifaces = doc["interfaces"].as_array().expect("interfaces array");
    let Some(i) = ifaces.iter().find(|i| i["ifname"] == ifname) else {
        return IfCounters::default();
    };
    let n = |v: &Value| v.as_u64().expect("counter is a number");
    IfCounters {
        from_pod_packets: n(&i["from_pod"]["packets"]),
        from_pod_bytes: n(&i["from_pod"]["bytes"]),
        to_pod_packets: n(&i["to_pod"]["packets"]),
        to_pod_bytes: n(&i["to_pod"]["bytes"]),
    }
}
