//! Negotiation before scaling, live: a control plane scales a three-service chain
//! (frontend calls api once per request, api calls db twice) through dry-run actuators,
//! while a real proxy carries real traffic to frontend. db may grow to two instances of
//! 10 req/s: the chain carries 10 req/s of frontend traffic, so frontend's scale-up is
//! negotiated down to two instances of 5 req/s, db scales for it, and the rest is refused
//! and alerted. An optional dependency (recommendations, 1 req/s) cannot take its share:
//! it is marked degraded, and the proxy sheds the lowest tier's calls to it. The
//! negotiations reach a real NATS server through the event bus exporter.

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use support::control_plane::ControlPlane;
use support::nats::Nats;
use support::*;

const CONFIG: &str = r#"
services:
  - name: frontend
    endpoints: [{ address: "FRONTEND" }]
  - name: recs
    endpoints: [{ address: "RECS", metadata: { capacity: "1" } }]
routes:
  - { name: recs, order: 10, match: { path_prefix: /recs }, cluster: recs }
  - { name: frontend, order: 20, cluster: frontend }
qos_profiles:
  - { name: premium, tier: gold }
dependencies:
  - { from: frontend, to: api, kind: mandatory, ratio: 1 }
  - { from: api, to: db, kind: mandatory, ratio: 2 }
  - { from: frontend, to: recs, kind: optional, ratio: 1 }
autoscaling:
  interval: 300ms
  services:
    - { service: frontend, capacity_rps: 5, max: 10, learn_capacity: false, predictive: false, actuator: { dry_run: {} } }
    - { service: api, capacity_rps: 100, max: 10, predictive: false, actuator: { dry_run: {} } }
    - { service: db, capacity_rps: 10, max: 2, predictive: false, actuator: { dry_run: {} } }
events:
  nats: { url: "NATS", subject_prefix: mesh }
"#;

/// Asserts that one of `service`'s recorded decisions has an adjustment with `text`.
async fn adjusted(cp: &ControlPlane, service: &str, text: &str) {
    let decisions = cp.get(&format!("/v1/decisions?service={service}")).await;
    let found = decisions.as_array().unwrap().iter().any(|d| {
        d["adjustments"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s.as_str().unwrap().contains(text)))
    });
    assert!(found, "{text:?} in {decisions:#}");
}

#[tokio::test]
async fn a_scale_up_is_negotiated_down_to_what_the_capped_database_carries() {
    let (frontend, recs) = (
        Upstream::spawn("frontend").await,
        Upstream::spawn("recs").await,
    );
    let nats = Nats::start().await;
    let follower = async_nats::connect(nats.url.as_str()).await.unwrap();
    let mut published = follower.subscribe("mesh.negotiation.>").await.unwrap();
    follower.flush().await.unwrap();
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(
        &dir.0,
        &CONFIG
            .replace("FRONTEND", &frontend.addr.to_string())
            .replace("RECS", &recs.addr.to_string())
            .replace("NATS", &nats.url),
    )
    .await;
    // The frontend's sidecar (its calls to recs are frontend's).
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: edge\n  service: frontend\n  report_interval: 100ms\n",
        cp.url()
    )))
    .await;
    let c = h1_client();
    wait_until(Duration::from_secs(10), || async {
        (get(&c, &proxy.url("/")).await.status == 200).then_some(())
    })
    .await
    .expect("the proxy routes to frontend");

    // 20 req/s to frontend: it wants ⌈20 / (5 × 0.8)⌉ = 5 instances.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (stop.clone(), proxy.url("/"));
        tokio::spawn(async move {
            let c = h1_client();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                assert_eq!(get(&c, &url).await.status, 200);
            }
        })
    };
    // The chain refuses what db cannot carry: an alert fires.
    let alert = wait_until(Duration::from_secs(30), || async {
        let alerts = cp.get("/v1/alerts").await;
        alerts
            .as_array()?
            .iter()
            .find(|a| a["objective"] == "negotiation" && a["state"] == "firing")
            .cloned()
    })
    .await;
    // recs cannot take its share: marked degraded (optional), pushed to the proxy, which
    // refuses the lowest tier's calls to it at once and lets a gold one through.
    let marked = wait_until(Duration::from_secs(10), || async {
        let recs = cp.get("/v1/services/recs").await;
        (recs["degraded"] == "optional"
            && recs["degraded_callers"] == serde_json::json!(["frontend"]))
        .then_some(())
    })
    .await;
    assert!(marked.is_some(), "{:#}", cp.get("/v1/services/recs").await);
    let shed = wait_until(Duration::from_secs(10), || async {
        let a = get(&c, &proxy.url("/recs")).await;
        (a.status == 503).then_some(a)
    })
    .await
    .expect("bronze calls to recs shed");
    assert_eq!(
        shed.headers["x-presage-error"], "degraded",
        "{:?}",
        shed.headers
    );
    let gold = http::Request::get(proxy.url("/recs"))
        .header("x-presage-qos", "premium")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(send(&c, gold).await.status, 200);
    // Another service's sidecar is not frontend: its bronze calls to recs go through.
    let other = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: side\n  service: search\n",
        cp.url()
    )))
    .await;
    let through = wait_until(Duration::from_secs(10), || async {
        (get(&c, &other.url("/recs")).await.status == 200).then_some(())
    })
    .await;
    assert!(through.is_some(), "only frontend's calls are shed");
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let negotiations = cp.get("/v1/negotiations?service=frontend").await;
    let seen = cp.get("/v1/decisions?service=frontend").await;
    let alert = alert.unwrap_or_else(|| panic!("no negotiation alert: {negotiations:#}\n{seen:#}"));
    assert_eq!(alert["service"], "frontend", "{alert}");

    // frontend holds at two instances: 10 req/s through api is 20 req/s at db, all db
    // can take at its max of two.
    let front = cp.scaled("frontend").await;
    assert_eq!(front["target"], 2, "{front:#}\n{negotiations:#}");
    let db = cp.scaled("db").await;
    assert_eq!(db["target"], 2, "{db:#}");
    let list = negotiations.as_array().unwrap();
    let failed = list
        .iter()
        .find(|n| n["outcome"] == "failed")
        .expect("a failed one");
    assert_eq!(failed["granted"], failed["current"], "{failed:#}");
    let to_db: Vec<&serde_json::Value> = failed["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["proposal"]["service"] == "db")
        .collect();
    // db rejects, or counters with less than one more frontend instance would send it.
    assert!(
        !to_db.is_empty()
            && to_db.iter().all(|x| x["answer"]["answer"] == "reject"
                || (x["answer"]["answer"] == "counter"
                    && x["answer"]["extra_rps"].as_f64().unwrap() < 10.0)),
        "db refused: {failed:#}"
    );
    // db's second instance was planned for api's share of frontend's change: recorded.
    adjusted(&cp, "db", "negotiated: 1 more for api").await;
    adjusted(&cp, "frontend", "negotiated").await;

    // Proposals, answers and outcomes were published to NATS as they happened.
    let mut subjects = std::collections::BTreeSet::new();
    let mut failed_outcome = None;
    while failed_outcome.is_none() {
        let msg = tokio::time::timeout(Duration::from_secs(10), published.next())
            .await
            .expect("negotiation events on NATS")
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        if msg.subject.as_str() == "mesh.negotiation.outcome.frontend"
            && body["outcome"] == "failed"
        {
            failed_outcome = Some(body);
        }
        subjects.insert(msg.subject.to_string());
    }
    for s in [
        "mesh.negotiation.proposal.api",
        "mesh.negotiation.proposal.db",
        "mesh.negotiation.answer.db",
    ] {
        assert!(subjects.contains(s), "{s} in {subjects:?}");
    }
    assert_eq!(failed_outcome.unwrap()["granted"], 2);
    drop((proxy, other));
    cp.stop().await;
}
