//! The XDP fast path on the uplinks (`--xdp`, `weir_ebpf::xdp` in the
//! node object): attached in native (driver) mode through a bpf_link
//! pinned as `links/<ifname>@<ifindex>@xdp`, adopted (program replaced
//! atomically) by the next agent, and removed when an agent runs without
//! `--xdp`. Without it every packet takes tc's `from_net`, which decides
//! the same.

use aya::programs::{links::{FdLink, PinnedLink}, Xdp, XdpMode};

use crate::{attach::{remove_pin, AttachOutcome}, pins::PinLayout, DatapathError};

/// The program's name in the node object.
pub const XDP_PROGRAM: &str = "xdp_from_net";

/// The pin of the XDP link on an uplink.
pub fn pin_path(layout: &PinLayout, ifname: &str, ifindex: u32) -> std::path::PathBuf {
    layout.links_dir().join(format!("{ifname}@{ifindex}@xdp"))
}

/// The uplinks the fast path is pinned on, (ifname, ifindex), from the
/// pins' names.
pub fn pinned_on(layout: &PinLayout) -> Result<Vec<(String, u32)>, DatapathError> {
    let dir = layout.links_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DatapathError::Io { op: "listing", path: dir, source }),
    };
    let mut out: Vec<(String, u32)> = entries.flatten().filter_map(|e| parse_pin_name(e.file_name().to_str()?)).collect();
    out.sort();
    Ok(out)
}

fn parse_pin_name(name: &str) -> Option<(String, u32)> {
    let (rest, hook) = name.rsplit_once('@')?;
    let (ifname, ifindex) = rest.rsplit_once('@')?;
    (hook == "xdp").then(|| Some((ifname.to_string(), ifindex.parse().ok()?)))?
}

pub(crate) fn attach_pinned(prog: &mut Xdp, layout: &PinLayout, ifname: &str, ifindex: u32) -> Result<AttachOutcome, DatapathError> {
    let name = XDP_PROGRAM;
    let pin = pin_path(layout, ifname, ifindex);
    if pin.exists() {
        let old = PinnedLink::from_pin(&pin).map_err(|source| DatapathError::Link { path: pin.clone(), source })?;
        let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(old)).map_err(|source| DatapathError::Link { path: pin.clone(), source })?;
        match prog.attach_to_link(link) {
            Ok(id) => {
                // The pin keeps the link; drop our fd without detaching.
                let _ = prog.take_link(id).map_err(|source| DatapathError::Program { name, source })?;
                return Ok(AttachOutcome::Replaced);
            }
            Err(error) => {
                tracing::warn!(%ifname, error = %crate::error::chain(&error), "pinned XDP link is defunct, re-attaching");
                remove_pin(&pin)?;
            }
        }
    }
    let id = prog.attach_to_if_index(ifindex, XdpMode::Driver).map_err(|source| DatapathError::Attach { name, ifname: ifname.to_string(), source })?;
    let link = prog.take_link(id).map_err(|source| DatapathError::Program { name, source })?;
    let fd_link = FdLink::try_from(link).map_err(|source| DatapathError::Link { path: pin.clone(), source })?;
    fd_link.pin(&pin).map_err(|source| DatapathError::Pin { path: pin, source })?;
    Ok(AttachOutcome::Created)
}

/// Detaches the XDP fast path from an uplink (its pin is the link's only
/// reference); a device without it is left alone. Returns whether one was
/// attached.
pub fn detach(layout: &PinLayout, ifname: &str, ifindex: u32) -> Result<bool, DatapathError> {
    let pin = pin_path(layout, ifname, ifindex);
    let was = pin.exists();
    remove_pin(&pin)?;
    Ok(was)
}

/// Packets the fast path translated: (client → backend, backend → client).
pub fn packets(layout: &PinLayout) -> Result<(u64, u64), DatapathError> {
    use aya::maps::{MapData, PerCpuArray};
    let name = weir_common::maps::XDP_STATS;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(crate::pinned::open(layout, name)?).map_err(|source| DatapathError::Map { name, source })?;
    let sum = |i: u32| -> Result<u64, DatapathError> { Ok(map.get(&i, 0).map_err(|source| DatapathError::Map { name, source })?.iter().sum()) };
    Ok((sum(0)?, sum(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_xdp_pins_name_the_fast_path() {
        assert_eq!(parse_pin_name("eth0@2@xdp"), Some(("eth0".into(), 2)));
        assert_eq!(parse_pin_name("eth0@2@from_net"), None);
        assert_eq!(parse_pin_name("eth0@x@xdp"), None);
        assert_eq!(parse_pin_name("cgroup-connect4"), None);
    }
}
