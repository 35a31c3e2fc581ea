//! HTTP/1.1 protocol switches (WebSocket and friends): the handshake goes to an endpoint
//! through hyper's client, and once both sides have switched the two upgraded
//! connections are spliced until either closes or both are silent for the cluster's
//! `idle_timeout`.

use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::body::{RequestBody, ResponseBody};
use crate::config::Protocol;
use crate::downstream::Conn;
use crate::errors::ProxyError;
use crate::rewrite::{endpoint_uri, prepare_headers, response, rewritten_path};
use crate::runtime::Route;
use crate::splice::Ended;
use crate::upstream::Outcome;

/// HTTP/1.1 protocol switch (WebSocket): forward the handshake, then splice the two
/// upgraded connections until either side closes.
pub(crate) async fn upgrade(
    route: &Route,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> Result<(Response<ResponseBody>, Option<http::uri::Authority>), ProxyError> {
    let cluster = &route.cluster;
    if cluster.spec.protocol != Protocol::Http1 {
        return Err(ProxyError::Upgrade(format!(
            "cluster {} speaks HTTP/2; protocol upgrades need http1",
            cluster.spec.name
        )));
    }
    let downstream = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    let path = rewritten_path(route, &parts.uri)?;
    prepare_headers(&mut parts.headers, &parts.uri, route, conn, true);
    let ep = cluster
        .balancer
        .pick(&cluster.endpoints, None)
        .ok_or_else(|| ProxyError::NoEndpoint(cluster.spec.name.clone()))?;
    let mut up = Request::new(RequestBody::Empty);
    *up.method_mut() = parts.method;
    *up.uri_mut() = endpoint_uri(ep, &path)?;
    *up.headers_mut() = parts.headers;
    let t0 = Instant::now();
    let mut res = match tokio::time::timeout(route.spec.timeout, cluster.client.request(up)).await {
        Err(_) => return Err(ProxyError::Timeout(route.spec.timeout)),
        Ok(Err(e)) => {
            let err = ProxyError::from_client(e);
            cluster.record(ep, Outcome::failed(&err));
            return Err(err);
        }
        Ok(Ok(res)) => res,
    };
    cluster.record(ep, Outcome::Success(t0.elapsed()));
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut res);
        let (idle, cut) = (cluster.spec.idle_timeout, cluster.idle_timeouts.clone());
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((d, u)) => {
                    let mut d = hyper_util::rt::TokioIo::new(d);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    match crate::splice::splice(&mut d, &mut u, idle).await {
                        Ok(Ended::Idle) => {
                            cut.inc();
                            tracing::debug!(?idle, "upgraded connection closed: idle");
                        }
                        Ok(Ended::Closed(..)) => {}
                        Err(error) => {
                            tracing::debug!(%error, "upgraded connection ended with an error")
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "protocol upgrade failed"),
            }
        });
    }
    Ok((
        response(route, res.map(Either::Left), 0.0),
        Some(ep.spec.authority.clone()),
    ))
}
