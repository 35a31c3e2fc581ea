//! Transparent interception: connections that iptables redirected to a `transparent`
//! listener (the pod's outbound traffic, in sidecar mode), served as if the proxy were
//! not there.
//!
//! ```text
//! accept ─▶ SO_ORIGINAL_DST (where the client meant to go)
//!        ─▶ peek: HTTP? ── yes ─▶ routes by Host as usual; no route ─▶ the original
//!                │                destination, request by request (passthrough)
//!                ├─ a mesh ClientHello (inbound, with an identity) ─▶ mutual TLS, then
//!                │    HTTP as above, the peer's identity checked and passed on
//!                └─ no (or silent for SNIFF_WAIT: a server-first protocol)
//!                     ─▶ TCP to the original destination, bytes spliced both ways
//! ```
//! The proxy's own connections must not be redirected again: the iptables rules
//! exclude its user (see `deploy/`).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;

use crate::body::{Paced, ResponseBody};
use crate::errors::ProxyError;
use crate::headers;
use crate::state::Shared;

/// How long a redirected connection may stay silent before it is taken for a protocol in
/// which the server speaks first (SMTP, MySQL, ...) and passed through as TCP.
pub const SNIFF_WAIT: Duration = Duration::from_millis(300);

/// Where a redirected connection was headed; None when it was not redirected (a client
/// that connected to the listener itself).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    }
    .ok()?
    .as_socket()?;
    (dst != local).then_some(dst)
}

/// What a redirected connection carries, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1.x request line or the HTTP/2 preface.
    Http,
    /// A TLS ClientHello for the mesh (a peer sidecar's mutual TLS; see `identity`).
    Mesh,
    /// Anything else, or silence for `SNIFF_WAIT`: passed through as TCP.
    Other,
}

/// Peeks (consumes nothing) at the first bytes; `mesh`: TLS may be a peer sidecar's.
/// Waits up to `SNIFF_WAIT` for enough of them.
pub async fn sniff(stream: &TcpStream, mesh: bool) -> Sniffed {
    // A ClientHello with post-quantum key shares is about 1.5 KB.
    let mut buf = vec![0u8; if mesh { 8192 } else { 8 }];
    let found = tokio::time::timeout(SNIFF_WAIT, async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Sniffed::Other,
                Ok(n) => n,
            };
            let b = &buf[..n];
            if mesh && b[0] == 0x16 {
                match crate::identity::is_mesh_hello(b) {
                    Some(true) => return Sniffed::Mesh,
                    Some(false) => return Sniffed::Other,
                    None if n == buf.len() => return Sniffed::Other,
                    None => {}
                }
            } else if n >= 8 {
                return if is_http_start(&b[..8]) {
                    Sniffed::Http
                } else {
                    Sniffed::Other
                };
            }
            // Not enough bytes yet: wait for more.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    found.unwrap_or(Sniffed::Other)
}

fn is_http_start(b: &[u8]) -> bool {
    const STARTS: [&[u8]; 10] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"CONNECT ",
        b"PRI * HT",
    ];
    STARTS
        .iter()
        .any(|s| b.len() >= s.len().min(8) && b.starts_with(&s[..s.len().min(b.len())]))
}

/// Splices a non-HTTP connection to its original destination.
pub async fn tcp(shared: &Shared, mut stream: TcpStream, dst: SocketAddr) {
    shared.metrics.passthrough_connections.inc();
    let mut upstream = match TcpStream::connect(dst).await {
        Ok(s) => s,
        Err(error) => {
            tracing::debug!(%error, %dst, "passthrough connect failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Err(error) = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        tracing::debug!(%error, %dst, "passthrough ended with an error");
    }
}

type PassClient = Client<HttpConnector, Incoming>;

fn client() -> &'static PassClient {
    static CLIENT: OnceLock<PassClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        Client::builder(TokioExecutor::new()).build(http)
    })
}

/// Sends a request that matched no route to where the client meant it to go.
pub async fn http(
    shared: &Shared,
    req: Request<Incoming>,
    dst: SocketAddr,
) -> Result<Response<ResponseBody>, ProxyError> {
    shared.metrics.passthrough_requests.inc();
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(dst.to_string())
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::Upstream(format!("bad original destination URI: {e}")))?;
    parts.version = http::Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers, false);
    let res = client()
        .request(Request::from_parts(parts, body))
        .await
        .map_err(ProxyError::from_client)?;
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(
        parts,
        Either::Left(Paced::new(Either::Left(body), 0.0, None)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_other_protocols_by_its_first_bytes() {
        assert!(is_http_start(b"GET / HT"));
        assert!(is_http_start(b"POST /x "));
        assert!(is_http_start(b"PRI * HT"), "the HTTP/2 preface");
        assert!(
            !is_http_start(b"\x16\x03\x01\x02\x00\x01\x00\x01"),
            "a TLS hello"
        );
        assert!(!is_http_start(b"SSH-2.0-"));
        assert!(!is_http_start(b""), "silence");
        assert!(!is_http_start(b"get / HT"), "methods are case-sensitive");
    }
}
