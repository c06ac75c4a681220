//! Decision code shared by the kernel programs and the `weir` CLI.
//!
//! Everything here is `no_std` and generic over how maps are read, so the
//! same function runs in the verifier-checked kernel program and in
//! userspace against the pinned maps. Builders that allocate (the Maglev
//! table) sit behind the `alloc` feature; the kernel only looks up.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod counters;
pub mod csum;
pub mod ct;
pub mod ct6;
pub mod frontend;
pub mod hash;
pub mod ipv6;
pub mod maglev;
pub mod masq;
pub mod policy;
pub mod select;
