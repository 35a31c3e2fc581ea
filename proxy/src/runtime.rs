//! The live, swappable state the request path reads: routes bound to clusters, built from
//! a `Config`. A request loads one `Arc<Runtime>` at its start and finishes on it, so a
//! reload never changes the rules under a request in flight.
//!
//! Building reuses clusters whose spec is unchanged (pools and endpoint state survive).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::TpsBudget;

use crate::config::{Config, RouteSpec};
use crate::metrics::{Metrics, RouteStats};
use crate::routing::RequestView;
use crate::upstream::Cluster;

/// Retries allowed per second regardless of the percentage, so a quiet route can still retry.
const RETRY_MIN_PER_SEC: u32 = 10;
/// Window over which the retry percentage is measured.
const RETRY_BUDGET_TTL: Duration = Duration::from_secs(10);

/// A retry budget allowing `percent` extra load (over `RETRY_BUDGET_TTL`).
pub fn retry_budget(percent: f32) -> TpsBudget {
    TpsBudget::new(RETRY_BUDGET_TTL, RETRY_MIN_PER_SEC, percent / 100.0)
}

#[derive(Debug)]
pub struct Route {
    pub spec: RouteSpec,
    pub cluster: Arc<Cluster>,
    pub stats: RouteStats,
    pub budget: TpsBudget,
    /// The cluster's telemetry counters.
    pub load: Arc<crate::load::ServiceLoad>,
    /// The cluster's counters per QoS profile (every profile known when built).
    pub profile_loads: HashMap<String, Arc<crate::load::ServiceLoad>>,
}

#[derive(Debug)]
pub struct Runtime {
    /// Everything but the routes, which moved into `routes`.
    pub config: Config,
    pub generation: u64,
    pub routes: Vec<Route>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub qos: crate::qos::Qos,
    /// `qos_requests` handles of each of `config.tiers`, by outcome.
    pub tier_counters:
        Vec<[prometheus_client::metrics::counter::Counter; crate::metrics::QOS_OUTCOMES.len()]>,
    /// With a transparent listener: a route to each cluster, for redirected requests no
    /// route claims but that were addressed to one of the cluster's instances.
    pub destination_routes: Vec<Route>,
    /// Instance address -> index in `destination_routes`.
    pub by_destination: HashMap<std::net::SocketAddr, usize>,
}

impl Runtime {
    /// Whether this proxy's calls to `c` are shed by its `degraded` mark: every caller's
    /// when it names none, else only those of the services it names.
    pub fn degraded_for(&self, c: &crate::config::ClusterSpec) -> bool {
        c.degraded_callers.is_empty()
            || self
                .config
                .control_plane
                .as_ref()
                .is_some_and(|cp| c.degraded_callers.contains(&cp.service))
    }

    pub fn build(mut config: Config, previous: Option<&Runtime>, metrics: &Metrics) -> Runtime {
        let mut clusters = HashMap::new();
        for spec in std::mem::take(&mut config.clusters) {
            let reused = previous
                .and_then(|p| p.clusters.get(&spec.name))
                .filter(|c| c.spec == spec)
                .cloned();
            let cluster = reused.unwrap_or_else(|| {
                let old = previous.and_then(|p| p.clusters.get(&spec.name));
                Arc::new(Cluster::new(spec.clone(), metrics, old.map(|c| &**c)))
            });
            clusters.insert(spec.name, cluster);
        }
        let bind = |spec: RouteSpec| {
            // Validation guarantees the cluster exists.
            let cluster = clusters.get(&spec.cluster)?.clone();
            Some(Route {
                stats: metrics.route_stats(&spec.name, &spec.cluster),
                load: metrics.service_load.get(&spec.cluster),
                profile_loads: config
                    .qos_profiles
                    .iter()
                    .map(|p| {
                        let l = metrics.service_load.get_for(&spec.cluster, &p.name);
                        (p.name.clone(), l)
                    })
                    .collect(),
                budget: retry_budget(spec.retry.budget_percent),
                cluster,
                spec,
            })
        };
        let routes = std::mem::take(&mut config.routes)
            .into_iter()
            .filter_map(bind)
            .collect();
        let mut destination_routes = Vec::new();
        let mut by_destination = HashMap::new();
        if config.listeners.iter().any(|l| l.transparent) {
            let mut names: Vec<&String> = clusters.keys().collect();
            names.sort();
            for name in names {
                let Some(route) = bind(RouteSpec::to_cluster(name)) else {
                    continue;
                };
                for e in &route.cluster.spec.endpoints {
                    if let Ok(addr) = e.authority.as_str().parse() {
                        by_destination.insert(addr, destination_routes.len());
                    }
                }
                destination_routes.push(route);
            }
        }
        let qos = crate::qos::Qos::build(
            &config.qos_profiles,
            &config.subjects,
            previous.map(|p| &p.qos),
        );
        let tier_counters = config
            .tiers
            .iter()
            .map(|t| metrics.qos_counters(&t.name))
            .collect();
        Runtime {
            qos,
            tier_counters,
            destination_routes,
            by_destination,
            config,
            generation: previous.map_or(1, |p| p.generation + 1),
            routes,
            clusters,
        }
    }

    /// First route whose match holds.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.spec.matcher.matches(req))
    }

    /// The route to the cluster `dst` is an instance of (redirected traffic).
    pub fn route_to_destination(&self, dst: std::net::SocketAddr) -> Option<&Route> {
        self.by_destination
            .get(&dst)
            .map(|&i| &self.destination_routes[i])
    }
}
