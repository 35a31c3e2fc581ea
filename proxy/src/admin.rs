//! The admin listener, on its own port: `/metrics` (OpenMetrics text), `/ready`,
//! `/config` (the static config as YAML), `/config/status` (reload generation and the
//! last reload error, as JSON) and `/config/dynamic` (what the control plane sent:
//! every resource with its version, as JSON).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics;
use crate::state::Shared;

pub async fn serve(shared: Arc<Shared>, tcp: TcpListener) {
    loop {
        let Ok((stream, _)) = tcp.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::encode(&shared.registry),
        ),
        "/ready" => {
            if shared.draining.load(Ordering::Relaxed) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else if shared
                .telemetry
                .as_ref()
                .is_some_and(|t| !shared.xds.ready(t.spec.initial_fetch_timeout))
            {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for the control plane's first resources\n".into(),
                )
            } else if shared
                .live
                .load()
                .config
                .control_plane
                .as_ref()
                .is_some_and(|c| c.identity.is_some())
                && crate::identity::own_id().is_none()
            {
                // Without its certificate a sidecar can neither call nor be called in
                // the mesh.
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for the workload certificate\n".into(),
                )
            } else {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            }
        }
        "/config" => text(
            StatusCode::OK,
            "application/yaml",
            shared.live.load().config.text.clone(),
        ),
        "/config/status" => {
            let status = shared.reload.lock().map(|s| s.clone()).unwrap_or_default();
            let body = serde_json::to_string(&status).unwrap_or_default() + "\n";
            text(StatusCode::OK, "application/json", body)
        }
        "/config/dynamic" => {
            let body = dynamic_json(shared).to_string() + "\n";
            text(StatusCode::OK, "application/json", body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /ready, /config, /config/status, /config/dynamic\n".into(),
        ),
    }
}

/// `{"connected": bool, "synced": bool, "resources": {type: {name: version}}}`.
fn dynamic_json(shared: &Shared) -> serde_json::Value {
    let d = shared.dynamic.lock().map(|d| d.clone()).unwrap_or_default();
    let resources: serde_json::Map<String, serde_json::Value> = d
        .resources
        .keys()
        .map(|t| (t.to_string(), serde_json::json!(d.versions(t))))
        .collect();
    serde_json::json!({
        "connected": shared.xds.connected.load(Ordering::Relaxed),
        "synced": shared.xds.synced(),
        "resources": resources,
    })
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    res
}
