//! The agent's allocator: mimalloc (`main.rs` makes it the global
//! allocator).
//!
//! At 4,000 nodes and 100,000 pods the agent's cold start is mostly
//! allocation: parsing the lists, building the models, the Maglev tables
//! and the policy state, then freeing the temporaries. glibc's malloc,
//! even tuned (one arena, fixed mmap and trim thresholds, a trim after the
//! sync), spent much of that time in malloc/free and kept ~60 MiB of freed
//! but fragmented memory. mimalloc's size-class pages make the same work
//! cheaper: cold start 7.6 -> 4.5 s, the initial sync 3.8 -> 2.1 s, and
//! every change's p99 lower (docs/performance.md, "mimalloc").

use std::ptr::null_mut;

// mimalloc's own API (mimalloc.h), linked by `libmimalloc-sys` with the
// allocator itself; declared here rather than through its `extended`
// feature, which pulls a crate only for C type aliases.
extern "C" {
    fn mi_collect(force: bool);
    fn mi_process_info(
        elapsed_msecs: *mut usize,
        user_msecs: *mut usize,
        system_msecs: *mut usize,
        current_rss: *mut usize,
        peak_rss: *mut usize,
        current_commit: *mut usize,
        peak_commit: *mut usize,
        page_faults: *mut usize,
    );
}

/// Returns freed memory to the OS at once (after the initial load: the
/// parsing garbage and the lists' buffers; after a burst of changes, once
/// idle) rather than at the allocator's next busy moment: mimalloc purges
/// its delayed frees only as it allocates again.
pub fn release_freed() {
    // SAFETY: mi_collect only walks mimalloc's own structures; forcing
    // it is allowed from any thread.
    unsafe { mi_collect(true) };
}

/// What the allocator holds, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Memory the allocator has committed now (its estimate of its
    /// resident set).
    pub committed: usize,
    /// The most it ever had committed (the initial load's peak).
    pub peak_committed: usize,
}

/// The allocator's usage now (`mi_process_info`).
pub fn usage() -> Usage {
    let (mut committed, mut peak_committed) = (0usize, 0usize);
    // SAFETY: every out-parameter is either null (not wanted) or a valid
    // usize the call writes.
    unsafe {
        mi_process_info(null_mut(), null_mut(), null_mut(), null_mut(), null_mut(), &mut committed, &mut peak_committed, null_mut());
    }
    Usage { committed, peak_committed }
}
