//! Names and sizes of the BPF maps. The names are also the pin file names
//! under `<bpffs>/maps/`, so they are part of the on-disk interface that a
//! restarted agent and the CLI depend on. BPF object names are limited to
//! 15 characters.

/// Per-interface, per-direction packet and byte counters (per-CPU hash).
pub const IF_STATS: &str = "WEIR_IF_STATS";
/// Capacity of [`IF_STATS`]: one entry per pod interface and direction.
pub const IF_STATS_MAX_ENTRIES: u32 = 16_384;

/// Datapath error counters (per-CPU array), indexed by [`crate::stats::DpError`].
pub const DP_ERRORS: &str = "WEIR_DP_ERRORS";
/// Capacity of [`DP_ERRORS`].
pub const DP_ERRORS_MAX_ENTRIES: u32 = 64;
