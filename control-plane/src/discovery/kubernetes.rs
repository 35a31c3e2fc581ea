//! Kubernetes backend (kube): the EndpointSlices of a namespace's Services, with each
//! endpoint's readiness, and metadata from the Pods behind them.
//!
//! Two kube-runtime watchers (list, then watch from the listed resourceVersion, relist
//! when the server says the version is gone) feed one cache of slices and one of pods.
//! A slice event recomputes its Service; a pod event recomputes the Services whose
//! slices point at that pod; a finished relist recomputes everything. Only changed
//! Services are sent. The mesh service is the slice's `kubernetes.io/service-name`.
//!
//! An instance is an endpoint whose `ready` condition is not false (nil means ready, per
//! the API reference), at its first address and the slice's port named `port_name`
//! (default: the port named `http`, else the first). Pod labels become labels; pod
//! annotations `presage.io/{zone,price,capacity,version,weight}` fill the rest (zone
//! defaults to the endpoint's zone, version to the `app.kubernetes.io/version` label);
//! `presage.io/injected: "true"` (set by `presage inject`) marks a sidecar to call over
//! mutual TLS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use super::record::Record;
use super::{Catalog, Instance, Update};

pub const NAME: &str = "kubernetes";
const SERVICE_LABEL: &str = "kubernetes.io/service-name";
/// How often a failing API server is probed for recovery.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Where the cluster is and what to watch (`discovery.kubernetes`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file; default: `$KUBECONFIG` or `~/.kube/config`, else the
    /// in-cluster service account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Narrows the watched EndpointSlices (a Kubernetes label selector).
    #[serde(default)]
    pub label_selector: Option<String>,
    /// The slice port to route to (default: the port named `http`, else the first).
    #[serde(default)]
    pub port_name: Option<String>,
}

pub(crate) fn default_namespace() -> String {
    "default".into()
}

/// A client from a kubeconfig file and context (default: `$KUBECONFIG` or
/// `~/.kube/config`, else the in-cluster service account); shared with the actuator.
pub(crate) async fn client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<Client, String> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubeconfig: {e}"))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("kubeconfig or in-cluster config: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("kubernetes client: {e}"))
}

/// A watcher's objects by name, with the relist in progress.
struct Cache<K> {
    live: BTreeMap<String, K>,
    relisting: Option<BTreeMap<String, K>>,
}

impl<K: ResourceExt> Cache<K> {
    fn new() -> Self {
        Cache {
            live: BTreeMap::new(),
            relisting: None,
        }
    }

    /// Applies an event; returns the objects it touched (old and new versions) and
    /// whether a relist finished.
    fn apply(&mut self, event: Event<K>) -> (Vec<K>, bool)
    where
        K: Clone,
    {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                (Vec::new(), false)
            }
            Event::InitApply(k) => {
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k.name_any(), k);
                (Vec::new(), false)
            }
            Event::InitDone => {
                self.live = self.relisting.take().unwrap_or_default();
                (Vec::new(), true)
            }
            Event::Apply(k) => {
                let old = self.live.insert(k.name_any(), k.clone());
                (old.into_iter().chain([k]).collect(), false)
            }
            Event::Delete(k) => {
                let old = self.live.remove(&k.name_any());
                (old.into_iter().chain([k]).collect(), false)
            }
        }
    }
}

/// One watcher's output. Short-lived (a batch at a time), so the Pod variant's size
/// is not worth a box per event.
#[allow(clippy::large_enum_variant)]
enum Change {
    Slice(Result<Event<EndpointSlice>, watcher::Error>),
    Pod(Result<Event<Pod>, watcher::Error>),
}

/// Watches the namespace forever, sending updates to `tx`.
pub async fn watch(cfg: KubernetesConfig, tx: mpsc::Sender<Update>) {
    let mut attempt = 0u32;
    let client = loop {
        match client(cfg.kubeconfig.as_deref(), cfg.context.as_deref()).await {
            Ok(c) => break c,
            Err(e) => {
                let down = Update::Status {
                    registry: NAME,
                    up: false,
                    error: Some(e),
                };
                if tx.send(down).await.is_err() {
                    return;
                }
                super::backoff(&mut attempt).await;
            }
        }
    };
    let selector = match &cfg.label_selector {
        Some(s) => format!("{SERVICE_LABEL},{s}"),
        None => SERVICE_LABEL.to_string(),
    };
    let probe_api = Api::<EndpointSlice>::namespaced(client.clone(), &cfg.namespace);
    let slices = watcher::watcher(
        probe_api.clone(),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff()
    .map(Change::Slice);
    let pods = watcher::watcher(
        Api::<Pod>::namespaced(client, &cfg.namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(Change::Pod);
    let changes = futures_util::stream::select(slices, pods).ready_chunks(1024);
    let mut changes = std::pin::pin!(changes);
    let mut state = State::new(cfg);
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let updates = tokio::select! {
            batch = changes.next() => match batch {
                Some(batch) => state.apply(batch),
                None => return,
            },
            _ = probe.tick(), if state.failing => {
                match probe_api.list(&ListParams::default().limit(1)).await {
                    Ok(_) => state.reachable().into_iter().collect(),
                    Err(_) => Vec::new(),
                }
            }
        };
        for update in updates {
            if tx.send(update).await.is_err() {
                return;
            }
        }
    }
}

/// What the watchers have said so far, and what was last sent.
struct State {
    cfg: KubernetesConfig,
    slices: Cache<EndpointSlice>,
    pods: Cache<Pod>,
    sent: Catalog,
    /// The last word from the API server was an error.
    failing: bool,
    listed: [bool; 2],
    up: Option<bool>,
}

impl State {
    fn new(cfg: KubernetesConfig) -> Self {
        State {
            cfg,
            slices: Cache::new(),
            pods: Cache::new(),
            sent: Catalog::new(),
            failing: false,
            listed: [false; 2],
            up: None,
        }
    }

    /// Applies a batch of watcher output; returns the updates to send.
    fn apply(&mut self, batch: Vec<Change>) -> Vec<Update> {
        let mut out = Vec::new();
        let mut services = BTreeSet::new();
        let mut everything = false;
        for change in batch {
            let (which, result) = match change {
                Change::Slice(r) => (0, r.map(Ok)),
                Change::Pod(r) => (1, r.map(Err)),
            };
            let event = match result {
                Ok(e) => e,
                Err(e) => {
                    self.failing = true;
                    out.push(Update::Status {
                        registry: NAME,
                        up: false,
                        error: Some(format!("namespace {}: {e}", self.cfg.namespace)),
                    });
                    self.up = Some(false);
                    continue;
                }
            };
            self.failing = false;
            let relisted = match event {
                Ok(slice_event) => {
                    let (touched, done) = self.slices.apply(slice_event);
                    services.extend(touched.iter().filter_map(service_of));
                    done
                }
                Err(pod_event) => {
                    let (touched, done) = self.pods.apply(pod_event);
                    let names: BTreeSet<String> = touched.iter().map(|p| p.name_any()).collect();
                    services.extend(self.services_of_pods(&names));
                    done
                }
            };
            if relisted {
                self.listed[which] = true;
                everything = true;
            }
        }
        if everything {
            services.extend(self.sent.keys().cloned());
            services.extend(self.slices.live.values().filter_map(service_of));
        }
        out.extend(self.status());
        // Until both caches are listed an absent pod may just not be listed yet.
        if self.listed == [true, true] {
            for service in services {
                out.extend(self.recompute(&service));
            }
            if everything {
                out.push(Update::Listed {
                    registry: NAME,
                    services: self.sent.keys().cloned().collect(),
                });
            }
        }
        out
    }

    /// `up` once both caches are listed and the server answers again.
    fn status(&mut self) -> Option<Update> {
        let ready = self.listed == [true, true] && !self.failing;
        (ready && self.up != Some(true)).then(|| {
            self.up = Some(true);
            Update::Status {
                registry: NAME,
                up: true,
                error: None,
            }
        })
    }

    /// The API server answered a probe: a watcher that resumed quietly after an error
    /// (no relist, nothing changed) says nothing, so the probe clears the outage.
    fn reachable(&mut self) -> Option<Update> {
        self.failing = false;
        self.status()
    }

    fn services_of_pods(&self, pods: &BTreeSet<String>) -> Vec<String> {
        self.slices
            .live
            .values()
            .filter(|s| {
                s.endpoints.iter().any(|e| {
                    e.target_ref
                        .as_ref()
                        .and_then(|r| r.name.as_ref())
                        .is_some_and(|n| pods.contains(n))
                })
            })
            .filter_map(service_of)
            .collect()
    }

    /// The service's instances now; an update if they differ from what was sent.
    fn recompute(&mut self, service: &str) -> Vec<Update> {
        let previous = self.sent.get(service);
        let mut current = BTreeMap::new();
        let mut skipped = 0;
        for slice in self.slices.live.values() {
            if service_of(slice).as_deref() != Some(service) {
                continue;
            }
            let slice_name = slice.name_any();
            let port = match self.port(slice) {
                Ok(p) => p,
                Err(message) => {
                    let key = format!("kubernetes:{}/{slice_name}", self.cfg.namespace);
                    tracing::warn!(%key, %message, "registry record skipped");
                    skipped += 1;
                    continue;
                }
            };
            for ep in &slice.endpoints {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                let Some(address) = ep.addresses.first() else {
                    continue;
                };
                let pod_name = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone());
                let id = pod_name
                    .clone()
                    .unwrap_or_else(|| address.replace(':', "-"));
                let key = format!("kubernetes:{}/{slice_name}/{id}", self.cfg.namespace);
                let pod = pod_name.as_ref().and_then(|n| self.pods.live.get(n));
                let checked = record(address, port, ep.zone.as_deref(), pod)
                    .and_then(|r| Instance::check(&key, &id, r).map_err(|e| e.message));
                match checked {
                    Ok(i) => {
                        current.entry(id).or_insert(i);
                    }
                    Err(message) => {
                        tracing::warn!(%key, %message, "registry record skipped");
                        skipped += 1;
                        if let Some(old) = previous.and_then(|p| p.get(&id)) {
                            current.entry(id).or_insert_with(|| old.clone());
                        }
                    }
                }
            }
        }
        let mut out: Vec<Update> = (0..skipped)
            .map(|_| Update::Skipped { registry: NAME })
            .collect();
        let changed = match previous {
            Some(p) => p != &current,
            None => !current.is_empty(),
        };
        if changed {
            out.push(Update::Service {
                registry: NAME,
                service: service.to_string(),
                instances: current.values().cloned().collect(),
            });
            if current.is_empty() {
                self.sent.remove(service);
            } else {
                self.sent.insert(service.to_string(), current);
            }
        }
        out
    }

    fn port(&self, slice: &EndpointSlice) -> Result<u16, String> {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let wanted = self.cfg.port_name.as_deref();
        let chosen = match wanted {
            Some(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
            None => ports
                .iter()
                .find(|p| p.name.as_deref() == Some("http"))
                .or(ports.first()),
        };
        let Some(p) = chosen else {
            return Err(match wanted {
                Some(name) => format!("ports: no port named {name:?}"),
                None => "ports: none listed".into(),
            });
        };
        p.port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("ports: expected a port number, found {:?}", p.port))
    }
}

fn service_of(slice: &EndpointSlice) -> Option<String> {
    slice.labels().get(SERVICE_LABEL).cloned()
}

/// An instance's record from its endpoint and (when known) its pod.
fn record(
    address: &str,
    port: u16,
    zone: Option<&str>,
    pod: Option<&Pod>,
) -> Result<Record, String> {
    let mut r = Record::at(address, port);
    r.zone = zone.unwrap_or_default().to_string();
    let Some(pod) = pod else { return Ok(r) };
    r.labels = pod.labels().clone();
    if let Some(v) = r.labels.get("app.kubernetes.io/version") {
        r.version = v.clone();
    }
    for (k, v) in pod.annotations() {
        if let Some(field) = k.strip_prefix("presage.io/") {
            r.set(field, v)
                .map_err(|e| format!("annotation presage.io/{e}"))?;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(name: &str, service: &str, port: i32, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {SERVICE_LABEL: service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "protocol": "TCP", "port": port}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn pod(name: &str, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "web"}, "annotations": annotations},
        }))
        .unwrap()
    }

    fn ep(ip: &str, pod: &str, ready: Option<bool>) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": {"ready": ready}, "zone": "z1",
               "targetRef": {"kind": "Pod", "name": pod}})
    }

    fn state() -> State {
        State::new(KubernetesConfig {
            kubeconfig: None,
            context: None,
            namespace: "shop".into(),
            label_selector: None,
            port_name: None,
        })
    }

    fn listed(s: &mut State, slices: Vec<EndpointSlice>, pods: Vec<Pod>) -> Vec<Update> {
        let mut batch = vec![Change::Slice(Ok(Event::Init)), Change::Pod(Ok(Event::Init))];
        batch.extend(
            slices
                .into_iter()
                .map(|x| Change::Slice(Ok(Event::InitApply(x)))),
        );
        batch.extend(
            pods.into_iter()
                .map(|x| Change::Pod(Ok(Event::InitApply(x)))),
        );
        batch.extend([
            Change::Slice(Ok(Event::InitDone)),
            Change::Pod(Ok(Event::InitDone)),
        ]);
        s.apply(batch)
    }

    fn listed_instances(updates: &[Update], service: &str) -> Option<Vec<(String, String)>> {
        updates.iter().rev().find_map(|u| match u {
            Update::Service {
                service: s,
                instances,
                ..
            } if s == service => Some(
                instances
                    .iter()
                    .map(|i| (i.id.clone(), i.authority()))
                    .collect(),
            ),
            _ => None,
        })
    }

    #[test]
    fn ready_endpoints_become_instances_with_pod_metadata() {
        let mut s = state();
        let out = listed(
            &mut s,
            vec![slice(
                "web-abc",
                "web",
                8080,
                json!([
                    ep("10.0.0.1", "web-1", Some(true)),
                    ep("10.0.0.2", "web-2", Some(false)),
                    ep("10.0.0.3", "web-3", None)
                ]),
            )],
            vec![pod(
                "web-1",
                json!({"presage.io/price": "0.5", "presage.io/capacity": "300", "presage.io/injected": "true"}),
            )],
        );
        assert!(matches!(out[0], Update::Status { up: true, .. }));
        let got = listed_instances(&out, "web").unwrap();
        assert_eq!(
            got,
            [
                ("web-1".into(), "10.0.0.1:8080".into()),
                ("web-3".into(), "10.0.0.3:8080".into())
            ],
            "not-ready web-2 left out; nil readiness counts as ready"
        );
        // The listing ends with what it found, for services gone while nobody watched.
        let Some(Update::Listed { services, .. }) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(services, &BTreeSet::from(["web".to_string()]));
        let Some(Update::Service { instances, .. }) = out.iter().rev().nth(1) else {
            panic!("{out:?}")
        };
        assert!(instances[0].record.mesh, "an injected pod has a sidecar");
        assert!(!instances[1].record.mesh);
        let e = instances[0].endpoint();
        assert_eq!(e.metadata["price"], "0.5");
        assert_eq!(e.metadata["capacity"], "300");
        assert_eq!(e.metadata["zone"], "z1");
        assert_eq!(e.metadata["label.app"], "web");
    }

    #[test]
    fn pod_changes_recompute_their_service_and_bad_annotations_keep_the_last_copy() {
        let mut s = state();
        listed(
            &mut s,
            vec![slice(
                "web-abc",
                "web",
                80,
                json!([ep("10.0.0.1", "web-1", Some(true))]),
            )],
            vec![pod("web-1", json!({"presage.io/price": "0.5"}))],
        );
        // The price annotation changes: web is sent again with it.
        let out = s.apply(vec![Change::Pod(Ok(Event::Apply(pod(
            "web-1",
            json!({"presage.io/price": "0.7"}),
        ))))]);
        let Some(Update::Service { instances, .. }) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(instances[0].endpoint().metadata["price"], "0.7");
        // It turns bad: skipped, counted, the last good copy stays, nothing is resent.
        let out = s.apply(vec![Change::Pod(Ok(Event::Apply(pod(
            "web-1",
            json!({"presage.io/price": "lots"}),
        ))))]);
        assert!(
            matches!(out.as_slice(), [Update::Skipped { .. }]),
            "{out:?}"
        );
        // The slice goes: the service is sent empty.
        let gone = slice("web-abc", "web", 80, json!([]));
        let out = s.apply(vec![Change::Slice(Ok(Event::Delete(gone)))]);
        assert_eq!(listed_instances(&out, "web"), Some(vec![]));
    }

    #[test]
    fn a_slice_without_the_named_port_is_skipped() {
        let mut s = state();
        s.cfg.port_name = Some("grpc".into());
        let out = listed(
            &mut s,
            vec![slice(
                "web-abc",
                "web",
                80,
                json!([ep("10.0.0.1", "web-1", Some(true))]),
            )],
            vec![],
        );
        assert!(out.iter().any(|u| matches!(u, Update::Skipped { .. })));
        assert_eq!(
            listed_instances(&out, "web"),
            None,
            "nothing known, nothing sent"
        );
    }
}
