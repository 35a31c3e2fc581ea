//! Who may have which workload identity: before the CA signs a certificate for
//! `ns/<namespace>/sa/<service account>`, the proxy asking proves it runs as that
//! service account.
//!
//! With `identity.attest: {kubernetes: {...}}` the proxy sends its pod's service-account
//! token (`authorization: Bearer`; `presage inject` mounts one whose audience is
//! `presage`, so it is no use against the API server), and the control plane asks the
//! API server whose it is (a TokenReview, as Istio's CA does): only
//! `system:serviceaccount:<namespace>:<service account>` gets that identity, and only
//! with a token for one of `audiences`. The gRPC port is plain text: a token seen on the
//! wire can be replayed for that identity until it expires (an hour). With
//! `attest: none` (the default, for `presage up` and machines without Kubernetes) the
//! CA signs what it is asked for, and its gRPC port must be reachable only from the
//! mesh's own workloads.

use std::path::PathBuf;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde::Deserialize;
use tokio::sync::OnceCell;

/// `identity.attest`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AttestConfig {
    /// Sign what is asked for.
    #[default]
    None,
    /// Check the caller's service-account token with the API server.
    Kubernetes(KubernetesAttest),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesAttest {
    /// A kubeconfig file; default: `$KUBECONFIG` or `~/.kube/config`, else the
    /// in-cluster service account (which needs `tokenreviews` `create`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
    /// Audiences the token must be for (a projected token's); empty: the API server's.
    #[serde(default)]
    pub audiences: Vec<String>,
}

/// Checks callers against `identity.attest`.
pub struct Attestor {
    cfg: AttestConfig,
    client: OnceCell<kube::Client>,
}

/// Why a caller may not have the identity it asked for (gRPC `PERMISSION_DENIED` or,
/// when the API server could not answer, `UNAVAILABLE`).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Denied(String),
    Unavailable(String),
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor").field("cfg", &self.cfg).finish()
    }
}

impl Attestor {
    pub fn new(cfg: AttestConfig) -> Attestor {
        Attestor {
            cfg,
            client: OnceCell::new(),
        }
    }

    /// Whether the caller holding `token` may be `namespace`/`service_account`.
    pub async fn check(
        &self,
        token: Option<&str>,
        namespace: &str,
        service_account: &str,
    ) -> Result<(), Refused> {
        let AttestConfig::Kubernetes(k) = &self.cfg else {
            return Ok(());
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Refused::Denied(
                "no service-account token (authorization: Bearer): identity.attest is kubernetes"
                    .into(),
            ));
        };
        let client = self
            .client
            .get_or_try_init(|| {
                crate::discovery::kubernetes::client(k.kubeconfig.as_deref(), k.context.as_deref())
            })
            .await
            .map_err(Refused::Unavailable)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!k.audiences.is_empty()).then(|| k.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refused::Unavailable(format!("TokenReview: {e}")))?;
        verdict(answer, &k.audiences, namespace, service_account)
    }
}

/// The API server's answer, held against the identity asked for (and, when audiences
/// were asked for, against them: an API server that ignores them is not trusted).
fn verdict(
    review: TokenReview,
    audiences: &[String],
    namespace: &str,
    service_account: &str,
) -> Result<(), Refused> {
    let status = review.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(Refused::Denied(format!(
            "the service-account token was refused: {why}"
        )));
    }
    let granted = status.audiences.unwrap_or_default();
    if !audiences.is_empty() && !granted.iter().any(|a| audiences.contains(a)) {
        return Err(Refused::Denied(format!(
            "the token is not for this control plane: its audiences are {granted:?}, expected one of {audiences:?}"
        )));
    }
    let wanted = format!("system:serviceaccount:{namespace}:{service_account}");
    let user = status.user.and_then(|u| u.username).unwrap_or_default();
    if user != wanted {
        return Err(Refused::Denied(format!(
            "the token is {user:?}'s, not {wanted:?}'s"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn review(authenticated: bool, user: &str) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(vec!["presage".into()]),
                user: Some(UserInfo {
                    username: Some(user.into()),
                    ..Default::default()
                }),
                error: (!authenticated).then(|| "token expired".into()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_tokens_own_service_account_passes() {
        let me = "system:serviceaccount:shop:frontend";
        assert_eq!(verdict(review(true, me), &[], "shop", "frontend"), Ok(()));
        assert_eq!(
            verdict(review(true, me), &[], "shop", "admin"),
            Err(Refused::Denied(
                r#"the token is "system:serviceaccount:shop:frontend"'s, not "system:serviceaccount:shop:admin"'s"#.into()
            ))
        );
        assert!(
            verdict(review(true, me), &[], "ops", "frontend").is_err(),
            "another namespace"
        );
        assert_eq!(
            verdict(review(false, me), &[], "shop", "frontend"),
            Err(Refused::Denied(
                "the service-account token was refused: token expired".into()
            ))
        );
    }

    #[test]
    fn the_audience_asked_for_must_be_granted() {
        let me = "system:serviceaccount:shop:frontend";
        let ours = ["presage".to_string()];
        assert_eq!(verdict(review(true, me), &ours, "shop", "frontend"), Ok(()));
        let api_server_token = TokenReview {
            status: Some(TokenReviewStatus {
                audiences: Some(vec!["https://kubernetes.default.svc".into()]),
                ..review(true, me).status.unwrap()
            }),
            ..Default::default()
        };
        assert!(matches!(
            verdict(api_server_token, &ours, "shop", "frontend"),
            Err(Refused::Denied(m)) if m.starts_with("the token is not for this control plane")
        ));
    }

    #[tokio::test]
    async fn none_signs_and_kubernetes_needs_a_token() {
        let none = Attestor::new(AttestConfig::None);
        assert_eq!(none.check(None, "shop", "admin").await, Ok(()));
        let kube = Attestor::new(AttestConfig::Kubernetes(KubernetesAttest::default()));
        assert!(matches!(
            kube.check(None, "shop", "admin").await,
            Err(Refused::Denied(m)) if m.starts_with("no service-account token")
        ));
    }
}
