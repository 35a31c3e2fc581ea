//! Discovery from Consul and Kubernetes through their real client code (rs-consul,
//! kube) against a loopback replay server: neither registry can run on this machine
//! (not in Debian, PyPI or npm, and no container engine). The responses are the
//! official API references' samples (`tests/fixtures/{consul,kubernetes}/`, sources in
//! `tests/fixtures/README.md`) with addresses pointing at real upstream servers, so
//! the path registry → control plane → proxy → upstream runs over real sockets.

use crate::support;

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::replay::{Replay, Reply};
use support::*;

async fn mesh(discovery: &str, dir: &TempDir) -> (ControlPlane, Proxy) {
    // Round robin: every instance is tried within a few requests (P2C over latency may
    // keep away from one for a while).
    let cp = ControlPlane::with_config(
        &dir.0,
        &format!(
            "discovery:\n{discovery}\nservices:\n  - {{name: web, load_balancer: weighted_round_robin}}\nroutes:\n  - {{name: all, cluster: web}}\n"
        ),
    )
    .await;
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

/// Waits until a discovery metric of `registry` reaches `want` (or, for the `up`
/// gauge, equals it).
async fn until_metric(cp: &ControlPlane, name: &str, registry: &str, want: f64, what: &str) {
    let exact = name == "presage_cp_discovery_up";
    wait_until(Duration::from_secs(10), || async {
        let v = metric(cp, name, registry).await;
        (if exact { v == want } else { v >= want }).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{what}: {name}{{registry={registry}}} never reached {want}"));
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
    until_metric(
        &cp,
        "presage_cp_discovery_skipped_total",
        "consul",
        3.0,
        "the bad entries were counted",
    )
    .await;
    until_served_by(&proxy, &["b"]).await;

    // An outage (Consul answers 500): visible in metrics, the last endpoints stay.
    replay.fail(Some(StatusCode::INTERNAL_SERVER_ERROR));
    consul_health(&replay, 24, vec![]); // wakes the held queries into the failure
    until_metric(
        &cp,
        "presage_cp_discovery_up",
        "consul",
        0.0,
        "the outage shows in presage_cp_discovery_up",
    )
    .await;
    until_served_by(&proxy, &["b"]).await;

    // Back, and `web` has left the catalog: its cluster empties (the proxy answers 503).
    consul_catalog(&replay, 30, false);
    consul_health(&replay, 25, vec![consul_entry("web-b", "n2", &b, &[])]);
    replay.fail(None);
    until_metric(
        &cp,
        "presage_cp_discovery_up",
        "consul",
        1.0,
        "the registry is up again",
    )
    .await;
    until_served_by(&proxy, &[]).await;
}

/// A service whose health query fails reports the registry down; once the service
/// leaves the catalog, nothing is failing and the registry is reported up again.
#[tokio::test]
async fn consul_is_up_again_when_a_failing_service_leaves_the_catalog() {
    let replay = Replay::start().await;
    consul_catalog(&replay, 10, true);
    for s in ["redis", "postgresql"] {
        consul_health_of(&replay, s, 1, vec![]);
    }
    // No reply set for `web`'s health: it answers 404, an error for the client.
    let dir = TempDir::new();
    let (cp, _proxy) = mesh(
        &format!("  consul:\n    address: {}\n    wait: 30s", replay.url()),
        &dir,
    )
    .await;
    until_metric(
        &cp,
        "presage_cp_discovery_up",
        "consul",
        0.0,
        "web's failing health query shows",
    )
    .await;
    consul_catalog(&replay, 11, false);
    until_metric(
        &cp,
        "presage_cp_discovery_up",
        "consul",
        1.0,
        "up once web has left the catalog",
    )
    .await;
}

// === Kubernetes ===

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices";
const PODS: &str = "/api/v1/namespaces/shop/pods";

/// The reference's EndpointSlice, as slice `name` of Service `web` holding one endpoint:
/// pod `pod` at `up`, with the given readiness.
fn k8s_slice(name: &str, pod: &str, up: &Upstream, ready: bool, rv: u64) -> Value {
    let mut s = fixture_json("kubernetes/endpointslice.json");
    s["metadata"]["name"] = json!(name);
    s["metadata"]["namespace"] = json!("shop");
    s["metadata"]["resourceVersion"] = json!(rv.to_string());
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!("web");
    s["ports"][0]["port"] = json!(up.addr.port());
    let ep = &mut s["endpoints"][0];
    ep["addresses"] = json!([up.addr.ip().to_string()]);
    ep["conditions"]["ready"] = json!(ready);
    ep["hostname"] = json!(pod);
    ep["targetRef"] = json!({"kind": "Pod", "namespace": "shop", "name": pod});
    s
}

/// The reference's Pod, named `name`, with `presage.io/` annotations.
fn k8s_pod(name: &str, annotations: Value, rv: u64) -> Value {
    let mut p = fixture_json("kubernetes/pod.json");
    p["metadata"]["name"] = json!(name);
    p["metadata"]["namespace"] = json!("shop");
    p["metadata"]["resourceVersion"] = json!(rv.to_string());
    p["metadata"]["labels"] = json!({"app": "web", "app.kubernetes.io/version": "v3"});
    p["metadata"]["annotations"] = annotations;
    p
}

/// The reference's list envelope around `items`.
fn k8s_list(kind: &str, api_version: &str, items: Vec<Value>, rv: u64) -> Reply {
    let mut l = fixture_json("kubernetes/list.json");
    l["kind"] = json!(kind);
    l["apiVersion"] = json!(api_version);
    l["metadata"]["resourceVersion"] = json!(rv.to_string());
    l["items"] = Value::Array(items);
    Reply {
        body: l.to_string(),
        consul_index: None,
    }
}

/// One watch event line in the reference's envelope.
fn k8s_event(kind: &str, object: Value) -> String {
    let mut e = fixture_json("kubernetes/watch-event.json");
    e["type"] = json!(kind);
    e["object"] = object;
    e.to_string()
}

/// Waits until the control plane has both watches open, so pushed events are seen.
async fn k8s_watching(replay: &Replay) {
    wait_until(Duration::from_secs(20), || async {
        (replay.watchers(SLICES) > 0 && replay.watchers(PODS) > 0).then_some(())
    })
    .await
    .expect("the control plane opened both watches");
}

#[tokio::test]
async fn kubernetes_endpointslice_watch_carries_ready_endpoints_to_the_proxy_within_a_second() {
    let replay = Replay::start().await;
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    replay.set(
        SLICES,
        k8s_list(
            "EndpointSliceList",
            "discovery.k8s.io/v1",
            vec![k8s_slice("web-a", "web-a", &a, true, 100)],
            100,
        ),
    );
    replay.set(
        PODS,
        k8s_list(
            "PodList",
            "v1",
            vec![k8s_pod("web-a", json!({"presage.io/price": "0.25"}), 100)],
            100,
        ),
    );
    let dir = TempDir::new();
    // The real client path: kube reads this kubeconfig and talks to the replay server.
    let kubeconfig = dir.0.join("kubeconfig");
    replay.kubeconfig(&kubeconfig);
    let (cp, proxy) = mesh(
        &format!(
            "  kubernetes:\n    kubeconfig: {}\n    namespace: shop",
            kubeconfig.display()
        ),
        &dir,
    )
    .await;
    until_served_by(&proxy, &["a"]).await;
    let web = cp.get("/v1/services/web").await;
    let meta = &web["endpoints"][0]["metadata"];
    assert_eq!(meta["instance"], "web-a", "{web}");
    assert_eq!(meta["price"], "0.25", "pod annotation: {web}");
    assert_eq!(meta["version"], "v3", "pod label: {web}");
    assert_eq!(meta["zone"], "us-west2-a", "endpoint zone: {web}");
    assert_eq!(meta["label.app"], "web", "{web}");
    let log = replay.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with(SLICES)
                && l.contains("labelSelector=kubernetes.io%2Fservice-name")),
        "slices selected by their Service label: {log:#?}"
    );
    k8s_watching(&replay).await;

    // A second ready endpoint appears in a new slice.
    let changed = Instant::now();
    replay.push(
        SLICES,
        &k8s_event("ADDED", k8s_slice("web-b", "web-b", &b, true, 101)),
    );
    let seen = until_served_by(&proxy, &["a", "b"]).await;
    assert!(
        seen - changed < Duration::from_secs(1),
        "took {:?}",
        seen - changed
    );

    // web-a stops being ready.
    let changed = Instant::now();
    replay.push(
        SLICES,
        &k8s_event("MODIFIED", k8s_slice("web-a", "web-a", &a, false, 102)),
    );
    let seen = until_served_by(&proxy, &["b"]).await;
    assert!(
        seen - changed < Duration::from_secs(1),
        "took {:?}",
        seen - changed
    );

    // A bad annotation on web-b's pod: skipped and counted, web-b keeps serving.
    replay.push(
        PODS,
        &k8s_event(
            "ADDED",
            k8s_pod("web-b", json!({"presage.io/capacity": "lots"}), 103),
        ),
    );
    until_metric(
        &cp,
        "presage_cp_discovery_skipped_total",
        "kubernetes",
        1.0,
        "the bad annotation was counted",
    )
    .await;
    until_served_by(&proxy, &["b"]).await;

    // The API server fails: visible in metrics, the last endpoints keep serving.
    replay.fail(Some(StatusCode::INTERNAL_SERVER_ERROR));
    until_metric(
        &cp,
        "presage_cp_discovery_up",
        "kubernetes",
        0.0,
        "the outage shows in presage_cp_discovery_up",
    )
    .await;
    until_served_by(&proxy, &["b"]).await;

    // Back; web-b's slice is deleted: the cluster empties (the proxy answers 503).
    replay.set(
        SLICES,
        k8s_list(
            "EndpointSliceList",
            "discovery.k8s.io/v1",
            vec![
                k8s_slice("web-a", "web-a", &a, false, 102),
                k8s_slice("web-b", "web-b", &b, true, 101),
            ],
            103,
        ),
    );
    replay.fail(None);
    k8s_watching(&replay).await;
    replay.push(
        SLICES,
        &k8s_event("DELETED", k8s_slice("web-b", "web-b", &b, true, 104)),
    );
    until_served_by(&proxy, &[]).await;
    until_metric(
        &cp,
        "presage_cp_discovery_up",
        "kubernetes",
        1.0,
        "the registry is up again",
    )
    .await;
}

/// What `presage sample-service --register-consul` sent, by path.
fn agent_writes(replay: &Replay, path_prefix: &str) -> Vec<support::replay::Write> {
    replay
        .writes()
        .into_iter()
        .filter(|w| w.path.starts_with(path_prefix))
        .collect()
}

#[tokio::test]
async fn instances_register_with_the_consul_agent_renew_their_ttl_and_deregister_on_exit() {
    let replay = Replay::start().await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["sample-service", "--listen", "127.0.0.1:0", "--name", "web"])
        .args(["--instance", "web-1", "--zone", "z1", "--price", "0.25"])
        .args(["--register-consul", &replay.url(), "--register-ttl", "3s"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    // Printed once registered.
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr: std::net::SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();

    let reg = agent_writes(&replay, "/v1/agent/service/register");
    assert_eq!(reg.len(), 1, "{reg:?}");
    assert_eq!(reg[0].method, "PUT");
    let body: Value = serde_json::from_str(&reg[0].body).unwrap();
    assert_eq!(body["ID"], "web-1");
    assert_eq!(body["Name"], "web");
    assert_eq!(body["Address"], addr.ip().to_string());
    assert_eq!(body["Port"], addr.port());
    let tags = body["Tags"].as_array().unwrap();
    assert!(
        tags.contains(&json!("zone=z1")) && tags.contains(&json!("price=0.25")),
        "{body}"
    );
    assert_eq!(body["Check"]["TTL"], "3s", "{body}");
    let check = body["Check"]["CheckID"].as_str().unwrap().to_string();

    // The TTL check is passed at a third of the TTL.
    wait_until(Duration::from_secs(5), || async {
        let passes = agent_writes(&replay, &format!("/v1/agent/check/pass/{check}"));
        (passes.len() >= 2).then_some(())
    })
    .await
    .expect("the TTL check was renewed");

    // A clean stop deregisters the service.
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(child.wait().await.unwrap().success());
    let gone = agent_writes(&replay, "/v1/agent/service/deregister/web-1");
    assert_eq!(gone.len(), 1, "{:?}", replay.writes());
}
