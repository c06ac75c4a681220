//! Label sets shared by every pod, identity and key that carries them.
//!
//! A cluster has far fewer distinct label sets than pods (the pods of a
//! ReplicaSet share theirs), and a `BTreeMap` of two labels costs a
//! 544-byte node: at 100,000 pods a copy per pod was 54 MB, held by the
//! state and again by every full translation. [`shared`] hands out one
//! `Arc` per distinct set.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, OnceLock},
};

use super::selector::Labels;

/// A label set, shared.
pub type SharedLabels = Arc<Labels>;

struct Interner {
    sets: HashSet<SharedLabels>,
    /// The size after the last sweep: the next comes at twice that.
    swept_at: usize,
}

fn interner() -> &'static Mutex<Interner> {
    static I: OnceLock<Mutex<Interner>> = OnceLock::new();
    I.get_or_init(|| Mutex::new(Interner { sets: HashSet::new(), swept_at: 0 }))
}

/// Sets no one else holds are dropped once the table has doubled since
/// the last sweep, so it stays within twice the sets in use.
const SWEEP_MIN: usize = 1024;

/// The shared copy of `labels`.
pub fn shared(labels: Labels) -> SharedLabels {
    // A poisoned lock only means a panic elsewhere while it was held; the
    // table is still a set of valid Arcs.
    let mut i = interner().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = i.sets.get(&labels) {
        return s.clone();
    }
    if i.sets.len() >= (2 * i.swept_at).max(SWEEP_MIN) {
        i.sets.retain(|s| Arc::strong_count(s) > 1);
        i.swept_at = i.sets.len();
    }
    let s = Arc::new(labels);
    i.sets.insert(s.clone());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sets_are_one_and_unused_ones_are_swept() {
        let set = |v: usize| -> Labels { [("app".to_string(), format!("a{v}"))].into() };
        let a = shared(set(0));
        let b = shared(set(0));
        assert!(Arc::ptr_eq(&a, &b), "one copy of equal sets");
        assert!(!Arc::ptr_eq(&a, &shared(set(1))));
        // Many sets no one keeps: the table does not grow without bound.
        for v in 2..10 * SWEEP_MIN {
            drop(shared(set(v)));
        }
        let len = interner().lock().map(|i| i.sets.len()).unwrap_or(usize::MAX);
        assert!(len <= 2 * SWEEP_MIN + 1, "{len} sets kept");
        assert!(Arc::ptr_eq(&a, &shared(set(0))), "a set in use survives the sweeps");
    }
}
