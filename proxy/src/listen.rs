//! Downstream listeners: accept TCP, optionally terminate TLS, and serve HTTP/1.1 and
//! HTTP/2 (h2c prior knowledge, or ALPN over TLS) on the same port with hyper-util's
//! auto builder. Every connection is watched for graceful shutdown.
//!
//! The TLS config is read from the live runtime at each accept, so a reload with new
//! certificates applies to new connections while old ones finish on the old certificate.
//! A transparent listener's connections carry their original destination, and those
//! that are not HTTP are passed through as TCP (see `transparent`). An HTTP/2
//! connection's writes are coalesced (see `coalesce`).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::Watcher;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::coalesce::Coalesce;
use crate::config::Limits;
use crate::downstream::Conn;
use crate::state::Shared;
use crate::transparent::Sniffed;

/// Decrements the active-connection gauge however the connection ends.
struct ConnGuard(Arc<Shared>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.metrics.active_connections.dec();
    }
}

/// TCP keep-alive on downstream connections: first probe after a minute of silence,
/// then every 10 s (the kernel gives up after its default 9 unanswered probes).
const DOWNSTREAM_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10));

/// Accepts until `stop` fires. `watcher` is called per connection to register it for drain.
pub async fn accept_loop(
    shared: Arc<Shared>,
    name: String,
    tcp: TcpListener,
    watcher: impl Fn() -> Watcher,
    mut stop: watch::Receiver<bool>,
) {
    let listener: Arc<str> = Arc::from(name.as_str());
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, listener = %name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // A client that vanishes without a FIN (a dead host, a dropped route) is found
        // within minutes: an upgraded tunnel or a long body would otherwise hold its
        // socket and upstream connection for good.
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&DOWNSTREAM_KEEPALIVE);
        let (tls, transparent, inbound, trusted) = shared
            .live
            .load()
            .config
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map_or((None, false, false, false), |l| {
                let local = stream.local_addr().map_or(peer.ip(), |a| a.ip());
                let trusted = l.qos_headers.trusts(peer.ip(), local);
                (l.tls.clone(), l.transparent, l.inbound, trusted)
            });
        let original_dst = if transparent {
            crate::transparent::original_dst(&stream)
        } else {
            None
        };
        tokio::spawn(serve(
            shared.clone(),
            stream,
            Conn {
                peer,
                forwarded_for: crate::headers::forwarded_for(peer.ip()),
                tls: tls.is_some(),
                original_dst,
                inbound,
                peer_id: None,
                listener: listener.clone(),
                trusted,
            },
            tls,
            watcher(),
        ));
    }
}

fn builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(30));
    b
}

async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    mut conn: Conn,
    tls: Option<Arc<rustls::ServerConfig>>,
    watcher: Watcher,
) {
    shared.metrics.connections.inc();
    shared.metrics.active_connections.inc();
    let _guard = ConnGuard(shared.clone());
    let mut tls = tls;
    if let Some(dst) = conn.original_dst {
        let mesh = conn.inbound
            && shared
                .live
                .load()
                .config
                .control_plane
                .as_ref()
                .is_some_and(|c| c.identity.is_some());
        match crate::transparent::sniff(&stream, mesh).await {
            Sniffed::Http => {}
            Sniffed::Mesh => tls = Some(crate::identity::server_config()),
            Sniffed::Other => {
                // Raw TCP would carry a request past the listener's authorization rules
                // (they are checked per HTTP request): where rules guard the port, what
                // is not HTTP or mesh TLS is refused.
                let guarded = shared
                    .live
                    .load()
                    .config
                    .listeners
                    .iter()
                    .any(|l| *l.name == *conn.listener && !l.authorization.is_empty());
                if guarded {
                    shared.metrics.authz_denied.inc();
                    tracing::debug!(listener = %conn.listener, %dst, "unrecognised traffic refused: the listener has authorization rules");
                    return;
                }
                crate::transparent::tcp(&shared, stream, dst).await;
                return;
            }
        }
    }
    let limits = shared.live.load().config.limits;
    let b = builder(&limits);
    let service = |conn: Conn| {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            // Boxed: hyper moves a request's future (an h2 stream's into the task it
            // spawns), and that future holds every await point of the request path.
            Box::pin(crate::workflow::handle(shared.clone(), conn.clone(), req))
        })
    };
    let peer = conn.peer;
    let result = match tls {
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            // The handshake is bounded like a request head: a slow client must not hold a slot.
            let stream =
                match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            if conn.original_dst.is_some() {
                // Only mesh TLS is terminated on a transparent listener: a verified peer.
                conn.peer_id = crate::identity::peer_id(stream.get_ref().1);
                shared.metrics.mtls_connections.inc();
            }
            watcher
                .watch(
                    b.serve_connection_with_upgrades(
                        TokioIo::new(Coalesce::new(stream)),
                        service(conn),
                    )
                    .into_owned(),
                )
                .await
        }
        None => {
            // Nothing bounds the wait for a connection's first bytes (the protocol is
            // chosen from them; `header_read_timeout` starts once it is HTTP/1.1): a
            // client that connects and says nothing is let go after that timeout too.
            let mut first = [0u8; 1];
            if tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first))
                .await
                .is_err()
            {
                tracing::debug!(%peer, "closed: nothing sent within the header read timeout");
                return;
            }
            watcher
                .watch(
                    b.serve_connection_with_upgrades(
                        TokioIo::new(Coalesce::new(stream)),
                        service(conn),
                    )
                    .into_owned(),
                )
                .await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}
