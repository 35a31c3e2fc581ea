//! Consul backend (rs-consul): the catalog's service list and, per service, the
//! instances whose health checks all pass, both watched with blocking queries
//! (`?index=` from the last `X-Consul-Index`, `&wait=`).
//!
//! One task follows `/v1/catalog/services`; it starts a task per service that follows
//! `/v1/health/service/{name}?passing=true` and stops it (sending the service empty)
//! when the service leaves the catalog. Index handling follows Consul's blocking-query
//! rules: an index that goes backwards resets to 0, and an index is never below 1.
//! Instance metadata comes from `key=value` service tags (`zone=`, `price=`,
//! `capacity=`, `version=`, `weight=`; anything else becomes a label), because
//! rs-consul's health response type does not carry the service's `Meta` map.
//!
//! On an error the task reports the registry down and retries after a jittered backoff;
//! nothing is sent, so the last known endpoints keep serving. The registry is reported
//! up again when no query is failing: when a failing service's query answers or the
//! service leaves the catalog (its task is stopped), or when the catalog answers after
//! failing itself (Consul is back; the service tasks are woken to retry at once).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rs_consul::{Config, Consul, GetServiceNodesRequest, QueryOptions, ResponseMeta, ServiceNode};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::record::Record;
use super::{Instance, Update};

pub const NAME: &str = "consul";

/// Where the registry is (`discovery.consul`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    /// Agent or server HTTP address with its scheme, e.g. `http://127.0.0.1:8500`.
    pub address: String,
    /// ACL token sent as `X-Consul-Token`.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub datacenter: Option<String>,
    /// Only these services (default: every service in the catalog but `consul` itself).
    #[serde(default)]
    pub services: Vec<String>,
    /// How long a blocking query waits for a change (Consul caps it at 10 min).
    #[serde(default, with = "crate::config::humantime_opt")]
    pub wait: Option<Duration>,
}

impl ConsulConfig {
    fn wait(&self) -> Duration {
        self.wait.unwrap_or(Duration::from_secs(60))
    }

    fn client(&self) -> Consul {
        Consul::new(Config {
            address: self.address.trim_end_matches('/').to_string(),
            token: self.token.clone(),
            ..Config::default()
        })
    }

    /// A blocking query after `index` (0: answer now).
    fn query(&self, index: u64) -> QueryOptions {
        let wait = self.wait();
        QueryOptions {
            datacenter: self.datacenter.clone(),
            index: (index > 0).then_some(index),
            wait: Some(wait),
            // Consul adds up to wait/16 of jitter before answering an idle query.
            timeout: Some(wait + wait / 16 + Duration::from_secs(5)),
            ..QueryOptions::default()
        }
    }

    fn wanted(&self, service: &str) -> bool {
        if self.services.is_empty() {
            service != "consul"
        } else {
            self.services.iter().any(|s| s == service)
        }
    }
}

/// The index for the next blocking query, by Consul's rules.
fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous {
        0
    } else {
        answered.max(1)
    }
}

async fn report(tx: &mpsc::Sender<Update>, up: bool, error: Option<String>) -> bool {
    tx.send(Update::Status {
        registry: NAME,
        up,
        error,
    })
    .await
    .is_ok()
}

/// Which queries are failing (the catalog's under `CATALOG`, each watched service's
/// under its name) and what was last reported: the registry is up when none is.
#[derive(Debug, Default)]
struct Health {
    failing: BTreeSet<String>,
    reported_up: Option<bool>,
}

/// The catalog's key in `Health::failing` (no service is named "").
const CATALOG: &str = "";

type SharedHealth = std::sync::Arc<std::sync::Mutex<Health>>;

impl Health {
    fn of(h: &SharedHealth) -> std::sync::MutexGuard<'_, Health> {
        h.lock().expect("consul health lock poisoned")
    }

    /// `key`'s query failed (each failure is reported, with its error).
    fn failed(&mut self, key: &str) {
        self.failing.insert(key.to_string());
        self.reported_up = Some(false);
    }

    /// `key`'s query answered: whether the registry is now up, and not yet said so.
    fn answered(&mut self, key: &str) -> bool {
        self.failing.remove(key);
        self.newly_up()
    }

    /// The catalog answered, listing `names`; returns whether it had been failing and
    /// whether the registry is now up, and not yet said so. After its own failure
    /// Consul is back: every watch is presumed well until it fails again (each is woken
    /// from its backoff to retry at once). Otherwise only a service gone from the
    /// catalog stops counting: its task is stopped, and a stopped task reports no
    /// recovery.
    fn catalog_answered(&mut self, names: &BTreeSet<String>) -> (bool, bool) {
        let recovered = self.failing.remove(CATALOG);
        if recovered {
            self.failing.clear();
        } else {
            self.failing.retain(|k| names.contains(k));
        }
        (recovered, self.newly_up())
    }

    fn newly_up(&mut self) -> bool {
        let up = self.failing.is_empty() && self.reported_up != Some(true);
        if up {
            self.reported_up = Some(true);
        }
        up
    }
}

/// Watches the catalog forever, sending updates to `tx`.
pub async fn watch(cfg: ConsulConfig, tx: mpsc::Sender<Update>) {
    let client = std::sync::Arc::new(cfg.client());
    let health = SharedHealth::default();
    // Wakes the service tasks waiting out a backoff when the catalog answers again
    // after failing: Consul is back, and they need not wait up to 10 s to see it.
    let back = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut tasks: BTreeMap<String, AbortHandle> = BTreeMap::new();
    let mut index = 0;
    let mut attempt = 0;
    loop {
        let names = match client
            .get_all_registered_service_names(Some(cfg.query(index)))
            .await
        {
            Ok(ResponseMeta {
                response,
                index: answered,
            }) => {
                index = next_index(index, answered);
                attempt = 0;
                response
            }
            Err(e) => {
                Health::of(&health).failed(CATALOG);
                if !report(
                    &tx,
                    false,
                    Some(format!("{}/v1/catalog/services: {e}", cfg.address)),
                )
                .await
                {
                    break;
                }
                super::backoff(&mut attempt).await;
                continue;
            }
        };
        let names: BTreeSet<String> = names.into_iter().filter(|n| cfg.wanted(n)).collect();
        let gone: Vec<String> = tasks
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            tasks.remove(&name).expect("listed").abort();
            let empty = Update::Service {
                registry: NAME,
                service: name,
                instances: Vec::new(),
            };
            if tx.send(empty).await.is_err() {
                return;
            }
        }
        // After the gone services' tasks are stopped (see `catalog_answered`).
        let (recovered, up) = Health::of(&health).catalog_answered(&names);
        if recovered {
            back.notify_waiters();
        }
        if up && !report(&tx, true, None).await {
            break;
        }
        let listed = Update::Listed {
            registry: NAME,
            services: names.clone(),
        };
        if tx.send(listed).await.is_err() {
            return;
        }
        for name in names {
            tasks.entry(name.clone()).or_insert_with(|| {
                let watched = watch_service(
                    cfg.clone(),
                    client.clone(),
                    name,
                    tx.clone(),
                    health.clone(),
                    back.clone(),
                );
                tokio::spawn(watched).abort_handle()
            });
        }
        if tx.is_closed() {
            break;
        }
    }
    for (_, t) in tasks {
        t.abort();
    }
}

/// Follows one service's passing instances until aborted or `tx` closes.
async fn watch_service(
    cfg: ConsulConfig,
    client: std::sync::Arc<Consul>,
    service: String,
    tx: mpsc::Sender<Update>,
    health: SharedHealth,
    back: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut index = 0;
    let mut attempt = 0;
    let mut last: Option<BTreeMap<String, Instance>> = None;
    loop {
        let request = GetServiceNodesRequest {
            service: &service,
            passing: true,
            ..Default::default()
        };
        let (nodes, answered) = match client
            .get_service_nodes(request, Some(cfg.query(index)))
            .await
        {
            Ok(m) => (m.response, m.index),
            Err(e) => {
                let error = format!("{}/v1/health/service/{service}: {e}", cfg.address);
                Health::of(&health).failed(&service);
                if !report(&tx, false, Some(error)).await {
                    return;
                }
                tokio::select! {
                    _ = super::backoff(&mut attempt) => {}
                    _ = back.notified() => {}
                }
                continue;
            }
        };
        attempt = 0;
        // On every answer, not only after this task's own failure: a task that failed
        // and was stopped may have left its name for this one.
        let up = Health::of(&health).answered(&service);
        if up && !report(&tx, true, None).await {
            return;
        }
        index = next_index(index, answered);
        let first = last.is_none();
        let previous = last.take().unwrap_or_default();
        let (current, skipped) = instances(&service, nodes, &previous);
        for _ in 0..skipped {
            if tx.send(Update::Skipped { registry: NAME }).await.is_err() {
                return;
            }
        }
        // A blocking query also answers when its wait runs out, with nothing changed.
        if first || current != previous {
            let update = Update::Service {
                registry: NAME,
                service: service.clone(),
                instances: current.values().cloned().collect(),
            };
            if tx.send(update).await.is_err() {
                return;
            }
        }
        last = Some(current);
    }
}

/// The checked instances of `service`, by id, and how many entries were skipped. A
/// skipped entry keeps its last good copy from `previous`.
fn instances(
    service: &str,
    nodes: Vec<ServiceNode>,
    previous: &BTreeMap<String, Instance>,
) -> (BTreeMap<String, Instance>, usize) {
    let mut out = BTreeMap::new();
    let mut skipped = 0;
    for n in nodes {
        // Service IDs are unique per node only.
        let mut id = n.service.id.clone();
        if out.contains_key(&id) {
            id = format!("{id}.{}", n.node.node);
        }
        let key = format!("consul:{service}/{}/{}", n.node.node, n.service.id);
        match record(&n).and_then(|r| Instance::check(&key, &id, r).map_err(|e| e.message)) {
            Ok(i) => {
                out.insert(id, i);
            }
            Err(message) => {
                tracing::warn!(%key, %message, "registry record skipped");
                skipped += 1;
                if let Some(old) = previous.get(&id) {
                    out.insert(id, old.clone());
                }
            }
        }
    }
    (out, skipped)
}

/// A record from a health entry: the service address, else the node's.
fn record(n: &ServiceNode) -> Result<Record, String> {
    let address = if n.service.address.is_empty() {
        n.node.address.clone()
    } else {
        n.service.address.clone()
    };
    let mut r = Record::at(address, n.service.port);
    let mut seen = HashMap::new();
    for tag in &n.service.tags {
        let (k, v) = tag.split_once('=').unwrap_or((tag.as_str(), ""));
        if seen.insert(k, v).is_some() {
            return Err(format!("tag {k}: given twice"));
        }
        if !r.set(k, v).map_err(|e| format!("tag {e}"))? {
            r.labels.insert(k.to_string(), v.to_string());
        }
    }
    Ok(r)
}

// === registration ===

/// A live registration with the local Consul agent: a service with a TTL check that is
/// passed at a third of its TTL. A crashed instance's check turns critical after the
/// TTL (it leaves `?passing=true` answers at once) and the agent removes the service a
/// minute later (`DeregisterCriticalServiceAfter`, Consul's minimum).
///
/// rs-consul covers the catalog, not the agent endpoints this needs
/// (`/v1/agent/service/register`, `/v1/agent/check/pass`), so these three calls are
/// made with hyper directly.
pub struct ConsulRegistration {
    agent: Agent,
    service_id: String,
    renewer: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Agent {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
    address: String,
    token: Option<String>,
}

impl Agent {
    fn new(cfg: &ConsulConfig) -> Result<Agent, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("TLS: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Agent {
            client,
            address: cfg.address.trim_end_matches('/').to_string(),
            token: cfg.token.clone(),
        })
    }

    /// `PUT {address}{path}` with a JSON body; an error unless 200.
    async fn put(&self, path: &str, body: String) -> Result<(), String> {
        let url = format!("{}{path}", self.address);
        let mut req = http::Request::put(&url).header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("x-consul-token", t);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("{url}: {e}"))?;
        let res = tokio::time::timeout(Duration::from_secs(5), self.client.request(req))
            .await
            .map_err(|_| format!("{url}: no answer in 5 s"))?
            .map_err(|e| format!("{url}: {e}"))?;
        let status = res.status();
        if status == http::StatusCode::OK {
            return Ok(());
        }
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        Err(format!("{url}: {status}: {body}"))
    }
}

/// Registers `record` as instance `instance` of `service` with the agent at
/// `cfg.address`, metadata as `key=value` tags (what the watcher reads back).
pub async fn register(
    cfg: &ConsulConfig,
    service: &str,
    instance: &str,
    record: &Record,
    ttl: Duration,
) -> Result<ConsulRegistration, String> {
    let agent = Agent::new(cfg)?;
    let ttl = ttl.max(Duration::from_secs(1));
    let check_id = format!("presage-ttl:{instance}");
    let mut tags: Vec<String> = Vec::new();
    for (k, v) in [("zone", &record.zone), ("version", &record.version)] {
        if !v.is_empty() {
            tags.push(format!("{k}={v}"));
        }
    }
    for (k, v) in [("price", record.price), ("capacity", record.capacity)] {
        if let Some(v) = v {
            tags.push(format!("{k}={v}"));
        }
    }
    if let Some(w) = record.weight {
        tags.push(format!("weight={w}"));
    }
    tags.extend(record.labels.iter().map(|(k, v)| format!("{k}={v}")));
    let body = serde_json::json!({
        "ID": instance,
        "Name": service,
        "Address": record.address,
        "Port": record.port,
        "Tags": tags,
        "Check": {
            "CheckID": check_id,
            "Name": "presage TTL",
            "TTL": format!("{}s", ttl.as_secs()),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": "1m",
        },
    });
    agent
        .put("/v1/agent/service/register", body.to_string())
        .await?;
    let every = (ttl / 3).max(Duration::from_millis(500));
    let renew = agent.clone();
    let renewer = tokio::spawn(async move {
        let path = format!("/v1/agent/check/pass/{check_id}");
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = renew.put(&path, String::new()).await {
                tracing::warn!(error = %e, "consul TTL check renewal failed; retrying");
            }
        }
    });
    Ok(ConsulRegistration {
        agent,
        service_id: instance.to_string(),
        renewer,
    })
}

impl std::fmt::Debug for ConsulRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistration")
            .field("agent", &self.agent.address)
            .field("service_id", &self.service_id)
            .finish()
    }
}

impl ConsulRegistration {
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// Removes the service now instead of letting its check go critical.
    pub async fn deregister(self) -> Result<(), String> {
        self.renewer.abort();
        let path = format!("/v1/agent/service/deregister/{}", self.service_id);
        self.agent.put(&path, String::new()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service's failing query keeps the registry down while the catalog answers,
    /// until it answers itself or leaves the catalog; the catalog's own recovery brings
    /// it up (Consul is back). Each change is said once.
    #[test]
    fn the_registry_is_up_when_no_query_is_failing() {
        let mut h = Health::default();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(h.catalog_answered(&names(&["web", "db"])), (false, true));
        h.failed("web");
        assert_eq!(h.catalog_answered(&names(&["web", "db"])), (false, false));
        assert!(h.answered("web"), "now up");
        assert!(!h.answered("web"), "said once");
        h.failed("db");
        assert_eq!(
            h.catalog_answered(&names(&["web"])),
            (false, true),
            "db left"
        );
        // An outage: everything fails; the catalog's answer brings it all back.
        h.failed(CATALOG);
        h.failed("web");
        assert!(
            !h.answered("db"),
            "a stopped task's late answer: web still fails"
        );
        assert_eq!(h.catalog_answered(&names(&["web"])), (true, true));
        // A stopped task's late failure is dropped at the next catalog answer.
        h.failed("db");
        assert_eq!(h.catalog_answered(&names(&["web"])), (false, true));
    }

    fn node(id: &str, node: &str, address: &str, port: u16, tags: &[&str]) -> ServiceNode {
        let mut n = ServiceNode::default();
        n.node.node = node.into();
        n.node.address = "10.1.0.1".into();
        n.service.id = id.into();
        n.service.service = "web".into();
        n.service.address = address.into();
        n.service.port = port;
        n.service.tags = tags.iter().map(|t| t.to_string()).collect();
        n
    }

    #[test]
    fn blocking_query_indexes_follow_consul_rules() {
        assert_eq!(next_index(0, 0), 1, "never below 1");
        assert_eq!(next_index(5, 9), 9);
        assert_eq!(next_index(9, 9), 9);
        assert_eq!(next_index(9, 3), 0, "went backwards: start over");
    }

    #[test]
    fn tags_become_metadata_and_bad_entries_keep_their_last_good_copy() {
        let good = vec![
            node(
                "web-1",
                "n1",
                "",
                8080,
                &["zone=eu-1", "price=0.5", "canary"],
            ),
            node("web-2", "n2", "10.0.0.2", 8080, &["capacity=200"]),
        ];
        let (first, skipped) = instances("web", good, &BTreeMap::new());
        assert_eq!(skipped, 0);
        let e = first["web-1"].endpoint();
        assert_eq!(
            e.address, "10.1.0.1:8080",
            "node address when the service has none"
        );
        assert_eq!(e.metadata["zone"], "eu-1");
        assert_eq!(e.metadata["price"], "0.5");
        assert_eq!(e.metadata["label.canary"], "");
        // web-1's price turns bad and web-2 loses its port: both keep the last good copy;
        // a new bad entry is simply left out.
        let bad = vec![
            node("web-1", "n1", "", 8080, &["price=cheap"]),
            node("web-2", "n2", "10.0.0.2", 0, &[]),
            node("web-3", "n3", "10.0.0.3", 8080, &["weight=-1"]),
        ];
        let (second, skipped) = instances("web", bad, &first);
        assert_eq!(skipped, 3);
        assert_eq!(second, first);
    }

    #[test]
    fn the_same_id_on_two_nodes_is_two_instances() {
        let nodes = vec![
            node("web", "n1", "10.0.0.1", 80, &[]),
            node("web", "n2", "10.0.0.2", 80, &[]),
        ];
        let (got, _) = instances("web", nodes, &BTreeMap::new());
        assert_eq!(got.keys().collect::<Vec<_>>(), ["web", "web.n2"]);
    }
}
