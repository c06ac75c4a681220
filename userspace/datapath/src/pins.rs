//! Where everything lives under `--bpffs`:
//!
//! ```text
//! <bpffs>/maps/<MAP_NAME>                    every map, pinned by name
//! <bpffs>/maps/WEIR_ABI                      each map's layout version (by map id)
//! <bpffs>/maps-next/<MAP_NAME>               a rebuilt map during a migration
//! <bpffs>/links/<ifname>@<ifindex>@<hook>    one TCX link per pod interface and hook
//! ```
//!
//! Links carry the ifindex as well as the name, so a pin can never be
//! mistaken for a new interface that reuses an old name. bpffs refuses
//! names with dots, hence `@` as the separator.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{attach::Hook, DatapathError};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin layout below one `--bpffs` directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

/// A link pin found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub ifname: String,
    pub ifindex: u32,
    pub hook: Hook,
    pub path: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// Where a migration stages rebuilt maps until they replace the old
    /// ones (see [`crate::migrate`]).
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("maps-next")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn link(&self, ifname: &str, ifindex: u32, hook: Hook) -> PathBuf {
        self.links_dir().join(format!("{ifname}@{ifindex}@{}", hook.as_str()))
    }

    /// Creates the directories, after checking that the root's parent is a bpffs.
    pub fn ensure_dirs(&self) -> Result<(), DatapathError> {
        for dir in [self.maps_dir(), self.links_dir()] {
            fs::create_dir_all(&dir)
                .map_err(|source| DatapathError::Io { op: "creating", path: dir.clone(), source })?;
        }
        check_bpffs(&self.root)
    }

    /// Fails with [`DatapathError::NoPins`] when nothing was ever pinned here.
    pub fn require_existing(&self) -> Result<(), DatapathError> {
        if !self.maps_dir().is_dir() {
            return Err(DatapathError::NoPins { path: self.root.clone() });
        }
        Ok(())
    }

    /// Every link pin on disk. Unparseable names are ignored.
    pub fn link_pins(&self) -> Result<Vec<LinkPin>, DatapathError> {
        let dir = self.links_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(DatapathError::Io { op: "listing", path: dir, source }),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(pin) = name.to_str().and_then(parse_link_pin) {
                out.push(LinkPin { path: entry.path(), ..pin });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Removes every pin and the directory itself. Unpinning a link whose
    /// only reference was the pin detaches its program.
    pub fn remove_all(&self) -> Result<(), DatapathError> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DatapathError::Io { op: "removing", path: self.root.clone(), source }),
        }
    }
}

fn parse_link_pin(name: &str) -> Option<LinkPin> {
    let (rest, hook) = name.rsplit_once('@')?;
    let (ifname, ifindex) = rest.rsplit_once('@')?;
    Some(LinkPin {
        ifname: ifname.to_string(),
        ifindex: ifindex.parse().ok()?,
        hook: Hook::parse(hook)?,
        path: PathBuf::new(),
    })
}

fn check_bpffs(path: &Path) -> Result<(), DatapathError> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| DatapathError::NotBpffs {
        path: path.to_path_buf(),
    })?;
    // SAFETY: statfs writes into the zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(DatapathError::Io {
            op: "statfs",
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(DatapathError::NotBpffs { path: path.to_path_buf() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        let l = PinLayout::new("/sys/fs/bpf/weir");
        let p = l.link("weir0123456789a", 42, Hook::ToPod);
        assert_eq!(p, PathBuf::from("/sys/fs/bpf/weir/links/weir0123456789a@42@to_pod"));
        let parsed = parse_link_pin("weir0123456789a@42@to_pod").expect("parses");
        assert_eq!(parsed.ifname, "weir0123456789a");
        assert_eq!(parsed.ifindex, 42);
        assert_eq!(parsed.hook, Hook::ToPod);
    }

    #[test]
    fn foreign_names_are_ignored() {
        assert!(parse_link_pin("README").is_none());
        assert!(parse_link_pin("x@y@from_pod").is_none());
        assert!(parse_link_pin("x@1@sideways").is_none());
    }
}
