//! State shared by every task of a running proxy: the live runtime (swapped on reload),
//! metrics, and the status the admin endpoints report.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::metrics::{Metrics, RouteStats};
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
    pub live: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Requests that matched no route are counted here.
    pub no_route: RouteStats,
    /// Set when shutdown starts: `/ready` turns 503 so load balancers stop sending.
    pub draining: AtomicBool,
    pub reload: Mutex<ReloadStatus>,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let metrics = Arc::new(Metrics::new());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let runtime = Runtime::build(config, None, &metrics);
        metrics.generation.set(1);
        Arc::new(Shared {
            no_route: metrics.route_stats("-", "-"),
            live: ArcSwap::from_pointee(runtime),
            metrics,
            registry,
            draining: AtomicBool::new(false),
            reload: Mutex::new(ReloadStatus {
                generation: 1,
                ..Default::default()
            }),
        })
    }
}
