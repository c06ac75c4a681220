use std::path::PathBuf;

/// Errors from loading, attaching and reading weir's datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{path} is not on a bpf filesystem (mount it with `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs { path: PathBuf },
    #[error("no pins under {path}: is weir-agent running, or has it ever run with --bpffs {path}?")]
    NoPins { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, #[source] source: std::io::Error },
    #[error("loading the {object} object: {source}")]
    Load { object: &'static str, #[source] source: aya::EbpfError },
    #[error("reading the {object} object's kernel logs: {source}")]
    KernelLog { object: &'static str, #[source] source: aya_log::Error },
    #[error("program {name} is missing from the {object} object")]
    MissingProgram { object: &'static str, name: &'static str },
    #[error("program {name}: {source}")]
    Program { name: &'static str, #[source] source: aya::programs::ProgramError },
    #[error("attaching {name} to {ifname}: {source}")]
    Attach { name: &'static str, ifname: String, #[source] source: aya::programs::ProgramError },
    #[error("pinned link {path}: {source}")]
    Link { path: PathBuf, #[source] source: aya::programs::links::LinkError },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, #[source] source: aya::pin::PinError },
    #[error("map {name}: {source}")]
    Map { name: &'static str, #[source] source: aya::maps::MapError },
    #[error("map {name} is full ({capacity} entries): {what} was not written")]
    MapFull { name: &'static str, capacity: u32, what: String },
    #[error("pod link {ifindex} has {count} routed addresses; at most {max} fit in WEIR_LINKS: the link keeps its previous addresses")]
    LinkAddrsFull { ifindex: u32, count: usize, max: usize },
    #[error("parsing the {object} object: {source}")]
    Parse { object: &'static str, #[source] source: aya_obj::ParseError },
    #[error("map {name} of the embedded objects has no layout version in weir_common::abi::LAYOUTS")]
    NoLayout { name: String },
    #[error("pinned map {path}: {source}")]
    PinnedMap { path: PathBuf, #[source] source: aya::maps::MapError },
    #[error("{op} map {name}: {source}")]
    Raw { op: &'static str, name: String, #[source] source: std::io::Error },
    #[error("{}", refusals(.0))]
    Refused(Vec<crate::migrate::inspect::Refusal>),
    #[error(
        "{name} is pinned in layout v{pinned} and this build reads v{expected}, so it was not read (an upgrade in progress: the next \
         agent start migrates it; or use the weir of the agent that wrote it)"
    )]
    OtherLayout { name: &'static str, pinned: u32, expected: u32 },
    #[error("WEIR_LB_TABLE has no free range of {needed} slots for {frontend} ({used} of {capacity} in use)")]
    LbTableFull { frontend: String, needed: u32, used: u32, capacity: u32 },
    #[error("WEIR_LB_TABLE is full and could not grow from {from} to {to} slots: {source}")]
    LbTableGrowth { from: u32, to: u32, #[source] source: Box<DatapathError> },
}

/// Maps an update error to [`DatapathError::MapFull`] when the kernel said
/// the map is full (E2BIG for hashes, ENOSPC for LPM tries), else to [`DatapathError::Map`].
pub(crate) fn update_error(name: &'static str, capacity: u32, what: impl FnOnce() -> String, source: aya::maps::MapError) -> DatapathError {
    if let aya::maps::MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) = &source {
        if matches!(io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC)) {
            return DatapathError::MapFull { name, capacity, what: what() };
        }
    }
    DatapathError::Map { name, source }
}

/// Whether a map operation failed because the key was not there. aya
/// reports a lookup's miss as [`aya::maps::MapError::KeyNotFound`] but a
/// delete's as the syscall's ENOENT, so both are checked.
pub(crate) fn is_missing(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// A delete's result, with "the key was not there" counted as done: the
/// entry is gone either way (the datapath may never have created it, as
/// with an interface's counters before its first packet).
pub(crate) fn deleted(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(e) if is_missing(&e) => Ok(()),
        r => r,
    }
}

impl DatapathError {
    /// A short, stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotBpffs { .. } => "not_bpffs",
            Self::NoPins { .. } => "no_pins",
            Self::Io { .. } => "io",
            Self::Load { .. } => "load",
            Self::KernelLog { .. } => "kernel_log",
            Self::MissingProgram { .. } => "missing_program",
            Self::Program { .. } => "program",
            Self::Attach { .. } => "attach",
            Self::Link { .. } => "link",
            Self::Pin { .. } => "pin",
            Self::Map { .. } => "map",
            Self::MapFull { .. } => "map_full",
            Self::LbTableFull { .. } => "lb_table_full",
            Self::LbTableGrowth { .. } => "lb_table_growth",
            Self::LinkAddrsFull { .. } => "link_addrs_full",
            Self::Parse { .. } => "parse",
            Self::NoLayout { .. } => "no_layout",
            Self::PinnedMap { .. } => "pinned_map",
            Self::Raw { .. } => "raw",
            Self::Refused(_) => "layout_refused",
            Self::OtherLayout { .. } => "other_layout",
        }
    }
}

/// Formats an error with all its sources, `a: b: c`, for logs.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

fn refusals(r: &[crate::migrate::inspect::Refusal]) -> String {
    r.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use aya::{maps::MapError, sys::SyscallError};

    use super::deleted;

    fn syscall(errno: i32) -> MapError {
        MapError::SyscallError(SyscallError { call: "bpf_map_delete_elem", io_error: std::io::Error::from_raw_os_error(errno) })
    }

    #[test]
    fn a_delete_of_a_key_that_is_not_there_is_done() {
        // What aya 0.14 returns for a delete that finds nothing.
        assert!(deleted(Err(syscall(libc::ENOENT))).is_ok());
        assert!(deleted(Err(MapError::KeyNotFound)).is_ok());
        assert!(deleted(Ok(())).is_ok());
    }

    #[test]
    fn a_delete_the_kernel_refused_is_still_an_error() {
        assert!(matches!(deleted(Err(syscall(libc::EPERM))), Err(MapError::SyscallError(_))));
        assert!(deleted(Err(syscall(libc::EINVAL))).is_err());
    }
}
