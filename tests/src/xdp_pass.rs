//! An XDP program that passes every frame (two instructions, loaded with
//! the bpf syscall), for the far end of a veth: a veth delivers frames that
//! XDP sends back out (`XDP_TX`) only to a peer that runs XDP itself (the
//! kernel's veth wakes the peer's NAPI only then), which a real NIC's wire
//! does not need.

use std::os::fd::{FromRawFd as _, OwnedFd, AsRawFd as _};

use crate::netns::NetNs;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP` of `enum bpf_attach_type`.
const BPF_XDP: u32 = 37;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> i64 {
    // SAFETY: `attr` is a zero-padded union bpf_attr of 128 bytes.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) }
}

fn put<const N: usize>(attr: &mut [u8; 128], off: usize, bytes: [u8; N]) {
    attr[off..off + N].copy_from_slice(&bytes);
}

/// Loads `r0 = XDP_PASS; exit`.
fn load_pass() -> OwnedFd {
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    put(&mut attr, 0, BPF_PROG_TYPE_XDP.to_ne_bytes());
    put(&mut attr, 4, 2u32.to_ne_bytes());
    put(&mut attr, 8, (insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, (license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 68, BPF_XDP.to_ne_bytes());
    let fd = bpf(BPF_PROG_LOAD, &mut attr);
    assert!(fd >= 0, "loading the XDP pass program: {}", std::io::Error::last_os_error());
    // SAFETY: a new file descriptor the kernel just returned.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Attaches the pass program (native mode) to `ifname` in `ns` through a
/// bpf_link; it stays while the returned link lives.
pub fn attach(ns: &NetNs, ifname: &str) -> OwnedFd {
    let prog = load_pass();
    let ifindex = ns.ifindex(ifname);
    let prog_fd = prog.as_raw_fd() as u32;
    // The interface index is the namespace's own.
    let fd = ns.run(move || {
        let mut attr = [0u8; 128];
        put(&mut attr, 0, prog_fd.to_ne_bytes());
        put(&mut attr, 4, ifindex.to_ne_bytes());
        put(&mut attr, 8, BPF_XDP.to_ne_bytes());
        put(&mut attr, 12, XDP_FLAGS_DRV_MODE.to_ne_bytes());
        bpf(BPF_LINK_CREATE, &mut attr)
    });
    assert!(fd >= 0, "attaching the XDP pass program to {ifname}: {}", std::io::Error::last_os_error());
    // SAFETY: a new file descriptor the kernel just returned.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}
