//! Endpoint selection: power of two choices over peak-EWMA latency (default), or smooth
//! weighted round robin. Ejected endpoints are skipped; if every endpoint is ejected the
//! balancer uses them all anyway (Envoy's "panic mode"), since refusing is worse.
//!
//! The balancer reads endpoint state; `upstream` records outcomes into it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::config::LoadBalancer;
use crate::outlier::now_ms;
use crate::upstream::Endpoint;

/// Latency estimate that jumps to a slower sample at once and decays toward faster ones,
/// as in Finagle and linkerd2-proxy.
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
    pub fn observe(&self, rtt: Duration) {
        let now = now_ms();
        let elapsed = now.saturating_sub(self.stamp_ms.swap(now, Relaxed)) as f64;
        let prev = self.rtt_ns.load(Relaxed) as f64;
        let sample = rtt.as_nanos() as f64;
        let next = if sample > prev {
            sample
        } else {
            let w = (-elapsed / DECAY.as_millis() as f64).exp();
            prev * w + sample * (1.0 - w)
        };
        self.rtt_ns.store(next as u64, Relaxed);
    }

    pub fn estimate_ns(&self) -> f64 {
        self.rtt_ns.load(Relaxed) as f64
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
        let usable = |i: usize| Some(i) != avoid && !eps[i].outlier.is_ejected(now);
        let chosen = match self.policy {
            LoadBalancer::WeightedRoundRobin => {
                let start = self.next.fetch_add(1, Relaxed);
                (0..self.wrr.len())
                    .map(|k| self.wrr[(start + k) % self.wrr.len()])
                    .find(|&i| usable(i))
            }
            LoadBalancer::PeakEwma => self.p2c(eps, usable),
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

    fn p2c(&self, eps: &[Endpoint], usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = eps.len();
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
        Some(if eps[a].load_cost() <= eps[b].load_cost() {
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
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = PeakEwma::default();
        e.observe(Duration::from_millis(50));
        assert_eq!(e.estimate_ns(), 50e6);
        e.observe(Duration::from_millis(1));
        // Immediately after, the peak still dominates.
        assert!(e.estimate_ns() > 40e6);
    }
}
