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
    /// At most this many requests served at once (0: no limit); the others queue, so an
    /// instance has a capacity of concurrency x 1000 / delay_ms requests per second and
    /// answers slowly beyond it, as a real one does.
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Wait this long before listening (a start-up such as loading a model: what the
    /// autoscaler's cold start measures).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    startup_delay: Duration,
    /// Register in etcd (comma-separated host:port of members) under
    /// /presage/services/NAME/INSTANCE with a lease; deregister on SIGTERM/SIGINT.
    #[arg(long, value_delimiter = ',')]
    register_etcd: Vec<String>,
    /// Register with the Consul agent at this URL (e.g. http://127.0.0.1:8500) with a
    /// TTL check (token from CONSUL_HTTP_TOKEN); deregister on SIGTERM/SIGINT.
    #[arg(long, conflicts_with = "register_etcd")]
    register_consul: Option<String>,
    /// Time-to-live of the registration (etcd lease, Consul TTL check): how long the
    /// record outlives a crash.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    register_ttl: Duration,
    /// Instance id in the registry (default: the listen address with ':' as '-').
    #[arg(long)]
    instance: Option<String>,
    /// Zone, price and capacity to register (metadata the planner reads).
    #[arg(long, default_value = "")]
    zone: String,
    #[arg(long)]
    price: Option<f64>,
    #[arg(long)]
    capacity: Option<f64>,
}

pub fn run(args: SampleArgs) -> ExitCode {
    let rt = match crate::runtime(1) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        tokio::time::sleep(args.startup_delay).await;
        let tcp = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot bind {}: {e}", args.listen);
                return ExitCode::from(69);
            }
        };
        let addr = tcp.local_addr().map_or(args.listen, |a| a);
        let registration = match register(&args, addr).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot register: {e}");
                return ExitCode::from(69);
            }
        };
        println!("sample-service {} on {addr}", args.name);
        let slots = (args.concurrency > 0)
            .then(|| std::sync::Arc::new(tokio::sync::Semaphore::new(args.concurrency)));
        let serve = async {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (name, delay) = (args.name.clone(), args.delay_ms);
                let slots = slots.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (name, slots) = (name.clone(), slots.clone());
                        async move {
                            // Queued until a slot is free: latency grows past capacity.
                            let _slot = match &slots {
                                Some(s) => s.clone().acquire_owned().await.ok(),
                                None => None,
                            };
                            answer(name, addr, delay, req).await
                        }
                    });
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
        match registration {
            Some(Registration::Etcd(r)) => {
                let key = r.key().to_string();
                if let Err(e) = r.deregister().await {
                    eprintln!("deregistering {key}: {e} (the lease expires on its own)");
                }
            }
            Some(Registration::Consul(r)) => {
                let id = r.service_id().to_string();
                if let Err(e) = r.deregister().await {
                    eprintln!("deregistering {id}: {e} (its TTL check goes critical on its own)");
                }
            }
            None => {}
        }
        ExitCode::SUCCESS
    })
}

enum Registration {
    Etcd(Box<presage_control_plane::discovery::etcd::Registration>),
    Consul(Box<presage_control_plane::discovery::consul::ConsulRegistration>),
}

/// Registers in the registry the flags name, if any.
async fn register(args: &SampleArgs, addr: SocketAddr) -> Result<Option<Registration>, String> {
    use presage_control_plane::discovery::{consul, etcd, record::Record};
    let id = args
        .instance
        .clone()
        .unwrap_or_else(|| addr.to_string().replace([':', '.'], "-"));
    let record = Record {
        address: addr.ip().to_string(),
        port: addr.port(),
        zone: args.zone.clone(),
        price: args.price,
        capacity: args.capacity,
        version: env!("CARGO_PKG_VERSION").into(),
        weight: None,
        labels: Default::default(),
        mesh: false,
    };
    if let Some(address) = &args.register_consul {
        let cfg = consul::ConsulConfig {
            address: address.clone(),
            token: std::env::var("CONSUL_HTTP_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            datacenter: None,
            services: Vec::new(),
            wait: None,
        };
        return consul::register(&cfg, &args.name, &id, &record, args.register_ttl)
            .await
            .map(|r| Some(Registration::Consul(Box::new(r))))
            .map_err(|e| format!("consul {address}: {e}"));
    }
    if args.register_etcd.is_empty() {
        return Ok(None);
    }
    let cfg = etcd::EtcdConfig {
        endpoints: args.register_etcd.clone(),
        prefix: etcd::DEFAULT_PREFIX.into(),
    };
    etcd::register(&cfg, &args.name, &id, &record, args.register_ttl)
        .await
        .map(|r| Some(Registration::Etcd(Box::new(r))))
        .map_err(|e| format!("etcd {:?}: {e}", args.register_etcd))
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
    // The caller's mesh identity, as an inbound sidecar verified it.
    let client_cert = req
        .headers()
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req.into_body().collect().await?.to_bytes();
    let json = serde_json::json!({
        "service": name,
        "instance": addr.to_string(),
        "method": method,
        "path": path,
        "request_id": request_id,
        "client_cert": client_cert,
        "body": String::from_utf8_lossy(&body),
    });
    let mut res = Response::new(Full::new(Bytes::from(json.to_string() + "\n")));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}
