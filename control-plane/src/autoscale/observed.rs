//! What a service's last closed seconds held, as the scaling loop and negotiation read
//! it: the mean rate of the planner's observed window, the mean of its newest (burst)
//! seconds, and the window's highest p99; and its whole minutes, for the planner's
//! near-term bound.

use crate::load::Load;

/// The observed rate is averaged over this many closed seconds (the planner's window),
/// and over the newest `BURST_WINDOW_S` of them for the floor's quick scale-up.
const OBSERVED_WINDOW_S: i64 = crate::planner::OBSERVED_WINDOW.as_secs() as i64;
const BURST_WINDOW_S: i64 = crate::planner::BURST_WINDOW.as_secs() as i64;

/// What the last closed seconds held for one service.
pub(super) struct Observed {
    /// Mean requests/s of the last `OBSERVED_WINDOW_S` closed seconds.
    pub rps: f64,
    /// Mean requests/s of the newest `BURST_WINDOW_S` of them.
    pub burst_rps: f64,
    /// The highest p99 latency of the `OBSERVED_WINDOW_S` seconds (ms).
    pub p99_ms: f64,
}

impl Observed {
    /// The rate the reactive floor sizes for (and negotiation takes as flowing): the
    /// higher of the two windows' means, so that a jump is met one interval after it.
    pub fn floor_rps(&self) -> f64 {
        self.rps.max(self.burst_rps)
    }
}

/// `service`'s closed seconds as of `now_s` (Unix seconds), past the reports' grace.
pub(super) fn observed(load: &Load, service: &str, now_s: i64) -> Observed {
    let end = now_s - crate::load::GRACE_SECONDS;
    let (start, burst) = (end - OBSERVED_WINDOW_S, end - BURST_WINDOW_S);
    let (requests, newest, p99_ms) = load.with(service, now_s, |h| {
        h.map_or((0, 0, 0.0), |h| {
            h.seconds()
                .filter(|p| p.unix_s >= start && p.unix_s < end)
                .fold((0, 0, 0.0f64), |(r, b, l), p| {
                    let in_burst = if p.unix_s >= burst { p.requests } else { 0 };
                    (r + p.requests, b + in_burst, l.max(p.p99_ms))
                })
        })
    });
    Observed {
        rps: requests as f64 / OBSERVED_WINDOW_S as f64,
        burst_rps: newest as f64 / BURST_WINDOW_S as f64,
        p99_ms,
    }
}

/// `service`'s whole minutes before `now_s`: the first's index (minutes since the Unix
/// epoch, so that the planner groups them by the wall clock's minute of the hour) and
/// their rates (requests/s); None before its first report.
pub(super) fn minutes(load: &Load, service: &str, now_s: i64) -> Option<(usize, Vec<f64>)> {
    let (y, end) = load.with(service, now_s, |h| {
        h.map(|h| crate::predict::series(h, &crate::predict::MINUTES, now_s))
    })?;
    let first = ((end / 60).max(0) as usize).saturating_sub(y.len());
    Some((first, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_takes_the_burst_window_when_the_rate_jumps_and_the_longer_one_when_it_falls() {
        let load = Load::default();
        let second = |unix_s: i64, requests: u64| presage_api::LoadReport {
            unix_ms: unix_s * 1000,
            services: vec![presage_api::ServiceLoad {
                service: "web".into(),
                requests,
                ..Default::default()
            }],
            ..Default::default()
        };
        // Seconds 100..110 at 10 req/s, 110..115 at 100, then 115..130 at 10.
        for s in 100..130 {
            let n = if (110..115).contains(&s) { 100 } else { 10 };
            load.ingest(&second(s, n));
        }
        // Closed up to 115 (the grace): the last 15 s mean 40 req/s, the last 5 s 100.
        let jump = observed(&load, "web", 115 + crate::load::GRACE_SECONDS);
        assert_eq!((jump.rps, jump.burst_rps), (40.0, 100.0));
        assert_eq!(jump.floor_rps(), 100.0);
        // Ten seconds after the fall the burst window is back at 10; the 15 s window
        // still holds the jump, and the floor keeps it.
        let fell = observed(&load, "web", 125 + crate::load::GRACE_SECONDS);
        assert_eq!((fell.rps, fell.burst_rps), (40.0, 10.0));
        assert_eq!(fell.floor_rps(), 40.0);
    }
}
