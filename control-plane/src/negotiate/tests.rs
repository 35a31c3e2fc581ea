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
}

impl Fixed {
    fn with(mut self, service: &str, spare: f64, can_add: u32) -> Fixed {
        self.spare.insert(service.into(), spare);
        self.can_add.insert(service.into(), can_add);
        self
    }
}

impl CapacityManager for Fixed {
    fn answer(&mut self, p: &Proposal) -> Answer {
        let spare = self.spare[&p.service];
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
        edges,
    }
}

#[test]
fn the_chain_carries_what_its_capped_database_takes() {
    let edges = chain();
    // frontend wants +4 (40 req/s): api can grow, db (2 calls per api request) has 10
    // spare and one more instance: 20 of the 80 it would get.
    let mut m = Fixed::default().with("api", 10.0, 9).with("db", 10.0, 1);
    let n = negotiate(1, 0, &req(&edges, 1, 5), &mut m);
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

#[test]
fn a_later_counter_proposal_is_accepted_in_full() {
    let edges = chain();
    let mut m = Fixed {
        cold_start_ms: 30_000,
        ..Fixed::default()
    }
    .with("api", 100.0, 0)
    .with("db", 0.0, 10);
    let n = negotiate(1, 0, &req(&edges, 1, 3), &mut m);
    assert_eq!((n.granted, n.outcome.as_str()), (3, "confirmed"), "{n:#?}");
    assert!(matches!(
        n.exchanges[1].answer,
        Answer::Counter { extra_rps, start_ms: 31_000, scale_up: 4, .. } if extra_rps == 40.0
    ));
}

#[test]
fn optional_dependencies_degrade_instead_of_blocking() {
    let mut edges = chain();
    edges.push(edge("frontend", "recommendations", Kind::Optional, 1.0));
    edges.push(edge("frontend", "ads", Kind::BestEffort, 0.5));
    let mut m = Fixed::default()
        .with("api", 100.0, 0)
        .with("db", 200.0, 0)
        .with("recommendations", 0.0, 0)
        .with("ads", 5.0, 0);
    let n = negotiate(1, 0, &req(&edges, 1, 3), &mut m);
    assert_eq!((n.granted, n.outcome.as_str()), (3, "confirmed"), "{n:#?}");
    assert_eq!(n.degraded, ["ads", "recommendations"]);
}

#[test]
fn a_full_mandatory_dependency_fails_the_change_after_smaller_steps() {
    let edges = chain();
    let mut m = Fixed::default().with("api", 100.0, 0).with("db", 0.0, 0);
    let n = negotiate(1, 0, &req(&edges, 2, 4), &mut m);
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

#[test]
fn cycles_are_not_followed_and_unknown_ratios_ask_nothing() {
    let mut edges = chain();
    edges.push(edge("db", "frontend", Kind::Mandatory, 1.0));
    edges.push(Edge {
        ratio: None,
        ..edge("frontend", "search", Kind::Mandatory, 1.0)
    });
    let mut m = Fixed::default().with("api", 100.0, 0).with("db", 100.0, 0);
    let n = negotiate(1, 0, &req(&edges, 1, 2), &mut m);
    assert_eq!(n.outcome, "confirmed");
    assert!(n
        .exchanges
        .iter()
        .all(|x| x.proposal.service != "frontend" && x.proposal.service != "search"));
}
