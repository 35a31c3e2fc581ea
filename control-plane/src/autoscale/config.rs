//! `autoscaling:` in the control plane's YAML: which services the planner scales, how
//! much one instance serves, the bounds and delays, and the actuator.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

use crate::actuate::ActuatorConfig;
use crate::config::humantime_opt;
use crate::planner::PlannerConfig;

use super::policy::{Policy, TenantCeiling};
use super::warm::WarmPoolConfig;

/// Defaults.
pub const INTERVAL: Duration = Duration::from_secs(5);
const COLD_START: Duration = Duration::from_secs(5);
const MAX_INSTANCES: u32 = 10;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscalingConfig {
    /// How often every scaled service is decided (default 5s).
    #[serde(default, with = "humantime_opt")]
    pub interval: Option<Duration>,
    /// Read with their line and column, so a bad one is reported there.
    #[serde(default, deserialize_with = "checked")]
    pub services: Vec<ScaledService>,
    /// Cost ceilings shared by the services that name the tenant in their policy.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantCeiling>,
}

/// One scaled service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaledService {
    pub service: String,
    /// Requests per second one instance serves within its latency target.
    pub capacity_rps: f64,
    /// Bounds on the instance count (defaults 1 and 10).
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// Interval level (50, 80 or 95) provisioned for. Absent: the one the highest QoS
    /// tier seen in the service's last minute of traffic asks for (Bronze: the point
    /// forecast, Silver: 80%, Gold and above: 95%).
    pub level: Option<f64>,
    /// The cold start assumed until the actuator has measured one (default 5s).
    #[serde(default, with = "humantime_opt")]
    pub cold_start: Option<Duration>,
    /// A lower target is applied once it has held this long (default 60s).
    #[serde(default, with = "humantime_opt")]
    pub scale_down_delay: Option<Duration>,
    /// Share of capacity the reactive floor plans to use (default 0.8).
    pub floor_utilisation: Option<f64>,
    /// Plan from the forecast (default true); false leaves the reactive floor alone (the
    /// "prediction off" arm of a comparison).
    pub predictive: Option<bool>,
    /// Learn the per-instance capacity from telemetry (default true; needs a QoS
    /// profile's latency target in the traffic).
    pub learn_capacity: Option<bool>,
    /// Rules, cooldown and cost ceilings on top of the planner (also `PUT
    /// /v1/autoscaling/{service}/policy`).
    #[serde(default)]
    pub policy: Policy,
    /// Warm instances for the users the behaviour profiler predicts, by tier.
    pub warm_pool: Option<WarmPoolConfig>,
    pub actuator: ActuatorConfig,
    /// Line and column in the config file, when read from one.
    #[serde(skip)]
    pub at: Option<(u64, u64)>,
}

/// Reads the services with where each is in the file, for `AutoscalingConfig::check`.
fn checked<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ScaledService>, D::Error> {
    Ok(Vec::<serde_saphyr::Spanned<ScaledService>>::deserialize(d)?
        .into_iter()
        .map(|s| {
            let mut v = s.value;
            let l = s.referenced;
            v.at = (l.line() > 0).then(|| (l.line(), l.column()));
            v
        })
        .collect())
}

impl ScaledService {
    /// What is wrong with this service's settings on their own, as `field: message`.
    pub fn field_errors(&self) -> Vec<String> {
        let s = self;
        let mut errors = Vec::new();
        let mut err = |field: &str, msg: String| errors.push(format!("{field}: {msg}"));
        if !(s.capacity_rps.is_finite() && s.capacity_rps > 0.0) {
            err(
                "capacity_rps",
                format!("expected a rate above 0, found {}", s.capacity_rps),
            );
        }
        let (min, max) = s.bounds();
        if max == 0 || min > max {
            err(
                "max",
                format!("expected at least 1 and at least min ({min}), found {max}"),
            );
        }
        if s.level.is_some_and(|l| !(l > 0.0 && l < 100.0)) {
            err("level", "expected a percentage between 0 and 100".into());
        }
        if s.floor_utilisation.is_some_and(|f| !(f > 0.0 && f <= 1.0)) {
            err("floor_utilisation", "expected a share in (0, 1]".into());
        }
        for e in s.actuator.check() {
            err("actuator", e);
        }
        for e in s.warm_pool.iter().flat_map(|w| w.check()) {
            err("warm_pool", e);
        }
        for (field, msg) in s.policy.check(min, max) {
            err(&format!("policy.{field}"), msg);
        }
        errors
    }

    /// The service's minimum and maximum instance counts.
    pub fn bounds(&self) -> (u32, u32) {
        (self.min.unwrap_or(1), self.max.unwrap_or(MAX_INSTANCES))
    }

    /// The planner's settings (the level is chosen per decision).
    pub fn planner(&self, interval: Duration) -> PlannerConfig {
        let mut p = PlannerConfig::new(
            self.capacity_rps,
            self.cold_start.unwrap_or(COLD_START),
            Duration::from_secs(60),
        );
        p.interval = interval;
        (p.min_instances, p.max_instances) = self.bounds();
        if let Some(d) = self.scale_down_delay {
            p.scale_down_delay = d;
        }
        if let Some(f) = self.floor_utilisation {
            p.floor_utilisation = f;
        }
        p
    }
}

impl AutoscalingConfig {
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(INTERVAL)
    }

    /// Field errors, as `autoscaling.services[i].field: message`, or with the service's
    /// place in the file as `@line:col: autoscaling.services[i]: field: message`.
    pub fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self
            .interval
            .is_some_and(|d| d < Duration::from_millis(100))
        {
            errors.push("autoscaling.interval: expected at least 100ms".to_string());
        }
        for (name, t) in &self.tenants {
            if !(t.max_cost_per_hour.is_finite() && t.max_cost_per_hour > 0.0) {
                errors.push(format!(
                    "autoscaling.tenants.{name}.max_cost_per_hour: expected a cost above 0"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            for e in s.field_errors() {
                match s.at {
                    Some((line, col)) => {
                        errors.push(format!("@{line}:{col}: autoscaling.services[{i}]: {e}"))
                    }
                    None => errors.push(format!("autoscaling.services[{i}].{e}")),
                }
            }
            let mut err = |field: &str, msg: String| {
                errors.push(format!("autoscaling.services[{i}].{field}: {msg}"));
            };
            if s.service.is_empty() {
                err("service", "expected a service name".into());
            } else if !seen.insert(&s.service) {
                err("service", format!("{:?} is scaled twice", s.service));
            }
            if let Some(t) = s
                .policy
                .tenant
                .as_ref()
                .filter(|t| !self.tenants.contains_key(*t))
            {
                err(
                    "policy.tenant",
                    format!("{t:?} is not in autoscaling.tenants"),
                );
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    fn err(yaml: &str) -> String {
        crate::config::parse(yaml, "cp.yaml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_autoscaling_settings_are_rejected_with_line_column_and_field() {
        // Every problem of one service at once, at its place in the file.
        let e = err(r#"
autoscaling:
  services:
    - service: api
      capacity_rps: 0
      min: 3
      max: 2
      policy: { rules: [{ if_predicted_utilisation_above: 0.8, add: 0 }] }
      actuator: { local: { command: ["sample"], cpu: -1 } }
"#);
        assert!(
            e.starts_with("cp.yaml:4:7: autoscaling.services[0]: "),
            "{e}"
        );
        let rest = e.clone();
        for want in [
            "autoscaling.services[0]: capacity_rps: expected a rate above 0",
            "max: expected at least 1 and at least min (3), found 2",
            "policy.rules[0].add: expected 1..=2 (the service's max), found 0",
            "actuator: command: expected {port}",
            "actuator: cpu: expected a number of cores above 0",
        ] {
            assert!(rest.contains(want), "missing {want:?} in:\n{e}");
        }
        // Checks across services and sections: named by field.
        let e = err(r#"
autoscaling:
  services:
    - { service: api, capacity_rps: 5, actuator: { dry_run: {} } }
    - service: api
      capacity_rps: 5
      policy: { tenant: acme, price_per_hour: 1, max_cost_per_hour: 2 }
      actuator: { dry_run: {} }
"#);
        for want in [
            "cp.yaml: autoscaling.services[1].service: \"api\" is scaled twice",
            "cp.yaml: autoscaling.services[1].policy.tenant: \"acme\" is not in autoscaling.tenants",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        let e = err("autoscaling:\n  services:\n    - { service: api, capacity_rps: 5, level: 100, actuator: { dry_run: {} } }\n");
        assert!(
            e.starts_with("cp.yaml:3:7: autoscaling.services[0]: "),
            "{e}"
        );
        assert!(
            e.contains("level: expected a percentage between 0 and 100"),
            "{e}"
        );
        // An unknown actuator is a parse error with its line and column.
        let e = err(
            "autoscaling:\n  services:\n    - service: api\n      capacity_rps: 5\n      actuator: { docker: {} }\n",
        );
        assert!(e.starts_with("cp.yaml:5:"), "{e}");
        assert!(e.contains("autoscaling.services[0].actuator"), "{e}");
    }

    #[test]
    fn the_documented_example_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/README.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let at = doc.find("## Autoscaling").expect("the section");
        let start = doc[at..].find("```yaml").unwrap() + at + "```yaml".len();
        let end = doc[start..].find("```").unwrap() + start;
        let cfg = crate::config::parse(&doc[start..end], "config/README.md").unwrap();
        let s = &cfg.autoscaling.services[0];
        assert_eq!((s.service.as_str(), s.max), ("search", Some(8)));
        assert_eq!(s.policy.tenant.as_deref(), Some("acme"));
        assert!(s.warm_pool.is_some());
    }
}
