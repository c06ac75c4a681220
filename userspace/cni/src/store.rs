//! Attachment records and their locks, under the config's `dataDir`
//! (default /var/lib/weir/cni):
//! - `<id>_<ifname>.json`: the record (pod namespace and name from
//!   CNI_ARGS, host veth, IPs), written atomically. ADD writes it before it
//!   asks IPAM for an address, so an ADD killed half-way leaves a record
//!   that DEL or GC finds, and the lease is released.
//! - `<id>_<ifname>.lock`: held (flock) by the one operation working on
//!   that attachment, for as long as it works; the kernel drops it when
//!   the process dies.
//! - the data directory itself is locked (flock) only while a lock file is
//!   opened or removed and while GC lists the records, so that a lock file
//!   is never removed under an operation that has just opened it.

use std::{
    fs::{File, OpenOptions, TryLockError},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

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
    /// Empty while ADD waits for IPAM.
    pub ips: Vec<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub network: String,
}

fn io(what: &str, p: &Path, e: std::io::Error) -> CniError {
    CniError::Io(format!("{what} {}: {e}", p.display()))
}

fn stem(id: &str, ifname: &str) -> String {
    format!("{id}_{ifname}")
}

/// The data directory's lock; released on drop.
struct DirLock(#[allow(dead_code)] File);

fn lock_dir(dir: &Path) -> Result<DirLock, CniError> {
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    // flock on the directory itself: no extra file in it.
    let f = File::open(dir).map_err(|e| io("opening", dir, e))?;
    f.lock().map_err(|e| io("locking", dir, e))?;
    Ok(DirLock(f))
}

/// Whether to wait for another operation on the same attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Yes,
    No,
}

/// An attachment this process works on: its lock is held until drop.
#[derive(Debug)]
pub struct Held {
    _lock: File,
    dir: PathBuf,
    stem: String,
}

/// Opens (creating) an attachment's lock file and tries to lock it, with
/// the directory lock held. `Err(file)` when another operation holds it.
fn try_take(_d: &DirLock, dir: &Path, stem: &str) -> Result<Result<Held, File>, CniError> {
    let p = dir.join(format!("{stem}.lock"));
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(|e| io("opening", &p, e))?;
    match f.try_lock() {
        Ok(()) => Ok(Ok(Held { _lock: f, dir: dir.to_path_buf(), stem: stem.to_string() })),
        Err(TryLockError::WouldBlock) => Ok(Err(f)),
        Err(TryLockError::Error(e)) => Err(io("locking", &p, e)),
    }
}

/// Takes the lock of attachment (`id`, `ifname`). With [`Wait::No`],
/// `None` means another operation is working on it.
pub fn take(dir: &Path, id: &str, ifname: &str, wait: Wait) -> Result<Option<Held>, CniError> {
    let stem = stem(id, ifname);
    loop {
        let d = lock_dir(dir)?;
        let busy = match try_take(&d, dir, &stem)? {
            Ok(held) => return Ok(Some(held)),
            Err(busy) => busy,
        };
        drop(d);
        if wait == Wait::No {
            return Ok(None);
        }
        let p = dir.join(format!("{stem}.lock"));
        busy.lock().map_err(|e| io("locking", &p, e))?;
        // The other operation may have finished the attachment off and
        // removed the lock file: then take a fresh one.
        if busy.metadata().map_err(|e| io("reading", &p, e))?.nlink() > 0 {
            return Ok(Some(Held { _lock: busy, dir: dir.to_path_buf(), stem }));
        }
    }
}

impl Held {
    fn record_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem))
    }

    /// Writes the record atomically (temp file + rename).
    pub fn save(&self, r: &Record) -> Result<(), CniError> {
        let p = self.record_path();
        let tmp = p.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(r).map_err(|e| CniError::internal("encoding a record", e.to_string()))?;
        std::fs::write(&tmp, body).map_err(|e| io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| io("renaming", &p, e))
    }

    pub fn load(&self) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(self.record_path()).ok()?).ok()
    }

    /// The attachment is gone: removes its record and lock file.
    pub fn forget(self) -> Result<(), CniError> {
        let _d = lock_dir(&self.dir)?;
        for p in [self.record_path(), self.dir.join(format!("{}.lock", self.stem))] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &p, e)),
            }
        }
        Ok(())
    }
}

/// Every record of `network`, with the attachment's lock taken, for which
/// `stale` says yes; attachments another operation is working on are left
/// out (an ADD in flight is not stale).
pub fn take_stale(dir: &Path, network: &str, stale: impl Fn(&Record) -> bool) -> Result<Vec<(Held, Record)>, CniError> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let d = lock_dir(dir)?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(r) = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok()) else { continue };
        if r.network != network || !stale(&r) {
            continue;
        }
        if let Ok(held) = try_take(&d, dir, &stem(&r.container_id, &r.ifname))? {
            out.push((held, r));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("weir-cni-store-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn record(id: &str) -> Record {
        Record {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/x".into(),
            host_veth: "weir0".into(),
            ips: vec![],
            pod_namespace: None,
            pod_name: None,
            network: "n".into(),
        }
    }

    #[test]
    fn one_operation_per_attachment_and_nothing_left_after_forget() {
        let dir = tempdir();
        let a = take(&dir, "a", "eth0", Wait::No).expect("take").expect("free");
        assert!(take(&dir, "a", "eth0", Wait::No).expect("take").is_none(), "a second operation on the same attachment is refused");
        let b = take(&dir, "b", "eth0", Wait::No).expect("take").expect("another attachment is free");
        a.save(&record("a")).expect("save");
        assert!(take_stale(&dir, "n", |_| true).expect("stale").is_empty(), "GC leaves attachments in flight alone");
        drop(a);
        let stale = take_stale(&dir, "n", |_| true).expect("stale");
        assert_eq!(stale.len(), 1);
        let (held, r) = stale.into_iter().next().expect("one");
        assert_eq!(r.container_id, "a");
        held.forget().expect("forget");
        b.forget().expect("forget");
        let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_waiting_operation_gets_the_attachment_after_the_holder_forgets_it() {
        let dir = tempdir();
        let a = take(&dir, "a", "eth0", Wait::No).expect("take").expect("free");
        a.save(&record("a")).expect("save");
        let d = dir.clone();
        let waiter = std::thread::spawn(move || {
            let h = take(&d, "a", "eth0", Wait::Yes).expect("take").expect("waited");
            let r = h.load();
            h.forget().expect("forget");
            r
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        a.forget().expect("forget");
        assert_eq!(waiter.join().expect("join"), None, "the waiter sees the attachment gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
