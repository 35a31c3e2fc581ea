//! What operators put on top of the planner: rules ("scale up by 2 if predicted load
//! exceeds 80% of capacity"), a cooldown between scale-ups, a cost ceiling per service
//! (price per hour, instance-hours per day) and per tenant, where tier priority decides
//! who gets capacity. Pure functions over numbers; each adjustment says why.
//!
//! Order: planner target ─▶ rules (only raise) ─▶ cooldown (holds a raise) ─▶ the
//! service's ceilings (cap) ─▶ the tenant's ceiling across its services (cap, highest
//! tier first). What a cap leaves unserved is shed by the proxies' admission control,
//! lowest tier first (each tier may fill only its share of a cluster's in-flight limit).

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One rule: when the forecast's upper bound over the lead time exceeds `threshold` of
/// the capacity running now, add `add` instances to what runs now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub if_predicted_utilisation_above: f64,
    pub add: u32,
}

/// A service's policy (`autoscaling.services[]`, or `PUT /v1/autoscaling/{service}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// At least this long between two scale-ups (seconds; default 0).
    #[serde(default)]
    pub cooldown_s: f64,
    /// One instance's price per hour (in the operator's currency; default 0).
    #[serde(default)]
    pub price_per_hour: f64,
    /// The service's cost ceiling per hour (needs `price_per_hour`).
    pub max_cost_per_hour: Option<f64>,
    /// The service's budget of instance-hours over the last 24 hours.
    pub max_instance_hours_per_day: Option<f64>,
    /// The tenant whose ceiling (`autoscaling.tenants`) this service counts against.
    pub tenant: Option<String>,
}

impl Policy {
    /// Field errors, `field: message`; `min` and `max` are the service's instance
    /// counts.
    pub fn check(&self, min: u32, max: u32) -> Vec<(String, String)> {
        let mut e = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let t = r.if_predicted_utilisation_above;
            if !(t.is_finite() && t > 0.0) {
                e.push((
                    format!("rules[{i}].if_predicted_utilisation_above"),
                    "expected a share above 0 (0.8: 80% of capacity)".into(),
                ));
            }
            if r.add == 0 || r.add > max {
                e.push((
                    format!("rules[{i}].add"),
                    format!("expected 1..={max} (the service's max), found {}", r.add),
                ));
            }
        }
        if !(self.cooldown_s.is_finite() && self.cooldown_s >= 0.0) {
            e.push(("cooldown_s".into(), "expected 0 or more seconds".into()));
        }
        if !(self.price_per_hour.is_finite() && self.price_per_hour >= 0.0) {
            e.push(("price_per_hour".into(), "expected 0 or more".into()));
        }
        if let Some(c) = self.max_cost_per_hour {
            if self.price_per_hour <= 0.0 {
                e.push((
                    "max_cost_per_hour".into(),
                    "needs price_per_hour above 0".into(),
                ));
            } else if !(c.is_finite() && c >= self.price_per_hour * f64::from(min)) {
                e.push((
                    "max_cost_per_hour".into(),
                    format!(
                        "expected at least min × price_per_hour ({})",
                        self.price_per_hour * f64::from(min)
                    ),
                ));
            }
        }
        if let Some(h) = self.max_instance_hours_per_day {
            if !(h.is_finite() && h >= 24.0 * f64::from(min)) {
                e.push((
                    "max_instance_hours_per_day".into(),
                    format!("expected at least 24 × min ({})", 24 * min),
                ));
            }
        }
        e
    }
}

/// A tenant's ceiling (`autoscaling.tenants.<name>`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCeiling {
    pub max_cost_per_hour: f64,
}

/// One service's policy state between decisions.
#[derive(Debug, Default)]
pub struct Ledger {
    last_up_s: Option<f64>,
    /// (time s, instances) per decision over the last day.
    usage: VecDeque<(f64, u32)>,
}

const DAY_S: f64 = 86_400.0;

impl Ledger {
    /// Instance-hours used over the last day, up to `now`.
    fn instance_hours(&self, now: f64) -> f64 {
        let mut total = 0.0;
        let mut iter = self.usage.iter().peekable();
        while let Some((t, n)) = iter.next() {
            let end = iter.peek().map_or(now, |(t2, _)| *t2);
            total += (end - t.max(now - DAY_S)).max(0.0) * f64::from(*n);
        }
        total / 3600.0
    }

    /// Records that `instances` run from `now` on.
    pub fn record(&mut self, now: f64, instances: u32, raised: bool) {
        if raised {
            self.last_up_s = Some(now);
        }
        self.usage.push_back((now, instances));
        while self.usage.len() > 1 && self.usage[1].0 <= now - DAY_S {
            self.usage.pop_front();
        }
    }
}

/// Applies rules, cooldown and the service's ceilings to the planner's `target`;
/// `current` runs now, `max` is the service's maximum (a rule never adds past it),
/// `upper_rps` is the forecast's upper bound over the lead time. Returns the target
/// and why it moved.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    policy: &Policy,
    ledger: &Ledger,
    now: f64,
    target: u32,
    current: u32,
    max: u32,
    upper_rps: Option<f64>,
    capacity_rps: f64,
    interval: Duration,
) -> (u32, Vec<String>) {
    let mut t = target;
    let mut why = Vec::new();
    if let Some(upper) = upper_rps {
        let running = f64::from(current.max(1)) * capacity_rps;
        let u = upper / running;
        for r in &policy.rules {
            let raised = current.saturating_add(r.add).min(max.max(current));
            if u > r.if_predicted_utilisation_above && t < raised {
                t = raised;
                why.push(format!(
                    "rule: predicted utilisation {:.0}% > {:.0}% adds {} to {current}{}",
                    u * 100.0,
                    r.if_predicted_utilisation_above * 100.0,
                    r.add,
                    if raised < current.saturating_add(r.add) {
                        format!(" (max {max})")
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    if t > current && current > 0 {
        if let Some(last) = ledger.last_up_s {
            if now - last < policy.cooldown_s {
                why.push(format!(
                    "cooldown: last scale-up {:.0} s ago (< {} s) holds {current}",
                    now - last,
                    policy.cooldown_s
                ));
                t = current;
            }
        }
    }
    if let (Some(max), true) = (policy.max_cost_per_hour, policy.price_per_hour > 0.0) {
        let cap = (max / policy.price_per_hour + 1e-9).floor() as u32;
        if t > cap {
            why.push(format!(
                "cost ceiling {max}/h at {}/h each caps {t} at {cap}",
                policy.price_per_hour
            ));
            t = cap;
        }
    }
    if let Some(budget) = policy.max_instance_hours_per_day {
        let used = ledger.instance_hours(now);
        // What the rest of the day's budget allows if spent evenly over the next interval
        // is too generous; keep enough to run `t` until the next decision, else fall
        // back to what was running.
        let next = interval.as_secs_f64() / 3600.0;
        if used + f64::from(t) * next > budget && t > current {
            why.push(format!(
                "instance-hours budget {budget}/day ({used:.1} used) holds {current}"
            ));
            t = current;
        }
    }
    (t, why)
}

/// A service's claim on its tenant's ceiling.
#[derive(Debug, Clone)]
pub struct Claim {
    pub service: String,
    /// Priority of its highest active tier (higher is served first).
    pub priority: i32,
    pub min: u32,
    pub target: u32,
    pub price_per_hour: f64,
}

/// Shares a tenant's `max_cost_per_hour` among its services: every service gets its
/// minimum, then the highest tier's services get theirs first. Returns each service's
/// granted count in the order of `claims`.
pub fn share(max_cost_per_hour: f64, claims: &[Claim]) -> Vec<u32> {
    let mut granted: Vec<u32> = claims.iter().map(|c| c.min.min(c.target)).collect();
    let mut left = max_cost_per_hour
        - claims
            .iter()
            .zip(&granted)
            .map(|(c, g)| c.price_per_hour * f64::from(*g))
            .sum::<f64>();
    let mut order: Vec<usize> = (0..claims.len()).collect();
    order.sort_by(|a, b| {
        claims[*b]
            .priority
            .cmp(&claims[*a].priority)
            .then_with(|| claims[*a].service.cmp(&claims[*b].service))
    });
    for i in order {
        let c = &claims[i];
        let want = c.target - granted[i];
        let affordable = if c.price_per_hour > 0.0 {
            ((left / c.price_per_hour) + 1e-9).floor().max(0.0) as u32
        } else {
            want
        };
        let give = want.min(affordable);
        granted[i] += give;
        left -= c.price_per_hour * f64::from(give);
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(5);

    #[test]
    fn a_rule_adds_instances_when_the_forecast_nears_capacity() {
        let p = Policy {
            rules: vec![Rule {
                if_predicted_utilisation_above: 0.8,
                add: 2,
            }],
            ..Policy::default()
        };
        let l = Ledger::default();
        // 3 instances of 10 req/s; the forecast's bound is 27 req/s: 90% > 80%.
        let (t, why) = apply(&p, &l, 0.0, 3, 3, 10, Some(27.0), 10.0, I);
        assert_eq!(t, 5);
        assert!(
            why[0].starts_with("rule: predicted utilisation 90% > 80%"),
            "{why:?}"
        );
        // 70%: the planner's target stands.
        assert_eq!(
            apply(&p, &l, 0.0, 3, 3, 10, Some(21.0), 10.0, I),
            (3, vec![])
        );
        // A rule never adds past the service's maximum, however much it asks for.
        let (t, why) = apply(&p, &l, 0.0, 9, 9, 10, Some(81.0), 10.0, I);
        assert_eq!(t, 10);
        assert!(why[0].ends_with("adds 2 to 9 (max 10)"), "{why:?}");
        let huge = Policy {
            rules: vec![Rule {
                if_predicted_utilisation_above: 0.8,
                add: u32::MAX,
            }],
            ..Policy::default()
        };
        assert_eq!(apply(&huge, &l, 0.0, 3, 3, 10, Some(27.0), 10.0, I).0, 10);
        assert_eq!(
            huge.check(1, 10),
            [(
                "rules[0].add".to_string(),
                "expected 1..=10 (the service's max), found 4294967295".to_string()
            )]
        );
    }

    #[test]
    fn cooldown_holds_a_second_raise_and_ceilings_cap() {
        let p = Policy {
            cooldown_s: 30.0,
            price_per_hour: 0.25,
            max_cost_per_hour: Some(1.0),
            ..Policy::default()
        };
        let mut l = Ledger::default();
        l.record(100.0, 3, true);
        let (t, why) = apply(&p, &l, 110.0, 4, 3, 10, None, 10.0, I);
        assert_eq!(t, 3, "{why:?}");
        assert!(why[0].starts_with("cooldown"));
        let (t, why) = apply(&p, &l, 140.0, 9, 3, 10, None, 10.0, I);
        assert_eq!(t, 4, "1.0/h at 0.25/h is 4 instances: {why:?}");
    }

    #[test]
    fn the_cost_ceiling_holds_under_a_forecast_spike() {
        use crate::planner::{Peak, Planner, PlannerConfig};
        let cfg = PlannerConfig::new(10.0, Duration::from_secs(30), Duration::from_secs(60));
        let mut planner = Planner::new(cfg);
        // A campaign in the calendar: the forecast's bound jumps to 1000 req/s.
        let spike = Peak {
            upper_rps: 1000.0,
            point_rps: 800.0,
            model: "calendar".into(),
        };
        let d = planner.decide_with(0.0, Some(spike), 20.0);
        assert_eq!(d.target, 100, "the planner alone would launch 100: {d:?}");
        let p = Policy {
            price_per_hour: 0.5,
            max_cost_per_hour: Some(5.0),
            rules: vec![Rule {
                if_predicted_utilisation_above: 0.8,
                add: 50,
            }],
            ..Policy::default()
        };
        let (t, why) = apply(
            &p,
            &Ledger::default(),
            0.0,
            d.target,
            3,
            planner.config().max_instances,
            d.forecast_upper_rps,
            10.0,
            I,
        );
        assert_eq!(t, 10, "5.0/h at 0.5/h: {why:?}");
        assert!(
            why.iter().any(|w| w.starts_with("cost ceiling 5/h")),
            "{why:?}"
        );
    }

    #[test]
    fn the_daily_instance_hours_budget_stops_raises_once_spent() {
        let p = Policy {
            max_instance_hours_per_day: Some(48.0),
            ..Policy::default()
        };
        let mut l = Ledger::default();
        // 3 instances for 16 hours: 48 instance-hours, the budget.
        l.record(0.0, 3, true);
        let now = 16.0 * 3600.0;
        assert!((l.instance_hours(now) - 48.0).abs() < 1e-6);
        let (t, why) = apply(&p, &l, now, 5, 3, 10, None, 10.0, I);
        assert_eq!(t, 3, "{why:?}");
        // A lower target is always allowed.
        assert_eq!(apply(&p, &l, now, 2, 3, 10, None, 10.0, I).0, 2);
    }

    #[test]
    fn a_tenant_ceiling_serves_the_highest_tier_first_after_every_minimum() {
        let claim = |service: &str, priority, min, target| Claim {
            service: service.into(),
            priority,
            min,
            target,
            price_per_hour: 1.0,
        };
        let claims = [
            claim("batch", 1, 1, 6),
            claim("checkout", 3, 1, 4),
            claim("search", 2, 2, 3),
        ];
        // 8/h: minimums take 4; checkout (gold) gets its 3 more; search (silver) 1 more.
        assert_eq!(share(8.0, &claims), vec![1, 4, 3]);
        assert_eq!(share(6.0, &claims), vec![1, 3, 2]);
        assert_eq!(share(100.0, &claims), vec![6, 4, 3]);
    }
}
