//! Header handling shared by both directions: hop-by-hop stripping (RFC 9110 §7.6.1),
//! request ids and forwarding headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers, and those the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay (a protocol switch passes through).
/// `TE: trailers` is end-to-end in practice (gRPC needs it) and is kept.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the names (standard names compare
    // as small integers) instead of a hashed lookup per name.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    // Taken out rather than cloned when it goes anyway.
    let conn = if keep_upgrade {
        h.get(header::CONNECTION).cloned()
    } else {
        h.remove(header::CONNECTION)
    };
    if let Some(conn) = conn {
        remove_listed(h, conn.as_bytes(), keep_upgrade);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        h.remove(header::UPGRADE);
    }
    if let Some(te) = h.get(header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            h.remove(header::TE);
        }
    }
}

/// Removes the headers a `Connection` value names (`TE` excepted, and `Upgrade` with
/// `keep_upgrade`).
pub fn remove_listed(h: &mut HeaderMap, connection: &[u8], keep_upgrade: bool) {
    let Ok(list) = std::str::from_utf8(connection) else {
        return;
    };
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let kept = name.eq_ignore_ascii_case("te")
            || (keep_upgrade && name.eq_ignore_ascii_case("upgrade"));
        if !kept {
            // A `&str` key is looked up without allocating a `HeaderName`.
            h.remove(name);
        }
    }
}

/// True for the headers that end at the next hop (RFC 9110 §7.6.1).
pub fn is_hop_by_hop(n: &HeaderName) -> bool {
    *n == header::CONNECTION
        || *n == header::TRANSFER_ENCODING
        || *n == header::UPGRADE
        || *n == header::TE
        || *n == KEEP_ALIVE
        || *n == PROXY_CONNECTION
}

/// True for an HTTP/1.1 protocol switch request (WebSocket and friends).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Keeps a valid incoming `x-request-id`, or sets a new random one; returns it.
///
/// Both copies are marked never-indexed for HPACK (RFC 7541 §6.2.3): a value unique to
/// one request would only evict useful entries from an h2 connection's header table, and
/// h2 compares a new value with every indexed one of the same name before inserting it
/// (a chain of about 50 request ids, 5% of the instructions per proxied h2c request).
pub fn ensure_request_id(h: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = h.get_mut(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 {
            v.set_sensitive(true);
            return v.clone();
        }
    }
    let mut id = new_request_id();
    id.set_sensitive(true);
    h.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// 128 random bits as 32 hex digits. Not a secret, so a fast PRNG will do.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    let n = fastrand::u128(..);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (i * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

/// The client's address as an `x-forwarded-for` entry (made once per connection).
pub fn forwarded_for(peer: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_string()).expect("an IP address is a valid header value")
}

/// Appends the client's address (`forwarded_for`) to `x-forwarded-for` and sets
/// `x-forwarded-proto`.
pub fn add_forwarded(h: &mut HeaderMap, client: &HeaderValue, tls: bool) {
    let v = match h.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        None => Some(client.clone()),
    };
    if let Some(v) = v {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
    }
}

/// `x-forwarded-client-cert` (Envoy's format): who called, as the inbound sidecar
/// verified it, for the application to read. Always replaced: a caller cannot forge it.
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Sets `x-forwarded-client-cert` to `By=<own ID>;URI=<peer ID>`, or removes it when the
/// peer has no verified identity.
pub fn set_client_cert(h: &mut HeaderMap, peer: Option<&str>) {
    h.remove(&X_FORWARDED_CLIENT_CERT);
    let Some(peer) = peer else { return };
    let v = match crate::identity::own_id() {
        Some(own) => format!("By={own};URI={peer}"),
        None => format!("URI={peer}"),
    };
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(
            h.get("connection").is_none()
                && h.get("x-secret").is_none()
                && h.get("keep-alive").is_none()
        );
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn the_client_is_appended_to_x_forwarded_for() {
        let client = forwarded_for("2001:db8::1".parse().unwrap());
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &client, true);
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        add_forwarded(&mut h, &client, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https", "a caller's proto is kept");
    }

    #[test]
    fn each_hop_by_hop_header_goes_even_alone() {
        for name in [
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
            h.insert("x-kept", "1".parse().unwrap());
            strip_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name} stays");
            assert_eq!(h.len(), 1, "{name}");
        }
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h.get("x-request-id").unwrap(), &id);
        let mut h2 = HeaderMap::new();
        h2.insert("x-request-id", "abc".parse().unwrap());
        assert_eq!(ensure_request_id(&mut h2), "abc");
        // Never indexed in HPACK, in both copies (the upstream's and the client's).
        assert!(id.is_sensitive() && h["x-request-id"].is_sensitive());
        assert!(h2["x-request-id"].is_sensitive());
    }
}
