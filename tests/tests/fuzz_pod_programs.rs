//! The pod programs against many thousands of random and mutated packets
//! (BPF_PROG_TEST_RUN): truncated headers, IP options, fragments, bad
//! lengths, ICMP errors quoting random tuples, random sources and
//! EtherTypes, and the same over IPv6 (extension-header chains, fragment
//! headers, payload lengths that lie, neighbour discovery and MLD with
//! any hop limit, ICMPv6 errors), under a default-deny policy with one
//! allowed flow: A → V:8080/TCP, directly or through VIP:80, and
//! A6 → V6:8080/TCP between the same pods' IPv6 addresses, directly or
//! through VIP6:80 (so ICMPv6 errors quoting a service flow are
//! translated, and forged ones tried).
//!
//! It asserts that the programs never forward a packet the policy denies,
//! never return anything but a tc verdict, and leave no conntrack entry
//! that a later packet could ride except entries of the allowed flow.
//! The seed is printed; `WEIR_FUZZ_SEED=<n>` replays a run and
//! `WEIR_FUZZ_PACKETS=<n>` changes its length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weir_common::{
    ct::{CT_POLICY, CT_SVC_FWD, CT_SVC_REV},
    policy::{IpInfo, PolicyValue, DIR_EGRESS, DIR_INGRESS, ID_WORLD},
};
use weir_datapath::{attach::Hook, ct::Conntrack, lb::{spec::Protocol, Lb}, policy::PolicyMaps};
use weir_desired::policy::{EndpointSpec, PolicyEntry, PolicyState, Prefix};
use weir_tests::{
    privileged,
    services::cluster_ip,
    testrun::{self, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX},
};

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const V: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// The source V6 sees when it reaches itself through VIP6
/// (`weir_common::config::HAIRPIN_V6`).
const HAIRPIN6: Ipv6Addr = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0xa9fe, 0x2a01);
const PORT: u16 = 8080;
const UPLINK: u32 = 1;

/// A small deterministic PRNG (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn addr(r: &mut Rng) -> Ipv4Addr {
    match r.below(6) {
        0 | 1 => A,
        2 => V,
        3 => VIP,
        4 => Ipv4Addr::new(10, 244, 0, r.below(8) as u8),
        _ => Ipv4Addr::from(r.next() as u32),
    }
}

fn port(r: &mut Rng) -> u16 {
    match r.below(4) {
        0 => PORT,
        1 => 80,
        2 => 40000 + r.below(4) as u16,
        _ => r.next() as u16,
    }
}

fn addr6(r: &mut Rng) -> Ipv6Addr {
    match r.below(8) {
        0 | 1 => A6,
        2 => V6,
        6 => VIP6,
        3 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, r.below(4) as u16),
        4 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, r.pick(&[1, 2, 0x16, 0xfb])),
        5 => Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, r.below(8) as u16),
        _ => Ipv6Addr::from((u128::from(r.next()) << 64) | u128::from(r.next())),
    }
}

/// An Ethernet + IPv6 frame around `payload`, whose first header is `next`.
fn ip6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60, 0, 0, 0];
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, hop]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

/// A random IPv6 packet.
fn packet6(r: &mut Rng) -> Vec<u8> {
    let (src, dst) = (addr6(r), addr6(r));
    let mut p = match r.below(8) {
        0..=2 => {
            let mut p = testrun::tcp6((src, port(r)), (dst, port(r)), r.chance(50), &vec![0x5a; r.below(64) as usize]);
            let any = r.next() as u8;
            p[14 + 40 + 13] = r.pick(&[0x02, 0x12, 0x10, 0x18, 0x11, 0x04, any]);
            p
        }
        3 => testrun::udp6((src, port(r)), (dst, port(r)), &vec![0x33; r.below(200) as usize]),
        4 => testrun::icmp6_echo(src, dst, r.next() as u16, 1),
        5 => {
            // Any ICMPv6 message (errors, neighbour discovery, MLD) with
            // any hop limit, quoting a random TCP or UDP packet.
            let about = if r.chance(50) {
                testrun::tcp6((addr6(r), port(r)), (addr6(r), port(r)), r.chance(50), b"")
            } else {
                testrun::udp6((addr6(r), port(r)), (addr6(r), port(r)), b"q")
            };
            let any = r.next() as u8;
            let ty = r.pick(&[1u8, 2, 3, 4, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 143, any]);
            let mut m = vec![ty, r.below(8) as u8, 0, 0, 0, 0, 5, 0];
            m.extend_from_slice(&about[14..]);
            let any = r.next() as u8;
            ip6(src, dst, 58, r.pick(&[255, 1, 64, any]), &m)
        }
        _ => {
            // An extension-header chain before TCP or UDP: any kinds, any
            // order, a fragment header with any offset, flag and id.
            let inner = if r.chance(50) {
                testrun::tcp6((src, port(r)), (dst, port(r)), true, b"")
            } else {
                testrun::udp6((src, port(r)), (dst, port(r)), &[0x44; 48])
            };
            let upper = inner[14 + 6];
            let kinds: Vec<u8> = (0..r.below(10)).map(|_| r.pick(&[0u8, 43, 44, 51, 60])).collect();
            let mut ext = Vec::new();
            for (i, &kind) in kinds.iter().enumerate() {
                let next = kinds.get(i + 1).copied().unwrap_or(upper);
                let mut h = match kind {
                    44 => {
                        let off = if r.chance(50) { 0 } else { r.below(200) as u16 };
                        let mut h = vec![0u8; 8];
                        h[2..4].copy_from_slice(&((off << 3) | r.below(2) as u16).to_be_bytes());
                        h[7] = r.below(4) as u8;
                        h
                    }
                    51 => {
                        let len = 4 * (3 + r.below(4) as usize);
                        let mut h = vec![0u8; len];
                        h[1] = (len / 4 - 2) as u8;
                        h
                    }
                    _ => {
                        let len = 8 * (1 + r.below(3) as usize);
                        let mut h = vec![0u8; len];
                        h[1] = (len / 8 - 1) as u8;
                        h
                    }
                };
                h[0] = next;
                ext.extend(h);
            }
            let first = kinds.first().copied().unwrap_or(upper);
            let mut payload = ext;
            payload.extend_from_slice(&inner[14 + 40..]);
            ip6(src, dst, first, 64, &payload)
        }
    };
    // Mutations: a payload length that lies, any byte after the addresses,
    // a cut (no shorter than the fixed header: test_run refuses less).
    for _ in 0..r.below(3) {
        match r.below(4) {
            0 => {
                let len = ((p.len() - 54) as u16).wrapping_add((r.below(41) as u16).wrapping_sub(20));
                p[18..20].copy_from_slice(&len.to_be_bytes());
            }
            1 if p.len() > 54 => {
                let i = 54 + r.below((p.len() - 54) as u64) as usize;
                p[i] = r.next() as u8;
            }
            2 if p.len() > 54 => {
                let n = 54 + r.below((p.len() - 54) as u64) as usize;
                p.truncate(n);
            }
            _ => {
                let any = r.next() as u8;
                p[20] = r.pick(&[0u8, 6, 17, 43, 44, 51, 58, 59, 60, any]);
            }
        }
    }
    p
}

/// A random packet, then random mutations.
fn packet(r: &mut Rng) -> Vec<u8> {
    if r.chance(35) {
        return packet6(r);
    }
    let (src, dst) = (addr(r), addr(r));
    let mut p = match r.below(10) {
        0..=3 => {
            let mut p = testrun::tcp4((src, port(r)), (dst, port(r)), r.chance(50), &vec![0x5a; r.below(64) as usize]);
            let any = r.next() as u8;
            p[14 + 20 + 13] = r.pick(&[0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01, 0x00, any]);
            p
        }
        4 | 5 => testrun::udp4((src, port(r)), (dst, port(r)), &vec![0x33; r.below(200) as usize]),
        6 => testrun::icmp4_echo(src, dst, r.next() as u16, 1),
        7 => {
            let about = if r.chance(50) {
                testrun::tcp4((addr(r), port(r)), (addr(r), port(r)), r.chance(50), b"")
            } else {
                testrun::udp4((addr(r), port(r)), (addr(r), port(r)), b"q")
            };
            testrun::icmp4_error(src, dst, r.pick(&[3, 11, 12]), r.below(16) as u8, r.next() as u32, &about)
        }
        8 => {
            let big = testrun::udp4((src, port(r)), (dst, port(r)), &[0x44; 200]);
            let (a, b) = testrun::fragments(&big, r.next() as u16, 8 * (1 + r.below(20) as usize));
            if r.chance(50) { a } else { b }
        }
        _ => {
            let any = r.next() as u16;
            let ethertype = r.pick(&[0x0806, 0x86dd, 0x8100, 0x88cc, any]);
            testrun::frame(ethertype, &vec![0; 40 + r.below(60) as usize])
        }
    };
    // BPF_PROG_TEST_RUN refuses an IPv4 frame shorter than an IP header
    // (EINVAL), so truncation stops there; the parser's own bounds are
    // covered by longer frames whose lengths lie.
    let min = match (p.len() >= 14).then(|| [p[12], p[13]]) {
        Some([0x08, 0x00]) => 34,
        Some([0x86, 0xdd]) => 54,
        _ => 14,
    };
    for _ in 0..r.below(4) {
        match r.below(7) {
            0 if p.len() > min => {
                let n = min + r.below((p.len() - min) as u64) as usize;
                p.truncate(n);
            }
            1 if p.len() > 34 && min == 34 => {
                // Any byte of the IPv4 header.
                let i = 14 + r.below(20) as usize;
                p[i] = r.next() as u8;
                if r.chance(70) {
                    testrun::fix_ipv4_csum(&mut p);
                }
            }
            2 if p.len() > 34 && min == 34 => {
                // IP options: a bigger header length, option bytes inserted.
                let extra = 4 * (1 + r.below(10) as usize);
                let opts: Vec<u8> = (0..extra)
                    .map(|_| {
                        let any = r.next() as u8;
                        r.pick(&[1u8, 0, 7, 68, 130, any])
                    })
                    .collect();
                p.splice(34..34, opts);
                p[14] = 0x40 | ((20 + extra) / 4) as u8;
                let tot = (p.len() - 14) as u16;
                p[16..18].copy_from_slice(&tot.to_be_bytes());
                testrun::fix_ipv4_csum(&mut p);
            }
            3 if p.len() > 34 && min == 34 => {
                // Fragment bits and offsets.
                let word = (r.next() as u16) & 0x3fff;
                p[20..22].copy_from_slice(&word.to_be_bytes());
                testrun::fix_ipv4_csum(&mut p);
            }
            4 if p.len() > 34 && min == 34 => {
                // Total length off by a little or a lot.
                let tot = (p.len() as u16).wrapping_sub(14).wrapping_add((r.below(41) as u16).wrapping_sub(20));
                p[16..18].copy_from_slice(&tot.to_be_bytes());
                testrun::fix_ipv4_csum(&mut p);
            }
            5 if p.len() > 40 => {
                let i = 34 + r.below((p.len() - 34) as u64) as usize;
                p[i] = r.next() as u8;
            }
            _ => {}
        }
    }
    p
}

/// An IPv6 packet as the oracle sees it, walked independently of the
/// datapath: `None` when its header chain cannot be read.
#[derive(Debug)]
struct Seen6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    proto: u8,
    /// Any fragment header; a later fragment (offset > 0) has no ports.
    fragment: bool,
    later: bool,
    sport: u16,
    dport: u16,
    icmp_type: Option<u8>,
    /// ICMPv6 errors: the quoted packet.
    quoted: Option<Box<Seen6>>,
}

fn seen6(p: &[u8]) -> Option<Seen6> {
    if p.len() < 40 {
        return None;
    }
    let end = (40 + usize::from(u16::from_be_bytes([p[4], p[5]]))).min(p.len());
    let mut s = Seen6 {
        src: Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?),
        dst: Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?),
        hop: p[7],
        proto: p[6],
        fragment: false,
        later: false,
        sport: 0,
        dport: 0,
        icmp_type: None,
        quoted: None,
    };
    let mut off = 40;
    for _ in 0..32 {
        let len = match s.proto {
            0 | 43 | 60 => 8 * (usize::from(*p.get(off + 1)?) + 1),
            51 => 4 * (usize::from(*p.get(off + 1)?) + 2),
            44 => {
                let fo = u16::from_be_bytes([*p.get(off + 2)?, *p.get(off + 3)?]);
                s.fragment = true;
                s.later = fo >> 3 != 0;
                8
            }
            _ => break,
        };
        if off + len > end {
            return None;
        }
        s.proto = p[off];
        off += len;
        if s.later {
            return Some(s);
        }
    }
    if matches!(s.proto, 6 | 17) && off + 4 <= end {
        s.sport = u16::from_be_bytes([p[off], p[off + 1]]);
        s.dport = u16::from_be_bytes([p[off + 2], p[off + 3]]);
    }
    if s.proto == 58 && off + 8 <= end {
        s.icmp_type = Some(p[off]);
        if (1..=4).contains(&p[off]) {
            s.quoted = seen6(&p[off + 8..end]).map(Box::new);
        }
    }
    Some(s)
}

/// What a forwarded packet is, as far as the oracle cares.
#[derive(Debug)]
struct Seen {
    ipv4: bool,
    ethertype: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    first: bool,
    sport: u16,
    dport: u16,
    /// ICMP errors: the quoted tuple (src, dst, proto, sport, dport).
    quoted: Option<(Ipv4Addr, Ipv4Addr, u8, u16, u16)>,
    /// An IPv6 frame's packet (`None` for IPv6 the oracle cannot walk).
    v6: Option<Seen6>,
}

fn seen(p: &[u8]) -> Seen {
    let ethertype = if p.len() >= 14 { u16::from_be_bytes([p[12], p[13]]) } else { 0 };
    let mut s = Seen { ipv4: false, ethertype, src: Ipv4Addr::UNSPECIFIED, dst: Ipv4Addr::UNSPECIFIED, proto: 0, first: false, sport: 0, dport: 0, quoted: None, v6: None };
    if ethertype == 0x86dd {
        s.v6 = seen6(p.get(14..).unwrap_or_default());
        return s;
    }
    if ethertype != 0x0800 || p.len() < 34 {
        return s;
    }
    let ihl = usize::from(p[14] & 0x0f) * 4;
    s.ipv4 = true;
    s.src = Ipv4Addr::new(p[26], p[27], p[28], p[29]);
    s.dst = Ipv4Addr::new(p[30], p[31], p[32], p[33]);
    s.proto = p[23];
    s.first = u16::from_be_bytes([p[20], p[21]]) & 0x1fff == 0;
    let l4 = 14 + ihl;
    if s.first && p.len() >= l4 + 4 && (s.proto == 6 || s.proto == 17) {
        s.sport = u16::from_be_bytes([p[l4], p[l4 + 1]]);
        s.dport = u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]);
    }
    if s.first && s.proto == 1 && p.len() >= l4 + 8 + 20 + 4 && matches!(p[l4], 3 | 11 | 12) {
        let q = l4 + 8;
        let qihl = usize::from(p[q] & 0x0f) * 4;
        if p.len() >= q + qihl + 4 {
            s.quoted = Some((
                Ipv4Addr::new(p[q + 12], p[q + 13], p[q + 14], p[q + 15]),
                Ipv4Addr::new(p[q + 16], p[q + 17], p[q + 18], p[q + 19]),
                p[q + 9],
                u16::from_be_bytes([p[q + qihl], p[q + qihl + 1]]),
                u16::from_be_bytes([p[q + qihl + 2], p[q + qihl + 3]]),
            ));
        }
    }
    s
}

/// The allowed flow, seen from either end: A:any ↔ V:8080 over TCP (or
/// A ↔ VIP:80 before translation).
fn allowed_tcp(a_side: (Ipv4Addr, u16), v_side: (Ipv4Addr, u16)) -> bool {
    a_side.0 == A && (v_side == (V, PORT) || v_side == (VIP, 80))
}

fn quoted_allowed(q: Option<(Ipv4Addr, Ipv4Addr, u8, u16, u16)>) -> bool {
    q.is_some_and(|(s, d, proto, sp, dp)| proto == 6 && (allowed_tcp((s, sp), (d, dp)) || allowed_tcp((d, dp), (s, sp))))
}

/// The allowed flow over IPv6, seen from either end: A6:any ↔ V6:8080
/// over TCP (or A6 ↔ VIP6:80 before translation).
fn allowed_tcp6(s: &Seen6) -> bool {
    let allowed = |a: (Ipv6Addr, u16), v: (Ipv6Addr, u16)| a.0 == A6 && (v == (V6, PORT) || v == (VIP6, 80));
    s.proto == 6 && !s.later && (allowed((s.src, s.sport), (s.dst, s.dport)) || allowed((s.dst, s.dport), (s.src, s.sport)))
}

fn link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The tuple an ICMPv6 error quotes, if the packet is one.
fn quote6(s: &Seen) -> Option<(Ipv6Addr, Ipv6Addr, u16, u16)> {
    let q = s.v6.as_ref()?.quoted.as_deref()?;
    Some((q.src, q.dst, q.sport, q.dport))
}

/// Whether an IPv6 packet leaving `hook` on `link` with verdict `v` may go.
fn may_pass6(hook: Hook, link: &str, v: i32, s: Option<&Seen6>) -> Result<(), String> {
    let Some(s) = s else { return Err("an IPv6 packet whose header chain cannot be walked passed".into()) };
    let from_pod = hook == Hook::FromPod;
    // Neighbour discovery and MLD, as the link allows them.
    let control = match s.icmp_type {
        Some(133 | 135 | 136) => s.hop == 255,
        Some(134 | 137) => !from_pod && s.hop == 255,
        Some(131 | 132 | 143) => s.hop == 1 && link_local(s.src),
        Some(130) => !from_pod && s.hop == 1 && link_local(s.src),
        _ => false,
    };
    if s.proto == 58 && !s.fragment && control {
        return Ok(());
    }
    let me = if link == "a" { A6 } else { V6 };
    // Rejects and answers (RST, ICMPv6 unreachable, packet too big) go
    // back into the pod itself.
    if from_pod && v == TC_ACT_REDIRECT && s.dst == me {
        return Ok(());
    }
    // A pod may always reach itself, also through its own service
    // (hairpin: from HAIRPIN6).
    let mine = |a: Ipv6Addr| a == me || a == HAIRPIN6 || (link == "v" && a == VIP6);
    if from_pod && mine(s.src) && mine(s.dst) {
        return Ok(());
    }
    let a_end = |x: Ipv6Addr| x == A6;
    let v_end = |x: Ipv6Addr| x == V6 || x == VIP6;
    let between = (a_end(s.src) && v_end(s.dst)) || (v_end(s.src) && a_end(s.dst));
    let quoted_ok = s.icmp_type.is_some_and(|t| (1..=4).contains(&t)) && s.quoted.as_deref().is_some_and(allowed_tcp6);
    if allowed_tcp6(s) || (s.later && between) || quoted_ok {
        Ok(())
    } else {
        Err("an IPv6 packet the policy denies was forwarded".into())
    }
}

/// Whether a packet leaving `hook` on `link` with verdict `v` may go.
fn may_pass(hook: Hook, link: &str, v: i32, out: &Seen) -> Result<(), String> {
    if v == TC_ACT_SHOT {
        return Ok(());
    }
    if out.ethertype == 0x0806 {
        return Ok(()); // ARP keeps working
    }
    if out.ethertype == 0x86dd {
        return may_pass6(hook, link, v, out.v6.as_ref());
    }
    if !out.ipv4 {
        return Err(format!("a non-IPv4 frame (EtherType {:#06x}) passed an isolated pod's link", out.ethertype));
    }
    let tcp_ok = out.proto == 6 && (allowed_tcp((out.src, out.sport), (out.dst, out.dport)) || allowed_tcp((out.dst, out.dport), (out.src, out.sport)));
    let later = !out.first && ((out.src == A && (out.dst == V || out.dst == VIP)) || (out.dst == A && (out.src == V || out.src == VIP)));
    let err_ok = out.proto == 1 && quoted_allowed(out.quoted);
    match (hook, link) {
        // Rejects and answers go back into A itself.
        (Hook::FromPod, "a") if v == TC_ACT_REDIRECT && out.dst == A => Ok(()),
        (Hook::FromPod, "v") if v == TC_ACT_REDIRECT && out.dst == V => Ok(()),
        (Hook::FromPod, "a") | (Hook::FromPod, "v") | (Hook::ToPod, "v") => {
            // A pod may always reach itself, also through its own service
            // (hairpin: from 169.254.42.1).
            let me = if link == "a" { A } else { V };
            let hairpin = Ipv4Addr::new(169, 254, 42, 1);
            let mine = |a: Ipv4Addr| a == me || a == hairpin || (link == "v" && a == VIP);
            if hook == Hook::FromPod && mine(out.src) && mine(out.dst) {
                return Ok(());
            }
            if tcp_ok || later || err_ok {
                Ok(())
            } else {
                Err("a packet the policy denies was forwarded".into())
            }
        }
        _ => Ok(()),
    }
}

#[test]
fn random_and_mutated_packets_never_get_past_policy() {
    privileged::require();
    let seed = std::env::var("WEIR_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    let count: usize = std::env::var("WEIR_FUZZ_PACKETS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    eprintln!("fuzz seed {seed} ({count} packets); replay with WEIR_FUZZ_SEED={seed}");
    testrun::in_fresh_datapath(weir_datapath::LoadOptions::default(), move |layout, dp| {
        let layout = layout.clone();
        let mut lb = Lb::open(&layout).expect("lb");
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(V, PORT)])).expect("service");
        lb.upsert(&cluster_ip(VIP6, 80, Protocol::Tcp, &[(V6, PORT)])).expect("IPv6 service");
        let mut s = PolicyState::default();
        s.endpoints.insert(IpAddr::V4(A), EndpointSpec { id: 1, identity: 501, ingress_isolated: true, egress_isolated: true });
        s.endpoints.insert(IpAddr::V4(V), EndpointSpec { id: 2, identity: 502, ingress_isolated: true, egress_isolated: true });
        s.ipcache.insert(Prefix::host(IpAddr::V4(A)), IpInfo { identity: 501, cidr_identity: ID_WORLD });
        s.ipcache.insert(Prefix::host(IpAddr::V4(V)), IpInfo { identity: 502, cidr_identity: ID_WORLD });
        s.endpoints.insert(IpAddr::V6(A6), EndpointSpec { id: 1, identity: 501, ingress_isolated: true, egress_isolated: true });
        s.endpoints.insert(IpAddr::V6(V6), EndpointSpec { id: 2, identity: 502, ingress_isolated: true, egress_isolated: true });
        s.ipcache.insert(Prefix::host(IpAddr::V6(A6)), IpInfo { identity: 501, cidr_identity: ID_WORLD });
        s.ipcache.insert(Prefix::host(IpAddr::V6(V6)), IpInfo { identity: 502, cidr_identity: ID_WORLD });
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_EGRESS, identity: 502, proto: 6, port: PORT, port_bits: 16 }, PolicyValue::allow(1));
        s.entries.insert(PolicyEntry { endpoint: 2, direction: DIR_INGRESS, identity: 501, proto: 6, port: PORT, port_bits: 16 }, PolicyValue::allow(2));
        let w = PolicyMaps::open(&layout).expect("policy").transition(&s, &s, &s);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        // A owns lo; V owns a veth.
        testrun::own_sources(&layout, TEST_RUN_IFINDEX, &[A.into(), A6.into()]);
        weir_tests::cmd::output(&["ip", "link", "add", "weirv", "type", "veth", "peer", "name", "weirvp"]);
        let c = std::ffi::CString::new("weirv").expect("name");
        // SAFETY: a valid C string.
        let v_link = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(v_link, 0);
        testrun::own_sources(&layout, v_link, &[V.into(), V6.into()]);

        let (from_pod, to_pod) = (dp.program(Hook::FromPod).expect("from_pod"), dp.program(Hook::ToPod).expect("to_pod"));
        let mut r = Rng(seed);
        let mut verdicts = std::collections::BTreeMap::<(&str, i32), usize>::new();
        let mut errors6_translated = 0usize;
        for i in 0..count {
            let p = packet(&mut r);
            let (hook, link, prog, ifindex, ingress) = match r.below(3) {
                0 => (Hook::FromPod, "a", from_pod, TEST_RUN_IFINDEX, 0),
                1 => (Hook::FromPod, "v", from_pod, v_link, 0),
                _ => (Hook::ToPod, "v", to_pod, v_link, UPLINK),
            };
            let run = testrun::run_from(prog, &p, ifindex, ingress)
                .unwrap_or_else(|e| panic!("seed {seed}, packet {i} ({hook:?} on {link}): test_run failed: {e:?}: {p:02x?}"));
            assert!(
                [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&run.verdict),
                "seed {seed}, packet {i} ({hook:?} on {link}): verdict {} is no tc verdict: {p:02x?}",
                run.verdict
            );
            *verdicts.entry((link, run.verdict)).or_default() += 1;
            let out = seen(&run.packet);
            if quote6(&seen(&p)) != quote6(&out) && run.verdict != TC_ACT_SHOT {
                errors6_translated += 1;
            }
            if let Err(why) = may_pass(hook, link, run.verdict, &out) {
                panic!("seed {seed}, packet {i} ({hook:?} on {link}, verdict {}): {why}\n in:  {p:02x?}\n out: {out:?}", run.verdict);
            }
        }
        // Nothing tracked but the allowed flow (and V reaching itself
        // through its service): no entry another packet could ride.
        let family = [
            (IpAddr::V4(A), IpAddr::V4(V), IpAddr::V4(VIP), IpAddr::V4(Ipv4Addr::new(169, 254, 42, 1))),
            (IpAddr::V6(A6), IpAddr::V6(V6), IpAddr::V6(VIP6), IpAddr::V6(HAIRPIN6)),
        ];
        for (k, e) in Conntrack::open(&layout).expect("ct").entries() {
            let (s, d) = (IpAddr::from(k.saddr), IpAddr::from(k.daddr));
            let (sp, dp) = (u16::from_be(k.sport), u16::from_be(k.dport));
            let ok = k.proto == 6
                && family.iter().any(|&(a, v, vip, hairpin)| match k.kind {
                    CT_POLICY => s == a && d == v && dp == PORT,
                    CT_SVC_FWD => (s == a || s == v) && d == vip && dp == 80 && IpAddr::from(e.nat_addr) == v,
                    CT_SVC_REV => s == v && sp == PORT && (d == a || d == hairpin),
                    _ => false,
                });
            assert!(ok, "seed {seed}: a conntrack entry outside the allowed flow: {s}:{sp} -> {d}:{dp}/{} kind {} {e:?}", k.proto, k.kind);
        }
        eprintln!("fuzz seed {seed}: {count} packets, verdicts (link, verdict) → count: {verdicts:?}; ICMPv6 errors translated: {errors6_translated}");
        if count >= 100_000 {
            assert!(errors6_translated > 0, "seed {seed}: no ICMPv6 error about a service flow was translated: the run did not reach that code");
        }
    });
}

