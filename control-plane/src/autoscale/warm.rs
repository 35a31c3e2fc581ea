//! Warm pools: instances started ahead of the calls the behaviour profiler predicts
//! from active users, reserved for those users' QoS tier. Each proxy holds a warm
//! instance out of general rotation and sends it only its tier's requests (the
//! interceptor), so the capacity started for predicted Gold users is there when they
//! call, not taken by whoever came first.
//!
//! ```text
//!  profiler: each active user's predicted next services over the window
//!     ─▶ calls per (service, tier of the user) ─▶ × the tier's weight
//!     ─▶ instances = ⌈calls / window / capacity⌉ (none under `min_calls`), at most `max`
//!     ─▶ kept for the window after the last prediction that asked for them
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

/// One service's warm pool between decisions.
#[derive(Debug, Default)]
pub struct WarmPool {
    /// Per tier, the sizes asked for during the last window: (time s, size).
    recent: BTreeMap<String, VecDeque<(f64, u32)>>,
}

impl WarmPool {
    /// The warm instances per tier at `now`, from the calls predicted per tier over the
    /// window; with why, when any.
    pub fn size(
        &mut self,
        cfg: &WarmPoolConfig,
        now: f64,
        calls: &BTreeMap<String, f64>,
        capacity_rps: f64,
    ) -> (BTreeMap<String, u32>, Option<String>) {
        let window = cfg.window().as_secs_f64();
        let max = cfg.max.unwrap_or(2);
        let mut out = BTreeMap::new();
        let mut why = Vec::new();
        for (tier, weight) in cfg.weights() {
            let c = calls.get(&tier).copied().unwrap_or(0.0) * weight;
            let wanted = if c < cfg.min_calls.unwrap_or(1.0) {
                0
            } else {
                ((c / window / capacity_rps).ceil() as u32).clamp(1, max)
            };
            let recent = self.recent.entry(tier.clone()).or_default();
            while recent.front().is_some_and(|(t, _)| *t <= now - window) {
                recent.pop_front();
            }
            recent.push_back((now, wanted));
            let held = recent.iter().map(|(_, n)| *n).max().unwrap_or(0);
            if held > 0 {
                why.push(format!(
                    "warm {tier}: {held} for {c:.1} predicted calls in {window:.0} s{}",
                    if held > wanted {
                        " (kept for its window)"
                    } else {
                        ""
                    }
                ));
                out.insert(tier, held);
            }
        }
        (out, (!why.is_empty()).then(|| why.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicted_calls_of_reserved_tiers_size_the_pool_which_outlives_them_by_its_window() {
        let cfg = WarmPoolConfig {
            tiers: [("gold".to_string(), 1.0), ("silver".to_string(), 0.5)].into(),
            window: Some(Duration::from_secs(60)),
            max: Some(3),
            min_calls: None,
        };
        let mut w = WarmPool::default();
        // 600 gold calls a minute at 4 req/s per instance: 10 req/s needs 3 (the max);
        // silver's 30 calls count half: 15, one instance; bronze is not reserved for.
        let calls = [
            ("gold".to_string(), 600.0),
            ("silver".to_string(), 30.0),
            ("bronze".to_string(), 900.0),
        ]
        .into();
        let (pool, why) = w.size(&cfg, 0.0, &calls, 4.0);
        assert_eq!(
            pool,
            [("gold".to_string(), 3), ("silver".to_string(), 1)].into()
        );
        assert!(why
            .unwrap()
            .contains("warm gold: 3 for 600.0 predicted calls"));
        // The users go quiet: the pool stays for the window, then is released.
        let none = BTreeMap::new();
        assert_eq!(w.size(&cfg, 30.0, &none, 4.0).0.get("gold"), Some(&3));
        assert!(w.size(&cfg, 61.0, &none, 4.0).0.is_empty());
        // Under one predicted call: nothing warmed.
        let few = [("gold".to_string(), 0.5)].into();
        assert!(w.size(&cfg, 200.0, &few, 4.0).0.is_empty());
    }
}
