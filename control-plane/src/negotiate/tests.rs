use std::collections::BTreeMap;

use super::*;

/// Capacity managers of fixed services: spare requests/s now, and how many more they
/// could take by scaling (instances of 10 req/s), planned on commit.
#[derive(Default)]
struct Fixed {
    spare: BTreeMap<String, f64>,
    can_add: BTreeMap<String, u32>,
    /// Planned scale-ups, on commit.
    planned: BTreeMap<String, u32>,
    cold_start_ms: i64,
    /// From this start on, every service has this much more spare (a batch job ends).
    freed: Option<(i64, f64)>,
    /// Answers to drop (never answered) or fail before answering, per service.
    stall: BTreeMap<String, u32>,
    fail: BTreeMap<String, u32>,
}

impl Fixed {
    fn with(mut self, service: &str, spare: f64, can_add: u32) -> Fixed {
        self.spare.insert(service.into(), spare);
        self.can_add.insert(service.into(), can_add);
        self
    }
}

impl CapacityManager for Fixed {
    async fn answer(&mut self, p: &Proposal) -> Result<Answer, String> {
        if let Some(n) = self.stall.get_mut(&p.service).filter(|n| **n > 0) {
            *n -= 1;
            std::future::pending::<()>().await;
        }
        if let Some(n) = self.fail.get_mut(&p.service).filter(|n| **n > 0) {
            *n -= 1;
            return Err("connection refused".into());
        }
        Ok(self.decide(p))
    }
}

impl Fixed {
    fn decide(&mut self, p: &Proposal) -> Answer {
        let mut spare = self.spare[&p.service];
        if let Some((_, more)) = self.freed.filter(|(from, _)| p.start_ms >= *from) {
            spare += more;
        }
        let can = self.can_add[&p.service];
        let need = ((p.extra_rps - spare).max(0.0) / 10.0).ceil() as u32;
        let scale_up = need.min(can);
        if p.commit {
            *self.planned.entry(p.service.clone()).or_default() += scale_up;
        }
        let start_ms = p.start_ms + if scale_up > 0 { self.cold_start_ms } else { 0 };
        if need <= can && start_ms == p.start_ms {
            Answer::Confirm {
                scale_up,
                reason: "fits".into(),
            }
        } else if spare + f64::from(can) * 10.0 > 0.0 {
            Answer::Counter {
                extra_rps: (spare + f64::from(can) * 10.0).min(p.extra_rps),
                start_ms,
                scale_up,
                reason: "what fits".into(),
            }
        } else {
            Answer::Reject {
                reason: "full".into(),
            }
        }
    }
}

fn edge(from: &str, to: &str, kind: Kind, ratio: f64) -> Edge {
    Edge {
        from: from.into(),
        to: to.into(),
        kind,
        ratio: Some(ratio),
        source: "manual",
        manual: None,
        discovered: None,
    }
}

fn chain() -> Vec<Edge> {
    vec![
        edge("frontend", "api", Kind::Mandatory, 1.0),
        edge("api", "db", Kind::Mandatory, 2.0),
    ]
}

fn req<'a>(edges: &'a [Edge], current: u32, wanted: u32) -> Request<'a> {
    Request {
        service: "frontend",
        current,
        wanted,
        capacity_rps: 10.0,
        extra_rps: f64::from(wanted - current) * 10.0,
        start_ms: 1000,
        later_ms: 0,
        edges,
    }
}

/// Fast exchanges: tests wait for real timers.
fn how() -> Exchanges {
    Exchanges {
        timeout: std::time::Duration::from_millis(50),
        attempts: 3,
        backoff: std::time::Duration::from_millis(5),
    }
}

#[tokio::test]
async fn the_chain_carries_what_its_capped_database_takes() {
    let edges = chain();
    // frontend wants +4 (40 req/s): api can grow, db (2 calls per api request) has 10
    // spare and one more instance: 20 of the 80 it would get.
    let mut m = Fixed::default().with("api", 10.0, 9).with("db", 10.0, 1);
    let n = negotiate(1, 0, &req(&edges, 1, 5), how(), &mut m).await;
    assert_eq!((n.granted, n.outcome.as_str()), (2, "reduced"), "{n:#?}");
    assert_eq!(n.granted_rps, 10.0);
    // Offers first: api confirms 40, db counters 20 of 80; then the commit of 10 req/s.
    let offers: Vec<(&str, f64, bool)> = n
        .exchanges
        .iter()
        .map(|x| {
            (
                x.proposal.service.as_str(),
                x.proposal.extra_rps,
                x.proposal.commit,
            )
        })
        .collect();
    assert_eq!(
        offers,
        [
            ("api", 40.0, false),
            ("db", 80.0, false),
            ("api", 10.0, true),
            ("db", 20.0, true)
        ]
    );
    assert!(
        matches!(n.exchanges[1].answer, Answer::Counter { extra_rps, .. } if extra_rps == 20.0)
    );
    // Only the commit planned capacity: db one instance (20 req/s over its 10 spare),
    // api none (10 req/s fits its spare).
    assert_eq!(m.planned.get("db"), Some(&1));
    assert_eq!(m.planned.get("api"), Some(&0));
}

#[tokio::test]
async fn a_later_counter_proposal_is_accepted_in_full() {
    let edges = chain();
    let mut m = Fixed {
        cold_start_ms: 30_000,
        ..Fixed::default()
    }
    .with("api", 100.0, 0)
    .with("db", 0.0, 10);
    let n = negotiate(1, 0, &req(&edges, 1, 3), how(), &mut m).await;
    assert_eq!((n.granted, n.outcome.as_str()), (3, "confirmed"), "{n:#?}");
    assert!(matches!(
        n.exchanges[1].answer,
        Answer::Counter { extra_rps, start_ms: 31_000, scale_up: 4, .. } if extra_rps == 40.0
    ));
}

#[tokio::test]
async fn optional_dependencies_degrade_instead_of_blocking() {
    let mut edges = chain();
    edges.push(edge("frontend", "recommendations", Kind::Optional, 1.0));
    edges.push(edge("frontend", "ads", Kind::BestEffort, 0.5));
    let mut m = Fixed::default()
        .with("api", 100.0, 0)
        .with("db", 200.0, 0)
        .with("recommendations", 0.0, 0)
        .with("ads", 5.0, 0);
    let n = negotiate(1, 0, &req(&edges, 1, 3), how(), &mut m).await;
    assert_eq!((n.granted, n.outcome.as_str()), (3, "confirmed"), "{n:#?}");
    assert_eq!(n.degraded, ["ads", "recommendations"]);
    assert_eq!(
        n.degraded_edges,
        [
            ["frontend".to_string(), "ads".to_string()],
            ["frontend".to_string(), "recommendations".to_string()]
        ]
    );
}

#[tokio::test]
async fn a_full_mandatory_dependency_fails_the_change_after_smaller_steps() {
    let edges = chain();
    let mut m = Fixed::default().with("api", 100.0, 0).with("db", 0.0, 0);
    let n = negotiate(1, 0, &req(&edges, 2, 4), how(), &mut m).await;
    assert_eq!((n.granted, n.outcome.as_str()), (2, "failed"), "{n:#?}");
    let to_db: Vec<f64> = n
        .exchanges
        .iter()
        .filter(|x| x.proposal.service == "db")
        .map(|x| x.proposal.extra_rps)
        .collect();
    assert_eq!(
        to_db,
        [40.0, 20.0, 10.0],
        "a smaller step after each rejection"
    );
    assert!(
        n.exchanges.iter().all(|x| !x.proposal.commit),
        "nothing granted, nothing committed"
    );
}

#[tokio::test]
async fn cycles_are_not_followed_and_unknown_ratios_ask_nothing() {
    let mut edges = chain();
    edges.push(edge("db", "frontend", Kind::Mandatory, 1.0));
    edges.push(Edge {
        ratio: None,
        ..edge("frontend", "search", Kind::Mandatory, 1.0)
    });
    let mut m = Fixed::default().with("api", 100.0, 0).with("db", 100.0, 0);
    let n = negotiate(1, 0, &req(&edges, 1, 2), how(), &mut m).await;
    assert_eq!(n.outcome, "confirmed");
    assert!(n
        .exchanges
        .iter()
        .all(|x| x.proposal.service != "frontend" && x.proposal.service != "search"));
}

#[tokio::test]
async fn an_unanswered_or_failed_exchange_is_retried_with_backoff() {
    let edges = chain();
    let mut m = Fixed::default().with("api", 100.0, 0).with("db", 200.0, 0);
    m.stall.insert("api".into(), 1);
    m.fail.insert("db".into(), 1);
    let n = negotiate(1, 0, &req(&edges, 1, 3), how(), &mut m).await;
    assert_eq!(n.outcome, "confirmed", "{n:#?}");
    let attempts: Vec<(&str, u32)> = n
        .exchanges
        .iter()
        .map(|x| (x.proposal.service.as_str(), x.attempts))
        .collect();
    assert_eq!(attempts, [("api", 2), ("db", 2), ("api", 1), ("db", 1)]);
}

#[tokio::test]
async fn a_dependency_that_never_answers_counts_as_a_rejection() {
    let edges = chain();
    let mut m = Fixed::default().with("api", 100.0, 0).with("db", 200.0, 0);
    m.fail.insert("db".into(), u32::MAX);
    let n = negotiate(1, 0, &req(&edges, 1, 3), how(), &mut m).await;
    assert_eq!((n.granted, n.outcome.as_str()), (1, "failed"), "{n:#?}");
    let to_db: Vec<&Exchange> = n
        .exchanges
        .iter()
        .filter(|x| x.proposal.service == "db")
        .collect();
    assert_eq!(to_db.len(), 3, "the step and two smaller ones");
    assert!(to_db.iter().all(|x| x.attempts == 3));
    assert!(
        matches!(&to_db[0].answer, Answer::Reject { reason } if reason.contains("connection refused") && reason.contains("3 attempts")),
        "{:?}",
        to_db[0].answer
    );
}

#[tokio::test]
async fn a_later_window_defers_what_is_rejected_now() {
    let edges = chain();
    // db is full until a minute after the proposed start, then has room for all of it.
    let mut m = Fixed {
        freed: Some((61_000, 80.0)),
        ..Fixed::default()
    }
    .with("api", 100.0, 0)
    .with("db", 0.0, 0);
    let r = Request {
        later_ms: 60_000,
        ..req(&edges, 1, 5)
    };
    let n = negotiate(1, 0, &r, how(), &mut m).await;
    assert_eq!((n.granted, n.outcome.as_str()), (1, "deferred"), "{n:#?}");
    assert_eq!(n.deferred_to_ms, Some(61_000));
    let last = n.exchanges.last().expect("exchanges");
    assert_eq!(
        (
            last.proposal.service.as_str(),
            last.proposal.extra_rps,
            last.proposal.start_ms
        ),
        ("db", 80.0, 61_000),
        "all of it, a window later"
    );
    // Without a later window it fails.
    let n = negotiate(2, 0, &req(&edges, 1, 5), how(), &mut m).await;
    assert_eq!(n.outcome, "failed");
    assert_eq!(n.deferred_to_ms, None);
}
