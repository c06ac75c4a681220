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
    hash::{BuildHasher as _, RandomState},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use hashbrown::HashTable;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use weir_model::{
    load::{is_object_file, parse_file},
    Change, Object, ObjectKey, Warning,
};

use super::{SourceError, SourceEvent, Sender};

const DEBOUNCE: Duration = Duration::from_millis(50);

/// A file's slot in [`DirState::paths`].
type FileId = u32;

/// An object no file owns: its owner dropped it while another file still
/// lists it (that file's next read takes it over).
const NO_OWNER: FileId = FileId::MAX;

/// One object key that some file lists.
struct Listed {
    key: ObjectKey,
    /// The file whose definition is in force (the last read that listed
    /// it), or [`NO_OWNER`].
    owner: FileId,
    /// How many files list it.
    listers: u32,
}

/// Which objects each file holds, and which file owns each object. Only
/// keys are kept (the objects themselves live once, in the cluster state,
/// which ignores upserts of unchanged objects), and each key only once:
/// at 130,000 objects a key map per direction cost 34 MB, more than the
/// cluster state's pods.
#[derive(Default)]
pub struct DirState {
    /// Every listed key, once; `None` slots are free for reuse.
    objects: Vec<Option<Listed>>,
    free_objects: Vec<u32>,
    /// `objects` by key.
    index: HashTable<u32>,
    hasher: RandomState,
    /// Each file's id and the objects it lists (sorted indexes into
    /// `objects`).
    files: HashMap<PathBuf, (FileId, Vec<u32>)>,
    /// Each file id's path (for the messages); `None` slots are free.
    paths: Vec<Option<Arc<Path>>>,
    free_paths: Vec<FileId>,
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

    fn listed(&self, i: u32) -> Option<&Listed> {
        self.objects.get(i as usize).and_then(Option::as_ref)
    }

    fn find(&self, key: &ObjectKey) -> Option<u32> {
        self.index.find(self.hasher.hash_one(key), |&i| self.listed(i).is_some_and(|l| l.key == *key)).copied()
    }

    /// The slot of `key`, new (no owner, no listers) if no file lists it.
    fn find_or_insert(&mut self, key: &ObjectKey) -> u32 {
        if let Some(i) = self.find(key) {
            return i;
        }
        let listed = Listed { key: key.clone(), owner: NO_OWNER, listers: 0 };
        let i = match self.free_objects.pop() {
            Some(i) => {
                self.objects[i as usize] = Some(listed);
                i
            }
            None => {
                self.objects.push(Some(listed));
                (self.objects.len() - 1) as u32
            }
        };
        let (objects, hasher) = (&self.objects, &self.hasher);
        self.index.insert_unique(hasher.hash_one(key), i, |&j| objects.get(j as usize).and_then(Option::as_ref).map_or(0, |l| hasher.hash_one(&l.key)));
        i
    }

    /// Frees the slot of a key no file lists any more.
    fn forget(&mut self, i: u32) {
        let Some(listed) = self.objects.get_mut(i as usize).and_then(Option::take) else { return };
        if let Ok(entry) = self.index.find_entry(self.hasher.hash_one(&listed.key), |&j| j == i) {
            entry.remove();
        }
        self.free_objects.push(i);
    }

    /// The id of `path`, new if no file there lists anything.
    fn file_id(&mut self, path: &Path) -> FileId {
        if let Some((id, _)) = self.files.get(path) {
            return *id;
        }
        let shared = Some(Arc::from(path));
        match self.free_paths.pop() {
            Some(id) => {
                self.paths[id as usize] = shared;
                id
            }
            None => {
                self.paths.push(shared);
                (self.paths.len() - 1) as FileId
            }
        }
    }

    /// Re-reads one file and returns what changed.
    pub fn reload(&mut self, path: &Path) -> (Vec<Change>, Vec<Warning>) {
        let mut warnings = Vec::new();
        let previous: Vec<u32> = self.files.get(path).map(|(_, keys)| keys.clone()).unwrap_or_default();
        let was_listed = |i: u32| previous.binary_search(&i).is_ok();
        let mut rejected_kept: Vec<ObjectKey> = Vec::new();
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
                    rejected_kept = loaded.rejected.into_iter().filter(|k| self.find(k).is_some_and(was_listed)).collect();
                    m
                }
            },
        };
        let me = self.file_id(path);
        let mut changes = Vec::new();
        let mut keys: Vec<u32> = rejected_kept.iter().filter_map(|k| self.find(k)).collect();
        for (k, o) in current {
            let i = self.find_or_insert(&k);
            let listed = self.objects[i as usize].as_mut().expect("just found or inserted");
            if listed.owner != me && listed.owner != NO_OWNER {
                let other = self.paths.get(listed.owner as usize).and_then(Option::as_ref).map(|p| p.display().to_string()).unwrap_or_default();
                warnings.push(Warning {
                    file: Some(path.to_path_buf()),
                    object: Some(k.to_string()),
                    field: None,
                    message: format!("also defined in {other}; this file's definition wins"),
                });
            }
            listed.owner = me;
            if !was_listed(i) {
                listed.listers += 1;
            }
            keys.push(i);
            changes.push(Change::Upsert(o));
        }
        keys.sort_unstable();
        keys.dedup();
        for &i in previous.iter().filter(|i| keys.binary_search(i).is_err()) {
            let Some(listed) = self.objects.get_mut(i as usize).and_then(Option::as_mut) else { continue };
            listed.listers = listed.listers.saturating_sub(1);
            // Only the owning file's removal deletes the object.
            if listed.owner == me {
                listed.owner = NO_OWNER;
                changes.push(Change::Delete(listed.key.clone()));
            }
            if listed.listers == 0 {
                self.forget(i);
            }
        }
        if keys.is_empty() {
            self.files.remove(path);
            if let Some(slot) = self.paths.get_mut(me as usize).filter(|p| p.is_some()) {
                *slot = None;
                self.free_paths.push(me);
            }
        } else {
            keys.shrink_to_fit();
            self.files.insert(path.to_path_buf(), (me, keys));
        }
        (changes, warnings)
    }

    /// The keys `path` lists (for the tests).
    #[cfg(test)]
    fn keys_of(&self, path: &Path) -> Vec<ObjectKey> {
        self.files.get(path).map(|(_, keys)| keys.iter().filter_map(|&i| self.listed(i)).map(|l| l.key.clone()).collect()).unwrap_or_default()
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
    fn an_object_in_two_files_belongs_to_the_last_read_and_only_its_removal_deletes_it() {
        let d = tmpdir();
        let (a, b) = (d.join("a.yaml"), d.join("b.yaml"));
        std::fs::write(&a, SVC).expect("write");
        let mut st = DirState::default();
        let (_, w) = st.reload(&a);
        assert!(w.is_empty(), "{w:?}");
        std::fs::write(&b, SVC.replace("10.96.0.10", "10.96.0.20")).expect("write");
        let (c, w) = st.reload(&b);
        assert_eq!(c.len(), 1, "b's definition is sent: {c:?}");
        assert!(w.len() == 1 && w[0].message.contains("also defined in") && w[0].message.contains("a.yaml"), "{w:?}");
        let deletes = |c: &[Change]| c.iter().filter(|c| matches!(c, Change::Delete(_))).count();
        // a drops it: b owns it, nothing is deleted.
        std::fs::write(&a, "").expect("write");
        let (c, _) = st.reload(&a);
        assert_eq!(deletes(&c), 0, "{c:?}");
        assert!(st.keys_of(&a).is_empty());
        // a lists it again (a takes it over), then b drops it: not deleted.
        std::fs::write(&a, SVC).expect("write");
        st.reload(&a);
        std::fs::remove_file(&b).expect("rm");
        let (c, _) = st.reload(&b);
        assert_eq!(deletes(&c), 0, "a owns it: {c:?}");
        // The owner's removal deletes it, and nothing of it is kept.
        std::fs::remove_file(&a).expect("rm");
        let (c, _) = st.reload(&a);
        assert_eq!(deletes(&c), 1, "{c:?}");
        assert!(st.files.is_empty() && st.index.is_empty(), "no key kept");
        assert!(st.objects.iter().all(Option::is_none) && st.paths.iter().all(Option::is_none));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn each_key_is_kept_once_and_slots_are_reused() {
        let d = tmpdir();
        let f = d.join("a.yaml");
        let mut st = DirState::default();
        for round in 0..5 {
            let svcs: Vec<String> = (0..20).map(|i| SVC.replace("name: web", &format!("name: web-{round}-{i}"))).collect();
            std::fs::write(&f, svcs.join("---\n")).expect("write");
            let (c, w) = st.reload(&f);
            assert!(w.is_empty(), "{w:?}");
            assert_eq!(c.iter().filter(|c| matches!(c, Change::Delete(_))).count(), if round == 0 { 0 } else { 20 });
            assert_eq!(st.keys_of(&f).len(), 20);
        }
        assert_eq!(st.index.len(), 20);
        assert!(st.objects.len() <= 40, "{} slots for 20 keys", st.objects.len());
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
