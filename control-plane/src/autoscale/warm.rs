//! Warm pools: instances started ahead of the calls the behaviour profiler predicts
//! from active users, reserved for those users' QoS tier, or for one user. Each proxy
//! holds a warm instance out of general rotation and sends it only the requests of its
//! reservation (the interceptor), so the capacity started for predicted Gold users is
//! there when they call, not taken by whoever came first.
//!
//! ```text
//!  profiler: each active user's predicted next services over the window
//!     ─▶ × the weight of the user's tier
//!     ─▶ the `users` busiest predicted users (at least `min_calls`): one instance each,
//!        reserved `user:<id>`
//!     ─▶ the others' calls per tier: ⌈calls / window / capacity⌉ instances (none under
//!        `min_calls`), at most `max`, reserved `tier:<name>`
//!     ─▶ each kept for the window after the last prediction that asked for it
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Deserialize;

use crate::config::humantime_opt;

/// `autoscaling.services[].warm_pool`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmPoolConfig {
    /// Share of a tier's predicted calls given warm capacity (default: gold and
    /// platinum 1.0; tiers not listed get none).
    #[serde(default)]
    pub tiers: BTreeMap<String, f64>,
    /// How far ahead calls are predicted, and how long warm instances are kept after
    /// the last prediction that asked for them (default 60s).
    #[serde(default, with = "humantime_opt")]
    pub window: Option<Duration>,
    /// Warm instances per tier at most (default 2).
    pub max: Option<u32>,
    /// Fewer predicted calls in the window than this warm nothing (default 1).
    pub min_calls: Option<f64>,
    /// Instances reserved for single users at most: the busiest predicted users of a
    /// weighted tier get one each (default 0: tier pools only).
    #[serde(default)]
    pub users: u32,
}

impl WarmPoolConfig {
    pub fn window(&self) -> Duration {
        self.window.unwrap_or(Duration::from_secs(60))
    }

    fn weights(&self) -> BTreeMap<String, f64> {
        if self.tiers.is_empty() {
            [("gold".to_string(), 1.0), ("platinum".to_string(), 1.0)].into()
        } else {
            self.tiers.clone()
        }
    }

    pub fn check(&self) -> Vec<String> {
        let mut e = Vec::new();
        for (t, w) in &self.tiers {
            if !(w.is_finite() && *w >= 0.0 && *w <= 1.0) {
                e.push(format!("tiers.{t}: expected a share from 0 to 1"));
            }
        }
        if self.window.is_some_and(|w| w < Duration::from_secs(1)) {
            e.push("window: expected at least 1s".into());
        }
        if self.min_calls.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
            e.push("min_calls: expected a number above 0".into());
        }
        if self.max == Some(0) {
            e.push("max: expected at least 1 (or no warm_pool)".into());
        }
        e
    }
}

/// One user's predicted calls to a service over the window, and the user's tier.
#[derive(Debug, Clone, PartialEq)]
pub struct UserCalls {
    pub user: String,
    pub tier: String,
    pub calls: f64,
}

/// A user predicted to call a composite service calls its constituents too: each
/// workflow's predicted calls are added to those of every service it calls (a user's
/// calls to a service summed, whichever workflow they come through).
pub fn through_workflows(
    predicted: &mut std::collections::BTreeMap<String, Vec<UserCalls>>,
    constituents: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) {
    for (workflow, services) in constituents {
        let Some(calls) = predicted.get(workflow).cloned() else {
            continue;
        };
        for service in services {
            let list = predicted.entry(service.clone()).or_default();
            for c in &calls {
                match list.iter_mut().find(|u| u.user == c.user) {
                    Some(u) => u.calls += c.calls,
                    None => list.push(c.clone()),
                }
            }
        }
    }
}

/// One service's warm pool between decisions.
#[derive(Debug, Default)]
pub struct WarmPool {
    /// Per reservation (`tier:<name>`, `user:<id>`), the sizes asked for during the last
    /// window: (time s, size).
    recent: BTreeMap<String, VecDeque<(f64, u32)>>,
}

impl WarmPool {
    /// The warm instances per reservation at `now`, from the predicted calls of each
    /// user over the window; with why, when any.
    pub fn size(
        &mut self,
        cfg: &WarmPoolConfig,
        now: f64,
        users: &[UserCalls],
        capacity_rps: f64,
    ) -> (BTreeMap<String, u32>, Option<String>) {
        let window = cfg.window().as_secs_f64();
        let max = cfg.max.unwrap_or(2);
        let min_calls = cfg.min_calls.unwrap_or(1.0);
        let weights = cfg.weights();
        let weighted = |u: &UserCalls| u.calls * weights.get(&u.tier).copied().unwrap_or(0.0);
        // The busiest users first: one instance each, their calls out of their tier's.
        let mut ranked: Vec<&UserCalls> =
            users.iter().filter(|u| weighted(u) >= min_calls).collect();
        ranked.sort_by(|a, b| {
            weighted(b)
                .total_cmp(&weighted(a))
                .then(a.user.cmp(&b.user))
        });
        ranked.truncate(cfg.users as usize);
        let mut asked: BTreeMap<String, (u32, f64)> = BTreeMap::new();
        for u in &ranked {
            asked.insert(format!("user:{}", u.user), (1, weighted(u)));
        }
        let mut per_tier: BTreeMap<&str, f64> = BTreeMap::new();
        for u in users.iter().filter(|u| !ranked.contains(u)) {
            *per_tier.entry(&u.tier).or_default() += weighted(u);
        }
        for tier in weights.keys() {
            let c = per_tier.get(tier.as_str()).copied().unwrap_or(0.0);
            let wanted = if c < min_calls {
                0
            } else {
                ((c / window / capacity_rps).ceil() as u32).clamp(1, max)
            };
            asked.insert(format!("tier:{tier}"), (wanted, c));
        }
        // Every reservation asked for now or during the window: held at its highest.
        for key in asked.keys() {
            self.recent.entry(key.clone()).or_default();
        }
        let mut out = BTreeMap::new();
        let mut why = Vec::new();
        self.recent.retain(|key, recent| {
            let (wanted, c) = asked.get(key).copied().unwrap_or((0, 0.0));
            while recent.front().is_some_and(|(t, _)| *t <= now - window) {
                recent.pop_front();
            }
            recent.push_back((now, wanted));
            let held = recent.iter().map(|(_, n)| *n).max().unwrap_or(0);
            if held > 0 {
                why.push(format!(
                    "warm {key}: {held} for {c:.1} predicted calls in {window:.0} s{}",
                    if held > wanted {
                        " (kept for its window)"
                    } else {
                        ""
                    }
                ));
                out.insert(key.clone(), held);
            }
            // A user's reservation is forgotten once its window has passed.
            held > 0 || key.starts_with("tier:")
        });
        (out, (!why.is_empty()).then(|| why.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicted_calls_to_a_workflow_reach_its_constituents() {
        let calls = |user: &str, n: f64| UserCalls {
            user: user.into(),
            tier: "gold".into(),
            calls: n,
        };
        let mut p = std::collections::BTreeMap::from([
            ("checkout".to_string(), vec![calls("u1", 2.0)]),
            (
                "users".to_string(),
                vec![calls("u1", 1.0), calls("u2", 3.0)],
            ),
        ]);
        let c = std::collections::BTreeMap::from([(
            "checkout".to_string(),
            std::collections::BTreeSet::from(["users".to_string(), "payments".to_string()]),
        )]);
        through_workflows(&mut p, &c);
        assert_eq!(p["users"], [calls("u1", 3.0), calls("u2", 3.0)]);
        assert_eq!(p["payments"], [calls("u1", 2.0)]);
    }

    fn u(user: &str, tier: &str, calls: f64) -> UserCalls {
        UserCalls {
            user: user.into(),
            tier: tier.into(),
            calls,
        }
    }

    fn pool(v: &[(&str, u32)]) -> BTreeMap<String, u32> {
        v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn predicted_calls_of_reserved_tiers_size_the_pool_which_outlives_them_by_its_window() {
        let cfg = WarmPoolConfig {
            tiers: [("gold".to_string(), 1.0), ("silver".to_string(), 0.5)].into(),
            window: Some(Duration::from_secs(60)),
            max: Some(3),
            min_calls: None,
            users: 0,
        };
        let mut w = WarmPool::default();
        // 600 gold calls a minute at 4 req/s per instance: 10 req/s needs 3 (the max);
        // silver's 30 calls count half: 15, one instance; bronze is not reserved for.
        let calls = [
            u("a", "gold", 400.0),
            u("b", "gold", 200.0),
            u("c", "silver", 30.0),
            u("d", "bronze", 900.0),
        ];
        let (got, why) = w.size(&cfg, 0.0, &calls, 4.0);
        assert_eq!(got, pool(&[("tier:gold", 3), ("tier:silver", 1)]));
        assert!(why
            .unwrap()
            .contains("warm tier:gold: 3 for 600.0 predicted calls"));
        // The users go quiet: the pool stays for the window, then is released.
        assert_eq!(w.size(&cfg, 30.0, &[], 4.0).0.get("tier:gold"), Some(&3));
        assert!(w.size(&cfg, 61.0, &[], 4.0).0.is_empty());
        // Under one predicted call: nothing warmed.
        assert!(w
            .size(&cfg, 200.0, &[u("a", "gold", 0.5)], 4.0)
            .0
            .is_empty());
    }

    #[test]
    fn the_busiest_predicted_users_get_an_instance_each_and_leave_their_tier_pool() {
        let cfg = WarmPoolConfig {
            tiers: [("gold".to_string(), 1.0), ("silver".to_string(), 0.5)].into(),
            window: Some(Duration::from_secs(60)),
            max: Some(3),
            min_calls: Some(2.0),
            users: 2,
        };
        let mut w = WarmPool::default();
        // Weighted: alice 30 (gold), carol 20 (silver 40 x 0.5), bob 10, dave 1 (under
        // min_calls alone, but his tier's pool counts him), erin is bronze (weight 0).
        let calls = [
            u("bob", "gold", 10.0),
            u("alice", "gold", 30.0),
            u("carol", "silver", 40.0),
            u("dave", "gold", 1.5),
            u("erin", "bronze", 500.0),
        ];
        let (got, _) = w.size(&cfg, 0.0, &calls, 4.0);
        assert_eq!(
            got,
            pool(&[("user:alice", 1), ("user:carol", 1), ("tier:gold", 1)]),
            "bob and dave (11.5 calls) share gold's pool; silver has nobody left"
        );
        // Alice stops being predicted: her instance is kept for the window, then
        // released, and her reservation forgotten.
        let later = [u("bob", "gold", 10.0)];
        let (got, why) = w.size(&cfg, 30.0, &later, 4.0);
        assert_eq!(got.get("user:alice"), Some(&1));
        assert_eq!(
            got.get("user:bob"),
            Some(&1),
            "bob is now among the busiest"
        );
        assert!(why
            .unwrap()
            .contains("warm user:alice: 1 for 0.0 predicted calls in 60 s (kept for its window)"));
        let (got, _) = w.size(&cfg, 61.0, &later, 4.0);
        assert_eq!(got.get("user:alice"), None);
        assert!(!w.recent.contains_key("user:alice"));
    }
}
