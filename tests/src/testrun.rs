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

