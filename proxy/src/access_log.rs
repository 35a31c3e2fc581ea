//! The JSON access log: each request's line (`Entry`) and the writer. Lines are formatted on the request path and handed to a
//! dedicated thread, so a slow or blocked stdout never stalls a request. If the writer
//! falls more than `CAPACITY` lines behind, new lines are dropped and counted
//! (`presage_access_log_dropped_total`) rather than queued without bound. The thread and
//! its buffer start with the first line: a proxy that never logs has neither.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderValue, Method, Request, StatusCode, Version};
use hyper::body::Incoming;

use prometheus_client::metrics::counter::Counter;

/// Lines buffered between the request path and the writer (about 2-4 MiB of JSON).
const CAPACITY: usize = 8192;

#[derive(Debug)]
pub struct AccessLog {
    /// The writer's queue once the first line started it; `None` if its thread could not
    /// be started (every line is then dropped and counted).
    tx: OnceLock<Option<SyncSender<String>>>,
    dropped: Counter,
}

impl AccessLog {
    pub fn new(dropped: Counter) -> Self {
        AccessLog {
            tx: OnceLock::new(),
            dropped,
        }
    }

    /// Starts the writer thread; it ends when the `AccessLog` is dropped. The queue's
    /// slots are allocated and initialised here (256 KiB), hence not before a line.
    fn start() -> std::io::Result<SyncSender<String>> {
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
        Ok(tx)
    }

    /// Queues one line; never blocks (but for starting the writer with the first).
    pub fn write(&self, line: String) {
        let tx = self.tx.get_or_init(|| {
            Self::start()
                .inspect_err(|error| {
                    tracing::error!(%error, "cannot start the access log's writer: lines are dropped")
                })
                .ok()
        });
        let sent = tx.as_ref().map(|tx| tx.try_send(line));
        if let None | Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) = sent {
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
