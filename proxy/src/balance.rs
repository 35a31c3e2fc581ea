//! Endpoint selection: power of two choices over peak-EWMA latency (default), or smooth
//! weighted round robin. Ejected endpoints are skipped; if every endpoint is ejected the
//! balancer uses them all anyway (Envoy's "panic mode"), since refusing is worse.
//!
//! A request with a QoS profile is first narrowed to the endpoints that meet it (the
//! spec's `requestService`): accuracy label at least the profile's minimum, predicted
//! latency (peak EWMA) within its latency target, recent failure rate within what its
//! reliability target allows; among those the cheapest (`price` metadata), then P2C
//! over latency x load. When none meets the profile, the request
//! goes to the best available endpoint by the ordinary policy and is counted as a miss.
//!
//! Warm-pool endpoints (reserved for a QoS tier) are out of general rotation:
//! `pick_warm` serves their tier's requests; the others never reach them unless every
//! endpoint is (panic mode).
//!
//! The balancer reads endpoint state; `upstream` records outcomes into it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::config::{LoadBalancer, QosProfileSpec};
use crate::outlier::now_ms;
use crate::upstream::Endpoint;

/// Latency estimate that jumps to a slower sample at once and decays toward faster ones,
/// as in Finagle and linkerd2-proxy. Without samples it decays toward zero (read time
/// applies the decay), so an endpoint nobody has sent to for a while looks cheap again
/// and is re-tried: a slow spell is not held against it forever.
#[derive(Debug)]
pub struct PeakEwma {
    rtt_ns: AtomicU64,
    stamp_ms: AtomicU64,
}

/// How fast old samples are forgotten (linkerd2-proxy's default).
const DECAY: Duration = Duration::from_secs(10);
/// Estimate for an endpoint with no samples yet: optimistic, so new endpoints get tried.
const DEFAULT_RTT: Duration = Duration::from_millis(1);

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            rtt_ns: AtomicU64::new(DEFAULT_RTT.as_nanos() as u64),
            stamp_ms: AtomicU64::new(now_ms()),
        }
    }
}

impl PeakEwma {
    /// The estimate as it stands, for the same endpoint in a rebuilt cluster.
    pub fn carried(&self) -> PeakEwma {
        PeakEwma {
            rtt_ns: AtomicU64::new(self.rtt_ns.load(Relaxed)),
            stamp_ms: AtomicU64::new(self.stamp_ms.load(Relaxed)),
        }
    }

    pub fn observe(&self, rtt: Duration) {
        self.observe_at(now_ms(), rtt);
    }

    pub fn observe_at(&self, now: u64, rtt: Duration) {
        let elapsed = now.saturating_sub(self.stamp_ms.swap(now, Relaxed)) as f64;
        let w = (-elapsed / DECAY.as_millis() as f64).exp();
        let prev = self.rtt_ns.load(Relaxed) as f64 * w;
        let sample = rtt.as_nanos() as f64;
        // Peak: a slower sample wins at once; a faster one is blended in by how long
        // it has been since the last one.
        let next = if sample > prev {
            sample
        } else {
            prev * w + sample * (1.0 - w)
        };
        self.rtt_ns.store(next as u64, Relaxed);
    }

    /// The last estimate, decayed by the time since it was made.
    pub fn estimate_at(&self, now: u64) -> f64 {
        let elapsed = now.saturating_sub(self.stamp_ms.load(Relaxed)) as f64;
        self.rtt_ns.load(Relaxed) as f64 * (-elapsed / DECAY.as_millis() as f64).exp()
    }
}

/// The share of an endpoint's recent attempts that failed (connect errors, timeouts,
/// 5xx). Both counts halve every `HALF_LIFE_MS`, so the rate follows change and an
/// endpoint nobody sends to anymore is forgotten (unknown) and tried again.
#[derive(Debug)]
pub struct FailureRate {
    attempts: AtomicU64,
    failures: AtomicU64,
    stamp_ms: AtomicU64,
}

const HALF_LIFE_MS: u64 = 5_000;
/// Fewer recent attempts than this say nothing: the rate reads 0 (optimistic, as an
/// untried endpoint's latency is).
const MIN_ATTEMPTS: u64 = 20;

impl Default for FailureRate {
    fn default() -> Self {
        FailureRate {
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            stamp_ms: AtomicU64::new(now_ms()),
        }
    }
}

impl FailureRate {
    /// The counts as they stand, for the same endpoint in a rebuilt cluster.
    pub fn carried(&self) -> FailureRate {
        FailureRate {
            attempts: AtomicU64::new(self.attempts.load(Relaxed)),
            failures: AtomicU64::new(self.failures.load(Relaxed)),
            stamp_ms: AtomicU64::new(self.stamp_ms.load(Relaxed)),
        }
    }

    pub fn observe_at(&self, now: u64, failed: bool) {
        let stamp = self.stamp_ms.load(Relaxed);
        let halvings = now.saturating_sub(stamp) / HALF_LIFE_MS;
        // One thread ages the counts; a sample racing with it may land before or after.
        if halvings > 0
            && self
                .stamp_ms
                .compare_exchange(stamp, stamp + halvings * HALF_LIFE_MS, Relaxed, Relaxed)
                .is_ok()
        {
            let shift = halvings.min(63);
            for c in [&self.attempts, &self.failures] {
                let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v >> shift));
            }
        }
        self.attempts.fetch_add(1, Relaxed);
        if failed {
            self.failures.fetch_add(1, Relaxed);
        }
    }

    /// Failed share of recent attempts as of `now`, 0..1 (0 while too few are known).
    pub fn rate_at(&self, now: u64) -> f64 {
        let shift = (now.saturating_sub(self.stamp_ms.load(Relaxed)) / HALF_LIFE_MS).min(63);
        let attempts = self.attempts.load(Relaxed) >> shift;
        if attempts < MIN_ATTEMPTS {
            return 0.0;
        }
        ((self.failures.load(Relaxed) >> shift) as f64 / attempts as f64).min(1.0)
    }
}

/// What a QoS profile requires of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Needs {
    pub min_accuracy: f64,
    /// Predicted latency allowed, in ns (infinite: no target).
    pub max_latency_ns: f64,
    /// Recent failure rate allowed: 1 - the reliability target (1: no target).
    pub max_failure_rate: f64,
}

impl Needs {
    /// `None` when the profile requires nothing of an endpoint.
    pub fn of(p: &QosProfileSpec) -> Option<Needs> {
        let target_ms = if p.latency_p99_ms > 0.0 {
            p.latency_p99_ms
        } else {
            p.latency_p50_ms
        };
        let needs = Needs {
            min_accuracy: p.min_accuracy,
            max_latency_ns: if target_ms > 0.0 {
                target_ms * 1e6
            } else {
                f64::INFINITY
            },
            max_failure_rate: if p.reliability > 0.0 {
                1.0 - p.reliability
            } else {
                1.0
            },
        };
        (needs.min_accuracy > 0.0
            || needs.max_latency_ns.is_finite()
            || needs.max_failure_rate < 1.0)
            .then_some(needs)
    }
}

/// Picks endpoints for one cluster.
#[derive(Debug)]
pub struct Balancer {
    policy: LoadBalancer,
    /// Endpoint indexes repeated by weight, interleaved, for round robin.
    wrr: Vec<usize>,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(policy: LoadBalancer, weights: &[u32]) -> Self {
        // Interleave (smooth WRR) so weight 3:1 gives a a b a, not a a a b.
        let total: u32 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut wrr = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += *w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total as i64;
            wrr.push(best);
        }
        Balancer {
            policy,
            wrr,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks an endpoint, avoiding `avoid` (the one that just failed) when there is another.
    pub fn pick<'a>(&self, eps: &'a [Endpoint], avoid: Option<usize>) -> Option<&'a Endpoint> {
        match eps.len() {
            0 => return None,
            1 => return Some(&eps[0]),
            _ => {}
        }
        let now = now_ms();
        let usable = |i: usize| {
            Some(i) != avoid && !eps[i].outlier.is_ejected(now) && eps[i].reserved_for.is_none()
        };
        let chosen = match self.policy {
            LoadBalancer::WeightedRoundRobin => {
                let start = self.next.fetch_add(1, Relaxed);
                (0..self.wrr.len())
                    .map(|k| self.wrr[(start + k) % self.wrr.len()])
                    .find(|&i| usable(i))
            }
            LoadBalancer::PeakEwma => self.p2c(eps, now, usable),
        };
        // Panic mode: everything is ejected or avoided.
        let i = chosen.unwrap_or_else(|| {
            let i = fastrand::usize(..eps.len());
            if Some(i) == avoid {
                (i + 1) % eps.len()
            } else {
                i
            }
        });
        Some(&eps[i])
    }

    /// Picks for a request under `needs`; the flag says whether the endpoint meets them.
    pub fn pick_for<'a>(
        &self,
        eps: &'a [Endpoint],
        avoid: Option<usize>,
        needs: Option<&Needs>,
    ) -> Option<(&'a Endpoint, bool)> {
        let Some(needs) = needs else {
            return self.pick(eps, avoid).map(|e| (e, true));
        };
        let now = now_ms();
        let meets = |i: usize| {
            let e = &eps[i];
            Some(i) != avoid
                && !e.outlier.is_ejected(now)
                && e.reserved_for.is_none()
                && e.accuracy >= needs.min_accuracy
                && e.ewma.estimate_at(now) <= needs.max_latency_ns
                && (needs.max_failure_rate >= 1.0
                    || e.failures.rate_at(now) <= needs.max_failure_rate)
        };
        let cheapest = (0..eps.len())
            .filter(|&i| meets(i))
            .map(|i| eps[i].price)
            .min_by(f64::total_cmp);
        match cheapest {
            Some(price) => {
                let chosen = self.p2c(eps, now, |i| meets(i) && eps[i].price <= price)?;
                Some((&eps[chosen], true))
            }
            None => self.pick(eps, avoid).map(|e| (e, false)),
        }
    }

    /// A warm-pool endpoint whose reservation is `wanted` (not ejected, not `avoid`), by
    /// P2C over load; None when there is none usable (see `warm::pick`).
    pub fn pick_warm<'a>(
        &self,
        eps: &'a [Endpoint],
        avoid: Option<usize>,
        wanted: impl Fn(&crate::warm::Reservation) -> bool,
    ) -> Option<&'a Endpoint> {
        let now = now_ms();
        let i = self.p2c(eps, now, |i| {
            Some(i) != avoid
                && eps[i].reserved_for.as_ref().is_some_and(&wanted)
                && !eps[i].outlier.is_ejected(now)
        })?;
        Some(&eps[i])
    }

    fn p2c(&self, eps: &[Endpoint], now: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = eps.len();
        if n < 2 {
            return (n == 1 && usable(0)).then_some(0);
        }
        // Fast path: two distinct random endpoints, both usable (the common case).
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let (a, b) = match (usable(a), usable(b)) {
            (true, true) => (a, b),
            _ => {
                let ok: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
                match ok.len() {
                    0 => return None,
                    1 => return Some(ok[0]),
                    m => {
                        let x = fastrand::usize(..m);
                        (ok[x], ok[(x + 1 + fastrand::usize(..m - 1)) % m])
                    }
                }
            }
        };
        Some(if eps[a].load_cost(now) <= eps[b].load_cost(now) {
            a
        } else {
            b
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_wrr_interleaves_by_weight() {
        let b = Balancer::new(LoadBalancer::WeightedRoundRobin, &[3, 1]);
        assert_eq!(b.wrr, vec![0, 0, 1, 0]);
        let b = Balancer::new(LoadBalancer::WeightedRoundRobin, &[1, 1, 1]);
        assert_eq!(b.wrr.len(), 3);
    }

    #[test]
    fn a_profile_needs_what_it_targets() {
        let mut p = QosProfileSpec::default();
        assert_eq!(Needs::of(&p), None, "no targets: ordinary balancing");
        p.min_accuracy = 0.9;
        p.latency_p50_ms = 20.0;
        let n = Needs::of(&p).unwrap();
        assert_eq!((n.min_accuracy, n.max_latency_ns), (0.9, 20e6));
        p.latency_p99_ms = 100.0;
        assert_eq!(Needs::of(&p).unwrap().max_latency_ns, 100e6, "p99 wins");
        assert_eq!(Needs::of(&p).unwrap().max_failure_rate, 1.0);
        let reliable = QosProfileSpec {
            reliability: 0.99,
            ..Default::default()
        };
        let n = Needs::of(&reliable).expect("a reliability target is a need");
        assert!((n.max_failure_rate - 0.01).abs() < 1e-12);
    }

    #[test]
    fn failure_rate_is_unknown_until_enough_attempts_then_their_failed_share() {
        let f = FailureRate::default();
        let t0 = f.stamp_ms.load(Relaxed);
        for _ in 0..MIN_ATTEMPTS - 1 {
            f.observe_at(t0, true);
        }
        assert_eq!(f.rate_at(t0), 0.0, "too few attempts to judge");
        f.observe_at(t0, true);
        assert_eq!(f.rate_at(t0), 1.0);
        for _ in 0..60 {
            f.observe_at(t0, false);
        }
        assert_eq!(f.rate_at(t0), 0.25);
    }

    #[test]
    fn failure_rate_forgets_old_attempts() {
        let f = FailureRate::default();
        let t0 = f.stamp_ms.load(Relaxed);
        for _ in 0..40 {
            f.observe_at(t0, true);
        }
        assert_eq!(f.rate_at(t0), 1.0);
        // Two half-lives later: 10 attempts left, below what says anything.
        let later = t0 + 2 * HALF_LIFE_MS;
        assert_eq!(f.rate_at(later), 0.0);
        f.observe_at(later, false);
        assert_eq!(f.attempts.load(Relaxed), 11);
        assert_eq!(f.failures.load(Relaxed), 10);
    }

    #[test]
    fn an_idle_estimate_decays_so_the_endpoint_is_tried_again() {
        let e = PeakEwma::default();
        let t0 = e.stamp_ms.load(Relaxed);
        e.observe_at(t0, Duration::from_millis(100));
        assert_eq!(e.estimate_at(t0), 100e6);
        // One decay period later: down by e.
        let later = e.estimate_at(t0 + DECAY.as_millis() as u64);
        assert!((later - 100e6 / std::f64::consts::E).abs() < 1e3, "{later}");
        // A fast sample after a long idle spell counts for a lot.
        e.observe_at(t0 + 60_000, Duration::from_millis(2));
        assert!(
            e.estimate_at(t0 + 60_000) < 2.2e6,
            "{}",
            e.estimate_at(t0 + 60_000)
        );
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = PeakEwma::default();
        let t0 = e.stamp_ms.load(Relaxed);
        e.observe_at(t0, Duration::from_millis(50));
        assert_eq!(e.estimate_at(t0), 50e6);
        e.observe_at(t0, Duration::from_millis(1));
        // Immediately after, the peak still dominates.
        assert!(e.estimate_at(t0) > 40e6);
    }
}
