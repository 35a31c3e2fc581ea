//! Turns registry updates into cluster resources: the endpoints come from the registry,
//! everything else (protocol, load balancer, timeouts) from the cluster already stored,
//! so an operator's `PUT /v1/services/{name}` settings survive discovery.

use std::collections::BTreeMap;
use std::sync::Arc;

use presage_api::resource::Body;
use presage_api::{types, Cluster, Resource};
use tokio::sync::mpsc;

use super::{Instance, Update};
use crate::metrics::{Metrics, RegistryLabels};
use crate::resources::Resources;
use crate::validate;

#[derive(Debug)]
pub struct Merger {
    pub resources: Arc<Resources>,
    pub metrics: Arc<Metrics>,
}

/// The endpoint metadata naming the registry an endpoint came from.
const REGISTRY: &str = "registry";

/// Most updates coalesced into one store transaction and one push.
const MAX_BATCH: usize = 4096;

impl Merger {
    /// Applies updates until every backend is gone. Updates waiting in the channel are
    /// taken together: the latest list per service wins, and all changed clusters are
    /// stored in one transaction and pushed as one snapshot (a registry listing 10,000
    /// instances costs one commit, not 10,000).
    pub async fn run(self, mut rx: mpsc::Receiver<Update>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.apply_all(std::mem::take(&mut batch)).await;
        }
    }

    /// Applies one update.
    pub async fn apply(&self, update: Update) {
        self.apply_all(vec![update]).await;
    }

    /// Applies updates in order; service lists are coalesced per service.
    pub async fn apply_all(&self, updates: Vec<Update>) {
        let mut services: BTreeMap<String, (&'static str, Vec<Instance>)> = BTreeMap::new();
        let mut listings = Vec::new();
        for update in updates {
            match update {
                Update::Status {
                    registry,
                    up,
                    error,
                } => {
                    let labels = RegistryLabels { registry };
                    self.metrics
                        .discovery_up
                        .get_or_create(&labels)
                        .set(i64::from(up));
                    if let Some(e) = error {
                        self.metrics.discovery_errors.get_or_create(&labels).inc();
                        tracing::warn!(registry, error = %e, "registry unreachable; keeping the last known endpoints");
                    }
                }
                Update::Skipped { registry } => {
                    self.metrics
                        .discovery_skipped
                        .get_or_create(&RegistryLabels { registry })
                        .inc();
                }
                Update::Service {
                    registry,
                    service,
                    instances,
                } => {
                    services.insert(service, (registry, instances));
                }
                Update::Listed { registry, services } => listings.push((registry, services)),
            }
        }
        let snap = self.resources.snapshot();
        // Services a full listing no longer has, stored with only that registry's
        // endpoints: emptied (unless an update in this batch speaks for them).
        for (registry, listed) in listings {
            let stored = snap
                .get(types::CLUSTER)
                .into_iter()
                .flat_map(|s| s.items.iter());
            for (name, r) in stored {
                let Some(Body::Cluster(c)) = &r.body else {
                    continue;
                };
                let only_this = !c.endpoints.is_empty()
                    && c.endpoints
                        .iter()
                        .all(|e| e.metadata.get(REGISTRY).map(String::as_str) == Some(registry));
                if only_this && !listed.contains(name) && !services.contains_key(name) {
                    services.insert(name.clone(), (registry, Vec::new()));
                }
            }
        }
        if services.is_empty() {
            return;
        }
        let mut writes = Vec::new();
        for (service, (registry, mut instances)) in services {
            let stored = snap
                .get(types::CLUSTER)
                .and_then(|s| s.items.get(&service))
                .and_then(|r| match &r.body {
                    Some(Body::Cluster(c)) => Some(c.clone()),
                    _ => None,
                });
            if stored.is_none() && instances.is_empty() {
                continue;
            }
            instances.sort_by(|a, b| a.id.cmp(&b.id));
            let mut cluster = stored.unwrap_or_else(|| Cluster {
                name: service.clone(),
                ..Default::default()
            });
            cluster.endpoints = instances
                .iter()
                .map(|i| {
                    let mut e = i.endpoint();
                    e.metadata.insert(REGISTRY.into(), registry.into());
                    e
                })
                .collect();
            // Mutual TLS when every instance has a sidecar to answer it (the registry
            // knows; a mixed service is called in plain until all are meshed).
            if !instances.is_empty() {
                cluster.mesh_tls = instances.iter().all(|i| i.record.mesh);
            }
            if let Some(e) = validate::cluster(&cluster).first() {
                tracing::warn!(registry, service = %service, field = %e.field, message = %e.message, "discovered service skipped");
                self.metrics
                    .discovery_skipped
                    .get_or_create(&RegistryLabels { registry })
                    .inc();
                continue;
            }
            self.metrics
                .discovery_updates
                .get_or_create(&RegistryLabels { registry })
                .inc();
            writes.push(Resource::new(service, Body::Cluster(cluster)));
        }
        if let Err(e) = self.resources.put_many(writes).await {
            tracing::error!(error = %e, "storing discovered services failed; the next update retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::record::Record;
    use crate::discovery::Instance;
    use crate::store::Store;

    fn instance(id: &str, port: u16) -> Instance {
        Instance {
            id: id.into(),
            record: Record {
                address: "10.0.0.1".into(),
                port,
                zone: "z".into(),
                price: None,
                capacity: None,
                version: String::new(),
                weight: None,
                labels: Default::default(),
                mesh: false,
            },
        }
    }

    fn cluster(m: &Merger, name: &str) -> Option<Cluster> {
        let snap = m.resources.snapshot();
        match snap.get(types::CLUSTER)?.items.get(name)?.body.clone()? {
            Body::Cluster(c) => Some(c),
            _ => None,
        }
    }

    #[tokio::test]
    async fn registry_endpoints_replace_stored_ones_and_keep_the_settings() {
        let dir = std::env::temp_dir().join(format!("presage-merge-{}", std::process::id()));
        let store = Store::open(&dir.join("s.redb")).unwrap();
        let resources = Arc::new(Resources::load(store).unwrap());
        let m = Merger {
            resources,
            metrics: Arc::default(),
        };
        // An operator's settings for `web`, then what the registry says.
        let stored = Cluster {
            name: "web".into(),
            load_balancer: "weighted_round_robin".into(),
            ..Default::default()
        };
        m.resources
            .put(Resource::new("web", Body::Cluster(stored)))
            .await
            .unwrap();
        let update = |instances| Update::Service {
            registry: "etcd",
            service: "web".into(),
            instances,
        };
        m.apply(update(vec![instance("b", 2), instance("a", 1)]))
            .await;
        let c = cluster(&m, "web").unwrap();
        assert_eq!(c.load_balancer, "weighted_round_robin");
        let addrs: Vec<&str> = c.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1:1", "10.0.0.1:2"], "sorted by instance id");
        assert!(!c.mesh_tls);
        // All behind sidecars: called over mutual TLS; one without: plain again.
        let meshed = |id, port| {
            let mut i = instance(id, port);
            i.record.mesh = true;
            i
        };
        m.apply(update(vec![meshed("a", 1), meshed("b", 2)])).await;
        assert!(cluster(&m, "web").unwrap().mesh_tls);
        m.apply(update(vec![meshed("a", 1), instance("b", 2)]))
            .await;
        assert!(!cluster(&m, "web").unwrap().mesh_tls);
        // Every instance gone: the cluster stays, empty (the proxy answers 503).
        m.apply(update(vec![])).await;
        assert!(cluster(&m, "web").unwrap().endpoints.is_empty());
        // An unknown service with nothing in it creates nothing.
        m.apply(Update::Service {
            registry: "etcd",
            service: "ghost".into(),
            instances: vec![],
        })
        .await;
        assert!(cluster(&m, "ghost").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A listing that no longer has a service empties it only if all its endpoints came
    /// from that registry: an operator's endpoints, or another registry's, stay.
    #[tokio::test]
    async fn a_listing_drops_only_the_services_its_registry_fed() {
        let dir = std::env::temp_dir().join(format!("presage-listed-{}", std::process::id()));
        let store = Store::open(&dir.join("s.redb")).unwrap();
        let resources = Arc::new(Resources::load(store).unwrap());
        let m = Merger {
            resources,
            metrics: Arc::default(),
        };
        for (registry, service) in [("etcd", "web"), ("etcd", "kept"), ("consul", "api")] {
            m.apply(Update::Service {
                registry,
                service: service.into(),
                instances: vec![instance("a", 1)],
            })
            .await;
        }
        let by_hand = Cluster {
            name: "admin".into(),
            endpoints: vec![presage_api::Endpoint {
                address: "10.0.0.9:80".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        m.resources
            .put(Resource::new("admin", Body::Cluster(by_hand)))
            .await
            .unwrap();
        m.apply(Update::Listed {
            registry: "etcd",
            services: ["kept".to_string()].into(),
        })
        .await;
        let count = |name| cluster(&m, name).unwrap().endpoints.len();
        assert_eq!(
            (count("web"), count("kept"), count("api"), count("admin")),
            (0, 1, 1, 1)
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
