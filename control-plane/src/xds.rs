//! The discovery stream's server side: delta, ADS-like (see `api/README.md`).
//!
//! One task per connected proxy keeps, per resource type, the subscription and the
//! versions the proxy has; whenever the subscription or the snapshot changes it sends
//! only the difference: changed resources and the names removed. ACKs and NACKs are
//! recorded in `Proxies`. After a NACK the proxy kept its old versions, so they are put
//! back and the rejected resources go out again with the next change.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use presage_api::discovery_server::Discovery;
use presage_api::{DiscoveryRequest, DiscoveryResponse, Resource};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proxies::Proxies;
use crate::resources::{known_type, Resources, Snapshot};

/// Responses queued per stream before the session waits for the proxy to read.
const OUTBOUND_QUEUE: usize = 16;

#[derive(Debug, Clone)]
pub struct DiscoveryService {
    pub resources: Arc<Resources>,
    pub proxies: Arc<Proxies>,
    /// The vectors of each proxy's active users (`BehaviourProfile`, made per session).
    pub vectors: Option<Arc<crate::predictions::UserVectors>>,
}

type ResponseStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(String::new, |a| a.to_string());
        let mut inbound = request.into_inner();
        // The first message names the node; nothing is sent before it.
        let first = match inbound.message().await? {
            Some(m) => m,
            None => {
                return Err(Status::invalid_argument(
                    "stream ended before the first request",
                ))
            }
        };
        let node = first.node.clone().unwrap_or_default();
        if node.id.is_empty() {
            return Err(Status::invalid_argument(
                "node.id: required on the first request",
            ));
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let stream_id = self.proxies.connected(&node, peer);
        let session = Session {
            node_id: node.id,
            proxies: self.proxies.clone(),
            snapshots: self.resources.watch(),
            vectors: self.vectors.clone(),
            tx,
            types: HashMap::new(),
            nonce: 0,
            changes: 0,
        };
        let proxies = self.proxies.clone();
        let vectors = self.vectors.clone();
        tokio::spawn(async move {
            let id = session.node_id.clone();
            if let Err(e) = session.run(first, inbound).await {
                tracing::debug!(node = %id, error = %e, "discovery stream ended");
            }
            proxies.disconnected(&id, stream_id);
            // Its users are learnt again from its telemetry when it comes back.
            if let Some(v) = vectors {
                v.forget(&id);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What one proxy has of one type, as far as the control plane knows.
#[derive(Debug, Default)]
struct TypeSession {
    /// None: wildcard (every resource of the type).
    names: Option<BTreeSet<String>>,
    /// Name -> version the proxy has (or has been sent and not NACKed).
    has: HashMap<String, String>,
    /// Responses sent and not yet answered: nonce -> versions before the response.
    /// (and the session's change count when it was sent).
    pending: HashMap<String, (u64, HashMap<String, Option<String>>)>,
    /// Whether a response of this type went out on this stream; the first one is sent
    /// even when empty, so the proxy knows it is in sync.
    sent: bool,
}

struct Session {
    node_id: String,
    proxies: Arc<Proxies>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    vectors: Option<Arc<crate::predictions::UserVectors>>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    types: HashMap<&'static str, TypeSession>,
    nonce: u64,
    /// Snapshot changes seen by this session.
    changes: u64,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Status(#[from] Status),
    #[error("proxy went away")]
    Closed,
}

impl Session {
    async fn run(
        mut self,
        first: DiscoveryRequest,
        mut inbound: Streaming<DiscoveryRequest>,
    ) -> Result<(), SessionError> {
        self.handle(first).await?;
        let mut refresh = tokio::time::interval(crate::predictions::REFRESH);
        loop {
            tokio::select! {
                _ = refresh.tick(), if self.vectors.is_some() => {
                    let snap = self.snapshots.borrow().clone();
                    self.push(&snap, presage_api::types::BEHAVIOUR_PROFILE).await?;
                }
                msg = inbound.message() => match msg? {
                    Some(req) => self.handle(req).await?,
                    None => return Ok(()),
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let snap = self.snapshots.borrow_and_update().clone();
                    self.changes += 1;
                    // In dependency order (clusters before the routes naming them): the
                    // proxy applies responses in the order they arrive.
                    for t in presage_api::types::ALL {
                        self.push(&snap, t).await?;
                    }
                }
            }
        }
    }

    async fn handle(&mut self, req: DiscoveryRequest) -> Result<(), SessionError> {
        let Some(t) = known_type(&req.type_url) else {
            let _ = self
                .tx
                .send(Err(Status::invalid_argument(format!(
                    "type_url: unknown resource type {:?}",
                    req.type_url
                ))))
                .await;
            return Err(SessionError::Closed);
        };
        let snap = self.snapshots.borrow().clone();
        let mut retry = false;
        let new_type = !self.types.contains_key(t);
        let state = self.types.entry(t).or_default();
        if !req.response_nonce.is_empty() {
            if let Some((sent_at, before)) = state.pending.remove(&req.response_nonce) {
                match &req.error_detail {
                    Some(err) => {
                        // Something changed since that response went out (e.g. the
                        // cluster a rejected route names): the retry may now succeed.
                        retry = sent_at != self.changes;
                        // The proxy kept what it had before this response.
                        for (name, v) in before {
                            match v {
                                Some(v) => state.has.insert(name, v),
                                None => state.has.remove(&name),
                            };
                        }
                        tracing::warn!(node = %self.node_id, type_url = t, reason = %err.message, "NACK");
                        self.proxies
                            .nacked(&self.node_id, &format!("{t}: {}", err.message));
                    }
                    None => {
                        let version = snap.get(t).map_or("", |s| s.version.as_str());
                        // ACK of an older response: record only when nothing is in flight.
                        if state.pending.is_empty() {
                            self.proxies.acked(&self.node_id, t, version);
                        }
                    }
                }
            }
        }
        let resubscribed = !req.subscribe.is_empty() || !req.unsubscribe.is_empty();
        if new_type {
            state.has = req.initial_resource_versions.into_iter().collect();
            if !req.subscribe.is_empty() {
                state.names = Some(req.subscribe.iter().cloned().collect());
            }
        } else if let Some(names) = &mut state.names {
            names.extend(req.subscribe.iter().cloned());
        }
        if let Some(names) = &mut state.names {
            for n in &req.unsubscribe {
                names.remove(n);
            }
        }
        // A bare ACK or NACK sends nothing: after a NACK the same content would only be
        // rejected again, unless the snapshot changed meanwhile. The next change retries it.
        if new_type || resubscribed || retry {
            self.push(&snap, t).await?;
        }
        Ok(())
    }

    /// Sends the difference between the snapshot and what the proxy has, if any.
    async fn push(&mut self, snap: &Snapshot, t: &'static str) -> Result<(), SessionError> {
        let Some(state) = self.types.get_mut(t) else {
            return Ok(());
        };
        // Users' prediction vectors are made for this proxy, not taken from the snapshot.
        let made;
        let (items, version) = match (&self.vectors, snap.get(t)) {
            (Some(v), _) if t == presage_api::types::BEHAVIOUR_PROFILE => {
                made = v.for_node(&self.node_id, crate::time::unix_ms());
                (&made, String::new())
            }
            (_, Some(current)) => (&current.items, current.version.clone()),
            (_, None) => return Ok(()),
        };
        let wanted = |name: &str| state.names.as_ref().is_none_or(|n| n.contains(name));
        let mut resources: Vec<Resource> = Vec::new();
        for (name, r) in items {
            if wanted(name) && state.has.get(name) != Some(&r.version) {
                resources.push(r.clone());
            }
        }
        let removed: Vec<String> = state
            .has
            .keys()
            .filter(|n| !wanted(n) || !items.contains_key(*n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && state.sent {
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let mut before = HashMap::new();
        for r in &resources {
            before.insert(
                r.name.clone(),
                state.has.insert(r.name.clone(), r.version.clone()),
            );
        }
        for n in &removed {
            before.insert(n.clone(), state.has.remove(n));
        }
        state.pending.insert(nonce.clone(), (self.changes, before));
        state.sent = true;
        let response = DiscoveryResponse {
            type_url: t.to_string(),
            system_version_info: version,
            resources,
            removed_resources: removed,
            nonce,
        };
        self.tx
            .send(Ok(response))
            .await
            .map_err(|_| SessionError::Closed)
    }
}
