//! The agent's use of glibc's allocator.
//!
//! One arena for every thread: the tokio workers and the sources'
//! threads otherwise each get an arena of their own, each keeping its
//! own freed memory, and each paying separately, on whichever change
//! first allocates there after [`release_freed`], for sorting the chunks
//! the trim coalesced (a 20-40 ms stall on a random change at 100,000
//! pods). The agent allocates little once synced; contention on one
//! arena costs nothing measurable on its few threads.

/// Limits glibc to one arena. Called first thing in `main`, before any
/// thread exists (an arena, once a thread has one, stays).
pub fn one_arena() {
    // SAFETY: mallopt only sets an allocator parameter.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        eprintln!("weir-agent: glibc refused M_ARENA_MAX=1; threads keep arenas of their own");
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
