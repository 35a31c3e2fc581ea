//! The telemetry stream to the control plane: every `report_interval` a `LoadReport`
//! (per-service counts and latency from `load`, and sampled per-user transitions) goes
//! into a bounded queue; a sender task streams the queue to the control plane.
//!
//! The request path never waits on any of it: it bumps counters and, for a sampled user
//! request, pushes one transition under a short lock. When the control plane is slow or
//! away the queue keeps the newest `max_buffered_reports` and counts what it drops.
//! Reports already handed to a stream that then breaks are lost (at most one interval's
//! worth in flight in practice); the rest are sent after reconnecting.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use presage_api::telemetry_client::TelemetryClient;
use presage_api::{EjectedEndpoint, LoadReport, Node, RequestRecord, ServiceLoad, Transition};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use crate::config::ControlPlaneSpec;
use crate::control_plane::{self, Backoff};
use crate::load::ServiceLoads;

/// Users whose last service is remembered; past this the oldest half is forgotten
/// (their next call is then reported without a previous service).
const MAX_USERS: usize = 100_000;
/// Transitions kept per interval; more are dropped (and counted) rather than let a
/// burst of users grow one report without bound.
const MAX_TRANSITIONS: usize = 10_000;
/// Request records kept per interval, for the control plane's getServiceStatus.
const MAX_RECORDS: usize = 1_000;

#[derive(Debug, Default)]
struct Records {
    kept: Vec<RequestRecord>,
    unrecorded: u64,
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Default)]
struct Users {
    /// user -> (last service, sequence number for eviction)
    last: HashMap<String, (String, u64)>,
    seq: u64,
    transitions: Vec<Transition>,
}

/// Telemetry state shared by the request path, the reporter and the sender.
#[derive(Debug)]
pub struct Telemetry {
    pub spec: ControlPlaneSpec,
    pub node: Node,
    users: Mutex<Users>,
    records: Mutex<Records>,
    queue: Mutex<VecDeque<LoadReport>>,
    ready: Notify,
    dropped: AtomicU64,
    dropped_metric: Counter,
    transitions_dropped: Counter,
}

impl Telemetry {
    pub fn new(
        spec: ControlPlaneSpec,
        node: Node,
        dropped_metric: Counter,
        transitions_dropped: Counter,
    ) -> Telemetry {
        Telemetry {
            spec,
            node,
            users: Mutex::new(Users::default()),
            records: Mutex::new(Records::default()),
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            dropped: AtomicU64::new(0),
            dropped_metric,
            transitions_dropped,
        }
    }

    /// Called on the request path for a request naming a user.
    pub fn transition(&self, user: &str, service: &str) {
        if self.spec.transition_sample_rate < 1.0
            && fastrand::f64() >= self.spec.transition_sample_rate
        {
            return;
        }
        let mut u = self.users.lock().expect("users lock poisoned");
        u.seq += 1;
        let seq = u.seq;
        let previous = match u.last.get_mut(user) {
            Some((prev, s)) => {
                *s = seq;
                std::mem::replace(prev, service.to_string())
            }
            None => {
                if u.last.len() >= MAX_USERS {
                    // Forget the least recently seen half, in one pass.
                    let mut seqs: Vec<u64> = u.last.values().map(|(_, s)| *s).collect();
                    let mid = seqs.len() / 2;
                    let cut = *seqs.select_nth_unstable(mid).1;
                    u.last.retain(|_, (_, s)| *s > cut);
                }
                u.last.insert(user.to_string(), (service.to_string(), seq));
                String::new()
            }
        };
        if u.transitions.len() >= MAX_TRANSITIONS {
            self.transitions_dropped.inc();
            return;
        }
        u.transitions.push(Transition {
            user: user.to_string(),
            previous_service: previous,
            next_service: service.to_string(),
            unix_ms: unix_ms(),
        });
    }

    /// Keeps how one request was handled, for this interval's report (built only while
    /// the interval has room).
    pub fn record(&self, build: impl FnOnce() -> RequestRecord) {
        let mut recs = self.records.lock().expect("records lock poisoned");
        if recs.kept.len() < MAX_RECORDS {
            recs.kept.push(build());
        } else {
            recs.unrecorded += 1;
        }
    }

    /// Builds this interval's report and queues it, dropping the oldest when full.
    /// `ejected` lists the endpoints outlier detection has out of rotation now.
    pub fn collect(&self, loads: &ServiceLoads, ejected: Vec<EjectedEndpoint>, interval: Duration) {
        let mut services = Vec::new();
        let mut ser = V2Serializer::new();
        for t in loads.take() {
            let mut bytes = Vec::new();
            if !t.latency.is_empty() {
                // Serialising into a Vec cannot fail for a valid histogram.
                let _ = ser.serialize(&t.latency, &mut bytes);
            }
            services.push(ServiceLoad {
                service: t.service,
                qos_profile: t.qos_profile,
                endpoint: t.endpoint,
                requests: t.requests,
                errors: t.errors,
                in_flight: t.in_flight,
                latency_histogram: bytes,
            });
        }
        let transitions =
            std::mem::take(&mut self.users.lock().expect("users lock poisoned").transitions);
        let records = std::mem::take(&mut *self.records.lock().expect("records lock poisoned"));
        if services.is_empty() && transitions.is_empty() && ejected.is_empty() {
            return;
        }
        let report = LoadReport {
            node: None,
            unix_ms: unix_ms(),
            interval_ms: interval.as_millis() as u32,
            services,
            transitions,
            dropped_reports: 0,
            ejected,
            requests: records.kept,
            requests_unrecorded: records.unrecorded,
        };
        let mut q = self.queue.lock().expect("queue lock poisoned");
        if q.len() >= self.spec.max_buffered_reports {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_metric.inc();
        }
        q.push_back(report);
        drop(q);
        self.ready.notify_one();
    }

    async fn next_report(&self) -> LoadReport {
        loop {
            let notified = self.ready.notified();
            if let Some(mut r) = self.queue.lock().expect("queue lock poisoned").pop_front() {
                r.dropped_reports = self.dropped.load(Ordering::Relaxed);
                return r;
            }
            notified.await;
        }
    }

    /// Reports waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.lock().expect("queue lock poisoned").len()
    }
}

/// Collects a report every interval, forever. `ejected` is asked for the endpoints
/// outlier detection has out of rotation at that moment.
pub async fn collect_loop(
    telemetry: Arc<Telemetry>,
    metrics: Arc<crate::metrics::Metrics>,
    ejected: impl Fn() -> Vec<EjectedEndpoint> + Send + 'static,
) {
    let every = telemetry.spec.report_interval;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        telemetry.collect(&metrics.service_load, ejected(), every);
    }
}

/// Streams queued reports to the control plane, reconnecting with backoff, forever.
pub async fn send_loop(telemetry: Arc<Telemetry>) {
    let mut backoff = Backoff::default();
    loop {
        let started = tokio::time::Instant::now();
        match send(&telemetry).await {
            Ok(()) => tracing::debug!("telemetry stream closed by the control plane"),
            Err(e) => tracing::debug!(error = %e, "telemetry stream failed"),
        }
        backoff.after_session(started.elapsed());
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn send(telemetry: &Arc<Telemetry>) -> Result<(), control_plane::ClientError> {
    let channel = control_plane::connect(&telemetry.spec).await?;
    let mut client = TelemetryClient::new(channel);
    let t = telemetry.clone();
    let node = telemetry.node.clone();
    let outbound = futures_util::stream::unfold((t, Some(node)), |(t, node)| async move {
        let mut r = t.next_report().await;
        r.node = node;
        Some((r, (t, None)))
    });
    client.report(outbound).await?;
    Ok(())
}
