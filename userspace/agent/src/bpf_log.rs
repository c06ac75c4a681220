//! Kernel debug logs (`--bpf-log-level`): reads each object's aya-log
//! ring buffer and re-emits its records as `tracing` events, target
//! [`TARGET`], at the record's level and with the object's name
//! (`object=pod|node|sock`; the message starts with the concern that
//! decided, `lb:`, `policy:`, `nat:`, `masq:`, `fwd:` or `sock:`). Set up
//! only when the level is not off: then the programs hold no log call
//! and nothing reads.

use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};

/// The tracing target of every kernel record.
pub const TARGET: &str = "weir::bpf";

/// A `log` sink (what aya-log writes to) that forwards to `tracing`.
pub struct ToTracing {
    object: &'static str,
}

impl ToTracing {
    pub fn new(object: &'static str) -> Self {
        Self { object }
    }
}

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let object = self.object;
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, %object, "{msg}"),
            log::Level::Warn => tracing::warn!(target: TARGET, %object, "{msg}"),
            log::Level::Info => tracing::info!(target: TARGET, %object, "{msg}"),
            log::Level::Debug => tracing::debug!(target: TARGET, %object, "{msg}"),
            log::Level::Trace => tracing::trace!(target: TARGET, %object, "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Drives one object's log reader for the rest of the agent's life. The
/// reader is never dropped before the process exits: it holds the only
/// descriptor of the object's log ring buffer, which a program loaded
/// later (the XDP program) still needs.
pub fn spawn(object: &'static str, logger: EbpfLogger<ToTracing>) {
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer's map descriptor, which
        // stays open and the same for as long as the AsyncFd owns it.
        let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                let (logger, error) = e.into_parts();
                tracing::error!(object, %error, "cannot wait on the kernel log ring buffer: no kernel logs");
                return keep(logger).await;
            }
        };
        loop {
            match fd.readable_mut().await {
                Ok(mut ready) => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                Err(error) => {
                    tracing::error!(object, %error, "waiting on the kernel log ring buffer failed: no more kernel logs");
                    return keep(fd).await;
                }
            }
        }
    });
}

/// Holds `v` until the runtime shuts down.
async fn keep<T>(v: T) {
    let _held = v;
    std::future::pending::<()>().await;
}
