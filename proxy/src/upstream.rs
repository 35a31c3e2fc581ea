//! Upstream clusters: endpoints with their live state, the balancer, and the pooled
//! client that carries requests to them (keep-alive, HTTP/1.1 or HTTP/2, optional TLS).
//!
//! A `Cluster` is built from a `ClusterSpec` and lives as long as its spec is unchanged,
//! across reloads, so connection pools and latency estimates survive them.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::Scheme;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;

use crate::balance::{Balancer, FailureRate, PeakEwma};
use crate::body::RequestBody;
use crate::config::{ClusterSpec, EndpointSpec, Protocol};
use crate::metrics::Metrics;
use crate::outlier::{now_ms, OutlierState};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// How long an idle pooled connection is kept (below common upstream keep-alive timeouts
/// such as nginx's 75 s, so the upstream rarely closes a connection we are about to use).
const POOL_IDLE: Duration = Duration::from_secs(60);

/// One upstream instance and what the proxy has learned about it.
#[derive(Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    pub scheme: Scheme,
    pub ewma: PeakEwma,
    /// Recent failed share of attempts, for profiles with a reliability target.
    pub failures: FailureRate,
    pub pending: AtomicUsize,
    pub outlier: OutlierState,
    pub index: usize,
    /// `accuracy` metadata (0..1; 1 when absent: an exact service), for QoS selection.
    pub accuracy: f64,
    /// `price` metadata (per hour; 0 when absent), for QoS selection.
    pub price: f64,
    /// A warm-pool instance (`pool: warm`) held out of general rotation for requests of
    /// a user or a QoS tier (see `warm`).
    pub reserved_for: Option<crate::warm::Reservation>,
    /// Attempts sent here, for the control plane's per-instance QoS.
    pub load: Arc<crate::load::ServiceLoad>,
    /// Idle connections of the in-task HTTP/1.1 path (see `h1`).
    pub pool: Arc<crate::h1::Pool>,
}

impl Endpoint {
    /// Lower is better: expected latency (as of `now`, `outlier::now_ms`) times queue
    /// depth, divided by weight.
    pub fn load_cost(&self, now: u64) -> f64 {
        self.ewma.estimate_at(now) * (self.pending.load(Relaxed) + 1) as f64
            / self.spec.weight as f64
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub spec: ClusterSpec,
    pub endpoints: Vec<Endpoint>,
    /// Some endpoints are a warm pool (see `Endpoint::reserved_for`).
    pub has_warm: bool,
    /// Some are reserved for single users: only then is a request's user read.
    pub has_user_warm: bool,
    pub balancer: Balancer,
    pub client: UpstreamClient,
    /// Plain-text HTTP/1.1: body-less requests take the in-task path (`h1`).
    pub direct: bool,
    pub retries: Counter,
    /// Hedged attempts: a copy sent to a second endpoint (see `attempt::hedged`).
    pub hedges: Counter,
    /// Response bodies cut after `spec.idle_timeout` of silence (`body::Idle`).
    pub idle_timeouts: Counter,
    /// Requests admitted and not yet answered (see `qos::admit`).
    pub in_flight: AtomicUsize,
    ejections: Counter,
    /// Ejections due but refused by `max_ejection_percent`.
    ejections_refused: Counter,
    /// Held while an ejection is decided (see `record`).
    ejecting: std::sync::Mutex<()>,
    connect_errors: Counter,
    other_errors: Counter,
    status_5xx: Counter,
}

/// A metadata value as a number: a JSON number, or a string holding one (registries
/// and the control plane send strings).
fn metadata_number(
    m: &std::collections::BTreeMap<String, serde_json::Value>,
    key: &str,
) -> Option<f64> {
    match m.get(key)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|v: &f64| v.is_finite())
}

/// What happened to one attempt, for outlier detection and the latency estimate.
#[derive(Debug)]
pub enum Outcome {
    Success(Duration),
    /// A 5xx answer: counts toward ejection, but the latency is real.
    ServerError(Duration),
    ConnectError,
    OtherError,
}

impl Outcome {
    /// The outcome of an attempt that failed without a response.
    pub fn failed(err: &crate::errors::ProxyError) -> Self {
        if err.is_connect() {
            Outcome::ConnectError
        } else {
            Outcome::OtherError
        }
    }
}

impl Cluster {
    /// A cluster built from `spec`. An endpoint that `previous` (the cluster it replaces
    /// after a reload or a push) also had keeps what was learnt of it: its latency
    /// estimate, failure rate and ejection, and its idle connections when the transport
    /// is the same. An autoscaled service's endpoints change often; the others must
    /// not start over each time.
    pub fn new(spec: ClusterSpec, metrics: &Metrics, previous: Option<&Cluster>) -> Self {
        let scheme = if spec.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let same_transport =
            previous.is_some_and(|p| p.spec.protocol == spec.protocol && p.spec.tls == spec.tls);
        let known: std::collections::HashMap<&http::uri::Authority, &Endpoint> = previous
            .map(|p| p.endpoints.iter().map(|e| (&e.spec.authority, e)).collect())
            .unwrap_or_default();
        let endpoints: Vec<Endpoint> = spec
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let old = known.get(&e.authority);
                Endpoint {
                    spec: e.clone(),
                    scheme: scheme.clone(),
                    ewma: old.map_or_else(PeakEwma::default, |o| o.ewma.carried()),
                    failures: old.map_or_else(FailureRate::default, |o| o.failures.carried()),
                    pending: AtomicUsize::new(0),
                    pool: match old.filter(|_| same_transport) {
                        Some(o) => o.pool.clone(),
                        None => crate::h1::Pool::new(
                            POOL_IDLE,
                            metrics.cluster_counter(&metrics.upstream_connections, &spec.name),
                        ),
                    },
                    outlier: old.map_or_else(OutlierState::default, |o| o.outlier.carried()),
                    index,
                    accuracy: metadata_number(&e.metadata, "accuracy").unwrap_or(1.0),
                    price: metadata_number(&e.metadata, "price").unwrap_or(0.0),
                    reserved_for: crate::warm::Reservation::of(&e.metadata),
                    load: metrics
                        .service_load
                        .get_endpoint(&spec.name, e.authority.as_ref()),
                }
            })
            .collect();
        let weights: Vec<u32> = spec.endpoints.iter().map(|e| e.weight).collect();
        let [connect_errors, other_errors, status_5xx] =
            crate::metrics::ERROR_KINDS.map(|kind| metrics.upstream_error(&spec.name, kind));
        let has_warm = endpoints.iter().any(|e| e.reserved_for.is_some());
        let has_user_warm = endpoints
            .iter()
            .any(|e| matches!(e.reserved_for, Some(crate::warm::Reservation::User(_))));
        Cluster {
            has_warm,
            has_user_warm,
            balancer: Balancer::new(spec.load_balancer, &weights),
            client: build_client(&spec),
            direct: spec.protocol == Protocol::Http1 && spec.tls.is_none(),
            endpoints,
            retries: metrics.cluster_counter(&metrics.retries, &spec.name),
            hedges: metrics.cluster_counter(&metrics.hedges, &spec.name),
            idle_timeouts: metrics.cluster_counter(&metrics.idle_timeouts, &spec.name),
            in_flight: AtomicUsize::new(0),
            ejections: metrics.cluster_counter(&metrics.ejections, &spec.name),
            ejections_refused: metrics.cluster_counter(&metrics.ejections_refused, &spec.name),
            ejecting: std::sync::Mutex::new(()),
            connect_errors,
            other_errors,
            status_5xx,
            spec,
        }
    }

    /// Whether one more endpoint may be ejected: the first always may, more only while
    /// the share ejected stays within `max_ejection_percent`.
    fn may_eject(&self, now: u64) -> bool {
        let ejected = (self.endpoints.iter())
            .filter(|e| e.outlier.is_ejected(now))
            .count();
        ejected == 0
            || (ejected + 1) * 100
                <= self.spec.outlier.max_ejection_percent as usize * self.endpoints.len()
    }

    pub fn record(&self, ep: &Endpoint, outcome: Outcome) {
        // One clock read for every estimate the outcome updates.
        let now = now_ms();
        ep.failures
            .observe_at(now, !matches!(outcome, Outcome::Success(_)));
        let failed = match outcome {
            Outcome::Success(rtt) => {
                ep.ewma.observe_at(now, rtt);
                ep.outlier.on_success();
                return;
            }
            Outcome::ServerError(rtt) => {
                ep.ewma.observe_at(now, rtt);
                self.status_5xx.inc();
                true
            }
            Outcome::ConnectError => {
                self.connect_errors.inc();
                true
            }
            Outcome::OtherError => {
                self.other_errors.inc();
                true
            }
        };
        if failed {
            let may_eject = || {
                let ok = self.may_eject(now);
                if !ok {
                    self.ejections_refused.inc();
                    tracing::debug!(cluster = %self.spec.name, endpoint = %ep.spec.authority, "endpoint not ejected: max_ejection_percent already ejected");
                }
                ok
            };
            // Counting the ejected and ejecting are one step per cluster, or endpoints
            // failing together (a shared fault) could all pass the cap at once. Only
            // failures take the lock, for a few atomic operations.
            let _one_at_a_time = self.ejecting.lock();
            if let Some(d) = ep.outlier.on_failure(&self.spec.outlier, now, may_eject) {
                self.ejections.inc();
                tracing::warn!(cluster = %self.spec.name, endpoint = %ep.spec.authority, ejected_for = ?d, "endpoint ejected");
            }
        }
    }
}

fn plain_tls() -> rustls::ClientConfig {
    // Never used to handshake (plain clusters use http:// URIs), but the connector type
    // is shared with TLS clusters and needs one.
    static CFG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    (**CFG.get_or_init(|| {
        crate::tls::client_config(None).expect("the built-in roots form a valid config")
    }))
    .clone()
}

fn build_client(spec: &ClusterSpec) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(spec.connect_timeout));
    http.set_keepalive(Some(crate::h1::TCP_KEEPALIVE));
    let tls = spec
        .tls
        .as_ref()
        .map_or_else(plain_tls, |t| (*t.config).clone());
    let mut b = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = spec.tls.as_ref().and_then(|t| t.server_name.clone()) {
        if let Ok(sn) = rustls::pki_types::ServerName::try_from(name) {
            b = b.with_server_name_resolver(FixedServerNameResolver::new(sn));
        }
    }
    let connector = match spec.protocol {
        Protocol::Http1 => b.enable_http1().wrap_connector(http),
        Protocol::Http2 => b.enable_http2().wrap_connector(http),
    };
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .http2_only(spec.protocol == Protocol::Http2)
        .http2_initial_stream_window_size(1 << 20)
        .http2_initial_connection_window_size(4 << 20)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoints: &str) -> ClusterSpec {
        let yaml = format!(
            "listeners: [{{address: \"127.0.0.1:0\"}}]\nroutes: [{{cluster: web}}]\n\
             clusters:\n  - name: web\n    outlier_detection: {{consecutive_failures: 2}}\n    endpoints: {endpoints}\n"
        );
        crate::config::parse(&yaml, "t.yaml", None)
            .unwrap()
            .clusters
            .remove(0)
    }

    /// An endpoint change (a scale-up, a new weight) rebuilds the cluster; the endpoints
    /// it keeps keep their ejection, latency estimate and idle connections.
    #[test]
    fn a_rebuilt_cluster_keeps_what_it_knew_of_the_endpoints_it_keeps() {
        let metrics = Metrics::new();
        let a = Cluster::new(
            spec("[{address: \"10.0.0.1:80\"}, {address: \"10.0.0.2:80\"}]"),
            &metrics,
            None,
        );
        let x = &a.endpoints[0];
        let now = now_ms();
        x.ewma.observe_at(now, Duration::from_millis(40));
        assert!(x
            .outlier
            .on_failure(&a.spec.outlier, now, || true)
            .is_none());
        assert!(x
            .outlier
            .on_failure(&a.spec.outlier, now, || true)
            .is_some());
        let b = Cluster::new(
            spec("[{address: \"10.0.0.1:80\", weight: 2}, {address: \"10.0.0.3:80\"}]"),
            &metrics,
            Some(&a),
        );
        let (kept, new) = (&b.endpoints[0], &b.endpoints[1]);
        assert!(kept.outlier.is_ejected(now), "still ejected");
        assert_eq!(kept.ewma.estimate_at(now), x.ewma.estimate_at(now));
        assert!(Arc::ptr_eq(&kept.pool, &x.pool), "its idle connections");
        assert!(!new.outlier.is_ejected(now));
        assert!(!Arc::ptr_eq(&new.pool, &a.endpoints[1].pool));
    }

    /// A fault shared by many endpoints ejects at most `max_ejection_percent` of them
    /// (one always may be), so the rest do not take the whole cluster's load.
    #[test]
    fn at_most_the_capped_share_of_a_cluster_is_ejected() {
        let metrics = Metrics::new();
        let four = (1..=4)
            .map(|i| format!("{{address: \"10.0.0.{i}:80\"}}"))
            .collect::<Vec<_>>()
            .join(", ");
        let c = Cluster::new(spec(&format!("[{four}]")), &metrics, None);
        assert_eq!(c.spec.outlier.max_ejection_percent, 50, "the default");
        let fail = |c: &Cluster, ep: &Endpoint| {
            for _ in 0..2 {
                c.record(ep, Outcome::ConnectError);
            }
        };
        c.endpoints.iter().for_each(|ep| fail(&c, ep));
        let now = now_ms();
        let ejected = |c: &Cluster| {
            c.endpoints
                .iter()
                .filter(|e| e.outlier.is_ejected(now))
                .count()
        };
        assert_eq!(ejected(&c), 2, "half of four");
        assert_eq!(c.ejections.get(), 2);
        assert_eq!(c.ejections_refused.get(), 2);

        let mut one = spec("[{address: \"10.0.0.9:80\"}]");
        one.outlier.max_ejection_percent = 0;
        let c = Cluster::new(one, &metrics, None);
        fail(&c, &c.endpoints[0]);
        assert_eq!(ejected(&c), 1, "one endpoint always may be");
    }
}
