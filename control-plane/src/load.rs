//! Load history per service, built from the proxies' telemetry: one bucket per second
//! for the last hour, one per minute for the last week, plus lifetime totals.
//!
//! Reports from many proxies land in the same second; each second stays open for
//! `GRACE_SECONDS` so late reports still count, and its latency histograms are merged
//! before the quantiles are taken (quantiles cannot be merged afterwards). This module is
//! pure bookkeeping: decoding happens here, storage and serving happen elsewhere.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Seconds a bucket stays open for late reports (one reporting interval plus jitter).
pub const GRACE_SECONDS: i64 = 3;
/// One hour of 1-second buckets.
const SECONDS_KEPT: usize = 3600;
/// One week of 1-minute buckets.
const MINUTES_KEPT: usize = 7 * 24 * 60;

/// One interval of one service's load.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Point {
    /// Start of the interval, Unix seconds.
    pub unix_s: i64,
    pub requests: u64,
    pub errors: u64,
    /// Requests in flight at the end of the interval, summed over proxies (max over a minute).
    pub in_flight: u64,
    /// Latency quantiles in milliseconds (max of the seconds' values over a minute).
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Default)]
struct Open {
    point: Point,
    latency: Option<Histogram<u64>>,
}

/// The history of one service.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub requests_total: u64,
    pub errors_total: u64,
    seconds: VecDeque<Point>,
    minutes: VecDeque<Point>,
    #[serde(skip)]
    open: BTreeMap<i64, Open>,
    /// The current, partial minute.
    minute: Option<Point>,
}

impl History {
    fn add(
        &mut self,
        unix_s: i64,
        requests: u64,
        errors: u64,
        in_flight: u64,
        latency: Option<Histogram<u64>>,
    ) {
        self.requests_total += requests;
        self.errors_total += errors;
        let open = self.open.entry(unix_s).or_insert_with(|| Open {
            point: Point {
                unix_s,
                ..Default::default()
            },
            latency: None,
        });
        open.point.requests += requests;
        open.point.errors += errors;
        open.point.in_flight += in_flight;
        if let Some(h) = latency {
            match &mut open.latency {
                Some(acc) => {
                    // Same bounds on both sides (the proxy's), so this cannot fail; a
                    // foreign histogram that does is dropped rather than trusted.
                    let _ = acc.add(&h);
                }
                None => open.latency = Some(h),
            }
        }
        let newest = *self.open.keys().next_back().expect("just inserted");
        self.close_before(newest - GRACE_SECONDS);
    }

    fn close_before(&mut self, limit: i64) {
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= limit {
                break;
            }
            let Open { mut point, latency } = entry.remove();
            if let Some(h) = latency.filter(|h| !h.is_empty()) {
                point.p50_ms = h.value_at_quantile(0.5) as f64 / 1000.0;
                point.p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
            }
            push_capped(&mut self.seconds, point, SECONDS_KEPT);
            let minute_start = point.unix_s.div_euclid(60) * 60;
            match &mut self.minute {
                Some(m) if m.unix_s == minute_start => {
                    m.requests += point.requests;
                    m.errors += point.errors;
                    m.in_flight = m.in_flight.max(point.in_flight);
                    m.p50_ms = m.p50_ms.max(point.p50_ms);
                    m.p99_ms = m.p99_ms.max(point.p99_ms);
                }
                _ => {
                    if let Some(done) = self.minute.take() {
                        push_capped(&mut self.minutes, done, MINUTES_KEPT);
                    }
                    self.minute = Some(Point {
                        unix_s: minute_start,
                        ..point
                    });
                }
            }
        }
    }

    /// Closed 1-second points, oldest first.
    pub fn seconds(&self) -> impl Iterator<Item = &Point> {
        self.seconds.iter()
    }

    /// 1-minute points, oldest first, the current partial minute last.
    pub fn minutes(&self) -> impl Iterator<Item = &Point> {
        self.minutes.iter().chain(self.minute.iter())
    }
}

fn push_capped(q: &mut VecDeque<Point>, p: Point, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(p);
}

/// Every service's history.
#[derive(Debug, Default)]
pub struct Load {
    services: Mutex<HashMap<String, History>>,
}

/// A report the control plane could not read in full (the rest of it still counts).
#[derive(Debug, thiserror::Error)]
#[error("service {service}: latency_histogram: {message}")]
pub struct ReportError {
    pub service: String,
    pub message: String,
}

impl Load {
    /// Adds one proxy report. Counts always land; a histogram that does not decode is
    /// reported and skipped.
    pub fn ingest(&self, report: &presage_api::LoadReport) -> Vec<ReportError> {
        let mut errors = Vec::new();
        let unix_s = report.unix_ms.div_euclid(1000);
        let mut decoded = Vec::with_capacity(report.services.len());
        let mut de = Deserializer::new();
        // Per-profile and per-endpoint entries repeat what their service's own entry
        // counts; they feed the SLA monitor, not the service history.
        let services: Vec<&presage_api::ServiceLoad> = report
            .services
            .iter()
            .filter(|s| s.qos_profile.is_empty() && s.endpoint.is_empty())
            .collect();
        for s in &services {
            let latency = if s.latency_histogram.is_empty() {
                None
            } else {
                match de.deserialize::<u64, _>(&mut s.latency_histogram.as_slice()) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        errors.push(ReportError {
                            service: s.service.clone(),
                            message: format!("{e:?}"),
                        });
                        None
                    }
                }
            };
            decoded.push(latency);
        }
        let mut map = self.services.lock().expect("load lock poisoned");
        for (s, latency) in services.into_iter().zip(decoded) {
            map.entry(s.service.clone()).or_default().add(
                unix_s,
                s.requests,
                s.errors,
                s.in_flight,
                latency,
            );
        }
        errors
    }

    /// Reads one service's history as of `now_s` (Unix seconds): seconds past their grace
    /// are closed first, so a service whose traffic stopped still shows its last seconds.
    pub fn with<R>(&self, service: &str, now_s: i64, f: impl FnOnce(Option<&History>) -> R) -> R {
        let mut map = self.services.lock().expect("load lock poisoned");
        let h = map.get_mut(service);
        if let Some(h) = h {
            h.close_before(now_s - GRACE_SECONDS);
            return f(Some(h));
        }
        f(None)
    }

    /// Names of every service with a history.
    pub fn services(&self) -> Vec<String> {
        let map = self.services.lock().expect("load lock poisoned");
        map.keys().cloned().collect()
    }

    /// Lifetime totals per service: (requests, errors).
    pub fn totals(&self) -> HashMap<String, (u64, u64)> {
        let map = self.services.lock().expect("load lock poisoned");
        map.iter()
            .map(|(k, h)| (k.clone(), (h.requests_total, h.errors_total)))
            .collect()
    }

    /// Every history, encoded for the store.
    pub fn encode_all(&self) -> Vec<(String, Vec<u8>)> {
        let map = self.services.lock().expect("load lock poisoned");
        map.iter()
            .filter_map(|(k, h)| Some((k.clone(), serde_json::to_vec(h).ok()?)))
            .collect()
    }

    /// Restores histories saved by `encode_all`; undecodable ones are skipped and named.
    pub fn restore(&self, items: Vec<(String, Vec<u8>)>) -> Vec<String> {
        let mut bad = Vec::new();
        let mut map = self.services.lock().expect("load lock poisoned");
        for (k, bytes) in items {
            match serde_json::from_slice::<History>(&bytes) {
                Ok(h) => {
                    map.insert(k, h);
                }
                Err(_) => bad.push(k),
            }
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};

    fn report(
        unix_ms: i64,
        service: &str,
        requests: u64,
        latency_us: &[u64],
    ) -> presage_api::LoadReport {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in latency_us {
            h.record(*v).unwrap();
        }
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&h, &mut bytes)
            .unwrap();
        presage_api::LoadReport {
            unix_ms,
            services: vec![presage_api::ServiceLoad {
                service: service.into(),
                requests,
                errors: 1,
                in_flight: 2,
                latency_histogram: bytes,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn reports_of_one_second_merge_and_close_after_the_grace() {
        let load = Load::default();
        load.ingest(&report(10_000, "web", 5, &[1000; 5]));
        load.ingest(&report(10_400, "web", 5, &[9000; 5]));
        load.ingest(&report(12_000, "web", 1, &[1000]));
        load.with("web", 14, |h| {
            let h = h.unwrap();
            assert_eq!(h.requests_total, 11);
            assert_eq!(h.errors_total, 3);
            let s: Vec<_> = h.seconds().collect();
            assert_eq!(s.len(), 1, "only second 10 is closed");
            assert_eq!((s[0].unix_s, s[0].requests, s[0].in_flight), (10, 10, 4));
            // Merged, not averaged: half the requests took 9 ms.
            assert!((s[0].p99_ms - 9.0).abs() < 0.01, "{}", s[0].p99_ms);
            assert!((s[0].p50_ms - 1.0).abs() < 0.01, "{}", s[0].p50_ms);
        });
    }

    #[test]
    fn a_bad_histogram_is_named_and_the_counts_still_land() {
        let load = Load::default();
        let mut r = report(10_000, "web", 5, &[]);
        r.services[0].latency_histogram = vec![1, 2, 3];
        let errs = load.ingest(&r);
        assert_eq!(errs.len(), 1);
        assert!(errs[0]
            .to_string()
            .starts_with("service web: latency_histogram"));
        assert_eq!(load.totals()["web"], (5, 1));
    }

    #[test]
    fn history_survives_encode_and_restore() {
        let load = Load::default();
        for s in 0..200 {
            load.ingest(&report(s * 1000, "web", 2, &[500]));
        }
        let saved = load.encode_all();
        let back = Load::default();
        assert!(back.restore(saved).is_empty());
        back.with("web", 199, |h| {
            let h = h.unwrap();
            assert_eq!(h.requests_total, 400);
            assert_eq!(h.seconds().count(), 196, "0..=195 closed, 196.. still open");
            assert_eq!(
                h.minutes().count(),
                4,
                "three closed minutes and the partial one"
            );
        });
    }
}
