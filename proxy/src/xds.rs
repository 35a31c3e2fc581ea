//! The discovery stream's client side (see `api/README.md`): subscribe to every
//! resource type, apply each response atomically, ACK or NACK it, and reconnect with
//! jittered exponential backoff when the stream breaks.
//!
//! Cluster and route changes are merged with the static YAML and go through the same
//! validation and swap as a file reload (`config::dynamic`); a response that does not
//! validate is NACKed with the errors and nothing of it is applied. While the control
//! plane is away the last applied resources keep serving; on reconnect the proxy tells
//! the control plane what it has (`initial_resource_versions`) and gets only the
//! difference, removals included.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use presage_api::discovery_client::DiscoveryClient;
use presage_api::{types, DiscoveryRequest, DiscoveryResponse, ErrorDetail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::config::{self, ControlPlaneSpec};
use crate::control_plane::{connect, Backoff, ClientError};
use crate::runtime::Runtime;
use crate::state::Shared;

/// Runs the discovery stream forever.
pub async fn run(shared: Arc<Shared>, spec: ControlPlaneSpec, node: presage_api::Node) {
    let mut backoff = Backoff::default();
    loop {
        let started = tokio::time::Instant::now();
        let result = session(&shared, &spec, &node).await;
        if shared.xds.connected.swap(false, Ordering::Relaxed) {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "presage: control plane lost; serving the last applied resources"
            );
            let _ = out.flush();
        }
        match result {
            Ok(()) => tracing::warn!("control plane closed the discovery stream; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "discovery stream failed; serving the last applied resources")
            }
        }
        backoff.after_session(started.elapsed());
        let delay = backoff.next_delay();
        shared.metrics.xds_reconnects.inc();
        tokio::time::sleep(delay).await;
    }
}

async fn session(
    shared: &Arc<Shared>,
    spec: &ControlPlaneSpec,
    node: &presage_api::Node,
) -> Result<(), ClientError> {
    let channel = connect(spec).await?;
    let mut client = DiscoveryClient::new(channel);
    // Unbounded: ACKs must never wait. A bounded queue deadlocks when the control plane
    // sends more responses than the queue holds before it reads ACKs again (each side
    // waiting for the other to read); requests are tiny and one per response.
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let dynamic = shared.dynamic.lock().expect("dynamic lock poisoned");
        for (i, t) in types::PUSHED.into_iter().enumerate() {
            let req = DiscoveryRequest {
                node: (i == 0).then(|| node.clone()),
                type_url: t.to_string(),
                initial_resource_versions: dynamic.versions(t).into_iter().collect(),
                ..Default::default()
            };
            tx.send(req).map_err(|_| ClientError::Closed)?;
        }
    }
    let mut inbound = client
        .stream(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    shared.xds.connected.store(true, Ordering::Relaxed);
    tracing::info!(address = %spec.address, "connected to the control plane");
    while let Some(response) = inbound.message().await? {
        let nonce = response.nonce.clone();
        let type_url = response.type_url.clone();
        let s = shared.clone();
        let result = tokio::task::spawn_blocking(move || apply(&s, response))
            .await
            .unwrap_or_else(|e| Err(format!("applying panicked: {e}")));
        let error_detail = match result {
            Ok(()) => None,
            Err(message) => Some(ErrorDetail {
                code: presage_api::INVALID_ARGUMENT,
                message,
            }),
        };
        let ack = DiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail,
            ..Default::default()
        };
        tx.send(ack).map_err(|_| ClientError::Closed)?;
    }
    Ok(())
}

/// Applies one response atomically, or not at all. Runs off the event loop: building a
/// config may read TLS files.
fn apply(shared: &Shared, response: DiscoveryResponse) -> Result<(), String> {
    use std::io::Write as _;
    let Some(t) = types::PUSHED.into_iter().find(|t| *t == response.type_url) else {
        return Err(format!(
            "type_url: unknown resource type {:?}",
            response.type_url
        ));
    };
    let count = response.resources.len() + response.removed_resources.len();
    let mut dynamic = shared.dynamic.lock().expect("dynamic lock poisoned");
    let mut next = dynamic.clone();
    next.apply(t, response.resources, &response.removed_resources);
    // Types that change what the proxy does; the rest are kept for the admin view.
    if [
        types::CLUSTER,
        types::ROUTE,
        types::QOS_TIER,
        types::QOS_PROFILE,
        types::SUBJECT,
        types::WORKFLOW,
    ]
    .contains(&t)
    {
        let prev = shared.live.load();
        let source = &prev.config.source;
        let base = std::path::Path::new(source).parent();
        let built = config::parse_with(&prev.config.text, source, base, &next);
        let config = match built {
            Ok(c) => c,
            Err(errors) => {
                let reason = errors.to_string().replace('\n', "; ");
                shared
                    .metrics
                    .xds_updates
                    .get_or_create(&crate::metrics::XdsLabels {
                        type_url: t,
                        result: "nack",
                    })
                    .inc();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "presage: xds rejected {t} {}: {reason}",
                    response.system_version_info
                );
                tracing::warn!(type_url = t, %reason, "control-plane update rejected; keeping the previous version");
                return Err(reason);
            }
        };
        shared.install(Runtime::build(config, Some(&prev), &shared.metrics));
    }
    *dynamic = next;
    drop(dynamic);
    shared.xds.applied(t);
    shared
        .metrics
        .xds_updates
        .get_or_create(&crate::metrics::XdsLabels {
            type_url: t,
            result: "ack",
        })
        .inc();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "presage: xds applied {t} {} ({count} changes)",
        response.system_version_info
    );
    Ok(())
}
