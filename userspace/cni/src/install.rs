//! Installing the plugin on a node: the binary into the CNI bin dir and
//! `05-weir.conflist` into the CNI conf dir, both atomically.

use std::path::{Path, PathBuf};

use crate::CniError;

pub const CONFLIST_NAME: &str = "05-weir.conflist";

/// The conflist weir installs: weir-cni with host-local IPAM for
/// `pod_cidrs` (one range set per CIDR: a dual-stack pod gets an address
/// of each family), registering pods with the agent listening on
/// `to.agent_socket` (fail closed unless `to.fail_open`).
pub fn conflist(to: &Install<'_>) -> String {
    let mut agent = serde_json::json!({"socket": to.agent_socket.display().to_string()});
    if to.fail_open {
        agent["failOpen"] = true.into();
    }
    let ranges: Vec<serde_json::Value> = to.pod_cidrs.iter().map(|c| serde_json::json!([{"subnet": c}])).collect();
    let mut plugin = serde_json::json!({
        "type": "weir-cni",
        "ipam": {"type": "host-local", "ranges": ranges, "dataDir": "/var/lib/cni/networks"},
        "agent": agent,
    });
    let mtu = to.mtu;
    if let (Some(m), Some(o)) = (mtu, plugin.as_object_mut()) {
        o.insert("mtu".into(), m.into());
    }
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weir",
        "plugins": [plugin],
    }))
    .unwrap_or_default()
}

fn atomic_write(dst: &Path, bytes: &[u8], mode: u32) -> Result<(), CniError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = dst.parent().ok_or_else(|| CniError::Io(format!("{} has no parent", dst.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| CniError::Io(format!("creating {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".{}.tmp", dst.file_name().and_then(|n| n.to_str()).unwrap_or("weir")));
    std::fs::write(&tmp, bytes).map_err(|e| CniError::Io(format!("writing {}: {e}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(|e| CniError::Io(format!("chmod {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, dst).map_err(|e| CniError::Io(format!("renaming to {}: {e}", dst.display())))
}

/// Where the conflist goes, and what it says.
pub struct Install<'a> {
    pub bin_dir: &'a Path,
    pub conf_dir: &'a Path,
    /// One CIDR per address family.
    pub pod_cidrs: &'a [String],
    pub mtu: Option<u32>,
    pub agent_socket: &'a Path,
    pub fail_open: bool,
}

/// Copies `plugin_binary` to `<bin_dir>/weir-cni` and writes the conflist.
pub fn install(plugin_binary: &Path, to: &Install<'_>) -> Result<Vec<PathBuf>, CniError> {
    let (bin_dir, conf_dir) = (to.bin_dir, to.conf_dir);
    let bin = std::fs::read(plugin_binary).map_err(|e| CniError::Io(format!("reading {}: {e}", plugin_binary.display())))?;
    let bin_dst = bin_dir.join("weir-cni");
    atomic_write(&bin_dst, &bin, 0o755)?;
    let conf_dst = conf_dir.join(CONFLIST_NAME);
    atomic_write(&conf_dst, conflist(to).as_bytes(), 0o644)?;
    Ok(vec![bin_dst, conf_dst])
}

/// Removes what [`install`] wrote; missing files are fine.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<(), CniError> {
    for p in [bin_dir.join("weir-cni"), conf_dir.join(CONFLIST_NAME)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CniError::Io(format!("removing {}: {e}", p.display()))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_conflist_has_one_range_set_per_family() {
        let cidrs = ["10.244.1.0/24".to_string(), "fd00:10:244:1::/64".to_string()];
        let to = Install { bin_dir: Path::new("/b"), conf_dir: Path::new("/c"), pod_cidrs: &cidrs, mtu: None, agent_socket: Path::new("/run/weir/agent.sock"), fail_open: false };
        let v: serde_json::Value = serde_json::from_str(&conflist(&to)).expect("json");
        assert_eq!(v["plugins"][0]["ipam"]["ranges"], serde_json::json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]));
    }
}
