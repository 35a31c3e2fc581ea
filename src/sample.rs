//! A small sample service for demos and tests: answers every request with JSON naming
//! itself, the method, the path and the body it received. `/healthz` answers `ok`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Args, Clone)]
pub struct SampleArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Service name reported in responses.
    #[arg(long, default_value = "sample")]
    name: String,
    /// Added delay per request in milliseconds (to simulate work).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

pub fn run(args: SampleArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let tcp = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot bind {}: {e}", args.listen);
                return ExitCode::from(69);
            }
        };
        let addr = tcp.local_addr().map_or(args.listen, |a| a);
        println!("sample-service {} on {addr}", args.name);
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (name, delay) = (args.name.clone(), args.delay_ms);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| answer(name.clone(), addr, delay, req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

async fn answer(
    name: String,
    addr: SocketAddr,
    delay_ms: u64,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req.into_body().collect().await?.to_bytes();
    let json = serde_json::json!({
        "service": name,
        "instance": addr.to_string(),
        "method": method,
        "path": path,
        "request_id": request_id,
        "body": String::from_utf8_lossy(&body),
    });
    let mut res = Response::new(Full::new(Bytes::from(json.to_string() + "\n")));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}
