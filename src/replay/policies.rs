//! The policies a replay compares: Presage's planner, and the baselines from their
//! documented defaults (Kubernetes HPA, Knative KPA) and an oracle with perfect foresight.

use std::collections::VecDeque;
use std::time::Duration;

use presage_control_plane::planner::{
    Decision, Planner, PlannerConfig, BURST_WINDOW, OBSERVED_WINDOW,
};

use super::sim::{Observed, Policy};

/// Presage: the control plane's planner, every 5 s, on the trace's complete steps and the
/// higher of the rates of its observed and burst windows (as the live control plane).
pub struct Presage {
    planner: Planner,
    pub decisions: Vec<(u64, Decision)>,
    /// The forecast's bound at the last decision (requests/s), if any.
    pub last_upper_rps: Option<f64>,
}

impl Presage {
    pub fn new(
        capacity: f64,
        cold_start: u64,
        step_s: u64,
        level: f64,
        floor: f64,
        scale_down_delay: u64,
    ) -> Presage {
        let mut cfg = PlannerConfig::new(
            capacity,
            Duration::from_secs(cold_start),
            Duration::from_secs(step_s),
        );
        cfg.level = level;
        cfg.floor_utilisation = floor;
        cfg.scale_down_delay = Duration::from_secs(scale_down_delay);
        Presage {
            planner: Planner::new(cfg),
            decisions: Vec::new(),
            last_upper_rps: None,
        }
    }
}

impl Policy for Presage {
    fn period(&self) -> u64 {
        self.planner.config().interval.as_secs()
    }

    fn decide(&mut self, o: &Observed<'_>) -> u32 {
        let d = self.planner.decide(
            o.now as f64,
            o.steps,
            o.mean_rate(OBSERVED_WINDOW.as_secs())
                .max(o.mean_rate(BURST_WINDOW.as_secs())),
        );
        let target = d.target;
        self.last_upper_rps = d.forecast_upper_rps;
        if self
            .decisions
            .last()
            .is_none_or(|(_, p)| p.target != target)
        {
            self.decisions.push((o.now, d));
        }
        target
    }
}

/// The Kubernetes HPA's defaults: 15 s sync, the metric a 60 s mean rate, target 80% of
/// capacity, 10% tolerance, scale-up at most max(+4, +100%) per sync, and the highest
/// recommendation of the last 300 s for scale-down (stabilisation).
pub struct Hpa {
    capacity: f64,
    recommendations: VecDeque<(u64, u32)>,
}

impl Hpa {
    pub fn new(capacity: f64) -> Hpa {
        Hpa {
            capacity,
            recommendations: VecDeque::new(),
        }
    }
}

impl Policy for Hpa {
    fn period(&self) -> u64 {
        15
    }

    fn decide(&mut self, o: &Observed<'_>) -> u32 {
        let current = o.instances.max(1);
        let target = 0.8 * self.capacity;
        let ratio = o.mean_rate(60) / (current as f64 * target);
        let mut desired = if (ratio - 1.0).abs() <= 0.1 {
            current
        } else {
            (current as f64 * ratio).ceil() as u32
        };
        desired = desired.min((current + 4).max(2 * current)).max(1);
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| *t + 300 <= o.now)
        {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back((o.now, desired));
        if desired < current {
            // Scale down only to the highest recommendation of the window.
            let high = self.recommendations.iter().map(|(_, d)| *d).max();
            desired = high.unwrap_or(desired).min(current);
        }
        desired
    }
}

/// Knative's KPA defaults: 2 s tick, target 70% of capacity, 60 s stable window and 6 s
/// panic window; panic when the panic window wants twice the ready instances, and no
/// scale-down while panicking (until a stable window passes without panic); scale-down
/// at most halves per tick.
pub struct Kpa {
    capacity: f64,
    panic_until: Option<u64>,
    panic_peak: u32,
}

impl Kpa {
    pub fn new(capacity: f64) -> Kpa {
        Kpa {
            capacity,
            panic_until: None,
            panic_peak: 0,
        }
    }
}

impl Policy for Kpa {
    fn period(&self) -> u64 {
        2
    }

    fn decide(&mut self, o: &Observed<'_>) -> u32 {
        let per = 0.7 * self.capacity;
        let stable = (o.mean_rate(60) / per).ceil() as u32;
        let panic = (o.mean_rate(6) / per).ceil() as u32;
        let ready = o.ready.max(1);
        if panic as f64 >= 2.0 * ready as f64 {
            if self.panic_until.is_none() {
                self.panic_peak = o.instances;
            }
            self.panic_until = Some(o.now + 60);
        }
        if self.panic_until.is_some_and(|t| o.now >= t) {
            self.panic_until = None;
        }
        let desired = if self.panic_until.is_some() {
            self.panic_peak = self.panic_peak.max(panic).max(stable);
            self.panic_peak
        } else {
            stable
        };
        desired.max(o.instances / 2).max(1)
    }
}

/// Perfect foresight: each instance launched exactly one cold start before it is needed,
/// removed as soon as it is not.
pub struct Oracle {
    needed: Vec<u32>,
    step_s: u64,
    cold_start: u64,
}

impl Oracle {
    pub fn new(steps: &[f64], step_s: u64, capacity: f64, cold_start: u64) -> Oracle {
        let needed = steps
            .iter()
            .map(|c| (c / step_s as f64 / capacity).ceil() as u32)
            .collect();
        Oracle {
            needed,
            step_s,
            cold_start,
        }
    }
}

impl Policy for Oracle {
    fn period(&self) -> u64 {
        1
    }

    fn decide(&mut self, o: &Observed<'_>) -> u32 {
        let first = (o.now / self.step_s) as usize;
        let last = ((o.now + self.cold_start) / self.step_s) as usize;
        self.needed[first..=last.min(self.needed.len() - 1)]
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::sim;

    #[test]
    fn the_floor_meets_a_jump_one_control_interval_after_it_starts() {
        // Minute steps: 10 req/s, then 100; instances of 10 req/s. Two steps are too
        // little history to forecast, so only the reactive floor decides. At 65 s the
        // last 15 s held 10 s at 10 req/s and 5 s at 100 (a mean of 40: 4 instances);
        // the burst window's 5 s all ran at 100.
        let mut p = Presage::new(10.0, 30, 60, 95.0, 1.0, 15);
        let out = sim::run(&[600.0, 6000.0], 60, 10.0, 30, &mut p);
        // One instance until the jump (the service starts with what its first step
        // needs), ten from the first decision that saw it: not 4, 7, then 10.
        assert_eq!(out.schedule, vec![(65, 10)]);
        assert!(p.decisions.iter().all(|(_, d)| d.predictive.is_none()));
    }
}
