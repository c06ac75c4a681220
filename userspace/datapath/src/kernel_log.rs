//! Kernel debug logs: the aya-log records of weir's kernel programs (see
//! `weir_ebpf::debug`), the developer's printf. `weir monitor` and the
//! event ring buffer stay the structured interface.
//!
//! The level is fixed when an object loads: aya-log-ebpf keeps it in the
//! `AYA_LOG_LEVEL` global, in `.rodata`, which the loader sets and the
//! kernel freezes. The verifier then knows it, and removes every log call
//! above it, so with logs off (the default) no packet pays for them. A
//! running object's level cannot change; the agent reloads to change it.

use aya::Ebpf;
use aya_log::EbpfLogger;

use crate::DatapathError;

/// The name of aya-log's ring buffer in every object.
const LOG_MAP: &str = "AYA_LOGS";

/// Bytes of the ring buffer while logs are off: the smallest a ring
/// buffer can be (one page), since nothing writes to it.
const OFF_RING_BYTES: u32 = 4096;

/// The most verbose kernel log level the objects are loaded with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelLogLevel {
    /// No records: every log call is removed at load.
    #[default]
    Off,
    Error,
    Warn,
    Info,
    /// The decisions of a flow (frontend, backend, policy, NAT, forwarding).
    Debug,
    /// Also per-packet misses and established flows keeping their backend.
    Trace,
}

impl KernelLogLevel {
    /// The value of `AYA_LOG_LEVEL` (aya-log's levels are 1 = error to
    /// 5 = trace; a record is kept when its level is at most this).
    pub fn global(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Error => aya_log::Level::Error as u8,
            Self::Warn => aya_log::Level::Warn as u8,
            Self::Info => aya_log::Level::Info as u8,
            Self::Debug => aya_log::Level::Debug as u8,
            Self::Trace => aya_log::Level::Trace as u8,
        }
    }

    pub fn is_off(self) -> bool {
        self == Self::Off
    }
}

/// Sets the level (and, when off, shrinks the unused ring buffer) on the
/// loader of an object.
pub(crate) fn configure<'a>(loader: &mut aya::EbpfLoader<'a>, level: &'a u8) {
    loader.override_global(aya_log::LEVEL, level, true);
    if *level == 0 {
        loader.map_max_entries(LOG_MAP, OFF_RING_BYTES);
    }
}

/// The reader of one object's records, handing each to `sink` (a `log`
/// logger) when [`EbpfLogger::flush`] runs. Keep it alive as long as the
/// object: it holds the ring buffer's only descriptor, and a program of
/// the object loaded later (the XDP program loads on first use) needs it.
pub(crate) fn take<T: log::Log>(ebpf: &mut Ebpf, object: &'static str, sink: T) -> Result<EbpfLogger<T>, DatapathError> {
    EbpfLogger::init_with_logger(ebpf, sink).map_err(|source| DatapathError::KernelLog { object, source })
}
