//! Keeps the pod programs attached to every host-side pod veth (`weir*`).

use std::collections::HashMap;

use weir_datapath::{attach::AttachOutcome, DatapathError, PodDatapath};

use crate::links::LinkEvent;

/// Host-side pod veths are named `weir` + 11 hex characters.
pub const POD_IFNAME_PREFIX: &str = "weir";

pub fn is_pod_interface(name: &str) -> bool {
    name.starts_with(POD_IFNAME_PREFIX)
}

/// Tracks which pod interfaces have the programs.
pub struct PodInterfaces {
    dp: PodDatapath,
    attached: HashMap<u32, String>,
}

impl PodInterfaces {
    pub fn new(dp: PodDatapath) -> Self {
        Self { dp, attached: HashMap::new() }
    }

    /// Applies one link event. Errors are logged; one bad interface never
    /// stops the others.
    pub fn apply(&mut self, ev: &LinkEvent) {
        match ev {
            LinkEvent::Present { ifindex, name } => {
                if !is_pod_interface(name) {
                    return;
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
                if self.attached.remove(ifindex).is_some() || is_pod_interface(name) {
                    self.release(*ifindex, name);
                }
            }
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
