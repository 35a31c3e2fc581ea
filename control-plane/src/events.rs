//! The events calendar: known changes in demand (a marketing campaign, a scheduled
//! backup, a batch job) that forecasts apply, and that are divided back out of the
//! history before models learn from it, so a past event does not become the baseline.
//!
//! An event covers `[start, end)` of one service (or every service, when it names none):
//! the rate is multiplied by `multiplier` (absent: 1), then `added_rps` is added.
//! Overlapping events compose: multipliers multiply, additions add. Pure functions; the
//! events are `DemandEvent` resources, stored and served like any other.

use presage_api::{DemandEvent, Forecast};

/// The factor and the addition in effect for `service` at `unix_ms`.
pub fn effect(events: &[DemandEvent], service: &str, unix_ms: i64) -> (f64, f64) {
    events
        .iter()
        .filter(|e| e.service.is_empty() || e.service == service)
        .filter(|e| e.start_unix_ms <= unix_ms && unix_ms < e.end_unix_ms)
        .fold((1.0, 0.0), |(m, a), e| {
            let em = e.multiplier.unwrap_or(1.0);
            (m * em, a * em + e.added_rps)
        })
}

/// Applies the events to a forecast: each step's point and interval bounds, taken at the
/// step's start, transform alike (rates stay at 0 or above). Returns whether any did.
pub fn apply(f: &mut Forecast, events: &[DemandEvent]) -> bool {
    let step_ms = i64::from(f.step_seconds.max(1)) * 1000;
    let mut any = false;
    for (i, p) in f.points.iter_mut().enumerate() {
        let (m, a) = effect(events, &f.service, f.start_unix_ms + i as i64 * step_ms);
        if (m, a) == (1.0, 0.0) {
            continue;
        }
        any = true;
        for v in [
            &mut p.requests_per_second,
            &mut p.lo80,
            &mut p.hi80,
            &mut p.lo95,
            &mut p.hi95,
        ] {
            *v = (*v * m + a).max(0.0);
        }
    }
    any
}

/// Divides the events back out of a request series of `step_s` steps whose last step
/// ends at `end_s`: what the service would have seen without them (an event is taken
/// as in effect for a whole step when it is at the step's start). Steps under a
/// multiplier of 0 (no traffic by design) say nothing of the baseline and take the
/// value before them.
pub fn remove_from_history(
    y: &mut [f64],
    events: &[DemandEvent],
    service: &str,
    end_s: i64,
    step_s: i64,
) {
    let relevant: Vec<DemandEvent> = events
        .iter()
        .filter(|e| e.service.is_empty() || e.service == service)
        .filter(|e| e.start_unix_ms < end_s * 1000)
        .cloned()
        .collect();
    if relevant.is_empty() {
        return;
    }
    let first_s = end_s - y.len() as i64 * step_s;
    for i in 0..y.len() {
        let (m, a) = effect(&relevant, service, (first_s + i as i64 * step_s) * 1000);
        if (m, a) == (1.0, 0.0) {
            continue;
        }
        y[i] = if m > 0.0 {
            ((y[i] - a) / m).max(0.0)
        } else if i > 0 {
            y[i - 1]
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presage_api::ForecastPoint;

    fn event(service: &str, start_s: i64, end_s: i64, m: Option<f64>, a: f64) -> DemandEvent {
        DemandEvent {
            name: format!("{service}-{start_s}"),
            service: service.into(),
            start_unix_ms: start_s * 1000,
            end_unix_ms: end_s * 1000,
            multiplier: m,
            added_rps: a,
            description: String::new(),
        }
    }

    #[test]
    fn events_compose_only_inside_their_window_and_for_their_service() {
        let evs = [
            event("web", 10, 20, Some(2.0), 0.0),
            event("", 15, 30, None, 5.0),
            event("db", 0, 100, Some(10.0), 0.0),
        ];
        assert_eq!(effect(&evs, "web", 9_999), (1.0, 0.0));
        assert_eq!(effect(&evs, "web", 10_000), (2.0, 0.0));
        assert_eq!(effect(&evs, "web", 15_000), (2.0, 5.0));
        assert_eq!(
            effect(&evs, "web", 20_000),
            (1.0, 5.0),
            "the end is excluded"
        );
        assert_eq!(effect(&evs, "api", 15_000), (1.0, 5.0), "every service");
        assert_eq!(effect(&evs, "db", 50_000), (10.0, 0.0));
    }

    #[test]
    fn a_forecast_takes_the_event_over_its_steps_and_stays_ordered() {
        let p = |v: f64| ForecastPoint {
            requests_per_second: v,
            lo80: v - 2.0,
            hi80: v + 2.0,
            lo95: v - 4.0,
            hi95: v + 4.0,
        };
        let mut f = Forecast {
            service: "web".into(),
            start_unix_ms: 0,
            step_seconds: 1,
            points: (0..6).map(|_| p(10.0)).collect(),
        };
        // A campaign tripling traffic for steps 2 and 3; an outage at step 5.
        let evs = [
            event("web", 2, 4, Some(3.0), 0.0),
            event("web", 5, 6, Some(0.0), 0.0),
        ];
        assert!(apply(&mut f, &evs));
        let points: Vec<f64> = f.points.iter().map(|p| p.requests_per_second).collect();
        assert_eq!(points, [10.0, 10.0, 30.0, 30.0, 10.0, 0.0]);
        assert_eq!((f.points[2].lo95, f.points[2].hi95), (18.0, 42.0));
        assert_eq!(f.points[5].hi95, 0.0);
        let mut untouched = f.clone();
        assert!(!apply(
            &mut untouched,
            &[event("db", 0, 10, Some(2.0), 0.0)]
        ));
    }

    #[test]
    fn past_events_are_divided_out_of_the_history() {
        // Seconds 100..110; a doubling over 103..105 and an outage at 107.
        let mut y = vec![5.0, 5.0, 5.0, 10.0, 10.0, 5.0, 5.0, 0.0, 5.0, 5.0];
        let evs = [
            event("web", 103, 105, Some(2.0), 0.0),
            event("web", 107, 108, Some(0.0), 0.0),
        ];
        remove_from_history(&mut y, &evs, "web", 110, 1);
        assert_eq!(y, [5.0; 10]);
        let mut other = vec![10.0; 10];
        remove_from_history(&mut other, &evs, "api", 110, 1);
        assert_eq!(other, [10.0; 10], "another service's events do not apply");
    }
}
