//! Conntrack state machine and timeouts, shared by the kernel (which
//! advances states) and userspace (which collects stale entries).

use weir_common::{
    config::DatapathConfig,
    ct::{CtEntry, CT_STATE_CLOSED, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_SYN, CT_STATE_UDP},
    lb::PROTO_TCP,
};

/// TCP flags as found in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The state after a packet with `tcp_flags` (ignored for UDP).
#[inline(always)]
pub fn next_state(proto: u8, current: u8, tcp_flags: u8) -> u8 {
    if proto != PROTO_TCP {
        return CT_STATE_UDP;
    }
    if tcp_flags & TCP_RST != 0 {
        CT_STATE_CLOSED
    } else if is_syn(tcp_flags) {
        // A SYN opens a connection, also over a closing or closed entry
        // whose tuple is being reused.
        CT_STATE_SYN
    } else if tcp_flags & TCP_FIN != 0 {
        CT_STATE_CLOSING
    } else if current == CT_STATE_CLOSING || current == CT_STATE_CLOSED {
        current
    } else if tcp_flags & TCP_ACK != 0 && current != 0 {
        // SYN-ACK or any ACK once the flow exists.
        CT_STATE_ESTABLISHED
    } else {
        CT_STATE_SYN
    }
}

/// Lifetime of a state, in seconds.
#[inline(always)]
pub fn timeout_s(cfg: &DatapathConfig, state: u8) -> u32 {
    match state {
        CT_STATE_SYN => cfg.ct_syn_timeout_s,
        CT_STATE_ESTABLISHED => cfg.ct_established_timeout_s,
        CT_STATE_CLOSING => cfg.ct_closing_timeout_s,
        CT_STATE_CLOSED => cfg.ct_closed_timeout_s,
        _ => cfg.ct_udp_timeout_s,
    }
}

/// When an entry in `state`, touched at `now_ns`, goes stale.
#[inline(always)]
pub fn expiry(cfg: &DatapathConfig, state: u8, now_ns: u64) -> u64 {
    now_ns + timeout_s(cfg, state) as u64 * 1_000_000_000
}

#[inline(always)]
pub fn is_alive(e: &CtEntry, now_ns: u64) -> bool {
    now_ns < e.expires_ns
}

/// Whether a packet may open a new connection over a stale entry: any UDP
/// packet, or a TCP SYN. Other TCP packets of unknown flows are still
/// load-balanced (the backend answers with a RST), as kube-proxy does.
#[inline(always)]
pub fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::lb::PROTO_UDP;

    #[test]
    fn tcp_states_follow_the_handshake_and_teardown() {
        let s = next_state(PROTO_TCP, 0, TCP_SYN);
        assert_eq!(s, CT_STATE_SYN);
        let s = next_state(PROTO_TCP, s, TCP_SYN | TCP_ACK);
        assert_eq!(s, CT_STATE_ESTABLISHED);
        let s = next_state(PROTO_TCP, s, TCP_ACK);
        assert_eq!(s, CT_STATE_ESTABLISHED);
        let s = next_state(PROTO_TCP, s, TCP_FIN | TCP_ACK);
        assert_eq!(s, CT_STATE_CLOSING);
        assert_eq!(next_state(PROTO_TCP, s, TCP_ACK), CT_STATE_CLOSING);
        assert_eq!(next_state(PROTO_TCP, CT_STATE_ESTABLISHED, TCP_RST), CT_STATE_CLOSED);
        assert_eq!(next_state(PROTO_TCP, CT_STATE_CLOSING, TCP_SYN), CT_STATE_SYN, "a reused tuple opens again");
        assert_eq!(next_state(PROTO_UDP, 0, 0), CT_STATE_UDP);
    }

    #[test]
    fn every_state_has_its_own_timeout() {
        let cfg = DatapathConfig::DEFAULT;
        assert_eq!(timeout_s(&cfg, CT_STATE_SYN), 60);
        assert_eq!(timeout_s(&cfg, CT_STATE_ESTABLISHED), 21_600);
        assert_eq!(timeout_s(&cfg, CT_STATE_CLOSING), 10);
        assert_eq!(timeout_s(&cfg, CT_STATE_CLOSED), 10);
        assert_eq!(timeout_s(&cfg, CT_STATE_UDP), 60);
        assert_eq!(expiry(&cfg, CT_STATE_UDP, 5), 5 + 60_000_000_000);
    }
}
