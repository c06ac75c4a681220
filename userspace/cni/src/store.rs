//! Attachment records: one JSON file per (container ID, ifname) under the
//! config's `dataDir` (default /var/lib/weir/cni), with the pod's
//! namespace and name from CNI_ARGS, for the agent to read and for GC.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CniError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub host_veth: String,
    pub ips: Vec<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub network: String,
}

fn path(dir: &Path, id: &str, ifname: &str) -> PathBuf {
    dir.join(format!("{id}_{ifname}.json"))
}

/// Writes a record atomically (temp file + rename).
pub fn save(dir: &Path, r: &Record) -> Result<(), CniError> {
    std::fs::create_dir_all(dir).map_err(|e| CniError::Io(format!("creating {}: {e}", dir.display())))?;
    let p = path(dir, &r.container_id, &r.ifname);
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(r).map_err(|e| CniError::internal("encoding a record", e.to_string()))?;
    std::fs::write(&tmp, body).map_err(|e| CniError::Io(format!("writing {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &p).map_err(|e| CniError::Io(format!("renaming {}: {e}", p.display())))
}

pub fn load(dir: &Path, id: &str, ifname: &str) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(path(dir, id, ifname)).ok()?).ok()
}

pub fn remove(dir: &Path, id: &str, ifname: &str) -> Result<(), CniError> {
    match std::fs::remove_file(path(dir, id, ifname)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::Io(format!("removing a record: {e}"))),
    }
}

/// Every record of `network`.
pub fn all(dir: &Path, network: &str) -> Vec<Record> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice::<Record>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|r| r.network == network)
        .collect()
}
