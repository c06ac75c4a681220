//! weir's kernel library: map definitions and helpers split by concern.
//! The objects themselves (one per attach site) live in `src/bin/`.
#![no_std]

pub mod errors;
pub mod maps;
pub mod stats;
