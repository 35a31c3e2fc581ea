//! Turns the load history into demand forecasts and publishes them as `Forecast`
//! resources, so every proxy (and `GET /v1/services/{name}/forecast`) has each service's
//! expected request rate for the next minute, with 80% and 95% intervals.
//!
//! ```text
//!  every tick, per service:
//!   history ─▶ score the last published forecast against what happened (error, coverage)
//!           ─▶ divide past calendar events out ─▶ choose a model again? (first time, new
//!              horizon, every 5 min, or the last 30 s's error drifted to 2x the 5 min's)
//!           ─▶ refit the chosen model, forecast ─▶ apply calendar events ─▶ publish
//! ```
//! The model choice is the forecasting engine's (`forecast::select`: seasonal naive, plain
//! and scaled to today's level, Holt, MSTL + damped-trend ETS by rolling-origin backtest);
//! between choices only the chosen model is refitted, which is cheap. Seconds the history
//! has no point for (no traffic, so no report) count as zero requests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use presage_api::resource::Body;
use presage_api::{types, DemandEvent, Forecast, ForecastPoint, Resource};

use crate::events;
use crate::forecast::{self, Selected};
use crate::load::{History, Load};
use crate::metrics::Metrics;
use crate::resources::Resources;

/// Forecast steps: one minute ahead at the history's 1-second resolution.
pub const HORIZON_SECONDS: usize = 60;

/// The interval levels every published forecast carries (percent).
const LEVELS: [f64; 2] = [80.0, 95.0];

/// One forecast each service gets: its step, history window and known periods.
#[derive(Debug, Clone, Copy)]
pub struct Resolution {
    pub step_s: i64,
    /// Appended to the service's name for the `Forecast` resource's name.
    pub suffix: &'static str,
    /// Steps of history used.
    window: usize,
    /// Repeating patterns looked for, in steps.
    periods: &'static [usize],
    /// The metrics' `resolution` label.
    pub label: &'static str,
}

/// The next minute in 1 s steps from the last 15 minutes (enough for the backtest at a
/// 60-step horizon, short enough to follow a change in level within minutes); a
/// one-minute pattern (cron-like jobs, client polling) is looked for.
pub const SECONDS: Resolution = Resolution {
    step_s: 1,
    suffix: "",
    window: 900,
    periods: &[60],
    label: "1s",
};
/// The next hour in 1 min steps from the last 3 days; hourly and daily patterns are
/// looked for (each once the history holds two cycles of it).
pub const MINUTES: Resolution = Resolution {
    step_s: 60,
    suffix: "/1m",
    window: 3 * 1440,
    periods: &[60, 1440],
    label: "1m",
};

/// The model is chosen again this often even when it still fits (seconds).
const RESELECT_EVERY_S: i64 = 300;
/// Realised error of the last ~30 s this many times that of the last ~5 min means the
/// series changed under the model...
const DRIFT_FACTOR: f64 = 2.0;
/// ...by at least this much (requests/s), so a near-perfect fit of a flat series does
/// not trip on noise.
const DRIFT_SLACK_RPS: f64 = 1.0;
/// Realised errors needed before drift is judged.
const DRIFT_MIN_SCORED: u64 = 60;
/// The running means of realised error weigh about this many scored seconds.
const ERROR_WINDOW: f64 = 300.0;
const RECENT_WINDOW: f64 = 30.0;

/// The per-second request series of `h` ending at `end_s` (exclusive), zero-filled.
pub fn request_series(h: &History, end_s: i64) -> Vec<f64> {
    series(h, &SECONDS, end_s).0
}

/// The request series of `h` at `res`, zero-filled, ending at the last step boundary at
/// or before `end_s` (returned with it): only steps wholly before `end_s` count, the
/// current minute's seconds are not a minute yet.
pub fn series(h: &History, res: &Resolution, end_s: i64) -> (Vec<f64>, i64) {
    let end = end_s - end_s.rem_euclid(res.step_s);
    let start = end - res.window as i64 * res.step_s;
    let mut y = vec![0.0; res.window];
    let mut first = None;
    let points: Box<dyn Iterator<Item = &crate::load::Point>> = if res.step_s == 1 {
        Box::new(h.seconds())
    } else {
        Box::new(h.minutes())
    };
    for p in points {
        if p.unix_s >= start && p.unix_s + res.step_s <= end {
            let i = ((p.unix_s - start) / res.step_s) as usize;
            y[i] = p.requests as f64 / res.step_s as f64;
            first = Some(first.map_or(i, |f: usize| f.min(i)));
        }
    }
    // Before the service's first report there is no history, not zero traffic.
    (y.split_off(first.unwrap_or(res.window)), end)
}

/// The longest horizon the history allows (shorter ones first become possible as
/// history accumulates); None while it is too short for any.
fn horizon_for(len: usize) -> Option<usize> {
    [HORIZON_SECONDS, 30, 10, 1]
        .into_iter()
        .find(|&h| len >= forecast::origins(h) * h + 8)
}

/// A forecast of `y` (requests per second), whose first step is the second `start_s`;
/// None while the history is too short.
pub fn forecast_service(service: &str, y: &[f64], start_s: i64) -> Option<Forecast> {
    let sel = forecast::select(y, horizon_for(y.len())?, SECONDS.periods, &LEVELS).ok()?;
    to_wire(service, &forecast::predict(&sel, y).ok()?, start_s, 1)
}

fn to_wire(service: &str, f: &forecast::Forecast, start_s: i64, step_s: i64) -> Option<Forecast> {
    let (lo80, hi80) = (&f.intervals.first()?.1, &f.intervals.first()?.2);
    let (lo95, hi95) = (&f.intervals.get(1)?.1, &f.intervals.get(1)?.2);
    let points = (0..f.point.len())
        .map(|i| ForecastPoint {
            // Rates cannot be negative, whatever the model extrapolates.
            requests_per_second: f.point[i].max(0.0),
            lo80: lo80[i].max(0.0),
            hi80: hi80[i].max(0.0),
            lo95: lo95[i].max(0.0),
            hi95: hi95[i].max(0.0),
        })
        .collect();
    Some(Forecast {
        service: service.to_string(),
        start_unix_ms: start_s * 1000,
        step_seconds: step_s as u32,
        points,
    })
}

/// Why a service's model was chosen again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    First,
    /// The history allows a longer horizon now.
    Horizon,
    Schedule,
    Drift,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::First => "first",
            Reason::Horizon => "horizon",
            Reason::Schedule => "schedule",
            Reason::Drift => "drift",
        }
    }
}

/// How a service's published forecasts did against what happened: running means over
/// about the last `ERROR_WINDOW` seconds scored.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Realised {
    /// Mean absolute error, requests/s.
    pub abs_error: f64,
    /// The same over about the last `RECENT_WINDOW` seconds.
    pub recent_abs_error: f64,
    /// Share of seconds inside the 80% and the 95% interval.
    pub coverage80: f64,
    pub coverage95: f64,
    pub scored: u64,
}

impl Realised {
    fn add(&mut self, actual: f64, p: &ForecastPoint) {
        self.scored += 1;
        let w = (1.0 / self.scored as f64).max(1.0 / ERROR_WINDOW);
        let recent_w = (1.0 / self.scored as f64).max(1.0 / RECENT_WINDOW);
        let inside = |lo: f64, hi: f64| f64::from(u8::from(lo <= actual && actual <= hi));
        let e = (actual - p.requests_per_second).abs();
        self.abs_error += w * (e - self.abs_error);
        self.recent_abs_error += recent_w * (e - self.recent_abs_error);
        self.coverage80 += w * (inside(p.lo80, p.hi80) - self.coverage80);
        self.coverage95 += w * (inside(p.lo95, p.hi95) - self.coverage95);
    }
}

struct State {
    selected: Selected,
    selected_at_s: i64,
    /// The last published forecast (events applied), to score.
    last: Option<Forecast>,
    scored_to_s: i64,
    realised: Realised,
}

impl State {
    /// Scores the last forecast's steps that have closed since the previous call.
    fn score(&mut self, y: &[f64], end_s: i64, step_s: i64) {
        let Some(last) = &self.last else {
            return;
        };
        let first_s = end_s - y.len() as i64 * step_s;
        let start_s = last.start_unix_ms / 1000;
        let mut t = self.scored_to_s.max(start_s).max(first_s);
        while t < end_s {
            let Some(p) = last.points.get(((t - start_s) / step_s) as usize) else {
                break;
            };
            self.realised.add(y[((t - first_s) / step_s) as usize], p);
            t += step_s;
        }
        self.scored_to_s = self.scored_to_s.max(end_s);
    }

    fn drifted(&self) -> bool {
        let r = &self.realised;
        r.scored >= DRIFT_MIN_SCORED
            && r.recent_abs_error > DRIFT_FACTOR * r.abs_error
            && r.recent_abs_error - r.abs_error > DRIFT_SLACK_RPS
    }
}

/// One service's result of a tick.
#[derive(Debug)]
pub struct Step {
    /// The `Forecast` resource's name: the service's, with the resolution's suffix.
    pub name: String,
    pub forecast: Forecast,
    /// The metrics' `resolution` label.
    pub resolution: &'static str,
    pub reselected: Option<Reason>,
    pub realised: Realised,
    /// The chosen model's backtest MASE.
    pub backtest_mase: f64,
    pub model: String,
}

/// The forecasting loop's memory: each service's chosen model and how its forecasts did.
#[derive(Default)]
pub struct Predictor {
    /// By service and step (seconds).
    states: HashMap<(String, i64), State>,
}

impl Predictor {
    /// Forecasts `service` at `res` from its series `y` (as observed, events and all),
    /// which ends at `end_s` (exclusive); None while the history is too short, or when
    /// nothing closed since the last forecast.
    pub fn step(
        &mut self,
        res: &Resolution,
        service: &str,
        y: &[f64],
        events: &[DemandEvent],
        end_s: i64,
    ) -> Option<Step> {
        let key = (service.to_string(), res.step_s);
        if let Some(st) = self.states.get_mut(&key) {
            if st
                .last
                .as_ref()
                .is_some_and(|l| l.start_unix_ms == end_s * 1000)
            {
                return None;
            }
            st.score(y, end_s, res.step_s);
        }
        let mut clean = y.to_vec();
        events::remove_from_history(&mut clean, events, service, end_s, res.step_s);
        let h = horizon_for(clean.len())?;
        let reason = match self.states.get(&key) {
            None => Some(Reason::First),
            Some(s) if s.selected.h != h => Some(Reason::Horizon),
            Some(s) if end_s - s.selected_at_s >= RESELECT_EVERY_S => Some(Reason::Schedule),
            Some(s) if s.drifted() => Some(Reason::Drift),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            let selected = forecast::select(&clean, h, res.periods, &LEVELS).ok()?;
            let st = self.states.entry(key.clone()).or_insert_with(|| State {
                selected: selected.clone(),
                selected_at_s: end_s,
                last: None,
                scored_to_s: end_s,
                realised: Realised::default(),
            });
            if reason == Reason::Drift {
                tracing::info!(service, model = %selected.model.name(), recent_error = st.realised.recent_abs_error, error = st.realised.abs_error, "forecast error drifted: model chosen again");
                // The new model is judged on its own errors.
                st.realised = Realised::default();
            }
            st.selected = selected;
            st.selected_at_s = end_s;
        }
        let st = self.states.get_mut(&key)?;
        let f = forecast::predict(&st.selected, &clean).ok()?;
        let mut wire = to_wire(service, &f, end_s, res.step_s)?;
        events::apply(&mut wire, events);
        st.last = Some(wire.clone());
        Some(Step {
            name: format!("{service}{}", res.suffix),
            forecast: wire,
            resolution: res.label,
            reselected: reason,
            realised: st.realised,
            backtest_mase: f.backtest_mase,
            model: f.model,
        })
    }

    /// Forgets the services not in `live`.
    pub fn retain(&mut self, live: &HashSet<String>) {
        self.states.retain(|(service, _), _| live.contains(service));
    }
}

/// Every `every`, forecasts every service with enough history and publishes the results.
pub async fn run(
    load: Arc<Load>,
    resources: Arc<Resources>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut predictor = Some(Predictor::default());
    loop {
        tick.tick().await;
        let now_s = crate::time::unix_ms() / 1000;
        // The last few seconds are still open for late reports: forecast from the end of
        // the closed ones, or the open seconds would read as zero traffic.
        let end_s = now_s - crate::load::GRACE_SECONDS;
        let mut live = HashSet::new();
        let mut all: Vec<(Resolution, String, Vec<f64>, i64)> = Vec::new();
        for s in load.services() {
            for res in [SECONDS, MINUTES] {
                let (y, end) = load.with(&s, now_s, |h| {
                    h.map(|h| series(h, &res, end_s)).unwrap_or_default()
                });
                all.push((res, s.clone(), y, end));
            }
            live.insert(s);
        }
        let events: Vec<DemandEvent> = resources
            .snapshot()
            .get(types::DEMAND_EVENT)
            .map(|t| {
                t.items
                    .values()
                    .filter_map(|r| match &r.body {
                        Some(Body::DemandEvent(e)) => Some(e.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Model fitting is CPU work: keep it off the event loop.
        let mut p = predictor.take().unwrap_or_default();
        let (p, steps) = tokio::task::spawn_blocking(move || {
            p.retain(&live);
            let steps: Vec<Step> = all
                .iter()
                .filter_map(|(res, s, y, end)| p.step(res, s, y, &events, *end))
                .collect();
            (p, steps)
        })
        .await
        .unwrap_or_default();
        predictor = Some(p);
        for s in &steps {
            metrics.forecast_step(s);
        }
        let forecasts = steps
            .into_iter()
            .map(|s| Resource::new(s.name, Body::Forecast(s.forecast)))
            .collect();
        if let Err(e) = resources.put_many(forecasts).await {
            tracing::error!(error = %e, "storing forecasts failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_level_and_a_one_minute_cycle_with_nested_intervals() {
        // 15 minutes of traffic: 50 rps plus a burst of 40 in the first 10 s of every minute.
        let y: Vec<f64> = (0..900)
            .map(|t| 50.0 + if t % 60 < 10 { 40.0 } else { 0.0 } + (t % 7) as f64)
            .collect();
        let f = forecast_service("web", &y, 1_000).unwrap();
        assert_eq!(f.points.len(), HORIZON_SECONDS);
        // The next minute starts with its burst, then falls back.
        assert!(f.points[2].requests_per_second > 80.0, "{:?}", f.points[2]);
        assert!(
            f.points[30].requests_per_second < 65.0,
            "{:?}",
            f.points[30]
        );
        for p in &f.points {
            assert!(p.lo95 <= p.lo80 && p.lo80 <= p.requests_per_second + 1e-9);
            assert!(p.requests_per_second <= p.hi80 + 1e-9 && p.hi80 <= p.hi95);
        }
    }

    #[test]
    fn the_series_is_zero_filled_and_starts_at_the_first_report() {
        let load = Load::default();
        for t in [100, 101, 104] {
            load.ingest(&presage_api::LoadReport {
                unix_ms: t * 1000,
                services: vec![presage_api::ServiceLoad {
                    service: "web".into(),
                    requests: 3,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let y = load.with("web", 110, |h| request_series(h.unwrap(), 110));
        assert_eq!(y, [3.0, 3.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_minute_series_holds_whole_minutes_only_as_rates() {
        let load = Load::default();
        // 6 requests every second from 12:00:00 to 12:02:30.
        for t in 0..150 {
            load.ingest(&presage_api::LoadReport {
                unix_ms: (43_200 + t) * 1000,
                services: vec![presage_api::ServiceLoad {
                    service: "web".into(),
                    requests: 6,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let now_s = 43_200 + 160;
        let (y, end) = load.with("web", now_s, |h| series(h.unwrap(), &MINUTES, now_s - 3));
        assert_eq!(end, 43_200 + 120, "the minute in progress is left out");
        assert_eq!(y, [6.0, 6.0], "requests per second over each whole minute");
    }

    #[test]
    fn open_seconds_are_not_read_as_zero_traffic() {
        // Steady 5 rps reported up to now: the series must end at the last closed second.
        let load = Load::default();
        for t in 0..60 {
            load.ingest(&presage_api::LoadReport {
                unix_ms: (1_000 + t) * 1000,
                services: vec![presage_api::ServiceLoad {
                    service: "web".into(),
                    requests: 5,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let now_s = 1_060;
        let end_s = now_s - crate::load::GRACE_SECONDS;
        let y = load.with("web", now_s, |h| request_series(h.unwrap(), end_s));
        assert!(y.iter().all(|v| *v == 5.0), "{y:?}");
        let f = forecast_service("web", &y, end_s).unwrap();
        assert!(
            (f.points[0].requests_per_second - 5.0).abs() < 1e-6,
            "{:?}",
            f.points[0]
        );
        assert_eq!(f.start_unix_ms, end_s * 1000);
    }

    fn event(start_s: i64, end_s: i64, multiplier: f64) -> DemandEvent {
        DemandEvent {
            name: "campaign".into(),
            service: "web".into(),
            start_unix_ms: start_s * 1000,
            end_unix_ms: end_s * 1000,
            multiplier: Some(multiplier),
            ..Default::default()
        }
    }

    #[test]
    fn realised_error_and_coverage_are_scored_against_what_happened() {
        let mut p = Predictor::default();
        let mut y = vec![10.0; 600];
        let first = p.step(&SECONDS, "web", &y, &[], 1_000).unwrap();
        assert_eq!(first.reselected, Some(Reason::First));
        assert_eq!(first.realised.scored, 0);
        // Five seconds as forecast, then five at twice the rate.
        y.extend([10.0; 5]);
        let s = p.step(&SECONDS, "web", &y, &[], 1_005).unwrap();
        assert_eq!(s.reselected, None, "no reason to choose again");
        assert_eq!(
            (
                s.realised.scored,
                s.realised.abs_error,
                s.realised.coverage95
            ),
            (5, 0.0, 1.0)
        );
        y.extend([20.0; 5]);
        let s = p.step(&SECONDS, "web", &y, &[], 1_010).unwrap();
        assert_eq!(s.realised.scored, 10);
        assert!(
            (s.realised.abs_error - 5.0).abs() < 1e-9,
            "{:?}",
            s.realised
        );
        assert!(
            (s.realised.coverage80 - 0.5).abs() < 1e-9,
            "{:?}",
            s.realised
        );
    }

    #[test]
    fn calendar_events_shape_the_forecast_and_leave_the_baseline_alone() {
        let mut p = Predictor::default();
        // The last minute of history ran at double rate under a past campaign.
        let mut y = vec![10.0; 600];
        for v in &mut y[540..] {
            *v = 20.0;
        }
        let events = [event(940, 1_000, 2.0), event(1_010, 1_020, 3.0)];
        let s = p.step(&SECONDS, "web", &y, &events, 1_000).unwrap();
        let rates: Vec<f64> = s
            .forecast
            .points
            .iter()
            .map(|p| p.requests_per_second)
            .collect();
        assert!(
            (rates[0] - 10.0).abs() < 1e-6,
            "baseline, not the campaign: {rates:?}"
        );
        assert!(
            (rates[10] - 30.0).abs() < 1e-6,
            "the coming event: {rates:?}"
        );
        assert!((rates[20] - 10.0).abs() < 1e-6, "{rates:?}");
        let other = p.step(&SECONDS, "api", &y, &events, 1_000).unwrap();
        assert!(
            (other.forecast.points[10].requests_per_second - 20.0).abs() < 1.0,
            "events of web do not touch api"
        );
    }

    /// Real traffic (NASA HTTP, 1995: requests per 5 minutes, replayed one point per
    /// second), then a tripling of its level: the forecasts' realised error drifts
    /// and the model is chosen again well before the five-minute schedule would.
    #[test]
    fn a_level_shift_in_real_traffic_is_caught_as_drift() {
        let nasa: Vec<f64> = crate::forecast::tests::nasa()
            .into_iter()
            .map(|v| v / 30.0)
            .collect();
        let mut p = Predictor::default();
        let (start, mut n) = (1_000, 900);
        let series = |n: usize, shift_at: usize| -> Vec<f64> {
            (0..n)
                .map(|i| nasa[2_000 + i] * if i >= shift_at { 3.0 } else { 1.0 })
                .collect()
        };
        let shift_at = 900 + 120;
        let end = |n: usize| start + n as i64;
        assert_eq!(
            p.step(&SECONDS, "web", &series(n, shift_at), &[], end(n))
                .unwrap()
                .reselected,
            Some(Reason::First)
        );
        let mut reasons = Vec::new();
        while n < shift_at + 200 {
            n += 5;
            let s = p
                .step(&SECONDS, "web", &series(n, shift_at), &[], end(n))
                .unwrap();
            if let Some(r) = s.reselected {
                reasons.push((n, r));
            }
        }
        let before: Vec<_> = reasons.iter().filter(|(at, _)| *at <= shift_at).collect();
        assert!(
            before.is_empty(),
            "no drift in the steady part: {reasons:?}"
        );
        let (at, reason) = reasons.first().copied().expect("the shift was caught");
        assert_eq!(reason, Reason::Drift, "{reasons:?}");
        assert!(
            at < shift_at + 120,
            "caught {} s after the shift",
            at - shift_at
        );
    }

    #[test]
    fn short_histories_get_short_horizons_or_none() {
        assert!(forecast_service("web", &[5.0; 10], 0).is_none());
        let f = forecast_service("web", &[5.0; 40], 0).unwrap();
        assert_eq!(f.points.len(), 1);
        assert!((f.points[0].requests_per_second - 5.0).abs() < 1e-6);
    }
}
