//! The Kubernetes actuator (kube): scales a Deployment through its `scale` subresource
//! (a JSON merge patch of `spec.replicas`, what `kubectl scale` does) and reads its
//! status for ready and starting replicas. Instances reach the mesh through discovery
//! (`discovery.kubernetes` watches the EndpointSlices), not through this actuator.
//!
//! The cold start is measured from the patch that raised the replicas to the first
//! status read showing that many ready (so to within one control interval).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::{ActuateError, Actuator, BoxFuture, Status, Want};

/// `actuator: {kubernetes: ...}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesActuatorConfig {
    /// A kubeconfig file; default: `$KUBECONFIG` or `~/.kube/config`, else the
    /// in-cluster service account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default = "crate::discovery::kubernetes::default_namespace")]
    pub namespace: String,
    /// The Deployment that runs the service's instances.
    pub deployment: String,
}

impl KubernetesActuatorConfig {
    pub fn check(&self) -> Vec<String> {
        let mut e = Vec::new();
        let mut fields = Vec::new();
        crate::validate::name(&mut fields, "deployment", &self.deployment);
        crate::validate::name(&mut fields, "namespace", &self.namespace);
        for f in fields {
            e.push(format!("{}: {}", f.field, f.message));
        }
        if let Some(p) = self.kubeconfig.as_ref().filter(|p| !p.is_file()) {
            e.push(format!("kubeconfig: {} is not a file", p.display()));
        }
        e
    }
}

const COLD_START_WEIGHT: f64 = 0.3;

#[derive(Debug, Default)]
struct State {
    /// The replicas last patched.
    requested: Option<u32>,
    ready: u32,
    replicas: u32,
    /// A raise waiting for its replicas to be ready: (count, when patched).
    rising: Option<(u32, Instant)>,
    cold_start: Option<Duration>,
}

pub struct Kubernetes {
    cfg: KubernetesActuatorConfig,
    api: OnceCell<Api<Deployment>>,
    state: Arc<Mutex<State>>,
}

impl Kubernetes {
    pub fn new(cfg: KubernetesActuatorConfig) -> Kubernetes {
        Kubernetes {
            cfg,
            api: OnceCell::new(),
            state: Arc::default(),
        }
    }

    async fn api(&self) -> Result<&Api<Deployment>, ActuateError> {
        self.api
            .get_or_try_init(|| async {
                let client = crate::discovery::kubernetes::client(
                    self.cfg.kubeconfig.as_deref(),
                    self.cfg.context.as_deref(),
                )
                .await
                .map_err(ActuateError::Failed)?;
                Ok(Api::namespaced(client, &self.cfg.namespace))
            })
            .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("actuator lock poisoned")
    }

    fn what(&self) -> String {
        format!("deployment {}/{}", self.cfg.namespace, self.cfg.deployment)
    }
}

impl Actuator for Kubernetes {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    /// Warm instances are replicas like the others: pods of one Deployment cannot be
    /// told apart through the scale subresource, so they join the general pool.
    fn scale<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<(), ActuateError>> {
        let target = want.total();
        Box::pin(async move {
            let api = self.api().await?;
            let name = &self.cfg.deployment;
            if self.lock().requested != Some(target) {
                let patch = serde_json::json!({ "spec": { "replicas": target } });
                api.patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| ActuateError::Failed(format!("scaling {}: {e}", self.what())))?;
                let mut st = self.lock();
                if target > st.ready {
                    st.rising = Some((target, Instant::now()));
                } else {
                    st.rising = None;
                }
                st.requested = Some(target);
            }
            let d = api
                .get(name)
                .await
                .map_err(|e| ActuateError::Failed(format!("reading {}: {e}", self.what())))?;
            let status = d.status.unwrap_or_default();
            let mut st = self.lock();
            st.ready = status.ready_replicas.unwrap_or(0).max(0) as u32;
            st.replicas = d
                .spec
                .and_then(|s| s.replicas)
                .unwrap_or(1)
                .max(status.replicas.unwrap_or(0))
                .max(0) as u32;
            if let Some((want, at)) = st.rising {
                if st.ready >= want {
                    let took = at.elapsed();
                    st.cold_start = Some(match st.cold_start {
                        None => took,
                        Some(c) => {
                            c.mul_f64(1.0 - COLD_START_WEIGHT) + took.mul_f64(COLD_START_WEIGHT)
                        }
                    });
                    st.rising = None;
                }
            }
            Ok(())
        })
    }

    fn status(&self) -> Status {
        let st = self.lock();
        Status {
            ready: st.ready,
            starting: st.replicas.saturating_sub(st.ready),
            warm_ready: 0,
            cold_start: st.cold_start,
            limits_unavailable: None,
        }
    }

    /// Pods are the cluster's: they keep running when the control plane stops.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
