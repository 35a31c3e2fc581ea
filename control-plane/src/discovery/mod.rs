//! Service discovery: instances from the registries users already run, merged into the
//! cluster resources the control plane pushes.
//!
//! ```text
//!  etcd (watch) ──────────┐
//!  consul (blocking query) ┤
//!  kubernetes (watch) ─────┼─ Update ──▶ Merger ──▶ Resources (store + snapshot) ──▶ proxies
//!  static (YAML) ──────────┘               │
//!                                          └──▶ metrics: registry up, errors, skipped records
//! ```
//! A backend owns a registry connection and sends the full instance list of every
//! service that changed. The merger turns it into that service's cluster, keeping the
//! cluster's own settings (protocol, load balancer, timeouts) from the store. A backend
//! skips bad records with a warning naming the key and keeps the last good copy of that
//! instance, so bad data never empties a cluster. A registry outage is reported (metric
//! `presage_cp_discovery_up`) and changes nothing: the last known endpoints keep serving.

pub mod consul;
pub mod etcd;
pub mod fixed;
pub mod kubernetes;
pub mod merge;
pub mod record;

use std::collections::BTreeMap;
use std::time::Duration;

pub use merge::Merger;
pub use record::{Instance, RecordError};

/// What a backend tells the merger.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Every current instance of `service` in the registry (empty: none left).
    Service {
        registry: &'static str,
        service: String,
        instances: Vec<Instance>,
    },
    /// The registry is reachable (after an outage, once resynced) or not.
    Status {
        registry: &'static str,
        up: bool,
        error: Option<String>,
    },
    /// A record was skipped as bad (already logged with its key).
    Skipped { registry: &'static str },
    /// After a full listing: the services the registry has instances of now. A stored
    /// service whose endpoints all came from this registry and that is not listed has
    /// none left (it went while the control plane was away: nothing else would say so).
    Listed {
        registry: &'static str,
        services: std::collections::BTreeSet<String>,
    },
}

/// Which registries to watch (`discovery:` in the control plane's YAML).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub etcd: Option<etcd::EtcdConfig>,
    pub consul: Option<consul::ConsulConfig>,
    pub kubernetes: Option<kubernetes::KubernetesConfig>,
    #[serde(default, rename = "static")]
    pub fixed: Vec<fixed::StaticService>,
}

/// Instances by service, then by instance id: what a backend knows.
pub type Catalog = BTreeMap<String, BTreeMap<String, Instance>>;

/// Sleeps a jittered exponential backoff (100 ms doubling to 10 s, full range halved)
/// after `attempt` failures in a row, and counts this one.
pub(crate) async fn backoff(attempt: &mut u32) {
    let cap = Duration::from_millis(100)
        .saturating_mul(1 << (*attempt).min(7))
        .min(Duration::from_secs(10));
    *attempt += 1;
    tokio::time::sleep(cap.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
}
