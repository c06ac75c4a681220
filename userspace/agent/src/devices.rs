//! The node's uplink devices (`--devices`, default: the device holding the
//! Node's InternalIP), with the node object's `from_net` attached through
//! pinned TCX links, like the pod programs.

use std::collections::BTreeMap;

use weir_datapath::{attach::AttachOutcome, NodeDatapath};

pub struct NodeDevices {
    dp: NodeDatapath,
    /// Named on the command line; otherwise chosen from the Node object.
    explicit: Vec<String>,
    attached: BTreeMap<String, u32>,
}

impl NodeDevices {
    pub fn new(dp: NodeDatapath, explicit: Vec<String>) -> Self {
        Self { dp, explicit, attached: BTreeMap::new() }
    }

    /// The devices to use: the explicit ones, else those holding one of
    /// `internal_ips` (from `addrs`, every (ifindex, address) of the node).
    pub fn choose(&self, internal_ips: &[std::net::IpAddr], addrs: &[(u32, std::net::IpAddr)]) -> Vec<(String, u32)> {
        if !self.explicit.is_empty() {
            return self.explicit.iter().filter_map(|n| ifindex(n).map(|i| (n.clone(), i))).collect();
        }
        let mut out: Vec<(String, u32)> = addrs
            .iter()
            .filter(|(_, a)| internal_ips.contains(a))
            .filter_map(|(i, _)| name_of(*i).map(|n| (n, *i)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Attaches `from_net` to each device not attached yet (an adopted pin
    /// gets the new program atomically). Errors are logged.
    pub fn ensure(&mut self, devices: &[(String, u32)]) {
        for (name, ifindex) in devices {
            if self.attached.get(name) == Some(ifindex) {
                continue;
            }
            match self.dp.attach(name, *ifindex) {
                Ok(o) => {
                    let how = if o.iter().all(|o| *o == AttachOutcome::Created) { "attached" } else { "adopted" };
                    tracing::info!(ifname = %name, ifindex, "{how} node programs");
                    self.attached.insert(name.clone(), *ifindex);
                }
                Err(error) => tracing::error!(ifname = %name, ifindex, error = %weir_datapath::error::chain(&error), kind = error.kind(), "node device"),
            }
        }
    }

    /// Attaches the tunnel programs to the VXLAN device.
    pub fn attach_tunnel(&mut self, name: &str, ifindex: u32) -> Result<(), weir_datapath::DatapathError> {
        self.dp.attach_tunnel(name, ifindex).map(|_| tracing::info!(ifname = %name, ifindex, "tunnel programs attached"))
    }
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `buf`.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
