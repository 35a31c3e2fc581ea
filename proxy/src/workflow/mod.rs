//! Composite services in the data plane: `POST /workflows/{name}` runs a workflow
//! (`config::workflows`) whose steps call constituent services through the mesh, and
//! answers its output; with `Prefer: respond-async` it answers 202 at once and the run
//! goes on, its per-step progress and result at `GET /workflows/requests/{id}`
//! (getServiceStatus) for the workflow's `retention`.
//!
//! ```text
//! POST /workflows/checkout ─▶ QoS profile (caller's, else the workflow's) ─▶ deadline
//!      (workflow's `deadline`, capped by the caller's budget, else the profile's
//!      deadline, else its p99 latency target)
//!      ─▶ run (run.rs; call.rs sends each call) ─▶ 200 output | 502 step failed
//!                                                  | 504 deadline passed
//! ```
//! Only paths under `/workflows/` are claimed, and only when workflows are configured:
//! otherwise every request goes to `forward` as before.

mod call;
mod run;
pub mod runs;

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::body::{full, ResponseBody};
use crate::config::DEFAULT_DEADLINE;
use crate::downstream::Conn;
use crate::headers::{self, X_REQUEST_ID};
use crate::qos;
use crate::runtime::Runtime;
use crate::state::Shared;

const PREFIX: &str = "/workflows/";
const STATUS_PREFIX: &str = "/workflows/requests/";

/// hyper's entry point: workflow paths here, everything else to `forward::handle`.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Conn,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    if !conn.trusted {
        qos::drop_claims(req.headers_mut());
    }
    // One await of the proxied path (two would each take room in this future).
    if conn.inbound
        || !req.uri().path().starts_with(PREFIX)
        || shared.live.load().config.workflows.is_empty()
    {
        return crate::forward::handle(shared, conn, req).await;
    }
    let rt = shared.live.load_full();
    let request_id = headers::ensure_request_id(req.headers_mut());
    let mut res = match crate::forward::authorize(&shared, &rt, &conn, &req) {
        Err(e) => e.into_response(),
        Ok(()) => match req.uri().path().strip_prefix(STATUS_PREFIX) {
            Some(id) => status(&shared, id, req.method()),
            // Boxed: the proxied request's future need not be as large as this path's.
            None => Box::pin(invoke(shared, rt, req, request_id.clone(), conn.trusted)).await,
        },
    };
    res.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    Ok(res)
}

fn answer(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    let mut res = Response::new(full(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn error(status: StatusCode, message: String) -> Response<ResponseBody> {
    answer(status, &json!({ "error": message }))
}

/// getServiceStatus: a run's per-step progress and result.
fn status(shared: &Shared, id: &str, method: &Method) -> Response<ResponseBody> {
    if method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use GET".into());
    }
    match shared.workflow_runs.get(id) {
        Some(p) => answer(StatusCode::OK, &serde_json::to_value(p).unwrap_or_default()),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no workflow run {id:?} (unknown, or ended longer ago than its retention)"),
        ),
    }
}

async fn invoke(
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
    req: Request<Incoming>,
    request_id: HeaderValue,
    trusted: bool,
) -> Response<ResponseBody> {
    let name = &req.uri().path()[PREFIX.len()..];
    let Some(spec) = rt.config.workflows.iter().find(|w| w.name == name).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("no workflow named {name:?}"));
    };
    if req.method() != Method::POST {
        let mut res = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("workflow {name:?} is run with POST"),
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    let id = request_id.to_str().unwrap_or_default().to_string();
    if shared.workflow_runs.is_running(&id) {
        return error(
            StatusCode::CONFLICT,
            format!("a run with request id {id:?} is in progress"),
        );
    }
    let decision = match rt.qos.resolve(
        req.headers(),
        spec.qos_profile.as_deref(),
        rt.config.default_tier,
    ) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    if let Some(Err(e)) = decision.profile.as_ref().map(|p| p.throttle()) {
        return e.into_response();
    }
    // The caller's budget, else its profile's deadline, else its p99 latency target,
    // caps the workflow's own deadline.
    let target = decision
        .profile
        .as_ref()
        .map(|p| p.spec.latency_p99_ms)
        .filter(|ms| *ms > 0.0)
        .map(|ms| qos::secs(ms / 1000.0));
    let budget = match (
        qos::budget(req.headers(), decision.profile.as_deref()).or(target),
        spec.deadline,
    ) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(DEFAULT_DEADLINE),
    };
    let asynchronous = req
        .headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        });
    let user_header = shared
        .telemetry
        .as_ref()
        .map_or(&qos::X_PRESAGE_USER, |t| &t.spec.user_header);
    // Not from a caller the listener does not believe (`QosHeaders`): the steps pass it
    // on as `x-presage-user`, which the next listener would believe.
    let user = (req.headers().get(user_header))
        .filter(|_| trusted)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), json!(v.to_str().ok()?))))
        .collect();
    let limit = rt.config.limits.max_body_bytes as usize;
    let bytes = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        // Over the limit is 413, as for a proxied request; a broken body is 400.
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body exceeds the limit of {limit} bytes"),
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
        }
    };
    let input = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the request body is not JSON: {e}"),
                )
            }
        }
    };
    if let (Some(t), Some(u)) = (&shared.telemetry, &user) {
        t.transition(u, &spec.name);
    }
    let progress = shared.workflow_runs.start(&id, &spec.name);
    // For the run's record at the control plane (its getServiceStatus).
    let treated = (
        decision
            .profile
            .as_ref()
            .map(|p| p.spec.name.clone())
            .unwrap_or_default(),
        rt.config.tier(decision.tier).name.to_string(),
    );
    let started = std::time::Instant::now();
    let run = run::Run::new(
        shared.clone(),
        rt,
        budget,
        request_id,
        user,
        decision.profile,
        input,
        Value::Object(headers),
        progress.clone(),
    );
    let live = progress.clone();
    let run_id = id.clone();
    let go = async move {
        let result = run.workflow(&spec).await;
        let outcome = match &result {
            Ok(_) => "succeeded",
            Err(f) if f.deadline => "deadline",
            Err(_) => "failed",
        };
        run.shared
            .metrics
            .workflow_runs
            .get_or_create(&crate::metrics::WorkflowLabels {
                workflow: spec.name.clone(),
                outcome,
            })
            .inc();
        let (status, body) = match result {
            Ok(out) => (StatusCode::OK, out),
            Err(f) => {
                let status = if f.deadline {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                tracing::info!(workflow = %spec.name, step = %f.step, error = %f.message, "workflow failed");
                (
                    status,
                    json!({ "error": format!("workflow {:?} failed at step {:?}: {}", spec.name, f.step, f.message), "step": f.step }),
                )
            }
        };
        {
            let mut p = live.lock().expect("progress lock poisoned");
            p.finished_ms = Some(runs::now_ms());
            p.status = Some(status.as_u16());
            if status.is_success() {
                p.state = "succeeded";
                p.output = Some(body.clone());
            } else {
                p.state = "failed";
                p.error = body["error"].as_str().map(str::to_string);
            }
        }
        run.shared.workflow_runs.ended(&run_id, spec.retention);
        if let Some(t) = &run.shared.telemetry {
            let p = live.lock().expect("progress lock poisoned").clone();
            t.record(|| presage_api::RequestRecord {
                request_id: run_id.clone(),
                service: spec.name.clone(),
                qos_profile: treated.0,
                tier: treated.1,
                status: u32::from(status.as_u16()),
                latency_us: started.elapsed().as_micros() as u64,
                reason: format!("workflow-{outcome}"),
                unix_ms: crate::telemetry::unix_ms(),
                workflow: serde_json::to_string(&p).unwrap_or_default(),
                keep_ms: spec.retention.as_millis() as u64,
                ..Default::default()
            });
        }
        (status, body)
    };
    if asynchronous {
        let location = format!("{STATUS_PREFIX}{id}");
        tokio::spawn(go);
        let mut res = answer(
            StatusCode::ACCEPTED,
            &json!({ "request_id": id, "status": location }),
        );
        let h = res.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&location) {
            h.insert(header::LOCATION, v);
        }
        h.insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
        return res;
    }
    // In a task of its own, awaited: a client that goes away must not cancel the run
    // half-way (its compensations would never run, and it would stay `running`).
    let (status, mut body) = match tokio::spawn(go).await {
        Ok(answer) => answer,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("workflow run ended abnormally: {e}"),
            )
        }
    };
    if !status.is_success() {
        let steps = progress.lock().expect("lock").steps.clone();
        body["steps"] = serde_json::to_value(steps).unwrap_or_default();
    }
    answer(status, &body)
}
