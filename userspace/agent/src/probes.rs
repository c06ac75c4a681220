//! The agent's own probes, on `--metrics-addr`:
//! - `/livez`: the agent's main loop is turning (a heartbeat no older than
//!   `--liveness-timeout`). Nothing about the API server: an agent that
//!   cannot reach it still keeps the datapath pinned and retries, and
//!   restarting it would only add a relist to the outage.
//! - `/readyz` (and `/healthz`, its old name): the first full sync has
//!   programmed the cluster state, and no watch has been failing for longer
//!   than `--ready-stale-after`. It turns false while the source is stale,
//!   and true again when the watches recover.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// A failing watch that has not failed again for this long has resumed
/// (kube's watcher retries at most every 30 s while it fails).
pub const RECOVERED_AFTER: Duration = Duration::from_secs(45);

pub struct Probes {
    start: Instant,
    /// Milliseconds after `start` of the main loop's last turn.
    heartbeat_ms: AtomicU64,
    synced: AtomicBool,
    /// Kinds whose watch is failing: since when, and the last error.
    failing: Mutex<BTreeMap<&'static str, (Instant, Instant)>>,
    liveness_timeout_ms: AtomicU64,
    stale_after_ms: AtomicU64,
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            failing: Mutex::new(BTreeMap::new()),
            liveness_timeout_ms: AtomicU64::new(120_000),
            stale_after_ms: AtomicU64::new(60_000),
        }
    }
}

impl Probes {
    pub fn set_thresholds(&self, liveness_timeout: Duration, stale_after: Duration) {
        self.liveness_timeout_ms.store(liveness_timeout.as_millis() as u64, Ordering::Relaxed);
        self.stale_after_ms.store(stale_after.as_millis() as u64, Ordering::Relaxed);
    }

    /// The main loop turned.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, now: Instant) {
        self.heartbeat_ms.store(now.saturating_duration_since(self.start).as_millis() as u64, Ordering::Release);
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// A kind's watch failed (`true`, sent on every error) or delivered
    /// something again (`false`).
    pub fn watch_failing(&self, kind: &'static str, failing: bool) {
        self.watch_failing_at(kind, failing, Instant::now());
    }

    fn watch_failing_at(&self, kind: &'static str, failing: bool, now: Instant) {
        let mut f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if failing {
            f.entry(kind).or_insert((now, now)).1 = now;
        } else {
            f.remove(kind);
        }
    }

    /// `Err(reason)` when the main loop has not turned for too long.
    pub fn liveness(&self) -> Result<(), String> {
        self.liveness_at(Instant::now())
    }

    fn liveness_at(&self, now: Instant) -> Result<(), String> {
        let last = self.start + Duration::from_millis(self.heartbeat_ms.load(Ordering::Acquire));
        let idle = now.saturating_duration_since(last);
        let limit = Duration::from_millis(self.liveness_timeout_ms.load(Ordering::Relaxed));
        if idle > limit {
            Err(format!("the main loop has not turned for {} s (limit {} s)", idle.as_secs(), limit.as_secs()))
        } else {
            Ok(())
        }
    }

    /// `Err(reason)` before the first full sync, and while a watch has
    /// been failing for longer than the staleness limit.
    pub fn readiness(&self) -> Result<(), String> {
        self.readiness_at(Instant::now())
    }

    fn readiness_at(&self, now: Instant) -> Result<(), String> {
        if !self.is_synced() {
            return Err("starting: the first full sync has not run".into());
        }
        let limit = Duration::from_millis(self.stale_after_ms.load(Ordering::Relaxed));
        let f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        // A watch that resumed quietly delivers nothing to say so; one
        // that still fails errs again within kube's longest backoff (30 s).
        let stale: Vec<String> = f
            .iter()
            .filter(|(_, (since, last))| now.saturating_duration_since(*since) > limit && now.saturating_duration_since(*last) <= RECOVERED_AFTER)
            .map(|(kind, (since, _))| format!("{kind} for {} s", now.saturating_duration_since(*since).as_secs()))
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(format!("stale: watches failing ({}; limit {} s)", stale.join(", "), limit.as_secs()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_heartbeat_only() {
        let p = Probes::default();
        p.set_thresholds(Duration::from_secs(10), Duration::from_secs(5));
        let t0 = p.start;
        p.beat_at(t0);
        assert!(p.liveness_at(t0 + Duration::from_secs(9)).is_ok());
        assert!(p.liveness_at(t0 + Duration::from_secs(11)).is_err(), "a stalled loop is not live");
        p.watch_failing_at("Pod", true, t0);
        p.beat_at(t0 + Duration::from_secs(100));
        assert!(p.liveness_at(t0 + Duration::from_secs(101)).is_ok(), "a failing watch does not make the agent dead");
    }

    #[test]
    fn readiness_needs_the_sync_and_fresh_watches() {
        let p = Probes::default();
        p.set_thresholds(Duration::from_secs(10), Duration::from_secs(5));
        let t0 = p.start;
        assert!(p.readiness_at(t0).is_err_and(|e| e.starts_with("starting")));
        p.set_synced();
        assert!(p.readiness_at(t0).is_ok());
        p.watch_failing_at("Pod", true, t0);
        assert!(p.readiness_at(t0 + Duration::from_secs(4)).is_ok(), "a short failure is tolerated");
        p.watch_failing_at("Pod", true, t0 + Duration::from_secs(4));
        let e = p.readiness_at(t0 + Duration::from_secs(6)).expect_err("stale");
        assert!(e.contains("Pod for 6 s"), "{e}");
        p.watch_failing_at("Pod", false, t0 + Duration::from_secs(7));
        assert!(p.readiness_at(t0 + Duration::from_secs(8)).is_ok(), "ready again once the watch works");
        // A watch that resumed without delivering anything: no error for
        // longer than kube's longest backoff means it works.
        p.watch_failing_at("Node", true, t0);
        p.watch_failing_at("Node", true, t0 + Duration::from_secs(20));
        assert!(p.readiness_at(t0 + Duration::from_secs(60)).is_err(), "erred 40 s ago: still failing");
        assert!(p.readiness_at(t0 + Duration::from_secs(66)).is_ok(), "quiet for 46 s: resumed");
    }
}
