//! Negotiation before scaling: a service that wants more capacity first asks every
//! service it calls (and, transitively, theirs) whether the chain can carry the extra
//! load, and is granted the largest change every mandatory dependency supports.
//!
//! ```text
//!  A wants +Δ instances ─▶ extra = the requests/s they let through (the caller's
//!                         predicted demand its current instances cannot serve)
//!   for each edge A ─▶ D (ratio r): proposal to D's capacity manager: r × extra
//!      D answers confirm | counter (less, or later: after its cold start) | reject
//!      (rejected: a smaller step is proposed, twice at most; then all of it in a
//!       later window, which defers the change if taken)
//!      every exchange has a timeout; no answer or an error is asked again after a
//!      jittered, doubling backoff, and counts as a rejection when attempts run out
//!      what D takes, D's own dependencies must carry (recursively, no cycles)
//!   granted extra = min over mandatory edges of (carried by D / r)
//!   optional, best-effort edges never limit A: they are marked degraded
//!  commit: the granted extra is proposed again with `commit`, and the managers plan
//!          the scale-ups it needs (two phases: an offer never scales anything)
//! ```
//! This module is the protocol; the capacity managers are the live autoscaler's
//! (`autoscale::negotiation`) or a test's.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

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

/// Answers proposals for the services it manages; an error (it could not be reached,
/// or failed) is retried like a timeout.
pub trait CapacityManager: Send {
    fn answer(&mut self, p: &Proposal) -> impl Future<Output = Result<Answer, String>> + Send;
}

/// How each exchange is run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exchanges {
    /// How long an answer is waited for.
    pub timeout: Duration,
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Before the second try; doubled for each further one, with up to 50% jitter.
    pub backoff: Duration,
}

impl Default for Exchanges {
    fn default() -> Self {
        Exchanges {
            timeout: Duration::from_millis(500),
            attempts: 3,
            backoff: Duration::from_millis(50),
        }
    }
}

/// One proposal and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Exchange {
    pub proposal: Proposal,
    pub answer: Answer,
    pub kind: crate::deps::Kind,
    /// Calls per request along the edge.
    pub ratio: f64,
    /// Tries it took (more than one: a timeout or an error before the answer).
    pub attempts: u32,
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
    /// `confirmed` (all of it), `reduced` (less), `deferred` (none of it now, but a
    /// mandatory dependency takes it in a later window: asked again then), `failed`
    /// (none of it: alerted).
    pub outcome: String,
    /// For `deferred`: from when (Unix ms) the dependencies take it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred_to_ms: Option<i64>,
    /// Optional and best-effort dependencies that cannot take their share: the proxies
    /// shed or skip calls to them by policy.
    pub degraded: Vec<String>,
    /// The edges found degraded, `[caller, dependency]`: only those callers are shed.
    pub degraded_edges: Vec<[String; 2]>,
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
    /// After rejections, all of it is proposed again this much later (0: never).
    pub later_ms: i64,
    pub edges: &'a [Edge],
}

/// Negotiates `req.service`'s change with its dependencies through `managers`.
pub async fn negotiate<M: CapacityManager>(
    id: u64,
    at_ms: i64,
    req: &Request<'_>,
    how: Exchanges,
    managers: &mut M,
) -> Negotiation {
    let extra = req.extra_rps.max(0.0);
    let mut walk = Walk {
        req,
        how,
        managers,
        exchanges: Vec::new(),
        degraded: BTreeSet::new(),
        path: BTreeSet::from([req.service.to_string()]),
        commit: false,
        later: None,
    };
    let allowed = walk.support(req.service, extra).await.min(extra);
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
        walk.support(req.service, granted_rps).await;
    }
    let outcome = if granted >= req.wanted {
        "confirmed"
    } else if granted > req.current {
        "reduced"
    } else if walk.later.is_some() {
        "deferred"
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
        deferred_to_ms: walk.later.filter(|_| outcome == "deferred"),
        degraded: walk
            .degraded
            .iter()
            .map(|[_, to]| to.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        degraded_edges: walk.degraded.into_iter().collect(),
        exchanges: walk.exchanges,
    }
}

struct Walk<'a, 'b, M> {
    req: &'a Request<'a>,
    how: Exchanges,
    managers: &'b mut M,
    exchanges: Vec<Exchange>,
    /// `[caller, dependency]`.
    degraded: BTreeSet<[String; 2]>,
    /// The services on the way here (a cycle is not followed).
    path: BTreeSet<String>,
    commit: bool,
    /// The latest later window a mandatory dependency took what it rejected now in.
    later: Option<i64>,
}

impl<M: CapacityManager> Walk<'_, '_, M> {
    /// How much of `extra` (requests/s more at `service`) its dependencies carry.
    fn support<'s>(
        &'s mut self,
        service: &'s str,
        extra: f64,
    ) -> Pin<Box<dyn Future<Output = f64> + Send + 's>> {
        Box::pin(self.support_inner(service, extra))
    }

    async fn support_inner(&mut self, service: &str, extra: f64) -> f64 {
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
            let taken = self.ask(service, e, r, want).await;
            self.path.insert(e.to.clone());
            let carried = if taken > EPS {
                self.support(&e.to, taken).await.min(taken)
            } else {
                0.0
            };
            self.path.remove(&e.to);
            if e.kind == Kind::Mandatory {
                allowed = allowed.min(carried / r);
            } else if carried + EPS < want {
                self.degraded.insert([service.to_string(), e.to.clone()]);
            }
        }
        allowed.max(0.0)
    }

    /// Proposes `want` to `e.to`, then smaller steps if it rejects, then all of it in
    /// a later window; what it takes now.
    async fn ask(&mut self, from: &str, e: &Edge, ratio: f64, want: f64) -> f64 {
        let mut step = want;
        for attempt in 0..=RETRIES {
            let (answer, taken) = self.exchange(from, e, ratio, step, self.req.start_ms).await;
            if !matches!(answer, Answer::Reject { .. }) || self.commit {
                return taken;
            }
            if attempt == RETRIES {
                break;
            }
            step /= 2.0;
        }
        if self.req.later_ms > 0 && e.kind == Kind::Mandatory {
            let at = self.req.start_ms + self.req.later_ms;
            let (answer, _) = self.exchange(from, e, ratio, want, at).await;
            if !matches!(answer, Answer::Reject { .. }) {
                self.later = self.later.max(Some(at));
            }
        }
        0.0
    }

    /// One proposal, retried on a timeout or an error; recorded with its answer.
    async fn exchange(
        &mut self,
        from: &str,
        e: &Edge,
        ratio: f64,
        extra_rps: f64,
        start_ms: i64,
    ) -> (Answer, f64) {
        let proposal = Proposal {
            from: from.to_string(),
            service: e.to.clone(),
            extra_rps,
            start_ms,
            commit: self.commit,
        };
        let attempts = self.how.attempts.max(1);
        let mut backoff = self.how.backoff;
        let mut answer = None;
        let mut tried = 0;
        let mut last_error = String::new();
        while tried < attempts {
            tried += 1;
            match tokio::time::timeout(self.how.timeout, self.managers.answer(&proposal)).await {
                Ok(Ok(a)) => {
                    answer = Some(a);
                    break;
                }
                Ok(Err(error)) => last_error = error,
                Err(_) => {
                    last_error = format!("no answer within {} ms", self.how.timeout.as_millis())
                }
            }
            if tried < attempts {
                // Jitter: retries of several negotiations do not arrive together.
                let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
                tokio::time::sleep(backoff + jitter).await;
                backoff *= 2;
            }
        }
        let answer = answer.unwrap_or_else(|| Answer::Reject {
            reason: format!("{}: {last_error} ({tried} attempts)", e.to),
        });
        let taken = answer.accepted(extra_rps);
        self.exchanges.push(Exchange {
            proposal,
            answer: answer.clone(),
            kind: e.kind,
            ratio,
            attempts: tried,
        });
        (answer, taken)
    }
}

#[cfg(test)]
mod tests;
