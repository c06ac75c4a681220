//! Standalone mode: Kubernetes objects from the `*.yaml`, `*.yml` and
//! `*.json` files of one directory, watched with notify.
//!
//! - Each file is re-read on its own; only its objects change.
//! - A removed object, or a removed file, deletes its objects.
//! - Editors that save in place are debounced (changes settle for 50 ms
//!   before a file is read); editors that write a temp file and rename are
//!   seen as the rename. A file that does not parse as a whole (half
//!   written, YAML syntax error, not UTF-8) keeps its previous objects; an
//!   object that fails validation keeps its previous version.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use weir_model::{
    load::{is_object_file, parse_file},
    Change, Object, ObjectKey, Warning,
};

use super::{SourceError, SourceEvent, Sender};

const DEBOUNCE: Duration = Duration::from_millis(50);

/// Which objects each file holds, and which file owns each object. Only
/// keys are kept: the objects themselves live once, in the cluster state,
/// which ignores upserts of unchanged objects.
#[derive(Default)]
pub struct DirState {
    files: HashMap<PathBuf, BTreeSet<ObjectKey>>,
    /// The owning file's path, one shared copy per file.
    owner: HashMap<ObjectKey, Arc<Path>>,
}

impl DirState {
    /// Reads every object file of `dir`.
    #[cfg(test)]
    pub fn load_all(&mut self, dir: &Path) -> (Vec<Change>, Vec<Warning>) {
        let (mut changes, mut warnings) = (Vec::new(), Vec::new());
        for p in list_object_files(dir) {
            let (c, w) = self.reload(&p);
            changes.extend(c);
            warnings.extend(w);
        }
        (changes, warnings)
    }

    /// The shared copy of `path` its objects already point at, or a new one.
    fn owner_path(&self, path: &Path) -> Arc<Path> {
        self.files.get(path).and_then(|keys| keys.iter().find_map(|k| self.owner.get(k).filter(|p| &***p == path).cloned())).unwrap_or_else(|| Arc::from(path))
    }

    /// Re-reads one file and returns what changed.
    pub fn reload(&mut self, path: &Path) -> (Vec<Change>, Vec<Warning>) {
        let mut warnings = Vec::new();
        let previous = self.files.get(path).cloned().unwrap_or_default();
        let mut rejected_kept: BTreeSet<ObjectKey> = BTreeSet::new();
        let current: BTreeMap<ObjectKey, Object> = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                warnings.push(Warning { file: Some(path.to_path_buf()), object: None, field: None, message: format!("cannot read: {e}") });
                return (Vec::new(), warnings);
            }
            Ok(bytes) => match parse_file(path, &bytes) {
                Err(w) => {
                    warnings.push(w);
                    return (Vec::new(), warnings); // keep what the file held
                }
                Ok(loaded) => {
                    warnings.extend(loaded.warnings);
                    let mut m: BTreeMap<ObjectKey, Object> = BTreeMap::new();
                    for o in loaded.objects {
                        let k = o.key();
                        if m.contains_key(&k) {
                            warnings.push(Warning {
                                file: Some(path.to_path_buf()),
                                object: Some(k.to_string()),
                                field: None,
                                message: "defined twice in this file; the last definition wins".into(),
                            });
                        }
                        m.insert(k, o);
                    }
                    // Objects that failed to validate keep their previous
                    // version: they stay listed, and no change is sent.
                    rejected_kept = loaded.rejected.into_iter().filter(|k| previous.contains(k)).collect();
                    m
                }
            },
        };
        let mut changes = Vec::new();
        let shared_path: Arc<Path> = self.owner_path(path);
        let mut keys: BTreeSet<ObjectKey> = rejected_kept;
        for (k, o) in current {
            if let Some(other) = self.owner.get(&k).filter(|p| &***p != path) {
                warnings.push(Warning {
                    file: Some(path.to_path_buf()),
                    object: Some(k.to_string()),
                    field: None,
                    message: format!("also defined in {}; this file's definition wins", other.display()),
                });
            }
            self.owner.insert(k.clone(), shared_path.clone());
            keys.insert(k);
            changes.push(Change::Upsert(o));
        }
        for k in previous.iter().filter(|k| !keys.contains(*k)) {
            // Only the owning file's removal deletes the object.
            if self.owner.get(k).map(|p| &**p) == Some(path) {
                self.owner.remove(k);
                changes.push(Change::Delete(k.clone()));
            }
        }
        if keys.is_empty() {
            self.files.remove(path);
        } else {
            self.files.insert(path.to_path_buf(), keys);
        }
        (changes, warnings)
    }
}

/// The object files of `dir`, sorted.
fn list_object_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).filter(|p| is_object_file(p)).collect(),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot list the source directory");
            Vec::new()
        }
    };
    paths.sort();
    paths
}

/// Starts watching `dir` and sends its objects, then every change.
pub fn spawn(dir: PathBuf, tx: Sender) -> Result<(), SourceError> {
    if !dir.is_dir() {
        return Err(SourceError::NotADirectory(dir));
    }
    let (ntx, nrx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        // Our own reads raise access events; only content and name changes matter.
        Ok(ev) if !matches!(ev.kind, notify::EventKind::Access(_)) => {
            for p in ev.paths {
                let _ = ntx.send(p);
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "file watch error"),
    })
    .map_err(|source| SourceError::Watch { path: dir.clone(), source })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|source| SourceError::Watch { path: dir.clone(), source })?;
    tokio::spawn(run(dir, tx, nrx, watcher));
    Ok(())
}

async fn run(dir: PathBuf, tx: Sender, mut rx: mpsc::UnboundedReceiver<PathBuf>, _watcher: notify::RecommendedWatcher) {
    let mut state = DirState::default();
    // File by file, so the typed objects of one file at a time are in flight.
    for path in list_object_files(&dir) {
        let at = Instant::now();
        let (changes, warnings) = state.reload(&path);
        if tx.send(SourceEvent::Changes { changes, warnings, at }).await.is_err() {
            return;
        }
    }
    if tx.send(SourceEvent::Synced).await.is_err() {
        return;
    }
    while let Some(first) = rx.recv().await {
        let mut paths = BTreeSet::from([first]);
        // Debounce: wait until changes settle.
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(p)) => {
                    paths.insert(p);
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        // Programming latency is measured from here: the debounce above is
        // a deliberate wait for writers to finish, not processing.
        let at = Instant::now();
        let (mut changes, mut warnings) = (Vec::new(), Vec::new());
        for p in paths.iter().filter(|p| is_object_file(p)) {
            let (c, w) = state.reload(p);
            changes.extend(c);
            warnings.extend(w);
        }
        if (!changes.is_empty() || !warnings.is_empty()) && tx.send(SourceEvent::Changes { changes, warnings, at }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n";

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("weir-dir-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    }

    #[test]
    fn a_removed_object_and_a_removed_file_delete_their_objects() {
        let d = tmpdir();
        let f = d.join("a.yaml");
        std::fs::write(&f, format!("{SVC}---\n{}", SVC.replace("web", "api").replace("10.96.0.10", "10.96.0.11"))).expect("write");
        let mut st = DirState::default();
        let (c, w) = st.load_all(&d);
        assert_eq!((c.len(), w.len()), (2, 0));
        let deletes = |c: &[Change]| -> Vec<String> {
            c.iter().filter_map(|c| match c { Change::Delete(k) => Some(k.name.clone()), _ => None }).collect()
        };
        std::fs::write(&f, SVC).expect("write");
        let (c, _) = st.reload(&f);
        assert_eq!(deletes(&c), ["api"], "{c:?}");
        std::fs::remove_file(&f).expect("rm");
        let (c, _) = st.reload(&f);
        assert_eq!(deletes(&c), ["web"], "{c:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_half_written_file_keeps_its_objects_and_a_bad_edit_keeps_the_old_version() {
        let d = tmpdir();
        let f = d.join("a.yaml");
        std::fs::write(&f, SVC).expect("write");
        let mut st = DirState::default();
        st.load_all(&d);
        std::fs::write(&f, &SVC[..40]).expect("truncate");
        let (c, w) = st.reload(&f);
        assert!(c.is_empty(), "no change while the file does not parse: {c:?}");
        assert_eq!(w.len(), 1, "{w:?}");
        std::fs::write(&f, SVC.replace("port: 80", "port: 0")).expect("bad edit");
        let (c, w) = st.reload(&f);
        assert!(c.is_empty(), "the previous version is kept: {c:?}");
        assert!(w[0].to_string().contains("spec.ports[0].port"), "{}", w[0]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
