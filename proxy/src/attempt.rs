//! One attempt at an upstream endpoint, and hedged attempts.
//!
//! An attempt is counted in its endpoint's pending requests (which the balancer reads)
//! and, when the control plane reads them, in the endpoint's load, for as long as it is
//! in flight. A hedged attempt sends to one endpoint and, if no answer has come after a
//! delay, a copy to another; the first answer wins and the other is cancelled ("The Tail
//! at Scale", Dean and Barroso). Only body-less idempotent requests are hedged, and each
//! copy is paid from the same budget as retries.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::Either;

use crate::body::{RequestBody, UpstreamBody};
use crate::errors::ProxyError;
use crate::load::InFlight;
use crate::upstream::{Cluster, Endpoint};

pub type Answered = Result<Response<UpstreamBody>, ProxyError>;

/// What came of an attempt, and where.
pub struct Tried<'a> {
    pub ep: &'a Endpoint,
    pub res: Answered,
    pub rtt: Duration,
    /// The request back, when the attempt only borrowed it (`in_task`): a retry sends
    /// it again without a copy made in advance.
    pub request: Option<Request<RequestBody>>,
}

/// True when an attempt runs in the request's own task (`crate::h1`): body-less
/// requests to plain HTTP/1.1 clusters. (CONNECT asks for a tunnel, not an answer:
/// hyper's client knows it.)
pub fn in_task(cluster: &Cluster, method: &Method, body_less: bool) -> bool {
    cluster.direct && body_less && method != Method::CONNECT
}

/// Keeps an attempt in its endpoint's pending count until dropped (cancelled too).
struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Relaxed);
        Pending(n)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Sends `up` to `ep`. A cancelled attempt (the deadline passed) counts as an error in
/// the endpoint's load.
pub async fn send<'a>(
    cluster: &'a Cluster,
    ep: &'a Endpoint,
    up: Request<RequestBody>,
    per_endpoint: bool,
) -> Tried<'a> {
    let flight = per_endpoint.then(|| ep.load.start());
    let tried = send_uncounted(cluster, ep, up).await;
    finish(flight, &tried);
    tried
}

async fn send_uncounted<'a>(
    cluster: &'a Cluster,
    ep: &'a Endpoint,
    up: Request<RequestBody>,
) -> Tried<'a> {
    let _pending = Pending::new(&ep.pending);
    let t0 = Instant::now();
    let (res, request) = if in_task(cluster, up.method(), up.body().is_end_stream()) {
        let to = &ep.spec.authority;
        let res = crate::h1::send(&ep.pool, to, cluster.spec.connect_timeout, &up)
            .await
            .map(|r| r.map(Either::Right))
            .map_err(ProxyError::from_h1);
        (res, Some(up))
    } else {
        let res = cluster
            .client
            .request(up)
            .await
            .map(|r| r.map(Either::Left))
            .map_err(ProxyError::from_client);
        (res, None)
    };
    Tried {
        ep,
        res,
        rtt: t0.elapsed(),
        request,
    }
}

/// The attempt as the instance served it: its status, or a failure (502).
fn finish(flight: Option<InFlight<'_>>, tried: &Tried<'_>) {
    if let Some(f) = flight {
        let code = tried.res.as_ref().map_or(502, |r| r.status().as_u16());
        f.finish(code, tried.rtt);
    }
}

/// Sends `up` to `ep`; if it has not answered within `delay`, asks `copy` for another
/// endpoint and a copy of the request (None: no other endpoint, or no budget) and
/// sends that too. The first to answer wins; the other is cancelled, not counted as a
/// failure, and its endpoint's latency estimate learns it was at least that slow.
pub async fn hedged<'a>(
    cluster: &'a Cluster,
    ep: &'a Endpoint,
    up: Request<RequestBody>,
    delay: Duration,
    copy: impl FnOnce() -> Option<(&'a Endpoint, Request<RequestBody>)>,
    per_endpoint: bool,
) -> Tried<'a> {
    let t0 = Instant::now();
    let mut flight = per_endpoint.then(|| ep.load.start());
    let first = send_uncounted(cluster, ep, up);
    tokio::pin!(first);
    let tried = tokio::select! {
        tried = &mut first => Some(tried),
        _ = tokio::time::sleep(delay) => None,
    };
    let Some((ep2, up2)) = (match tried {
        Some(_) => None,
        None => copy(),
    }) else {
        let tried = match tried {
            Some(t) => t,
            None => first.await,
        };
        finish(flight.take(), &tried);
        return tried;
    };
    cluster.hedges.inc();
    let t1 = Instant::now();
    let mut flight2 = per_endpoint.then(|| ep2.load.start());
    let second = send_uncounted(cluster, ep2, up2);
    tokio::pin!(second);
    let (tried, loser, since, lost_flight) = tokio::select! {
        t = &mut first => (t, ep2, t1, flight2.take()),
        t = &mut second => (t, ep, t0, flight.take()),
    };
    finish(flight.take().or(flight2.take()), &tried);
    if let Some(f) = lost_flight {
        f.abandon();
    }
    loser.ewma.observe(since.elapsed());
    tried
}
