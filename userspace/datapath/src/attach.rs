//! Attaching the pod programs to an interface through TCX links that are
//! pinned, so they outlive the agent. A link pinned by an earlier agent is
//! adopted and its program replaced atomically (`bpf_link_update`): traffic
//! never sees the interface without a program.

use std::{fs, io};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, SchedClassifier, TcAttachType,
};

use crate::{pins::PinLayout, DatapathError};

/// Where a program sits: on a host-side pod veth, or on a node device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// Pod veth, tc ingress: packets the pod sends.
    FromPod,
    /// Pod veth, tc egress: packets delivered to the pod.
    ToPod,
    /// Node device (uplink), tc ingress: packets from the network.
    FromNet,
    /// Node device (uplink), tc egress: packets leaving the node.
    ToNet,
    /// The VXLAN device, tc egress: packets for other nodes' pods.
    ToTunnel,
    /// The VXLAN device, tc ingress: decapsulated packets.
    FromTunnel,
}

impl Hook {
    pub const ALL: [Hook; 6] = [Hook::FromPod, Hook::ToPod, Hook::FromNet, Hook::ToNet, Hook::ToTunnel, Hook::FromTunnel];
    /// The pod object's hooks.
    pub const POD: [Hook; 2] = [Hook::FromPod, Hook::ToPod];
    /// The node object's hooks.
    pub const NODE: [Hook; 4] = [Hook::FromNet, Hook::ToNet, Hook::ToTunnel, Hook::FromTunnel];

    /// The program name in its object, and the pin suffix.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FromPod => "from_pod",
            Self::ToPod => "to_pod",
            Self::FromNet => "from_net",
            Self::ToNet => "to_net",
            Self::ToTunnel => "to_tunnel",
            Self::FromTunnel => "from_tunnel",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }

    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Self::FromPod | Self::FromNet | Self::FromTunnel => TcAttachType::Ingress,
            Self::ToPod | Self::ToNet | Self::ToTunnel => TcAttachType::Egress,
        }
    }
}

/// What attaching did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// A new TCX link was created and pinned.
    Created,
    /// A pinned link was adopted and its program replaced atomically.
    Replaced,
}

/// Attaches `prog` at `hook` of `ifname`, adopting a pinned link if one exists.
pub fn attach_pinned(
    prog: &mut SchedClassifier,
    layout: &PinLayout,
    ifname: &str,
    ifindex: u32,
    hook: Hook,
) -> Result<AttachOutcome, DatapathError> {
    let name = hook.as_str();
    let pin = layout.link(ifname, ifindex, hook);
    if pin.exists() {
        let old = PinnedLink::from_pin(&pin).map_err(|source| DatapathError::Link { path: pin.clone(), source })?;
        let link = SchedClassifierLink::try_from(FdLink::from(old))
            .map_err(|source| DatapathError::Link { path: pin.clone(), source })?;
        match prog.attach_to_link(link) {
            Ok(id) => {
                // The pin keeps the link; drop our fd without detaching.
                let _ = prog.take_link(id).map_err(|source| DatapathError::Program { name, source })?;
                return Ok(AttachOutcome::Replaced);
            }
            Err(error) => {
                // The link is defunct (its interface went away). Start over.
                tracing::warn!(%ifname, hook = name, error = %crate::error::chain(&error), "pinned link is defunct, re-attaching");
                remove_pin(&pin)?;
            }
        }
    }
    let id = prog
        .attach_with_options(ifname, hook.attach_type(), TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(|source| DatapathError::Attach { name, ifname: ifname.to_string(), source })?;
    let link = prog.take_link(id).map_err(|source| DatapathError::Program { name, source })?;
    let fd_link = FdLink::try_from(link).map_err(|source| DatapathError::Link { path: pin.clone(), source })?;
    fd_link.pin(&pin).map_err(|source| DatapathError::Pin { path: pin, source })?;
    Ok(AttachOutcome::Created)
}

/// Removes a link pin; a missing pin is not an error.
pub fn remove_pin(path: &std::path::Path) -> Result<(), DatapathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::Io { op: "removing", path: path.to_path_buf(), source }),
    }
}
