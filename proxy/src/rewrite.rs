//! What the proxy changes between a downstream request and its upstream one, and back:
//! the path (a route's prefix rewrite), the upstream URI and HTTP version, hop-by-hop and
//! forwarding headers, the route's header edits, and the answer's pacing.

use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode, Uri, Version};
use http_body_util::Either;

use crate::body::{Idle, Paced, ResponseBody, UpstreamBody};
use crate::config::Protocol;
use crate::downstream::Conn;
use crate::errors::ProxyError;
use crate::headers;
use crate::runtime::Route;
use crate::upstream::{Cluster, Endpoint};

/// The HTTP version a cluster's endpoints are spoken to in.
pub(crate) fn upstream_version(c: &Cluster) -> Version {
    match c.spec.protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    }
}

/// The upstream path and query. Without a rewrite this is the request's own, shared
/// (no copy, no re-parse); a rewrite builds and validates the new one once.
pub(crate) fn rewritten_path(route: &Route, uri: &Uri) -> Result<PathAndQuery, ProxyError> {
    let original = || {
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let rewritten = match &route.spec.rewrite_prefix {
        Some((from, to)) if pq.starts_with(from.as_str()) => {
            let rest = &pq[from.len()..];
            // Avoid `//x` when both the replacement ends and the rest starts with a slash.
            if to.ends_with('/') && rest.starts_with('/') {
                format!("{to}{}", &rest[1..])
            } else if to.is_empty() && !rest.starts_with('/') {
                format!("/{rest}")
            } else {
                format!("{to}{rest}")
            }
        }
        _ => return Ok(original()),
    };
    PathAndQuery::try_from(rewritten)
        .map_err(|e| ProxyError::Upstream(format!("rewritten path is invalid: {e}")))
}

pub(crate) fn endpoint_uri(ep: &Endpoint, path: &PathAndQuery) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme(ep.scheme.clone())
        .authority(ep.spec.authority.clone())
        .path_and_query(path.clone())
        .build()
        .map_err(|e| ProxyError::Upstream(format!("bad upstream URI: {e}")))
}

pub(crate) fn prepare_headers(
    h: &mut HeaderMap,
    uri: &Uri,
    route: &Route,
    conn: &Conn,
    upgrade: bool,
) {
    // HTTP/2 carries the host in :authority, an absolute-form HTTP/1.1 request in its
    // URI; either wins over a Host header that says otherwise (RFC 9112 §3.2.2), as it
    // is what the request was routed and authorised by. An HTTP/1.1 upstream needs Host.
    if let Some(v) = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        h.insert(header::HOST, v);
    }
    headers::strip_hop_by_hop(h, upgrade);
    headers::add_forwarded(h, &conn.forwarded_for, conn.tls);
    route.spec.request_headers.apply(h);
}

/// The upstream's response toward the client, paced at `rate` bytes/s (0: not).
pub(crate) fn response(
    route: &Route,
    res: Response<UpstreamBody>,
    rate: f64,
) -> Response<ResponseBody> {
    let (mut parts, body) = res.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    route.spec.response_headers.apply(&mut parts.headers);
    let cluster = &route.cluster;
    let idle = Idle::new(cluster.spec.idle_timeout, &cluster.idle_timeouts);
    Response::from_parts(parts, Either::Left(Paced::new(body, rate, idle)))
}
