//! Hot reload: on a change of the config file (or SIGHUP), read, parse, validate and build
//! the new config, then swap it in atomically. A config that fails any step is rejected,
//! logged and counted, and the old one keeps serving.
//!
//! Listener and admin addresses are bound at start; a reload that changes them applies
//! everything else and warns that the addresses need a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::config::{self, ConfigErrors};
use crate::metrics::ResultLabels;
use crate::runtime::Runtime;
use crate::state::Shared;

/// Editors write a file in several steps; wait this long after the first event for the
/// rest before reading (events arriving meanwhile are coalesced, none are lost).
const SETTLE: Duration = Duration::from_millis(25);

/// Reloads from `path` now. Returns the live generation afterwards.
pub fn reload(shared: &Shared, path: &Path) -> Result<u64, ConfigErrors> {
    // Held across the build so a control-plane update cannot interleave with this one.
    let dynamic = shared.dynamic.lock().expect("dynamic lock poisoned");
    let result = config::load_with(path, &dynamic).map(|next| {
        let prev = shared.live.load();
        if next.text == prev.config.text {
            return prev.generation;
        }
        let bound = |ls: &[crate::config::Listener]| ls.iter().map(|l| (l.name.clone(), l.address)).collect::<Vec<_>>();
        if bound(&prev.config.listeners) != bound(&next.listeners)
            || prev.config.admin != next.admin
            || prev.config.workers != next.workers
            || (next.control_plane.is_some() && prev.config.control_plane != next.control_plane)
        {
            tracing::warn!("listener, admin, worker and control-plane changes take effect at the next restart; the rest is applied now");
        }
        let runtime = Runtime::build(next, Some(&prev), &shared.metrics);
        let generation = runtime.generation;
        shared.live.store(Arc::new(runtime));
        shared.metrics.generation.set(generation as i64);
        generation
    });
    drop(dynamic);
    let label = ResultLabels {
        result: if result.is_ok() { "success" } else { "failure" },
    };
    shared.metrics.reloads.get_or_create(&label).inc();
    let mut status = shared.reload.lock().expect("reload status lock poisoned");
    match &result {
        Ok(g) => {
            status.generation = *g;
            status.last_error = None;
            tracing::info!(generation = g, path = %path.display(), "config reloaded");
        }
        Err(errors) => {
            status.failures += 1;
            status.last_error = Some(errors.to_string());
            tracing::error!(%errors, "config rejected; the previous config keeps serving");
        }
    }
    result
}

/// Reloads on every change to `path` and on SIGHUP, until the process ends. The returned
/// watcher must be kept alive.
pub fn watch(shared: Arc<Shared>, path: PathBuf) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let name = path.file_name().map(|n| n.to_owned());
    let fs_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev.kind.is_access() {
                return;
            }
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_owned()) == name)
            {
                let _ = fs_tx.send(());
            }
        }
    })?;
    // Watch the directory: editors and `mv` replace the file, which a file watch would lose.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher.watch(dir, RecursiveMode::NonRecursive)?;

    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let _ = tx.send(());
        }
    });
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            // Reading and building touch the file system; keep that off the event loop.
            let (s, p) = (shared.clone(), path.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&s, &p)).await;
        }
    });
    Ok(watcher)
}
