//! Hot reload: on a change of the config file (or SIGHUP), read, parse, validate and build
//! the new config, then swap it in atomically. A config that fails any step is rejected,
//! logged and counted, and the old one keeps serving.
//!
//! Listeners are bound at start and each connection finds its TLS and authorization by
//! its listener's name: a reload that renames, adds or removes one, or moves it, is
//! rejected (a renamed listener's port would otherwise serve without them). Admin,
//! worker and control-plane changes wait for a restart; the rest is applied.
//!
//! A change of the file's text triggers a rebuild; SIGHUP always rebuilds, so that
//! rotated TLS certificates are read again. The directory is watched, not the file:
//! editors and `mv` replace the file, and Kubernetes swaps a ConfigMap's `..data`
//! symlink without touching the file's own name.

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

/// Reloads from `path` now; with `force`, rebuilds even if the text is unchanged (its
/// certificate files may not be). Returns the live generation afterwards.
pub fn reload(shared: &Shared, path: &Path, force: bool) -> Result<u64, ConfigErrors> {
    // Held across the build so a control-plane update cannot interleave with this one.
    let dynamic = shared.dynamic.lock().expect("dynamic lock poisoned");
    let result = config::load_with(path, &dynamic).and_then(|next| {
        let prev = shared.live.load();
        if next.text == prev.config.text && !force {
            return Ok(prev.generation);
        }
        let bound = |ls: &[crate::config::Listener]| {
            ls.iter()
                .map(|l| format!("{}@{}", l.name, l.address))
                .collect::<Vec<_>>()
        };
        let (was, now) = (bound(&prev.config.listeners), bound(&next.listeners));
        if was != now {
            return Err(ConfigErrors(vec![config::ConfigError {
                source_name: path.display().to_string(),
                line: 0,
                column: 0,
                field: "listeners".into(),
                message: format!(
                    "the bound listeners ({}) cannot change to {} without a restart",
                    was.join(", "),
                    now.join(", ")
                ),
            }]));
        }
        if prev.config.admin != next.admin
            || prev.config.workers != next.workers
            || (next.control_plane.is_some() && prev.config.control_plane != next.control_plane)
        {
            tracing::warn!("admin, worker and control-plane changes take effect at the next restart; the rest is applied now");
        }
        Ok(shared.install(Runtime::build(next, Some(&prev), &shared.metrics)))
    });
    drop(dynamic);
    let label = ResultLabels {
        result: if result.is_ok() { "success" } else { "failure" },
    };
    shared.metrics.reloads.get_or_create(&label).inc();
    let mut status = shared.reload.lock().expect("reload status lock poisoned");
    match &result {
        Ok(g) => {
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
    // `true`: forced (SIGHUP).
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    let name = path.file_name().map(|n| n.to_owned());
    let fs_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev.kind.is_access() {
                return;
            }
            // The file itself, or Kubernetes' atomic writer (`..data`, `..2026_...`).
            if ev.paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    Some(n) == name.as_deref() || n.as_encoded_bytes().starts_with(b"..")
                })
            }) {
                let _ = fs_tx.send(false);
            }
        }
    })?;
    // Watch the directory: editors and `mv` replace the file, which a file watch would lose.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher.watch(dir, RecursiveMode::NonRecursive)?;

    // Registered now, before `presage: ready`: SIGHUP's default action ends the process.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = tx.send(true);
        }
    });
    tokio::spawn(async move {
        while let Some(mut force) = rx.recv().await {
            tokio::time::sleep(SETTLE).await;
            while let Ok(f) = rx.try_recv() {
                force |= f;
            }
            // Reading and building touch the file system; keep that off the event loop.
            let (s, p) = (shared.clone(), path.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&s, &p, force)).await;
        }
    });
    Ok(watcher)
}

/// Without a config file (`presage proxy --listen --to`) there is nothing to reload:
/// SIGHUP is logged, not left to end the process.
pub fn ignore_hangup() -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: no config file to reload");
        }
    });
    Ok(())
}
