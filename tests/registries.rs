//! Discovery from Consul and Kubernetes through their real client code (rs-consul,
//! kube) against a loopback replay server: neither registry can run on this machine
//! (not in Debian, PyPI or npm, and no container engine). The responses are the
//! official API references' samples (`tests/fixtures/{consul,kubernetes}/`, sources in
//! `tests/fixtures/README.md`) with addresses pointing at real upstream servers, so
//! the path registry → control plane → proxy → upstream runs over real sockets.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::replay::{Replay, Reply};
use support::*;

async fn mesh(discovery: &str, dir: &TempDir) -> (ControlPlane, Proxy) {
    let cfg = dir.0.join("cp.yaml");
    std::fs::write(
        &cfg,
        // Round robin: every instance is tried within a few requests (P2C over latency
        // may keep away from one for a while).
        format!(
            "discovery:\n{discovery}\nservices:\n  - {{name: web, load_balancer: weighted_round_robin}}\nroutes:\n  - {{name: all, cluster: web}}\n"
        ),
    )
    .unwrap();
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, Some(&cfg)).await;
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n",
        cp.url()
    )))
    .await;
    (cp, proxy)
}

/// Polls until the proxy's answers come from exactly the upstreams named in `want`
/// (empty: a 503), then returns when that was first seen.
async fn until_served_by(proxy: &Proxy, want: &[&str]) -> Instant {
    let c = h1_client();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_until(Duration::from_secs(10), || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..(4 * want.len()).max(1) {
            let a = get(&c, &proxy.url("/")).await;
            if a.status == StatusCode::SERVICE_UNAVAILABLE && want.is_empty() {
                return Some(Instant::now());
            }
            if a.status != StatusCode::OK {
                return None;
            }
            seen.insert(a.json()["service"].as_str().unwrap_or("").to_string());
        }
        (seen.into_iter().collect::<Vec<_>>() == want).then(Instant::now)
    })
    .await
    .unwrap_or_else(|| panic!("the proxy was never served by exactly {want:?}"))
}

async fn metric(cp: &ControlPlane, name: &str, registry: &str) -> f64 {
    let res = h1_client()
        .get(format!("http://{}/metrics", cp.api).parse().unwrap())
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    metric_sum(
        std::str::from_utf8(&body).unwrap(),
        name,
        &[("registry", registry)],
    )
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

// === Consul ===

/// The reference's health entry, re-pointed at `up` as instance `id` on node `node`.
fn consul_entry(id: &str, node: &str, up: &Upstream, tags: &[&str]) -> Value {
    let mut e = fixture_json("consul/health-service.json")[0].clone();
    e["Node"]["Node"] = json!(node);
    e["Service"]["ID"] = json!(id);
    e["Service"]["Service"] = json!("web");
    e["Service"]["Address"] = json!(up.addr.ip().to_string());
    e["Service"]["Port"] = json!(up.addr.port());
    e["Service"]["Tags"] = json!(tags);
    e
}

fn consul_catalog(replay: &Replay, index: u64, with_web: bool) {
    let mut services = fixture_json("consul/catalog-services.json");
    if with_web {
        services["web"] = json!(["zone=z1"]);
    }
    replay.set(
        "/v1/catalog/services",
        Reply {
            body: services.to_string(),
            consul_index: Some(index),
        },
    );
}

fn consul_health(replay: &Replay, index: u64, entries: Vec<Value>) {
    consul_health_of(replay, "web", index, entries);
}

fn consul_health_of(replay: &Replay, service: &str, index: u64, entries: Vec<Value>) {
    replay.set(
        &format!("/v1/health/service/{service}"),
        Reply {
            body: Value::Array(entries).to_string(),
            consul_index: Some(index),
        },
    );
}

#[tokio::test]
async fn consul_blocking_queries_carry_passing_instances_to_the_proxy_within_a_second() {
    let replay = Replay::start().await;
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    consul_catalog(&replay, 10, true);
    for s in ["redis", "postgresql"] {
        consul_health_of(&replay, s, 1, vec![]);
    }
    consul_health(
        &replay,
        20,
        vec![consul_entry("web-a", "n1", &a, &["zone=z1", "price=0.25"])],
    );
    let dir = TempDir::new();
    let (cp, proxy) = mesh(
        &format!("  consul:\n    address: {}\n    wait: 30s", replay.url()),
        &dir,
    )
    .await;
    until_served_by(&proxy, &["a"]).await;
    let web = cp.get("/v1/services/web").await;
    let meta = &web["endpoints"][0]["metadata"];
    assert_eq!(meta["zone"], "z1", "{web}");
    assert_eq!(meta["price"], "0.25", "{web}");
    // The fixture's other services have no passing instances, and `consul` itself is
    // not watched: none of them becomes a cluster.
    for s in ["redis", "postgresql", "consul"] {
        let path = format!("/v1/services/{s}");
        assert_eq!(
            cp.call(http::Method::GET, &path, "").await.0,
            StatusCode::NOT_FOUND
        );
    }
    assert!(!replay
        .log()
        .iter()
        .any(|l| l.starts_with("/v1/health/service/consul")));

    // The client asked for passing instances only, and came back with the index.
    let log = replay.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("/v1/health/service/web?passing=true") && l.contains("index=20")),
        "{log:#?}"
    );

    // A second instance passes its checks: the held query answers, within a second.
    let changed = Instant::now();
    consul_health(
        &replay,
        21,
        vec![
            consul_entry("web-a", "n1", &a, &[]),
            consul_entry("web-b", "n2", &b, &[]),
        ],
    );
    let seen = until_served_by(&proxy, &["a", "b"]).await;
    assert!(
        seen - changed < Duration::from_secs(1),
        "took {:?}",
        seen - changed
    );

    // `a` fails a check (Consul leaves it out of ?passing=true).
    let changed = Instant::now();
    consul_health(&replay, 22, vec![consul_entry("web-b", "n2", &b, &[])]);
    let seen = until_served_by(&proxy, &["b"]).await;
    assert!(
        seen - changed < Duration::from_secs(1),
        "took {:?}",
        seen - changed
    );

    // Bad entries (no port, a price that is not a number, a bad id) are skipped and
    // counted; the good instance keeps serving.
    let mut no_port = consul_entry("web-c", "n3", &a, &[]);
    no_port["Service"]["Port"] = json!(0);
    consul_health(
        &replay,
        23,
        vec![
            consul_entry("web-b", "n2", &b, &[]),
            no_port,
            consul_entry("web-d", "n4", &a, &["price=cheap"]),
            consul_entry("Web D", "n5", &a, &[]),
        ],
    );
    wait_until(Duration::from_secs(5), || async {
        (metric(&cp, "presage_cp_discovery_skipped_total", "consul").await >= 3.0).then_some(())
    })
    .await
    .expect("the bad entries were counted");
    until_served_by(&proxy, &["b"]).await;

    // An outage (Consul answers 500): visible in metrics, the last endpoints stay.
    replay.fail(Some(StatusCode::INTERNAL_SERVER_ERROR));
    consul_health(&replay, 24, vec![]); // wakes the held queries into the failure
    wait_until(Duration::from_secs(10), || async {
        (metric(&cp, "presage_cp_discovery_up", "consul").await == 0.0).then_some(())
    })
    .await
    .expect("the outage shows in presage_cp_discovery_up");
    until_served_by(&proxy, &["b"]).await;

    // Back, and `web` has left the catalog: its cluster empties (the proxy answers 503).
    consul_catalog(&replay, 30, false);
    consul_health(&replay, 25, vec![consul_entry("web-b", "n2", &b, &[])]);
    replay.fail(None);
    wait_until(Duration::from_secs(10), || async {
        (metric(&cp, "presage_cp_discovery_up", "consul").await == 1.0).then_some(())
    })
    .await
    .expect("the registry is up again");
    until_served_by(&proxy, &[]).await;
}
