//! Bearer-token authentication of the REST API, and who the caller is.
//!
//! Tokens come from the config (`auth.tokens`) and from `PRESAGE_API_TOKEN` (an admin
//! token, which `presage up` generates and prints). A token without a tenant is an
//! admin's: everything. A tenant's token reaches only `/v1/qos/profiles` and
//! `/v1/subjects`, and there only what that tenant owns (plus shared profiles, to read
//! and to assign). With no token configured the API is open (and says so at start-up).
//! `/openapi.json` and `/metrics` are always open. Failures are JSON: 401 with
//! `WWW-Authenticate: Bearer` for a missing or unknown token, 403 for a tenant outside
//! its scope.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// `auth:` in the control plane's YAML.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    /// The tenant the token acts for; none: an admin token.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(String),
}

impl Caller {
    /// The tenant to scope to; `None` for an admin.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(t) => Some(t),
        }
    }

    /// Whether the caller may see or change something owned by `owner` ("" = shared).
    pub fn owns(&self, owner: &str) -> bool {
        self.tenant().is_none_or(|t| t == owner)
    }
}

/// The accepted tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    list: Vec<(Vec<u8>, Caller)>,
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    pub fn new(cfg: &AuthConfig, admin: Option<String>) -> Tokens {
        let mut list: Vec<(Vec<u8>, Caller)> = cfg
            .tokens
            .iter()
            .map(|t| {
                let who = t.tenant.clone().map_or(Caller::Admin, Caller::Tenant);
                (t.token.as_bytes().to_vec(), who)
            })
            .collect();
        if let Some(t) = admin.filter(|t| !t.is_empty()) {
            list.push((t.into_bytes(), Caller::Admin));
        }
        Tokens { list }
    }

    pub fn enabled(&self) -> bool {
        !self.list.is_empty()
    }

    /// The caller an `Authorization` header value names, if any.
    pub fn caller(&self, authorization: Option<&str>) -> Option<Caller> {
        let token = authorization?.strip_prefix("Bearer ")?.trim().as_bytes();
        // Every token is compared, so timing does not tell which one nearly matched.
        let mut found = None;
        for (t, who) in &self.list {
            if same(t, token) && found.is_none() {
                found = Some(who.clone());
            }
        }
        found
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut res = (status, Json(serde_json::json!({ "message": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"presage\""),
        );
    }
    res
}

/// Middleware: authenticates and puts the `Caller` in the request's extensions.
pub async fn require(State(tokens): State<Arc<Tokens>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = path == "/openapi.json" || path == "/metrics";
    let caller = if !tokens.enabled() || open {
        Caller::Admin
    } else {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match tokens.caller(header) {
            Some(c) => c,
            None if header.is_none() => {
                return refuse(StatusCode::UNAUTHORIZED, "a bearer token is required")
            }
            None => return refuse(StatusCode::UNAUTHORIZED, "unknown bearer token"),
        }
    };
    let tenant_path = path.starts_with("/v1/qos/profiles") || path.starts_with("/v1/subjects");
    if let Caller::Tenant(t) = &caller {
        if !tenant_path {
            let msg = format!(
                "tenant {t:?} may only manage its QoS profiles (/v1/qos/profiles) and subjects (/v1/subjects)"
            );
            return refuse(StatusCode::FORBIDDEN, &msg);
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_caller() {
        let cfg = AuthConfig {
            tokens: vec![TokenConfig {
                token: "t-acme".into(),
                tenant: Some("acme".into()),
            }],
        };
        let t = Tokens::new(&cfg, Some("root".into()));
        assert!(t.enabled());
        assert_eq!(t.caller(Some("Bearer root")), Some(Caller::Admin));
        assert_eq!(
            t.caller(Some("Bearer t-acme")),
            Some(Caller::Tenant("acme".into()))
        );
        assert_eq!(t.caller(Some("Bearer t-acm")), None);
        assert_eq!(t.caller(Some("root")), None, "the scheme is required");
        assert_eq!(t.caller(None), None);
        assert!(!Tokens::new(&AuthConfig::default(), None).enabled());
        assert!(Caller::Tenant("acme".into()).owns("acme"));
        assert!(!Caller::Tenant("acme".into()).owns(""));
        assert!(Caller::Admin.owns("acme"));
    }
}
