//! SLA monitoring: per service and QoS profile, what the proxies report (their
//! per-profile telemetry entries) over 1 min, 1 h and 1 day; attainment of the profile's
//! targets; and alerts when a target is breached, with a resolve when it is met again.
//!
//! ```text
//! telemetry ──▶ Sla::ingest ──▶ windows (10 s x 1 h, 5 min x 1 d) per (service, profile)
//!                                   │
//!  every alerting.interval ─▶ evaluate against the QoS profiles ─▶ alerts ─▶ /v1/alerts
//!                                                                    └─▶ webhooks (Alertmanager v2)
//! ```
//! Objectives checked over `alerting.window` once it holds `min_requests`: p99 latency
//! (`latency_p99_ms`), median latency (`latency_p50_ms`) and success rate
//! (`reliability`). Throughput targets describe capacity to plan, not something demand
//! can breach, so they are reported but not alerted on. Attainment is the share of
//! buckets with traffic (10 s in the 1 min and 1 h windows, 5 min in the 1 day window)
//! in which every objective held.

pub mod alerts;
pub mod windows;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use hdrhistogram::serialization::Deserializer;
use presage_api::{LoadReport, QosProfile};
use serde::Serialize;

use windows::{bucket_summary, summarize, Ring, Summary};

const FINE_S: i64 = 10;
const COARSE_S: i64 = 300;

/// One (service, profile) pair's history.
#[derive(Debug, Clone)]
struct Series {
    fine: Ring,
    coarse: Ring,
}

impl Series {
    fn new() -> Series {
        Series {
            fine: Ring::new(FINE_S, 360),
            coarse: Ring::new(COARSE_S, 288),
        }
    }
}

/// Per-profile telemetry of every service.
#[derive(Debug, Default)]
pub struct Sla {
    series: Mutex<HashMap<(String, String), Series>>,
    /// Per instance, (service, host:port): five minutes of 10 s buckets.
    instances: Mutex<HashMap<(String, String), Ring>>,
}

/// One window of one profile of a service.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WindowStats {
    #[serde(flatten)]
    pub summary: Summary,
    /// Share of buckets with traffic in which every objective held (None: no traffic).
    pub attainment: Option<f64>,
}

/// `getQoSStatistics`: one profile's numbers over 1 min, 1 h and 1 day.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProfileStats {
    pub qos_profile: String,
    pub last_minute: WindowStats,
    pub last_hour: WindowStats,
    pub last_day: WindowStats,
}

/// Which objectives a summary breaks, as `(objective, measured, target)`.
pub fn breaches(s: &Summary, p: &QosProfile) -> Vec<(&'static str, f64, f64)> {
    let mut out = Vec::new();
    if p.latency_p99_ms > 0.0 && s.latency_p99_ms > p.latency_p99_ms {
        out.push(("latency_p99", s.latency_p99_ms, p.latency_p99_ms));
    }
    if p.latency_p50_ms > 0.0 && s.latency_p50_ms > p.latency_p50_ms {
        out.push(("latency_p50", s.latency_p50_ms, p.latency_p50_ms));
    }
    let success = 1.0 - s.error_rate;
    if p.reliability > 0.0 && s.requests > 0 && success < p.reliability {
        out.push(("reliability", success, p.reliability));
    }
    out
}

impl Sla {
    /// Takes the per-profile and per-instance entries of one report.
    pub fn ingest(&self, report: &LoadReport) {
        let unix_s = report.unix_ms.div_euclid(1000);
        let mut de = Deserializer::new();
        let mut latency_of = |s: &presage_api::ServiceLoad| {
            (!s.latency_histogram.is_empty())
                .then(|| {
                    de.deserialize::<u64, _>(&mut s.latency_histogram.as_slice())
                        .ok()
                })
                .flatten()
        };
        let mut inst = self.instances.lock().expect("sla lock poisoned");
        for s in report.services.iter().filter(|s| !s.endpoint.is_empty()) {
            let latency = latency_of(s);
            inst.entry((s.service.clone(), s.endpoint.clone()))
                .or_insert_with(|| Ring::new(FINE_S, 30))
                .add(unix_s, s.requests, s.errors, latency.as_ref());
        }
        drop(inst);
        let mut map = self.series.lock().expect("sla lock poisoned");
        for s in report.services.iter().filter(|s| !s.qos_profile.is_empty()) {
            let latency = latency_of(s);
            let series = map
                .entry((s.service.clone(), s.qos_profile.clone()))
                .or_insert_with(Series::new);
            for ring in [&mut series.fine, &mut series.coarse] {
                ring.add(unix_s, s.requests, s.errors, latency.as_ref());
            }
        }
    }

    /// The last `seconds` of one pair (in whole 10 s buckets), if it has any.
    pub fn recent(
        &self,
        service: &str,
        profile: &str,
        now_s: i64,
        seconds: i64,
    ) -> Option<Summary> {
        let map = self.series.lock().expect("sla lock poisoned");
        let s = map.get(&(service.to_string(), profile.to_string()))?;
        let since = now_s - seconds;
        Some(summarize(s.fine.since(since), seconds as f64))
    }

    /// One instance's last minute, as the proxies measured it.
    pub fn instance(&self, service: &str, endpoint: &str, now_s: i64) -> Option<Summary> {
        let map = self.instances.lock().expect("sla lock poisoned");
        let ring = map.get(&(service.to_string(), endpoint.to_string()))?;
        Some(summarize(ring.since(now_s - 60), 60.0))
    }

    /// Every (service, profile) pair with data.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let map = self.series.lock().expect("sla lock poisoned");
        let mut v: Vec<_> = map.keys().cloned().collect();
        v.sort();
        v
    }

    /// Statistics of every profile seen for `service`; `profiles` gives their targets.
    pub fn statistics(
        &self,
        service: &str,
        now_s: i64,
        profiles: &BTreeMap<String, QosProfile>,
    ) -> Vec<ProfileStats> {
        let map = self.series.lock().expect("sla lock poisoned");
        let mut out: Vec<ProfileStats> = map
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, p), series)| {
                let target = profiles.get(p);
                let window = |ring: &Ring, seconds: i64| {
                    let buckets: Vec<_> = ring.since(now_s - seconds).collect();
                    let with_traffic: Vec<_> = buckets.iter().filter(|b| b.requests > 0).collect();
                    let attainment = (!with_traffic.is_empty()).then(|| {
                        let met = with_traffic
                            .iter()
                            .filter(|b| {
                                let s = bucket_summary(b, ring.width_s() as f64);
                                target.is_none_or(|t| breaches(&s, t).is_empty())
                            })
                            .count();
                        met as f64 / with_traffic.len() as f64
                    });
                    WindowStats {
                        summary: summarize(buckets.into_iter(), seconds as f64),
                        attainment,
                    }
                };
                ProfileStats {
                    qos_profile: p.clone(),
                    last_minute: window(&series.fine, 60),
                    last_hour: window(&series.fine, 3600),
                    last_day: window(&series.coarse, 86_400),
                }
            })
            .collect();
        out.sort_by(|a, b| a.qos_profile.cmp(&b.qos_profile));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer, V2Serializer};
    use hdrhistogram::Histogram;

    /// A report with `n` requests of `ms` each under `profile`, beside the service total.
    pub(super) fn report(
        unix_s: i64,
        service: &str,
        profile: &str,
        n: u64,
        errors: u64,
        ms: u64,
    ) -> LoadReport {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
        h.record_n(ms * 1000, n).unwrap();
        let mut bytes = Vec::new();
        V2Serializer::new().serialize(&h, &mut bytes).unwrap();
        LoadReport {
            unix_ms: unix_s * 1000,
            services: vec![
                presage_api::ServiceLoad {
                    service: service.into(),
                    qos_profile: profile.into(),
                    requests: n,
                    errors,
                    latency_histogram: bytes.clone(),
                    ..Default::default()
                },
                // The service's own total is not the SLA's business.
                presage_api::ServiceLoad {
                    service: service.into(),
                    requests: 1000,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn profile(p99: f64, reliability: f64) -> QosProfile {
        QosProfile {
            name: "gold".into(),
            tier: "gold".into(),
            latency_p99_ms: p99,
            reliability,
            ..Default::default()
        }
    }

    #[test]
    fn statistics_and_attainment_per_profile() {
        let sla = Sla::default();
        // Two 10 s buckets: one fast and clean, one slow.
        sla.ingest(&report(1_000, "web", "gold", 100, 0, 20));
        sla.ingest(&report(1_010, "web", "gold", 100, 0, 300));
        sla.ingest(&report(1_010, "api", "gold", 5, 0, 1));
        let profiles = BTreeMap::from([("gold".to_string(), profile(100.0, 0.99))]);
        let stats = sla.statistics("web", 1_019, &profiles);
        assert_eq!(stats.len(), 1);
        let m = &stats[0].last_minute;
        assert_eq!(m.summary.requests, 200, "per-profile entries only");
        assert_eq!(
            m.attainment,
            Some(0.5),
            "one of two buckets met p99 <= 100 ms"
        );
        assert!(m.summary.latency_p99_ms > 250.0, "{m:?}");
        assert_eq!(stats[0].last_day.summary.requests, 200);
        assert_eq!(sla.pairs().len(), 2);
    }

    #[test]
    fn breaches_name_the_objective() {
        let s = Summary {
            requests: 100,
            errors: 5,
            error_rate: 0.05,
            latency_p50_ms: 10.0,
            latency_p99_ms: 80.0,
            ..Default::default()
        };
        let found: Vec<&str> = breaches(&s, &profile(50.0, 0.99))
            .iter()
            .map(|b| b.0)
            .collect();
        assert_eq!(found, ["latency_p99", "reliability"]);
        assert!(breaches(&s, &profile(100.0, 0.9)).is_empty());
    }
}
