//! The request path: route, rewrite, pick an endpoint, send, retry within budget, answer.
//!
//! ```text
//! downstream ─▶ request id ─▶ route (first match) ─▶ limits ─▶ edit headers/path
//!            ─▶ [ pick endpoint (P2C / WRR, skip ejected) ─▶ send with deadline ]
//!                 ▲ retry: idempotent & body-less, 502/503/504 or transport error,
//!                 └─ budget allows, jittered backoff, avoid the endpoint that failed
//!            ─▶ edit response headers ─▶ metrics, access log ─▶ downstream
//! ```
//! One `Arc<Runtime>` snapshot per request: a reload mid-request changes nothing here.
//! It is written as one async function rather than a stack of tower layers because every
//! step needs the route resolved once at the top, and a single future keeps the hot path
//! free of per-layer boxing; each concern's logic lives in its own module.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tower::retry::budget::Budget;

use crate::attempt;
use crate::balance::Needs;
use crate::body::{RequestBody, ResponseBody};
use crate::downstream::Conn;
use crate::errors::ProxyError;
use crate::h1::is_idempotent;
use crate::headers;
use crate::metrics;
use crate::qos;
use crate::rewrite::{endpoint_uri, prepare_headers, response, rewritten_path, upstream_version};
use crate::routing::{self, RequestView};
use crate::runtime::{Route, Runtime};
use crate::state::Shared;
use crate::upstream::Outcome;

/// The listener's authorization rules on the caller's mesh identity.
pub(crate) fn authorize(
    shared: &Shared,
    rt: &Runtime,
    conn: &Conn,
    req: &Request<Incoming>,
) -> Result<(), ProxyError> {
    let Some(l) = rt
        .config
        .listeners
        .iter()
        .find(|l| *l.name == *conn.listener)
        .filter(|l| !l.authorization.is_empty())
    else {
        return Ok(());
    };
    let host = routing::request_host(req.uri(), req.headers());
    let path = crate::authz::normalize_path(req.uri().path());
    let view = RequestView {
        host: host.as_deref(),
        path: &path,
        method: req.method(),
        headers: req.headers(),
    };
    crate::authz::check(&l.authorization, &view, conn.peer_id.as_deref()).map_err(|d| {
        shared.metrics.authz_denied.inc();
        let who = conn.peer_id.as_deref().unwrap_or("(no identity)");
        tracing::debug!(listener = %l.name, rule = d.rule, caller = who, "request denied");
        ProxyError::Forbidden(format!(
            "{} ({who}; listener {} rule {})",
            d.reason, l.name, d.rule
        ))
    })
}

/// hyper's entry point for every downstream request.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Conn,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let rt = shared.live.load_full();
    let request_id = headers::ensure_request_id(req.headers_mut());
    let log = rt
        .config
        .access_log
        .then(|| crate::access_log::Entry::new(&req, conn.peer));

    if let Err(e) = authorize(&shared, &rt, &conn, &req) {
        let mut res = e.into_response();
        res.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), request_id);
        return Ok(res);
    }
    let route = if conn.inbound {
        None
    } else {
        let host = routing::request_host(req.uri(), req.headers());
        rt.route(&RequestView {
            host: host.as_deref(),
            path: req.uri().path(),
            method: req.method(),
            headers: req.headers(),
        })
        // Redirected to an instance of a mesh service: that service, balanced.
        .or_else(|| conn.original_dst.and_then(|d| rt.route_to_destination(d)))
    };
    // Redirected traffic no route claims goes where the client sent it.
    if let (None, Some(dst)) = (route, conn.original_dst) {
        if conn.inbound {
            headers::set_client_cert(req.headers_mut(), conn.peer_id.as_deref());
        }
        // Boxed, as every path off the common one: a request's future is as large as
        // its largest path, and hyper moves it (an h2 stream's future on every spawn).
        let mut res = Box::pin(crate::transparent::http(&shared, req, dst))
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, %dst, "passthrough failed");
                e.into_response()
            });
        res.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), request_id);
        return Ok(res);
    }
    let decision = route.map(|r| {
        rt.qos.resolve(
            req.headers(),
            r.spec.qos_profile.as_deref(),
            rt.config.default_tier,
        )
    });
    // Telemetry for the control plane: counted per cluster (and per cluster and QoS
    // profile), and the user's step.
    let (flight, profile_flight) = match (route, &shared.telemetry) {
        (Some(route), Some(t)) => {
            // A caller the listener does not believe names no user (`QosHeaders`), in
            // whatever header the user is read from.
            if let Some(user) = (req.headers().get(&t.spec.user_header))
                .filter(|_| conn.trusted)
                .and_then(|v| v.to_str().ok())
            {
                t.transition(user, &route.spec.cluster);
            }
            let profile = match &decision {
                Some(Ok(d)) => d.profile.as_ref(),
                _ => None,
            };
            let by_profile = profile
                .and_then(|p| route.profile_loads.get(&p.spec.name))
                .map(|l| l.start());
            (Some(route.load.start()), by_profile)
        }
        _ => (None, None),
    };
    // For the request's record: its profile and tier, and how its instance was chosen.
    let treated = match &decision {
        Some(Ok(d)) if shared.telemetry.is_some() => Some((d.profile.clone(), d.tier)),
        _ => None,
    };
    let selection = AtomicU8::new(SELECTION_NONE);
    // The user a warm instance may be reserved for (read, and copied, only where one is).
    let warm_user: Option<Box<str>> = route
        .filter(|r| conn.trusted && r.cluster.has_user_warm)
        .and_then(|_| {
            let h = shared
                .telemetry
                .as_ref()
                .map_or(&crate::qos::X_PRESAGE_USER, |t| &t.spec.user_header);
            req.headers().get(h)?.to_str().ok().map(Box::from)
        });
    let result = match (route, decision) {
        (Some(route), Some(Ok(decision))) => match admit(&rt, route, &decision) {
            Ok(_admitted) => {
                let qos = Qos {
                    needs: decision.profile.as_ref().and_then(|p| p.needs.as_ref()),
                    retry: decision.profile.as_ref().and_then(|p| p.retry.as_ref()),
                    missed: &rt.tier_counters[decision.tier.0 as usize][metrics::MISSED],
                    budget: qos::budget(req.headers(), decision.profile.as_deref()),
                    selection: &selection,
                    bandwidth: rt.config.tier(decision.tier).bandwidth,
                    per_endpoint: shared.telemetry.is_some(),
                    warm: crate::warm::Request {
                        tier: &rt.config.tier(decision.tier).name,
                        user: warm_user.as_deref(),
                        counters: &rt.tier_counters[decision.tier.0 as usize],
                    },
                };
                proxy(&rt, route, &conn, req, qos).await
            }
            Err(e) => Err(e),
        },
        (Some(_), Some(Err(e))) => Err(e),
        _ => Err(ProxyError::NoRoute),
    };
    let mut error_code = "";
    let (mut res, endpoint) = match result {
        Ok(ok) => ok,
        Err(e) => {
            error_code = e.code();
            if e.is_refusal() {
                tracing::debug!(error = %e, "request refused");
            } else {
                tracing::warn!(error = %e, route = route.map_or("-", |r| r.spec.name.as_str()), "request failed");
            }
            (e.into_response(), None)
        }
    };
    res.headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    let elapsed = start.elapsed();
    route
        .map_or(&shared.no_route, |r| &r.stats)
        .record(res.status().as_u16(), elapsed);
    for f in [flight, profile_flight].into_iter().flatten() {
        f.finish(res.status().as_u16(), elapsed);
    }
    if let (Some(t), Some(route)) = (&shared.telemetry, route) {
        let reason = match selection.load(Relaxed) {
            _ if !error_code.is_empty() => error_code,
            SELECTION_MEETS => "meets-profile",
            SELECTION_BEST_AVAILABLE => "best-available",
            SELECTION_WARM => "warm-pool",
            _ => "balanced",
        };
        let status = res.status();
        let endpoint = endpoint.as_ref();
        t.record(|| {
            let (profile, tier) = treated.map_or((String::new(), ""), |(p, tier)| {
                (
                    p.map(|p| p.spec.name.clone()).unwrap_or_default(),
                    &*rt.config.tier(tier).name,
                )
            });
            presage_api::RequestRecord {
                request_id: request_id.to_str().unwrap_or_default().to_string(),
                service: route.spec.cluster.clone(),
                route: route.spec.name.clone(),
                qos_profile: profile,
                tier: tier.to_string(),
                status: u32::from(status.as_u16()),
                latency_us: elapsed.as_micros() as u64,
                endpoint: endpoint.map(|a| a.to_string()).unwrap_or_default(),
                reason: reason.to_string(),
                warm_pool: reason == "warm-pool",
                unix_ms: crate::telemetry::unix_ms(),
                ..Default::default()
            }
        });
    }
    if let Some(entry) = log {
        shared.access_log.write(entry.line(
            &request_id,
            res.status(),
            elapsed,
            route.map(|r| r.spec.name.as_str()),
            endpoint,
        ));
    }
    Ok(res)
}

type Answer = (Response<ResponseBody>, Option<http::uri::Authority>);

/// What endpoint selection needs to know of the request's QoS.
#[derive(Clone, Copy)]
struct Qos<'a> {
    needs: Option<&'a Needs>,
    /// Retries the profile's reliability target buys, instead of the route's.
    retry: Option<&'a qos::ProfileRetry>,
    /// Counted when no endpoint meets `needs`.
    missed: &'a Counter,
    /// The request's latency budget (caller's `x-presage-timeout-ms`, else the profile's
    /// deadline), when it has one: it caps the route timeout and is passed upstream.
    budget: Option<Duration>,
    /// How the first attempt's endpoint was chosen (`SELECTION_*`), for the record.
    selection: &'a AtomicU8,
    /// The tier's cap on the response stream, bytes per second (0: none).
    bandwidth: f64,
    /// Count attempts per endpoint (only the control plane reads them).
    per_endpoint: bool,
    /// The request's tier and user, for warm pools, and the tier's counters.
    warm: crate::warm::Request<'a>,
}

const SELECTION_NONE: u8 = 0;
const SELECTION_BALANCED: u8 = 1;
const SELECTION_MEETS: u8 = 2;
const SELECTION_BEST_AVAILABLE: u8 = 3;
const SELECTION_WARM: u8 = 4;

/// The request's QoS: its profile's rate limit, then its cluster's admission by tier.
/// The returned guard holds the request's in-flight slot until the answer is ready.
fn admit<'a>(
    rt: &Runtime,
    route: &'a Route,
    decision: &qos::Decision,
) -> Result<qos::Admitted<'a>, ProxyError> {
    let counters = &rt.tier_counters[decision.tier.0 as usize];
    let tier = rt.config.tier(decision.tier);
    if let Some(p) = &decision.profile {
        if let Err(e) = p.throttle() {
            counters[metrics::THROTTLED].inc();
            return Err(e);
        }
    }
    let cluster = &route.cluster;
    // A degraded dependency: its callers skip best-effort calls, and optional ones of
    // the lowest tier.
    if let Some(d) = cluster
        .spec
        .degraded
        .filter(|_| rt.degraded_for(&cluster.spec))
    {
        if d == crate::config::Degraded::BestEffort || decision.tier.0 == 0 {
            counters[metrics::SHED].inc();
            return Err(ProxyError::Degraded(cluster.spec.name.clone()));
        }
    }
    match qos::admit(
        &cluster.in_flight,
        cluster.spec.max_in_flight,
        tier.admission_share,
    ) {
        Some(admitted) => {
            counters[metrics::ADMITTED].inc();
            Ok(admitted)
        }
        None => {
            counters[metrics::SHED].inc();
            Err(ProxyError::Shed(tier.name.clone()))
        }
    }
}

async fn proxy(
    rt: &Runtime,
    route: &Route,
    conn: &Conn,
    req: Request<Incoming>,
    qos: Qos<'_>,
) -> Result<Answer, ProxyError> {
    let limits = &rt.config.limits;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > limits.max_body_bytes {
            return Err(ProxyError::BodyTooLarge(limits.max_body_bytes));
        }
    }
    if req.version() <= Version::HTTP_11 && headers::is_upgrade(req.headers()) {
        return Box::pin(crate::upgrade::upgrade(route, conn, req)).await;
    }
    let timeout = qos
        .budget
        .map_or(route.spec.timeout, |b| b.min(route.spec.timeout));
    let deadline = tokio::time::Instant::now() + timeout;
    let cluster = &route.cluster;
    let (mut parts, body) = req.into_parts();
    let path = rewritten_path(route, &parts.uri)?;
    prepare_headers(&mut parts.headers, &parts.uri, route, conn, false);
    let version = upstream_version(cluster);

    // A body-less request can be sent again; one with a body streams once.
    let replayable = body.is_end_stream();
    let retry = &route.spec.retry;
    // The profile's reliability target sets attempts and budget; a route that turns
    // retries off (`attempts: 0`) keeps them off.
    let (attempts, budget) = match qos.retry {
        Some(r) if retry.attempts > 0 => (r.attempts, &r.budget),
        _ => (retry.attempts, &route.budget),
    };
    let may_retry = replayable && attempts > 0;
    if may_retry {
        budget.deposit();
    }
    let idempotent = is_idempotent(&parts.method);
    // Made only for a body that streams: where it leaves its own failure.
    let fault = (!replayable).then(crate::body::BodyFault::default);
    let mut body = Some(match &fault {
        None => RequestBody::Empty,
        Some(f) => RequestBody::limited(body, limits.max_body_bytes, f.clone()),
    });
    let mut avoid = None;
    let mut attempt = 0u32;
    loop {
        // The interceptor: a warm instance reserved for the request's user or tier first.
        let warm = crate::warm::pick(cluster, avoid, &qos.warm, attempt == 0);
        let (ep, met) = match warm {
            Some(ep) => (ep, true),
            None => cluster
                .balancer
                .pick_for(&cluster.endpoints, avoid, qos.needs)
                .ok_or_else(|| ProxyError::NoEndpoint(cluster.spec.name.clone()))?,
        };
        if attempt == 0 {
            let how = match (qos.needs, met) {
                _ if warm.is_some() => SELECTION_WARM,
                (None, _) => SELECTION_BALANCED,
                (Some(_), true) => SELECTION_MEETS,
                (Some(_), false) => SELECTION_BEST_AVAILABLE,
            };
            qos.selection.store(how, Relaxed);
            if !met {
                qos.missed.inc();
            }
        }
        // The first attempt of a hedging profile's replayable request may be hedged.
        let hedge = qos
            .retry
            .and_then(|r| r.hedge_after)
            .filter(|_| attempt == 0 && may_retry && idempotent && cluster.endpoints.len() > 1);
        let mut up = Request::new(body.take().unwrap_or(RequestBody::Empty));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = endpoint_uri(ep, &path)?;
        *up.version_mut() = version;
        // A retry or a hedge sends the headers again: copied first, unless the attempt
        // only borrows the request and hands it back (`Tried::request`).
        let lent = attempt::in_task(cluster, &parts.method, replayable);
        *up.headers_mut() = if may_retry && (hedge.is_some() || !lent) {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        pass_budget(&mut up, qos.budget, deadline);
        // An HTTP/1.1 request runs in its connection's task, right after it was read. With
        // others in flight to the endpoint, its write waits for the end of this event-loop
        // turn, so the requests read in one turn reach the upstream together: an upstream
        // on the same core (a sidecar's app) then wakes once for them instead of preempting
        // the proxy after each (bench/RESULTS.md, 2026-12-02). Alone, it goes at once:
        // waiting would only add a turn. HTTP/2 streams run in their own tasks, queued
        // behind their connection's read: batched already.
        if parts.version <= Version::HTTP_11 && lent && ep.pending.load(Relaxed) > 0 {
            tokio::task::yield_now().await;
        }

        let tried = match hedge {
            None => {
                tokio::time::timeout_at(deadline, attempt::send(cluster, ep, up, qos.per_endpoint))
                    .await
            }
            Some(delay) => {
                let copy = || {
                    let (other, _) =
                        cluster
                            .balancer
                            .pick_for(&cluster.endpoints, Some(ep.index), qos.needs)?;
                    if other.index == ep.index || !budget.withdraw() {
                        return None;
                    }
                    let mut up = Request::new(RequestBody::Empty);
                    *up.method_mut() = parts.method.clone();
                    *up.uri_mut() = endpoint_uri(other, &path).ok()?;
                    *up.version_mut() = version;
                    *up.headers_mut() = parts.headers.clone();
                    // As the first attempt (the copy's headers may come back for a retry).
                    pass_budget(&mut up, qos.budget, deadline);
                    Some((other, up))
                };
                let hedged = Box::pin(attempt::hedged(
                    cluster,
                    ep,
                    up,
                    delay,
                    copy,
                    qos.per_endpoint,
                ));
                tokio::time::timeout_at(deadline, hedged).await
            }
        };
        let (ep, rtt, sent) = match tried {
            Ok(t) => {
                if let Some(back) = t.request {
                    parts.headers = back.into_parts().0.headers;
                }
                (t.ep, t.rtt, Ok(t.res))
            }
            Err(elapsed) => (ep, timeout, Err(elapsed)),
        };

        let can_retry_now = |attempt: u32| may_retry && attempt < attempts && budget.withdraw();
        match sent {
            Err(_) => {
                cluster.record(ep, Outcome::OtherError);
                return Err(ProxyError::Timeout(timeout));
            }
            Ok(Err(err)) => {
                // The downstream body failed under it: the client's fault, whatever the
                // upstream connection made of it.
                let err = match fault.as_ref().and_then(|f| f.get()) {
                    Some(f) => ProxyError::from(f),
                    None => err,
                };
                if err.is_client_fault() {
                    return Err(err);
                }
                cluster.record(ep, Outcome::failed(&err));
                // A connect error means nothing was sent; otherwise only idempotent methods.
                if (err.is_connect() || idempotent) && can_retry_now(attempt) {
                    tracing::debug!(error = %err, endpoint = %ep.spec.authority, attempt, "retrying");
                } else {
                    return Err(err);
                }
            }
            Ok(Ok(res)) => {
                let status = res.status();
                if status.is_server_error() {
                    cluster.record(ep, Outcome::ServerError(rtt));
                    let retriable = matches!(
                        status,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    if !(retriable && idempotent && can_retry_now(attempt)) {
                        return Ok((
                            response(route, res, qos.bandwidth),
                            Some(ep.spec.authority.clone()),
                        ));
                    }
                } else {
                    cluster.record(ep, Outcome::Success(rtt));
                    return Ok((
                        response(route, res, qos.bandwidth),
                        Some(ep.spec.authority.clone()),
                    ));
                }
            }
        }
        cluster.retries.inc();
        attempt += 1;
        avoid = Some(ep.index);
        let pause = backoff(retry.backoff, retry.max_backoff, attempt);
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(ProxyError::Timeout(timeout));
        }
        tokio::time::sleep(pause).await;
    }
}

/// What is left of the request's budget, when it has one, for the upstream (and its own
/// sidecar's calls) as `x-presage-timeout-ms`.
fn pass_budget<B>(up: &mut Request<B>, budget: Option<Duration>, deadline: tokio::time::Instant) {
    if budget.is_some() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        up.headers_mut().insert(
            qos::X_PRESAGE_TIMEOUT_MS.clone(),
            HeaderValue::from(left.as_millis() as u64),
        );
    }
}

/// Full-jitter exponential backoff: uniform in `[0, min(max, base * 2^(attempt-1))]`.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let cap = base
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(max);
    cap.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(100);
        for attempt in 1..20 {
            let b = backoff(base, max, attempt);
            assert!(b <= max);
            assert!(b <= base * (1 << (attempt - 1).min(16)));
        }
    }

    #[test]
    fn only_safe_methods_are_idempotent() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
