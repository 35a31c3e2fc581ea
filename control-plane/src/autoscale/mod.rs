//! The live autoscaler: every control interval, for each service in `autoscaling:`,
//! the planner decides an instance count from the control plane's own forecast and the
//! observed rate, and the service's actuator makes it so. Every change of target is a
//! decision record with its reason, in the store and at `GET /v1/decisions`.
//!
//! ```text
//!  every interval, per scaled service:
//!   actuator status ─▶ measured cold start ─▶ lead = cold start + interval
//!   Forecast resource (1 s steps if the lead fits its minute, else 1 min steps)
//!       ─▶ highest upper bound within the lead, at the level of the highest active tier
//!   load history ─▶ rate of the last 15 closed seconds (the reactive floor)
//!       ─▶ Planner::decide_with ─▶ target ─▶ Actuator::scale (every interval: it also
//!                                                   replaces instances that died)
//!                                        └─ changed? ─▶ record (store, /v1/decisions, metrics)
//! ```

pub mod config;
pub mod peak;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

pub use config::{AutoscalingConfig, ScaledService};

use crate::actuate::{Actuator, Status};
use crate::discovery::Update;
use crate::load::Load;
use crate::metrics::Metrics;
use crate::planner::{Decision, Planner};
use crate::resources::{blocking, Resources};
use crate::sla::Sla;
use crate::store::Store;

/// The observed rate is averaged over this many closed seconds.
const OBSERVED_WINDOW_S: i64 = 15;

/// One scaling decision that changed a service's target, and why.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    pub seq: u64,
    pub unix_ms: i64,
    pub service: String,
    /// The actuator that applied it (`local`, `dry_run`).
    pub actuator: String,
    /// The target before (absent: the first decision since the control plane started).
    pub previous: Option<u32>,
    pub target: u32,
    /// The reason in words: forecast value and quantile, floor, delay, bounds.
    pub reason: String,
    /// The QoS tier whose level was provisioned for (absent: `level` was configured).
    pub tier: Option<String>,
    /// The planner's numbers (forecast, level, lead time, observed rate, ...).
    #[schema(value_type = Object)]
    pub decision: serde_json::Value,
    /// Instances before the change.
    #[schema(value_type = Object)]
    pub status: serde_json::Value,
    /// Why the actuator could not apply it, if it could not.
    pub error: Option<String>,
}

/// One scaled service's state now (`GET /v1/autoscaling`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceState {
    pub service: String,
    pub actuator: String,
    pub target: u32,
    pub status: Status,
    /// The latest decision (made every interval, recorded only when it changes the target).
    #[schema(value_type = Object)]
    pub decision: serde_json::Value,
}

/// What the REST API reads.
#[derive(Debug)]
pub struct Autoscaling {
    store: Store,
    seq: AtomicU64,
    now: Mutex<BTreeMap<String, ServiceState>>,
}

impl Autoscaling {
    pub fn new(store: Store) -> Result<Autoscaling, crate::store::StoreError> {
        Ok(Autoscaling {
            seq: AtomicU64::new(store.last_decision()?),
            store,
            now: Mutex::default(),
        })
    }

    pub fn services(&self) -> Vec<ServiceState> {
        self.now
            .lock()
            .expect("autoscaling lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Recorded decisions, newest first (of `service` only, if given).
    pub async fn decisions(
        &self,
        service: Option<String>,
        limit: usize,
    ) -> Result<Vec<DecisionRecord>, crate::store::StoreError> {
        let store = self.store.clone();
        let raw = blocking(move || {
            store.decisions(limit, |json| {
                service.as_ref().is_none_or(|s| {
                    serde_json::from_slice::<DecisionRecord>(json).is_ok_and(|d| d.service == *s)
                })
            })
        })
        .await?;
        Ok(raw
            .iter()
            .filter_map(|j| serde_json::from_slice(j).ok())
            .collect())
    }

    async fn record(&self, mut d: DecisionRecord) {
        d.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let json = serde_json::to_vec(&d).expect("a decision record serializes");
        let store = self.store.clone();
        let seq = d.seq;
        if let Err(e) = blocking(move || store.put_decision(seq, &json)).await {
            tracing::error!(service = %d.service, error = %e, "recording a scaling decision failed");
        }
    }
}

struct Scaled {
    cfg: ScaledService,
    planner: Planner,
    actuator: Box<dyn Actuator>,
    target: Option<u32>,
}

/// What the loop reads and writes.
pub struct Inputs {
    pub load: Arc<Load>,
    pub sla: Arc<Sla>,
    pub resources: Arc<Resources>,
    pub metrics: Arc<Metrics>,
    /// Instances the actuators start are registered here.
    pub registry: mpsc::Sender<Update>,
}

/// Runs until `stop` turns true, then stops every instance the actuators started.
pub async fn run(
    cfg: AutoscalingConfig,
    shared: Arc<Autoscaling>,
    inputs: Inputs,
    mut stop: watch::Receiver<bool>,
) {
    let interval = cfg.interval();
    let mut scaled: Vec<Scaled> = cfg
        .services
        .iter()
        .map(|s| Scaled {
            cfg: s.clone(),
            planner: Planner::new(s.planner(interval)),
            actuator: s.actuator.build(&s.service, inputs.registry.clone()),
            target: None,
        })
        .collect();
    drop(inputs.registry);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        for s in &mut scaled {
            step(
                s,
                &shared,
                &inputs.load,
                &inputs.sla,
                &inputs.resources,
                &inputs.metrics,
            )
            .await;
        }
    }
    for s in &scaled {
        s.actuator.shutdown().await;
    }
}

/// The mean rate of the last `OBSERVED_WINDOW_S` closed seconds.
fn observed_rps(load: &Load, service: &str, now_s: i64) -> f64 {
    let end = now_s - crate::load::GRACE_SECONDS;
    let start = end - OBSERVED_WINDOW_S;
    let requests: u64 = load.with(service, now_s, |h| {
        h.map_or(0, |h| {
            h.seconds()
                .filter(|p| p.unix_s >= start && p.unix_s < end)
                .map(|p| p.requests)
                .sum()
        })
    });
    requests as f64 / OBSERVED_WINDOW_S as f64
}

async fn step(
    s: &mut Scaled,
    shared: &Autoscaling,
    load: &Load,
    sla: &Sla,
    resources: &Resources,
    metrics: &Metrics,
) {
    let service = s.cfg.service.clone();
    let now_ms = crate::time::unix_ms();
    let now_s = now_ms / 1000;
    let status = s.actuator.status();
    if let Some(c) = status.cold_start {
        s.planner.set_cold_start(c);
    }
    let snap = resources.snapshot();
    let (level, tier) = match s.cfg.level {
        Some(l) => (l, None),
        None => {
            let (l, t) = peak::tier_level(&snap, sla, &service, now_s);
            (l, Some(t))
        }
    };
    s.planner.set_level(level);
    let lead = s.planner.lead();
    let peak = peak::from_forecasts(&snap, &service, now_ms, lead, level);
    let observed = observed_rps(load, &service, now_s);
    let d = s.planner.decide_with(now_s as f64, peak, observed);
    let error = s
        .actuator
        .scale(d.target)
        .await
        .err()
        .map(|e| e.to_string());
    if let Some(e) = &error {
        tracing::warn!(%service, target = d.target, error = %e, "scaling failed");
    }
    metrics.scaling(&service, d.target, &status);
    let decision = serde_json::to_value(&d).expect("a decision serializes");
    shared
        .now
        .lock()
        .expect("autoscaling lock poisoned")
        .insert(
            service.clone(),
            ServiceState {
                service: service.clone(),
                actuator: s.actuator.kind().into(),
                target: d.target,
                status: status.clone(),
                decision: decision.clone(),
            },
        );
    if s.target == Some(d.target) && error.is_none() {
        return;
    }
    let previous = s.target;
    s.target = Some(d.target);
    metrics.scaling_action(&service, previous, d.target);
    let reason = reason(&d, s.planner.config().capacity_rps);
    tracing::info!(%service, ?previous, target = d.target, %reason, "scaling decision");
    shared
        .record(DecisionRecord {
            seq: 0,
            unix_ms: now_ms,
            service,
            actuator: s.actuator.kind().into(),
            previous,
            target: d.target,
            reason,
            tier,
            decision,
            status: serde_json::to_value(&status).expect("a status serializes"),
            error,
        })
        .await;
}

/// A decision in words.
pub fn reason(d: &Decision, capacity_rps: f64) -> String {
    let mut parts = Vec::new();
    match (d.forecast_upper_rps, d.predictive) {
        (Some(hi), Some(n)) => parts.push(format!(
            "forecast: {}{hi:.1} req/s (point {:.1}) within the next {:.1} s (cold start + interval) needs {n} at {capacity_rps} req/s each",
            if d.level >= 60.0 {
                format!("{:.0}% upper bound ", d.level)
            } else {
                String::new()
            },
            d.forecast_point_rps.unwrap_or(0.0),
            d.lead_s,
        )),
        _ => parts.push("no forecast yet".to_string()),
    }
    parts.push(format!(
        "observed {:.1} req/s needs {}",
        d.observed_rps, d.reactive
    ));
    if d.held {
        parts.push("scale-down held for its delay".to_string());
    }
    if let Some(c) = d.clamped {
        parts.push(format!("clamped to {c}"));
    }
    parts.join("; ")
}
