//! Generators for the rules kube-proxy itself would write for the same
//! Services and EndpointSlices (ClusterIP, TCP or UDP).
//!
//! iptables mode: `KUBE-SERVICES` (jumped to from PREROUTING and OUTPUT)
//! matches each cluster IP:port and jumps to `KUBE-SVC-*`, which picks an
//! endpoint with `statistic --mode random --probability 1/(n-i)` jumps to
//! `KUBE-SEP-*`, which marks hairpin traffic for masquerade and DNATs.
//! Loaded with iptables-restore. Chain-name hashes are weir's (FNV), not
//! kube-proxy's (SHA-256, base32); the structure is the same.
//!
//! nftables mode: table `ip kube-proxy`, a `service-ips` verdict map keyed
//! by `ipv4_addr . inet_proto . inet_service`, per-service chains choosing
//! with `numgen random mod n vmap`, per-endpoint chains that mark hairpin
//! traffic and DNAT. Loaded with `nft -f`.
//!
//! NodePorts (a service with `node_port`), as kube-proxy writes them for
//! externalTrafficPolicy: Cluster: iptables `KUBE-NODEPORTS` (the last
//! rule of `KUBE-SERVICES`, for local destinations) → `KUBE-EXT-*` (mark
//! for masquerade, then the service chain), and `KUBE-POSTROUTING`
//! masquerading marked traffic; nftables a `service-nodeports` verdict map
//! over `nodeport-ips`, `external-*` chains and the `masquerading` chain
//! in nat postrouting. Those masquerade rules are written only when a
//! NodePort exists, so the ClusterIP-only figures keep their rule set.
//!
//! IPv6 services get the same rules in kube-proxy's IPv6 proxier: the
//! `nat` table restored with ip6tables-restore (`/128` matches, DNAT to
//! `[addr]:port`), and table `ip6 kube-proxy` keyed by `ipv6_addr`. A
//! rule set is of one family: every service in it has its cluster IP and
//! endpoints of that family (as each of kube-proxy's proxiers sees them).
//!
//! Left out: external IPs, load balancers, firewall and reject chains for
//! services without endpoints.

use std::{fmt::Write as _, net::IpAddr};

/// A service port's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    /// As iptables and nft spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// As a Service's `ports[].protocol` spells it.
    pub fn k8s(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

/// One ClusterIP service port and its endpoints (of the cluster IP's
/// family).
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub endpoints: Vec<(IpAddr, u16)>,
    /// The service's NodePort, if it has one (TCP, eTP Cluster).
    pub node_port: Option<u16>,
}

/// What differs between the two families' rules.
struct Family {
    /// The nft table family (`ip`, `ip6`), also the nft address match.
    nft: &'static str,
    nft_addr: &'static str,
    host_len: u8,
}

/// The family of a rule set: that of its services' cluster IPs.
fn family(services: &[Svc]) -> Family {
    match services.first().map(|s| s.vip) {
        Some(IpAddr::V6(_)) => Family { nft: "ip6", nft_addr: "ipv6_addr", host_len: 128 },
        _ => Family { nft: "ip", nft_addr: "ipv4_addr", host_len: 32 },
    }
}

/// `addr:port` as DNAT targets are written (`[addr]:port` for IPv6).
fn target(ep: &(IpAddr, u16)) -> String {
    std::net::SocketAddr::from(*ep).to_string()
}

fn h(s: &str) -> String {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        x ^= u64::from(b);
        x = x.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{x:016X}")
}

/// The service port's name as kube-proxy hashes it into chain names.
fn port_name(s: &Svc) -> String {
    format!("{}:{}/{}", s.name, s.port, s.proto.as_str())
}

fn svc_chain(s: &Svc) -> String {
    format!("KUBE-SVC-{}", h(&port_name(s)))
}

fn ext_chain(s: &Svc) -> String {
    format!("KUBE-EXT-{}", h(&port_name(s)))
}

fn sep_chain(s: &Svc, ep: &(IpAddr, u16)) -> String {
    format!("KUBE-SEP-{}", h(&format!("{}{}:{}", port_name(s), ep.0, ep.1)))
}

/// A KUBE-SERVICES rule: the cluster IP and port jump to the service chain.
fn services_rule(s: &Svc) -> String {
    let p = s.proto.as_str();
    let len = family(std::slice::from_ref(s)).host_len;
    format!("-A KUBE-SERVICES -d {}/{len} -p {p} -m comment --comment \"{} cluster IP\" -m {p} --dport {} -j {}\n", s.vip, s.name, s.port, svc_chain(s))
}

/// The `nat` table as kube-proxy's iptables mode would restore it.
pub fn iptables_restore(services: &[Svc]) -> String {
    let mut o = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    let node_ports: Vec<&Svc> = services.iter().filter(|s| s.node_port.is_some()).collect();
    if !node_ports.is_empty() {
        o.push_str(":KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    }
    for s in services {
        let _ = writeln!(o, ":{} - [0:0]", svc_chain(s));
        if s.node_port.is_some() {
            let _ = writeln!(o, ":{} - [0:0]", ext_chain(s));
        }
        for ep in &s.endpoints {
            let _ = writeln!(o, ":{} - [0:0]", sep_chain(s, ep));
        }
    }
    o.push_str("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    o.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    o.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    if !node_ports.is_empty() {
        o.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
        o.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
        o.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
        o.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    }
    o.push_str(&iptables_service_rules(services));
    if !node_ports.is_empty() {
        o.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    }
    for s in node_ports {
        let np = s.node_port.unwrap_or_default();
        let _ = writeln!(o, "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{}\" -m tcp --dport {np} -j {}", s.name, ext_chain(s));
        let _ = writeln!(o, "-A {} -m comment --comment \"masquerade traffic for {} external destinations\" -j KUBE-MARK-MASQ", ext_chain(s), s.name);
        let _ = writeln!(o, "-A {} -j {}", ext_chain(s), svc_chain(s));
    }
    o.push_str("COMMIT\n");
    o
}

/// KUBE-SERVICES jumps and every service's chains (the part a sync rewrites).
fn iptables_service_rules(services: &[Svc]) -> String {
    let mut o = String::new();
    for s in services {
        o.push_str(&services_rule(s));
    }
    for s in services {
        o.push_str(&iptables_chain_rules(s));
    }
    o
}

fn iptables_chain_rules(s: &Svc) -> String {
    let mut o = String::new();
    let n = s.endpoints.len();
    for (i, ep) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(s, ep);
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            let _ = writeln!(o, "-A {} -m comment --comment \"{} -> {}\" -m statistic --mode random --probability {p:.11} -j {sep}", svc_chain(s), s.name, target(ep));
        } else {
            let _ = writeln!(o, "-A {} -m comment --comment \"{} -> {}\" -j {sep}", svc_chain(s), s.name, target(ep));
        }
        let len = family(std::slice::from_ref(s)).host_len;
        let _ = writeln!(o, "-A {sep} -s {}/{len} -m comment --comment \"{}\" -j KUBE-MARK-MASQ", ep.0, s.name);
        let p = s.proto.as_str();
        let _ = writeln!(o, "-A {sep} -p {p} -m comment --comment \"{}\" -m {p} -j DNAT --to-destination {}", s.name, target(ep));
    }
    o
}

/// What a kube-proxy partial sync restores when one service changed
/// (`iptables-restore --noflush`): KUBE-SERVICES in full, plus the changed
/// service's chains.
pub fn iptables_one_change(services: &[Svc], changed: &Svc) -> String {
    let mut o = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let _ = writeln!(o, ":{} - [0:0]", svc_chain(changed));
    for ep in &changed.endpoints {
        let _ = writeln!(o, ":{} - [0:0]", sep_chain(changed, ep));
    }
    for s in services {
        o.push_str(&services_rule(s));
    }
    o.push_str(&iptables_chain_rules(changed));
    o.push_str("COMMIT\n");
    o
}

fn nft_svc(s: &Svc) -> String {
    format!("service-{}", h(&port_name(s)))
}

fn nft_ep(s: &Svc, ep: &(IpAddr, u16)) -> String {
    format!("endpoint-{}", h(&format!("{}{}:{}", port_name(s), ep.0, ep.1)))
}

/// One endpoint's chain: hairpin traffic marked, then DNAT.
fn nft_endpoint_rules(s: &Svc, ep: &(IpAddr, u16), o: &mut String) {
    let f = family(std::slice::from_ref(s)).nft;
    let _ = writeln!(o, "add rule {f} kube-proxy {} {f} saddr {} jump mark-for-masquerade", nft_ep(s, ep), ep.0);
    let _ = writeln!(o, "add rule {f} kube-proxy {} meta l4proto {} dnat to {}", nft_ep(s, ep), s.proto.as_str(), target(ep));
}

/// The service chain: an endpoint chosen at random.
fn nft_pick_rule(s: &Svc, o: &mut String) {
    let f = family(std::slice::from_ref(s)).nft;
    let arms: Vec<String> = s.endpoints.iter().enumerate().map(|(i, ep)| format!("{i} : goto {}", nft_ep(s, ep))).collect();
    let _ = writeln!(o, "add rule {f} kube-proxy {} numgen random mod {} vmap {{ {} }}", nft_svc(s), s.endpoints.len(), arms.join(", "));
}

fn nft_service_chains(s: &Svc, o: &mut String) {
    let f = family(std::slice::from_ref(s)).nft;
    for ep in &s.endpoints {
        let _ = writeln!(o, "add chain {f} kube-proxy {}", nft_ep(s, ep));
        nft_endpoint_rules(s, ep, o);
    }
    let _ = writeln!(o, "add chain {f} kube-proxy {}", nft_svc(s));
    nft_pick_rule(s, o);
}

/// The `ip kube-proxy` (or `ip6 kube-proxy`) table as kube-proxy's
/// nftables mode would write it.
pub fn nft_script(services: &[Svc]) -> String {
    let Family { nft: f, nft_addr, .. } = family(services);
    let mut o = format!(
        "add table {f} kube-proxy\n\
         add chain {f} kube-proxy mark-for-masquerade\n\
         add rule {f} kube-proxy mark-for-masquerade meta mark set meta mark or 0x4000\n\
         add map {f} kube-proxy service-ips {{ type {nft_addr} . inet_proto . inet_service : verdict ; }}\n\
         add chain {f} kube-proxy services\n\
         add rule {f} kube-proxy services {f} daddr . meta l4proto . th dport vmap @service-ips\n\
         add chain {f} kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; policy accept ; }}\n\
         add rule {f} kube-proxy nat-prerouting jump services\n\
         add chain {f} kube-proxy nat-output {{ type nat hook output priority -100 ; policy accept ; }}\n\
         add rule {f} kube-proxy nat-output jump services\n",
    );
    for s in services {
        nft_service_chains(s, &mut o);
        let _ = writeln!(o, "add element {f} kube-proxy service-ips {{ {} . {} . {} : goto {} }}", s.vip, s.proto.as_str(), s.port, nft_svc(s));
    }
    o
}

/// [`nft_script`] plus the NodePorts of `services` on `node_ips`, with
/// the masquerade kube-proxy's nftables mode adds for them.
pub fn nft_script_with_node_ports(services: &[Svc], node_ips: &[std::net::Ipv4Addr]) -> String {
    let mut o = nft_script(services);
    let ips: Vec<String> = node_ips.iter().map(std::net::Ipv4Addr::to_string).collect();
    o.push_str(
        "add chain ip kube-proxy masquerading\n\
         add rule ip kube-proxy masquerading meta mark & 0x4000 == 0 return\n\
         add rule ip kube-proxy masquerading meta mark set meta mark ^ 0x4000\n\
         add rule ip kube-proxy masquerading masquerade fully-random\n\
         add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; policy accept ; }\n\
         add rule ip kube-proxy nat-postrouting jump masquerading\n\
         add set ip kube-proxy nodeport-ips { type ipv4_addr ; }\n\
         add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; }\n\
         add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n",
    );
    let _ = writeln!(o, "add element ip kube-proxy nodeport-ips {{ {} }}", ips.join(", "));
    for s in services.iter().filter(|s| s.node_port.is_some()) {
        let ext = format!("external-{}", h(&port_name(s)));
        let _ = writeln!(o, "add chain ip kube-proxy {ext}");
        let _ = writeln!(o, "add rule ip kube-proxy {ext} jump mark-for-masquerade");
        let _ = writeln!(o, "add rule ip kube-proxy {ext} goto {}", nft_svc(s));
        let _ = writeln!(o, "add element ip kube-proxy service-nodeports {{ tcp . {} : goto {ext} }}", s.node_port.unwrap_or_default());
    }
    o
}

/// What kube-proxy's nftables mode sends when one service's endpoints
/// changed: the service chain rewritten, new endpoint chains added.
pub fn nft_one_change(changed: &Svc) -> String {
    let f = family(std::slice::from_ref(changed)).nft;
    let mut o = String::new();
    let _ = writeln!(o, "flush chain {f} kube-proxy {}", nft_svc(changed));
    for ep in &changed.endpoints {
        let _ = writeln!(o, "add chain {f} kube-proxy {}", nft_ep(changed, ep));
        let _ = writeln!(o, "flush chain {f} kube-proxy {}", nft_ep(changed, ep));
        nft_endpoint_rules(changed, ep, &mut o);
    }
    nft_pick_rule(changed, &mut o);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    fn svc() -> Svc {
        Svc {
            name: "default/web:http".into(),
            vip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 80,
            endpoints: (11..=13).map(|i| (Ipv4Addr::new(10, 244, 0, i).into(), 8080)).collect(),
            node_port: None,
            proto: Proto::Tcp,
        }
    }

    fn svc6() -> Svc {
        Svc {
            vip: "fd00:10:96::10".parse::<Ipv6Addr>().expect("v6").into(),
            endpoints: (11..=13).map(|i| (Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, i).into(), 8080)).collect(),
            ..svc()
        }
    }

    #[test]
    fn ipv6_services_get_the_ipv6_proxiers_rules() {
        let r = iptables_restore(&[svc6()]);
        assert!(r.contains("-A KUBE-SERVICES -d fd00:10:96::10/128 -p tcp"), "{r}");
        assert!(r.contains("-s fd00:10:244::b/128 -m comment"), "{r}");
        assert!(r.contains("-j DNAT --to-destination [fd00:10:244::b]:8080"), "{r}");
        assert!(!r.contains("/32"), "{r}");
        let n = nft_script(&[svc6()]);
        assert!(n.starts_with("add table ip6 kube-proxy\n"), "{n}");
        assert!(n.contains("type ipv6_addr . inet_proto . inet_service : verdict"));
        assert!(n.contains("services ip6 daddr . meta l4proto . th dport vmap @service-ips"));
        assert!(n.contains("ip6 saddr fd00:10:244::b jump mark-for-masquerade"));
        assert!(n.contains("dnat to [fd00:10:244::b]:8080"));
        assert!(n.contains("add element ip6 kube-proxy service-ips { fd00:10:96::10 . tcp . 80 : goto service-"));
        assert!(!n.contains(" ip kube-proxy"), "{n}");
        assert!(nft_one_change(&svc6()).starts_with("flush chain ip6 kube-proxy service-"));
    }

    #[test]
    fn a_udp_service_gets_udp_rules_and_its_own_chains() {
        let udp = Svc { proto: Proto::Udp, ..svc() };
        let r = iptables_restore(std::slice::from_ref(&udp));
        assert!(r.contains("-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"default/web:http cluster IP\" -m udp --dport 80"));
        assert_eq!(r.matches("-p udp -m comment --comment \"default/web:http\" -m udp -j DNAT").count(), 3);
        assert!(!r.contains("tcp"), "{r}");
        assert_ne!(svc_chain(&udp), svc_chain(&svc()), "TCP and UDP ports of one service have separate chains");
        let n = nft_script(std::slice::from_ref(&udp));
        assert!(n.contains("{ 10.96.0.10 . udp . 80 : goto service-"));
        assert_eq!(n.matches("meta l4proto udp dnat to").count(), 3);
        assert_eq!(nft_one_change(&udp).matches("meta l4proto udp dnat to").count(), 3);
    }

    #[test]
    fn iptables_rules_follow_kube_proxy_probabilities() {
        let r = iptables_restore(&[svc()]);
        assert!(r.contains("-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp"));
        assert!(r.contains("--probability 0.33333333333"));
        assert!(r.contains("--probability 0.50000000000"));
        assert_eq!(r.matches("-j DNAT --to-destination").count(), 3);
        assert!(r.ends_with("COMMIT\n"));
    }

    #[test]
    fn nft_script_uses_a_verdict_map_and_numgen() {
        let s = nft_script(&[svc()]);
        assert!(s.contains("vmap @service-ips"));
        assert!(s.contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(s.contains("add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-"));
        assert_eq!(s.matches("dnat to").count(), 3);
        assert!(nft_one_change(&svc()).starts_with("flush chain ip kube-proxy service-"));
    }

    #[test]
    fn node_ports_jump_from_the_last_services_rule_and_masquerade() {
        let np = Svc { node_port: Some(30080), ..svc() };
        let r = iptables_restore(std::slice::from_ref(&np));
        let last_services = r.lines().rfind(|l| l.starts_with("-A KUBE-SERVICES")).unwrap_or_default();
        assert!(last_services.contains("--dst-type LOCAL -j KUBE-NODEPORTS"), "{last_services}");
        assert!(r.contains("--dport 30080 -j KUBE-EXT-"));
        assert!(r.contains("-j MASQUERADE --random-fully"));
        assert!(!iptables_restore(&[svc()]).contains("KUBE-POSTROUTING"), "no NodePort, no masquerade rules");
        let n = nft_script_with_node_ports(&[np], &[Ipv4Addr::new(192, 168, 0, 11)]);
        assert!(n.contains("add element ip kube-proxy service-nodeports { tcp . 30080 : goto external-"));
        assert!(n.contains("nodeport-ips { 192.168.0.11 }"));
        assert!(n.contains("masquerade fully-random"));
    }
}
