//! etcd backend: instances under `{prefix}{service}/{instance}` (default prefix
//! `/presage/services/`), each a JSON `Record`, usually attached to a lease so it goes
//! away when its instance stops renewing. Watched with the etcd v3 watch API.
//!
//! A session lists the prefix, sends every service, then watches from the listed
//! revision, sending each changed service's full instance list. When the watch or the
//! connection fails (or the watch is compacted away) the session reports the outage and
//! starts over with a fresh list after a jittered backoff; services that vanished while
//! disconnected are then sent empty. Registration (`register`) grants a lease, puts the
//! record, renews the lease at a third of its TTL, and revokes it on `deregister`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::{Catalog, Instance, Update};

pub const NAME: &str = "etcd";
/// The documented key layout's prefix.
pub const DEFAULT_PREFIX: &str = "/presage/services/";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the registry is.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// `host:port` of etcd members.
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}

async fn connect(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        // Notice a dead member within seconds even while nothing changes.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        // A member cut off from the rest answers watches with silence and leases with
        // stale state: asking for a leader makes it fail instead, and the backend
        // reconnects (to another member when given several).
        .with_require_leader(true);
    Client::connect(endpoints, Some(opts)).await
}

/// Splits `{prefix}{service}/{instance}`.
fn split_key<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(prefix)?.split_once('/')
}

/// Watches etcd forever, sending updates to `tx`.
pub async fn watch(cfg: EtcdConfig, tx: mpsc::Sender<Update>) {
    let mut catalog = Catalog::new();
    let mut attempt = 0u32;
    loop {
        let error = match session(&cfg, &mut catalog, &tx, &mut attempt).await {
            Ok(()) => return, // the merger is gone: shutting down
            Err(e) => e,
        };
        let up = Update::Status {
            registry: NAME,
            up: false,
            error: Some(error),
        };
        if tx.send(up).await.is_err() {
            return;
        }
        super::backoff(&mut attempt).await;
    }
}

/// One connection's life: list, then watch. `Ok` only when `tx` is closed.
async fn session(
    cfg: &EtcdConfig,
    catalog: &mut Catalog,
    tx: &mpsc::Sender<Update>,
    attempt: &mut u32,
) -> Result<(), String> {
    let mut client = connect(&cfg.endpoints)
        .await
        .map_err(|e| format!("connect {:?}: {e}", cfg.endpoints))?;
    let listed = client
        .get(cfg.prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("list {}: {e}", cfg.prefix))?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut fresh = Catalog::new();
    let mut skipped = 0;
    for kv in listed.kvs() {
        match parse(cfg, kv.key(), kv.value()) {
            Some(Ok((service, inst))) => {
                fresh
                    .entry(service)
                    .or_default()
                    .insert(inst.id.clone(), inst);
            }
            Some(Err(key)) => {
                // Keep the last good copy of an instance whose record went bad.
                if let Some((s, i)) = split_key(&cfg.prefix, &key) {
                    if let Some(old) = catalog.get(s).and_then(|m| m.get(i)) {
                        fresh
                            .entry(s.to_string())
                            .or_default()
                            .insert(i.to_string(), old.clone());
                    }
                }
                skipped += 1;
            }
            None => {}
        }
    }
    let services: BTreeSet<String> = catalog.keys().chain(fresh.keys()).cloned().collect();
    *catalog = fresh;
    for _ in 0..skipped {
        send(tx, Update::Skipped { registry: NAME }).await?;
    }
    for s in services {
        send_service(tx, catalog, &s).await?;
    }
    let listed = Update::Listed {
        registry: NAME,
        services: catalog.keys().cloned().collect(),
    };
    send(tx, listed).await?;
    send(
        tx,
        Update::Status {
            registry: NAME,
            up: true,
            error: None,
        },
    )
    .await?;
    *attempt = 0;

    let mut stream = client
        .watch(
            cfg.prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| format!("watch {}: {e}", cfg.prefix))?;
    loop {
        let Some(resp) = stream
            .message()
            .await
            .map_err(|e| format!("watch {}: {e}", cfg.prefix))?
        else {
            return Err(format!("watch {}: stream closed by the server", cfg.prefix));
        };
        if resp.canceled() {
            return Err(format!(
                "watch {} cancelled ({}); compact revision {}",
                cfg.prefix,
                resp.cancel_reason(),
                resp.compact_revision()
            ));
        }
        let mut changed = BTreeSet::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Ok(key) = std::str::from_utf8(kv.key()) else {
                tracing::warn!(key = ?kv.key(), "registry key is not UTF-8; skipped");
                send(tx, Update::Skipped { registry: NAME }).await?;
                continue;
            };
            let Some((service, id)) = split_key(&cfg.prefix, key) else {
                continue;
            };
            match ev.event_type() {
                EventType::Delete => {
                    if let Some(m) = catalog.get_mut(service) {
                        m.remove(id);
                    }
                    changed.insert(service.to_string());
                }
                EventType::Put => match parse(cfg, kv.key(), kv.value()) {
                    Some(Ok((s, inst))) => {
                        catalog
                            .entry(s.clone())
                            .or_default()
                            .insert(inst.id.clone(), inst);
                        changed.insert(s);
                    }
                    // Skipped and logged: the previous good copy (if any) stays.
                    Some(Err(_)) => send(tx, Update::Skipped { registry: NAME }).await?,
                    None => {}
                },
            }
        }
        for s in changed {
            send_service(tx, catalog, &s).await?;
        }
    }
}

/// `None`: not a record key. `Some(Err(key))`: a bad record (logged).
fn parse(cfg: &EtcdConfig, key: &[u8], value: &[u8]) -> Option<Result<(String, Instance), String>> {
    let key = String::from_utf8_lossy(key).into_owned();
    let (service, id) = split_key(&cfg.prefix, &key)?;
    let mut errors = Vec::new();
    crate::validate::name(&mut errors, "service", service);
    if let Some(e) = errors.first() {
        tracing::warn!(%key, message = %e.message, "registry record skipped: bad service name");
        return Some(Err(key.clone()));
    }
    match Instance::parse(&key, id, value) {
        Ok(i) => Some(Ok((service.to_string(), i))),
        Err(e) => {
            tracing::warn!(error = %e, "registry record skipped");
            Some(Err(key.clone()))
        }
    }
}

async fn send(tx: &mpsc::Sender<Update>, u: Update) -> Result<(), String> {
    // A closed channel means shutdown; end the session quietly.
    tx.send(u).await.map_err(|_| String::new())
}

async fn send_service(
    tx: &mpsc::Sender<Update>,
    catalog: &Catalog,
    service: &str,
) -> Result<(), String> {
    let instances = catalog
        .get(service)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    send(
        tx,
        Update::Service {
            registry: NAME,
            service: service.to_string(),
            instances,
        },
    )
    .await
}

// === registration ===

/// A live registration: the record stays while this lives and its lease is renewed. A
/// lease that is lost (etcd restarted without its data, or unreachable past the TTL) is
/// granted again and the record put back, with a growing backoff while etcd is away.
pub struct Registration {
    client: Client,
    /// The lease in force (it changes when the record is registered again).
    lease: Arc<AtomicI64>,
    key: String,
    renewer: tokio::task::JoinHandle<()>,
}

/// A lease of `ttl_s`, the record put under it, and the lease's keep-alive stream.
async fn lease_and_put(
    client: &mut Client,
    key: &str,
    value: &[u8],
    ttl_s: i64,
) -> Result<(i64, LeaseKeeper, LeaseKeepAliveStream), etcd_client::Error> {
    let lease = client.lease_grant(ttl_s, None).await?.id();
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await?;
    let (keeper, responses) = client.lease_keep_alive(lease).await?;
    Ok((lease, keeper, responses))
}

/// Registers `record` as `{prefix}{service}/{instance}` with a lease of `ttl`.
pub async fn register(
    cfg: &EtcdConfig,
    service: &str,
    instance: &str,
    record: &super::record::Record,
    ttl: Duration,
) -> Result<Registration, etcd_client::Error> {
    let mut client = connect(&cfg.endpoints).await?;
    let ttl_s = ttl.as_secs().max(1) as i64;
    let key = format!("{}{service}/{instance}", cfg.prefix);
    let value = serde_json::to_vec(record).expect("a record always serialises");
    let (first, mut keeper, mut responses) =
        lease_and_put(&mut client, &key, &value, ttl_s).await?;
    let lease = Arc::new(AtomicI64::new(first));
    let every = Duration::from_secs((ttl_s as u64 / 3).max(1));
    let (k, current, mut c) = (key.clone(), lease.clone(), client.clone());
    let renewer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let renewed = match keeper.keep_alive().await {
                Ok(()) => matches!(responses.message().await, Ok(Some(r)) if r.ttl() > 0),
                Err(_) => false,
            };
            if renewed {
                continue;
            }
            tracing::warn!(key = %k, "lease lost; registering again");
            let mut backoff = every;
            loop {
                match lease_and_put(&mut c, &k, &value, ttl_s).await {
                    Ok((l, kp, rs)) => {
                        current.store(l, Ordering::Relaxed);
                        (keeper, responses) = (kp, rs);
                        tracing::info!(key = %k, lease = l, "registered again");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(key = %k, error = %e, retry_in = ?backoff, "registering again failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    });
    Ok(Registration {
        client,
        lease,
        key,
        renewer,
    })
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("lease", &self.lease.load(Ordering::Relaxed))
            .finish()
    }
}

impl Registration {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Removes the record now (revokes its lease) instead of waiting for the TTL.
    pub async fn deregister(mut self) -> Result<(), etcd_client::Error> {
        self.renewer.abort();
        let lease = self.lease.load(Ordering::Relaxed);
        self.client.lease_revoke(lease).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_service_and_instance() {
        assert_eq!(
            split_key(DEFAULT_PREFIX, "/presage/services/web/a-1"),
            Some(("web", "a-1"))
        );
        assert_eq!(split_key(DEFAULT_PREFIX, "/presage/services/web"), None);
        assert_eq!(split_key(DEFAULT_PREFIX, "/other/web/a"), None);
    }

    #[test]
    fn a_bad_service_name_is_skipped_not_trusted() {
        let cfg = EtcdConfig {
            endpoints: vec![],
            prefix: DEFAULT_PREFIX.into(),
        };
        let r = parse(
            &cfg,
            b"/presage/services/Bad Name/a",
            br#"{"address":"10.0.0.1","port":80}"#,
        );
        assert!(matches!(r, Some(Err(_))));
        let r = parse(
            &cfg,
            b"/presage/services/web/a",
            br#"{"address":"10.0.0.1","port":80}"#,
        );
        assert!(matches!(r, Some(Ok(_))));
    }
}
