//! The datapath configuration from layout v1 to v2 (`WEIR_CONFIG`): v2
//! appends `DatapathConfig::node_addr6`, the node's IPv6 address IPv6
//! service flows are masqueraded to. Every v1 byte keeps its place and
//! meaning; the new field starts unset (zero: no IPv6 flow is
//! masqueraded until the agent reads the Node's IPv6 InternalIP).

use weir_common::{addr::Addr, config::DatapathConfig};

/// v1's key and value sizes.
pub const KEY_SIZE: u32 = 4;
pub const VALUE_SIZE: u32 = 72;

const _: () = assert!(super::config_v2::VALUE_SIZE == VALUE_SIZE + core::mem::size_of::<Addr>() as u32);
const _: () = assert!(core::mem::offset_of!(DatapathConfig, node_addr6) == VALUE_SIZE as usize);

/// The step: the key as it is, the value with an unset `node_addr6`
/// appended. Bytes of another size are not a v1 entry and are left
/// behind.
pub fn step(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if key.len() != KEY_SIZE as usize || value.len() != VALUE_SIZE as usize {
        return None;
    }
    let mut v = value.to_vec();
    v.extend_from_slice(&Addr::ZERO.bytes);
    Some((key.to_vec(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_v1_field_is_kept_and_the_ipv6_node_address_starts_unset() {
        let cfg = DatapathConfig {
            ct_udp_timeout_s: 33,
            masq_port_min: 40_000,
            node_addr: Addr::from(std::net::Ipv4Addr::new(192, 168, 0, 11)),
            netns_cookie: 0x1234_5678_9abc_def0,
            node_addr6: Addr::from("fd00::1".parse::<std::net::IpAddr>().expect("an address")),
            ..DatapathConfig::DEFAULT
        };
        // SAFETY: DatapathConfig is repr(C) plain data without implicit
        // padding, so every byte is initialised.
        let bytes = unsafe { core::slice::from_raw_parts((&cfg as *const DatapathConfig).cast::<u8>(), core::mem::size_of::<DatapathConfig>()) };
        let (k, v) = step(&0u32.to_ne_bytes(), &bytes[..VALUE_SIZE as usize]).expect("a v1 entry");
        assert_eq!(k, 0u32.to_ne_bytes());
        assert_eq!(v.len(), super::super::config_v2::VALUE_SIZE as usize);
        let (_, v) = super::super::config_v2::step(&k, &v).expect("a v2 entry");
        // SAFETY: `v` holds exactly size_of::<DatapathConfig>() bytes; every
        // bit pattern is a valid DatapathConfig (integers and byte arrays).
        let got = unsafe { core::ptr::read_unaligned(v.as_ptr().cast::<DatapathConfig>()) };
        assert_eq!(got, DatapathConfig { node_addr6: Addr::ZERO, ct_udp_stream_timeout_s: 0, ..cfg }, "through v2: no UDP stream state, as v1's programs");
    }

    #[test]
    fn bytes_of_another_size_are_left_behind() {
        assert_eq!(step(&[0; 4], &[0; 88]), None);
        assert_eq!(step(&[0; 8], &[0; 72]), None);
    }
}
