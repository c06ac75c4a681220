//! The datapath configuration from layout v2 to v3 (`WEIR_CONFIG`): v3
//! appends `DatapathConfig::sock_scope` and 4 bytes that were padding
//! (now `ct_udp_stream_timeout_s`, whose 0 means no stream state: what
//! the v2 programs did). Every v2 byte keeps its place and meaning; the
//! new field starts at `SOCK_SCOPE_NODE`, what the v2 programs did (the
//! socket programs translate the node's own sockets only) until the agent
//! writes its `--socket-lb-namespaces`.

use weir_common::config::{DatapathConfig, SOCK_SCOPE_NODE};

/// v2's key and value sizes.
pub const KEY_SIZE: u32 = 4;
pub const VALUE_SIZE: u32 = 88;

const _: () = assert!(core::mem::size_of::<DatapathConfig>() == VALUE_SIZE as usize + 8);
const _: () = assert!(core::mem::offset_of!(DatapathConfig, sock_scope) == VALUE_SIZE as usize);

/// The step: the key as it is, the value with the node-only scope and
/// zero padding appended. Bytes of another size are not a v2 entry and
/// are left behind.
pub fn step(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if key.len() != KEY_SIZE as usize || value.len() != VALUE_SIZE as usize {
        return None;
    }
    let mut v = value.to_vec();
    v.extend_from_slice(&SOCK_SCOPE_NODE.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    Some((key.to_vec(), v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::{addr::Addr, config::SOCK_SCOPE_ALL};

    #[test]
    fn every_v2_field_is_kept_and_the_socket_scope_starts_at_the_node() {
        let cfg = DatapathConfig {
            ct_udp_timeout_s: 33,
            node_addr: Addr::from(std::net::Ipv4Addr::new(192, 168, 0, 11)),
            netns_cookie: 0x1234_5678_9abc_def0,
            node_addr6: Addr::from("fd00::1".parse::<std::net::IpAddr>().expect("an address")),
            sock_scope: SOCK_SCOPE_ALL,
            ..DatapathConfig::DEFAULT
        };
        // SAFETY: DatapathConfig is repr(C) plain data without implicit
        // padding, so every byte is initialised.
        let bytes = unsafe { core::slice::from_raw_parts((&cfg as *const DatapathConfig).cast::<u8>(), core::mem::size_of::<DatapathConfig>()) };
        let (k, v) = step(&0u32.to_ne_bytes(), &bytes[..VALUE_SIZE as usize]).expect("a v2 entry");
        assert_eq!(k, 0u32.to_ne_bytes());
        assert_eq!(v.len(), core::mem::size_of::<DatapathConfig>());
        // SAFETY: `v` holds exactly size_of::<DatapathConfig>() bytes; every
        // bit pattern is a valid DatapathConfig (integers and byte arrays).
        let got = unsafe { core::ptr::read_unaligned(v.as_ptr().cast::<DatapathConfig>()) };
        assert_eq!(got, DatapathConfig { sock_scope: SOCK_SCOPE_NODE, ct_udp_stream_timeout_s: 0, ..cfg }, "no UDP stream state, as v2's programs");
    }

    #[test]
    fn bytes_of_another_size_are_left_behind() {
        assert_eq!(step(&[0; 4], &[0; 72]), None);
        assert_eq!(step(&[0; 4], &[0; 96]), None);
        assert_eq!(step(&[0; 8], &[0; 88]), None);
    }
}
