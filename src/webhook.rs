//! `presage inject-webhook`: the mutating admission webhook server. HTTPS (rustls, the
//! certificate Kubernetes is told to trust in the MutatingWebhookConfiguration), HTTP/1.1
//! and HTTP/2; every POST is an AdmissionReview answered by
//! `presage_control_plane::webhook::review`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::Args;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use presage_control_plane::inject::Options;

/// Kubernetes caps objects at about 1.5 MB; a review carries one (twice for updates).
const MAX_BODY: usize = 4 << 20;

#[derive(Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on (port 0 picks one, printed on stdout).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain of the webhook's Service name.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    sidecar: crate::SidecarArgs,
}

pub fn run(a: WebhookArgs) -> ExitCode {
    let tls = match (std::fs::read(&a.cert), std::fs::read(&a.key)) {
        (Ok(c), Ok(k)) => match presage_proxy::tls::server_config(&c, &k) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: {e}", a.cert.display());
                return ExitCode::from(crate::EX_USAGE);
            }
        },
        (Err(e), _) => {
            eprintln!("{}: {e}", a.cert.display());
            return ExitCode::from(crate::EX_USAGE);
        }
        (_, Err(e)) => {
            eprintln!("{}: {e}", a.key.display());
            return ExitCode::from(crate::EX_USAGE);
        }
    };
    let opts = Arc::new(a.sidecar.options());
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    rt.block_on(async move {
        let tcp = match tokio::net::TcpListener::bind(a.listen).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot bind {}: {e}", a.listen);
                return ExitCode::from(crate::EX_UNAVAILABLE);
            }
        };
        let addr = tcp.local_addr().map_or(a.listen, |x| x);
        println!("presage: webhook on {addr}");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let serve = async {
            loop {
                let Ok((stream, peer)) = tcp.accept().await else {
                    continue;
                };
                let (acceptor, opts) = (acceptor.clone(), opts.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        tracing::debug!(%peer, "TLS handshake failed");
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| handle(req, opts.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        };
        tokio::select! {
            _ = serve => {}
            _ = presage_proxy::server::shutdown_signal() => {}
        }
        ExitCode::SUCCESS
    })
}

async fn handle(
    req: Request<Incoming>,
    opts: Arc<Options>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let answer = |status: StatusCode, body: serde_json::Value| {
        let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
        *res.status_mut() = status;
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(res)
    };
    if req.method() != Method::POST {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"message": "POST an AdmissionReview"}),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"message": format!("body: {e}")}),
            )
        }
    };
    match presage_control_plane::webhook::review(&body, &opts) {
        Ok(review) => answer(StatusCode::OK, review),
        Err(message) => {
            tracing::warn!(%message, "bad admission review");
            answer(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"message": message}),
            )
        }
    }
}
