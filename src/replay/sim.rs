//! The simulated service a replay scales: per-second arrivals from the trace (uniform
//! within each of its steps), instances that serve `capacity` requests/s once their cold
//! start is over, and the accounting: every request above the ready capacity of its
//! second violates the SLO (served over capacity, or waiting on a cold start); an
//! instance costs from its launch, boot included, until it is removed. The service is
//! running when the trace starts, with the instances its first step needs.

use std::collections::VecDeque;

use serde::Serialize;

/// What a policy may look at when it decides at second `now`: only the past.
pub struct Observed<'a> {
    pub now: u64,
    /// Requests of the seconds before `now`, summed: `prefix[i]` is the first `i`'s.
    prefix: &'a [f64],
    /// The trace's complete steps before `now` (requests per step).
    pub steps: &'a [f64],
    /// Instances launched (booting or ready) and ready.
    pub instances: u32,
    pub ready: u32,
}

impl<'a> Observed<'a> {
    /// What a policy sees at `now`: `prefix` holds the seconds before it (see the field).
    pub fn new(now: u64, prefix: &'a [f64], steps: &'a [f64], instances: u32, ready: u32) -> Self {
        Observed {
            now,
            prefix,
            steps,
            instances,
            ready,
        }
    }

    /// Mean rate of the last `secs` seconds (fewer at the start).
    pub fn mean_rate(&self, secs: u64) -> f64 {
        let n = self.prefix.len() - 1;
        let from = n.saturating_sub(secs as usize);
        if n == from {
            return 0.0;
        }
        (self.prefix[n] - self.prefix[from]) / (n - from) as f64
    }
}

/// A scaling policy: a desired instance count every `period` seconds.
pub trait Policy {
    fn period(&self) -> u64;
    fn decide(&mut self, o: &Observed<'_>) -> u32;
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub requests: f64,
    pub slo_violations: f64,
    pub slo_violation_ratio: f64,
    pub instance_seconds: f64,
    pub scaling_actions: u64,
    /// Violations in the first cold start after a sudden jump (the rate of a step more
    /// than 1.5 times the highest of the cold start before it, and more than one more
    /// instance's worth): the share no forecast of the past could have met.
    pub violations_after_jumps: f64,
    pub jumps: u64,
    /// `(second, target)` at every change of the target.
    #[serde(skip)]
    pub schedule: Vec<(u64, u32)>,
}

/// Runs `policy` over `steps` (requests per `step_s` seconds).
pub fn run(
    steps: &[f64],
    step_s: u64,
    capacity: f64,
    cold_start: u64,
    policy: &mut dyn Policy,
) -> Outcome {
    let total = steps.len() as u64 * step_s;
    let rates: Vec<f64> = (0..total)
        .map(|s| steps[(s / step_s) as usize] / step_s as f64)
        .collect();
    let mut prefix = Vec::with_capacity(rates.len() + 1);
    prefix.push(0.0);
    for r in &rates {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + r);
    }
    let jump_until = jumps(steps, step_s, capacity, cold_start);
    // When each instance is (or was) ready, oldest first. The service is up when the
    // trace starts: with the instances its first step needs, ready.
    let first = steps
        .first()
        .map_or(1, |c| (c / step_s as f64 / capacity).ceil() as usize);
    let mut launched: VecDeque<u64> = std::iter::repeat_n(0, first.max(1)).collect();
    let mut out = Outcome {
        requests: 0.0,
        slo_violations: 0.0,
        slo_violation_ratio: 0.0,
        instance_seconds: 0.0,
        scaling_actions: 0,
        violations_after_jumps: 0.0,
        jumps: jump_until.iter().filter(|j| j.0).count() as u64,
        schedule: Vec::new(),
    };
    let period = policy.period().max(1);
    let mut in_jump_until = 0u64;
    for now in 0..total {
        let ready = launched.iter().filter(|t| **t <= now).count() as u32;
        if now % period == 0 {
            let o = Observed {
                now,
                prefix: &prefix[..=now as usize],
                steps: &steps[..(now / step_s) as usize],
                instances: launched.len() as u32,
                ready,
            };
            let target = policy.decide(&o).max(1);
            let n = launched.len() as u32;
            if target != n {
                out.scaling_actions += 1;
                out.schedule.push((now, target));
                if target > n {
                    launched.extend(std::iter::repeat_n(now + cold_start, (target - n) as usize));
                } else {
                    // The newest (still booting, if any) go first.
                    launched.truncate(target as usize);
                }
            }
        }
        let ready = launched.iter().filter(|t| **t <= now).count() as f64;
        let r = rates[now as usize];
        let over = (r - ready * capacity).max(0.0);
        if now % step_s == 0 {
            if let Some((true, until)) = jump_until.get((now / step_s) as usize) {
                in_jump_until = *until;
            }
        }
        if now < in_jump_until {
            out.violations_after_jumps += over;
        }
        out.requests += r;
        out.slo_violations += over;
        out.instance_seconds += launched.len() as f64;
    }
    out.slo_violation_ratio = out.slo_violations / out.requests.max(1e-9);
    out
}

/// Per step: whether it starts a sudden jump, and until when (s) its first cold start lasts.
fn jumps(steps: &[f64], step_s: u64, capacity: f64, cold_start: u64) -> Vec<(bool, u64)> {
    let back = cold_start.div_ceil(step_s).max(1) as usize;
    steps
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let before = steps[i.saturating_sub(back)..i]
                .iter()
                .copied()
                .fold(f64::NAN, f64::max);
            let jump = i > 0 && c > 1.5 * before && (c - before) / step_s as f64 > capacity;
            (jump, i as u64 * step_s + cold_start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u32);
    impl Policy for Fixed {
        fn period(&self) -> u64 {
            1
        }
        fn decide(&mut self, _: &Observed<'_>) -> u32 {
            self.0
        }
    }

    #[test]
    fn requests_above_ready_capacity_violate_and_boot_time_costs() {
        // 10 s steps of 100, then 300 requests: 10 then 30 req/s.
        let steps = [100.0, 300.0];
        // Instances of 10 req/s, ready 5 s after launch; the first step's one is up at
        // the start, a second is launched at 0 (ready at 5). Seconds 0..10: fine;
        // 10..20: 10 req/s over.
        let out = run(&steps, 10, 10.0, 5, &mut Fixed(2));
        assert_eq!(out.requests, 400.0);
        assert_eq!(out.slo_violations, 100.0);
        assert_eq!(out.instance_seconds, 40.0);
        assert_eq!(out.scaling_actions, 1);
        assert_eq!(
            out.jumps, 1,
            "10 -> 30 req/s is a jump of two instances' worth"
        );
        assert_eq!(out.violations_after_jumps, 50.0, "the first 5 s after it");
    }
}
