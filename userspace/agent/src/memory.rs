//! The agent's use of glibc's allocator.
//!
//! One arena for every thread: the tokio workers and the sources'
//! threads otherwise each get an arena of their own, each keeping its
//! own freed memory, and each paying separately, on whichever change
//! first allocates there after [`release_freed`], for sorting the chunks
//! the trim coalesced (a 20-40 ms stall on a random change at 100,000
//! pods). The agent allocates little once synced; contention on one
//! arena costs nothing measurable on its few threads.

/// Blocks of this size and larger are mapped on their own and unmapped
/// when freed.
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Free memory at the top of the heap kept for the next change rather
/// than returned at each free. Fixing the mmap threshold also fixes this
/// one at glibc's 128 KiB default, and then every change's temporary
/// memory was returned and faulted back in on the next (a policy edit at
/// 100,000 pods: 31 -> 22 ms p50). [`release_freed`] still returns all.
const TRIM_THRESHOLD: i32 = 32 * 1024 * 1024;

/// Limits glibc to one arena, and fixes its mmap threshold. Called first
/// thing in `main`, before any thread exists (an arena, once a thread has
/// one, stays).
///
/// The threshold: glibc raises its own after each large block freed (up
/// to 32 MiB), so the initial lists' large buffers (response bodies, the
/// vectors of 100,000 objects as they grow) land in the heap, between
/// small blocks that stay, and their pages are never returned. Fixed,
/// they are mapped and returned whole when freed: agent RSS at 100,000
/// pods 315 -> 275 MiB after the initial sync (kube source).
pub fn configure() {
    // SAFETY: mallopt only sets an allocator parameter.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        eprintln!("weir-agent: glibc refused M_ARENA_MAX=1; threads keep arenas of their own");
    }
    // SAFETY: as above.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } != 1 {
        eprintln!("weir-agent: glibc refused M_MMAP_THRESHOLD={MMAP_THRESHOLD}");
    }
    // SAFETY: as above.
    if unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) } != 1 {
        eprintln!("weir-agent: glibc refused M_TRIM_THRESHOLD={TRIM_THRESHOLD}");
    }
}

/// Allocations of `WARM_UP_SIZE` bytes made (and freed) after a trim: each
/// sorts up to 10,000 of the trimmed chunks (glibc's `MAX_ITERS`), so
/// this many take in well over a million.
const WARM_UP_CALLS: usize = 128;
const WARM_UP_SIZE: usize = 64 * 1024;

/// Returns memory freed after the initial load (parsing garbage) to the
/// OS, then pays at once for what the trim leaves to the next
/// allocations: the chunks it coalesced wait, unsorted, for the next
/// malloc calls to sort them, which would otherwise be the first
/// change's.
pub fn release_freed() {
    // SAFETY: malloc_trim only walks glibc's own heap structures.
    unsafe { libc::malloc_trim(0) };
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(WARM_UP_CALLS);
    for _ in 0..WARM_UP_CALLS {
        // black_box: an allocation never used may be elided.
        held.push(std::hint::black_box(Vec::with_capacity(WARM_UP_SIZE)));
    }
    drop(std::hint::black_box(held));
}

/// What glibc's heap holds, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Allocated and not freed.
    pub in_use: usize,
    /// Freed but still held in the heap (fragmentation, or not yet
    /// trimmed).
    pub free_held: usize,
    /// Blocks mapped on their own (above the mmap threshold).
    pub mapped: usize,
}

/// The heap's usage now (`mallinfo2`).
pub fn usage() -> Usage {
    // SAFETY: mallinfo2 only reads glibc's own counters.
    let m = unsafe { libc::mallinfo2() };
    Usage { in_use: m.uordblks + m.hblkhd, free_held: m.fordblks, mapped: m.hblkhd }
}
