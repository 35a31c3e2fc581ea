//! The mesh certificate authority: it signs short-lived workload certificates whose only
//! name is a SPIFFE ID (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`),
//! which sidecars present to each other for mutual TLS (see `proxy/src/identity.rs`).
//!
//! The CA is taken from `identity.ca` in the config, or generated on first start and kept
//! in the store, so a restart does not invalidate the certificates proxies hold. Proxies
//! ask for a certificate over gRPC (`Identity.Sign`, on the same port as the discovery
//! stream) with a CSR: the private key never leaves the proxy.
//!
//! Trust: before signing, `attest` checks that the proxy runs as the service account it
//! names (`identity.attest: {kubernetes: {}}`: its token, by the API server's
//! TokenReview, as Istio's CA does). Without attestation (`none`, the default off
//! Kubernetes) the CA signs what it is asked for: keep the gRPC port reachable only from
//! the mesh's pods.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use presage_api::identity_server::Identity;
use presage_api::{SignRequest, SignResponse};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::store::Store;

/// The store's key for a generated CA.
const CA_KEY: &str = "identity-ca";
/// Certificates start this long before they are signed, for clocks slightly behind ours.
const BACKDATE: Duration = Duration::from_secs(60);
/// A generated CA's lifetime.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `identity:` in the control plane's YAML.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The SPIFFE trust domain; default `presage.local`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Lifetime of workload certificates; default 24h. Proxies renew at half of it.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub workload_ttl: Duration,
    /// A CA of your own (PEM files); default: one generated and kept in the store.
    pub ca: Option<CaFiles>,
    /// How a proxy proves the identity it asks for (default: it does not).
    #[serde(default)]
    pub attest: crate::attest::AttestConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            trust_domain: default_trust_domain(),
            workload_ttl: default_ttl(),
            ca: None,
            attest: Default::default(),
        }
    }
}

fn default_trust_domain() -> String {
    "presage.local".into()
}

fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

mod humantime_serde {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("expected a duration like 24h: {e}")))
    }
}

impl IdentityConfig {
    /// Problems with the section, as `(field, message)`.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if !is_trust_domain(&self.trust_domain) {
            errors.push((
                "trust_domain".into(),
                format!(
                    "expected a DNS-like name (lowercase letters, digits, '.', '-', '_'), found {:?}",
                    self.trust_domain
                ),
            ));
        }
        if self.workload_ttl < Duration::from_secs(2)
            || self.workload_ttl > Duration::from_secs(90 * 24 * 3600)
        {
            errors.push(("workload_ttl".into(), "expected 2s to 90d".into()));
        }
        if let crate::attest::AttestConfig::Kubernetes(k) = &self.attest {
            if let Some(p) = k.kubeconfig.as_ref().filter(|p| !p.is_file()) {
                errors.push((
                    "attest.kubernetes.kubeconfig".into(),
                    format!("no such file {}", p.display()),
                ));
            }
        }
        if let Some(ca) = &self.ca {
            for (f, p) in [("ca.cert", &ca.cert), ("ca.key", &ca.key)] {
                if !p.is_file() {
                    errors.push((f.into(), format!("no such file {}", p.display())));
                }
            }
        }
        errors
    }
}

fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

/// A path segment of a SPIFFE ID: a Kubernetes name (RFC 1123 label, up to 253 chars).
fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("identity.ca: cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("identity.ca: {0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// The signing half of the CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM: the trust bundle proxies get.
    pub cert_pem: String,
    pub trust_domain: String,
    pub ttl: Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A signed workload certificate.
#[derive(Debug)]
pub struct Signed {
    pub identity: String,
    pub cert_pem: String,
    pub not_after: SystemTime,
}

impl Ca {
    /// The configured CA, or the one in the store, or a new one (then saved in the store).
    pub fn load(cfg: &IdentityConfig, store: &Store) -> Result<Ca, CaError> {
        let (cert_pem, key_pem) = match &cfg.ca {
            Some(files) => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p).map_err(|e| CaError::Read(p.clone(), e))
                };
                (read(&files.cert)?, read(&files.key)?)
            }
            None => match store.secret(CA_KEY)? {
                Some(bytes) => serde_json::from_slice::<(String, String)>(&bytes)
                    .map_err(|e| CaError::Invalid(format!("the CA in the store: {e}")))?,
                None => {
                    let generated = generate(&cfg.trust_domain)?;
                    let bytes = serde_json::to_vec(&generated).expect("strings serialize");
                    store.put_secret(CA_KEY, &bytes)?;
                    tracing::info!(trust_domain = %cfg.trust_domain, "generated the mesh CA");
                    generated
                }
            },
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid(format!("key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| CaError::Invalid(format!("cert: {e}")))?;
        Ok(Ca {
            issuer,
            cert_pem,
            trust_domain: cfg.trust_domain.clone(),
            ttl: cfg.workload_ttl,
        })
    }

    /// The SPIFFE ID of a namespace's service account.
    pub fn identity(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        )
    }

    /// Signs the CSR's public key for `namespace`/`service_account`. Errors name the
    /// request field at fault.
    pub fn sign(&self, req: &SignRequest) -> Result<Signed, (String, String)> {
        for (field, v) in [
            ("namespace", &req.namespace),
            ("service_account", &req.service_account),
        ] {
            if !is_segment(v) {
                return Err((
                    field.into(),
                    format!("expected a Kubernetes name (lowercase letters, digits, '-', '.'), found {v:?}"),
                ));
            }
        }
        let csr = CertificateSigningRequestParams::from_pem(&req.csr_pem).map_err(|e| {
            (
                "csr_pem".to_string(),
                format!("not a valid signed CSR: {e}"),
            )
        })?;
        let identity = self.identity(&req.namespace, &req.service_account);
        let now = SystemTime::now();
        let not_after = now + self.ttl;
        // Only the CSR's key is taken: names, usages and lifetime are ours.
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            identity
                .clone()
                .try_into()
                .map_err(|e| ("identity".to_string(), format!("{e}")))?,
        )];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| ("csr_pem".to_string(), format!("cannot sign: {e}")))?;
        Ok(Signed {
            identity,
            cert_pem: cert.pem(),
            not_after,
        })
    }
}

/// A new self-signed CA for `trust_domain`: (cert PEM, key PEM).
fn generate(trust_domain: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Invalid(e.to_string()))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Presage");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Presage mesh CA {trust_domain}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_LIFETIME).into();
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Invalid(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The gRPC side: `presage.mesh.v1.Identity`.
#[derive(Debug, Clone)]
pub struct IdentityService {
    pub ca: std::sync::Arc<Ca>,
    pub attest: std::sync::Arc<crate::attest::Attestor>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        let req = request.into_inner();
        let attested = (self.attest)
            .check(token.as_deref(), &req.namespace, &req.service_account)
            .await;
        if let Err(refused) = attested {
            use crate::attest::Refused;
            let (status, why, result) = match refused {
                Refused::Denied(m) => (Status::permission_denied(m.clone()), m, "denied"),
                Refused::Unavailable(m) => (Status::unavailable(m.clone()), m, "unavailable"),
            };
            self.metrics.certificates_signed(result);
            tracing::warn!(node = %req.node_id, namespace = %req.namespace, service_account = %req.service_account, reason = %why, "certificate request refused");
            return Err(status);
        }
        let ca = self.ca.clone();
        // Signing is a few hundred microseconds of CPU: off the event loop.
        let (signed, req) = tokio::task::spawn_blocking(move || (ca.sign(&req), req))
            .await
            .map_err(|e| Status::internal(format!("signing panicked: {e}")))?;
        let result = if signed.is_ok() { "signed" } else { "rejected" };
        self.metrics.certificates_signed(result);
        let signed = signed.map_err(|(field, msg)| {
            tracing::warn!(node = %req.node_id, %field, %msg, "certificate request rejected");
            Status::invalid_argument(format!("{field}: {msg}"))
        })?;
        tracing::info!(node = %req.node_id, identity = %signed.identity, "signed a workload certificate");
        let not_after_unix_ms = signed
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(Response::new(SignResponse {
            certificate_chain_pem: signed.cert_pem,
            trust_bundle_pem: self.ca.cert_pem.clone(),
            identity: signed.identity,
            not_after_unix_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject as _;

    fn ca() -> Ca {
        let (cert_pem, key_pem) = generate("example.org").unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        Ca {
            issuer: Issuer::from_ca_cert_pem(&cert_pem, key).unwrap(),
            cert_pem,
            trust_domain: "example.org".into(),
            ttl: Duration::from_secs(3600),
        }
    }

    fn csr(sans: Vec<String>) -> String {
        let key = KeyPair::generate().unwrap();
        CertificateParams::new(sans)
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn a_signed_certificate_names_only_the_requested_identity() {
        let ca = ca();
        // Names in the CSR are ignored: the identity comes from the checked fields.
        let req = SignRequest {
            csr_pem: csr(vec!["admin.example.org".into()]),
            namespace: "shop".into(),
            service_account: "frontend".into(),
            node_id: "n".into(),
        };
        let signed = ca.sign(&req).unwrap();
        assert_eq!(signed.identity, "spiffe://example.org/ns/shop/sa/frontend");
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(signed.cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["URI(spiffe://example.org/ns/shop/sa/frontend)"]);
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 60, "ttl plus the backdating");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let ca = ca();
        let mut req = SignRequest {
            csr_pem: csr(vec![]),
            namespace: "Shop".into(),
            service_account: "frontend".into(),
            node_id: String::new(),
        };
        assert_eq!(ca.sign(&req).unwrap_err().0, "namespace");
        req.namespace = "shop".into();
        req.service_account = "a/b".into();
        assert_eq!(ca.sign(&req).unwrap_err().0, "service_account");
        req.service_account = "frontend".into();
        req.csr_pem =
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
        assert_eq!(ca.sign(&req).unwrap_err().0, "csr_pem");
    }

    #[test]
    fn a_generated_ca_is_kept_in_the_store_and_a_configured_one_is_used() {
        let dir = std::env::temp_dir().join(format!("presage-ca-{}", std::process::id()));
        let store = Store::open(&dir.join("s.redb")).unwrap();
        let cfg = IdentityConfig::default();
        let first = Ca::load(&cfg, &store).unwrap();
        let again = Ca::load(&cfg, &store).unwrap();
        assert_eq!(first.cert_pem, again.cert_pem, "a restart keeps the CA");
        let (cert, key) = generate("example.org").unwrap();
        std::fs::write(dir.join("ca.pem"), &cert).unwrap();
        std::fs::write(dir.join("ca.key"), &key).unwrap();
        let own = IdentityConfig {
            ca: Some(CaFiles {
                cert: dir.join("ca.pem"),
                key: dir.join("ca.key"),
            }),
            ..IdentityConfig::default()
        };
        assert!(own.check().is_empty());
        assert_eq!(Ca::load(&own, &store).unwrap().cert_pem, cert);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn config_errors_name_the_field() {
        let cfg = IdentityConfig {
            trust_domain: "Bad Domain".into(),
            workload_ttl: Duration::from_secs(1),
            ca: None,
            attest: crate::attest::AttestConfig::Kubernetes(crate::attest::KubernetesAttest {
                kubeconfig: Some("/nonexistent/kubeconfig".into()),
                ..Default::default()
            }),
        };
        let fields: Vec<String> = cfg.check().into_iter().map(|e| e.0).collect();
        assert_eq!(
            fields,
            [
                "trust_domain",
                "workload_ttl",
                "attest.kubernetes.kubeconfig"
            ]
        );
    }
}
