//! The one place where failures become HTTP responses. Client faults are 4xx; upstream
//! faults are 502/503/504. Every synthetic response has a short text body and an
//! `x-presage-error` header naming the cause, so it can be told apart from an upstream's.

use http::{header, Response, StatusCode};

use crate::body::{full, DownstreamBodyError, ResponseBody};

/// Why the proxy answered instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("cluster {0} has no endpoints")]
    NoEndpoint(String),
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("{0}")]
    BadRequestBody(String),
    #[error("upstream did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("upstream failed: {0}")]
    Upstream(String),
    #[error("upgrade failed: {0}")]
    Upgrade(String),
    #[error("unknown QoS profile {0:?} in x-presage-qos")]
    UnknownQosProfile(String),
    #[error("QoS profile {0:?} is over its rate limit")]
    Throttled(String, std::time::Duration),
    #[error("overloaded: {0} requests are shed to keep higher tiers within target")]
    Shed(std::sync::Arc<str>),
    #[error("{0} is degraded: it cannot take this request now (skip the call)")]
    Degraded(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl From<&crate::body::DownstreamFault> for ProxyError {
    fn from(f: &crate::body::DownstreamFault) -> Self {
        match f {
            crate::body::DownstreamFault::TooLarge(n) => ProxyError::BodyTooLarge(*n),
            crate::body::DownstreamFault::Read(m) => ProxyError::BadRequestBody(m.clone()),
        }
    }
}

impl ProxyError {
    /// Classifies a client error by walking its source chain: a downstream body failure
    /// anywhere in it is the client's fault, whatever wrapped it.
    pub fn from_client(e: hyper_util::client::legacy::Error) -> Self {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if let Some(d) = s.downcast_ref::<DownstreamBodyError>() {
                return match d {
                    DownstreamBodyError::TooLarge(n) => ProxyError::BodyTooLarge(*n),
                    DownstreamBodyError::Read(_) => ProxyError::BadRequestBody(d.to_string()),
                };
            }
            src = s.source();
        }
        if e.is_connect() {
            ProxyError::Connect(chain(&e))
        } else {
            ProxyError::Upstream(chain(&e))
        }
    }

    /// A failure of the in-task HTTP/1.1 path.
    pub fn from_h1(e: crate::h1::Error) -> Self {
        match e {
            crate::h1::Error::Connect(..) => ProxyError::Connect(e.to_string()),
            crate::h1::Error::Exchange(..) => ProxyError::Upstream(e.to_string()),
        }
    }

    /// True when the request may be sent again (nothing reached the upstream, or the
    /// request is idempotent and failed without a response).
    pub fn is_connect(&self) -> bool {
        matches!(self, ProxyError::Connect(_))
    }

    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::BodyTooLarge(_) | ProxyError::BadRequestBody(_)
        )
    }

    /// A refusal by policy or of a bad request, expected in normal operation: logged at
    /// debug, not as a failure.
    pub fn is_refusal(&self) -> bool {
        self.is_client_fault()
            || matches!(
                self,
                ProxyError::NoRoute
                    | ProxyError::UnknownQosProfile(_)
                    | ProxyError::Throttled(..)
                    | ProxyError::Shed(_)
                    | ProxyError::Degraded(_)
                    | ProxyError::Forbidden(_)
            )
    }

    /// Short machine-readable code for `x-presage-error` and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no-route",
            ProxyError::NoEndpoint(_) => "no-endpoint",
            ProxyError::BodyTooLarge(_) => "body-too-large",
            ProxyError::BadRequestBody(_) => "bad-request-body",
            ProxyError::Timeout(_) => "upstream-timeout",
            ProxyError::Connect(_) => "upstream-connect",
            ProxyError::Upstream(_) => "upstream-error",
            ProxyError::Upgrade(_) => "upgrade-failed",
            ProxyError::UnknownQosProfile(_) => "unknown-qos-profile",
            ProxyError::Throttled(..) => "rate-limited",
            ProxyError::Shed(_) => "shed",
            ProxyError::Degraded(_) => "degraded",
            ProxyError::Forbidden(_) => "forbidden",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoint(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequestBody(_) | ProxyError::UnknownQosProfile(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Throttled(..) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Shed(_) | ProxyError::Degraded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::Upgrade(_) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let text = format!("{self}\n");
        let mut res = Response::new(full(text));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            "x-presage-error",
            header::HeaderValue::from_static(self.code()),
        );
        let retry_after = match &self {
            ProxyError::Throttled(_, wait) => Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            ProxyError::Shed(_) | ProxyError::Degraded(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.is_client_fault() {
            // The request stream is in an unknown state; do not reuse the connection.
            h.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        res
    }
}

/// `a: b: c` from an error and its sources, skipping repeats.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}
