//! State shared by every task of a running proxy: the live runtime (swapped on reload or
//! control-plane update), the control plane's resources, metrics, telemetry, and the
//! status the admin endpoints report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::access_log::AccessLog;
use crate::config::dynamic::Dynamic;
use crate::config::Config;
use crate::metrics::{LiveNames, Metrics, RouteStats};
use crate::outlier::now_ms;
use crate::runtime::Runtime;
use crate::telemetry::Telemetry;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReloadStatus {
    /// Generation of the live config; 1 is the config the proxy started with.
    pub generation: u64,
    /// Failed reloads since start.
    pub failures: u64,
    /// The last failed reload's error (one line per problem), cleared by a success.
    pub last_error: Option<String>,
}

/// Progress of the discovery stream, for `/ready` and `/config/dynamic`.
#[derive(Debug)]
pub struct XdsStatus {
    pub connected: AtomicBool,
    /// Set once clusters and routes have each been applied at least once.
    synced: AtomicBool,
    applied: Mutex<std::collections::BTreeSet<&'static str>>,
    started: std::time::Instant,
}

impl XdsStatus {
    fn new() -> XdsStatus {
        XdsStatus {
            connected: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            applied: Mutex::new(Default::default()),
            started: std::time::Instant::now(),
        }
    }

    pub fn applied(&self, type_url: &'static str) {
        let mut a = self.applied.lock().expect("xds status lock poisoned");
        a.insert(type_url);
        if a.contains(presage_api::types::CLUSTER)
            && a.contains(presage_api::types::ROUTE)
            && !self.synced.swap(true, Ordering::Relaxed)
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "presage: synced with the control plane");
            let _ = out.flush();
        }
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Ready to take traffic: synced, or waited `timeout` for the first resources.
    pub fn ready(&self, timeout: std::time::Duration) -> bool {
        self.synced() || self.started.elapsed() >= timeout
    }
}

#[derive(Debug)]
pub struct Shared {
    pub live: Arc<ArcSwap<Runtime>>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Requests that matched no route are counted here.
    pub no_route: RouteStats,
    /// Set when shutdown starts: `/ready` turns 503 so load balancers stop sending.
    pub draining: AtomicBool,
    pub reload: Mutex<ReloadStatus>,
    /// Writer of the JSON access log (used while `access_log.enabled`).
    pub access_log: AccessLog,
    /// What the control plane sent (empty without one); merged into every config build.
    pub dynamic: Mutex<Dynamic>,
    pub xds: XdsStatus,
    /// Present when a control plane is configured.
    pub telemetry: Option<Arc<Telemetry>>,
    /// Workflow runs and their progress (getServiceStatus).
    pub workflow_runs: crate::workflow::runs::Runs,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let metrics = Arc::new(Metrics::new());
        let telemetry = config.control_plane.clone().map(|spec| {
            let node = presage_api::Node {
                id: spec.node_id.clone(),
                service: spec.service.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                labels: Default::default(),
            };
            Arc::new(Telemetry::new(
                spec,
                node,
                metrics.telemetry_reports_dropped.clone(),
                metrics.telemetry_transitions_dropped.clone(),
            ))
        });
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let runtime = Runtime::build(config, None, &metrics);
        metrics.generation.set(1);
        let live = Arc::new(ArcSwap::from_pointee(runtime));
        registry
            .sub_registry_with_prefix("presage")
            .register_collector(Box::new(EndpointHealth(live.clone())));
        let access_log = AccessLog::new(metrics.access_log_dropped.clone());
        Arc::new(Shared {
            access_log,
            no_route: metrics.route_stats(crate::metrics::NO_ROUTE, crate::metrics::NO_ROUTE),
            live,
            metrics,
            registry,
            draining: AtomicBool::new(false),
            workflow_runs: Default::default(),
            reload: Mutex::new(ReloadStatus {
                generation: 1,
                ..Default::default()
            }),
            dynamic: Mutex::new(Dynamic::default()),
            xds: XdsStatus::new(),
            telemetry,
        })
    }

    /// Makes `runtime` the live one (a reload or a control-plane update): new requests
    /// use it, requests in flight finish on the one they started with. Its generation is
    /// reported by `/metrics` and `/config/status`, and the series of routes, clusters
    /// and tiers it no longer has are dropped. Returns the generation.
    pub fn install(&self, runtime: Runtime) -> u64 {
        let generation = runtime.generation;
        {
            let live = LiveNames {
                routes: (runtime.routes.iter())
                    .chain(&runtime.destination_routes)
                    .map(|r| (r.spec.name.as_str(), r.spec.cluster.as_str()))
                    .collect(),
                clusters: runtime.clusters.keys().map(String::as_str).collect(),
                tiers: runtime.config.tiers.iter().map(|t| &*t.name).collect(),
            };
            self.metrics.retain(&live);
        }
        self.live.store(Arc::new(runtime));
        self.metrics.generation.set(generation as i64);
        self.reload
            .lock()
            .expect("reload status lock poisoned")
            .generation = generation;
        generation
    }
}

/// `presage_endpoint_healthy{cluster,endpoint}`: 1 in rotation, 0 while ejected. Read from
/// the live runtime at scrape time, so the request path pays nothing for it.
#[derive(Debug)]
struct EndpointHealth(Arc<ArcSwap<Runtime>>);

impl Collector for EndpointHealth {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let rt = self.0.load();
        let now = now_ms();
        let mut m = encoder.encode_descriptor(
            "endpoint_healthy",
            "1 if the endpoint is in rotation, 0 while outlier detection has it ejected",
            None,
            MetricType::Gauge,
        )?;
        let mut names: Vec<&String> = rt.clusters.keys().collect();
        names.sort();
        for name in names {
            for ep in &rt.clusters[name].endpoints {
                let authority = ep.spec.authority.to_string();
                let labels = [("cluster", name.as_str()), ("endpoint", authority.as_str())];
                let healthy = i64::from(!ep.outlier.is_ejected(now));
                ConstGauge::new(healthy).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
