//! BPF_PROG_TEST_RUN: run a program on a crafted packet and look at the
//! verdict and the bytes it left behind. Packets are built with etherparse.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// tc verdicts.
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// The result of one run.
#[derive(Debug)]
pub struct Run {
    pub verdict: i32,
    pub packet: Vec<u8>,
}

/// BPF_PROG_TEST_RUN runs tc programs on the loopback device of the
/// caller's namespace unless told otherwise ([`run_on`]).
pub const TEST_RUN_IFINDEX: u32 = 1;

/// Runs `prog` once on `packet`, on the loopback device.
pub fn run(prog: &SchedClassifier, packet: &[u8]) -> Result<Run, ProgramError> {
    run_on(prog, packet, TEST_RUN_IFINDEX)
}

/// Offset of `ifindex` in `struct __sk_buff` (the test run's context).
const SKB_IFINDEX_OFF: usize = 40;

/// Offset of `ingress_ifindex` in `struct __sk_buff`.
const SKB_INGRESS_IFINDEX_OFF: usize = 36;

/// A pod link for BPF_PROG_TEST_RUN in the caller's namespace: a veth
/// `name` whose routed addresses (`WEIR_LINKS`) are `addrs`; its ifindex.
pub fn pod_link(layout: &weir_datapath::PinLayout, name: &str, addrs: &[std::net::IpAddr]) -> u32 {
    let peer = format!("{name}p");
    crate::cmd::output(&["ip", "link", "add", name, "type", "veth", "peer", "name", &peer]);
    let ifindex = ifindex_of(name);
    own_sources(layout, ifindex, addrs);
    ifindex
}

/// The ifindex of link `name` in the caller's namespace (this thread's).
pub fn ifindex_of(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: a valid C string; the call only reads it.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(ifindex, 0, "no link {name}");
    ifindex
}

/// Runs `prog` once on `packet` as if it arrived on `ifindex` (a device of
/// the caller's namespace).
pub fn run_on(prog: &SchedClassifier, packet: &[u8], ifindex: u32) -> Result<Run, ProgramError> {
    run_from(prog, packet, ifindex, 0)
}

/// Runs `prog` once on `packet` on `ifindex`, as a packet that entered the
/// node on `ingress_ifindex` (0: the node itself sent it).
pub fn run_from(prog: &SchedClassifier, packet: &[u8], ifindex: u32, ingress_ifindex: u32) -> Result<Run, ProgramError> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut ctx = [0u8; SKB_IFINDEX_OFF + 4];
    if ifindex > 1 {
        ctx[SKB_IFINDEX_OFF..].copy_from_slice(&ifindex.to_ne_bytes());
    }
    ctx[SKB_INGRESS_IFINDEX_OFF..SKB_IFINDEX_OFF].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let with_ctx = ifindex > 1 || ingress_ifindex != 0;
    let res = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: with_ctx.then_some(&ctx[..]),
        ..TestRunOptions::default()
    })?;
    out.truncate(res.data_size_out as usize);
    Ok(Run { verdict: res.return_value as i32, packet: out })
}

/// Makes `addrs` the addresses routed to `ifindex` (`WEIR_LINKS`, as the
/// agent writes it from host routes): the sources from_pod accepts there.
pub fn own_sources(layout: &weir_datapath::PinLayout, ifindex: u32, addrs: &[std::net::IpAddr]) {
    let mut links = weir_datapath::links::LinkAddrs::open(layout).expect("open WEIR_LINKS");
    links.set(ifindex, addrs).expect("write WEIR_LINKS");
}

/// A packet with its IPv4 header's flags/fragment-offset word and total
/// length rewritten (checksum fixed), e.g. to make fragments.
pub fn with_ipv4_frag(mut p: Vec<u8>, id: u16, more: bool, offset_units: u16) -> Vec<u8> {
    let word = (if more { 0x2000 } else { 0 }) | (offset_units & 0x1fff);
    p[18..20].copy_from_slice(&id.to_be_bytes());
    p[20..22].copy_from_slice(&word.to_be_bytes());
    fix_ipv4_csum(&mut p);
    p
}

/// Recomputes the IPv4 header checksum of an Ethernet + IPv4 frame.
/// (A header length beyond the frame is summed as far as the frame goes.)
pub fn fix_ipv4_csum(p: &mut [u8]) {
    let ihl = (usize::from(p[14] & 0x0f) * 4).min(p.len() - 14);
    p[24] = 0;
    p[25] = 0;
    let c = !fold(sum16(&p[14..14 + ihl]));
    p[24..26].copy_from_slice(&c.to_be_bytes());
}


pub fn udp4(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv4(src.0.octets(), dst.0.octets(), 64).udp(src.1, dst.1);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("udp4 packet");
    v
}

/// A TCP segment; `syn` sets SYN, otherwise ACK|PSH.
pub fn tcp4(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv4(src.0.octets(), dst.0.octets(), 64).tcp(src.1, dst.1, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1).psh() };
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("tcp4 packet");
    v
}

pub fn udp6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv6(src.0.octets(), dst.0.octets(), 64).udp(src.1, dst.1);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("udp6 packet");
    v
}

pub fn tcp6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv6(src.0.octets(), dst.0.octets(), 64).tcp(src.1, dst.1, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1).psh() };
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("tcp6 packet");
    v
}

pub fn icmp4_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv4(src.octets(), dst.octets(), 64).icmpv4_echo_request(id, seq);
    let mut v = Vec::with_capacity(b.size(8));
    b.write(&mut v, &[0u8; 8]).expect("icmp4 packet");
    v
}

pub fn icmp6_echo(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv6(src.octets(), dst.octets(), 64).icmpv6_echo_request(id, seq);
    let mut v = Vec::with_capacity(b.size(8));
    b.write(&mut v, &[0u8; 8]).expect("icmp6 packet");
    v
}


/// An Ethernet + IPv6 frame: `next` and `hop` in the fixed header, then
/// `payload` (extension headers and upper layer as given, checksums as
/// given).
pub fn ip6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, hop]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

/// The sum of an IPv6 pseudo-header: `src`, `dst` (16 bytes each), the
/// upper layer's length and protocol.
pub fn pseudo6_sum(src: &[u8], dst: &[u8], len: usize, proto: u8) -> u32 {
    sum16(src) + sum16(dst) + (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(proto)
}

/// Whether `l4` (a whole TCP segment, UDP datagram or ICMPv6 message)
/// carries a valid checksum between `src` and `dst`.
pub fn v6_checksum_ok(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> bool {
    fold(pseudo6_sum(src, dst, l4.len(), proto) + sum16(l4)) == 0xffff
}

/// Fields of an Ethernet + IPv6 packet, its extension headers walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop: u8,
    /// The upper layer's protocol.
    pub proto: u8,
    /// Where the upper layer starts in the frame.
    pub l4_off: usize,
    pub sport: u16,
    pub dport: u16,
    /// The upper layer (to the end of the payload).
    pub l4: Vec<u8>,
}

/// Parses an Ethernet + IPv6 packet (hop-by-hop, routing and destination
/// options headers walked) and checks its TCP, UDP or ICMPv6 checksum;
/// over IPv6 a UDP checksum is never zero.
pub fn parse_checked_v6(p: &[u8]) -> V6 {
    assert!(p.len() >= 54, "short packet: {p:02x?}");
    assert_eq!(&p[12..14], &[0x86, 0xdd], "not IPv6");
    let ip = &p[14..54];
    assert_eq!(ip[0] >> 4, 6, "not version 6");
    let end = 54 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    assert!(end <= p.len(), "payload length past the frame");
    let (mut next, mut off) = (ip[6], 54);
    while matches!(next, 0 | 43 | 60) {
        next = p[off];
        off += (usize::from(p[off + 1]) + 1) * 8;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    let l4 = &p[off..end];
    let (sport, dport) = match next {
        6 | 17 => (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])),
        _ => (0, 0),
    };
    if matches!(next, 6 | 17 | 58) {
        assert!(v6_checksum_ok(&ip[8..24], &ip[24..40], next, l4), "bad checksum (proto {next}): {l4:02x?}");
    }
    if next == 17 {
        assert_ne!(&l4[6..8], &[0, 0], "a zero UDP checksum over IPv6");
    }
    V6 { src, dst, hop: ip[7], proto: next, l4_off: off, sport, dport, l4: l4.to_vec() }
}

/// Asserts that the TCP header `tcp` is the RST|ACK that refuses the SYN
/// [`tcp4`]/[`tcp6`] build (sequence 1000): it acknowledges 1001.
pub fn assert_refuses_the_syn(tcp: &[u8]) {
    assert_eq!(tcp[13], 0x14, "RST|ACK");
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    assert_eq!(ack, 1001, "acknowledges the SYN (seq 1000 + 1)");
}

/// One's-complement sum of 16-bit big-endian words.
fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += (u32::from(c[0]) << 8) | u32::from(*c.get(1).unwrap_or(&0));
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Fields of an Ethernet + IPv4 (no options) packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub l4: Vec<u8>,
}

/// Parses an Ethernet + IPv4 packet and checks its IPv4 and L4 checksums
/// (a zero UDP checksum is accepted: "no checksum").
pub fn parse_checked_v4(p: &[u8]) -> V4 {
    assert!(p.len() >= 34, "short packet: {p:02x?}");
    assert_eq!(&p[12..14], &[0x08, 0x00], "not IPv4");
    let ip = &p[14..34];
    assert_eq!(ip[0], 0x45, "IPv4 without options expected");
    assert_eq!(fold(sum16(ip)), 0xffff, "bad IPv4 header checksum: {ip:02x?}");
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &p[34..14 + tot];
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let (first, whole) = (frag & 0x1fff == 0, frag & 0x3fff == 0);
    let (sport, dport) = match proto {
        6 | 17 if first => (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])),
        _ => (0, 0),
    };
    // A fragment's L4 checksum covers the whole datagram: checked by the
    // caller after reassembly.
    let udp_zero = proto == 17 && first && l4[6] == 0 && l4[7] == 0;
    if whole && (proto == 6 || proto == 17) && !udp_zero {
        let mut s = sum16(&ip[12..20]) + u32::from(proto) + l4.len() as u32;
        s += sum16(l4);
        assert_eq!(fold(s), 0xffff, "bad L4 checksum (proto {proto})");
    }
    if whole && proto == 1 {
        assert_eq!(fold(sum16(l4)), 0xffff, "bad ICMP checksum");
    }
    V4 { src, dst, proto, sport, dport, l4: l4.to_vec() }
}

/// Splits an Ethernet + IPv4 (no options) frame into two fragments: the
/// first carries `first_payload` bytes of the IP payload (a multiple of
/// 8), the second the rest. Both get IP id `id`.
pub fn fragments(p: &[u8], id: u16, first_payload: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first_payload % 8, 0, "fragment payloads come in units of 8 bytes");
    let (head, payload) = (&p[..34], &p[34..]);
    let mut a = head.to_vec();
    a.extend_from_slice(&payload[..first_payload]);
    let mut b = head.to_vec();
    b.extend_from_slice(&payload[first_payload..]);
    for (f, more, off) in [(&mut a, true, 0u16), (&mut b, false, (first_payload / 8) as u16)] {
        let len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&len.to_be_bytes());
        let word = (if more { 0x2000u16 } else { 0 }) | off;
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[20..22].copy_from_slice(&word.to_be_bytes());
        fix_ipv4_csum(f);
    }
    (a, b)
}

/// An ICMPv4 error (`ty`/`code`, e.g. 3/4 fragmentation needed) from
/// `src` to `dst` quoting the IP header and the first 8 bytes of L4 of the
/// Ethernet frame `about`.
pub fn icmp4_error(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, rest: u32, about: &[u8]) -> Vec<u8> {
    let quoted = &about[14..14 + 28];
    let mut icmp = vec![ty, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let c = !fold(sum16(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv4(src.octets(), dst.octets(), 64);
    let mut ip = Vec::new();
    b.write(&mut ip, etherparse::IpNumber::ICMP, &icmp).expect("icmp error packet");
    ip
}

/// A frame with the EtherType `ethertype` and `payload`.
pub fn frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + payload.len());
    v.extend_from_slice(&SERVER_MAC);
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// An ICMPv6 error (`ty`/`code`, e.g. 2/0 packet too big with the MTU
/// in `rest`) from `src` to `dst` quoting the whole IPv6 packet of the
/// Ethernet frame `about`, with a valid checksum.
pub fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, rest: u32, about: &[u8]) -> Vec<u8> {
    let mut icmp = vec![ty, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(&about[14..]);
    let c = !fold(pseudo6_sum(&src.octets(), &dst.octets(), icmp.len(), 58) + sum16(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ip6(src, dst, 58, 64, &icmp)
}

/// The tuple an ICMP or ICMPv6 error quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted<A = Ipv4Addr> {
    pub src: A,
    pub dst: A,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// Parses an Ethernet + IPv4 ICMP error, checking the outer IP checksum,
/// the ICMP checksum and the quoted IP header's checksum.
pub fn parse_checked_icmp_error(p: &[u8]) -> (V4, Quoted) {
    let outer = parse_checked_v4(p);
    assert_eq!(outer.proto, 1, "not ICMP");
    let inner = &outer.l4[8..];
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    assert_eq!(fold(sum16(&inner[..ihl])), 0xffff, "bad quoted IPv4 header checksum");
    let q = Quoted {
        src: Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]),
        dst: Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]),
        proto: inner[9],
        sport: u16::from_be_bytes([inner[ihl], inner[ihl + 1]]),
        dport: u16::from_be_bytes([inner[ihl + 2], inner[ihl + 3]]),
    };
    (outer, q)
}

/// Parses an Ethernet + IPv6 ICMPv6 error, checking the ICMPv6 checksum
/// (over the outer pseudo-header and the quote), and the packet it
/// quotes (its extension headers walked).
pub fn parse_checked_icmp6_error(p: &[u8]) -> (V6, Quoted<Ipv6Addr>) {
    let outer = parse_checked_v6(p);
    assert_eq!(outer.proto, 58, "not ICMPv6");
    assert!(matches!(outer.l4[0], 1..=4), "not an ICMPv6 error: type {}", outer.l4[0]);
    let inner = &outer.l4[8..];
    let (mut next, mut off) = (inner[6], 40);
    while matches!(next, 0 | 43 | 60) {
        next = inner[off];
        off += (usize::from(inner[off + 1]) + 1) * 8;
    }
    let q = Quoted {
        src: Ipv6Addr::from(<[u8; 16]>::try_from(&inner[8..24]).expect("16 bytes")),
        dst: Ipv6Addr::from(<[u8; 16]>::try_from(&inner[24..40]).expect("16 bytes")),
        proto: next,
        sport: u16::from_be_bytes([inner[off], inner[off + 1]]),
        dport: u16::from_be_bytes([inner[off + 2], inner[off + 3]]),
    };
    (outer, q)
}

/// Runs `f` in a fresh network namespace (no routes: a FIB lookup finds
/// nothing) with the pod object loaded with `opts` into a fresh bpffs
/// directory, which is removed afterwards. The setup every
/// BPF_PROG_TEST_RUN test file shares.
pub fn in_fresh_datapath<T: Send + 'static>(
    opts: weir_datapath::LoadOptions,
    f: impl FnOnce(&weir_datapath::PinLayout, weir_datapath::PodDatapath) -> T + Send + 'static,
) -> T {
    crate::privileged::require();
    let ns = crate::netns::NetNs::new("wtr");
    let dir = crate::node::BpffsDir::new(&format!("/sys/fs/bpf/{}", crate::names::unique("weirtr")));
    let path = dir.path.clone();
    ns.run(move || {
        let layout = weir_datapath::PinLayout::new(&path);
        let dp = weir_datapath::PodDatapath::load_with(&layout, &opts).expect("load pod object");
        f(&layout, dp)
    })
}
