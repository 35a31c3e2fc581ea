//! The Kubernetes actuator (kube): scales a Deployment through its `scale` subresource
//! (a JSON merge patch of `spec.replicas`, what `kubectl scale` does) and reads its
//! status for ready and starting replicas. Instances reach the mesh through discovery
//! (`discovery.kubernetes` watches the EndpointSlices), not through this actuator.
//!
//! A change of `spec.replicas` made by someone else (`kubectl scale`, another
//! controller) is undone: the actuator owns the count, and patches it back at the next
//! decision (so an HPA on the same Deployment would fight it: the docs say not to).
//!
//! The cold start is measured from the patch that raised the replicas to the first
//! status read showing that many ready (so to within one control interval).
//!
//! Per-instance resources (the highest active tier's `cpu_shares` and `memory_mb`, as
//! the container's CPU and memory requests) when `resize` asks for them: `in_place`
//! patches the `resize` subresource of every running pod that differs (Kubernetes 1.33
//! and later: no restart; a cluster without it is reported, never rolled behind the
//! operator's back), `rollout` patches the Deployment's pod template (a rolling update
//! replaces the pods). Off by default: a tier's allocation replaces what the operator
//! set on the Deployment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::{ActuateError, Actuator, BoxFuture, Status, TierResources, Want};

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
    /// How per-instance resources reach the pods (default: they do not).
    #[serde(default)]
    pub resize: Resize,
    /// The container resized (default: the pod template's first).
    #[serde(default)]
    pub container: Option<String>,
}

/// `actuator.kubernetes.resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// The Deployment's resources stay as the operator set them.
    #[default]
    Off,
    /// The `resize` subresource of each running pod: no restart. Pods started later
    /// (with the template's resources) are resized at the next interval.
    InPlace,
    /// The Deployment's pod template: a rolling update replaces the pods.
    Rollout,
}

impl KubernetesActuatorConfig {
    pub fn check(&self) -> Vec<String> {
        let mut e = Vec::new();
        let mut fields = Vec::new();
        crate::validate::name(&mut fields, "deployment", &self.deployment);
        crate::validate::name(&mut fields, "namespace", &self.namespace);
        if let Some(c) = &self.container {
            crate::validate::name(&mut fields, "container", c);
        }
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
    /// `spec.replicas` as last read, to tell someone else's change from a read that
    /// does not show the patch yet.
    observed: Option<u32>,
    ready: u32,
    replicas: u32,
    /// A raise waiting for its replicas to be ready: (count, when patched).
    rising: Option<(u32, Instant)>,
    cold_start: Option<Duration>,
    /// Why the resources asked for could not be applied, if they could not.
    resize_error: Option<String>,
}

pub struct Kubernetes {
    cfg: KubernetesActuatorConfig,
    client: OnceCell<Client>,
    state: Arc<Mutex<State>>,
}

/// A tier's allocation as container requests: `cpu_shares` in the kubelet's unit (1024
/// shares a CPU, so its inverse: millicores = shares × 1000 / 1024) and `memory_mb` MiB.
fn requests(r: &TierResources) -> BTreeMap<String, Quantity> {
    let millicores = (u64::from(r.cpu_weight) * 1000).div_ceil(1024).max(1);
    [
        ("cpu".to_string(), Quantity(format!("{millicores}m"))),
        ("memory".to_string(), Quantity(format!("{}Mi", r.memory_mb))),
    ]
    .into()
}

/// Whether `c` already requests what `want` holds. Compared by amount: the API server
/// stores quantities in canonical form (`1024Mi` comes back as `1Gi`, `1000m` as `1`).
fn has_requests(c: &Container, want: &BTreeMap<String, Quantity>) -> bool {
    let have = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    want.iter().all(|(k, v)| {
        let h = have.and_then(|h| h.get(k));
        match (h.and_then(|h| amount(&h.0)), amount(&v.0)) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
            _ => h == Some(v),
        }
    })
}

/// A Kubernetes quantity's amount (`250m`, `1.5`, `128Mi`, `1G`, `1e3`), None if it is
/// not one.
fn amount(q: &str) -> Option<f64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e => 10f64.powi(e.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    Some(n * scale)
}

/// The strategic merge patch that sets `container`'s requests.
fn container_patch(container: &str, want: &BTreeMap<String, Quantity>) -> serde_json::Value {
    serde_json::json!({
        "spec": { "containers": [{ "name": container, "resources": { "requests": want } }] }
    })
}

impl Kubernetes {
    pub fn new(cfg: KubernetesActuatorConfig) -> Kubernetes {
        Kubernetes {
            cfg,
            client: OnceCell::new(),
            state: Arc::default(),
        }
    }

    async fn client(&self) -> Result<&Client, ActuateError> {
        self.client
            .get_or_try_init(|| async {
                crate::discovery::kubernetes::client(
                    self.cfg.kubeconfig.as_deref(),
                    self.cfg.context.as_deref(),
                )
                .await
                .map_err(ActuateError::Failed)
            })
            .await
    }

    /// Applies `want` to the pods of `d` as `resize` says; Err says why it could not.
    async fn resize(
        &self,
        client: &Client,
        d: &Deployment,
        want: &TierResources,
    ) -> Result<(), String> {
        let ns = &self.cfg.namespace;
        let template = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let container = match (&self.cfg.container, template) {
            (Some(c), _) => c.clone(),
            (None, Some(t)) if !t.containers.is_empty() => t.containers[0].name.clone(),
            _ => return Err(format!("{} has no container to resize", self.what())),
        };
        let requests = requests(want);
        let patch = container_patch(&container, &requests);
        let pp = PatchParams::default();
        match self.cfg.resize {
            Resize::Off => Ok(()),
            Resize::Rollout => {
                let current = template
                    .and_then(|t| t.containers.iter().find(|c| c.name == container))
                    .ok_or_else(|| format!("{} has no container {container}", self.what()))?;
                if has_requests(current, &requests) {
                    return Ok(());
                }
                let patch = serde_json::json!({ "spec": { "template": patch } });
                Api::<Deployment>::namespaced(client.clone(), ns)
                    .patch(&self.cfg.deployment, &pp, &Patch::Strategic(&patch))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("resizing {}: {e}", self.what()))
            }
            Resize::InPlace => {
                let labels = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.match_labels.as_ref())
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| format!("{} has no matchLabels selector", self.what()))?;
                let selector: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let pods = Api::<Pod>::namespaced(client.clone(), ns);
                let list = pods
                    .list(&ListParams::default().labels(&selector.join(",")))
                    .await
                    .map_err(|e| format!("listing the pods of {}: {e}", self.what()))?;
                for pod in list.items {
                    let Some(name) = pod.metadata.name.as_deref() else {
                        continue;
                    };
                    let differs = pod.metadata.deletion_timestamp.is_none()
                        && pod.spec.as_ref().is_some_and(|s| {
                            s.containers
                                .iter()
                                .any(|c| c.name == container && !has_requests(c, &requests))
                        });
                    if !differs {
                        continue;
                    }
                    pods.patch_subresource("resize", name, &pp, &Patch::Strategic(&patch))
                        .await
                        .map_err(|e| match &e {
                            kube::Error::Api(s) if s.code == 404 || s.code == 405 => format!(
                                "in-place resize is not supported by this cluster (pods/{name}/resize: {}); set resize: rollout to replace the pods instead",
                                s.code
                            ),
                            _ => format!("resizing pod {ns}/{name}: {e}"),
                        })?;
                }
                Ok(())
            }
        }
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
            let client = self.client().await?;
            let api = Api::<Deployment>::namespaced(client.clone(), &self.cfg.namespace);
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
            if let Some(r) = want
                .resources
                .as_ref()
                .filter(|_| self.cfg.resize != Resize::Off)
            {
                let outcome = self.resize(client, &d, r).await;
                self.lock().resize_error = outcome.err();
            }
            let status = d.status.unwrap_or_default();
            let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas);
            let mut st = self.lock();
            let observed = spec_replicas.map(|r| r.max(0) as u32);
            // Changed since the last read, to other than what was patched: not ours.
            if st.observed.is_some() && observed != st.observed && observed != st.requested {
                tracing::warn!(deployment = %self.what(), replicas = ?observed, requested = ?st.requested, "replicas changed by someone else; patched back at the next decision");
                st.requested = None;
            }
            st.observed = observed;
            st.ready = status.ready_replicas.unwrap_or(0).max(0) as u32;
            st.replicas = spec_replicas
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
            limits_unavailable: st.resize_error.clone(),
        }
    }

    /// Pods are the cluster's: they keep running when the control plane stops.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    #[test]
    fn requests_compare_by_amount_not_spelling() {
        assert_eq!(amount("1Gi"), amount("1024Mi"));
        assert_eq!(amount("1"), amount("1000m"));
        assert_eq!(amount("1e3"), amount("1k"));
        assert_eq!(amount("250m"), Some(0.25));
        assert_eq!(amount("lots"), None);
        // Platinum's default allocation, as the API server gives it back.
        let want = requests(&TierResources {
            tier: "platinum".into(),
            cpu_weight: 1024,
            memory_mb: 1024,
        });
        let stored = |cpu: &str, memory: &str| Container {
            resources: Some(ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity(memory.into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(has_requests(&stored("1", "1Gi"), &want), "{want:?}");
        assert!(!has_requests(&stored("1", "512Mi"), &want));
        assert!(!has_requests(&Container::default(), &want));
    }
}
