//! Decision code shared by the kernel programs and the `weir` CLI.
//!
//! Everything here is `no_std`, allocation-free and generic over how maps are
//! read, so the same function runs in the verifier-checked kernel program and
//! in `weir explain` against the pinned maps.
#![no_std]

pub mod counters;
