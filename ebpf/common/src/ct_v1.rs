//! Conntrack's previous layout (v1 of `WEIR_CT` and `WEIR_SNAT`) and its
//! conversion to the current one, shared by the agent's migration (which
//! copies every entry) and the kernel's carry-over (which takes over an
//! entry the old programs created during the migration, from
//! [`crate::maps::CT_PREV_V1`]).
//!
//! v1 kept the expiry first, as CLOCK_MONOTONIC nanoseconds in 64 bits;
//! v2 keeps whole seconds in 32 bits after the two addresses, so a value
//! is 56 B instead of 64 (16 B less per service flow). The key did not
//! change. An entry keeps every field; its expiry is rounded up to the
//! next second, so it lives as long as it would have, and less than one
//! second more.

use crate::{addr::Addr, ct::{CtEntry, NS_PER_S}};

/// `CtEntry` at layout v1 (its four bytes of tail padding made explicit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryV1 {
    pub expires_ns: u64,
    pub nat_addr: Addr,
    pub orig_addr: Addr,
    pub backend_id: u32,
    pub svc_id: u32,
    pub nat_port: u16,
    pub orig_port: u16,
    pub state: u8,
    pub flags: u8,
    pub _pad: u16,
    pub owner: u32,
    pub _tail: u32,
}

const _: () = assert!(core::mem::size_of::<CtEntryV1>() == 64);

/// One v1 value as v2.
pub fn to_v2(e: &CtEntryV1) -> CtEntry {
    let mut out = CtEntry::default();
    write_v2(e, &mut out);
    out
}

/// [`to_v2`] written in place, field by field (the kernel converts into
/// per-CPU scratch space: a CtEntry on its stack would not fit).
#[inline(always)]
pub fn write_v2(e: &CtEntryV1, out: &mut CtEntry) {
    let secs = e.expires_ns.div_ceil(NS_PER_S);
    out.nat_addr = e.nat_addr;
    out.orig_addr = e.orig_addr;
    out.expires_s = if secs > u32::MAX as u64 { u32::MAX } else { secs as u32 };
    out.backend_id = e.backend_id;
    out.svc_id = e.svc_id;
    out.nat_port = e.nat_port;
    out.orig_port = e.orig_port;
    out.state = e.state;
    out.flags = e.flags;
    out._pad = e._pad;
    out.owner = e.owner;
}

/// One v2 value as v1: what an agent of layout v1 would have written for
/// the same flow (tests build v1 pins with it).
pub fn to_v1(e: &CtEntry) -> CtEntryV1 {
    CtEntryV1 {
        expires_ns: e.expires_s as u64 * NS_PER_S,
        nat_addr: e.nat_addr,
        orig_addr: e.orig_addr,
        backend_id: e.backend_id,
        svc_id: e.svc_id,
        nat_port: e.nat_port,
        orig_port: e.orig_port,
        state: e.state,
        flags: e.flags,
        _pad: e._pad,
        owner: e.owner,
        _tail: 0,
    }
}

crate::user_pod!(CtEntryV1);
