//! Route matching: which route a request takes. Pure functions over a request's host,
//! path, method and headers; first match wins.
//!
//! Does not own what happens after the match (rewrites and header edits are in `forward`).

use http::{HeaderMap, Method};
use regex::Regex;

/// Host match: exact (case-insensitive) or `*.suffix` (any subdomain, not the apex).
#[derive(Debug, Clone)]
pub enum HostMatch {
    Exact(String),
    /// Stored with its leading dot: `*.example.com` is `.example.com`.
    Suffix(String),
}

impl HostMatch {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() {
            return Err("expected a host name or `*.suffix`, found an empty string".into());
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("expected `*.suffix`, found {s:?}"));
            }
            return Ok(HostMatch::Suffix(format!(".{rest}")));
        }
        if s.contains('*') {
            return Err(format!(
                "a wildcard is only allowed as a leading `*.`, found {s:?}"
            ));
        }
        Ok(HostMatch::Exact(s))
    }

    /// `host` must already be lowercase and without a port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored at both ends when compiled.
    Regex(Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: http::HeaderName,
    pub value: Option<String>,
    pub regex: Option<Regex>,
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        if values.peek().is_none() {
            return false;
        }
        values.any(|v| {
            let Ok(v) = v.to_str() else { return false };
            self.value.as_deref().is_none_or(|want| want == v)
                && self.regex.as_ref().is_none_or(|re| re.is_match(v))
        })
    }
}

/// All conditions must hold; an absent condition matches everything.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderMatch>,
}

/// The parts of a request that routing looks at.
pub struct RequestView<'a> {
    /// Lowercase, port stripped.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(h) = &self.host {
            match req.host {
                Some(host) if h.matches(host) => {}
                _ => return false,
            }
        }
        if let Some(p) = &self.path {
            if !p.matches(req.path) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return false;
        }
        self.headers.iter().all(|h| h.matches(req.headers))
    }
}

/// The request's host for routing: `Host` header (HTTP/1) or the URI authority (HTTP/2),
/// lowercased and without the port. Returns `Cow` so the common lowercase case does not allocate.
pub fn request_host<'a>(
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
) -> Option<std::borrow::Cow<'a, str>> {
    let raw = match uri.host() {
        Some(h) => h,
        None => {
            let v = headers.get(http::header::HOST)?.to_str().ok()?;
            strip_port(v)
        }
    };
    // `example.com.` is `example.com` (a fully qualified name); IPv6 literals compare
    // without brackets whichever way they came.
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    let raw = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(raw.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(raw))
    }
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        // [v6]:port
        return h.split_once(']').map_or(h, |(a, _)| &a[1..]);
    }
    h.rsplit_once(':').map_or(h, |(a, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            a
        } else {
            h
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        host: Option<&'a str>,
        path: &'a str,
        method: &'a Method,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            host,
            path,
            method,
            headers,
        }
    }

    #[test]
    fn suffix_host_matches_subdomains_not_apex() {
        let m = HostMatch::parse("*.Example.com").unwrap();
        assert!(m.matches("api.example.com"));
        assert!(m.matches("a.b.example.com"));
        assert!(!m.matches("example.com"));
        assert!(!m.matches("badexample.com"));
        assert!(HostMatch::parse("a.*.com").is_err());
    }

    #[test]
    fn all_conditions_must_hold() {
        let headers = {
            let mut h = HeaderMap::new();
            h.insert("x-env", "canary".parse().unwrap());
            h
        };
        let m = RouteMatch {
            host: Some(HostMatch::parse("api.test").unwrap()),
            path: Some(PathMatch::Prefix("/v1/".into())),
            methods: vec![Method::GET],
            headers: vec![HeaderMatch {
                name: "x-env".parse().unwrap(),
                value: Some("canary".into()),
                regex: None,
            }],
        };
        let get = Method::GET;
        assert!(m.matches(&view(Some("api.test"), "/v1/x", &get, &headers)));
        assert!(!m.matches(&view(Some("api.test"), "/v2/x", &get, &headers)));
        assert!(!m.matches(&view(None, "/v1/x", &get, &headers)));
        assert!(!m.matches(&view(Some("api.test"), "/v1/x", &Method::POST, &headers)));
        assert!(!m.matches(&view(Some("api.test"), "/v1/x", &get, &HeaderMap::new())));
    }

    #[test]
    fn host_comes_from_uri_then_header_without_port() {
        let mut h = HeaderMap::new();
        h.insert("host", "API.Test:8080".parse().unwrap());
        let uri: http::Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&uri, &h).as_deref(), Some("api.test"));
        let uri: http::Uri = "http://h2.test:443/x".parse().unwrap();
        assert_eq!(request_host(&uri, &h).as_deref(), Some("h2.test"));
        h.insert("host", "[::1]:80".parse().unwrap());
        assert_eq!(
            request_host(&"/".parse().unwrap(), &h).as_deref(),
            Some("::1")
        );
        // The same IPv6 host from an authority (h2, absolute form), and a FQDN's dot.
        let uri: http::Uri = "http://[::1]:80/x".parse().unwrap();
        assert_eq!(request_host(&uri, &h).as_deref(), Some("::1"));
        h.insert("host", "api.test.".parse().unwrap());
        assert_eq!(
            request_host(&"/".parse().unwrap(), &h).as_deref(),
            Some("api.test")
        );
    }
}
