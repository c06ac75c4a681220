//! Where cluster objects come from: the Kubernetes API (kube-rs watchers)
//! or a directory of YAML/JSON files. Both produce the same
//! [`SourceEvent`]s; nothing downstream knows which one is in use. The
//! agent runs a source for as long as it lives; `weir diff` runs one until
//! it is `Synced`, so both read desired state with the same code.

pub mod dir;
pub mod kube;
pub mod lookup;
pub mod spec;

use std::time::Instant;

use tokio::sync::mpsc;
use weir_model::{Change, Warning};

pub use lookup::{LookupError, PodLookup};
pub use spec::SourceSpec;

#[derive(Debug)]
pub enum SourceEvent {
    /// Object changes, and the input problems found on the way.
    Changes { changes: Vec<Change>, warnings: Vec<Warning>, at: Instant },
    /// Everything that existed at start has been delivered.
    Synced,
    /// A kind's watch failed (`failing: true`, on every error), or
    /// delivered again after failing.
    WatchHealth { kind: weir_model::Kind, failing: bool },
}

pub type Sender = mpsc::Sender<SourceEvent>;

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("--source dir:{}: not a directory", .0.display())]
    NotADirectory(std::path::PathBuf),
    #[error("watching {}: {source}", path.display())]
    Watch { path: std::path::PathBuf, #[source] source: notify::Error },
}

/// How the kube source reads the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KubeOptions {
    /// Whether the initial state of each kind comes as a stream of watch
    /// events (`sendInitialEvents`, Kubernetes' WatchList) instead of one
    /// list: objects are parsed one at a time, never a whole list body at
    /// once.
    pub streaming_lists: StreamingLists,
}

/// When the kube source asks for streaming lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamingLists {
    /// Streaming lists, and lists for a kind whose streaming watch the API
    /// server refuses (a 4xx answer: the WatchList feature is off, or the
    /// server predates it), as client-go's reflector falls back.
    #[default]
    Auto,
    /// Streaming lists only (a refusal is retried with backoff).
    Always,
    /// Lists only.
    Never,
}

impl std::str::FromStr for StreamingLists {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" | "true" => Ok(Self::Always),
            "never" | "false" => Ok(Self::Never),
            other => Err(format!("{other:?}: expected auto, always or never")),
        }
    }
}

/// Starts the source (on the current tokio runtime); it runs until the
/// receiver is dropped. Returns what reads single Pods from it.
pub fn spawn(spec: &SourceSpec, tx: Sender) -> Result<PodLookup, SourceError> {
    spawn_with(spec, tx, KubeOptions::default())
}

/// [`spawn`], with the kube source's options.
pub fn spawn_with(spec: &SourceSpec, tx: Sender, opts: KubeOptions) -> Result<PodLookup, SourceError> {
    match spec {
        SourceSpec::Dir(dir) => dir::spawn(dir.clone(), tx).map(|()| PodLookup::none()),
        SourceSpec::Kube => Ok(kube::spawn(tx, opts)),
    }
}
