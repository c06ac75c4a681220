//! NetworkPolicy and weir's policy CRDs: selectors, compilation with the API's semantics,
//! identities and ids, and the pure translation into policy maps.

pub mod compile;
pub mod crd;
pub mod evaluate;
pub mod ids;
pub mod interned;
pub mod pod_delta;
pub mod selector;
pub mod translate;
pub mod world;

pub use compile::{compile, Compiled, CompiledPolicy};
pub use crd::compile_object;
pub use ids::{Ids, RuleRef};
pub use world::World;
