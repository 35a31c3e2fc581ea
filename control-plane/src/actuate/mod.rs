//! Actuators: what turns a planner's target into running instances. One trait; the
//! local-process actuator (the embedded default `presage up` uses), Kubernetes
//! Deployments, and a dry run that only records what it was asked.
//!
//! ```text
//!  autoscale loop ──scale(target)──▶ Actuator ──▶ instances (processes, pods, nothing)
//!                 ◀──status()─────── ready / starting / measured cold start / limits
//! ```
//! `scale` returns once the change is under way: instances start in the background and
//! become endpoints only when ready, so the measured cold start (launch to ready) is what
//! the planner's lead time uses.

pub mod cgroup;
pub mod kubernetes;
pub mod local;
mod ports;
pub mod usage;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::discovery::Update;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an actuator is asked for: instances in general rotation, and warm instances per
/// reservation (`tier:<name>`, `user:<id>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Want {
    pub standard: u32,
    pub warm: std::collections::BTreeMap<String, u32>,
    /// Per-instance resources (the fine granularity): those of the highest QoS tier in
    /// the service's traffic, applied to running instances in place.
    pub resources: Option<TierResources>,
}

/// A QoS tier's allocation per instance (`QosTier.cpu_shares`, `QosTier.memory_mb`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TierResources {
    pub tier: String,
    /// CPU weight (cgroup v2 `cpu.weight`).
    pub cpu_weight: u32,
    /// Memory guaranteed, MiB (cgroup v2 `memory.min`).
    pub memory_mb: u32,
}

impl Want {
    pub fn total(&self) -> u32 {
        self.standard + self.warm.values().sum::<u32>()
    }
}

/// What an actuator has right now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// Instances serving in general rotation.
    pub ready: u32,
    /// Launched, not ready yet.
    pub starting: u32,
    /// Warm instances ready (reserved for a tier's predicted users).
    pub warm_ready: u32,
    /// Launch-to-ready time, smoothed over the instances started so far.
    #[serde(with = "secs_opt")]
    #[schema(value_type = Option<f64>)]
    pub cold_start: Option<Duration>,
    /// Why per-instance resources are not applied (the machine or the cluster does not
    /// allow it, or applying them failed), if so.
    pub limits_unavailable: Option<String>,
}

mod secs_opt {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActuateError {
    #[error("{0}")]
    Failed(String),
}

/// Turns targets into instances of one service.
pub trait Actuator: Send + Sync {
    /// `local`, `dry_run`, ...
    fn kind(&self) -> &'static str;
    /// Asks for `want`; returns once the change is under way.
    fn scale<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<(), ActuateError>>;
    fn status(&self) -> Status;
    /// Its instances' CPU and memory series, where it can see them.
    fn usage(&self) -> Option<std::sync::Arc<usage::Usage>> {
        None
    }
    /// Stops what it started (at shutdown); instances it does not own are left alone.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Which actuator a service scales with (`autoscaling.services[].actuator`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActuatorConfig {
    /// Real processes on this machine, from a command template.
    Local(local::LocalConfig),
    /// A Deployment's replicas, through the scale subresource.
    Kubernetes(kubernetes::KubernetesActuatorConfig),
    /// Decisions are recorded, nothing is started.
    DryRun {},
}

impl ActuatorConfig {
    /// Field errors of the config (`path: message`).
    pub fn check(&self) -> Vec<String> {
        match self {
            ActuatorConfig::Local(l) => l.check(),
            ActuatorConfig::Kubernetes(k) => k.check(),
            ActuatorConfig::DryRun {} => Vec::new(),
        }
    }

    /// Builds the actuator of `service`; `registry` receives the instances it starts.
    pub fn build(&self, service: &str, registry: mpsc::Sender<Update>) -> Box<dyn Actuator> {
        match self {
            ActuatorConfig::Local(c) => Box::new(local::Local::new(service, c.clone(), registry)),
            ActuatorConfig::Kubernetes(c) => Box::new(kubernetes::Kubernetes::new(c.clone())),
            ActuatorConfig::DryRun {} => Box::new(DryRun::default()),
        }
    }
}

/// Records targets; reports them as ready at once.
#[derive(Debug, Default)]
pub struct DryRun {
    want: std::sync::Mutex<Want>,
}

impl Actuator for DryRun {
    fn kind(&self) -> &'static str {
        "dry_run"
    }

    fn scale<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<(), ActuateError>> {
        *self.want.lock().expect("dry run lock poisoned") = want.clone();
        Box::pin(async { Ok(()) })
    }

    fn status(&self) -> Status {
        let want = self.want.lock().expect("dry run lock poisoned");
        Status {
            ready: want.standard,
            warm_ready: want.warm.values().sum(),
            ..Status::default()
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
