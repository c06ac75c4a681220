//! The socket reverse-translation tables from layout v1 to v2
//! (`WEIR_SOCK_REVNAT`, `WEIR_SOCK_REVNAT_POD`): v1 keyed every entry by
//! the socket's cookie and its backend, and its value named the frontend
//! only. v2 keys a TCP socket's entry by its cookie alone and keeps the
//! backend in the value (`weir_common::lb::SockRevKey::of`), so that
//! `sock_release` names the entry of a socket whose connect failed. A UDP
//! entry keeps its key; its value gains the backend its key names.
//!
//! v1 could hold two entries for one TCP socket (a connect that failed
//! before its SYN left its entry, and the socket connected again); both
//! convert to the same key, and the copy keeps one of them. If it keeps
//! the stale one, the live connection's getpeername reports its backend
//! (the value's backend is not its peer), as for a socket never
//! translated. Entries v1 left behind for released sockets are carried
//! over too, and left to the LRU as before.

use weir_common::{
    addr::Addr,
    lb::{SockRevKey, SockRevValue},
};

use super::ct_v1::bytes;

/// v1's key and value sizes (the key is v2's).
pub const KEY_SIZE: u32 = 32;
pub const VALUE_SIZE: u32 = 20;

const _: () = assert!(core::mem::size_of::<SockRevKey>() == KEY_SIZE as usize);

/// v1's value: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValueV1 {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<SockRevValueV1>() == VALUE_SIZE as usize);

// SAFETY: repr(C), integers and byte arrays only, every padding byte an
// explicit field.
unsafe impl aya::Pod for SockRevValueV1 {}

/// The step: the entry keyed as v2 keys it, its value with the backend
/// the v1 key named. Bytes of another size are not a v1 entry and are
/// left behind.
pub fn step(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if key.len() != KEY_SIZE as usize || value.len() != VALUE_SIZE as usize {
        return None;
    }
    // SAFETY: each slice holds exactly its type's size, and every bit
    // pattern is a valid key and value (integers and byte arrays only).
    let (k, v) = unsafe { (core::ptr::read_unaligned(key.as_ptr().cast::<SockRevKey>()), core::ptr::read_unaligned(value.as_ptr().cast::<SockRevValueV1>())) };
    let nk = SockRevKey::of(k.cookie, k.proto, k.addr, k.port);
    let nv = SockRevValue { addr: v.addr, port: v.port, _pad: 0, backend: k.addr, backend_port: k.port, _pad1: 0 };
    Some((bytes(&nk).to_vec(), bytes(&nv).to_vec()))
}

#[cfg(test)]
mod tests {
    use weir_common::lb::{PROTO_TCP, PROTO_UDP};

    use super::{super::fixtures::addr6, *};

    fn v1(proto: u8) -> (SockRevKey, SockRevValueV1) {
        let k = SockRevKey { cookie: 4242, addr: addr6("::ffff:10.0.1.5"), port: 8080u16.to_be(), proto, _pad0: 0, _pad1: 0 };
        (k, SockRevValueV1 { addr: addr6("::ffff:10.96.0.30"), port: 80u16.to_be(), _pad: 0 })
    }

    fn parse(k: &[u8], v: &[u8]) -> (SockRevKey, SockRevValue) {
        assert_eq!((k.len(), v.len()), (32, 40));
        // SAFETY: exactly one key and one value of v2.
        unsafe { (core::ptr::read_unaligned(k.as_ptr().cast::<SockRevKey>()), core::ptr::read_unaligned(v.as_ptr().cast::<SockRevValue>())) }
    }

    #[test]
    fn a_tcp_entry_is_keyed_by_its_cookie_and_keeps_its_backend_in_the_value() {
        let (k, v) = v1(PROTO_TCP);
        let (nk, nv) = step(bytes(&k), bytes(&v)).expect("a v1 entry");
        let (nk, nv) = parse(&nk, &nv);
        assert_eq!(nk, SockRevKey { cookie: 4242, addr: Addr::ZERO, port: 0, proto: PROTO_TCP, _pad0: 0, _pad1: 0 });
        assert_eq!(nv.frontend_for(&k.addr, k.port), Some((v.addr, v.port)), "getpeername still names the frontend");
        assert_eq!(nv.frontend_for(&addr6("::ffff:10.0.1.6"), k.port), None, "for that backend only");
    }

    #[test]
    fn a_udp_entry_keeps_its_key() {
        let (k, v) = v1(PROTO_UDP);
        let (nk, nv) = step(bytes(&k), bytes(&v)).expect("a v1 entry");
        let (nk, nv) = parse(&nk, &nv);
        assert_eq!(nk, k);
        assert_eq!(nv.frontend_for(&k.addr, k.port), Some((v.addr, v.port)));
    }

    #[test]
    fn other_bytes_are_left_behind() {
        assert_eq!(step(&[0; 32], &[0; 40]), None, "v2 bytes");
    }
}
