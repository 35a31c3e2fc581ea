//! Passive outlier detection: eject an endpoint after N consecutive failures (connect
//! errors, resets, 5xx) and re-admit it after a backoff that doubles with each ejection.
//!
//! State is lock-free and updated on the request path; the balancer only reads
//! `is_ejected`. Counting ejections for metrics is the caller's job (`ejected` returns true
//! exactly once per ejection). How many endpoints of a cluster may be ejected at once is
//! the cluster's to decide (`Cluster::record`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::OutlierPolicy;

/// Milliseconds since the process's first call; monotonic and cheap to compare atomically.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Ejections in the current streak; resets after a quiet `max_ejection`.
    ejections: AtomicU32,
    last_ejected_ms: AtomicU64,
}

impl OutlierState {
    /// The state as it stands (an ejection included), for the same endpoint in a
    /// rebuilt cluster.
    pub fn carried(&self) -> OutlierState {
        OutlierState {
            consecutive: AtomicU32::new(self.consecutive.load(Relaxed)),
            ejected_until_ms: AtomicU64::new(self.ejected_until_ms.load(Relaxed)),
            ejections: AtomicU32::new(self.ejections.load(Relaxed)),
            last_ejected_ms: AtomicU64::new(self.last_ejected_ms.load(Relaxed)),
        }
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now_ms
    }

    pub fn on_success(&self) {
        if self.consecutive.load(Relaxed) != 0 {
            self.consecutive.store(0, Relaxed);
        }
    }

    /// Records a failure; returns the ejection duration if this failure ejected the
    /// endpoint. An ejection due happens only if `may_eject` agrees (the cluster's cap on
    /// the share ejected); if not, the count starts again.
    pub fn on_failure(
        &self,
        policy: &OutlierPolicy,
        now_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        // Failures of requests still in flight when it was ejected are not counted: a
        // re-admitted endpoint starts afresh, not one failure short of a longer ejection.
        if policy.consecutive_failures == 0 || self.is_ejected(now_ms) {
            return None;
        }
        let n = self.consecutive.fetch_add(1, Relaxed) + 1;
        if n < policy.consecutive_failures {
            return None;
        }
        // Only one of several racing failures ejects.
        if self
            .consecutive
            .compare_exchange(n, 0, Relaxed, Relaxed)
            .is_err()
            || !may_eject()
        {
            return None;
        }
        let quiet = now_ms.saturating_sub(self.last_ejected_ms.load(Relaxed));
        let streak = if quiet > 2 * policy.max_ejection.as_millis() as u64 {
            0
        } else {
            self.ejections.load(Relaxed)
        };
        let factor = 1u32.checked_shl(streak.min(16)).unwrap_or(u32::MAX);
        let dur = policy
            .base_ejection
            .saturating_mul(factor)
            .min(policy.max_ejection);
        self.ejections.store(streak + 1, Relaxed);
        self.last_ejected_ms.store(now_ms, Relaxed);
        self.ejected_until_ms
            .store(now_ms + dur.as_millis() as u64, Relaxed);
        Some(dur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(10),
            max_ejection_percent: 100,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let s = OutlierState::default();
        let p = policy();
        assert_eq!(s.on_failure(&p, 0, || true), None);
        assert_eq!(s.on_failure(&p, 0, || true), None);
        s.on_success();
        assert_eq!(s.on_failure(&p, 0, || true), None);
        assert_eq!(s.on_failure(&p, 0, || true), None);
        assert_eq!(s.on_failure(&p, 0, || true), Some(Duration::from_secs(1)));
        assert!(s.is_ejected(999));
        assert!(!s.is_ejected(1000));
        // Failures while ejected (requests already in flight) do not count afterwards.
        for _ in 0..5 {
            assert_eq!(s.on_failure(&p, 500, || true), None);
        }
        assert_eq!(s.on_failure(&p, 1000, || true), None, "re-admitted afresh");
        assert_eq!(s.on_failure(&p, 1000, || true), None);
        assert!(
            s.on_failure(&p, 1000, || true).is_some(),
            "three new failures eject again"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = OutlierState::default();
        let p = policy();
        let mut now = 0;
        let mut got = vec![];
        for _ in 0..6 {
            for _ in 0..2 {
                s.on_failure(&p, now, || true);
            }
            let d = s.on_failure(&p, now, || true).unwrap();
            got.push(d.as_secs());
            now += d.as_millis() as u64;
        }
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn disabled_policy_never_ejects() {
        let s = OutlierState::default();
        let p = OutlierPolicy {
            consecutive_failures: 0,
            ..policy()
        };
        for _ in 0..100 {
            assert_eq!(s.on_failure(&p, 0, || true), None);
        }
    }
}
