//! Authorization by the caller's mesh identity: a listener's rules, each a request match
//! (host, path, methods, headers, as a route's) with identities to allow and to deny.
//! The first rule whose match holds decides; a request no rule matches is allowed.
//!
//! The identity is the SPIFFE ID of the peer's verified workload certificate (see
//! `identity`); plain connections have none, so an `allow` list turns them away.

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
}
