//! Dependency edges discovered from telemetry. A sidecar's reports carry the service it
//! fronts (its node's `service`) and the upstream service of every request it sent: those
//! are calls from the one to the other. What a caller itself received is what every
//! proxy reports for it as an upstream. Both are counted per minute over a sliding
//! window, so a ratio (calls per request of the caller) follows changed behaviour, and
//! an edge no longer seen leaves the map after the window.

use std::collections::{HashMap, VecDeque};

use presage_api::LoadReport;
use serde::Serialize;

/// Counting bucket.
const BUCKET_MS: i64 = 60_000;
/// Buckets in the window: five minutes.
pub const WINDOW_BUCKETS: i64 = 5;

/// One discovered edge over the window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Observation {
    /// Requests the caller sent to the dependency in the window.
    pub calls: u64,
    /// Requests the caller received in the window (from every proxy that saw them).
    pub caller_requests: u64,
    /// `calls / caller_requests`; none while the caller's own requests are not seen (its
    /// callers reach it without a proxy).
    pub ratio: Option<f64>,
    /// The window: from its start to the last report counted (Unix ms).
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// When this edge was first and last seen (Unix ms).
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

#[derive(Debug, Default)]
struct Counts {
    /// (bucket index, count), oldest first.
    buckets: VecDeque<(i64, u64)>,
    first_seen_ms: i64,
    last_seen_ms: i64,
}

impl Counts {
    fn add(&mut self, at_ms: i64, n: u64) {
        let b = at_ms.div_euclid(BUCKET_MS);
        if self.buckets.is_empty() {
            self.first_seen_ms = at_ms;
        }
        self.last_seen_ms = self.last_seen_ms.max(at_ms);
        match self.buckets.back_mut() {
            Some((last, c)) if *last == b => *c += n,
            // A late report (its bucket already passed) counts in the newest bucket.
            Some((last, c)) if *last > b => *c += n,
            _ => self.buckets.push_back((b, n)),
        }
    }

    /// Drops buckets older than the window ending at `now_ms`; whether any are left.
    fn expire(&mut self, now_ms: i64) -> bool {
        let oldest = now_ms.div_euclid(BUCKET_MS) - WINDOW_BUCKETS + 1;
        while self.buckets.front().is_some_and(|(b, _)| *b < oldest) {
            self.buckets.pop_front();
        }
        !self.buckets.is_empty()
    }

    fn total(&self) -> u64 {
        self.buckets.iter().map(|(_, c)| c).sum()
    }
}

#[derive(Debug, Default)]
pub struct Observed {
    calls: HashMap<(String, String), Counts>,
    received: HashMap<String, Counts>,
}

impl Observed {
    /// Counts one report of a proxy fronting `from` (empty: a standalone proxy, whose
    /// requests are counted as received by their upstreams only).
    pub fn record(&mut self, from: &str, report: &LoadReport) {
        let at = report.unix_ms;
        let mut per_upstream: HashMap<&str, u64> = HashMap::new();
        // Per-instance entries repeat their service's: only the service's own count.
        for s in report.services.iter().filter(|s| s.endpoint.is_empty()) {
            *per_upstream.entry(s.service.as_str()).or_default() += s.requests;
        }
        for (to, n) in per_upstream {
            if n == 0 {
                continue;
            }
            self.received.entry(to.to_string()).or_default().add(at, n);
            if !from.is_empty() && from != to {
                self.calls
                    .entry((from.to_string(), to.to_string()))
                    .or_default()
                    .add(at, n);
            }
        }
    }

    /// The edges seen in the window ending at `now_ms`, forgetting older ones.
    pub fn edges(&mut self, now_ms: i64) -> Vec<(String, String, Observation)> {
        self.calls.retain(|_, c| c.expire(now_ms));
        self.received.retain(|_, c| c.expire(now_ms));
        let start = (now_ms.div_euclid(BUCKET_MS) - WINDOW_BUCKETS + 1) * BUCKET_MS;
        let mut out: Vec<_> = self
            .calls
            .iter()
            .map(|((from, to), c)| {
                let calls = c.total();
                let caller = self.received.get(from);
                let caller_requests = caller.map_or(0, Counts::total);
                let end = caller.map_or(c.last_seen_ms, |r| r.last_seen_ms.max(c.last_seen_ms));
                let obs = Observation {
                    calls,
                    caller_requests,
                    ratio: (caller_requests > 0).then(|| calls as f64 / caller_requests as f64),
                    window_start_ms: start.max(c.first_seen_ms.min(end)),
                    window_end_ms: end,
                    first_seen_ms: c.first_seen_ms,
                    last_seen_ms: c.last_seen_ms,
                };
                (from.clone(), to.clone(), obs)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presage_api::ServiceLoad;

    fn report(at_ms: i64, loads: &[(&str, &str, u64)]) -> LoadReport {
        LoadReport {
            unix_ms: at_ms,
            services: loads
                .iter()
                .map(|(service, endpoint, requests)| ServiceLoad {
                    service: service.to_string(),
                    endpoint: endpoint.to_string(),
                    requests: *requests,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn calls_per_request_of_the_caller_over_the_window() {
        let mut o = Observed::default();
        let t = 10 * BUCKET_MS;
        // The edge proxy sends 100 requests to frontend; frontend's sidecar sends 250 to
        // api (the per-instance entry repeats 50 of them) and 30 to search.
        o.record("", &report(t, &[("frontend", "", 100)]));
        o.record(
            "frontend",
            &report(
                t + 500,
                &[
                    ("api", "", 200),
                    ("api", "", 50),
                    ("api", "10.0.0.1:80", 50),
                    ("search", "", 30),
                ],
            ),
        );
        // api's sidecar calls db; nobody reports requests to api from outside frontend's.
        o.record("api", &report(t + 900, &[("db", "", 500)]));
        let edges = o.edges(t + 1000);
        let got: Vec<(&str, &str, u64, Option<f64>)> = edges
            .iter()
            .map(|(f, to, e)| (f.as_str(), to.as_str(), e.calls, e.ratio))
            .collect();
        assert_eq!(
            got,
            [
                ("api", "db", 500, Some(2.0)),
                ("frontend", "api", 250, Some(2.5)),
                ("frontend", "search", 30, Some(0.3)),
            ]
        );
        assert_eq!(edges[1].2.window_end_ms, t + 500);
        // Past the window the edges are forgotten.
        assert!(o.edges(t + (WINDOW_BUCKETS + 1) * BUCKET_MS).is_empty());
    }

    #[test]
    fn a_caller_whose_requests_nobody_reports_has_calls_but_no_ratio() {
        let mut o = Observed::default();
        o.record("batch", &report(0, &[("db", "", 40)]));
        let edges = o.edges(1);
        assert_eq!(edges[0].2.calls, 40);
        assert_eq!(edges[0].2.ratio, None);
    }
}
