//! What the request path knows of the downstream connection a request came in on.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

/// Per-connection facts the request path needs.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// `peer`'s address as an `x-forwarded-for` entry.
    pub forwarded_for: HeaderValue,
    pub tls: bool,
    /// Where a connection redirected to a transparent listener was headed.
    pub original_dst: Option<SocketAddr>,
    /// Redirected inbound traffic: not routed, passed to the local application.
    pub inbound: bool,
    /// The SPIFFE ID of a mesh peer (verified client certificate); checked against the
    /// listener's authorization rules.
    pub peer_id: Option<Arc<str>>,
    /// The listener the connection came in on.
    pub listener: Arc<str>,
    /// The caller's `x-presage-*` headers are believed (`config::QosHeaders`); if not,
    /// they are removed from its requests.
    pub trusted: bool,
}
