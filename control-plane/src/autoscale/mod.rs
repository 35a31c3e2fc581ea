//! The live autoscaler: every control interval, for each service in `autoscaling:`,
//! the planner decides an instance count from the control plane's own forecast and the
//! observed rate, and the service's actuator makes it so. Every change of target (or of
//! the planner's own target, which a policy or a ceiling may have overridden) is a
//! decision record with its reason, in the store and at `GET /v1/decisions`.
//!
//! ```text
//!  every interval, per scaled service:
//!   actuator status ─▶ measured cold start ─▶ lead = cold start + interval
//!   Forecast resource (1 s steps if the lead fits its minute, else 1 min steps)
//!       ─▶ highest upper bound within the lead, at the level of the highest active tier
//!   load history ─▶ rate of the last 15 closed seconds (the reactive floor), and its
//!                   whole minutes (the planner's near-term bound, by minute of the hour)
//!       ─▶ Planner::decide_with_minutes ─▶ target ─▶ Actuator::scale (every interval: it also
//!                                                   replaces instances that died)
//!                                        └─ changed? ─▶ record (store, /v1/decisions, metrics)
//! ```

pub mod capacity;
pub mod config;
pub mod negotiation;
mod observed;
pub mod peak;
pub mod policy;
mod tenant;
pub mod warm;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use capacity::Capacity;
pub use config::{AutoscalingConfig, ScaledService};
use observed::observed;
use policy::{Ledger, Policy};

use crate::actuate::{Actuator, Status, TierResources, Want};
use crate::discovery::Update;
use crate::load::Load;
use crate::metrics::Metrics;
use crate::planner::{Decision, Planner};
use crate::resources::{blocking, Resources};
use crate::sla::Sla;
use crate::store::Store;

/// An actuator's call may take at least this long (or one interval, if longer).
const ACTUATOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// What moved the planner's target: policy rules, cooldown, cost ceilings, learned
    /// capacity.
    #[serde(default)]
    pub adjustments: Vec<String>,
    /// Warm instances per reservation (`tier:<name>`, `user:<id>`), beside `target`
    /// (held for predicted users).
    #[serde(default)]
    pub warm: BTreeMap<String, u32>,
    /// Per-instance resources (the highest tier's allocation).
    #[serde(default)]
    pub resources: Option<TierResources>,
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
    /// Per-instance capacity the planner uses now (configured, then learned).
    pub capacity_rps: f64,
    /// Warm instances wanted per reservation (`tier:<name>`, `user:<id>`).
    pub warm: BTreeMap<String, u32>,
    /// Per-instance resources: the allocation of the highest tier in the traffic.
    pub resources: Option<TierResources>,
    pub status: Status,
    pub adjustments: Vec<String>,
    /// The latest decision (made every interval; recorded when a target changes).
    #[schema(value_type = Object)]
    pub decision: serde_json::Value,
}

/// A service's minimum and maximum instance counts.
type Bounds = (u32, u32);

/// What the REST API reads.
#[derive(Debug)]
pub struct Autoscaling {
    store: Store,
    seq: AtomicU64,
    now: Mutex<BTreeMap<String, ServiceState>>,
    /// Each scaled service's policy (the config's, replaced by `PUT`, kept in the store)
    /// and its min and max instance counts.
    policies: Mutex<BTreeMap<String, (Policy, Bounds)>>,
    /// The tenants a policy may name (`autoscaling.tenants`).
    tenants: std::collections::BTreeSet<String>,
    /// Negotiations with dependencies before scale-ups (`/v1/negotiations`).
    pub negotiations: negotiation::Log,
    /// Each scaled service's instance CPU and memory, where its actuator sees them.
    usage: Mutex<BTreeMap<String, Arc<crate::actuate::usage::Usage>>>,
}

/// The store's `models` key of a service's policy set through the API.
fn policy_key(service: &str) -> String {
    format!("autoscaling-policy/{service}")
}

impl Autoscaling {
    /// Reads the decision sequence and the policies set through the API from the store.
    pub fn new(
        store: Store,
        cfg: &AutoscalingConfig,
    ) -> Result<Autoscaling, crate::store::StoreError> {
        let mut policies = BTreeMap::new();
        for s in &cfg.services {
            let mut policy = s.policy.clone();
            if let Some(bytes) = store.model(&policy_key(&s.service))? {
                match serde_json::from_slice(&bytes) {
                    Ok(p) => policy = p,
                    Err(e) => {
                        tracing::warn!(service = %s.service, error = %e, "the stored autoscaling policy could not be read; using the config's")
                    }
                }
            }
            policies.insert(s.service.clone(), (policy, s.bounds()));
        }
        Ok(Autoscaling {
            seq: AtomicU64::new(store.last_decision()?),
            store,
            now: Mutex::default(),
            policies: Mutex::new(policies),
            tenants: cfg.tenants.keys().cloned().collect(),
            negotiations: negotiation::Log::default(),
            usage: Mutex::default(),
        })
    }

    /// The policy in force for `service` (None: not scaled).
    pub fn policy(&self, service: &str) -> Option<Policy> {
        let p = self.policies.lock().expect("autoscaling lock poisoned");
        p.get(service).map(|(p, _)| p.clone())
    }

    /// Replaces a scaled service's policy, durably; field errors when it is invalid.
    pub async fn put_policy(
        &self,
        service: &str,
        policy: Policy,
    ) -> Result<Option<()>, PolicyError> {
        let Some((min, max)) = self
            .policies
            .lock()
            .expect("autoscaling lock poisoned")
            .get(service)
            .map(|(_, m)| *m)
        else {
            return Ok(None);
        };
        let mut errors = policy.check(min, max);
        if let Some(t) = policy
            .tenant
            .as_ref()
            .filter(|t| !self.tenants.contains(*t))
        {
            let known = self.tenants.iter().cloned().collect::<Vec<_>>().join(", ");
            errors.push((
                "tenant".into(),
                format!("{t:?} is not in autoscaling.tenants ({known})"),
            ));
        }
        if !errors.is_empty() {
            return Err(PolicyError::Invalid(errors));
        }
        let json = serde_json::to_vec(&policy).expect("a policy serializes");
        let (store, key) = (self.store.clone(), policy_key(service));
        blocking(move || store.put_model(&key, &json)).await?;
        self.policies
            .lock()
            .expect("autoscaling lock poisoned")
            .insert(service.to_string(), (policy, (min, max)));
        Ok(Some(()))
    }

    /// A scaled service's instance series (None: not scaled, or its actuator cannot see
    /// its instances).
    pub fn usage(&self, service: &str) -> Option<Arc<crate::actuate::usage::Usage>> {
        let usage = self.usage.lock().expect("usage lock poisoned");
        usage.get(service).cloned()
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

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid policy")]
    Invalid(Vec<(String, String)>),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

struct Scaled {
    cfg: ScaledService,
    planner: Planner,
    actuator: Box<dyn Actuator>,
    capacity: Capacity,
    ledger: Ledger,
    target: Option<u32>,
    /// The planner's own target at the last decision (before policy and ceilings).
    wanted: Option<u32>,
    /// The actuator's error at the last decision.
    error: Option<String>,
    warm_pool: warm::WarmPool,
    /// Warm instances per tier at the last decision.
    warm: BTreeMap<String, u32>,
    resources: Option<TierResources>,
}

/// What the loop reads and writes.
pub struct Inputs {
    pub load: Arc<Load>,
    pub sla: Arc<Sla>,
    pub resources: Arc<Resources>,
    pub metrics: Arc<Metrics>,
    /// Predicted calls of active users, for warm pools.
    pub profiler: Arc<Mutex<crate::behaviour::Profiler>>,
    /// Instances the actuators start are registered here.
    pub registry: mpsc::Sender<Update>,
    /// The dependency map scale-ups are negotiated along.
    pub deps: Arc<crate::deps::Dependencies>,
    /// Where a failed negotiation is alerted.
    pub alerts: Arc<crate::sla::alerts::Alerts>,
    /// Where negotiations are published as they happen.
    pub bus: crate::bus::Bus,
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
            capacity: Capacity::new(s.capacity_rps),
            ledger: Ledger::default(),
            target: None,
            wanted: None,
            error: None,
            warm_pool: warm::WarmPool::default(),
            warm: BTreeMap::new(),
            resources: None,
        })
        .collect();
    for s in &scaled {
        if let Some(u) = s.actuator.usage() {
            let mut usage = shared.usage.lock().expect("usage lock poisoned");
            usage.insert(s.cfg.service.clone(), u);
        }
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let now_ms = crate::time::unix_ms();
        // The profiler's predictions once per tick for every warm pool (a pass over the
        // active users), per second: calls over a window scale with it.
        let predicted = scaled
            .iter()
            .any(|s| s.cfg.warm_pool.is_some())
            .then(|| predicted_rates(&inputs, now_ms));
        let mut planned: Vec<Planned> = scaled
            .iter_mut()
            .map(|s| plan(s, &shared, &inputs, predicted.as_ref(), now_ms, interval))
            .collect();
        for (tenant, ceiling) in &cfg.tenants {
            tenant::contend(tenant, ceiling, &scaled, &shared, &mut planned);
        }
        negotiation::run(&scaled, &mut planned, &inputs, &shared, now_ms).await;
        negotiation::mark_degraded(&inputs, &shared.negotiations, now_ms).await;
        // Concurrently, each bounded: a slow actuator (an API server retrying) must not
        // hold back the other services' scaling.
        let limit = interval.max(ACTUATOR_TIMEOUT);
        futures_util::future::join_all(
            scaled
                .iter_mut()
                .zip(planned)
                .map(|(s, p)| apply(s, p, &shared, &inputs.metrics, now_ms, limit)),
        )
        .await;
    }
    for s in &scaled {
        s.actuator.shutdown().await;
    }
}

/// One service's decision before it is applied.
struct Planned {
    decision: Decision,
    target: u32,
    current: u32,
    status: Status,
    active: Option<peak::Active>,
    adjustments: Vec<String>,
    warm: BTreeMap<String, u32>,
    resources: Option<TierResources>,
}

/// Decides one service: planner, then its policy.
fn plan(
    s: &mut Scaled,
    shared: &Autoscaling,
    inputs: &Inputs,
    predicted: Option<&Predicted>,
    now_ms: i64,
    interval: std::time::Duration,
) -> Planned {
    let service = s.cfg.service.clone();
    let now_s = now_ms / 1000;
    let status = s.actuator.status();
    if let Some(c) = status.cold_start {
        s.planner.set_cold_start(c);
    }
    let snap = inputs.resources.snapshot();
    let active = peak::active_qos(&snap, &inputs.sla, &service, now_s);
    let mut adjustments = Vec::new();
    let seen = observed(&inputs.load, &service, now_s);
    // Capacity is learned from the longer window (its p99 is that window's); the floor
    // also takes the burst window (`Observed::floor_rps`).
    let (rps, p99) = (seen.rps, seen.p99_ms);
    if s.cfg.learn_capacity.unwrap_or(true) && status.ready > 0 {
        if let Some(target) = active.latency_target_ms {
            let per = rps / f64::from(status.ready);
            if s.capacity.observe(per, p99, target) {
                adjustments.push(format!(
                    "capacity learned: {:.1} req/s per instance ({per:.1} served at p99 {p99:.0} ms against {target:.0} ms)",
                    s.capacity.rps()
                ));
            }
        }
    }
    s.planner.set_capacity(s.capacity.rps());
    let level = s.cfg.level.unwrap_or(active.level);
    s.planner.set_level(level);
    let peak = if s.cfg.predictive.unwrap_or(true) {
        peak::from_forecasts(&snap, &service, now_ms, s.planner.lead(), level)
    } else {
        None
    };
    // With prediction off the floor decides alone.
    let minutes = s
        .cfg
        .predictive
        .unwrap_or(true)
        .then(|| observed::minutes(&inputs.load, &service, now_s))
        .flatten();
    let decision = match minutes {
        Some((first, y)) => {
            s.planner
                .decide_with_minutes(now_s as f64, peak, first, &y, seen.floor_rps())
        }
        None => s.planner.decide_with(now_s as f64, peak, seen.floor_rps()),
    };
    let current = s.target.unwrap_or(status.ready + status.starting);
    let policy = shared
        .policy(&service)
        .unwrap_or_else(|| s.cfg.policy.clone());
    let (target, why) = policy::apply(
        &policy,
        &s.ledger,
        now_s as f64,
        decision.target,
        current,
        s.planner.config().max_instances,
        decision.forecast_upper_rps,
        s.capacity.rps(),
        interval,
    );
    adjustments.extend(why);
    let warm = match &s.cfg.warm_pool {
        None => BTreeMap::new(),
        Some(cfg) => {
            let window = cfg.window().as_secs_f64();
            let calls: Vec<warm::UserCalls> = predicted
                .and_then(|p| p.get(&service))
                .map(|users| {
                    users
                        .iter()
                        .map(|u| warm::UserCalls {
                            calls: u.calls * window,
                            ..u.clone()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let (pool, why) = s
                .warm_pool
                .size(cfg, now_s as f64, &calls, s.capacity.rps());
            adjustments.extend(why);
            pool
        }
    };
    let resources = tier_resources(&snap, &active.tier);
    Planned {
        decision,
        target,
        current,
        status,
        active: s.cfg.level.is_none().then_some(active),
        adjustments,
        warm,
        resources,
    }
}

/// The per-instance allocation of `tier` (its `QosTier` resource).
fn tier_resources(snap: &crate::resources::Snapshot, tier: &str) -> Option<TierResources> {
    match snap
        .get(presage_api::types::QOS_TIER)?
        .items
        .get(tier)?
        .body
        .as_ref()?
    {
        presage_api::resource::Body::QosTier(t) => Some(TierResources {
            tier: t.name.clone(),
            cpu_weight: t.cpu_shares,
            memory_mb: t.memory_mb,
        }),
        _ => None,
    }
}

/// Calls per second the profiler predicts from each active user, by service, with the
/// user's QoS tier (a subject's own tier, else its profile's; others are Bronze).
type Predicted = BTreeMap<String, Vec<warm::UserCalls>>;

fn predicted_rates(inputs: &Inputs, now_ms: i64) -> Predicted {
    use presage_api::resource::Body;
    use presage_api::types;
    let snap = inputs.resources.snapshot();
    let item = |t: &str, name: &str| {
        snap.get(t)
            .and_then(|s| s.items.get(name))
            .and_then(|r| r.body.clone())
    };
    let tier_of = |user: &str| -> String {
        let Some(Body::Subject(sub)) = item(types::SUBJECT, user) else {
            return "bronze".into();
        };
        if !sub.tier.is_empty() {
            return sub.tier;
        }
        match item(types::QOS_PROFILE, &sub.profile) {
            Some(Body::QosProfile(p)) if !p.tier.is_empty() => p.tier,
            _ => "bronze".into(),
        }
    };
    let mut out = Predicted::new();
    // A user's services come one after another: its tier is looked up once.
    let mut last: Option<(String, String)> = None;
    inputs
        .profiler
        .lock()
        .expect("profiler lock poisoned")
        .expected_by_user(now_ms as f64 / 1000.0, 1.0, |user, service, rate| {
            let tier = match &last {
                Some((u, t)) if u == user => t.clone(),
                _ => {
                    let t = tier_of(user);
                    last = Some((user.to_string(), t.clone()));
                    t
                }
            };
            out.entry(service.to_string())
                .or_default()
                .push(warm::UserCalls {
                    user: user.to_string(),
                    tier,
                    calls: rate,
                });
        });
    let workflows: Vec<presage_api::Workflow> = snap
        .get(types::WORKFLOW)
        .map(|t| {
            t.items
                .values()
                .filter_map(|r| match &r.body {
                    Some(Body::Workflow(w)) => Some(w.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !workflows.is_empty() {
        warm::through_workflows(&mut out, &crate::workflows::constituents(&workflows));
    }
    out
}

/// Applies one service's decision; records it when the target changed.
async fn apply(
    s: &mut Scaled,
    p: Planned,
    shared: &Autoscaling,
    metrics: &Metrics,
    now_ms: i64,
    limit: std::time::Duration,
) {
    let service = s.cfg.service.clone();
    let target = p.target;
    s.ledger
        .record((now_ms / 1000) as f64, target, target > p.current);
    let want = Want {
        standard: target,
        warm: p.warm.clone(),
        resources: p.resources.clone(),
    };
    let error = match tokio::time::timeout(limit, s.actuator.scale(&want)).await {
        Ok(r) => r.err().map(|e| e.to_string()),
        Err(_) => Some(format!(
            "the {} actuator did not answer within {limit:?}",
            s.actuator.kind()
        )),
    };
    if let Some(e) = &error {
        tracing::warn!(%service, target, error = %e, "scaling failed");
    }
    metrics.scaling(&service, target, &p.status);
    let decision = serde_json::to_value(&p.decision).expect("a decision serializes");
    shared
        .now
        .lock()
        .expect("autoscaling lock poisoned")
        .insert(
            service.clone(),
            ServiceState {
                service: service.clone(),
                actuator: s.actuator.kind().into(),
                target,
                capacity_rps: s.capacity.rps(),
                warm: p.warm.clone(),
                resources: p.resources.clone(),
                status: p.status.clone(),
                decision: decision.clone(),
                adjustments: p.adjustments.clone(),
            },
        );
    let wanted = Some(p.decision.target);
    if s.target == Some(target)
        && s.wanted == wanted
        && s.error == error
        && s.warm == p.warm
        && s.resources == p.resources
    {
        return;
    }
    s.warm = p.warm.clone();
    s.resources = p.resources.clone();
    s.error = error.clone();
    let previous = s.target;
    s.wanted = wanted;
    if previous != Some(target) {
        metrics.scaling_action(&service, previous, target);
    }
    s.target = Some(target);
    let mut reason = reason(&p.decision, s.capacity.rps());
    for a in &p.adjustments {
        reason.push_str("; ");
        reason.push_str(a);
    }
    tracing::info!(%service, ?previous, target, %reason, "scaling decision");
    shared
        .record(DecisionRecord {
            seq: 0,
            unix_ms: now_ms,
            service,
            actuator: s.actuator.kind().into(),
            previous,
            target,
            reason,
            tier: p.active.map(|a| a.tier),
            decision,
            adjustments: p.adjustments,
            warm: p.warm,
            resources: p.resources,
            status: serde_json::to_value(&p.status).expect("a status serializes"),
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
