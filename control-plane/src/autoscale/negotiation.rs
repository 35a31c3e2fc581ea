//! Negotiation in the live autoscaler: before a service's scale-up is applied, its
//! dependencies' capacity managers (`negotiate`) are asked whether the chain can carry
//! it; the service gets what every mandatory dependency supports, and a dependency
//! that confirmed a change by scaling gets that scale-up in the same interval.
//!
//! The change proposed is what the new instances can serve, and so send on (capacity
//! delta × call ratio): the worst case the chain must be ready for. A dependency's
//! capacity manager knows, this interval: its planned instances and per-instance
//! capacity; its demand, the highest of the observed rate, its forecast's bound and what
//! its callers pass on (their demand up to their current capacity, times the call
//! ratio, transitively: load already flowing or already agreed to); how far it
//! may grow (`max`, and the cost ceiling `max_cost_per_hour / price_per_hour`); and its
//! cold start. A service not scaled here is sized from its instances' `capacity`
//! metadata and cannot grow; without that metadata its capacity is unknown and it
//! confirms.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use presage_api::resource::Body;

use crate::deps::{Edge, Kind};
use crate::negotiate::{Answer, CapacityManager, Negotiation, Proposal};

/// Negotiations kept for `/v1/negotiations`.
const KEPT: usize = 1000;
/// A dependency stays degraded this long after the last negotiation that found it so.
const DEGRADED_FOR_MS: i64 = 60_000;

/// Recent negotiations, newest last; one repeating the previous outcome of its service
/// (same wanted, granted and outcome) is not kept again. And the dependencies they
/// found degraded.
#[derive(Debug, Default)]
pub struct Log {
    seq: AtomicU64,
    kept: Mutex<VecDeque<Negotiation>>,
    /// Degraded dependency -> its mark, and the clusters marked so (only those are
    /// cleared: an operator's mark stays).
    degraded: Mutex<Degraded>,
}

/// A degraded dependency's mark: `optional` or `best_effort`, the callers whose calls
/// to it are shed, each until when (Unix ms).
#[derive(Debug, Default, Clone)]
struct Mark {
    kind: &'static str,
    callers: BTreeMap<String, i64>,
}

/// Degraded dependency -> mark; and the clusters this autoscaler marked.
type Degraded = (BTreeMap<String, Mark>, BTreeSet<String>);

impl Log {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn record(&self, n: Negotiation) {
        let mut kept = self.kept.lock().expect("negotiation lock poisoned");
        let same = kept
            .iter()
            .rev()
            .find(|k| k.service == n.service)
            .is_some_and(|k| {
                (k.wanted, k.granted, &k.outcome, &k.degraded)
                    == (n.wanted, n.granted, &n.outcome, &n.degraded)
            });
        if same {
            return;
        }
        tracing::info!(service = %n.service, outcome = %n.outcome, wanted = n.wanted, granted = n.granted, "negotiated");
        kept.push_back(n);
        if kept.len() > KEPT {
            kept.pop_front();
        }
    }

    fn degrade(&self, service: &str, kind: &'static str, caller: &str, until_ms: i64) {
        let mut d = self.degraded.lock().expect("negotiation lock poisoned");
        let m = d.0.entry(service.to_string()).or_default();
        m.kind = kind;
        m.callers.insert(caller.to_string(), until_ms);
    }

    /// The clusters whose `degraded` mark must change at `now_ms`: (service, mark,
    /// callers shed).
    fn marks(
        &self,
        snap: &crate::resources::Snapshot,
        now_ms: i64,
    ) -> Vec<(String, String, Vec<String>)> {
        let mut d = self.degraded.lock().expect("negotiation lock poisoned");
        let (active, marked) = &mut *d;
        for m in active.values_mut() {
            m.callers.retain(|_, until| *until > now_ms);
        }
        active.retain(|_, m| !m.callers.is_empty());
        let mut out = Vec::new();
        let clusters = snap.get(presage_api::types::CLUSTER);
        let current = |name: &str| match clusters.and_then(|t| t.items.get(name))?.body.as_ref()? {
            Body::Cluster(c) => Some((c.degraded.clone(), c.degraded_callers.clone())),
            _ => None,
        };
        for (name, m) in active.iter() {
            let callers: Vec<String> = m.callers.keys().cloned().collect();
            if current(name).is_some_and(|(kind, shed)| kind != m.kind || shed != callers) {
                out.push((name.clone(), m.kind.to_string(), callers));
                marked.insert(name.clone());
            }
        }
        marked.retain(|name| {
            if active.contains_key(name) {
                return true;
            }
            if current(name).is_some_and(|(kind, _)| !kind.is_empty()) {
                out.push((name.clone(), String::new(), Vec::new()));
            }
            false
        });
        out
    }

    /// Newest first (of `service` only, if given), at most `limit`.
    pub fn list(&self, service: Option<&str>, limit: usize) -> Vec<Negotiation> {
        let kept = self.kept.lock().expect("negotiation lock poisoned");
        kept.iter()
            .rev()
            .filter(|n| service.is_none_or(|s| n.service == s))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// One dependency's capacity this interval.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// Per instance, requests/s.
    pub per_instance: f64,
    pub instances: u32,
    /// Instances it may grow to.
    pub limit: u32,
    pub demand_rps: f64,
    pub cold_start_ms: i64,
    /// Its index among the scaled services (None: not scaled here).
    pub scaled: Option<usize>,
}

impl Capacity {
    /// Instances its demand needs, within its limit.
    pub fn required(&self) -> u32 {
        ((self.demand_rps / self.per_instance - 1e-9).ceil().max(0.0) as u32).min(self.limit)
    }
}

/// The managers of every service a negotiation may reach.
pub struct Managers {
    pub now_ms: i64,
    pub services: BTreeMap<String, Capacity>,
    /// Scale-ups committed this interval, by scaled index: (instances, for whom).
    pub committed: BTreeMap<usize, (u32, Vec<String>)>,
}

impl CapacityManager for Managers {
    fn answer(
        &mut self,
        p: &Proposal,
    ) -> impl std::future::Future<Output = Result<Answer, String>> + Send {
        // In-process: answered at once (the exchange's timeout never fires).
        std::future::ready(Ok(self.decide(p)))
    }
}

impl Managers {
    /// The answer from this interval's capacities; a commit plans the scale-up.
    pub fn decide(&mut self, p: &Proposal) -> Answer {
        let Some(c) = self.services.get_mut(&p.service) else {
            return Answer::Confirm {
                scale_up: 0,
                reason:
                    "capacity unknown (not scaled here, no `capacity` metadata): assumed sufficient"
                        .into(),
            };
        };
        // Negative when it is overloaded already: that comes first.
        let spare = f64::from(c.instances) * c.per_instance - c.demand_rps;
        let need = ((p.extra_rps - spare).max(0.0) / c.per_instance - 1e-9).ceil() as u32;
        let can = c.limit.saturating_sub(c.instances);
        let scale_up = need.min(can);
        let up_at = self.now_ms + if scale_up > 0 { c.cold_start_ms } else { 0 };
        let offered = (spare + f64::from(scale_up) * c.per_instance)
            .min(p.extra_rps)
            .max(0.0);
        if p.commit {
            c.instances += scale_up;
            c.demand_rps += offered;
            if let (Some(i), true) = (c.scaled, scale_up > 0) {
                let e = self.committed.entry(i).or_default();
                e.0 += scale_up;
                e.1.push(p.from.clone());
            }
        }
        let what = format!(
            "{}: {:.1} req/s spare at {} x {:.1} req/s (demand {:.1}), may grow to {}",
            p.service, spare, c.instances, c.per_instance, c.demand_rps, c.limit
        );
        if need > can && offered <= 1e-9 {
            Answer::Reject {
                reason: format!("{what}: full"),
            }
        } else if need > can || up_at > p.start_ms {
            Answer::Counter {
                extra_rps: offered,
                start_ms: up_at.max(p.start_ms),
                scale_up,
                reason: if need > can {
                    format!("{what}: takes {offered:.1} req/s")
                } else {
                    format!("{what}: needs {scale_up} more, ready after its cold start")
                },
            }
        } else {
            Answer::Confirm {
                scale_up,
                reason: format!("{what}: fits with {scale_up} more"),
            }
        }
    }
}

/// An unscaled service's capacity from its instances' `capacity` metadata (requests/s
/// each), if every instance has it.
pub fn from_metadata(
    snap: &crate::resources::Snapshot,
    service: &str,
    demand_rps: f64,
) -> Option<Capacity> {
    let Some(Body::Cluster(c)) = snap
        .get(presage_api::types::CLUSTER)?
        .items
        .get(service)?
        .body
        .as_ref()
    else {
        return None;
    };
    let caps: Vec<f64> = c
        .endpoints
        .iter()
        .map(|e| crate::discovery::record::capacity(&e.metadata))
        .collect::<Option<Vec<f64>>>()?;
    if caps.is_empty() {
        return None;
    }
    let n = caps.len() as u32;
    Some(Capacity {
        per_instance: caps.iter().sum::<f64>() / f64::from(n),
        instances: n,
        limit: n,
        demand_rps,
        cold_start_ms: 0,
        scaled: None,
    })
}

/// Requests/s that the callers' current capacity can send `service`: Σ ratio ×
/// instances × per-instance capacity over its scaled callers.
pub fn committed_to(service: &str, edges: &[Edge], callers: &BTreeMap<String, f64>) -> f64 {
    edges
        .iter()
        .filter(|e| e.to == service)
        .filter_map(|e| Some(e.ratio? * callers.get(&e.from)?))
        .sum()
}

/// Requests/s each service is expected to receive: the highest of its observed rate,
/// its forecast's bound and what its callers pass on (ratio × what they serve: their
/// demand, up to their capacity), propagated along the edges (a few passes: call chains
/// are short, and a cycle stops growing at the callers' capacity).
pub fn demands(
    own: &BTreeMap<String, f64>,
    capacity: &BTreeMap<String, f64>,
    edges: &[Edge],
) -> BTreeMap<String, f64> {
    let mut d = own.clone();
    for _ in 0..8 {
        let mut next = own.clone();
        for e in edges {
            let Some(r) = e.ratio else { continue };
            let demand = d.get(&e.from).copied().unwrap_or(0.0);
            let served = capacity.get(&e.from).map_or(demand, |c| demand.min(*c));
            *next.entry(e.to.clone()).or_default() += 0.0;
            let to = next.get_mut(&e.to).expect("inserted");
            *to = to.max(r * served);
        }
        if next == d {
            break;
        }
        d = next;
    }
    d
}

/// Negotiates every planned scale-up of a service with dependencies; lowers what the
/// chain cannot carry, raises the dependencies that scale for it, records each
/// negotiation and alerts on a failed one.
pub(super) async fn run(
    scaled: &[super::Scaled],
    planned: &mut [super::Planned],
    inputs: &super::Inputs,
    shared: &super::Autoscaling,
    now_ms: i64,
) {
    let edges = inputs.deps.edges(now_ms);
    if edges.is_empty() {
        return;
    }
    let now_s = now_ms / 1000;
    let snap = inputs.resources.snapshot();
    let names: std::collections::BTreeSet<&str> = edges
        .iter()
        .flat_map(|e| [e.from.as_str(), e.to.as_str()])
        .collect();
    let mut own: BTreeMap<String, f64> = names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                super::observed(&inputs.load, n, now_s).floor_rps(),
            )
        })
        .collect();
    let mut capacity = BTreeMap::new();
    for (s, p) in scaled.iter().zip(planned.iter()) {
        let o = own.entry(s.cfg.service.clone()).or_default();
        *o = o.max(p.decision.forecast_upper_rps.unwrap_or(0.0));
        capacity.insert(
            s.cfg.service.clone(),
            f64::from(p.current) * s.capacity.rps(),
        );
    }
    let demand = demands(&own, &capacity, &edges);
    let mut services = BTreeMap::new();
    for (i, (s, p)) in scaled.iter().zip(planned.iter()).enumerate() {
        let policy = shared
            .policy(&s.cfg.service)
            .unwrap_or_else(|| s.cfg.policy.clone());
        let mut limit = s.planner.config().max_instances;
        if let (Some(max), true) = (policy.max_cost_per_hour, policy.price_per_hour > 0.0) {
            limit = limit.min((max / policy.price_per_hour).floor() as u32);
        }
        services.insert(
            s.cfg.service.clone(),
            Capacity {
                per_instance: s.capacity.rps(),
                instances: p.target,
                limit: limit.max(p.target),
                demand_rps: demand.get(&s.cfg.service).copied().unwrap_or(0.0),
                cold_start_ms: s.planner.config().cold_start.as_millis() as i64,
                scaled: Some(i),
            },
        );
    }
    // What callers already pass on, a scaled dependency is sized for first (within its
    // limit): load flowing or agreed to stays carried when the callers hold.
    for (i, s) in scaled.iter().enumerate() {
        let name = &s.cfg.service;
        let Some(c) = services
            .get_mut(name)
            .filter(|_| edges.iter().any(|e| &e.to == name))
        else {
            continue;
        };
        let required = c.required();
        if required > c.instances {
            planned[i].adjustments.push(format!(
                "its callers pass on {:.1} req/s: {required} instances",
                c.demand_rps
            ));
            planned[i].target = required;
            c.instances = required;
        }
    }
    for n in &names {
        if !services.contains_key(*n) {
            let d = demand.get(*n).copied().unwrap_or(0.0);
            if let Some(c) = from_metadata(&snap, n, d) {
                services.insert(n.to_string(), c);
            }
        }
    }
    let mut managers = Managers {
        now_ms,
        services,
        committed: BTreeMap::new(),
    };
    for i in 0..scaled.len() {
        let (s, p) = (&scaled[i], &planned[i]);
        let service = s.cfg.service.as_str();
        let cap = s.capacity.rps();
        // What the new instances can serve, and so send on: the worst case the chain
        // must be ready for (the load already flowing is in the dependencies' demand).
        // An operator's minimum stands (it is about availability, not load): only what
        // is above it and above the current count is negotiated.
        let floor = s.planner.config().min_instances.max(p.current);
        let extra = f64::from(p.target.saturating_sub(floor)) * cap;
        if extra <= 1e-9 || !edges.iter().any(|e| e.from == service) {
            continue;
        }
        let req = crate::negotiate::Request {
            service,
            current: floor,
            wanted: p.target,
            capacity_rps: cap,
            extra_rps: extra,
            start_ms: now_ms + s.planner.lead().as_millis() as i64,
            // Asked again one cold start on, if a dependency has room only then.
            later_ms: s.planner.lead().as_millis() as i64,
            edges: &edges,
        };
        let n = crate::negotiate::negotiate(
            shared.negotiations.next(),
            now_ms,
            &req,
            crate::negotiate::Exchanges::default(),
            &mut managers,
        )
        .await;
        let p = &mut planned[i];
        if n.granted < p.target {
            p.target = n.granted.max(floor);
            p.adjustments.push(format!(
                "negotiated down from {} to {} instances: the dependencies carry {:.1} of {:.1} req/s more",
                n.wanted, p.target, n.granted_rps, n.extra_rps
            ));
        } else {
            p.adjustments.push(format!(
                "negotiated: the dependencies carry {:.1} req/s more",
                n.extra_rps
            ));
        }
        if !n.degraded.is_empty() {
            p.adjustments
                .push(format!("degraded dependencies: {}", n.degraded.join(", ")));
        }
        match (n.outcome.as_str(), n.deferred_to_ms) {
            ("failed", _) => inputs.alerts.raise_negotiation(&n),
            // Not failed yet: asked again next interval, alerted if no window is left.
            ("deferred", Some(at)) => p.adjustments.push(format!(
                "deferred: a dependency takes it {} s from now",
                (at - now_ms) / 1000
            )),
            _ => inputs.alerts.resolve_negotiation(service),
        }
        for [caller, d] in &n.degraded_edges {
            // The mildest kind among the edges into it: optional before best-effort.
            let kind = if edges.iter().any(|e| &e.to == d && e.kind == Kind::Optional) {
                "optional"
            } else {
                "best_effort"
            };
            shared
                .negotiations
                .degrade(d, kind, caller, now_ms + DEGRADED_FOR_MS);
        }
        publish(&inputs.bus, &n);
        shared.negotiations.record(n);
    }
    for (i, (more, callers)) in managers.committed {
        let want = managers.services[&scaled[i].cfg.service].instances;
        if want > planned[i].target {
            planned[i].adjustments.push(format!(
                "negotiated: {more} more for {}",
                callers.join(", ")
            ));
            planned[i].target = want;
        }
    }
}

/// Marks the clusters of degraded dependencies (`Cluster.degraded`, which the proxies
/// shed by), and clears the marks this autoscaler set once they lapse.
pub(super) async fn mark_degraded(inputs: &super::Inputs, log: &Log, now_ms: i64) {
    let snap = inputs.resources.snapshot();
    for (name, mark, callers) in log.marks(&snap, now_ms) {
        let Some(Body::Cluster(mut c)) = snap
            .get(presage_api::types::CLUSTER)
            .and_then(|t| t.items.get(&name))
            .and_then(|r| r.body.clone())
        else {
            continue;
        };
        c.degraded.clone_from(&mark);
        c.degraded_callers = callers;
        let r = presage_api::Resource::new(name.clone(), Body::Cluster(c));
        match inputs.resources.put(r).await {
            Ok(_) => {
                tracing::info!(service = %name, mark = %mark, "degraded mark changed (for its callers in the negotiation)")
            }
            Err(e) => {
                tracing::error!(service = %name, error = %e, "marking a degraded dependency failed")
            }
        }
    }
}

/// Each exchange (`negotiation.proposal.<dependency>`, `negotiation.answer.<dependency>`)
/// and the outcome (`negotiation.outcome.<service>`) on the event bus.
fn publish(bus: &crate::bus::Bus, n: &Negotiation) {
    for x in &n.exchanges {
        let id = serde_json::json!(n.id);
        let mut proposal = serde_json::to_value(&x.proposal).expect("serializes");
        proposal["negotiation"] = id.clone();
        bus.publish(
            format!("negotiation.proposal.{}", x.proposal.service),
            proposal,
        );
        let mut answer = serde_json::to_value(&x.answer).expect("serializes");
        answer["negotiation"] = id;
        answer["service"] = serde_json::json!(x.proposal.service);
        bus.publish(format!("negotiation.answer.{}", x.proposal.service), answer);
    }
    let mut outcome = serde_json::to_value(n).expect("serializes");
    if let Some(o) = outcome.as_object_mut() {
        o.remove("exchanges");
    }
    bus.publish(format!("negotiation.outcome.{}", n.service), outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str, ratio: f64) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            kind: crate::deps::Kind::Mandatory,
            ratio: Some(ratio),
            source: "manual",
            manual: None,
            discovered: None,
        }
    }

    #[test]
    fn demand_flows_down_the_chain_up_to_each_callers_capacity() {
        let edges = [edge("frontend", "api", 1.0), edge("api", "db", 2.0)];
        let own = [("frontend".to_string(), 20.0), ("db".to_string(), 3.0)].into();
        // frontend serves 5 of its 20; api passes on twice what it gets.
        let cap = [("frontend".to_string(), 5.0)].into();
        let d = demands(&own, &cap, &edges);
        assert_eq!(d["api"], 5.0);
        assert_eq!(d["db"], 10.0);
        // A cycle settles.
        let edges = [edge("a", "b", 1.0), edge("b", "a", 1.0)];
        let own = [("a".to_string(), 4.0)].into();
        let cap = [("a".to_string(), 10.0), ("b".to_string(), 10.0)].into();
        assert_eq!(demands(&own, &cap, &edges)["b"], 4.0);
    }

    #[test]
    fn a_manager_confirms_what_fits_scales_within_its_limit_and_plans_only_on_commit() {
        let mut m = Managers {
            now_ms: 0,
            services: [(
                "db".to_string(),
                Capacity {
                    per_instance: 10.0,
                    instances: 1,
                    limit: 2,
                    demand_rps: 5.0,
                    cold_start_ms: 0,
                    scaled: Some(3),
                },
            )]
            .into(),
            committed: BTreeMap::new(),
        };
        let p = |extra: f64, commit: bool| Proposal {
            from: "api".into(),
            service: "db".into(),
            extra_rps: extra,
            start_ms: 0,
            commit,
        };
        assert!(matches!(
            m.decide(&p(5.0, false)),
            Answer::Confirm { scale_up: 0, .. }
        ));
        assert!(matches!(
            m.decide(&p(15.0, false)),
            Answer::Confirm { scale_up: 1, .. }
        ));
        assert!(
            matches!(m.decide(&p(40.0, false)), Answer::Counter { extra_rps, scale_up: 1, .. } if extra_rps == 15.0)
        );
        assert!(m.committed.is_empty(), "offers plan nothing");
        m.decide(&p(15.0, true));
        assert_eq!(m.committed.get(&3), Some(&(1, vec!["api".to_string()])));
        // Now full: a further proposal is rejected.
        assert!(matches!(m.decide(&p(1.0, false)), Answer::Reject { .. }));
        // An unknown service confirms.
        let unknown = Proposal {
            service: "cache".into(),
            ..p(100.0, false)
        };
        assert!(matches!(m.decide(&unknown), Answer::Confirm { .. }));
    }
}
