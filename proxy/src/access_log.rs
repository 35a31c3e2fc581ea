//! The JSON access log: each request's line (`Entry`) and the writer. Lines are formatted on the request path and handed to a
//! dedicated thread, so a slow or blocked stdout never stalls a request. If the writer
//! falls more than `CAPACITY` lines behind, new lines are dropped and counted
//! (`presage_access_log_dropped_total`) rather than queued without bound.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

use http::{HeaderValue, Method, Request, StatusCode, Version};
use hyper::body::Incoming;

use prometheus_client::metrics::counter::Counter;

/// Lines buffered between the request path and the writer (about 2-4 MiB of JSON).
const CAPACITY: usize = 8192;

#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer thread; it ends when the `AccessLog` is dropped.
    pub fn start(dropped: Counter) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<String>(CAPACITY);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    // Take stdout's lock per batch, never for good: other output shares it.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    while let Ok(line) = rx.try_recv() {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues one line; never blocks.
    pub fn write(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.inc();
        }
    }
}

/// What the access log records of a request, taken before it is forwarded.
pub struct Entry {
    method: Method,
    path: String,
    host: Option<String>,
    peer: SocketAddr,
    version: Version,
}

impl Entry {
    pub fn new(req: &Request<Incoming>, peer: SocketAddr) -> Self {
        Entry {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            host: crate::routing::request_host(req.uri(), req.headers()).map(|h| h.into_owned()),
            peer,
            version: req.version(),
        }
    }

    /// The JSON line for this request once answered.
    pub fn line(
        self,
        id: &HeaderValue,
        status: StatusCode,
        elapsed: Duration,
        route: Option<&str>,
        upstream: Option<http::uri::Authority>,
    ) -> String {
        serde_json::json!({
            "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "request_id": id.to_str().unwrap_or(""),
            "peer": self.peer.to_string(),
            "method": self.method.as_str(),
            "host": self.host,
            "path": self.path,
            "protocol": format!("{:?}", self.version),
            "status": status.as_u16(),
            "duration_ms": elapsed.as_secs_f64() * 1e3,
            "route": route,
            "upstream": upstream.map(|a| a.to_string()),
        })
        .to_string()
    }
}
