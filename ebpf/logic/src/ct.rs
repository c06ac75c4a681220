//! Conntrack state machine and timeouts, shared by the kernel (which
//! advances states) and userspace (which collects stale entries).
//!
//! TCP, per flow (both entries of a service flow carry the same state):
//! - SYN: opened (or picked up mid-stream), no reply with ACK seen yet;
//! - ESTABLISHED: the responder answered; stays so while only one side
//!   has sent a FIN (half-closed), so the established timeout applies;
//! - CLOSING: both sides sent FIN;
//! - CLOSED: a plausible RST was seen.
//!
//! An RST is plausible when it comes from the opener, or from the
//! responder once the responder has been seen (or as the RST|ACK that
//! refuses the opening SYN). Anything else leaves the state alone: an
//! off-path RST cannot shorten a flow's life.

use weir_common::{
    config::DatapathConfig,
    ct::{
        CtEntry, CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_F_SEEN_REPLY, CT_STATE_CLOSED, CT_STATE_CLOSING, CT_STATE_ESTABLISHED,
        CT_STATE_SYN, CT_STATE_UDP, CT_STATE_UDP_STREAM, DIR_REPLY,
    },
    lb::{PROTO_TCP, PROTO_UDP},
};
use weir_common::{addr::Addr, ct::{CT_F_HAIRPIN, CT_F_MASQ}};

/// TCP flags as found in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A flow's state and state bits (`CT_F_FIN_*`, `CT_F_SEEN_REPLY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    pub state: u8,
    pub flags: u8,
}

/// The state after a packet with `tcp_flags` travelling in `dir`
/// (`DIR_ORIG` from the opener, `DIR_REPLY` towards it). `cur.state` 0
/// means a new flow. A TCP packet with no flags at all (a later fragment)
/// changes nothing.
#[inline(always)]
pub fn advance(proto: u8, cur: State, tcp_flags: u8, dir: u8) -> State {
    let reply = dir == DIR_REPLY;
    let seen = if reply { cur.flags | CT_F_SEEN_REPLY } else { cur.flags };
    if proto != PROTO_TCP {
        // A stream stays one ([`touched`] makes it).
        let state = if cur.state == CT_STATE_UDP_STREAM { CT_STATE_UDP_STREAM } else { CT_STATE_UDP };
        return State { state, flags: seen };
    }
    let s = cur.state;
    if tcp_flags == 0 {
        return State { state: if s == 0 { CT_STATE_SYN } else { s }, flags: cur.flags };
    }
    if tcp_flags & TCP_RST != 0 {
        let plausible = !reply || cur.flags & CT_F_SEEN_REPLY != 0 || (s == CT_STATE_SYN && tcp_flags & TCP_ACK != 0) || s == 0;
        return if plausible { State { state: CT_STATE_CLOSED, flags: seen } } else { cur };
    }
    if is_syn(tcp_flags) {
        // A SYN opens a connection, also over a closing or closed entry
        // whose tuple is being reused: the old FINs are forgotten.
        return State { state: CT_STATE_SYN, flags: seen & !(CT_F_FIN_ORIG | CT_F_FIN_REPLY) };
    }
    let mut flags = seen;
    if tcp_flags & TCP_FIN != 0 {
        flags |= if reply { CT_F_FIN_REPLY } else { CT_F_FIN_ORIG };
    }
    let state = if s == CT_STATE_CLOSED {
        s
    } else if flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY) == (CT_F_FIN_ORIG | CT_F_FIN_REPLY) {
        CT_STATE_CLOSING
    } else if s == CT_STATE_CLOSING {
        s
    } else if s == CT_STATE_ESTABLISHED || (tcp_flags & TCP_ACK != 0 && flags & CT_F_SEEN_REPLY != 0) {
        CT_STATE_ESTABLISHED
    } else {
        CT_STATE_SYN
    };
    State { state, flags }
}

/// How long after its first reply a UDP flow that still sends is a
/// stream, seconds. nf_conntrack counts its 2 s from the flow's first
/// packet, which an entry does not keep; from the reply, a flow whose
/// answer took longer than that becomes a stream a little later. Entries
/// keep whole seconds, so this is 1 to 3 s.
pub const UDP_STREAM_AFTER_S: u32 = 2;

/// The state and expiry of an entry after one packet travelling in `dir`
/// at `now_ns`: [`advance`], then nf_conntrack's UDP timeouts (what
/// kube-proxy's users have; its stream rule approximated, see
/// [`UDP_STREAM_AFTER_S`]). A UDP flow lives `ct_udp_timeout_s` after
/// its last packet until its first reply; a packet after that reply
/// makes it a stream ([`CT_STATE_UDP_STREAM`], `ct_udp_stream_timeout_s`)
/// once [`UDP_STREAM_AFTER_S`] have passed since the reply, and before
/// then leaves the expiry where the reply put it, so that the expiry
/// still tells when the reply came. A DNS query and its answer are done
/// `ct_udp_timeout_s` after the answer; a flow that keeps talking gets
/// the stream's timeout. With `ct_udp_stream_timeout_s` 0 every UDP flow
/// keeps `ct_udp_timeout_s` after its last packet.
#[inline(always)]
pub fn touched(cfg: &DatapathConfig, proto: u8, cur: State, expires_s: u32, tcp_flags: u8, dir: u8, now_ns: u64) -> (State, u32) {
    // An expired UDP entry a packet meets before the collector took it out
    // (masquerade touches without checking) starts afresh, unanswered, as
    // a new nf_conntrack entry would: not a stream from a reply long gone.
    let cur = if proto == PROTO_UDP && !alive_until(expires_s, now_ns) { State { state: 0, flags: 0 } } else { cur };
    let next = advance(proto, cur, tcp_flags, dir);
    let replied = cur.flags & CT_F_SEEN_REPLY != 0;
    if proto == PROTO_UDP && cfg.ct_udp_stream_timeout_s != 0 && next.state == CT_STATE_UDP && replied {
        let replied_at = expires_s.saturating_sub(cfg.ct_udp_timeout_s.saturating_add(1));
        let now_s = (now_ns / NS_PER_S).min(u32::MAX as u64) as u32;
        if now_s < replied_at.saturating_add(UDP_STREAM_AFTER_S) {
            return (next, expires_s);
        }
        let stream = State { state: CT_STATE_UDP_STREAM, flags: next.flags };
        return (stream, expiry(cfg, stream.state, now_ns));
    }
    (next, expiry(cfg, next.state, now_ns))
}

/// The state of a new flow after its first packet (from the opener).
#[inline(always)]
pub fn first(proto: u8, tcp_flags: u8) -> State {
    advance(proto, State { state: 0, flags: 0 }, tcp_flags, weir_common::ct::DIR_ORIG)
}

/// Whether a packet with `tcp_flags` starts a new connection over an
/// entry in `state` that is closing or closed (a reused tuple): it gets a
/// backend and a policy verdict afresh.
#[inline(always)]
pub fn reopens(proto: u8, state: u8, tcp_flags: u8) -> bool {
    proto == PROTO_TCP && is_syn(tcp_flags) && (state == CT_STATE_CLOSING || state == CT_STATE_CLOSED)
}

/// Lifetime of a state, in seconds.
#[inline(always)]
pub fn timeout_s(cfg: &DatapathConfig, state: u8) -> u32 {
    match state {
        CT_STATE_SYN => cfg.ct_syn_timeout_s,
        CT_STATE_ESTABLISHED => cfg.ct_established_timeout_s,
        CT_STATE_CLOSING => cfg.ct_closing_timeout_s,
        CT_STATE_CLOSED => cfg.ct_closed_timeout_s,
        CT_STATE_UDP_STREAM if cfg.ct_udp_stream_timeout_s != 0 => cfg.ct_udp_stream_timeout_s,
        _ => cfg.ct_udp_timeout_s,
    }
}

pub use weir_common::ct::NS_PER_S;

/// The CLOCK_MONOTONIC second from which an entry in `state`, touched at
/// `now_ns`, is stale: it lives at least its timeout, and less than one
/// second more (entries keep whole seconds, `CtEntry::expires_s`).
#[inline(always)]
pub fn expiry(cfg: &DatapathConfig, state: u8, now_ns: u64) -> u32 {
    expiry_after(now_ns, timeout_s(cfg, state))
}

/// The CLOCK_MONOTONIC second from which something touched at `now_ns`
/// with a lifetime of `timeout_s` is stale.
#[inline(always)]
pub fn expiry_after(now_ns: u64, timeout_s: u32) -> u32 {
    ((now_ns / NS_PER_S).min(u32::MAX as u64) as u32).saturating_add(timeout_s).saturating_add(1)
}

#[inline(always)]
pub fn is_alive(e: &CtEntry, now_ns: u64) -> bool {
    alive_until(e.expires_s, now_ns)
}

/// Whether an entry stale from the second `expires_s` is alive at
/// `now_ns` ([`is_alive`] for the expiry alone: `CtTail`, `CtEntry4`).
#[inline(always)]
pub fn alive_until(expires_s: u32, now_ns: u64) -> bool {
    now_ns < expires_s as u64 * NS_PER_S
}

/// Seconds until `e` goes stale at `now_ns` (negative once it is).
#[inline(always)]
pub fn expires_in_s(e: &CtEntry, now_ns: u64) -> i64 {
    e.expires_s as i64 - (now_ns / NS_PER_S) as i64
}

/// A TCP SYN without ACK: the first packet of a connection.
#[inline(always)]
pub fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0
}

/// The source address a service flow's backend sees, and so the
/// destination of its replies: the hairpin address when a pod reaches
/// itself, the node address when the flow is masqueraded, else the
/// client's own (`client`). The hairpin and node addresses are of the
/// client's family (`DatapathConfig::hairpin_for`, `node_addr_for`): a
/// flow never changes family.
#[inline(always)]
pub fn backend_sees(flags: u8, cfg: &DatapathConfig, client: Addr) -> Addr {
    backend_sees_in(flags, cfg, client, client.is_v4())
}

/// [`backend_sees`] for a client whose family the caller knows (`v4`):
/// the XDP fast path carries IPv4 only, and a constant family spares its
/// frame the choice.
#[inline(always)]
pub fn backend_sees_in(flags: u8, cfg: &DatapathConfig, client: Addr, v4: bool) -> Addr {
    if flags & CT_F_HAIRPIN != 0 {
        if v4 {
            cfg.hairpin_addr
        } else {
            weir_common::config::HAIRPIN_V6
        }
    } else if flags & CT_F_MASQ != 0 {
        if v4 {
            cfg.node_addr
        } else {
            cfg.node_addr6
        }
    } else {
        client
    }
}

/// Whether a service flow's source address is replaced (hairpin or
/// masquerade), so its replies must be sent back to the client's own.
#[inline(always)]
pub const fn source_translated(flags: u8) -> bool {
    flags & (CT_F_HAIRPIN | CT_F_MASQ) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::{ct::DIR_ORIG, lb::PROTO_UDP};

    fn step(s: State, flags: u8, dir: u8) -> State {
        advance(PROTO_TCP, s, flags, dir)
    }

    #[test]
    fn tcp_states_follow_the_handshake_and_teardown() {
        let s = first(PROTO_TCP, TCP_SYN);
        assert_eq!(s.state, CT_STATE_SYN);
        let s = step(s, TCP_SYN | TCP_ACK, DIR_REPLY);
        assert_eq!(s.state, CT_STATE_ESTABLISHED);
        let s = step(s, TCP_ACK, DIR_ORIG);
        assert_eq!(s.state, CT_STATE_ESTABLISHED);
        let s = step(s, TCP_FIN | TCP_ACK, DIR_ORIG);
        assert_eq!(s.state, CT_STATE_ESTABLISHED, "half-closed keeps the established timeout");
        let s = step(s, TCP_ACK, DIR_REPLY);
        assert_eq!(s.state, CT_STATE_ESTABLISHED, "the other side keeps sending");
        let s = step(s, TCP_FIN | TCP_ACK, DIR_REPLY);
        assert_eq!(s.state, CT_STATE_CLOSING, "both sides closed");
        assert_eq!(step(s, TCP_ACK, DIR_ORIG).state, CT_STATE_CLOSING);
        let est = State { state: CT_STATE_ESTABLISHED, flags: CT_F_SEEN_REPLY };
        assert_eq!(step(est, TCP_RST, DIR_REPLY).state, CT_STATE_CLOSED);
        assert_eq!(step(s, TCP_SYN, DIR_ORIG).state, CT_STATE_SYN, "a reused tuple opens again");
        assert_eq!(step(s, TCP_SYN, DIR_ORIG).flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY), 0);
        assert_eq!(first(PROTO_UDP, 0).state, CT_STATE_UDP);
    }

    #[test]
    fn the_opener_alone_cannot_establish_a_flow() {
        let s = first(PROTO_TCP, TCP_ACK);
        assert_eq!(s.state, CT_STATE_SYN, "picked up mid-stream");
        assert_eq!(step(s, TCP_ACK, DIR_ORIG).state, CT_STATE_SYN, "no reply seen: still the SYN timeout");
        assert_eq!(step(s, TCP_ACK, DIR_REPLY).state, CT_STATE_ESTABLISHED);
    }

    #[test]
    fn an_rst_from_an_unseen_responder_is_ignored() {
        let syn = first(PROTO_TCP, TCP_SYN);
        assert_eq!(step(syn, TCP_RST, DIR_REPLY), syn, "a bare RST before any reply");
        assert_eq!(step(syn, TCP_RST | TCP_ACK, DIR_REPLY).state, CT_STATE_CLOSED, "the refusal of the SYN");
        assert_eq!(step(syn, TCP_RST, DIR_ORIG).state, CT_STATE_CLOSED, "the opener gives up");
    }

    #[test]
    fn a_fragment_without_flags_changes_nothing() {
        let est = State { state: CT_STATE_ESTABLISHED, flags: CT_F_SEEN_REPLY };
        assert_eq!(step(est, 0, DIR_ORIG), est);
    }

    #[test]
    fn reopening_needs_a_syn_over_a_finished_flow() {
        assert!(reopens(PROTO_TCP, CT_STATE_CLOSING, TCP_SYN));
        assert!(reopens(PROTO_TCP, CT_STATE_CLOSED, TCP_SYN));
        assert!(!reopens(PROTO_TCP, CT_STATE_ESTABLISHED, TCP_SYN));
        assert!(!reopens(PROTO_TCP, CT_STATE_CLOSING, TCP_ACK));
        assert!(!reopens(PROTO_UDP, CT_STATE_CLOSING, TCP_SYN));
    }

    #[test]
    fn every_state_has_its_own_timeout() {
        let cfg = DatapathConfig::DEFAULT;
        assert_eq!(timeout_s(&cfg, CT_STATE_SYN), 60);
        assert_eq!(timeout_s(&cfg, CT_STATE_ESTABLISHED), 21_600);
        assert_eq!(timeout_s(&cfg, CT_STATE_CLOSING), 10);
        assert_eq!(timeout_s(&cfg, CT_STATE_CLOSED), 10);
        assert_eq!(timeout_s(&cfg, CT_STATE_UDP), 30, "nf_conntrack's udp_timeout");
        assert_eq!(timeout_s(&cfg, CT_STATE_UDP_STREAM), 120, "nf_conntrack's udp_timeout_stream");
        assert_eq!(expiry(&cfg, CT_STATE_UDP, 5), 31);
        let off = DatapathConfig { ct_udp_stream_timeout_s: 0, ..cfg };
        assert_eq!(timeout_s(&off, CT_STATE_UDP_STREAM), 30, "no stream timeout: the UDP one");
    }

    /// One UDP packet at second `t` over the entry `(state, expires_s)`.
    fn udp_at(cfg: &DatapathConfig, cur: (State, u32), dir: u8, t: u64) -> (State, u32) {
        touched(cfg, PROTO_UDP, cur.0, cur.1, 0, dir, t * NS_PER_S + 300_000_000)
    }

    #[test]
    fn a_dns_exchange_is_done_its_timeout_after_the_answer() {
        let cfg = DatapathConfig::DEFAULT;
        let q = (first(PROTO_UDP, 0), expiry(&cfg, CT_STATE_UDP, 100 * NS_PER_S));
        // A retry before the answer pushes the expiry, as any unanswered packet.
        let q = udp_at(&cfg, q, DIR_ORIG, 101);
        assert_eq!(q, (State { state: CT_STATE_UDP, flags: 0 }, 132));
        let a = udp_at(&cfg, q, DIR_REPLY, 101);
        assert_eq!(a, (State { state: CT_STATE_UDP, flags: CT_F_SEEN_REPLY }, 132), "the answer: 30 s from it");
        // The second answer of a parallel A/AAAA pair, within 2 s: no push.
        assert_eq!(udp_at(&cfg, a, DIR_REPLY, 102), a);
        assert_eq!(udp_at(&cfg, a, DIR_ORIG, 102), a);
    }

    #[test]
    fn a_udp_flow_still_talking_two_seconds_after_its_reply_is_a_stream() {
        let cfg = DatapathConfig::DEFAULT;
        let a = (State { state: CT_STATE_UDP, flags: CT_F_SEEN_REPLY }, expiry(&cfg, CT_STATE_UDP, 101 * NS_PER_S));
        for dir in [DIR_ORIG, DIR_REPLY] {
            let (s, exp) = udp_at(&cfg, a, dir, 103);
            assert_eq!(s, State { state: CT_STATE_UDP_STREAM, flags: CT_F_SEEN_REPLY });
            assert_eq!(exp, 103 + 120 + 1);
            assert_eq!(udp_at(&cfg, (s, exp), dir, 200), (s, 200 + 121), "a stream stays one, pushed by every packet");
        }
        // Without a reply no packet makes a stream, however late.
        let q = (first(PROTO_UDP, 0), expiry(&cfg, CT_STATE_UDP, 100 * NS_PER_S));
        assert_eq!(udp_at(&cfg, q, DIR_ORIG, 125), (State { state: CT_STATE_UDP, flags: 0 }, 156));
        // Nor for another protocol without states (ICMP echo).
        let (s, _) = touched(&cfg, 1, a.0, a.1, 0, DIR_ORIG, 103 * NS_PER_S);
        assert_eq!(s.state, CT_STATE_UDP);
        // An expired answered entry a packet meets starts afresh: not a stream.
        let (s, exp) = udp_at(&cfg, a, DIR_ORIG, 140);
        assert_eq!((s, exp), (State { state: CT_STATE_UDP, flags: 0 }, 171), "a new, unanswered flow");
        // Nor with the stream timeout off: every packet pushes the expiry.
        let off = DatapathConfig { ct_udp_stream_timeout_s: 0, ..cfg };
        assert_eq!(udp_at(&off, a, DIR_ORIG, 102), (a.0, 102 + 31));
        assert_eq!(udp_at(&off, a, DIR_ORIG, 110).0.state, CT_STATE_UDP);
    }

    #[test]
    fn an_entry_lives_at_least_its_timeout_and_less_than_a_second_more() {
        for touched in [0, 1, NS_PER_S - 1, NS_PER_S, 7 * NS_PER_S + 123_456_789] {
            let e = CtEntry { expires_s: expiry_after(touched, 2), ..CtEntry::default() };
            assert!(is_alive(&e, touched + 2 * NS_PER_S - 1), "touched at {touched}");
            assert!(!is_alive(&e, touched + 3 * NS_PER_S), "touched at {touched}");
        }
        let e = CtEntry { expires_s: expiry_after(10 * NS_PER_S + 5, 30), ..CtEntry::default() };
        assert_eq!(expires_in_s(&e, 10 * NS_PER_S), 31);
        assert_eq!(expires_in_s(&e, 50 * NS_PER_S), -9);
        assert_eq!(expiry_after(u64::MAX, 30), u32::MAX, "saturates rather than wrapping");
    }

    #[test]
    fn a_hairpin_flow_is_answered_in_the_clients_family() {
        let cfg = DatapathConfig::DEFAULT;
        let v4 = Addr::from_v4_octets([10, 244, 0, 5]);
        let mut b = [0u8; 16];
        b[0] = 0xfd;
        b[15] = 5;
        let v6 = Addr { bytes: b };
        assert_eq!(backend_sees(CT_F_HAIRPIN, &cfg, v4), cfg.hairpin_addr);
        assert_eq!(backend_sees(CT_F_HAIRPIN, &cfg, v6), weir_common::config::HAIRPIN_V6);
        assert!(!weir_common::config::HAIRPIN_V6.is_v4());
        assert_eq!(backend_sees(0, &cfg, v6), v6);
    }
}
