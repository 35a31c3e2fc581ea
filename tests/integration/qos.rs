//! QoS enforcement in the proxy, end to end over real sockets: tier-priority shedding
//! under overload, per-profile rate limits, and how a request's profile is chosen.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const PROFILES: &str = "qos_profiles:
  - {name: premium, tier: platinum, latency_p99_ms: 200, deadline_ms: 200}
  - {name: basic, tier: bronze}
  - {name: limited, tier: silver, rate_limit_rps: 5}
subjects:
  - {id: alice, profile: premium}
  - {id: acme, kind: tenant, tier: gold}
";

fn qos_config(up: &Upstream, max_in_flight: usize) -> String {
    config(&format!(
        "{PROFILES}routes:\n  - name: all\n    cluster: up\n    qos_profile: basic\nclusters:\n  - name: up\n    max_in_flight: {max_in_flight}\n    endpoints:\n      - address: \"{}\"\n",
        up.addr
    ))
}

fn request(url: &str, headers: &[(&str, &str)]) -> Request<Full<bytes::Bytes>> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::default()).unwrap()
}

/// A control plane from `cfg` and a proxy fed by it (reporting every 100 ms), once the
/// proxy routes its first request and has the control plane's QoS profiles.
async fn mesh(
    dir: &TempDir,
    cfg: &std::path::Path,
) -> (support::control_plane::ControlPlane, Proxy) {
    let cp =
        support::control_plane::ControlPlane::start(&dir.0.join("cp.redb"), None, Some(cfg)).await;
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n  report_interval: 100ms\n",
        cp.url()
    )))
    .await;
    let c = h1_client();
    wait_until(Duration::from_secs(10), || async {
        (send(&c, request(&proxy.url("/"), &[])).await.status == StatusCode::OK).then_some(())
    })
    .await
    .expect("the proxy routes the control plane's route");
    // Profiles come on their own push: wait until the proxy has applied them too.
    if !cp
        .get("/v1/qos/profiles")
        .await
        .as_array()
        .unwrap()
        .is_empty()
    {
        wait_until(Duration::from_secs(10), || async {
            let p = cp.proxy("p1").await?;
            p["acked"].get(presage_api::types::QOS_PROFILE).map(|_| ())
        })
        .await
        .expect("the proxy applied the control plane's QoS profiles");
    }
    (cp, proxy)
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    shed: AtomicUsize,
    other: AtomicUsize,
}

/// `workers` loops sending requests with `headers` until `until`.
fn load(
    proxy: &Proxy,
    workers: usize,
    headers: &'static [(&'static str, &'static str)],
    until: Instant,
) -> (Arc<Tally>, Vec<tokio::task::JoinHandle<()>>) {
    let tally = Arc::new(Tally::default());
    let url = proxy.url("/work?ms=20");
    let tasks = (0..workers)
        .map(|_| {
            let (t, url) = (tally.clone(), url.clone());
            tokio::spawn(async move {
                let c = h1_client();
                while Instant::now() < until {
                    let a = send(&c, request(&url, headers)).await;
                    let counter = match a.status {
                        StatusCode::OK => &t.ok,
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert_eq!(a.headers["x-presage-error"], "shed");
                            assert_eq!(a.headers["retry-after"], "1");
                            &t.shed
                        }
                        _ => &t.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (tally, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platinum_keeps_its_success_rate_while_bronze_is_shed_under_overload() {
    let up = Upstream::spawn("up").await;
    let proxy = Proxy::start(&qos_config(&up, 10)).await;
    // 24 Bronze clients (the route's default profile) against a cluster that takes 10
    // in flight, 20 ms each: Bronze may fill 6 slots and is shed beyond; 3 Platinum
    // clients (alice's profile) always find room.
    let until = Instant::now() + Duration::from_secs(2);
    let (bronze, mut tasks) = load(&proxy, 24, &[], until);
    let (platinum, more) = load(&proxy, 3, &[("x-presage-user", "alice")], until);
    tasks.extend(more);
    for t in tasks {
        t.await.unwrap();
    }
    let get = |t: &Tally| {
        (
            t.ok.load(Ordering::Relaxed),
            t.shed.load(Ordering::Relaxed),
            t.other.load(Ordering::Relaxed),
        )
    };
    let (p_ok, p_shed, p_other) = get(&platinum);
    let (b_ok, b_shed, b_other) = get(&bronze);
    let p_rate = p_ok as f64 / (p_ok + p_shed + p_other) as f64;
    assert!(p_ok > 100, "platinum got too little through: {p_ok}");
    assert!(
        p_rate >= 0.999,
        "platinum success {p_rate} ({p_ok} ok, {p_shed} shed, {p_other} other)"
    );
    assert!(b_shed > 0, "bronze was never shed ({b_ok} ok)");
    assert!(b_ok > 0, "bronze still gets its share");
    assert_eq!(b_other, 0);

    let proxy = &proxy;
    let shed = |tier| async move {
        proxy
            .metric(
                "presage_qos_requests_total",
                &[("tier", tier), ("outcome", "shed")],
            )
            .await
    };
    assert_eq!(shed("bronze").await, b_shed as f64);
    assert_eq!(shed("platinum").await, 0.0);
    let admitted = proxy
        .metric(
            "presage_qos_requests_total",
            &[("tier", "platinum"), ("outcome", "admitted")],
        )
        .await;
    assert_eq!(admitted, p_ok as f64);
}

#[tokio::test]
async fn a_profile_over_its_rate_limit_gets_429_with_retry_after() {
    let up = Upstream::spawn("up").await;
    let proxy = Proxy::start(&qos_config(&up, 0)).await;
    let c = h1_client();
    let url = proxy.url("/");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let a = send(&c, request(&url, &[("x-presage-qos", "limited")])).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(a.headers["x-presage-error"], "rate-limited");
            let after: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=1).contains(&after), "retry-after {after}");
        }
        statuses.push(a.status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    // A burst of one second's worth (5), plus what refills during the loop.
    assert!((5..=7).contains(&ok), "{ok} admitted of 20: {statuses:?}");
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        20 - ok
    );
    // Other profiles are not limited by it.
    for _ in 0..20 {
        let a = send(&c, request(&url, &[("x-presage-qos", "premium")])).await;
        assert_eq!(a.status, StatusCode::OK);
    }
}

/// A listener that does not believe its callers (`qos_headers: none`; the default
/// believes loopback and private addresses only) removes the headers by which they
/// would choose their own treatment: they get the route's default profile, and the
/// upstream never sees the claims.
#[tokio::test]
async fn an_untrusted_caller_cannot_choose_its_own_treatment() {
    let up = Upstream::spawn("up").await;
    let cfg = qos_config(&up, 0).replacen(
        "    address: 127.0.0.1:0\n",
        "    address: 127.0.0.1:0\n    qos_headers: none\n",
        1,
    );
    let proxy = Proxy::start(&cfg).await;
    let claims = [
        ("x-presage-qos", "premium"),
        ("x-presage-user", "alice"),
        ("x-presage-tenant", "acme"),
        ("x-presage-timeout-ms", "60000"),
    ];
    let a = send(&h1_client(), request(&proxy.url("/"), &claims)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let seen = a.json()["headers"].clone();
    for (name, _) in claims {
        assert!(
            seen.get(name).is_none(),
            "{name} reached the upstream: {seen}"
        );
    }
    // Not even an unknown profile is looked at.
    let b = send(
        &h1_client(),
        request(&proxy.url("/"), &[("x-presage-qos", "diamond")]),
    )
    .await;
    assert_eq!(b.status, StatusCode::OK);
    let by_tier = |tier: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(
                    "presage_qos_requests_total",
                    &[("tier", tier), ("outcome", "admitted")],
                )
                .await
        }
    };
    assert_eq!(by_tier("bronze").await, 2.0, "the route's profile, basic");
    assert_eq!(by_tier("platinum").await + by_tier("gold").await, 0.0);
}

#[tokio::test]
async fn an_unknown_profile_is_the_clients_error() {
    let up = Upstream::spawn("up").await;
    let proxy = Proxy::start(&qos_config(&up, 0)).await;
    let a = send(
        &h1_client(),
        request(&proxy.url("/"), &[("x-presage-qos", "diamond")]),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.headers["x-presage-error"], "unknown-qos-profile");
    assert!(a.body.contains("\"diamond\""), "{}", a.body);
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn bad_qos_config_is_rejected_with_its_location() {
    let bad = "qos_profiles:\n  - {name: p, tier: gold, reliability: 1.5}\nsubjects:\n  - {id: bob, profile: nope}\nroutes:\n  - {name: all, cluster: up, qos_profile: ghost}\nclusters:\n  - {name: up, endpoints: [{address: \"127.0.0.1:1\"}]}\n";
    let dir = TempDir::new();
    let path = dir.0.join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        ":2:",
        "qos_profiles[0].reliability: expected a fraction in 0..=1, found 1.5",
        "subjects[0].profile: unknown QoS profile \"nope\"",
        "routes[0].qos_profile: unknown QoS profile \"ghost\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// The control plane pushes profiles and subjects: a user's assignment changed through
/// the REST API is enforced by the proxy within a second; bad assignments are refused
/// with the field named, and a profile in use cannot be deleted.
#[tokio::test]
async fn a_subject_assigned_through_the_api_is_enforced_by_the_proxy_within_a_second() {
    use support::control_plane::ControlPlane;
    let up = Upstream::spawn("up").await;
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(
        &dir.0,
        &format!(
            "qos_profiles:\n  - {{name: trickle, tier: bronze, rate_limit_rps: 1}}\n  - {{name: premium, tier: platinum}}\nservices:\n  - name: up\n    endpoints: [{{address: \"{}\"}}]\nroutes:\n  - {{name: all, cluster: up}}\n",
            up.addr
        ),
    )
    .await;
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n",
        cp.url()
    )))
    .await;
    let c = h1_client();
    let url = proxy.url("/");
    let as_alice = || request(&url, &[("x-presage-user", "alice")]);
    wait_until(Duration::from_secs(10), || async {
        (send(&c, as_alice()).await.status == StatusCode::OK).then_some(())
    })
    .await
    .expect("the proxy routes the control plane's route");
    // Unassigned, alice is not limited.
    for _ in 0..5 {
        assert_eq!(send(&c, as_alice()).await.status, StatusCode::OK);
    }

    // Bad assignments name the field.
    for (body, field) in [
        (r#"{"profile":"nope"}"#, "profile"),
        (r#"{"kind":"robot","tier":"gold"}"#, "kind"),
        (r#"{"tier":"diamond"}"#, "tier"),
        (r#"{}"#, "profile"),
        (r#"{"profile":"premium","colour":"red"}"#, "colour"),
    ] {
        let (s, v) = cp.call(http::Method::PUT, "/v1/subjects/alice", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["field"].as_str().unwrap().contains(field), "{body}: {v}");
    }

    // Numbers the proxies could not turn into durations are refused, never pushed.
    for (body, field) in [
        (
            r#"{"reliability":0.999,"latency_p99_ms":1e23}"#,
            "latency_p99_ms",
        ),
        (r#"{"deadline_ms":1e23}"#, "deadline_ms"),
        (r#"{"rate_limit_rps":1e-30}"#, "rate_limit_rps"),
    ] {
        let (s, v) = cp
            .call(http::Method::PUT, "/v1/qos/profiles/huge", body)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
    }

    // alice gets the rate-limited profile: the proxy enforces it within a second.
    cp.put("/v1/subjects/alice", r#"{"profile":"trickle"}"#)
        .await;
    let assigned = Instant::now();
    let limited = wait_until(Duration::from_secs(5), || async {
        (send(&c, as_alice()).await.status == StatusCode::TOO_MANY_REQUESTS).then(Instant::now)
    })
    .await
    .expect("alice is rate limited");
    assert!(
        limited - assigned < Duration::from_secs(1),
        "took {:?}",
        limited - assigned
    );
    assert_eq!(cp.get("/v1/subjects/alice").await["profile"], "trickle");
    // Others are not.
    let bob = send(&c, request(&url, &[("x-presage-user", "bob")])).await;
    assert_eq!(bob.status, StatusCode::OK);

    // The profile is in use: it cannot be deleted until alice moves.
    let (s, v) = cp
        .call(http::Method::DELETE, "/v1/qos/profiles/trickle", "")
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("alice"), "{v}");
    cp.put("/v1/subjects/alice", r#"{"tier":"platinum"}"#).await;
    let (s, _) = cp
        .call(http::Method::DELETE, "/v1/qos/profiles/trickle", "")
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    wait_until(Duration::from_secs(5), || async {
        let mut all = true;
        for _ in 0..3 {
            all &= send(&c, as_alice()).await.status == StatusCode::OK;
        }
        all.then_some(())
    })
    .await
    .expect("alice is no longer limited");
}

/// A fresh proxy gets a route that names a QoS profile: profiles are subscribed to (and
/// so applied) before routes; the other way round the first batch of routes was refused
/// for naming a profile the proxy had not seen yet, until something else changed.
#[tokio::test]
async fn a_route_naming_a_profile_reaches_a_fresh_proxy() {
    use support::control_plane::ControlPlane;
    let up = Upstream::spawn("up").await;
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(
        &dir.0,
        &format!(
            "services:\n  - name: up\n    endpoints: [{{address: \"{}\"}}]\n",
            up.addr
        ),
    )
    .await;
    cp.put(
        "/v1/qos/profiles/gold-api",
        r#"{"tier":"gold","latency_p99_ms":100}"#,
    )
    .await;
    cp.put(
        "/v1/routes/all",
        r#"{"cluster":"up","qos_profile":"gold-api"}"#,
    )
    .await;
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n",
        cp.url()
    )))
    .await;
    let c = h1_client();
    wait_until(Duration::from_secs(8), || async {
        (send(&c, request(&proxy.url("/"), &[])).await.status == StatusCode::OK).then_some(())
    })
    .await
    .expect("the route and its profile are applied");
    let p = cp.proxy("p1").await.unwrap();
    assert!(
        p["acked"].get(presage_api::types::ROUTE).is_some(),
        "routes acknowledged: {p}"
    );
}

/// The spec's `requestService`: instances that meet the profile's accuracy, cheapest
/// first; when none does, the best available serves and a miss is counted.
#[tokio::test]
async fn instances_are_chosen_by_accuracy_then_price() {
    let (a, b, c) = (
        Upstream::spawn("a").await,
        Upstream::spawn("b").await,
        Upstream::spawn("c").await,
    );
    let proxy = Proxy::start(&config(&format!(
        "qos_profiles:
  - {{name: precise, tier: gold, min_accuracy: 0.9}}
  - {{name: rough, tier: silver, min_accuracy: 0.5}}
  - {{name: perfect, tier: platinum, min_accuracy: 0.99}}
routes:
  - {{name: all, cluster: model}}
clusters:
  - name: model
    endpoints:
      - {{address: \"{}\", metadata: {{accuracy: 0.8, price: 0.1}}}}
      - {{address: \"{}\", metadata: {{accuracy: 0.95, price: 0.5}}}}
      - {{address: \"{}\", metadata: {{accuracy: \"0.95\", price: \"0.3\"}}}}
",
        a.addr, b.addr, c.addr
    )))
    .await;
    let cl = h1_client();
    let url = proxy.url("/");
    let served_by = |profile: &'static str| {
        let (cl, url) = (&cl, &url);
        async move {
            let mut seen = std::collections::BTreeMap::<String, usize>::new();
            for _ in 0..20 {
                let r = send(cl, request(url, &[("x-presage-qos", profile)])).await;
                assert_eq!(r.status, StatusCode::OK);
                *seen
                    .entry(r.json()["service"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            seen
        }
    };
    // Accuracy 0.9 leaves b and c; c is cheaper.
    assert_eq!(served_by("precise").await, [("c".to_string(), 20)].into());
    // Accuracy 0.5 admits all three; a is cheapest.
    assert_eq!(served_by("rough").await, [("a".to_string(), 20)].into());
    // Nobody reaches 0.99: served anyway, and every request counted as a miss.
    let perfect = served_by("perfect").await;
    assert_eq!(perfect.values().sum::<usize>(), 20);
    let missed = proxy
        .metric(
            "presage_qos_requests_total",
            &[("tier", "platinum"), ("outcome", "missed")],
        )
        .await;
    assert_eq!(missed, 20.0);
    let gold_missed = proxy
        .metric(
            "presage_qos_requests_total",
            &[("tier", "gold"), ("outcome", "missed")],
        )
        .await;
    assert_eq!(gold_missed, 0.0);
}

/// SLA monitoring end to end: slow requests under a profile breach its p99 target, an
/// alert in Alertmanager v2 form reaches a local webhook receiver (a loopback server
/// recording the POSTs, standing in for Alertmanager, which is not installable here) and
/// `/v1/alerts`; statistics count exactly what was sent; fast requests resolve it.
#[tokio::test]
async fn an_sla_breach_alerts_a_webhook_and_resolves_when_met_again() {
    use support::replay::Replay;
    let up = Upstream::spawn("up").await;
    let receiver = Replay::start().await;
    let dir = TempDir::new();
    let cfg = dir.0.join("cp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "qos_profiles:\n  - {{name: fast, tier: gold, latency_p99_ms: 25, reliability: 0.99}}\nservices:\n  - name: up\n    endpoints: [{{address: \"{}\"}}]\nroutes:\n  - {{name: all, cluster: up}}\nalerting:\n  webhooks: [\"{}/api/v2/alerts\"]\n  interval: 1s\n  window: 10s\n  min_requests: 10\n",
            up.addr,
            receiver.url()
        ),
    )
    .unwrap();
    let (cp, proxy) = mesh(&dir, &cfg).await;
    let c = h1_client();

    // 20 requests of 60 ms under a 25 ms p99 target.
    let slow = proxy.url("/?ms=60");
    for _ in 0..20 {
        let r = send(&c, request(&slow, &[("x-presage-qos", "fast")])).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let alert_posts = |resolved: bool| {
        receiver
            .writes()
            .into_iter()
            .filter(|w| w.path == "/api/v2/alerts")
            .flat_map(|w| {
                let v: serde_json::Value = serde_json::from_str(&w.body).unwrap();
                v.as_array().unwrap().clone()
            })
            .filter(|a| a["endsAt"].is_string() == resolved)
            .collect::<Vec<_>>()
    };
    let fired = wait_until(Duration::from_secs(10), || async {
        alert_posts(false).first().cloned()
    })
    .await
    .expect("the breach reached the webhook");
    assert_eq!(fired["labels"]["alertname"], "PresageSLABreach");
    assert_eq!(fired["labels"]["service"], "up");
    assert_eq!(fired["labels"]["qos_profile"], "fast");
    assert_eq!(fired["labels"]["objective"], "latency_p99");
    assert_eq!(fired["labels"]["severity"], "critical");
    assert!(
        fired["startsAt"].is_string() && fired["generatorURL"].is_string(),
        "{fired}"
    );

    let alerts = cp.get("/v1/alerts").await;
    assert_eq!(alerts[0]["state"], "firing", "{alerts}");
    assert!(alerts[0]["measured"].as_f64().unwrap() > 25.0, "{alerts}");
    // Every request reported (the last report may still be on its way).
    let stats = wait_until(Duration::from_secs(5), || async {
        let stats = cp.get("/v1/services/up/qos-statistics").await;
        let fast = stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["qos_profile"] == "fast")
            .cloned()?;
        (fast["last_minute"]["requests"] == 20).then_some(stats)
    })
    .await
    .expect("statistics count the 20 requests sent");
    let fast = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["qos_profile"] == "fast")
        .unwrap();
    assert_eq!(fast["last_minute"]["errors"], 0, "{stats}");
    let p99 = fast["last_minute"]["latency_p99_ms"].as_f64().unwrap();
    // The 60 ms the upstream waits, in milliseconds; the upper bound only catches a
    // wrong unit (a loaded 2-core machine stretches a request's tail by tens of ms).
    assert!((55.0..1000.0).contains(&p99), "p99 {p99}: {stats}");
    assert_eq!(fast["last_minute"]["attainment"], 0.0, "{stats}");

    // Fast requests: once the slow ones leave the 10 s window, the alert resolves.
    let quick = proxy.url("/");
    let resolved = wait_until(Duration::from_secs(40), || async {
        for _ in 0..20 {
            send(&c, request(&quick, &[("x-presage-qos", "fast")])).await;
        }
        alert_posts(true).first().cloned()
    })
    .await
    .expect("the resolve reached the webhook");
    assert_eq!(resolved["labels"]["objective"], "latency_p99");
    let alerts = cp.get("/v1/alerts").await;
    assert_eq!(alerts[0]["state"], "resolved", "{alerts}");
    assert!(alerts[0]["ended_at"].is_string(), "{alerts}");
}

/// Bearer tokens scoped to tenants: a tenant sees and changes only its own QoS profiles
/// and subjects (and may read and assign shared profiles); nothing else of the API.
#[tokio::test]
async fn tenant_tokens_see_and_change_only_their_own_profiles_and_subjects() {
    use http::Method;
    use support::control_plane::ControlPlane;
    const ADMIN: &str = "admin-token-0123456789";
    const ACME: &str = "acme-token-0123456789";
    const GLOBEX: &str = "globex-token-012345678";
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(
        &dir.0,
        &format!(
            "auth:\n  tokens:\n    - {{token: {ADMIN}}}\n    - {{token: {ACME}, tenant: acme}}\n    - {{token: {GLOBEX}, tenant: globex}}\n"
        ),
    )
    .await;
    let call = |token, method, path: &'static str, body: &'static str| {
        let cp = &cp;
        async move { cp.call_as(token, method, path, body).await }
    };
    // acme's PUT of `body` at `path` is a 403 naming `field`.
    let acme_forbidden = |path: &'static str, body: &'static str, field: &'static str| {
        let cp = &cp;
        async move {
            let (s, v) = cp.call_as(Some(ACME), Method::PUT, path, body).await;
            assert_eq!(
                (s, v["field"].as_str()),
                (StatusCode::FORBIDDEN, Some(field)),
                "{v}"
            );
        }
    };

    // No token, a wrong one: 401. The API description stays open.
    let (s, v) = call(None, Method::GET, "/v1/services", "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = call(Some("nope-nope-nope-nope"), Method::GET, "/v1/services", "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(None, Method::GET, "/openapi.json", "").await.0,
        StatusCode::OK
    );
    // A tenant reaches only profiles and subjects.
    let (s, v) = call(Some(ACME), Method::GET, "/v1/services", "").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(
        call(Some(ADMIN), Method::GET, "/v1/services", "").await.0,
        StatusCode::OK
    );

    // acme creates its profile; it is stamped as acme's.
    let (s, v) = call(
        Some(ACME),
        Method::PUT,
        "/v1/qos/profiles/acme-gold",
        r#"{"tier":"gold","latency_p99_ms":50}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = call(Some(ACME), Method::GET, "/v1/qos/profiles/acme-gold", "").await;
    assert_eq!(v["tenant"], "acme", "{v}");
    // ... and cannot write for another tenant.
    acme_forbidden(
        "/v1/qos/profiles/x",
        r#"{"tier":"gold","tenant":"globex"}"#,
        "tenant",
    )
    .await;
    // An admin's shared profile.
    let (s, _) = call(
        Some(ADMIN),
        Method::PUT,
        "/v1/qos/profiles/std",
        r#"{"tier":"silver"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // globex does not see acme's profile, and cannot change or delete it.
    let (_, list) = call(Some(GLOBEX), Method::GET, "/v1/qos/profiles", "").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["std"], "{list}");
    assert_eq!(
        call(Some(GLOBEX), Method::GET, "/v1/qos/profiles/acme-gold", "")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            Some(GLOBEX),
            Method::PUT,
            "/v1/qos/profiles/acme-gold",
            r#"{"tier":"bronze"}"#
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            Some(GLOBEX),
            Method::DELETE,
            "/v1/qos/profiles/acme-gold",
            ""
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(Some(GLOBEX), Method::DELETE, "/v1/qos/profiles/std", "")
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    // globex assigns its user the shared profile, but not acme's.
    assert_eq!(
        call(
            Some(GLOBEX),
            Method::PUT,
            "/v1/subjects/bob",
            r#"{"profile":"std"}"#
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, v) = call(
        Some(GLOBEX),
        Method::PUT,
        "/v1/subjects/carol",
        r#"{"profile":"acme-gold"}"#,
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("profile")),
        "{v}"
    );
    // acme does not see globex's subject and cannot take it over.
    let (_, subjects) = call(Some(ACME), Method::GET, "/v1/subjects", "").await;
    assert_eq!(subjects, serde_json::json!([]));
    assert_eq!(
        call(Some(ACME), Method::GET, "/v1/subjects/bob", "")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            Some(ACME),
            Method::PUT,
            "/v1/subjects/bob",
            r#"{"tier":"gold"}"#
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // Nor claim globex as a tenant subject before anyone assigns it.
    acme_forbidden(
        "/v1/subjects/globex",
        r#"{"kind":"tenant","tier":"bronze"}"#,
        "id",
    )
    .await;
    // The admin sees everything.
    let (_, all) = call(Some(ADMIN), Method::GET, "/v1/subjects", "").await;
    assert_eq!(all[0]["tenant"], "globex", "{all}");
}

/// Tiers are resources: the four defaults with their allocation, changed by an admin
/// (kept in order), and a changed admission share is what the proxy sheds by.
#[tokio::test]
async fn tier_allocations_are_served_kept_in_order_and_enforced_by_the_proxy() {
    use support::control_plane::ControlPlane;
    let up = Upstream::spawn("up").await;
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(
        &dir.0,
        &format!(
            "services:\n  - name: up\n    max_in_flight: 10\n    endpoints: [{{address: \"{}\"}}]\nroutes:\n  - {{name: all, cluster: up}}\n",
            up.addr
        ),
    )
    .await;
    let tiers = cp.get("/v1/qos/tiers").await;
    let names: Vec<&str> = tiers
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bronze", "silver", "gold", "platinum"]);
    assert_eq!(tiers[0]["admission_share"], 0.6);
    assert!(tiers[3]["price_per_hour"].as_f64() > tiers[0]["price_per_hour"].as_f64());

    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n",
        cp.url()
    )))
    .await;
    // Five concurrent 300 ms requests without a profile (Bronze).
    let burst = || async {
        let url = proxy.url("/?ms=300");
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { send(&h1_client(), request(&url, &[])).await.status })
            })
            .collect();
        let mut shed = 0;
        for t in tasks {
            let s = t.await.unwrap();
            assert!(
                s == StatusCode::OK || s == StatusCode::SERVICE_UNAVAILABLE,
                "{s}"
            );
            shed += usize::from(s == StatusCode::SERVICE_UNAVAILABLE);
        }
        shed
    };
    wait_until(Duration::from_secs(10), || async {
        (send(&h1_client(), request(&proxy.url("/"), &[]))
            .await
            .status
            == StatusCode::OK)
            .then_some(())
    })
    .await
    .expect("the proxy routes the control plane's route");
    assert_eq!(burst().await, 0, "Bronze may fill 6 of 10");

    // Out of order: Bronze above Silver's share is refused, naming the field.
    let mut bronze = tiers[0].clone();
    bronze["admission_share"] = serde_json::json!(0.9);
    let (s, v) = cp
        .call(
            http::Method::PUT,
            "/v1/qos/tiers/bronze",
            &bronze.to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "admission_share", "{v}");
    // Bronze down to 30%: the proxy sheds two of the five.
    bronze["admission_share"] = serde_json::json!(0.3);
    cp.put("/v1/qos/tiers/bronze", &bronze.to_string()).await;
    wait_until(Duration::from_secs(10), || async {
        let shed = burst().await;
        (shed == 2).then_some(())
    })
    .await
    .expect("bronze is shed beyond 3 of 10 in flight");
}

/// A profile's deadline cuts a late request and is passed upstream as what is left of
/// it; a caller's own `x-presage-timeout-ms` (an upstream sidecar's, say) wins.
#[tokio::test]
async fn the_latency_target_is_a_deadline_passed_upstream() {
    let up = Upstream::spawn("up").await;
    let proxy = Proxy::start(&qos_config(&up, 0)).await;
    let c = h1_client();
    // premium: deadline 200 ms.
    let r = send(
        &c,
        request(&proxy.url("/"), &[("x-presage-qos", "premium")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let left: u64 = r.json()["headers"]["x-presage-timeout-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((150..=200).contains(&left), "{left}");
    let t0 = Instant::now();
    let r = send(
        &c,
        request(&proxy.url("/?ms=1000"), &[("x-presage-qos", "premium")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // The caller's budget, without a profile.
    let r = send(
        &c,
        request(&proxy.url("/"), &[("x-presage-timeout-ms", "50")]),
    )
    .await;
    let left: u64 = r.json()["headers"]["x-presage-timeout-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left <= 50, "{left}");
    let r = send(
        &c,
        request(&proxy.url("/?ms=1000"), &[("x-presage-timeout-ms", "50")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    // Without either, no header and the route's own timeout.
    let r = send(&c, request(&proxy.url("/"), &[])).await;
    assert_eq!(
        r.json()["headers"]["x-presage-timeout-ms"],
        serde_json::Value::Null
    );
}

/// `getServiceStatus(requestId)`: the control plane answers how a recent request was
/// handled, from its proxy's record.
#[tokio::test]
async fn a_recent_request_is_found_by_its_id_with_the_instance_and_why() {
    let up = Upstream::spawn("up").await;
    let dir = TempDir::new();
    let cfg = dir.0.join("cp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "qos_profiles:\n  - {{name: precise, tier: gold, min_accuracy: 0.9}}\nservices:\n  - name: up\n    endpoints: [{{address: \"{}\", metadata: {{accuracy: \"0.95\"}}}}]\nroutes:\n  - {{name: all, cluster: up}}\n",
            up.addr
        ),
    )
    .unwrap();
    let (cp, proxy) = mesh(&dir, &cfg).await;
    let c = h1_client();
    let r = send(
        &c,
        request(
            &proxy.url("/"),
            &[
                ("x-request-id", "req-precise-1"),
                ("x-presage-qos", "precise"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let shed = send(
        &c,
        request(
            &proxy.url("/"),
            &[("x-request-id", "req-bad-2"), ("x-presage-qos", "nope")],
        ),
    )
    .await;
    assert_eq!(shed.status, StatusCode::BAD_REQUEST);

    let rec = wait_until(Duration::from_secs(5), || async {
        let (s, v) = cp
            .call(http::Method::GET, "/v1/requests/req-precise-1", "")
            .await;
        (s == StatusCode::OK).then_some(v)
    })
    .await
    .expect("the request was recorded");
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["service"], "up");
    assert_eq!(rec["qos_profile"], "precise");
    assert_eq!(rec["tier"], "gold");
    assert_eq!(rec["endpoint"], up.addr.to_string());
    assert_eq!(rec["reason"], "meets-profile");
    assert_eq!(rec["warm_pool"], false);
    assert!(rec["latency_us"].as_u64().unwrap() > 0);
    let bad = cp.get("/v1/requests/req-bad-2").await;
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["reason"], "unknown-qos-profile");
    let (s, v) = cp
        .call(http::Method::GET, "/v1/requests/never-seen", "")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

/// A tier's bandwidth cap paces its response streams; other tiers are not held back.
#[tokio::test]
async fn a_tier_bandwidth_cap_paces_its_responses() {
    let up = Upstream::spawn("up").await;
    let proxy = Proxy::start(&config(&format!(
        "{PROFILES}qos_tiers:\n  - {{name: bronze, admission_share: 0.6, bandwidth_max_mbps: 8}}\nroutes:\n  - name: all\n    cluster: up\n    qos_profile: basic\nclusters:\n  - name: up\n    endpoints:\n      - address: \"{}\"\n",
        up.addr
    )))
    .await;
    let c = h1_client();
    // The upstream echoes the 1 MB body back: 1 MB at 8 Mbit/s is about a second.
    let body = bytes::Bytes::from(vec![b'x'; 1_000_000]);
    let post = |qos: Option<&str>| {
        let mut b = Request::post(proxy.url("/"));
        if let Some(q) = qos {
            b = b.header("x-presage-qos", q);
        }
        b.body(Full::new(body.clone())).unwrap()
    };
    let t0 = Instant::now();
    let r = send(&c, post(None)).await;
    let bronze = t0.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.len() > 1_000_000);
    let t0 = Instant::now();
    let r = send(&c, post(Some("premium"))).await;
    let platinum = t0.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.len() > 1_000_000);
    assert!(
        bronze >= Duration::from_millis(850),
        "bronze took {bronze:?}"
    );
    assert!(
        platinum * 2 < bronze,
        "platinum {platinum:?} vs bronze {bronze:?}"
    );
}

/// Instances carry the QoS the proxies measured of them (and, until per-instance
/// forecasts exist, the same as predicted); per-instance counts do not inflate the
/// service's own.
#[tokio::test]
async fn instances_show_their_measured_qos() {
    let up = Upstream::spawn("up").await;
    let dir = TempDir::new();
    let cfg = dir.0.join("cp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "services:\n  - name: up\n    endpoints: [{{address: \"{}\", metadata: {{capacity: \"100\"}}}}]\nroutes:\n  - {{name: all, cluster: up}}\n",
            up.addr
        ),
    )
    .unwrap();
    let (cp, proxy) = mesh(&dir, &cfg).await;
    let c = h1_client();
    for _ in 0..30 {
        assert_eq!(
            send(&c, request(&proxy.url("/?ms=5"), &[])).await.status,
            StatusCode::OK
        );
    }
    let sent = up.hits() as u64;
    let inst = wait_until(Duration::from_secs(5), || async {
        let v = cp.get("/v1/services/up/instances").await;
        (v[0]["measured"]["requests"].as_u64() == Some(sent)).then_some(v)
    })
    .await
    .expect("the instance's measured requests match what it served");
    let m = &inst[0]["measured"];
    assert_eq!(m["errors"], 0, "{inst}");
    assert!(m["latency_p50_ms"].as_f64().unwrap() >= 4.0, "{inst}");
    assert_eq!(inst[0]["predicted"], *m);
    let u = inst[0]["utilisation"].as_f64().unwrap();
    assert!((u - sent as f64 / 60.0 / 100.0).abs() < 1e-9, "{u}");
    let services = cp.get("/v1/services").await;
    assert_eq!(
        services[0]["requests_total"], sent,
        "no double counting: {services}"
    );
}

/// A profile's reliability target sets its retries: 99.9% buys two, 90% none, and a
/// request without one follows its route's policy.
#[tokio::test]
async fn the_reliability_target_sets_the_retries() {
    let up = Upstream::spawn("up").await;
    let proxy = Proxy::start(&config(&format!(
        "qos_profiles:
  - {{name: strict, tier: gold, reliability: 0.999}}
  - {{name: loose, tier: bronze, reliability: 0.9}}
routes:
  - {{name: all, cluster: up, retries: {{attempts: 1, backoff: 1ms}}}}
clusters:
  - name: up
    endpoints: [{{address: \"{}\"}}]
",
        up.addr
    )))
    .await;
    let c = h1_client();
    let url = proxy.url("/status/503");
    for (profile, attempts) in [(Some("strict"), 3), (Some("loose"), 1), (None, 2)] {
        let before = up.hits();
        let headers: Vec<(&str, &str)> =
            profile.map(|p| ("x-presage-qos", p)).into_iter().collect();
        let r = send(&c, request(&url, &headers)).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(up.hits() - before, attempts, "{profile:?}");
    }
}

/// An instance failing more often than a profile's reliability target allows is kept
/// out of that profile's traffic (while it is not failing often enough in a row to be
/// ejected for everyone).
#[tokio::test]
async fn instances_failing_beyond_the_reliability_target_are_avoided() {
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    let proxy = Proxy::start(&config(&format!(
        "qos_profiles:
  - {{name: strict, tier: gold, reliability: 0.999}}
routes:
  - {{name: all, cluster: model}}
clusters:
  - name: model
    load_balancer: weighted_round_robin
    endpoints: [{{address: \"{}\"}}, {{address: \"{}\"}}]
",
        a.addr, b.addr
    )))
    .await;
    let c = h1_client();
    // Unprofiled traffic, alternating (round robin), in which every fifth request fails
    // at a: a fifth of a's answers are 500s, never five in a row.
    for i in 0..300 {
        let path = if i % 5 == 0 { "/fail-at/a" } else { "/" };
        send(&c, request(&proxy.url(path), &[])).await;
    }
    assert!(a.hits() >= 100, "a was tried: {}", a.hits());
    let ejections = proxy
        .metric("presage_outlier_ejections_total", &[("cluster", "model")])
        .await;
    assert_eq!(ejections, 0.0, "a was not ejected");
    let a_before = a.hits();
    for _ in 0..40 {
        let r = send(&c, request(&proxy.url("/"), &[("x-presage-qos", "strict")])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["service"], "b");
    }
    assert_eq!(a.hits(), a_before);
    let missed = proxy
        .metric(
            "presage_qos_requests_total",
            &[("tier", "gold"), ("outcome", "missed")],
        )
        .await;
    assert_eq!(missed, 0.0, "b meets the profile");
}

/// Tiers beyond the default four: added through the API with a priority of their own,
/// enforced by the proxy under their own name, kept in order, and deleted only when
/// nothing names them.
#[tokio::test]
async fn a_tier_added_through_the_api_is_enforced_and_deleted_only_when_unused() {
    use http::Method;
    let up = Upstream::spawn("up").await;
    let dir = TempDir::new();
    let cfg = dir.0.join("cp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "services:\n  - name: up\n    max_in_flight: 10\n    endpoints: [{{address: \"{}\"}}]\nroutes:\n  - {{name: all, cluster: up}}\n",
            up.addr
        ),
    )
    .unwrap();
    let (cp, proxy) = mesh(&dir, &cfg).await;
    let diamond = serde_json::json!({
        "name": "diamond", "priority": 10, "admission_share": 1.0, "cpu_shares": 1600,
        "memory_mb": 2048, "io_priority": 900, "price_per_hour": 0.5,
    });
    // Refused, naming the field: a priority taken, a share below a lower tier's.
    let mut bad = diamond.clone();
    bad["priority"] = 4.into();
    let (s, v) = cp
        .call(Method::PUT, "/v1/qos/tiers/diamond", &bad.to_string())
        .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("priority")),
        "{v}"
    );
    bad["priority"] = 10.into();
    bad["admission_share"] = 0.5.into();
    let (s, v) = cp
        .call(Method::PUT, "/v1/qos/tiers/diamond", &bad.to_string())
        .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("admission_share")),
        "{v}"
    );
    let (s, v) = cp
        .call(
            Method::PUT,
            "/v1/qos/profiles/vip",
            r#"{"name": "vip", "tier": "diamond"}"#,
        )
        .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("tier")),
        "{v}"
    );

    cp.put("/v1/qos/tiers/diamond", &diamond.to_string()).await;
    let names: Vec<String> = cp
        .get("/v1/qos/tiers")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["bronze", "silver", "gold", "platinum", "diamond"]);
    cp.put(
        "/v1/qos/profiles/vip",
        r#"{"name": "vip", "tier": "diamond"}"#,
    )
    .await;
    let c = h1_client();
    wait_until(Duration::from_secs(5), || async {
        let r = send(&c, request(&proxy.url("/"), &[("x-presage-qos", "vip")])).await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await
    .expect("the proxy knows the profile and its tier");
    let admitted = proxy
        .metric(
            "presage_qos_requests_total",
            &[("tier", "diamond"), ("outcome", "admitted")],
        )
        .await;
    assert!(admitted >= 1.0, "counted under the new tier: {admitted}");

    let (s, v) = cp.call(Method::DELETE, "/v1/qos/tiers/diamond", "").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("\"vip\""), "{v}");
    let (s, _) = cp.call(Method::DELETE, "/v1/qos/tiers/bronze", "").await;
    assert_eq!(s, StatusCode::CONFLICT, "a default tier stays");
    let (s, _) = cp.call(Method::DELETE, "/v1/qos/profiles/vip", "").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = cp.call(Method::DELETE, "/v1/qos/tiers/diamond", "").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = cp.call(Method::GET, "/v1/qos/tiers/diamond", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A profile that retries (99% or more) and has a p99 target hedges: a request the first
/// instance has not answered within the target is sent to a second one too, and the first
/// answer wins. A profile without a reliability target waits.
#[tokio::test]
async fn a_reliable_profile_hedges_a_request_past_its_latency_target() {
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    let proxy = Proxy::start(&config(&format!(
        "qos_profiles:
  - {{name: hedged, tier: gold, reliability: 0.999, latency_p99_ms: 50}}
  - {{name: patient, tier: gold, min_accuracy: 0.5}}
routes:
  - {{name: all, cluster: model}}
clusters:
  - name: model
    endpoints:
      - {{address: \"{}\", metadata: {{price: 0.1}}}}
      - {{address: \"{}\", metadata: {{price: 0.5}}}}
",
        a.addr, b.addr
    )))
    .await;
    let c = h1_client();
    let hedges = || proxy.metric("presage_hedges_total", &[("cluster", "model")]);
    // a is cheaper, so it is tried first; it answers this path after 2 s.
    let t0 = Instant::now();
    let r = send(
        &c,
        request(
            &proxy.url("/slow-at/a/2000"),
            &[("x-presage-qos", "hedged")],
        ),
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["service"], "b", "the hedged copy answered first");
    assert!(
        r.json()["headers"]["x-presage-timeout-ms"].is_null(),
        "no budget, none passed on by the copy either: {}",
        r.json()
    );
    assert!(
        took < Duration::from_millis(1500),
        "did not wait for a: {took:?}"
    );
    assert_eq!(a.hits(), 1, "a got the first copy");
    assert_eq!(hedges().await, 1.0);
    // a is now known to be slower than the target: the profile goes straight to b.
    let r = send(
        &c,
        request(
            &proxy.url("/slow-at/a/2000"),
            &[("x-presage-qos", "hedged")],
        ),
    )
    .await;
    assert_eq!(r.json()["service"], "b");
    assert_eq!(hedges().await, 1.0, "no hedge needed");
    // No reliability target: no hedging, the request waits for a.
    let t0 = Instant::now();
    let r = send(
        &c,
        request(
            &proxy.url("/slow-at/a/300"),
            &[("x-presage-qos", "patient")],
        ),
    )
    .await;
    assert_eq!(r.json()["service"], "a");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(hedges().await, 1.0);
}

#[tokio::test]
async fn a_warm_instance_serves_only_the_tier_it_was_reserved_for() {
    let (std_a, std_b, warm) = (
        Upstream::spawn("standard-a").await,
        Upstream::spawn("standard-b").await,
        Upstream::spawn("warm").await,
    );
    let proxy = Proxy::start(&config(&format!(
        "{PROFILES}routes:\n  - name: all\n    cluster: up\nclusters:\n  - name: up\n    outlier_detection: {{consecutive_failures: 1, base_ejection: 30s}}\n    endpoints:\n      - address: \"{}\"\n      - address: \"{}\"\n      - address: \"{}\"\n        metadata: {{pool: warm, reserved_for: \"tier:platinum\"}}\n",
        std_a.addr, std_b.addr, warm.addr
    )))
    .await;
    let c = h1_client();
    let url = proxy.url("/");
    // Unclassified and bronze requests stay in the standard pool...
    for h in [&[][..], &[("x-presage-qos", "basic")][..]] {
        for _ in 0..20 {
            let a = send(&c, request(&url, h)).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_ne!(a.json()["service"], "warm");
        }
    }
    assert_eq!(
        warm.hits(),
        0,
        "the warm instance is out of general rotation"
    );
    // ...platinum ones (alice's profile) go to the instance warmed for them.
    for _ in 0..10 {
        let a = send(&c, request(&url, &[("x-presage-user", "alice")])).await;
        assert_eq!(a.json()["service"], "warm");
    }
    let hits = |outcome: &str| {
        let proxy = &proxy;
        let outcome = outcome.to_string();
        async move {
            proxy
                .metric(
                    "presage_qos_requests_total",
                    &[("tier", "platinum"), ("outcome", &outcome)],
                )
                .await
        }
    };
    assert_eq!(hits("warm_hit").await, 10.0);
    assert_eq!(hits("warm_miss").await, 0.0);
    // The warm instance fails: ejected, so platinum requests miss the warm pool and are
    // served by the standard one instead of failing.
    warm.kill();
    let mut served = 0;
    for _ in 0..10 {
        let a = send(&c, request(&url, &[("x-presage-user", "alice")])).await;
        if a.status == StatusCode::OK {
            assert_ne!(a.json()["service"], "warm");
            served += 1;
        }
    }
    assert!(
        served >= 9,
        "at most the attempt that found it dead fails: {served}"
    );
    assert!(hits("warm_miss").await >= 9.0, "misses counted");
}

#[tokio::test]
async fn a_warm_instance_reserved_for_a_user_serves_that_user_before_the_tier_pool() {
    let (standard, tier_warm, carol_warm) = (
        Upstream::spawn("standard").await,
        Upstream::spawn("platinum-warm").await,
        Upstream::spawn("carol-warm").await,
    );
    let proxy = Proxy::start(&config(&format!(
        "{PROFILES}routes:\n  - name: all\n    cluster: up\nclusters:\n  - name: up\n    outlier_detection: {{consecutive_failures: 1, base_ejection: 30s}}\n    endpoints:\n      - address: \"{}\"\n      - address: \"{}\"\n        metadata: {{pool: warm, reserved_for: \"tier:platinum\"}}\n      - address: \"{}\"\n        metadata: {{pool: warm, reserved_for: \"user:carol\"}}\n",
        standard.addr, tier_warm.addr, carol_warm.addr
    )))
    .await;
    let c = h1_client();
    let url = proxy.url("/");
    let service = |user: &'static str| {
        let (c, url) = (&c, &url);
        async move {
            let a = send(c, request(url, &[("x-presage-user", user)])).await;
            assert_eq!(a.status, StatusCode::OK);
            a.json()["service"].as_str().unwrap().to_string()
        }
    };
    for _ in 0..10 {
        // Carol (no profile: the default tier) reaches the instance warmed for her
        // alone; alice (platinum) her tier's; bob, nothing was warmed for, the standard.
        assert_eq!(service("carol").await, "carol-warm");
        assert_eq!(service("alice").await, "platinum-warm");
        assert_eq!(service("bob").await, "standard");
    }
    assert_eq!(carol_warm.hits(), 10, "nobody but carol reached it");
    let tier_total = |outcome: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric("presage_qos_requests_total", &[("outcome", outcome)])
                .await
        }
    };
    assert_eq!(tier_total("warm_hit").await, 20.0);
    // Her instance fails: her requests go on to the standard pool, counted as misses.
    carol_warm.kill();
    let mut served_elsewhere = 0;
    for _ in 0..10 {
        let a = send(&c, request(&url, &[("x-presage-user", "carol")])).await;
        if a.status == StatusCode::OK {
            assert_eq!(a.json()["service"], "standard");
            served_elsewhere += 1;
        }
    }
    assert!(served_elsewhere >= 9, "{served_elsewhere}");
    assert!(tier_total("warm_miss").await >= 9.0);
}
