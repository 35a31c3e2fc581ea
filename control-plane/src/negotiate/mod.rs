//! Negotiation before scaling: a service that wants more capacity first asks every
//! service it calls (and, transitively, theirs) whether the chain can carry the extra
//! load, and is granted the largest change every mandatory dependency supports.
//!
//! ```text
//!  A wants +Δ instances ─▶ extra = the requests/s they let through (the caller's
//!                         predicted demand its current instances cannot serve)
//!   for each edge A ─▶ D (ratio r): proposal to D's capacity manager: r × extra
//!      D answers confirm | counter (less, or later: after its cold start) | reject
//!      (rejected: a smaller step is proposed, twice at most)
//!      what D takes, D's own dependencies must carry (recursively, no cycles)
//!   granted extra = min over mandatory edges of (carried by D / r)
//!   optional, best-effort edges never limit A: they are marked degraded
//!  commit: the granted extra is proposed again with `commit`, and the managers plan
//!          the scale-ups it needs (two phases: an offer never scales anything)
//! ```
//! This module is the protocol; the capacity managers are the live autoscaler's
//! (`autoscale::negotiation`) or a test's.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::deps::{Edge, Kind};

/// Below this, rates are equal (requests per second).
const EPS: f64 = 1e-9;
/// Smaller steps proposed after a rejection.
const RETRIES: u32 = 2;

/// A change of load proposed to a dependency.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Proposal {
    /// The caller whose change it is.
    pub from: String,
    /// The dependency asked.
    pub service: String,
    /// Extra requests per second the dependency would receive.
    pub extra_rps: f64,
    /// From when (Unix ms): when the caller's new capacity is up.
    pub start_ms: i64,
    /// The second phase: the manager plans what the change needs.
    pub commit: bool,
}

/// A capacity manager's answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// All of it; `scale_up` instances planned (or to be planned on commit) for it.
    Confirm {
        scale_up: u32,
        reason: String,
    },
    /// Less (`extra_rps`), or all of it but from `start_ms` (after its cold start).
    Counter {
        extra_rps: f64,
        start_ms: i64,
        scale_up: u32,
        reason: String,
    },
    Reject {
        reason: String,
    },
}

impl Answer {
    fn accepted(&self, proposed: f64) -> f64 {
        match self {
            Answer::Confirm { .. } => proposed,
            Answer::Counter { extra_rps, .. } => extra_rps.clamp(0.0, proposed),
            Answer::Reject { .. } => 0.0,
        }
    }
}

/// Answers proposals for the services it manages.
pub trait CapacityManager {
    fn answer(&mut self, p: &Proposal) -> Answer;
}

/// One proposal and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Exchange {
    pub proposal: Proposal,
    pub answer: Answer,
    pub kind: crate::deps::Kind,
    /// Calls per request along the edge.
    pub ratio: f64,
}

/// One negotiation and its outcome (`GET /v1/negotiations`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Negotiation {
    pub id: u64,
    pub at_ms: i64,
    pub service: String,
    /// Instances before, wanted, and granted.
    pub current: u32,
    pub wanted: u32,
    pub granted: u32,
    pub extra_rps: f64,
    pub granted_rps: f64,
    /// `confirmed` (all of it), `reduced` (less), `failed` (none of it: alerted).
    pub outcome: String,
    /// Optional and best-effort dependencies that cannot take their share: the proxies
    /// shed or skip calls to them by policy.
    pub degraded: Vec<String>,
    /// Every exchange, offers then commits.
    pub exchanges: Vec<Exchange>,
}

/// What one negotiation works from.
pub struct Request<'a> {
    pub service: &'a str,
    pub current: u32,
    pub wanted: u32,
    /// Per instance: each instance granted lets this much more through, up to `extra_rps`.
    pub capacity_rps: f64,
    /// Requests/s more the wanted instances would serve (and so send on).
    pub extra_rps: f64,
    pub start_ms: i64,
    pub edges: &'a [Edge],
}

/// Negotiates `req.service`'s change with its dependencies through `managers`.
pub fn negotiate(
    id: u64,
    at_ms: i64,
    req: &Request<'_>,
    managers: &mut dyn CapacityManager,
) -> Negotiation {
    let extra = req.extra_rps.max(0.0);
    let mut walk = Walk {
        req,
        managers,
        exchanges: Vec::new(),
        degraded: BTreeSet::new(),
        path: BTreeSet::from([req.service.to_string()]),
        commit: false,
    };
    let allowed = walk.support(req.service, extra).min(extra);
    // All of it, or whole instances of what the chain carries, rounded down.
    let (granted, granted_rps) = if allowed + EPS >= extra {
        (req.wanted, extra)
    } else {
        let add = ((allowed + EPS) / req.capacity_rps).floor() as u32;
        let add = add.min(req.wanted.saturating_sub(req.current));
        (
            req.current + add,
            (f64::from(add) * req.capacity_rps).min(extra),
        )
    };
    if granted_rps > EPS {
        walk.commit = true;
        walk.degraded.clear();
        walk.support(req.service, granted_rps);
    }
    let outcome = if granted >= req.wanted {
        "confirmed"
    } else if granted > req.current {
        "reduced"
    } else {
        "failed"
    };
    Negotiation {
        id,
        at_ms,
        service: req.service.to_string(),
        current: req.current,
        wanted: req.wanted,
        granted,
        extra_rps: extra,
        granted_rps,
        outcome: outcome.into(),
        degraded: walk.degraded.into_iter().collect(),
        exchanges: walk.exchanges,
    }
}

struct Walk<'a, 'b> {
    req: &'a Request<'a>,
    managers: &'b mut dyn CapacityManager,
    exchanges: Vec<Exchange>,
    degraded: BTreeSet<String>,
    /// The services on the way here (a cycle is not followed).
    path: BTreeSet<String>,
    commit: bool,
}

impl Walk<'_, '_> {
    /// How much of `extra` (requests/s more at `service`) its dependencies carry.
    fn support(&mut self, service: &str, extra: f64) -> f64 {
        let mut allowed = extra;
        let edges: Vec<&Edge> = self
            .req
            .edges
            .iter()
            .filter(|e| e.from == service && !self.path.contains(&e.to))
            .collect();
        for e in edges {
            // A discovered edge whose ratio is not known yet asks for nothing.
            let Some(r) = e.ratio.filter(|r| *r > EPS) else {
                continue;
            };
            let want = r * extra;
            let taken = self.ask(service, e, r, want);
            self.path.insert(e.to.clone());
            let carried = if taken > EPS {
                self.support(&e.to, taken).min(taken)
            } else {
                0.0
            };
            self.path.remove(&e.to);
            if e.kind == Kind::Mandatory {
                allowed = allowed.min(carried / r);
            } else if carried + EPS < want {
                self.degraded.insert(e.to.clone());
            }
        }
        allowed.max(0.0)
    }

    /// Proposes `want` to `e.to`, then smaller steps if it rejects; what it takes.
    fn ask(&mut self, from: &str, e: &Edge, ratio: f64, want: f64) -> f64 {
        let mut step = want;
        for attempt in 0..=RETRIES {
            let proposal = Proposal {
                from: from.to_string(),
                service: e.to.clone(),
                extra_rps: step,
                start_ms: self.req.start_ms,
                commit: self.commit,
            };
            let answer = self.managers.answer(&proposal);
            let taken = answer.accepted(step);
            let rejected = matches!(answer, Answer::Reject { .. });
            self.exchanges.push(Exchange {
                proposal,
                answer,
                kind: e.kind,
                ratio,
            });
            if !rejected || self.commit || attempt == RETRIES {
                return taken;
            }
            step /= 2.0;
        }
        0.0
    }
}

#[cfg(test)]
mod tests;
