//! NetworkPolicy: selectors, compilation with the API's semantics,
//! identities and ids, and the pure translation into policy maps.

pub mod compile;
pub mod ids;
pub mod selector;
pub mod translate;
pub mod world;

pub use compile::{compile, CompiledPolicy};
pub use ids::{Ids, RuleRef};
pub use world::World;
