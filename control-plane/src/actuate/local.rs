//! The local-process actuator: instances are processes on this machine, started from a
//! command template, registered (as the `local` registry) once they answer, and stopped
//! with SIGTERM after being deregistered. Warm instances are registered with
//! `pool: warm` and `reserved_for: tier:<name>` or `user:<id>`, which the proxies'
//! interceptor reads.
//!
//! ```text
//!  scale(n) ─▶ launch: port (ports.rs) ─▶ spawn ─▶ cgroup limits ─▶ probe until ready
//!                                                 └─▶ registered ─▶ endpoints pushed
//!          ─▶ retire: deregistered ─▶ drain ─▶ SIGTERM ─▶ (stop timeout) SIGKILL
//! ```
//! An instance that exits on its own is deregistered and forgotten; the next decision
//! starts a replacement. Starts that fail (the program cannot run, exits before it is
//! ready, or is not ready in time) back off as Kubernetes' CrashLoopBackOff does: no
//! launch for 10 s after the first, doubling up to 5 min, until an instance is ready;
//! the instances of one launch count as one failure.
//!
//! Instances are started under `setpriv --pdeathsig TERM` where util-linux has it, so a
//! control plane that crashes does not leave them behind. The launch-to-ready time of
//! each instance is the measured cold start the planner plans its lead time with.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};

use super::cgroup::{Group, Limits};
use super::ports;
use super::{ActuateError, Actuator, BoxFuture, Status, TierResources, Want};
use crate::config::humantime_opt;
use crate::discovery::record::Record;
use crate::discovery::{Instance, Update};

pub const REGISTRY: &str = "local";

/// `actuator: {local: ...}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Program and arguments. `{port}` is the port the instance must listen on (chosen
    /// free by the actuator), `{index}` its number, `{service}` the service name and
    /// `{presage}` this executable.
    pub command: Vec<String>,
    /// Environment variables (same placeholders).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Address instances listen on and are registered with (default 127.0.0.1).
    pub host: Option<IpAddr>,
    /// Readiness: an HTTP GET of this path answering below 500; absent, a TCP connect.
    pub ready_path: Option<String>,
    /// How long an instance may take to become ready before it is killed (default 60s).
    #[serde(default, with = "humantime_opt")]
    pub start_timeout: Option<Duration>,
    /// Between deregistration and SIGTERM, so proxies stop sending first (default 1s).
    #[serde(default, with = "humantime_opt")]
    pub drain: Option<Duration>,
    /// SIGTERM to SIGKILL (default 10s).
    #[serde(default, with = "humantime_opt")]
    pub stop_timeout: Option<Duration>,
    /// CPU limit per instance, in cores (cgroup v2 `cpu.max`). The tier of the traffic
    /// adds its `cpu_shares` as `cpu.weight` and `memory_mb` as `memory.min`.
    pub cpu: Option<f64>,
    /// Memory limit per instance (cgroup v2 `memory.max`).
    pub memory_mb: Option<u64>,
}

impl LocalConfig {
    pub fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.command.first().is_none_or(|p| p.trim().is_empty()) {
            errors.push("command: expected a program and its arguments".to_string());
        }
        let mentions_port = self
            .command
            .iter()
            .chain(self.env.values())
            .any(|a| a.contains("{port}"));
        if !mentions_port {
            errors.push(
                "command: expected {port} in an argument or env value (where the instance listens)"
                    .to_string(),
            );
        }
        if self.cpu.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            errors.push("cpu: expected a number of cores above 0".to_string());
        }
        if self.memory_mb == Some(0) {
            errors.push("memory_mb: expected at least 1".to_string());
        }
        if let Some(p) = &self.ready_path {
            if !p.starts_with('/') {
                errors.push(format!(
                    "ready_path: expected a path starting with /, found {p:?}"
                ));
            }
        }
        errors
    }

    fn limits(&self, tier: Option<&TierResources>) -> Limits {
        Limits {
            cpu: self.cpu,
            memory_mb: self.memory_mb,
            cpu_weight: tier.map(|t| t.cpu_weight),
            memory_min_mb: tier.map(|t| u64::from(t.memory_mb)),
        }
    }
}

/// Smoothing of the measured cold start (weight of the newest launch).
const COLD_START_WEIGHT: f64 = 0.3;
/// Readiness is probed this often.
const PROBE_EVERY: Duration = Duration::from_millis(50);

struct Slot {
    port: u16,
    ready: bool,
    /// The reservation of a warm instance, `tier:<name>` or `user:<id>` (None: general
    /// rotation).
    pool: Option<String>,
    /// Its cgroup, when limits are applied (resized in place as the tier changes).
    group: Option<Arc<Group>>,
    /// Why its limits could not be applied, if so (it runs without them).
    limits_error: Option<String>,
    /// Taken when the instance is asked to stop.
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct State {
    slots: BTreeMap<u32, Slot>,
    next: u32,
    cold_start: Option<Duration>,
    /// The per-instance resources asked for last (new instances start with them).
    resources: Option<TierResources>,
    /// Why a running instance's group refused `resources`: the next decision writes again.
    resize_error: Option<String>,
    /// Failed starts since an instance last became ready (a batch launched together
    /// counts once), when launching may resume (and that time on the wall clock, for the
    /// error), and when that was decided.
    failed_starts: u32,
    retry_at: Option<Instant>,
    retry_wall: Option<std::time::SystemTime>,
    backoff_since: Option<Instant>,
}

/// Backoff after the first failed start, doubled by each further one up to the cap.
const START_BACKOFF: Duration = Duration::from_secs(10);
const MAX_START_BACKOFF: Duration = Duration::from_secs(300);

impl State {
    /// A start of an instance launched at `launched` failed: launching pauses for a
    /// backoff that doubles with each failure. Instances launched before the last
    /// failure was counted are of the batch it paused: theirs do not count again.
    fn start_failed(&mut self, service: &str, launched: Instant) {
        if self.backoff_since.is_some_and(|since| launched < since) {
            return;
        }
        self.failed_starts += 1;
        let factor = 1u32 << (self.failed_starts - 1).min(8);
        let wait = START_BACKOFF.saturating_mul(factor).min(MAX_START_BACKOFF);
        let now = Instant::now();
        self.retry_at = Some(now + wait);
        self.retry_wall = Some(std::time::SystemTime::now() + wait);
        self.backoff_since = Some(now);
        tracing::warn!(%service, failed_starts = self.failed_starts, ?wait, "starts paused after a failed start");
    }

    /// Why no instance may be launched now, if so. The same words at every decision of
    /// one pause, so it is recorded once.
    fn backing_off(&self) -> Option<String> {
        self.retry_at?.checked_duration_since(Instant::now())?;
        let at = humantime::format_rfc3339_seconds(self.retry_wall?);
        Some(format!(
            "{} start(s) in a row failed; launches resume at {at}",
            self.failed_starts
        ))
    }
}

struct Inner {
    service: String,
    cfg: LocalConfig,
    registry: mpsc::Sender<Update>,
    state: Mutex<State>,
    /// Instance tasks still running.
    tasks: watch::Sender<usize>,
    /// Each ready instance's CPU and memory, sampled from `/proc`.
    usage: Arc<super::usage::Usage>,
}

pub struct Local {
    inner: Arc<Inner>,
}

impl Local {
    pub fn new(service: &str, cfg: LocalConfig, registry: mpsc::Sender<Update>) -> Local {
        Local {
            inner: Arc::new(Inner {
                service: service.to_string(),
                cfg,
                registry,
                state: Mutex::new(State::default()),
                tasks: watch::channel(0).0,
                usage: Arc::default(),
            }),
        }
    }
}

impl Inner {
    fn host(&self) -> IpAddr {
        self.cfg.host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("actuator lock poisoned")
    }

    /// Sends the ready instances to the merger.
    async fn publish(&self) {
        let host = self.host().to_string();
        let instances = self
            .lock()
            .slots
            .iter()
            .filter(|(_, s)| s.ready)
            .map(|(i, s)| {
                let mut record = Record::at(host.clone(), s.port);
                record
                    .labels
                    .insert("presage.io/actuator".into(), REGISTRY.into());
                if let Some(reservation) = &s.pool {
                    // What the proxies' interceptor reads (`warm::Reservation`).
                    record.labels.insert("pool".into(), "warm".into());
                    record
                        .labels
                        .insert("reserved_for".into(), reservation.clone());
                }
                Instance {
                    id: format!("{}-{i}", self.service),
                    record,
                }
            })
            .collect();
        let _ = self
            .registry
            .send(Update::Service {
                registry: REGISTRY,
                service: self.service.clone(),
                instances,
            })
            .await;
    }

    fn expand(&self, s: &str, index: u32, port: u16) -> String {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "presage".into());
        s.replace("{port}", &port.to_string())
            .replace("{index}", &index.to_string())
            .replace("{service}", &self.service)
            .replace("{presage}", &exe)
    }

    /// Whether the instance answers yet.
    async fn ready(&self, addr: SocketAddr) -> bool {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
            return false;
        };
        let Some(path) = &self.cfg.ready_path else {
            return true;
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        if tcp.write_all(req.as_bytes()).await.is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        if tcp.read_exact(&mut head).await.is_err() {
            return false;
        }
        // `HTTP/1.1 200`
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .is_some_and(|code| code < 500)
    }

    fn limits_unavailable(&self, why: &str) {
        tracing::warn!(service = %self.service, reason = %why, "CPU/memory limits not applied");
    }

    /// Applies new per-instance resources to every running instance, in place (a group
    /// that refused them is written again at the next decision).
    fn resize(&self, resources: Option<TierResources>) {
        let groups: Vec<Arc<Group>> = {
            let mut st = self.lock();
            if st.resources == resources && st.resize_error.is_none() {
                return;
            }
            st.resources = resources.clone();
            st.slots.values().filter_map(|s| s.group.clone()).collect()
        };
        let limits = self.cfg.limits(resources.as_ref());
        // Every group is written; the last refusal is what is reported.
        let failed = groups
            .iter()
            .fold(None, |last, g| g.set(&limits).err().or(last));
        let mut st = self.lock();
        if let (Some(why), None) = (&failed, &st.resize_error) {
            self.limits_unavailable(why);
        }
        st.resize_error = failed;
        if let (Some(r), None) = (&resources, &st.resize_error) {
            tracing::info!(service = %self.service, tier = %r.tier, cpu_weight = r.cpu_weight, memory_mb = r.memory_mb, "per-instance resources follow the tier");
        }
    }

    fn forget(&self, index: u32) {
        self.lock().slots.remove(&index);
    }

    /// Forgets an instance (launched at `launched`) whose start failed, and backs off.
    fn failed(&self, index: u32, launched: Instant) {
        let mut st = self.lock();
        st.slots.remove(&index);
        st.start_failed(&self.service, launched);
    }

    /// Runs one instance from launch to exit.
    async fn instance(self: Arc<Self>, index: u32, port: u16, mut stop: oneshot::Receiver<()>) {
        let service = self.service.clone();
        let argv: Vec<String> = self
            .cfg
            .command
            .iter()
            .map(|a| self.expand(a, index, port))
            .collect();
        let launched = Instant::now();
        // The instance gets SIGTERM if the control plane dies without stopping it
        // (util-linux's setpriv sets the parent-death signal, kept across exec; this
        // crate forbids the unsafe `pre_exec` that would do it in-process).
        let argv = match setpriv() {
            Some(setpriv) => [setpriv, "--pdeathsig".into(), "TERM".into(), "--".into()]
                .into_iter()
                .chain(argv)
                .collect(),
            None => argv,
        };
        let mut child = match Command::new(&argv[0])
            .args(&argv[1..])
            .envs(
                self.cfg
                    .env
                    .iter()
                    .map(|(k, v)| (k, self.expand(v, index, port))),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // Its own process group, stopped as a whole: what a wrapper (`sh -c`, a
            // start script, a forking server) starts goes with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%service, program = %argv[0], error = %e, "cannot start an instance");
                self.failed(index, launched);
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        let limits = self.cfg.limits(self.lock().resources.as_ref());
        if limits.any() {
            match Group::create(&format!("{service}-{index}"), &limits)
                .and_then(|g| g.add(pid).map(|()| g))
            {
                Ok(g) => {
                    if let Some(s) = self.lock().slots.get_mut(&index) {
                        s.group = Some(Arc::new(g));
                    }
                }
                Err(why) => {
                    let mut st = self.lock();
                    // Said once while instances run without limits, not at every launch.
                    if !st.slots.values().any(|s| s.limits_error.is_some()) {
                        self.limits_unavailable(&why);
                    }
                    if let Some(s) = st.slots.get_mut(&index) {
                        s.limits_error = Some(why);
                    }
                }
            }
        }
        let addr = SocketAddr::new(self.host(), port);
        let timeout = self.cfg.start_timeout.unwrap_or(Duration::from_secs(60));
        let became_ready = async {
            while !self.ready(addr).await {
                tokio::time::sleep(PROBE_EVERY).await;
            }
        };
        tokio::select! {
            status = child.wait() => {
                tracing::warn!(%service, index, ?status, "instance exited before it was ready");
                self.failed(index, launched);
                return;
            }
            _ = &mut stop => {
                let _ = child.kill().await;
                self.forget(index);
                return;
            }
            r = tokio::time::timeout(timeout, became_ready) => {
                if r.is_err() {
                    tracing::warn!(%service, index, ?timeout, "instance not ready in time; killed");
                    let _ = child.kill().await;
                    self.failed(index, launched);
                    return;
                }
            }
        }
        let took = launched.elapsed();
        {
            let mut st = self.lock();
            st.cold_start = Some(match st.cold_start {
                None => took,
                Some(c) => c.mul_f64(1.0 - COLD_START_WEIGHT) + took.mul_f64(COLD_START_WEIGHT),
            });
            if let Some(s) = st.slots.get_mut(&index) {
                s.ready = true;
            }
            st.failed_starts = 0;
            st.retry_at = None;
            st.backoff_since = None;
        }
        tracing::info!(%service, index, %addr, cold_start = ?took, "instance ready");
        self.publish().await;
        let id = format!("{service}-{index}");
        let endpoint = addr.to_string();
        let mut sample = tokio::time::interval(super::usage::EVERY);
        loop {
            tokio::select! {
                status = child.wait() => {
                    tracing::warn!(%service, index, ?status, "instance exited; deregistered");
                    self.forget(index);
                    self.publish().await;
                    break;
                }
                _ = sample.tick() => {
                    if let Some(r) = super::usage::read(pid) {
                        let now = crate::time::unix_ms();
                        self.usage.record(&id, &endpoint, r, std::time::Instant::now(), now);
                    }
                    continue;
                }
                _ = &mut stop => {}
            }
            if let Some(s) = self.lock().slots.get_mut(&index) {
                s.ready = false;
            }
            self.publish().await;
            tokio::time::sleep(self.cfg.drain.unwrap_or(Duration::from_secs(1))).await;
            let stop_timeout = self.cfg.stop_timeout.unwrap_or(Duration::from_secs(10));
            let group = rustix::process::Pid::from_raw(pid as i32);
            let signal_group = |sig| group.map(|g| rustix::process::kill_process_group(g, sig));
            // The whole group gets SIGTERM; if the instance has not exited by the stop
            // timeout, the whole group gets SIGKILL.
            let term = signal_group(rustix::process::Signal::TERM);
            if !matches!(term, Some(Ok(())))
                || tokio::time::timeout(stop_timeout, child.wait())
                    .await
                    .is_err()
            {
                let _ = signal_group(rustix::process::Signal::KILL);
                let _ = child.kill().await;
            }
            tracing::info!(%service, index, "instance stopped");
            self.forget(index);
            break;
        }
        self.usage.forget(&id);
    }
}

/// util-linux's `setpriv`, if on the PATH.
fn setpriv() -> Option<String> {
    static FOUND: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|d| d.join("setpriv"))
                .find(|p| p.is_file())
                .map(|p| p.display().to_string())
        })
        .clone()
}

impl Actuator for Local {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn scale<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<(), ActuateError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.resize(want.resources.clone());
            let mut launch = Vec::new();
            let mut failed = None;
            {
                let mut st = inner.lock();
                // Every pool asked for, and every pool running (retired when not asked).
                let mut pools: BTreeMap<Option<String>, u32> =
                    st.slots.values().map(|s| (s.pool.clone(), 0)).collect();
                pools.insert(None, want.standard);
                for (tier, n) in &want.warm {
                    pools.insert(Some(tier.clone()), *n);
                }
                for (pool, target) in pools {
                    let live: Vec<u32> = st
                        .slots
                        .iter()
                        .filter(|(_, s)| s.stop.is_some() && s.pool == pool)
                        .map(|(i, _)| *i)
                        .collect();
                    let n = live.len() as u32;
                    if n > target {
                        // Retire those not ready yet first, then the newest.
                        let mut order = live;
                        order.sort_by_key(|i| (st.slots[i].ready, std::cmp::Reverse(*i)));
                        for i in order.into_iter().take((n - target) as usize) {
                            if let Some(tx) = st.slots.get_mut(&i).and_then(|s| s.stop.take()) {
                                let _ = tx.send(());
                            }
                        }
                    }
                    if n < target {
                        if let Some(why) = st.backing_off() {
                            failed = Some(ActuateError::Failed(why));
                            continue;
                        }
                    }
                    for _ in n..target {
                        // No port: launch what has one; the next decision tries again.
                        let host = inner.host();
                        let port =
                            match ports::pick(host, |p| st.slots.values().any(|s| s.port == p)) {
                                Ok(p) => p,
                                Err(e) => {
                                    failed = Some(ActuateError::Failed(format!(
                                        "no free port on {host}: {e}"
                                    )));
                                    break;
                                }
                            };
                        let index = st.next;
                        st.next += 1;
                        let (tx, rx) = oneshot::channel();
                        st.slots.insert(
                            index,
                            Slot {
                                port,
                                ready: false,
                                stop: Some(tx),
                                pool: pool.clone(),
                                group: None,
                                limits_error: None,
                            },
                        );
                        launch.push((index, port, rx));
                    }
                }
            }
            for (index, port, rx) in launch {
                let inner = inner.clone();
                inner.tasks.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    inner.clone().instance(index, port, rx).await;
                    inner.tasks.send_modify(|n| *n -= 1);
                });
            }
            failed.map_or(Ok(()), Err)
        })
    }

    fn status(&self) -> Status {
        let st = self.inner.lock();
        let live = || st.slots.values().filter(|s| s.stop.is_some());
        let (ready, starting, warm_ready) = live().fold((0, 0, 0), |(r, s, w), slot| {
            match (slot.ready, &slot.pool) {
                (true, None) => (r + 1, s, w),
                (true, Some(_)) => (r, s, w + 1),
                (false, _) => (r, s + 1, w),
            }
        });
        Status {
            ready,
            starting,
            warm_ready,
            cold_start: st.cold_start,
            // What holds now: a refused resize, or an instance still running without its
            // limits (gone with it).
            limits_unavailable: (st.resize_error.iter())
                .chain(live().filter_map(|s| s.limits_error.as_ref()))
                .next()
                .cloned(),
        }
    }

    fn usage(&self) -> Option<Arc<super::usage::Usage>> {
        Some(self.inner.usage.clone())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for s in self.inner.lock().slots.values_mut() {
                if let Some(tx) = s.stop.take() {
                    let _ = tx.send(());
                }
            }
            let mut rx = self.inner.tasks.subscribe();
            let _ = rx.wait_for(|n| *n == 0).await;
        })
    }
}

#[cfg(test)]
mod tests;
