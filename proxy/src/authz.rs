//! Authorization by the caller's mesh identity: a listener's rules, each a request match
//! (host, path, methods, headers, as a route's) with identities to allow and to deny.
//! The first rule whose match holds decides; a request no rule matches is allowed. On a
//! redirected listener with rules, traffic that is not HTTP is refused (`listen`), as
//! raw TCP would pass the rules by.
//!
//! The identity is the SPIFFE ID of the peer's verified workload certificate (see
//! `identity`); plain connections have none, so an `allow` list turns them away, and so
//! does a `deny` list (a caller that cannot be told apart may be the one denied).
//!
//! Rules see the path normalised (`normalize_path`): the upstream app resolves `//`,
//! `.`, `..` and percent-encoded letters before routing, so a rule on `/admin` must
//! hold for `//admin`, `/./admin`, `/x/../admin` and `/%61dmin` too.

use crate::routing::{RequestView, RouteMatch};

/// An exact SPIFFE ID, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    Exact(String),
    Prefix(String),
}

impl IdentityPattern {
    pub fn parse(s: &str) -> Result<IdentityPattern, String> {
        if !s.starts_with("spiffe://") {
            return Err(format!(
                "expected a SPIFFE ID like spiffe://presage.local/ns/NAMESPACE/sa/ACCOUNT (or a prefix ending in *), found {s:?}"
            ));
        }
        match s.strip_suffix('*') {
            Some(p) if p.contains('*') => Err(format!("`*` only at the end, found {s:?}")),
            Some(p) => Ok(IdentityPattern::Prefix(p.to_string())),
            None if s.contains('*') => Err(format!("`*` only at the end, found {s:?}")),
            None => Ok(IdentityPattern::Exact(s.to_string())),
        }
    }

    fn matches(&self, id: &str) -> bool {
        match self {
            IdentityPattern::Exact(e) => e == id,
            IdentityPattern::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuthzRule {
    pub matcher: RouteMatch,
    pub allow: Vec<IdentityPattern>,
    pub deny: Vec<IdentityPattern>,
}

/// Why a request was refused (for the 403 body and the log).
#[derive(Debug, PartialEq, Eq)]
pub struct Denied {
    pub rule: usize,
    pub reason: &'static str,
}

/// Whether `peer` may make `req`.
pub fn check(rules: &[AuthzRule], req: &RequestView<'_>, peer: Option<&str>) -> Result<(), Denied> {
    let Some((rule, r)) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matcher.matches(req))
    else {
        return Ok(());
    };
    let any = |ps: &[IdentityPattern]| peer.is_some_and(|id| ps.iter().any(|p| p.matches(id)));
    if any(&r.deny) {
        return Err(Denied {
            rule,
            reason: "the caller's identity is denied",
        });
    }
    if !r.deny.is_empty() && peer.is_none() {
        return Err(Denied {
            rule,
            reason: "the caller has no mesh identity (it could be one denied)",
        });
    }
    if !r.allow.is_empty() && !any(&r.allow) {
        let reason = if peer.is_none() {
            "the caller has no mesh identity"
        } else {
            "the caller's identity is not allowed"
        };
        return Err(Denied { rule, reason });
    }
    Ok(())
}

/// `path` as the app will resolve it: `.` and `..` segments removed (RFC 3986 §5.2.4),
/// runs of `/` merged, and percent-encoded unreserved characters decoded (RFC 3986
/// §6.2.2.2). Other escapes (`%2F` among them) stay encoded. The query is not part of it.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let clean = !path.contains("//")
        && !path.contains('%')
        && !path.split('/').any(|s| s == "." || s == "..");
    if clean {
        return std::borrow::Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut p = format!("/{}", out.join("/"));
    if trailing && p.len() > 1 {
        p.push('/');
    }
    std::borrow::Cow::Owned(p)
}

/// Decodes `%XX` where XX is an unreserved character (letters, digits, `-._~`).
fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(c) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    out.push(c as char);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::PathMatch;

    #[test]
    fn the_first_matching_rule_decides() {
        let p = |s: &str| IdentityPattern::parse(s).unwrap();
        let rules = vec![
            AuthzRule {
                matcher: RouteMatch {
                    path: Some(PathMatch::Prefix("/admin".into())),
                    ..Default::default()
                },
                allow: vec![p("spiffe://td/ns/ops/sa/admin")],
                deny: vec![],
            },
            AuthzRule {
                matcher: RouteMatch::default(),
                allow: vec![p("spiffe://td/ns/shop/*")],
                deny: vec![p("spiffe://td/ns/shop/sa/intruder")],
            },
        ];
        let headers = http::HeaderMap::new();
        let view = |path| RequestView {
            host: None,
            path,
            method: &http::Method::GET,
            headers: &headers,
        };
        let ok = |path, id| check(&rules, &view(path), id).is_ok();
        assert!(ok("/admin/x", Some("spiffe://td/ns/ops/sa/admin")));
        assert!(!ok("/admin/x", Some("spiffe://td/ns/shop/sa/web")));
        assert!(ok("/buy", Some("spiffe://td/ns/shop/sa/web")));
        assert!(
            !ok("/buy", Some("spiffe://td/ns/shop/sa/intruder")),
            "deny first"
        );
        assert!(!ok("/buy", None), "plain callers have no identity");
        // A deny list alone: a caller without an identity may be the one denied.
        let deny_only = vec![AuthzRule {
            matcher: RouteMatch::default(),
            allow: vec![],
            deny: vec![p("spiffe://td/ns/shop/sa/intruder")],
        }];
        assert!(check(&deny_only, &view("/"), Some("spiffe://td/ns/shop/sa/web")).is_ok());
        assert!(check(&deny_only, &view("/"), None).is_err());
        assert_eq!(check(&[], &view("/"), None), Ok(()), "no rules: allowed");
    }

    #[test]
    fn patterns_are_spiffe_ids_with_an_optional_trailing_star() {
        assert!(IdentityPattern::parse("web").is_err());
        assert!(IdentityPattern::parse("spiffe://td/*/sa/x").is_err());
        assert_eq!(
            IdentityPattern::parse("spiffe://td/ns/a/*"),
            Ok(IdentityPattern::Prefix("spiffe://td/ns/a/".into()))
        );
    }

    /// What the app resolves is what the rules see.
    #[test]
    fn paths_are_normalised_as_the_app_resolves_them() {
        for (raw, want) in [
            ("/admin/reset", "/admin/reset"),
            ("//admin/reset", "/admin/reset"),
            ("/./admin/reset", "/admin/reset"),
            ("/public/../admin/reset", "/admin/reset"),
            ("/%61dmin/reset", "/admin/reset"),
            ("/%2E%2E/admin", "/admin"),
            ("/a/%2Fb", "/a/%2Fb"),
            ("/a/b/", "/a/b/"),
            ("/a/..", "/"),
            ("/../../x", "/x"),
            ("/%zz", "/%zz"),
            ("/%6", "/%6"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
    }
}
