//! Desired datapath state, in plain types: what the pure translation
//! produces from cluster objects and what `weir-datapath` programs. It
//! depends on neither Kubernetes types nor aya, so both sides stay small.

pub mod dump;
pub mod policy;
pub mod spec;

pub use spec::{eligible, Endpoint, Frontend, Kind, Masquerade, Protocol, Scope, Selection, ServiceSpec};
