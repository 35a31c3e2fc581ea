//! The sidecar's workload identity and mutual TLS between sidecars.
//!
//! With `control_plane.identity` set, the proxy generates a key pair, sends a CSR to the
//! control plane's CA (`Identity.Sign`, on the control-plane connection) and gets a
//! short-lived certificate whose only name is its SPIFFE ID; it asks again at half the
//! lifetime, so a certificate is replaced long before it expires. The private key never
//! leaves the process.
//!
//! ```text
//! app ─plain─▶ outbound sidecar ══ mTLS (SNI MESH_SNI) ══▶ inbound sidecar ─plain─▶ app
//!              presents its cert,                           presents its cert,
//!              checks theirs: mesh CA                       checks theirs: mesh CA,
//!              and a SPIFFE ID                              peer ID → authorization,
//!                                                           x-forwarded-client-cert
//! ```
//! The rustls configs are built once: the certificate and the trust bundle are read
//! through `ArcSwap`s at each handshake, so a renewal applies to new connections while
//! open ones (and pooled ones) carry on. Connections are marked as mesh traffic by their
//! SNI, so an inbound listener can tell them from TLS the application serves itself.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};

use crate::config::{ControlPlaneSpec, IdentitySpec};
use crate::metrics::Metrics;

/// The SNI of mesh connections: how an inbound listener tells a sidecar's mutual TLS
/// from TLS that the application terminates itself (passed through untouched).
pub const MESH_SNI: &str = "mesh.presage.internal";
/// First retry delay after a failed renewal; doubles up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// The current certificate and trust bundle (empty until the first certificate).
#[derive(Default)]
struct State {
    cert: ArcSwapOption<CertifiedKey>,
    trust: ArcSwapOption<Trust>,
    /// This workload's SPIFFE ID.
    id: ArcSwapOption<String>,
}

struct Trust {
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
    /// `spiffe://<trust domain>/`: peers must carry an ID under it.
    prefix: String,
}

/// One identity per process: the configs built from it live as long as the process.
fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(State::default)
}

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// This workload's SPIFFE ID, once it has a certificate.
pub fn own_id() -> Option<Arc<String>> {
    state().id.load_full()
}

/// The client side of mesh connections (a cluster with mesh TLS).
pub fn client_config() -> Arc<rustls::ClientConfig> {
    static CFG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("aws-lc-rs supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier))
            .with_client_cert_resolver(Arc::new(Resolver));
        Arc::new(cfg)
    })
    .clone()
}

/// The server side: an inbound listener's mesh connections. Client certificates required.
pub fn server_config() -> Arc<rustls::ServerConfig> {
    static CFG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("aws-lc-rs supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(PeerVerifier))
            .with_cert_resolver(Arc::new(Resolver));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    })
    .clone()
}

/// The SPIFFE ID in a certificate's URI names, if any.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some(u.to_string())
        }
        _ => None,
    })
}

/// The verified peer's SPIFFE ID on an accepted mesh connection.
pub fn peer_id(conn: &rustls::ServerConnection) -> Option<Arc<str>> {
    let cert = conn.peer_certificates()?.first()?;
    spiffe_id(cert).map(Arc::from)
}

/// Whether a TLS ClientHello (read by `peek`, nothing consumed) asks for the mesh.
pub fn is_mesh_hello(peeked: &[u8]) -> Option<bool> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = peeked;
    acceptor.read_tls(&mut rd).ok()?;
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(accepted.client_hello().server_name() == Some(MESH_SNI)),
        // More bytes needed.
        Ok(None) => None,
        Err(_) => Some(false),
    }
}

/// Presents the current certificate, on both sides of a connection.
#[derive(Debug)]
struct Resolver;

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        state().cert.load_full()
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        state().cert.load_full()
    }

    fn has_certs(&self) -> bool {
        state().cert.load().is_some()
    }
}

/// Checks a peer's certificate against the current trust bundle, and that it names a
/// SPIFFE ID of the trust domain (which peer exactly is for authorization to decide).
/// Server names are not checked: mesh endpoints are addressed by IP.
#[derive(Debug)]
struct PeerVerifier;

fn trust() -> Result<Arc<Trust>, Error> {
    state()
        .trust
        .load_full()
        .ok_or_else(|| Error::General("no mesh trust bundle yet".into()))
}

fn check_id(trust: &Trust, cert: &CertificateDer<'_>) -> Result<(), Error> {
    match spiffe_id(cert) {
        Some(id) if id.starts_with(&trust.prefix) => Ok(()),
        _ => Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        )),
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let trust = trust()?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &trust.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        check_id(&trust, end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let trust = trust()?;
        trust
            .clients
            .verify_client_cert(end_entity, intermediates, now)?;
        check_id(&trust, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}

#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("{0}")]
    Connect(#[from] crate::control_plane::ClientError),
    #[error("the control plane refused: {0}")]
    Status(#[from] tonic::Status),
    #[error("key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the certificate it sent: {0}")]
    Response(String),
}

/// Gets a certificate now and then again at half of each one's lifetime, forever.
pub async fn run(spec: ControlPlaneSpec, identity: IdentitySpec, metrics: Arc<Metrics>) {
    let mut retry = FIRST_RETRY;
    loop {
        match renew(&spec, &identity).await {
            Ok((id, not_after)) => {
                retry = FIRST_RETRY;
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                metrics.identity_renewed(true, not_after);
                {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(
                        out,
                        "presage: identity {id} (certificate valid for {}s)",
                        left.as_secs()
                    );
                    let _ = out.flush();
                }
                tokio::time::sleep(left / 2).await;
            }
            Err(e) => {
                metrics.identity_renewed(false, SystemTime::UNIX_EPOCH);
                tracing::warn!(error = %e, ?retry, "workload certificate renewal failed; retrying");
                tokio::time::sleep(retry.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

async fn renew(
    spec: &ControlPlaneSpec,
    identity: &IdentitySpec,
) -> Result<(String, SystemTime), RenewError> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let channel = crate::control_plane::connect(spec).await?;
    let mut client = presage_api::identity_client::IdentityClient::new(channel);
    let mut request = tonic::Request::new(presage_api::SignRequest {
        csr_pem: csr,
        namespace: identity.namespace.clone(),
        service_account: identity.service_account.clone(),
        node_id: spec.node_id.clone(),
    });
    // The proof that this is the service account named (`identity.attest`); none when
    // the pod has no token (off Kubernetes, or `automountServiceAccountToken: false`).
    if let Ok(token) = std::fs::read_to_string(&identity.token_file) {
        let value = format!("Bearer {}", token.trim());
        match value.parse() {
            Ok(v) => {
                request.metadata_mut().insert("authorization", v);
            }
            Err(_) => {
                tracing::warn!(file = %identity.token_file.display(), "the service-account token is not a valid header value; sent without it")
            }
        }
    }
    let res = client.sign(request).await?.into_inner();
    let bad = |e: &dyn std::fmt::Display| RenewError::Response(e.to_string());
    let chain = CertificateDer::pem_slice_iter(res.certificate_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(res.trust_bundle_pem.as_bytes()) {
        roots.add(ca.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    let roots = Arc::new(roots);
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| bad(&e))?;
    let prefix = match res.identity.strip_prefix("spiffe://") {
        Some(rest) => format!("spiffe://{}/", rest.split('/').next().unwrap_or_default()),
        None => return Err(bad(&format!("not a SPIFFE ID: {:?}", res.identity))),
    };
    let s = state();
    s.trust.store(Some(Arc::new(Trust {
        roots,
        clients,
        prefix,
    })));
    s.cert.store(Some(Arc::new(certified)));
    s.id.store(Some(Arc::new(res.identity.clone())));
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(res.not_after_unix_ms).unwrap_or(0));
    Ok((res.identity, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_hello_is_told_by_its_sni() {
        // A real ClientHello, from a rustls client connection's first bytes.
        let hello = |name: &str| {
            let cfg = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth();
            let mut c = rustls::ClientConnection::new(
                Arc::new(cfg),
                ServerName::try_from(name.to_string()).unwrap(),
            )
            .unwrap();
            let mut out = Vec::new();
            c.write_tls(&mut out).unwrap();
            out
        };
        let mesh = hello(MESH_SNI);
        assert_eq!(is_mesh_hello(&mesh), Some(true));
        assert_eq!(is_mesh_hello(&hello("shop.example.com")), Some(false));
        assert_eq!(is_mesh_hello(&mesh[..20]), None, "a partial hello: wait");
        assert_eq!(is_mesh_hello(b"GET / HTTP/1.1\r\n"), Some(false));
    }
}
