//! Body types of the request path. Request bodies stream through untouched except for the
//! size limit; their errors are tagged as the downstream's fault so `errors` can answer 4xx
//! rather than blaming the upstream. Response bodies are paced by their tier's bandwidth
//! cap, and cut when their upstream falls silent for the cluster's `idle_timeout`.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

/// What the proxy answers with: the upstream's stream (paced when its QoS tier has a
/// bandwidth cap), or a small synthetic body.
pub type ResponseBody = Either<Paced, Full<Bytes>>;

/// An upstream's response body: from hyper's client, or read in the request's task
/// (`h1`).
pub type UpstreamBody = Either<Incoming, crate::h1::Body>;

pin_project_lite::pin_project! {
    /// An upstream body passed on at most `rate` bytes per second (when set): a data
    /// frame that would overdraw the allowance is held until it is paid for. A body whose
    /// upstream sends nothing for `idle.limit` is cut (nginx's `proxy_read_timeout`).
    pub struct Paced {
        #[pin]
        inner: UpstreamBody,
        // Boxed: few tiers cap bandwidth, and every response is moved several times on
        // its way out; the common case carries a pointer, not the whole state.
        pace: Option<Box<Pace>>,
        idle: Option<Idle>,
    }
}

/// The wait for an upstream that has stopped sending. The timer is made only once the
/// body has had to wait, so a body read at once (most are) costs no timer at all.
#[derive(Debug)]
pub struct Idle {
    limit: Duration,
    /// Counted when a body is cut (`presage_upstream_idle_timeouts_total`).
    cut: Counter,
    timer: Option<Pin<Box<Sleep>>>,
    /// A frame came since the timer was last set: the next wait starts afresh.
    heard: bool,
}

impl Idle {
    /// None when `limit` is zero (no limit).
    pub fn new(limit: Duration, cut: &Counter) -> Option<Idle> {
        (!limit.is_zero()).then(|| Idle {
            limit,
            cut: cut.clone(),
            timer: None,
            heard: false,
        })
    }

    fn heard(&mut self) {
        self.heard = self.timer.is_some();
    }

    /// The upstream had nothing: pending, or the cut once it has been silent too long.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if std::mem::take(&mut self.heard) {
            timer.as_mut().reset(Instant::now() + limit);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.cut.inc();
        Poll::Ready(Some(Err(UpstreamIdle(limit).into())))
    }
}

/// A response body cut because its upstream sent nothing for this long.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}; the response is cut")]
pub struct UpstreamIdle(pub Duration);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `inner`'s next frame, minding how long the upstream has been silent.
fn next(
    inner: Pin<&mut UpstreamBody>,
    idle: &mut Option<Idle>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let polled = inner.poll_frame(cx);
    match (polled, idle) {
        (Poll::Pending, Some(idle)) => idle.wait(cx),
        (polled, Some(idle)) => {
            idle.heard();
            polled
        }
        (polled, None) => polled,
    }
}

#[derive(Debug)]
struct Pace {
    /// Bytes per second.
    rate: f64,
    /// Bytes that may go at once (a tenth of a second's worth, at least 16 KiB).
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The frame waiting for `wait`.
    held: Option<Frame<Bytes>>,
}

impl Paced {
    /// `rate` in bytes per second; 0 or less passes the body through untouched.
    pub fn new(inner: UpstreamBody, rate: f64, idle: Option<Idle>) -> Paced {
        let pace = (rate > 0.0).then(|| {
            let burst = (rate / 10.0).max(16.0 * 1024.0);
            Box::new(Pace {
                rate,
                burst,
                tokens: burst,
                last: std::time::Instant::now(),
                wait: None,
                held: None,
            })
        });
        Paced { inner, pace, idle }
    }
}

impl std::fmt::Debug for Paced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paced").field("pace", &self.pace).finish()
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let Some(pace) = this.pace.as_mut() else {
            return next(this.inner, this.idle, cx);
        };
        if let Some(wait) = pace.wait.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            pace.wait = None;
            if let Some(f) = pace.held.take() {
                return Poll::Ready(Some(Ok(f)));
            }
        }
        let frame = match next(this.inner, this.idle, cx) {
            Poll::Ready(Some(Ok(f))) => f,
            other => return other,
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let now = std::time::Instant::now();
        let refill = now.duration_since(pace.last).as_secs_f64() * pace.rate;
        pace.last = now;
        pace.tokens = (pace.tokens + refill).min(pace.burst) - data.len() as f64;
        if pace.tokens >= 0.0 {
            return Poll::Ready(Some(Ok(frame)));
        }
        // Overdrawn: hold the frame until the debt is paid.
        let debt = crate::qos::secs(-pace.tokens / pace.rate);
        let mut wait = Box::pin(tokio::time::sleep(debt));
        if wait.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Ok(frame)));
        }
        pace.wait = Some(wait);
        pace.held = Some(frame);
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && self.pace.as_ref().is_none_or(|p| p.held.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn full(b: impl Into<Bytes>) -> ResponseBody {
    Either::Right(Full::new(b.into()))
}

/// A failure of the downstream's request body: the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamBodyError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("malformed or interrupted request body: {0}")]
    Read(#[source] hyper::Error),
}

pin_project_lite::pin_project! {
    /// The body sent upstream.
    #[project = RequestBodyProj]
    pub enum RequestBody {
        /// No body (also what a retry of a body-less request sends).
        Empty,
        /// The downstream body, streamed, counting bytes against `remaining` of `limit`;
        /// a failure is also left in `fault`.
        Stream { #[pin] inner: Incoming, remaining: u64, limit: u64, fault: BodyFault },
        /// A body the proxy made (a workflow step's), sent in one frame.
        Bytes { data: Option<Bytes> },
    }
}

/// Where a streamed request body leaves its failure for the request path: hyper's
/// HTTP/2 client sends the body from a task of its own and reports only a reset, which
/// would read as the upstream's fault (502, and counted against the endpoint).
pub type BodyFault = std::sync::Arc<std::sync::OnceLock<DownstreamFault>>;

/// A downstream body failure, as the request path needs it (the error itself goes to
/// hyper).
#[derive(Debug, Clone, PartialEq)]
pub enum DownstreamFault {
    TooLarge(u64),
    Read(String),
}

impl RequestBody {
    pub fn limited(inner: Incoming, limit: u64, fault: BodyFault) -> Self {
        RequestBody::Stream {
            inner,
            remaining: limit,
            limit,
            fault,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = DownstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            RequestBodyProj::Empty => Poll::Ready(None),
            RequestBodyProj::Bytes { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBodyProj::Stream {
                inner,
                remaining,
                limit,
                fault,
            } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let n = data.len() as u64;
                        if n > *remaining {
                            let _ = fault.set(DownstreamFault::TooLarge(*limit));
                            return Poll::Ready(Some(Err(DownstreamBodyError::TooLarge(*limit))));
                        }
                        *remaining -= n;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    let e = DownstreamBodyError::Read(e);
                    let _ = fault.set(DownstreamFault::Read(e.to_string()));
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
            RequestBody::Bytes { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream { inner, .. } => inner.size_hint(),
            RequestBody::Bytes { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
