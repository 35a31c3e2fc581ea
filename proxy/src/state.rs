//! State shared by every task of a running proxy: the live runtime (swapped on reload),
//! metrics, and the status the admin endpoints report.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::metrics::{Metrics, RouteStats};
use crate::outlier::now_ms;
use crate::runtime::Runtime;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReloadStatus {
    /// Generation of the live config; 1 is the config the proxy started with.
    pub generation: u64,
    /// Failed reloads since start.
    pub failures: u64,
    /// The last failed reload's error (one line per problem), cleared by a success.
    pub last_error: Option<String>,
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
}

impl Shared {
    /// Fails only if the access-log thread cannot be started.
    pub fn new(config: Config) -> std::io::Result<Arc<Shared>> {
        let metrics = Arc::new(Metrics::new());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let runtime = Runtime::build(config, None, &metrics);
        metrics.generation.set(1);
        let live = Arc::new(ArcSwap::from_pointee(runtime));
        registry
            .sub_registry_with_prefix("presage")
            .register_collector(Box::new(EndpointHealth(live.clone())));
        let access_log = AccessLog::start(metrics.access_log_dropped.clone())?;
        Ok(Arc::new(Shared {
            access_log,
            no_route: metrics.route_stats("-", "-"),
            live,
            metrics,
            registry,
            draining: AtomicBool::new(false),
            reload: Mutex::new(ReloadStatus {
                generation: 1,
                ..Default::default()
            }),
        }))
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
