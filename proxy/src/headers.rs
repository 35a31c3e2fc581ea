//! Header handling shared by both directions: hop-by-hop stripping (RFC 9110 §7.6.1),
//! request ids and forwarding headers.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

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
    // Every `Connection` field counts, not only the first (a list may be split over
    // several lines); the rare second and later ones are copied out.
    let mut values = h.get_all(header::CONNECTION).iter();
    let first = values.next().cloned();
    let more: Vec<HeaderValue> = values.cloned().collect();
    if !keep_upgrade {
        h.remove(header::CONNECTION);
    }
    for conn in first.iter().chain(&more) {
        remove_listed(h, conn.as_bytes(), keep_upgrade);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        h.remove(header::UPGRADE);
    }
    if h.get_all(header::TE)
        .iter()
        .any(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        h.remove(header::TE);
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
    let fresh = || {
        let mut id = new_request_id();
        id.set_sensitive(true);
        id
    };
    match h.entry(X_REQUEST_ID.clone()) {
        Entry::Occupied(mut e) => {
            let v = e.get_mut();
            if !v.is_empty() && v.len() <= 128 {
                v.set_sensitive(true);
                return v.clone();
            }
            let id = fresh();
            e.insert(id.clone());
            id
        }
        Entry::Vacant(e) => e.insert(fresh()).clone(),
    }
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

/// Appends the client's address (`forwarded_for`) to `x-forwarded-for` (after every
/// entry of every such field the request brought, joined as one list) and sets
/// `x-forwarded-proto` unless the caller did. One lookup per field (`entry`).
pub fn add_forwarded(h: &mut HeaderMap, client: &HeaderValue, tls: bool) {
    match h.entry(X_FORWARDED_FOR.clone()) {
        Entry::Occupied(mut e) => {
            let mut v = Vec::new();
            for prev in e.iter() {
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(client.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
    }
    h.entry(X_FORWARDED_PROTO.clone())
        .or_insert_with(|| HeaderValue::from_static(if tls { "https" } else { "http" }));
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

    /// A `Connection` list may be split over several fields (RFC 9110 §5.3): every one
    /// names headers to drop, with or without an upgrade passing through.
    #[test]
    fn every_connection_field_counts() {
        for keep_upgrade in [false, true] {
            let mut h = HeaderMap::new();
            h.append("connection", "keep-alive".parse().unwrap());
            h.append("connection", "x-secret".parse().unwrap());
            h.insert("x-secret", "1".parse().unwrap());
            h.append("te", "trailers".parse().unwrap());
            h.append("te", "gzip".parse().unwrap());
            h.insert("x-kept", "1".parse().unwrap());
            strip_hop_by_hop(&mut h, keep_upgrade);
            assert!(h.get("x-secret").is_none(), "{h:?}");
            assert!(h.get("te").is_none(), "`te: gzip` is not end-to-end: {h:?}");
            assert_eq!(h.get("connection").is_some(), keep_upgrade);
            assert_eq!(h.get("x-kept").unwrap(), "1");
        }
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
        // Two fields are one list (RFC 9110 §5.3): every entry is kept, in order.
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.2, 10.0.0.3".parse().unwrap());
        add_forwarded(&mut h, &client, false);
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["10.0.0.1, 10.0.0.2, 10.0.0.3, 2001:db8::1"]);
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
        // An empty or overlong one is replaced, every field of it.
        let mut h3 = HeaderMap::new();
        h3.insert("x-request-id", "".parse().unwrap());
        h3.append("x-request-id", "second".parse().unwrap());
        let id = ensure_request_id(&mut h3);
        assert_eq!(id.len(), 32);
        let all: Vec<_> = h3.get_all("x-request-id").iter().collect();
        assert_eq!(all, [&id]);
        assert!(id.is_sensitive() && h3["x-request-id"].is_sensitive());
    }
}
