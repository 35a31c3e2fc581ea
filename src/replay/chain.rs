//! A replay with a dependency: the trace arrives at a caller scaled by Presage's planner,
//! and each request it serves makes `ratio` calls to a dependency that scales
//! reactively on what it receives (the planner's reactive floor alone: nothing forecasts
//! its load), up to `max` instances. With `--negotiate`, as in the live autoscaler
//! (`autoscale::negotiation`, whose code this calls): the dependency is kept at what the
//! caller passes on (the caller's demand, its forecast's bound included, up to its
//! capacity, times the ratio), and each scale-up of the caller is first negotiated with
//! it: the caller gets what the dependency can carry, and the dependency scales in the
//! same second for it.
//!
//! Accounting per second, in caller requests: those above the caller's ready capacity
//! violate; of the served ones, those whose calls exceed the dependency's ready capacity
//! (its excess / ratio) violate too. Instance-seconds count both services.

use std::collections::VecDeque;
use std::time::Duration;

use presage_control_plane::autoscale::negotiation::{demands, Capacity, Managers};
use presage_control_plane::deps::{Edge, Kind};
use presage_control_plane::negotiate::{self, Request};
use presage_control_plane::planner::{Planner, PlannerConfig, OBSERVED_WINDOW};
use serde::Serialize;

use super::policies::Presage;
use super::sim::{Observed, Policy};

/// The dependency.
pub struct Dependency {
    pub ratio: f64,
    pub capacity: f64,
    pub max: u32,
    pub cold_start: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub requests: f64,
    pub slo_violations: f64,
    pub slo_violation_ratio: f64,
    /// Of them, at the dependency (served by the caller, over the dependency's capacity).
    pub violations_at_dependency: f64,
    pub instance_seconds: f64,
    pub dependency_instance_seconds: f64,
    pub scaling_actions: u64,
    pub negotiations: u64,
    /// Negotiations that granted less than the planner wanted.
    pub negotiated_down: u64,
}

/// Instances launched (ready from their time), oldest first.
struct Pool {
    launched: VecDeque<u64>,
    cold_start: u64,
}

impl Pool {
    fn ready(&self, now: u64) -> u32 {
        self.launched.iter().filter(|t| **t <= now).count() as u32
    }

    fn set(&mut self, now: u64, target: u32) -> bool {
        let n = self.launched.len() as u32;
        if target > n {
            let at = now + self.cold_start;
            self.launched
                .extend(std::iter::repeat_n(at, (target - n) as usize));
        } else {
            self.launched.truncate(target as usize);
        }
        target != n
    }
}

pub fn run(
    steps: &[f64],
    step_s: u64,
    capacity: f64,
    cold_start: u64,
    caller: &mut Presage,
    dep: &Dependency,
    negotiate: bool,
) -> Outcome {
    let total = steps.len() as u64 * step_s;
    let rates: Vec<f64> = (0..total)
        .map(|s| steps[(s / step_s) as usize] / step_s as f64)
        .collect();
    let mut prefix = vec![0.0];
    for r in &rates {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + r);
    }
    // The dependency's planner: its reactive floor on what it receives.
    let mut cfg = PlannerConfig::new(
        dep.capacity,
        Duration::from_secs(dep.cold_start),
        Duration::from_secs(step_s),
    );
    cfg.max_instances = dep.max;
    let mut dep_planner = Planner::new(cfg);
    let first = |rate: f64, cap: f64| ((rate / cap).ceil() as u32).max(1);
    let r0 = rates.first().copied().unwrap_or(0.0);
    let mut front = Pool {
        launched: std::iter::repeat_n(0, first(r0, capacity) as usize).collect(),
        cold_start,
    };
    let mut back = Pool {
        launched: std::iter::repeat_n(0, first(r0 * dep.ratio, dep.capacity).min(dep.max) as usize)
            .collect(),
        cold_start: dep.cold_start,
    };
    // Calls the dependency received per second (for its observed rate).
    let mut received = vec![0.0];
    let edges = [Edge {
        from: "caller".into(),
        to: "dependency".into(),
        kind: Kind::Mandatory,
        ratio: Some(dep.ratio),
        source: "manual",
        manual: None,
        discovered: None,
    }];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let mut out = Outcome {
        requests: 0.0,
        slo_violations: 0.0,
        slo_violation_ratio: 0.0,
        violations_at_dependency: 0.0,
        instance_seconds: 0.0,
        dependency_instance_seconds: 0.0,
        scaling_actions: 0,
        negotiations: 0,
        negotiated_down: 0,
    };
    let period = caller.period().max(1);
    for now in 0..total {
        if now % period == 0 {
            let window = OBSERVED_WINDOW.as_secs() as usize;
            let n = received.len() - 1;
            let dep_rate = (received[n] - received[n.saturating_sub(window)])
                / (n - n.saturating_sub(window)).max(1) as f64;
            let mut dep_target = dep_planner.decide_with(now as f64, None, dep_rate).target;
            let o = Observed::new(
                now,
                &prefix[..=now as usize],
                &steps[..(now / step_s) as usize],
                front.launched.len() as u32,
                front.ready(now),
            );
            let mut target = caller.decide(&o).max(1);
            let current = front.launched.len() as u32;
            if negotiate {
                let own = [
                    (
                        "caller".to_string(),
                        o.mean_rate(OBSERVED_WINDOW.as_secs())
                            .max(caller.last_upper_rps.unwrap_or(0.0)),
                    ),
                    ("dependency".to_string(), dep_rate),
                ]
                .into();
                let cap_now = [("caller".to_string(), f64::from(current) * capacity)].into();
                let c = Capacity {
                    per_instance: dep.capacity,
                    instances: dep_target,
                    limit: dep.max,
                    demand_rps: demands(&own, &cap_now, &edges)["dependency"],
                    cold_start_ms: dep.cold_start as i64 * 1000,
                    scaled: Some(0),
                };
                // What the caller passes on, the dependency is sized for first.
                dep_target = dep_target.max(c.required());
                let mut m = Managers {
                    now_ms: now as i64 * 1000,
                    services: [(
                        "dependency".to_string(),
                        Capacity {
                            instances: dep_target,
                            ..c
                        },
                    )]
                    .into(),
                    committed: Default::default(),
                };
                let req = Request {
                    service: "caller",
                    current,
                    wanted: target,
                    capacity_rps: capacity,
                    extra_rps: f64::from(target.saturating_sub(current)) * capacity,
                    start_ms: (now + cold_start) as i64 * 1000,
                    later_ms: cold_start as i64 * 1000,
                    edges: &edges,
                };
                if target > current {
                    // In-process managers answer at once: the exchanges' timers never run.
                    let n = rt.block_on(negotiate::negotiate(
                        out.negotiations,
                        now as i64 * 1000,
                        &req,
                        negotiate::Exchanges::default(),
                        &mut m,
                    ));
                    out.negotiations += 1;
                    if n.granted < target {
                        out.negotiated_down += 1;
                    }
                    target = n.granted.max(current);
                    dep_target = dep_target.max(m.services["dependency"].instances);
                }
            }
            out.scaling_actions += u64::from(front.set(now, target));
            out.scaling_actions += u64::from(back.set(now, dep_target.max(1)));
        }
        let r = rates[now as usize];
        let served = r.min(f64::from(front.ready(now)) * capacity);
        let calls = served * dep.ratio;
        let dep_over = (calls - f64::from(back.ready(now)) * dep.capacity).max(0.0);
        received.push(received.last().copied().unwrap_or(0.0) + calls);
        out.requests += r;
        out.slo_violations += (r - served) + dep_over / dep.ratio;
        out.violations_at_dependency += dep_over / dep.ratio;
        out.instance_seconds += (front.launched.len() + back.launched.len()) as f64;
        out.dependency_instance_seconds += back.launched.len() as f64;
    }
    out.slo_violation_ratio = out.slo_violations / out.requests.max(1e-9);
    out
}
