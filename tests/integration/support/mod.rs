//! Test fixtures over real sockets: in-process upstream servers (hyper, HTTP/1.1 + HTTP/2,
//! optional TLS), the `presage` binary as a real child process, and clients.
//!
//! Every socket binds 127.0.0.1:0; the proxy reports its ports on stdout. Waiting is done
//! on events (a line on stdout, a counter in /metrics or /config/status), never on sleeps.

#![allow(dead_code)]

pub mod control_plane;
pub mod etcd;
pub mod nats;
pub mod replay;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::AbortHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_presage");

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A loopback port nothing listens on, for a server the test starts itself. Taken
/// from 20000-29999, under the kernel's ephemeral range (32768-60999), so that no
/// other test's `bind(0)` or outgoing connection can take it before the server binds
/// it (the readiness wait would then find the wrong server, or the server fail).
pub fn unused_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20000 + (h.finish() % 10000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

// === temp dirs ===

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "presage-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            subsec_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

fn subsec_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === upstream ===

type UpBody = BoxBody<Bytes, hyper::Error>;

/// An upstream server. Paths with behaviour:
/// - `/slow?ms=N` answers after N ms; `/status/NNN` answers with that status;
/// - `/fail-at/NAME` answers 500 from the upstream named NAME (others answer as usual);
/// - `/slow-at/NAME/MS` answers after MS ms from the upstream named NAME (others at once);
/// - `application/grpc` requests are echoed with gRPC trailers (`grpc-status: 0`);
/// - `/echo-stream` echoes the request body frame by frame as it arrives;
/// - an `Upgrade` request is switched (101) and then echoes raw bytes;
/// - anything else answers JSON: service, method, path, headers, body.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Upstream {
    pub async fn spawn(name: &str) -> Upstream {
        Self::start(name, None).await
    }

    pub async fn spawn_tls(name: &str) -> Upstream {
        let cert = std::fs::read(fixture("tls/server.pem")).unwrap();
        let key = std::fs::read(fixture("tls/server.key")).unwrap();
        let cfg = presage_proxy::tls::server_config(&cert, &key).unwrap();
        Self::start(name, Some(cfg)).await
    }

    async fn start(name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (n, h, t) = (name.to_string(), hits.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (n, h, tls) = (n.clone(), h.clone(), tls.clone());
                let conn = tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| handle(n.clone(), h.clone(), req));
                    let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(cfg) => {
                            let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await
                            else {
                                return;
                            };
                            let _ = b.serve_connection_with_upgrades(TokioIo::new(s), svc).await;
                        }
                        None => {
                            let _ = b
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Upstream {
            addr,
            name: name.to_string(),
            hits,
            tasks,
        }
    }

    /// Stops accepting and drops every connection, like a killed process.
    pub fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn handle(
    name: String,
    hits: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut res = Response::new(full(""));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut().insert("upgrade", "echo".parse().unwrap());
        res.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return Ok(res);
    }
    if path == "/echo-stream" {
        // Each frame of the request body back as it arrives, the stream open until the
        // client ends its side.
        return Ok(Response::new(req.into_body().boxed()));
    }
    if let Some(ms) = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some((at, ms)) = path
        .strip_prefix("/slow-at/")
        .and_then(|r| r.split_once('/'))
    {
        if at == name {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
    }
    if path.strip_prefix("/fail-at/") == Some(name.as_str()) {
        let mut res = Response::new(full(format!("{name} fails\n")));
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(res);
    }
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        let mut res = Response::new(full(format!("{name} says {code}\n")));
        *res.status_mut() = StatusCode::from_u16(code).unwrap();
        return Ok(res);
    }
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let method = req.method().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let mut res = Response::new(full("bad body"));
            *res.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(res);
        }
    };
    if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", format!("echo-from-{name}").parse().unwrap());
        let frames = vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
        let stream = futures_util::stream::iter(frames);
        let mut res = Response::new(http_body_util::StreamBody::new(stream).boxed());
        res.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        return Ok(res);
    }
    let json = serde_json::json!({
        "service": name, "method": method, "path": pq, "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Ok(Response::new(full(json.to_string())))
}

// === the proxy, as a real process ===

pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub listeners: BTreeMap<String, SocketAddr>,
    /// Lines the proxy printed on stdout after it became ready (access logs).
    pub stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Proxy {
    /// Starts `presage proxy --config` on `yaml`; listeners and admin should use port 0.
    pub async fn start(yaml: &str) -> Proxy {
        let dir = TempDir::new();
        let path = dir.0.join("presage.yaml");
        std::fs::write(&path, yaml).unwrap();
        Self::spawn(
            vec![
                "proxy".into(),
                "--config".into(),
                path.display().to_string(),
            ],
            dir,
        )
        .await
    }

    pub async fn spawn(args: Vec<String>, dir: TempDir) -> Proxy {
        let mut child = Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut listeners = BTreeMap::new();
        let mut admin = None;
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line == "presage: ready" {
                    return true;
                }
                if let Some(rest) = line.strip_prefix("presage: listener ") {
                    let (name, addr) = rest.split_once(" on ").unwrap();
                    listeners.insert(name.to_string(), addr.parse().unwrap());
                } else if let Some(a) = line.strip_prefix("presage: admin on ") {
                    admin = Some(a.parse().unwrap());
                }
            }
            false
        })
        .await;
        assert_eq!(
            ready,
            Ok(true),
            "proxy did not become ready (args {args:?})"
        );
        // Keep draining stdout (access logs) so the child never blocks on a full pipe.
        let (tx, stdout) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        let addr = *listeners.values().next().expect("at least one listener");
        Proxy {
            stdout,
            child,
            addr,
            admin: admin.unwrap_or(addr),
            dir,
            listeners,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("presage.yaml")
    }

    /// Replaces the config file atomically (write, then rename), as deploy tools do.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.0.join(".presage.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let res = h1_client()
            .get(format!("http://{}{path}", self.admin).parse().unwrap())
            .await
            .unwrap();
        let status = res.status();
        (
            status,
            String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
                .unwrap(),
        )
    }

    pub async fn reload_status(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/config/status").await.1).unwrap()
    }

    /// Awaits a reload status that satisfies `cond` (polls the admin endpoint, 10 s cap).
    pub async fn wait_reload(
        &self,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(Duration::from_secs(10), || async {
            let s = self.reload_status().await;
            cond(&s).then_some(s)
        })
        .await
        .expect("reload status never reached the expected state")
    }

    /// Sum of every sample of `name` whose labels contain all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.admin_get("/metrics").await.1;
        metric_sum(&text, name, labels)
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid} failed");
    }
}

pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` every 20 ms until it returns `Some`, or gives up after `limit`.
pub async fn wait_until<T, F, Fut>(limit: Duration, f: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === clients ===

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub version: http::Version,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

pub async fn get(client: &TestClient, url: &str) -> Answer {
    send(client, Request::get(url).body(Full::default()).unwrap()).await
}

/// Runs curl (a real HTTP client) and returns its stdout.
pub async fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A proxy config with one listener on port 0, an admin port, and the given routes/clusters.
pub fn config(body: &str) -> String {
    format!("listeners:\n  - name: main\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n{body}")
}

/// One route to one cluster of `endpoints`.
pub fn one_cluster(endpoints: &[SocketAddr], extra_cluster: &str) -> String {
    let eps: String = endpoints
        .iter()
        .map(|a| format!("      - address: \"{a}\"\n"))
        .collect();
    config(&format!("routes:\n  - name: all\n    cluster: up\nclusters:\n  - name: up\n{extra_cluster}    endpoints:\n{eps}"))
}
