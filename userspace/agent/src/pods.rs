//! Keeps the pod programs attached to every host-side pod veth (`weir*`),
//! and each pod link's routed addresses in `WEIR_LINKS` (the source
//! addresses the kernel accepts from it).

use std::{collections::HashMap, sync::Arc};

use weir_datapath::{attach::AttachOutcome, links::LinkAddrs, DatapathError, PodDatapath};

use crate::{
    links::{HostRoute, LinkEvent, NetEvent},
    metrics::{KindLabels, Metrics},
    pod_addrs::PodAddresses,
};

/// Host-side pod veths are named `weir` + 11 hex characters.
pub const POD_IFNAME_PREFIX: &str = "weir";

pub fn is_pod_interface(name: &str) -> bool {
    name.starts_with(POD_IFNAME_PREFIX)
}

/// Tracks which pod interfaces have the programs, and their addresses.
pub struct PodInterfaces {
    dp: PodDatapath,
    attached: HashMap<u32, String>,
    /// Every present `weir*` link (attached or not).
    pod_links: HashMap<u32, String>,
    addrs: PodAddresses,
    links: LinkAddrs,
    metrics: Arc<Metrics>,
}

impl PodInterfaces {
    pub fn new(dp: PodDatapath, links: LinkAddrs, metrics: Arc<Metrics>) -> Self {
        Self { dp, attached: HashMap::new(), pod_links: HashMap::new(), addrs: PodAddresses::default(), links, metrics }
    }

    /// Applies one link or route event.
    pub fn apply_net(&mut self, ev: &NetEvent) {
        match ev {
            NetEvent::Link(l) => self.apply(l),
            NetEvent::Route(r) => {
                for ifindex in self.addrs.apply(r) {
                    self.write_addrs(ifindex);
                }
            }
            // An overrun is answered with dumps by the caller (`relist`).
            NetEvent::Addr | NetEvent::Overrun => {}
        }
    }

    /// Takes a dump of the host routes as the whole truth (at start-up,
    /// and on every resync, so a lost netlink event is repaired), and
    /// removes `WEIR_LINKS` entries of links that are no pod links.
    pub fn routes(&mut self, dump: &[HostRoute]) {
        for ifindex in self.addrs.replace(dump) {
            self.write_addrs(ifindex);
        }
        let stale: Vec<u32> = self.links.all().into_keys().filter(|i| !self.pod_links.contains_key(i)).collect();
        for ifindex in stale {
            self.write_addrs(ifindex);
        }
    }

    /// Writes the addresses of `ifindex` if it is a pod link, removes its
    /// entry otherwise.
    fn write_addrs(&mut self, ifindex: u32) {
        let addrs = if self.pod_links.contains_key(&ifindex) { self.addrs.of(ifindex) } else { Vec::new() };
        match self.links.set(ifindex, &addrs) {
            Ok(()) => {
                if let Some(name) = self.pod_links.get(&ifindex) {
                    tracing::debug!(ifname = %name, ifindex, ?addrs, "pod link addresses");
                }
            }
            Err(error) => {
                let name = self.pod_links.get(&ifindex).cloned().unwrap_or_default();
                log_error(&name, ifindex, &error);
                self.metrics.reconcile_errors.get_or_create(&KindLabels { kind: error.kind().into() }).inc();
            }
        }
    }

    /// Notes a present pod link without attaching (start-up: addresses
    /// are written before programs are attached).
    pub fn note_link(&mut self, ev: &LinkEvent) {
        if let LinkEvent::Present { ifindex, name } = ev {
            if is_pod_interface(name) {
                self.pod_links.insert(*ifindex, name.clone());
            }
        }
    }

    /// Applies one link event. Errors are logged; one bad interface never
    /// stops the others.
    pub fn apply(&mut self, ev: &LinkEvent) {
        match ev {
            LinkEvent::Present { ifindex, name } => {
                if !is_pod_interface(name) {
                    if self.pod_links.remove(ifindex).is_some() {
                        self.write_addrs(*ifindex);
                    }
                    return;
                }
                if self.pod_links.insert(*ifindex, name.clone()).is_none() {
                    // Addresses first: the programs drop every source the
                    // link does not own.
                    self.write_addrs(*ifindex);
                }
                if self.attached.get(ifindex) == Some(name) {
                    return;
                }
                // A rename of an attached interface: forget the old name first.
                if let Some(old) = self.attached.remove(ifindex) {
                    self.release(*ifindex, &old);
                }
                match self.dp.attach(name, *ifindex) {
                    Ok(outcome) => {
                        let how = if outcome.contains(&AttachOutcome::Created) { "attached" } else { "adopted" };
                        tracing::info!(ifname = %name, ifindex, "{how} pod programs");
                        self.attached.insert(*ifindex, name.clone());
                    }
                    Err(error) => log_error(name, *ifindex, &error),
                }
            }
            LinkEvent::Gone { ifindex, name } => {
                self.pod_links.remove(ifindex);
                self.addrs.forget_link(*ifindex);
                self.write_addrs(*ifindex);
                if self.attached.remove(ifindex).is_some() || is_pod_interface(name) {
                    self.release(*ifindex, name);
                }
            }
        }
    }

    /// Takes dumps of the links and host routes as the whole truth, after
    /// events were lost: links missing from the dump are gone, the present
    /// ones are (re)applied, so no pod veth stays without its programs or
    /// keeps the addresses of a link that no longer exists.
    pub fn relist(&mut self, links: &[LinkEvent], routes: &[HostRoute]) {
        self.relist_with(links, |me| me.routes(routes));
    }

    /// [`PodInterfaces::relist`] with the routes of `ifindexes` alone
    /// (every other link keeps what its route events told).
    pub fn relist_via(&mut self, links: &[LinkEvent], ifindexes: &[u32], routes: &[HostRoute]) {
        self.relist_with(links, |me| {
            for ifindex in me.addrs.replace_for(ifindexes, routes) {
                me.write_addrs(ifindex);
            }
        });
    }

    fn relist_with(&mut self, links: &[LinkEvent], routes: impl FnOnce(&mut Self)) {
        let present: std::collections::HashSet<u32> = links
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Present { ifindex, .. } => Some(*ifindex),
                LinkEvent::Gone { .. } => None,
            })
            .collect();
        let known: Vec<(u32, String)> = self.pod_links.iter().chain(&self.attached).map(|(i, n)| (*i, n.clone())).collect();
        for (ifindex, name) in known {
            if !present.contains(&ifindex) {
                self.apply(&LinkEvent::Gone { ifindex, name });
            }
        }
        for ev in links {
            self.note_link(ev);
        }
        routes(self);
        for ev in links {
            self.apply(ev);
        }
    }

    /// Whether the pod link `name` has its programs and routes to every
    /// address of `addrs` (the sources its programs accept).
    pub fn link_ready(&self, name: &str, addrs: &[std::net::IpAddr]) -> Result<(), String> {
        let Some(ifindex) = self.attached.iter().find(|(_, n)| n.as_str() == name).map(|(i, _)| *i) else {
            return Err(if self.pod_links.values().any(|n| n == name) { "the pod programs could not be attached (see the agent's log)".into() } else { "no such link on this node".into() });
        };
        let routed = self.addrs.of(ifindex);
        match addrs.iter().find(|a| !routed.contains(a)) {
            Some(a) => Err(format!("no host route to {a} through it")),
            None => Ok(()),
        }
    }

    /// Releases pins of interfaces that vanished while no agent was running.
    pub fn prune_missing(&mut self, present: &[LinkEvent]) {
        let live: HashMap<u32, String> = present
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Present { ifindex, name } => Some((*ifindex, name.clone())),
                LinkEvent::Gone { .. } => None,
            })
            .collect();
        match self.dp.prune(&live) {
            Ok(pruned) if !pruned.is_empty() => tracing::info!(?pruned, "released pins of vanished interfaces"),
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %weir_datapath::error::chain(&error), kind = error.kind(), "pruning stale pins"),
        }
    }

    fn release(&mut self, ifindex: u32, name: &str) {
        match self.dp.release(name, ifindex) {
            Ok(()) => tracing::info!(ifname = %name, ifindex, "pod interface gone, released"),
            Err(error) => log_error(name, ifindex, &error),
        }
    }
}

fn log_error(ifname: &str, ifindex: u32, error: &DatapathError) {
    tracing::error!(%ifname, ifindex, error = %weir_datapath::error::chain(error), kind = error.kind(), "pod interface");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_weir_links_are_pod_interfaces() {
        assert!(is_pod_interface("weir0123456789a"));
        assert!(!is_pod_interface("eth0"));
        assert!(!is_pod_interface("lo"));
    }
}
