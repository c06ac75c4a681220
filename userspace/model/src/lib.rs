//! weir's model of the cluster: the Kubernetes objects weir reads, checked
//! field by field, kept in a [`state::ClusterState`], and translated — by a
//! pure function — into desired datapath state (`weir_desired`).
//!
//! Both sources (the Kubernetes API and a directory of YAML files) feed the
//! same [`state::Change`]s; nothing downstream knows which one is in use.

pub mod health;
pub mod load;
pub mod node;
pub mod nodeport;
pub mod object;
pub mod pod_object;
pub mod policy;
pub mod service;
pub mod slice;
pub mod state;
pub mod translate;
pub mod validate;
pub mod warning;

pub use object::{Kind, Object, ObjectKey};
pub use pod_object::PodObject;
pub use state::{Change, ClusterState};
pub use warning::Warning;
