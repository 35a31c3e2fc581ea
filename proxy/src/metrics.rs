//! Prometheus/OpenMetrics metrics of the proxy, registered once at start-up.
//!
//! The request path never looks up a label set: each route holds pre-resolved handles
//! (`RouteStats`) created when the route is built, so recording is an atomic add and one
//! uncontended lock for the latency histogram. Latencies are recorded with HdrHistogram
//! (microseconds, 2 significant digits, as Envoy's histograms keep) and exported as a
//! Prometheus histogram plus quantile gauges. Endpoint health is read from the live
//! config at scrape time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub cluster: String,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub cluster: String,
    pub kind: &'static str,
}

/// `ErrorLabels::kind` values.
pub const ERROR_KINDS: [&str; 3] = ["connect", "other", "status_5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsLabels {
    pub type_url: &'static str,
    /// `ack` or `nack`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QosLabels {
    pub tier: String,
    /// `admitted`, `shed` (overload, by tier priority), `throttled` (profile rate), or
    /// `missed` (admitted, but no endpoint met the profile: served by the best available).
    pub outcome: &'static str,
}

/// QoS admission outcomes, in the order of `Metrics::qos_counters` handles; `warm_hit`
/// and `warm_miss`: a request of a tier with a warm pool in its cluster served by it, or
/// not (none usable).
pub const QOS_OUTCOMES: [&str; 6] = [
    "admitted",
    "shed",
    "throttled",
    "missed",
    "warm_hit",
    "warm_miss",
];
/// Indexes into `QOS_OUTCOMES` and each tier's `Metrics::qos_counters` handles.
pub const ADMITTED: usize = 0;
pub const SHED: usize = 1;
pub const THROTTLED: usize = 2;
pub const MISSED: usize = 3;
pub const WARM_HIT: usize = 4;
pub const WARM_MISS: usize = 5;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowLabels {
    pub workflow: String,
    /// `succeeded`, `failed` (a step failed for good), `deadline`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// All metrics; cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub retries: Family<ClusterLabels, Counter>,
    pub hedges: Family<ClusterLabels, Counter>,
    pub idle_timeouts: Family<ClusterLabels, Counter>,
    /// Upstream connections opened by the in-task HTTP/1.1 path (`h1`).
    pub upstream_connections: Family<ClusterLabels, Counter>,
    /// Redirected connections passed through as TCP, and requests that matched no route
    /// passed to their original destination (transparent listeners).
    pub passthrough_connections: Counter,
    pub passthrough_requests: Counter,
    /// Workload certificate renewals by result (`ok`, `error`).
    pub identity_renewals: Family<ResultLabels, Counter>,
    /// Workflow runs ended, by workflow and outcome.
    pub workflow_runs: Family<WorkflowLabels, Counter>,
    /// When the current workload certificate expires (Unix seconds; 0: none yet).
    pub identity_expiry: Gauge,
    /// Inbound mutual-TLS connections accepted from mesh peers.
    pub mtls_connections: Counter,
    /// Requests refused by a listener's authorization rules.
    pub authz_denied: Counter,
    pub ejections: Family<ClusterLabels, Counter>,
    pub ejections_refused: Family<ClusterLabels, Counter>,
    pub upstream_errors: Family<ErrorLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub generation: Gauge,
    pub active_connections: Gauge,
    pub connections: Counter,
    pub access_log_dropped: Counter,
    pub latency: Arc<LatencyCollector>,
    pub xds_updates: Family<XdsLabels, Counter>,
    pub xds_reconnects: Counter,
    pub telemetry_reports_dropped: Counter,
    pub telemetry_transitions_dropped: Counter,
    /// Per-service counters for the control plane's telemetry (not exported here).
    pub service_load: crate::load::ServiceLoads,
    pub qos_requests: Family<QosLabels, Counter>,
    /// Label values series were made for, so that `retain` can drop those of routes,
    /// clusters and tiers a new config no longer has.
    made: Mutex<Made>,
}

#[derive(Debug, Default)]
struct Made {
    routes: HashSet<(String, String)>,
    clusters: HashSet<String>,
    tiers: HashSet<String>,
}

/// The routes (name, cluster), clusters and tiers a config has: the series to keep.
#[derive(Debug, Default)]
pub struct LiveNames<'a> {
    pub routes: HashSet<(&'a str, &'a str)>,
    pub clusters: HashSet<&'a str>,
    pub tiers: HashSet<&'a str>,
}

/// Route name of the stats for requests that matched no route; never dropped.
pub const NO_ROUTE: &str = "-";

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Handles one route records into.
#[derive(Debug, Clone)]
pub struct RouteStats {
    by_class: [Counter; 6],
    latency: Arc<Mutex<Histogram<u64>>>,
}

impl RouteStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        self.by_class[class].inc();
        let us = (elapsed.as_micros() as u64).max(1);
        if let Ok(mut h) = self.latency.lock() {
            h.saturating_record(us);
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let qos_requests: Family<QosLabels, Counter> = Family::default();
        Metrics {
            requests: Family::default(),
            retries: Family::default(),
            hedges: Family::default(),
            idle_timeouts: Family::default(),
            upstream_connections: Family::default(),
            passthrough_connections: Counter::default(),
            passthrough_requests: Counter::default(),
            identity_renewals: Family::default(),
            workflow_runs: Family::default(),
            identity_expiry: Gauge::default(),
            mtls_connections: Counter::default(),
            authz_denied: Counter::default(),
            ejections: Family::default(),
            ejections_refused: Family::default(),
            upstream_errors: Family::default(),
            reloads: Family::default(),
            generation: Gauge::default(),
            active_connections: Gauge::default(),
            connections: Counter::default(),
            access_log_dropped: Counter::default(),
            latency: Arc::new(LatencyCollector::default()),
            xds_updates: Family::default(),
            xds_reconnects: Counter::default(),
            telemetry_reports_dropped: Counter::default(),
            telemetry_transitions_dropped: Counter::default(),
            service_load: Default::default(),
            qos_requests,
            made: Mutex::default(),
        }
    }

    fn made(&self) -> std::sync::MutexGuard<'_, Made> {
        self.made.lock().expect("metrics names lock poisoned")
    }

    /// Drops every series of a route, cluster or tier that `live` does not have, so a
    /// removed one stops being exported (frozen) and its memory is freed: routes and
    /// clusters come and go with every scale event and API change of a mesh. A request
    /// still in flight on the old config records into handles no longer exported.
    pub fn retain(&self, live: &LiveNames<'_>) {
        let mut made = self.made();
        made.routes.retain(|(route, cluster)| {
            let keep =
                route == NO_ROUTE || live.routes.contains(&(route.as_str(), cluster.as_str()));
            if !keep {
                for status_class in CLASSES {
                    self.requests.remove(&RequestLabels {
                        route: route.clone(),
                        cluster: cluster.clone(),
                        status_class,
                    });
                }
                self.latency.remove(route, cluster);
            }
            keep
        });
        made.clusters.retain(|cluster| {
            let keep = live.clusters.contains(cluster.as_str());
            if !keep {
                let labels = ClusterLabels {
                    cluster: cluster.clone(),
                };
                for family in [
                    &self.retries,
                    &self.hedges,
                    &self.idle_timeouts,
                    &self.upstream_connections,
                    &self.ejections,
                    &self.ejections_refused,
                ] {
                    family.remove(&labels);
                }
                for kind in ERROR_KINDS {
                    self.upstream_errors.remove(&ErrorLabels {
                        cluster: cluster.clone(),
                        kind,
                    });
                }
            }
            keep
        });
        made.tiers.retain(|tier| {
            let keep = live.tiers.contains(tier.as_str());
            if !keep {
                for outcome in QOS_OUTCOMES {
                    self.qos_requests.remove(&QosLabels {
                        tier: tier.clone(),
                        outcome,
                    });
                }
            }
            keep
        });
    }

    /// A cluster's `upstream_errors` handle for `kind` (one of `ERROR_KINDS`).
    pub fn upstream_error(&self, cluster: &str, kind: &'static str) -> Counter {
        self.made().clusters.insert(cluster.to_string());
        self.upstream_errors
            .get_or_create(&ErrorLabels {
                cluster: cluster.to_string(),
                kind,
            })
            .clone()
    }

    /// Records a certificate renewal; `expires` is kept only when it succeeded.
    pub fn identity_renewed(&self, ok: bool, expires: std::time::SystemTime) {
        let result = if ok { "ok" } else { "error" };
        self.identity_renewals
            .get_or_create(&ResultLabels { result })
            .inc();
        if ok {
            let secs = expires
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.identity_expiry.set(secs as i64);
        }
    }

    /// A tier's `qos_requests` handles, by outcome (`QOS_OUTCOMES`).
    pub fn qos_counters(&self, tier: &str) -> [Counter; QOS_OUTCOMES.len()] {
        self.made().tiers.insert(tier.to_string());
        QOS_OUTCOMES.map(|outcome| {
            self.qos_requests
                .get_or_create(&QosLabels {
                    tier: tier.to_string(),
                    outcome,
                })
                .clone()
        })
    }

    /// Registers everything into `registry` under the `presage` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("presage");
        r.register(
            "requests",
            "Requests by route, cluster and status class",
            self.requests.clone(),
        );
        r.register(
            "retries",
            "Retries sent to upstream clusters",
            self.retries.clone(),
        );
        r.register(
            "passthrough_connections",
            "Redirected non-HTTP connections spliced to their original destination",
            self.passthrough_connections.clone(),
        );
        r.register(
            "passthrough_requests",
            "Redirected HTTP requests that matched no route, sent to their original destination",
            self.passthrough_requests.clone(),
        );
        r.register(
            "workflow_runs",
            "Workflow runs ended, by workflow and outcome (succeeded, failed, deadline)",
            self.workflow_runs.clone(),
        );
        r.register(
            "identity_renewals",
            "Workload certificate renewals from the control plane's CA, by result",
            self.identity_renewals.clone(),
        );
        r.register(
            "identity_expiry_timestamp_seconds",
            "When the current workload certificate expires (Unix seconds; 0 before the first)",
            self.identity_expiry.clone(),
        );
        r.register(
            "mtls_connections",
            "Inbound mutual-TLS connections accepted from mesh peers",
            self.mtls_connections.clone(),
        );
        r.register(
            "authorization_denied",
            "Requests refused (403) by a listener's authorization rules",
            self.authz_denied.clone(),
        );
        r.register(
            "hedges",
            "Hedged requests: a copy sent to a second endpoint when the first had not answered within the profile's latency target",
            self.hedges.clone(),
        );
        r.register(
            "upstream_idle_timeouts",
            "Response bodies cut because their upstream sent nothing, and upgraded connections closed because neither side did, for the cluster's idle_timeout",
            self.idle_timeouts.clone(),
        );
        r.register(
            "upstream_connections_opened",
            "Connections opened to upstream endpoints for body-less HTTP/1.1 requests; against requests, it shows how often a pooled connection was reused",
            self.upstream_connections.clone(),
        );
        r.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            self.ejections.clone(),
        );
        r.register(
            "outlier_ejections_refused",
            "Ejections due but not made: the cluster's max_ejection_percent was already ejected",
            self.ejections_refused.clone(),
        );
        r.register(
            "upstream_errors",
            "Failed upstream attempts by kind",
            self.upstream_errors.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            self.reloads.clone(),
        );
        r.register(
            "config_generation",
            "Generation of the live config (1 = as started)",
            self.generation.clone(),
        );
        r.register(
            "active_connections",
            "Open downstream connections",
            self.active_connections.clone(),
        );
        r.register(
            "connections",
            "Accepted downstream connections",
            self.connections.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
        r.register(
            "xds_updates",
            "Control-plane responses by resource type and result (ack, nack)",
            self.xds_updates.clone(),
        );
        r.register(
            "xds_reconnects",
            "Reconnections to the control plane",
            self.xds_reconnects.clone(),
        );
        r.register(
            "telemetry_reports_dropped",
            "Load reports dropped because the control plane was slow or away",
            self.telemetry_reports_dropped.clone(),
        );
        r.register(
            "telemetry_transitions_dropped",
            "User transitions dropped because one interval had too many",
            self.telemetry_transitions_dropped.clone(),
        );
        r.register(
            "qos_requests",
            "Routed requests by QoS tier and admission outcome",
            self.qos_requests.clone(),
        );
        r.register_collector(Box::new(self.latency.clone()));
    }

    pub fn route_stats(&self, route: &str, cluster: &str) -> RouteStats {
        self.made()
            .routes
            .insert((route.to_string(), cluster.to_string()));
        let by_class = CLASSES.map(|status_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.into(),
                    cluster: cluster.into(),
                    status_class,
                })
                .clone()
        });
        RouteStats {
            by_class,
            latency: self.latency.get(route, cluster),
        }
    }

    /// `family`'s handle for `cluster` (one of the per-cluster families above).
    pub fn cluster_counter(
        &self,
        family: &Family<ClusterLabels, Counter>,
        cluster: &str,
    ) -> Counter {
        self.made().clusters.insert(cluster.to_string());
        family
            .get_or_create(&ClusterLabels {
                cluster: cluster.into(),
            })
            .clone()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One latency histogram, shared by a route's handles and the exporter.
type SharedHistogram = Arc<Mutex<Histogram<u64>>>;

/// Per (route, cluster) latency histograms; series survive reloads that keep the names.
#[derive(Debug, Default)]
pub struct LatencyCollector {
    series: Mutex<HashMap<(String, String), SharedHistogram>>,
}

/// Bucket bounds in seconds, Prometheus' defaults extended down to 100 µs for a proxy.
const BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

impl LatencyCollector {
    fn get(&self, route: &str, cluster: &str) -> Arc<Mutex<Histogram<u64>>> {
        let mut s = self.series.lock().expect("latency registry lock poisoned");
        s.entry((route.into(), cluster.into()))
            .or_insert_with(|| {
                // 1 µs .. 1 h at 2 significant digits (1% resolution): 3,328 counters,
                // 26 KiB per series, allocated and zeroed when the route is built; 3
                // digits would take 23,552 (184 KiB) for precision the buckets drop.
                let h = Histogram::new_with_bounds(1, 3_600_000_000, 2)
                    .expect("static bounds are valid");
                Arc::new(Mutex::new(h))
            })
            .clone()
    }

    fn remove(&self, route: &str, cluster: &str) {
        let mut s = self.series.lock().expect("latency registry lock poisoned");
        s.remove(&(route.to_string(), cluster.to_string()));
    }

    fn snapshot(&self) -> Vec<((String, String), Histogram<u64>)> {
        let s = self.series.lock().expect("latency registry lock poisoned");
        s.iter()
            .filter_map(|(k, h)| Some((k.clone(), h.lock().ok()?.clone())))
            .collect()
    }
}

impl Collector for LatencyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot();
        {
            let mut m = encoder.encode_descriptor(
                "request_duration_seconds",
                "Time from request received to response headers sent (HdrHistogram)",
                None,
                MetricType::Histogram,
            )?;
            for ((route, cluster), h) in &snap {
                let mut prev = 0;
                let mut buckets: Vec<(f64, u64)> = BUCKETS
                    .iter()
                    .map(|&b| {
                        let cum = h.count_between(0, (b * 1e6) as u64);
                        let n = cum.saturating_sub(prev);
                        prev = cum;
                        (b, n)
                    })
                    .collect();
                buckets.push((f64::INFINITY, h.len().saturating_sub(prev)));
                let sum = h.mean() * h.len() as f64 / 1e6;
                let labels = [("route", route.as_str()), ("cluster", cluster.as_str())];
                m.encode_family(&labels)?
                    .encode_histogram::<[(&str, &str); 0]>(sum, h.len(), &buckets, None)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "request_duration_quantile_seconds",
            "Latency quantiles since start (HdrHistogram, 2 significant digits)",
            None,
            MetricType::Gauge,
        )?;
        for ((route, cluster), h) in &snap {
            for (q, name) in [(0.5, "0.5"), (0.99, "0.99"), (0.999, "0.999")] {
                let labels = [
                    ("route", route.as_str()),
                    ("cluster", cluster.as_str()),
                    ("quantile", name),
                ];
                let v = h.value_at_quantile(q) as f64 / 1e6;
                ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Encodes the registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_series_is_tens_of_kib_at_one_percent_and_shared_by_name() {
        let c = LatencyCollector::default();
        let h = c.get("api", "backend");
        assert!(Arc::ptr_eq(&h, &c.get("api", "backend")));
        assert!(!Arc::ptr_eq(&h, &c.get("api", "other")));
        let mut h = h.lock().unwrap();
        // Each series' counters are zeroed when its route is built: a hundred routes
        // hold 2.6 MiB of them, not the 18 MiB that 3 digits would.
        assert!(
            h.distinct_values() * 8 <= 32 * 1024,
            "{}",
            h.distinct_values()
        );
        for v in [150, 12_345, 2_500_000, 3_000_000_000] {
            h.record(v).unwrap();
            let back = h.highest_equivalent(v) as f64;
            assert!(back / v as f64 - 1.0 < 0.01, "{v} -> {back}");
        }
    }

    /// Routes, clusters and tiers a new config no longer has stop being exported; those
    /// it keeps keep their counts.
    #[test]
    fn retain_drops_the_series_of_what_the_config_no_longer_has() {
        let m = Metrics::new();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.route_stats(NO_ROUTE, NO_ROUTE)
            .record(404, Duration::from_millis(1));
        m.route_stats("old", "gone")
            .record(200, Duration::from_millis(1));
        m.route_stats("kept", "up")
            .record(200, Duration::from_millis(1));
        m.cluster_counter(&m.retries, "gone").inc();
        m.cluster_counter(&m.retries, "up").inc();
        m.upstream_error("gone", ERROR_KINDS[0]).inc();
        m.qos_counters("bronze")[ADMITTED].inc();
        m.qos_counters("gold")[ADMITTED].inc();
        let text = encode(&registry);
        for s in [r#"route="old""#, r#"cluster="gone""#, r#"tier="bronze""#] {
            assert!(text.contains(s), "{s} before: {text}");
        }
        m.retain(&LiveNames {
            routes: [("kept", "up")].into(),
            clusters: ["up"].into(),
            tiers: ["gold"].into(),
        });
        let text = encode(&registry);
        for s in [r#"route="old""#, r#"cluster="gone""#, r#"tier="bronze""#] {
            assert!(!text.contains(s), "{s} after: {text}");
        }
        for s in [
            r#"presage_requests_total{route="kept",cluster="up",status_class="2xx"} 1"#,
            r#"presage_requests_total{route="-",cluster="-",status_class="4xx"} 1"#,
            r#"presage_retries_total{cluster="up"} 1"#,
            r#"presage_request_duration_seconds_count{route="kept",cluster="up"} 1"#,
            r#"tier="gold""#,
        ] {
            assert!(text.contains(s), "{s} kept: {text}");
        }
    }
}
