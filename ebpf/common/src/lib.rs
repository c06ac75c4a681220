//! The ABI shared by weir's kernel programs and its userspace.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding, and is used as a
//! BPF map key or value. With the `user` feature the types implement
//! [`aya::Pod`] so userspace can read and write the pinned maps.
#![no_std]

#[cfg(any(test, feature = "user"))]
extern crate std;

pub mod abi;
pub mod addr;
pub mod config;
pub mod ct;
pub mod ct_v1;
pub mod drop;
pub mod event;
pub mod frag;
pub mod lb;
pub mod link;
pub mod maps;
pub mod masq;
pub mod policy;
pub mod stats;
pub mod tunnel;

/// Implements `aya::Pod` for map types when building for userspace.
macro_rules! user_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is repr(C), Copy, and has no padding (checked by
            // the size assertions next to its definition).
            unsafe impl aya::Pod for $t {}
        )+
    };
}
pub(crate) use user_pod;
