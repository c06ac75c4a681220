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

/// Runs `prog` once on `packet`.
pub fn run(prog: &SchedClassifier, packet: &[u8]) -> Result<Run, ProgramError> {
    let mut out = vec![0u8; packet.len() + 256];
    let res = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    })?;
    out.truncate(res.data_size_out as usize);
    Ok(Run { verdict: res.return_value as i32, packet: out })
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
    let (sport, dport) = match proto {
        6 | 17 => (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])),
        _ => (0, 0),
    };
    let udp_zero = proto == 17 && l4[6] == 0 && l4[7] == 0;
    if (proto == 6 || proto == 17) && !udp_zero {
        let mut s = sum16(&ip[12..20]) + u32::from(proto) + l4.len() as u32;
        s += sum16(l4);
        assert_eq!(fold(s), 0xffff, "bad L4 checksum (proto {proto})");
    }
    if proto == 1 {
        assert_eq!(fold(sum16(l4)), 0xffff, "bad ICMP checksum");
    }
    V4 { src, dst, proto, sport, dport, l4: l4.to_vec() }
}
