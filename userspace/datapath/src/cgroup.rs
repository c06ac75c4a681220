//! The socket object on the cgroup hierarchy: its programs load over the
//! pinned maps and attach to `--cgroup-root` through links pinned under
//! the bpffs (`links/cgroup-<program>`); a cgroup link always joins the
//! cgroup's program list (other programs, and other agents' on the same
//! kernel, stay attached).
//!
//! A restarted or upgraded agent attaches its new programs first, then
//! replaces the old pin with the new link (a rename on the bpffs), which
//! detaches the old program: at every moment at least one runs. Links of
//! programs an older agent had and this build has not
//! ([`RETIRED_PROGRAMS`]) are removed last. Two
//! running at once is harmless: the second sees a backend address, which
//! is no frontend.

use std::{fs::File, path::{Path, PathBuf}};

use aya::{
    programs::{links::FdLink, CgroupAttachMode, Program},
    Ebpf,
};

use crate::{loader::{load_object, LoadOptions}, objects::SOCK_OBJECT, pins::PinLayout, DatapathError};

/// The socket object's programs: the sock_addr ones for IPv4 and IPv6
/// sockets, and `sock_release`, which deletes a released socket's reverse
/// entry.
pub const SOCK_PROGRAMS: [&str; 9] = ["connect4", "sendmsg4", "recvmsg4", "getpeername4", "connect6", "sendmsg6", "recvmsg6", "getpeername6", "sock_release"];

/// Programs older agents attached that this one has not: their links are
/// removed once this build's programs are attached. `tcp_state` (sock_ops,
/// 2026-12-06) deleted a TCP socket's reverse entry when its connect
/// failed; a TCP entry is now keyed by the socket's cookie alone, which
/// `sock_release` names whatever became of the connect.
pub const RETIRED_PROGRAMS: [&str; 1] = ["tcp_state"];

/// The loaded socket object.
pub struct SockDatapath {
    ebpf: Ebpf,
    layout: PinLayout,
}

impl SockDatapath {
    /// Loads the socket object over the pinned maps.
    pub fn load(layout: &PinLayout, opts: &LoadOptions) -> Result<Self, DatapathError> {
        layout.ensure_dirs()?;
        let mut ebpf = load_object(layout, opts, SOCK_OBJECT, "sock")?;
        for name in SOCK_PROGRAMS {
            load(&mut ebpf, name)?;
        }
        Ok(Self { ebpf, layout: layout.clone() })
    }

    /// The reader of the object's kernel debug logs (see
    /// [`crate::PodDatapath::kernel_log`]).
    pub fn kernel_log<T: log::Log>(&mut self, sink: T) -> Result<aya_log::EbpfLogger<T>, DatapathError> {
        crate::kernel_log::take(&mut self.ebpf, "sock", sink)
    }

    /// Attaches every program to the cgroup at `root`.
    pub fn attach(&mut self, root: &Path) -> Result<(), DatapathError> {
        let cgroup = File::open(root).map_err(|source| DatapathError::Io { op: "opening", path: root.to_path_buf(), source })?;
        for name in SOCK_PROGRAMS {
            let pin = pin_path(&self.layout, name);
            let fd_link = attach_one(&mut self.ebpf, name, &cgroup, root, &pin)?;
            // (bpffs refuses names with a dot.)
            let fresh = self.layout.links_dir().join(format!("cgroup-{name}-new"));
            crate::attach::remove_pin(&fresh)?;
            fd_link.pin(&fresh).map_err(|source| DatapathError::Pin { path: fresh.clone(), source })?;
            // The rename drops the old link's last reference: its program detaches.
            std::fs::rename(&fresh, &pin).map_err(|source| DatapathError::Io { op: "renaming", path: fresh.clone(), source })?;
        }
        remove_retired(&self.layout)
    }
}

/// Removes the links of [`RETIRED_PROGRAMS`] an older agent pinned:
/// removing a link's last reference detaches its program (and frees the
/// maps it held). [`SockDatapath::attach`] does it once this build's
/// programs are attached; an agent that attaches none (no cgroup v2
/// hierarchy) calls it itself.
pub fn remove_retired(layout: &PinLayout) -> Result<(), DatapathError> {
    for name in RETIRED_PROGRAMS {
        crate::attach::remove_pin(&pin_path(layout, name))?;
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Program, DatapathError> {
    ebpf.program_mut(name).ok_or(DatapathError::MissingProgram { object: "sock", name })
}

/// Loads program `name` of the socket object (sock_addr or sock).
fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), DatapathError> {
    let loaded = match program(ebpf, name)? {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::SockOps(p) => p.load(),
        _ => return Err(DatapathError::MissingProgram { object: "sock", name }),
    };
    loaded.map_err(|source| DatapathError::Program { name, source })
}

/// Attaches program `name` to `cgroup` (the directory `root`) through a
/// bpf_link, returned unpinned (its pin will be `pin`).
fn attach_one(ebpf: &mut Ebpf, name: &'static str, cgroup: &File, root: &Path, pin: &Path) -> Result<FdLink, DatapathError> {
    let attach_error = |source| DatapathError::Attach { name, ifname: root.display().to_string(), source };
    let link_error = |source| DatapathError::Link { path: pin.to_path_buf(), source };
    // A cgroup bpf_link takes no attach flags (the kernel rejects any with
    // EINVAL) and always joins the cgroup's program list as multi-attach
    // does; `Single` is aya's "no flags".
    match program(ebpf, name)? {
        Program::CgroupSockAddr(p) => {
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(attach_error)?;
            let link = p.take_link(id).map_err(|source| DatapathError::Program { name, source })?;
            FdLink::try_from(link).map_err(link_error)
        }
        Program::CgroupSock(p) => {
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(attach_error)?;
            let link = p.take_link(id).map_err(|source| DatapathError::Program { name, source })?;
            FdLink::try_from(link).map_err(link_error)
        }
        Program::SockOps(p) => {
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(attach_error)?;
            let link = p.take_link(id).map_err(|source| DatapathError::Program { name, source })?;
            FdLink::try_from(link).map_err(link_error)
        }
        _ => Err(DatapathError::MissingProgram { object: "sock", name }),
    }
}

/// Where the link of program `name` is pinned.
pub fn pin_path(layout: &PinLayout, name: &str) -> PathBuf {
    layout.links_dir().join(format!("cgroup-{name}"))
}

fn cgroup2_mounts() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// The cgroup v2 hierarchy of this machine: `/sys/fs/cgroup` when it is
/// cgroup2 (unified layout), else the cgroup2 mount of a hybrid layout
/// (`/sys/fs/cgroup/unified`), as found in /proc/self/mountinfo.
pub fn default_cgroup_root() -> Option<PathBuf> {
    resolve_cgroup_root(Path::new("/sys/fs/cgroup")).or_else(|| cgroup2_mounts().into_iter().next())
}

/// `path` if it is a cgroup2 mount, else its `unified` child if that is
/// one (a host's /sys/fs/cgroup mounted into the agent's container, on a
/// unified or a hybrid layout alike), else `path` if it is a cgroup inside
/// a cgroup2 mount (the programs then serve only the processes under it).
pub fn resolve_cgroup_root(path: &Path) -> Option<PathBuf> {
    let mounts = cgroup2_mounts();
    [path.to_path_buf(), path.join("unified")]
        .into_iter()
        .find(|p| mounts.contains(p))
        .or_else(|| (mounts.iter().any(|m| path.starts_with(m)) && path.join("cgroup.procs").is_file()).then(|| path.to_path_buf()))
}

/// `WEIR_SOCK_REVNAT` (or `WEIR_SOCK_REVNAT_POD`), read: the frontend a
/// socket the programs pointed at a backend asked for.
pub struct SockRevNat {
    map: aya::maps::HashMap<aya::maps::MapData, weir_common::lb::SockRevKey, weir_common::lb::SockRevValue>,
}

impl SockRevNat {
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        Ok(Self { map: crate::pinned::hash(layout, weir_common::maps::SOCK_REVNAT)? })
    }

    /// How many sockets the table holds entries for.
    pub fn count(&self) -> usize {
        self.map.keys().filter_map(Result::ok).count()
    }

    /// The pods' table (`WEIR_SOCK_REVNAT_POD`), of the same layout.
    pub fn open_pods(layout: &PinLayout) -> Result<Self, DatapathError> {
        Ok(Self { map: crate::pinned::hash(layout, weir_common::maps::SOCK_REVNAT_POD)? })
    }

    /// The frontend (address, port in network order) that socket `cookie`
    /// asked for before it was pointed at `backend:port` (network order),
    /// if the programs translated it: what getpeername reports.
    pub fn frontend_of(&self, cookie: u64, backend: weir_common::addr::Addr, port: u16, proto: u8) -> Option<(weir_common::addr::Addr, u16)> {
        self.entry(cookie, backend, port, proto)?.frontend_for(&backend, port)
    }

    /// Socket `cookie`'s entry as the programs look it up for a peer
    /// `backend:port` over `proto` (a TCP socket's by its cookie alone,
    /// whichever backend it names).
    pub fn entry(&self, cookie: u64, backend: weir_common::addr::Addr, port: u16, proto: u8) -> Option<weir_common::lb::SockRevValue> {
        self.map.get(&weir_common::lb::SockRevKey::of(cookie, proto, backend, port), 0).ok()
    }
}
