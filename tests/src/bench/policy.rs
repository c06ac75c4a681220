//! The policy benchmark's topology and inputs: a client pod and a server
//! pod, and N ingress rules selecting the server (distinct /24 ipBlocks, so
//! every rule is its own identity and entry), plus the one rule that
//! admits the client.

use std::{fmt::Write as _, net::Ipv4Addr};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
pub const SERVER_PORT: u16 = 8080;

/// The client and server Pod objects.
pub fn pods(node: &str) -> String {
    let mut y = String::new();
    for (name, ip) in [("client", CLIENT_IP), ("server", SERVER_IP)] {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: x}}]\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
        );
    }
    y
}

/// `rules` ingress rules selecting the server, in policies of up to 100
/// rules; with `rules > 0`, the last rule admits the client. Empty for 0.
pub fn policies(rules: usize) -> String {
    let mut y = String::new();
    let mut i = 0;
    let mut policy = 0;
    while i < rules {
        let _ = write!(y, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{policy}, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n");
        for _ in 0..100 {
            if i >= rules {
                break;
            }
            if i + 1 == rules {
                let _ = writeln!(y, "  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]\n    ports: [{{port: {SERVER_PORT}}}]");
            } else {
                // 172.16.0.0/12 holds 4,096 /24s; beyond that use 100.64/10.
                let (a, b, c) = if i < 4096 { (172, 16 + (i >> 8) as u8, (i & 0xff) as u8) } else { (100, 64 + ((i - 4096) >> 8) as u8, ((i - 4096) & 0xff) as u8) };
                let _ = writeln!(y, "  - from: [{{ipBlock: {{cidr: {a}.{b}.{c}.0/24}}}}]\n    ports: [{{port: {}}}]", 1000 + (i % 60000));
            }
            i += 1;
        }
        y.push_str("---\n");
        policy += 1;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_policies_have_the_asked_rule_count() {
        for n in [0usize, 1, 100, 10_000] {
            let y = policies(n);
            assert_eq!(y.matches("  - from:").count(), n);
            assert_eq!(y.matches("kind: NetworkPolicy").count(), n.div_ceil(100));
        }
        let ten_k = policies(10_000);
        let cidrs: std::collections::BTreeSet<&str> = ten_k.lines().filter_map(|l| l.split("cidr: ").nth(1)).collect();
        assert_eq!(cidrs.len(), 9_999, "every rule but the client's has its own /24");
    }
}
