//! What the live planner reads from the control plane's state: the forecast's highest
//! upper bound over the lead time (from the published `Forecast` resources, so the
//! events calendar is already applied), and the interval level the service's traffic
//! asks for (its highest active QoS tier).

use std::time::Duration;

use presage_api::resource::Body;
use presage_api::{types, Forecast, ForecastPoint};

use crate::planner::Peak;
use crate::resources::Snapshot;
use crate::sla::Sla;

/// The level a tier of `priority` is provisioned at: Bronze (1) the point forecast,
/// Silver (2) the 80% upper bound, Gold (3) and above the 95% one.
pub fn level_of_priority(priority: i32) -> f64 {
    match priority {
        ..=1 => 50.0,
        2 => 80.0,
        _ => 95.0,
    }
}

/// What the service's traffic of the last minute asks for: its highest QoS tier (name,
/// priority, interval level) and the strictest p99 latency target of its profiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub tier: String,
    pub priority: i32,
    pub level: f64,
    pub latency_target_ms: Option<f64>,
}

/// The service's active QoS; Bronze, with no latency target, when no profile was seen
/// (unclassified traffic).
pub fn active_qos(snap: &Snapshot, sla: &Sla, service: &str, now_s: i64) -> Active {
    let profile = |name: &str| match snap
        .get(types::QOS_PROFILE)
        .and_then(|t| t.items.get(name))
        .and_then(|r| r.body.as_ref())
    {
        Some(Body::QosProfile(p)) => Some(p.clone()),
        _ => None,
    };
    let priority = |tier: &str| match snap
        .get(types::QOS_TIER)
        .and_then(|t| t.items.get(tier))
        .and_then(|r| r.body.as_ref())
    {
        Some(Body::QosTier(t)) => t.priority,
        _ => 1,
    };
    let profiles: Vec<_> = sla
        .pairs()
        .into_iter()
        .filter(|(s, _)| s == service)
        .filter(|(s, p)| sla.recent(s, p, now_s, 60).is_some_and(|r| r.requests > 0))
        .filter_map(|(_, p)| profile(&p))
        .collect();
    let latency_target_ms = profiles
        .iter()
        .map(|p| p.latency_p99_ms)
        .filter(|l| *l > 0.0)
        .min_by(f64::total_cmp);
    let (priority, tier) = profiles
        .iter()
        .map(|p| (priority(&p.tier), p.tier.clone()))
        .max()
        .unwrap_or((1, "bronze".into()));
    Active {
        level: level_of_priority(priority),
        tier,
        priority,
        latency_target_ms,
    }
}

fn upper(p: &ForecastPoint, level: f64) -> f64 {
    if level >= 95.0 {
        p.hi95
    } else if level >= 80.0 {
        p.hi80
    } else {
        p.requests_per_second
    }
}

/// The highest upper bound of `f` over `[now, now + lead]`; None when the forecast does
/// not reach that far (stale, or too short).
pub fn peak_of(f: &Forecast, now_ms: i64, lead: Duration, level: f64) -> Option<Peak> {
    let step_ms = i64::from(f.step_seconds.max(1)) * 1000;
    let first = (now_ms - f.start_unix_ms).div_euclid(step_ms).max(0) as usize;
    let end = now_ms + lead.as_millis() as i64;
    let last =
        ((end - f.start_unix_ms + step_ms - 1).div_euclid(step_ms)).max(first as i64 + 1) as usize;
    if last > f.points.len() {
        return None;
    }
    let p = f.points[first..last]
        .iter()
        .max_by(|a, b| upper(a, level).total_cmp(&upper(b, level)))?;
    Some(Peak {
        upper_rps: upper(p, level),
        point_rps: p.requests_per_second,
        model: format!("control-plane forecast, {} s steps", f.step_seconds),
    })
}

/// The peak over the lead time from the service's 1 s forecast when it covers the lead,
/// else from its 1 min one.
pub fn from_forecasts(
    snap: &Snapshot,
    service: &str,
    now_ms: i64,
    lead: Duration,
    level: f64,
) -> Option<Peak> {
    let forecast = |name: &str| match snap
        .get(types::FORECAST)
        .and_then(|t| t.items.get(name))
        .and_then(|r| r.body.as_ref())
    {
        Some(Body::Forecast(f)) => Some(f.clone()),
        _ => None,
    };
    [
        service.to_string(),
        format!("{service}{}", crate::predict::MINUTES.suffix),
    ]
    .iter()
    .filter_map(|n| forecast(n))
    .find_map(|f| peak_of(&f, now_ms, lead, level))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecast(start_ms: i64, step_s: u32, hi95: &[f64]) -> Forecast {
        Forecast {
            service: "api".into(),
            start_unix_ms: start_ms,
            step_seconds: step_s,
            points: hi95
                .iter()
                .map(|&h| ForecastPoint {
                    requests_per_second: h / 2.0,
                    lo80: 0.0,
                    hi80: h * 0.8,
                    lo95: 0.0,
                    hi95: h,
                })
                .collect(),
        }
    }

    #[test]
    fn the_peak_is_the_highest_bound_between_now_and_the_lead() {
        let f = forecast(10_000, 1, &[1.0, 5.0, 9.0, 3.0, 50.0]);
        // Now is 11.5 s: steps 1..=3 (11 s to 14 s) cover the next 2.5 s.
        let p = peak_of(&f, 11_500, Duration::from_millis(2500), 95.0).unwrap();
        assert_eq!((p.upper_rps, p.point_rps), (9.0, 4.5));
        let p = peak_of(&f, 11_500, Duration::from_millis(2500), 80.0).unwrap();
        assert_eq!(p.upper_rps, 9.0 * 0.8);
        let p = peak_of(&f, 11_500, Duration::from_millis(2500), 50.0).unwrap();
        assert_eq!(p.upper_rps, 4.5);
        // Beyond the forecast's end: no peak from it.
        assert!(peak_of(&f, 11_500, Duration::from_secs(10), 95.0).is_none());
    }

    #[test]
    fn tiers_map_to_levels() {
        assert_eq!(level_of_priority(1), 50.0);
        assert_eq!(level_of_priority(2), 80.0);
        assert_eq!(level_of_priority(3), 95.0);
        assert_eq!(level_of_priority(7), 95.0);
    }
}
