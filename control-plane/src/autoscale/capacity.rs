//! Per-instance capacity learned from telemetry: the rate one instance served while the
//! service's latency stayed within the target of its strictest active QoS profile.
//!
//! The configured `capacity_rps` is the starting point. A window served within target
//! at a higher per-instance rate shows the instances can take at least that much (the
//! estimate rises to it); a window over target shows they cannot take what they got
//! (the estimate falls to it). Windows with too little traffic per instance say
//! nothing. The estimate stays within a factor of four of the configured value, so one
//! odd window (a slow dependency, a GC pause) cannot make the planner run away.

/// Below this per-instance rate a window is not evidence of capacity.
const MIN_RPS: f64 = 1.0;
const BOUND: f64 = 4.0;

#[derive(Debug, Clone)]
pub struct Capacity {
    configured: f64,
    estimate: f64,
}

impl Capacity {
    pub fn new(configured: f64) -> Capacity {
        Capacity {
            configured,
            estimate: configured,
        }
    }

    pub fn rps(&self) -> f64 {
        self.estimate
    }

    /// One window: `per_instance_rps` served by each ready instance, with the window's
    /// p99 latency against the target. Returns whether the estimate moved.
    pub fn observe(&mut self, per_instance_rps: f64, p99_ms: f64, target_ms: f64) -> bool {
        if !(per_instance_rps >= MIN_RPS && p99_ms.is_finite() && target_ms > 0.0) {
            return false;
        }
        let before = self.estimate;
        if p99_ms <= target_ms {
            self.estimate = self.estimate.max(per_instance_rps);
        } else {
            self.estimate = self.estimate.min(per_instance_rps);
        }
        self.estimate = self
            .estimate
            .clamp(self.configured / BOUND, self.configured * BOUND);
        self.estimate != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_what_instances_served_within_target() {
        let mut c = Capacity::new(20.0);
        // Served 30 req/s each within 200 ms: they take at least that.
        assert!(c.observe(30.0, 120.0, 200.0));
        assert_eq!(c.rps(), 30.0);
        // Slower than the target at 25 req/s each: they cannot take 30.
        assert!(c.observe(25.0, 450.0, 200.0));
        assert_eq!(c.rps(), 25.0);
        // Too little traffic, or no target: no evidence.
        assert!(!c.observe(0.5, 900.0, 200.0));
        assert!(!c.observe(50.0, 100.0, 0.0));
        // Bounded to 4x the configured value either way.
        c.observe(500.0, 10.0, 200.0);
        assert_eq!(c.rps(), 80.0);
        c.observe(1.0, 5000.0, 200.0);
        assert_eq!(c.rps(), 5.0);
    }
}
