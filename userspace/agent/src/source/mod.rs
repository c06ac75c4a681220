//! Where cluster objects come from. Both sources produce the same
//! [`SourceEvent`]s; nothing downstream knows which one is in use.

pub mod dir;
pub mod kube;
pub mod spec;

use std::time::Instant;

use tokio::sync::mpsc;
use weir_model::{Change, Warning};

pub use spec::SourceSpec;

#[derive(Debug)]
pub enum SourceEvent {
    /// Object changes, and the input problems found on the way.
    Changes { changes: Vec<Change>, warnings: Vec<Warning>, at: Instant },
    /// Everything that existed at start has been delivered.
    Synced,
}

pub type Sender = mpsc::Sender<SourceEvent>;

/// Starts the source; it runs until the receiver is dropped.
pub fn spawn(spec: &SourceSpec, tx: Sender) -> anyhow::Result<()> {
    match spec {
        SourceSpec::Dir(dir) => dir::spawn(dir.clone(), tx),
        SourceSpec::Kube => kube::spawn(tx),
    }
}
