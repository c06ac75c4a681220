//! The node's uplink devices (`--devices`, default: the device holding the
//! Node's InternalIP), with the node object's `from_net` attached through
//! pinned TCX links, like the pod programs.

use std::collections::BTreeMap;

use weir_datapath::{attach::AttachOutcome, NodeDatapath};

pub struct NodeDevices {
    dp: NodeDatapath,
    /// Named on the command line; otherwise chosen from the Node object.
    explicit: Vec<String>,
    /// `--xdp`: the XDP fast path on every device too.
    xdp: bool,
    attached: BTreeMap<String, u32>,
}

impl NodeDevices {
    pub fn new(dp: NodeDatapath, explicit: Vec<String>) -> Self {
        Self { dp, explicit, xdp: false, attached: BTreeMap::new() }
    }

    /// `--xdp`: attach the XDP fast path to every device as well.
    pub fn set_xdp(&mut self, on: bool) {
        self.xdp = on;
    }

    /// The devices to use (see [`choose`]).
    pub fn choose(&self, internal_ips: &[std::net::IpAddr], addrs: &[(u32, std::net::IpAddr)], default_route: Option<u32>) -> Vec<(String, u32)> {
        choose(&self.explicit, internal_ips, addrs, default_route)
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
                    accept_local(name);
                }
                Err(error) => {
                    tracing::error!(ifname = %name, ifindex, error = %weir_datapath::error::chain(&error), kind = error.kind(), "node device");
                    continue;
                }
            }
            self.ensure_xdp(name, *ifindex);
        }
    }

    /// The XDP fast path on `name` exactly when `--xdp` asks for it (an
    /// earlier agent's is removed otherwise). A device without native XDP
    /// keeps tc alone, with an error logged.
    fn ensure_xdp(&mut self, name: &str, ifindex: u32) {
        let layout = self.dp.layout().clone();
        if !self.xdp {
            match weir_datapath::xdp::detach(&layout, name, ifindex) {
                Ok(true) => tracing::info!(ifname = %name, ifindex, "XDP fast path removed (no --xdp)"),
                Ok(false) => {}
                Err(error) => tracing::error!(ifname = %name, ifindex, error = %weir_datapath::error::chain(&error), "removing the XDP fast path"),
            }
            return;
        }
        match self.dp.attach_xdp(name, ifindex) {
            Ok(o) => tracing::info!(ifname = %name, ifindex, outcome = ?o, "XDP fast path attached"),
            Err(error) => tracing::error!(ifname = %name, ifindex, error = %weir_datapath::error::chain(&error), kind = error.kind(), "XDP fast path (the device keeps tc alone)"),
        }
    }

    /// Attaches the tunnel programs to the VXLAN device.
    // The datapath's error carries aya's (large) errors by value, as every
    // weir-datapath call returns it; this runs once per tunnel device.
    #[allow(clippy::result_large_err)]
    pub fn attach_tunnel(&mut self, name: &str, ifindex: u32) -> Result<(), weir_datapath::DatapathError> {
        self.dp.attach_tunnel(name, ifindex).map(|_| tracing::info!(ifname = %name, ifindex, "tunnel programs attached"))
    }
}

/// Lets the stack take packets with a local source address from `name`
/// (`net.ipv4.conf.<name>.accept_local`): a masqueraded packet from
/// outside too big for the link its translation leaves by, without Don't
/// Fragment, is handed to the stack to be fragmented, and it carries the
/// node's own address as its source. `from_net` drops every packet from
/// outside that really claims it (`spoofed_source`) before the stack sees
/// it. Cilium sets the same on its own devices. Errors are logged.
fn accept_local(name: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{name}/accept_local");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    match std::fs::write(&path, "1") {
        Ok(()) => tracing::info!(ifname = %name, "set accept_local (masqueraded packets the stack must fragment)"),
        Err(error) => tracing::error!(ifname = %name, %path, %error, "cannot set accept_local: masqueraded packets too big for their egress will be dropped"),
    }
}

/// The uplinks: the explicit ones (that exist), else those holding one of
/// the Node's `internal_ips` (`addrs`: every (ifindex, address) of the
/// node), else the default route's device.
pub fn choose(explicit: &[String], internal_ips: &[std::net::IpAddr], addrs: &[(u32, std::net::IpAddr)], default_route: Option<u32>) -> Vec<(String, u32)> {
    if !explicit.is_empty() {
        return explicit.iter().filter_map(|n| ifindex(n).map(|i| (n.clone(), i))).collect();
    }
    let mut out: Vec<(String, u32)> = addrs
        .iter()
        .filter(|(_, a)| internal_ips.contains(a))
        .filter_map(|(i, _)| name_of(*i).map(|n| (n, *i)))
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        out.extend(default_route.and_then(|i| name_of(i).map(|n| (n, i))));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    const LO: u32 = 1;

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_device_holding_the_internal_ip_wins_over_the_default_route() {
        let addrs = [(LO, ip("127.0.0.1"))];
        assert_eq!(choose(&[], &[ip("127.0.0.1")], &addrs, Some(9999)), vec![("lo".to_string(), LO)]);
    }

    #[test]
    fn without_it_the_default_routes_device_is_the_uplink() {
        let addrs = [(LO, ip("127.0.0.1"))];
        assert_eq!(choose(&[], &[ip("10.9.9.9")], &addrs, Some(LO)), vec![("lo".to_string(), LO)]);
        assert!(choose(&[], &[ip("10.9.9.9")], &addrs, None).is_empty());
    }

    #[test]
    fn explicit_devices_are_taken_as_named_when_they_exist() {
        assert_eq!(choose(&["lo".into(), "no-such-dev0".into()], &[], &[], Some(LO)), vec![("lo".to_string(), LO)]);
    }
}
