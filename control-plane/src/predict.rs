//! Turns the load history into demand forecasts and publishes them as `Forecast`
//! resources, so every proxy (and `GET /v1/services/{name}/forecast`) has each service's
//! expected request rate for the next minute, with 80% and 95% intervals.
//!
//! Pure function (`forecast_service`) plus a periodic loop; the model choice is the
//! forecasting engine's (`forecast::forecast`: seasonal naive, Holt, MSTL + AutoETS by
//! rolling-origin backtest). Seconds the history has no point for (no traffic, so no
//! report) count as zero requests.

use std::sync::Arc;
use std::time::Duration;

use presage_api::resource::Body;
use presage_api::{Forecast, ForecastPoint, Resource};

use crate::forecast;
use crate::load::{History, Load};
use crate::resources::Resources;

/// Forecast steps: one minute ahead at the history's 1-second resolution.
pub const HORIZON_SECONDS: usize = 60;
/// History used: the last 15 minutes (enough for the backtest at a 60-step horizon,
/// short enough to follow a change in level within minutes).
const WINDOW_SECONDS: usize = 900;
/// A repeating pattern of one minute (cron-like jobs, client polling) is looked for.
const PERIODS: [usize; 1] = [60];

/// The per-second request series of `h` ending at `end_s` (exclusive), zero-filled.
pub fn request_series(h: &History, end_s: i64) -> Vec<f64> {
    let start = end_s - WINDOW_SECONDS as i64;
    let mut y = vec![0.0; WINDOW_SECONDS];
    let mut first = None;
    for p in h.seconds() {
        if p.unix_s >= start && p.unix_s < end_s {
            let i = (p.unix_s - start) as usize;
            y[i] = p.requests as f64;
            first = Some(first.map_or(i, |f: usize| f.min(i)));
        }
    }
    // Before the service's first report there is no history, not zero traffic.
    y.split_off(first.unwrap_or(WINDOW_SECONDS))
}

/// A forecast of `y` (requests per second), whose first step is the second `start_s`;
/// None while the history is too short.
pub fn forecast_service(service: &str, y: &[f64], start_s: i64) -> Option<Forecast> {
    // Shorter horizons first become possible as history accumulates.
    let h = [HORIZON_SECONDS, 30, 10, 1]
        .into_iter()
        .find(|&h| y.len() >= forecast::origins(h) * h + 8)?;
    let f = forecast::forecast(y, h, &PERIODS, &[80.0, 95.0]).ok()?;
    let (lo80, hi80) = (&f.intervals[0].1, &f.intervals[0].2);
    let (lo95, hi95) = (&f.intervals[1].1, &f.intervals[1].2);
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
        step_seconds: 1,
        points,
    })
}

/// Every `every`, forecasts every service with enough history and publishes the results.
pub async fn run(load: Arc<Load>, resources: Arc<Resources>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_s = crate::time::unix_ms() / 1000;
        // The last few seconds are still open for late reports: forecast from the end of
        // the closed ones, or the open seconds would read as zero traffic.
        let end_s = now_s - crate::load::GRACE_SECONDS;
        let series: Vec<(String, Vec<f64>)> = load
            .services()
            .into_iter()
            .map(|s| {
                let y = load.with(&s, now_s, |h| {
                    h.map(|h| request_series(h, end_s)).unwrap_or_default()
                });
                (s, y)
            })
            .collect();
        // Model fitting is CPU work: keep it off the event loop.
        let forecasts = tokio::task::spawn_blocking(move || {
            series
                .iter()
                .filter_map(|(s, y)| forecast_service(s, y, end_s))
                .map(|f| Resource::new(f.service.clone(), Body::Forecast(f)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
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

    #[test]
    fn short_histories_get_short_horizons_or_none() {
        assert!(forecast_service("web", &[5.0; 10], 0).is_none());
        let f = forecast_service("web", &[5.0; 40], 0).unwrap();
        assert_eq!(f.points.len(), 1);
        assert!((f.points[0].requests_per_second - 5.0).abs() < 1e-6);
    }
}
