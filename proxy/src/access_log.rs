//! The JSON access log's writer. Lines are formatted on the request path and handed to a
//! dedicated thread, so a slow or blocked stdout never stalls a request. If the writer
//! falls more than `CAPACITY` lines behind, new lines are dropped and counted
//! (`presage_access_log_dropped_total`) rather than queued without bound.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

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
