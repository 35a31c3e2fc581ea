//! Runs a proxy: bind, serve, reload, and drain on SIGTERM/SIGINT.
//!
//! Prints one line per bound socket (`presage: listener NAME on ADDR`, `presage: admin on
//! ADDR`) and then `presage: ready` on stdout, so scripts and tests can use port 0.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::state::Shared;
use crate::{admin, identity, listen, reload, telemetry, xds};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {name} on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot handle SIGHUP: {0}")]
    Signal(#[from] std::io::Error),
}

/// Serves `config` until SIGTERM or SIGINT, then drains. `path` enables hot reload.
pub async fn run(config: Config, path: Option<PathBuf>) -> Result<(), ServeError> {
    let bind = |name: String, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { name, addr, source })
    };
    let mut listeners = Vec::new();
    for l in &config.listeners {
        listeners.push((
            l.name.clone(),
            bind(format!("listener {}", l.name), l.address).await?,
        ));
    }
    let admin = match config.admin {
        Some(a) => Some(bind("admin".into(), a).await?),
        None => None,
    };
    let drain = config.drain_timeout;
    let control_plane = config.control_plane.clone();
    let shared = Shared::new(config);
    let _watcher = match path {
        Some(p) => Some(reload::watch(shared.clone(), p)?),
        None => {
            reload::ignore_hangup()?;
            None
        }
    };
    if let Some(spec) = &control_plane {
        if let Some(id) = spec.identity.clone() {
            tokio::spawn(identity::run(spec.clone(), id, shared.metrics.clone()));
        }
    }
    if let (Some(spec), Some(t)) = (control_plane, shared.telemetry.clone()) {
        tokio::spawn(xds::run(shared.clone(), spec, t.node.clone()));
        let live = shared.live.clone();
        let ejected = move || {
            let rt = live.load();
            let now = crate::outlier::now_ms();
            let mut out = Vec::new();
            for (name, c) in &rt.clusters {
                for ep in c.endpoints.iter().filter(|e| e.outlier.is_ejected(now)) {
                    out.push(presage_api::EjectedEndpoint {
                        service: name.clone(),
                        address: ep.spec.authority.to_string(),
                    });
                }
            }
            out
        };
        tokio::spawn(telemetry::collect_loop(
            t.clone(),
            shared.metrics.clone(),
            ejected,
        ));
        tokio::spawn(telemetry::send_loop(t));
    }

    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut out = std::io::stdout().lock();
    let mut loops = Vec::new();
    for (name, tcp) in listeners {
        let _ = writeln!(
            out,
            "presage: listener {name} on {}",
            tcp.local_addr().map_or("?".into(), |a| a.to_string())
        );
        let g = graceful.clone();
        loops.push(tokio::spawn(listen::accept_loop(
            shared.clone(),
            name,
            tcp,
            move || g.watcher(),
            stop_rx.clone(),
        )));
    }
    if let Some(tcp) = admin {
        let _ = writeln!(
            out,
            "presage: admin on {}",
            tcp.local_addr().map_or("?".into(), |a| a.to_string())
        );
        tokio::spawn(admin::serve(shared.clone(), tcp));
    }
    let _ = writeln!(out, "presage: ready");
    let _ = out.flush();
    drop(out);

    shutdown_signal().await;
    tracing::info!(
        ?drain,
        "shutting down: no new connections, draining in-flight requests"
    );
    shared.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    // Accept loops are gone, so this is the last reference.
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            ?drain,
            "drain deadline passed; closing remaining connections"
        ),
    }
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; never return early.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
