//! The mesh: a real control plane process and real proxy processes over gRPC streams.
//! Discovery (push, ACK/NACK, outage and resync), telemetry, the durable store and the
//! REST API.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::control_plane::{service_json, ControlPlane};
use support::*;

/// A proxy connected to `cp`, reporting every 100 ms.
async fn proxy_for(cp: &ControlPlane, id: &str) -> Proxy {
    Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: {id}\n  report_interval: 100ms\n",
        cp.url()
    )))
    .await
}

/// Awaits a stdout line of the proxy that starts with `prefix`.
async fn line(proxy: &mut Proxy, prefix: &str) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let l = proxy.stdout.recv().await.expect("proxy exited");
            if l.starts_with(prefix) {
                return l;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no line starting {prefix:?}"))
}

async fn instance(proxy: &Proxy, path: &str) -> String {
    let a = get(&h1_client(), &proxy.url(path)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.json()["service"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_change_reaches_a_connected_proxy_and_is_acked_within_a_second() {
    let dir = TempDir::new();
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, None).await;
    cp.put("/v1/services/web", &service_json(&[a.addr])).await;
    cp.put("/v1/routes/all", r#"{"cluster":"web"}"#).await;
    let mut proxy = proxy_for(&cp, "p1").await;
    line(&mut proxy, "presage: synced with the control plane").await;
    assert_eq!(instance(&proxy, "/").await, "a");
    let acks_before = cp.proxy("p1").await.unwrap()["acks"].as_u64().unwrap();

    let t0 = Instant::now();
    cp.put("/v1/services/web", &service_json(&[b.addr])).await;
    let acked = wait_until(Duration::from_secs(5), || async {
        let p = cp.proxy("p1").await?;
        (p["acks"].as_u64()? > acks_before).then_some(p)
    })
    .await
    .expect("the proxy ACKed the change");
    let elapsed = t0.elapsed();
    assert!(elapsed < Duration::from_secs(1), "ACK took {elapsed:?}");
    assert_eq!(acked["nacks"], 0);
    // Only the changed cluster was sent: one change, not the whole state.
    let applied = line(&mut proxy, "presage: xds applied presage.mesh.v1.Cluster").await;
    assert!(applied.ends_with("(1 changes)"), "{applied}");
    assert_eq!(instance(&proxy, "/").await, "b");
    // A push is a new generation, reported alike by /config/status and /metrics.
    let generation = proxy.metric("presage_config_generation", &[]).await;
    assert!(generation > 1.0, "{generation}");
    assert_eq!(proxy.reload_status().await["generation"], generation as u64);
}

#[tokio::test]
async fn a_resource_the_proxy_cannot_apply_is_nacked_and_the_old_version_keeps_serving() {
    let dir = TempDir::new();
    let a = Upstream::spawn("a").await;
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, None).await;
    cp.put("/v1/services/web", &service_json(&[a.addr])).await;
    cp.put("/v1/routes/all", r#"{"cluster":"web","order":10}"#)
        .await;
    let mut proxy = proxy_for(&cp, "p1").await;
    line(&mut proxy, "presage: synced with the control plane").await;

    // Valid for the control plane (the cluster could be one of the proxy's static ones),
    // but this proxy has no cluster by that name.
    cp.put("/v1/routes/first", r#"{"cluster":"nope","order":1}"#)
        .await;
    let rejected = line(&mut proxy, "presage: xds rejected presage.mesh.v1.Route").await;
    assert!(
        rejected.contains(r#"route "first": cluster: no cluster named "nope""#),
        "{rejected}"
    );
    let p = wait_until(Duration::from_secs(5), || async {
        let p = cp.proxy("p1").await?;
        (p["nacks"].as_u64()? >= 1).then_some(p)
    })
    .await
    .expect("the NACK reached the control plane");
    assert!(
        p["last_nack"]
            .as_str()
            .unwrap()
            .contains("no cluster named \"nope\""),
        "{p}"
    );
    // Exactly one NACK: the control plane does not resend what was just rejected.
    assert_eq!(p["nacks"], 1, "{p}");
    assert_eq!(instance(&proxy, "/").await, "a");
    let (_, dynamic) = proxy.admin_get("/config/dynamic").await;
    assert!(!dynamic.contains("\"first\""), "{dynamic}");

    // Fixing it is an ordinary change.
    cp.put(
        "/v1/routes/first",
        r#"{"cluster":"web","order":1,"add_response_headers":{"x-fixed":"1"}}"#,
    )
    .await;
    line(&mut proxy, "presage: xds applied presage.mesh.v1.Route").await;
    let res = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(res.headers["x-fixed"], "1");
}

#[tokio::test]
async fn the_proxy_serves_through_a_control_plane_outage_and_resyncs_on_return() {
    let dir = TempDir::new();
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, None).await;
    cp.put("/v1/services/web", &service_json(&[a.addr])).await;
    cp.put("/v1/routes/all", r#"{"cluster":"web","order":10}"#)
        .await;
    cp.put(
        "/v1/routes/extra",
        r#"{"cluster":"web","match":{"path_prefix":"/extra"}}"#,
    )
    .await;
    let mut proxy = proxy_for(&cp, "p1").await;
    line(&mut proxy, "presage: synced with the control plane").await;
    let grpc = cp.grpc;

    // Steady load for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), proxy.url("/"));
        tokio::spawn(async move {
            let c = h1_client();
            while !stop.load(Ordering::Relaxed) {
                match c.get(url.parse().unwrap()).await {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    cp.kill().await;
    line(&mut proxy, "presage: control plane lost").await;
    let during = ok.load(Ordering::Relaxed);
    // Serve on for a while with nobody to talk to (awaiting traffic, not time).
    wait_until(Duration::from_secs(10), || async {
        (ok.load(Ordering::Relaxed) > during + 200).then_some(())
    })
    .await
    .expect("requests kept succeeding during the outage");

    // A different control plane state on the same address: `extra` is gone, `web` moved.
    let seed = dir.0.join("seed.yaml");
    std::fs::write(
        &seed,
        format!(
            "services:\n  - name: web\n    endpoints: [{{address: \"{}\"}}]\nroutes:\n  - {{name: all, cluster: web, order: 10}}\n",
            b.addr
        ),
    )
    .unwrap();
    let cp2 = ControlPlane::start(&dir.0.join("cp2.redb"), Some(grpc), Some(&seed)).await;
    line(&mut proxy, "presage: xds applied presage.mesh.v1.Route").await;
    wait_until(Duration::from_secs(10), || async {
        let p = cp2.proxy("p1").await?;
        (p["connected"] == true).then_some(())
    })
    .await
    .expect("the proxy reconnected");
    wait_until(Duration::from_secs(10), || async {
        (instance(&proxy, "/").await == "b").then_some(())
    })
    .await
    .expect("the new endpoint was applied after reconnecting");
    let (_, dynamic) = proxy.admin_get("/config/dynamic").await;
    assert!(
        !dynamic.contains("\"extra\""),
        "the removed route is gone after the resync: {dynamic}"
    );

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests through the outage"
    );
    assert!(ok.load(Ordering::Relaxed) > 200);
}

#[tokio::test]
async fn telemetry_counts_match_the_requests_sent() {
    let dir = TempDir::new();
    let a = Upstream::spawn("a").await;
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, None).await;
    cp.put("/v1/services/web", &service_json(&[a.addr])).await;
    cp.put("/v1/services/cart", &service_json(&[a.addr])).await;
    cp.put(
        "/v1/routes/cart",
        r#"{"cluster":"cart","match":{"path_prefix":"/cart"}}"#,
    )
    .await;
    cp.put("/v1/routes/all", r#"{"cluster":"web","order":10}"#)
        .await;
    let mut proxy = proxy_for(&cp, "p1").await;
    line(&mut proxy, "presage: synced with the control plane").await;

    let c = h1_client();
    let (mut sent, mut errors) = (0u64, 0u64);
    for i in 0..300 {
        // Every 10th fails upstream; users alternate between /browse and /cart.
        let path = if i % 10 == 0 {
            "/status/503"
        } else if i % 2 == 0 {
            "/cart/x"
        } else {
            "/browse"
        };
        let req = http::Request::get(proxy.url(path))
            .header("x-presage-user", format!("user{}", i % 7))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let res = send(&c, req).await;
        if path != "/cart/x" {
            sent += 1;
            errors += u64::from(res.status.is_server_error());
        }
    }
    assert_eq!(errors, 30);
    let web = wait_until(Duration::from_secs(10), || async {
        let v = cp.get("/v1/services/web/load").await;
        (v["requests_total"].as_u64()? == sent).then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("control plane never counted {sent} requests for web"));
    assert_eq!(web["errors_total"].as_u64(), Some(errors));
    let cart = cp.get("/v1/services/cart/load").await;
    assert_eq!(cart["requests_total"].as_u64(), Some(300 - sent));
    assert_eq!(cart["errors_total"].as_u64(), Some(0));
    // Transitions reached the behaviour profiler.
    let next = cp.get("/v1/users/user1/next?k=2").await;
    let services: Vec<&str> = next
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["service"].as_str().unwrap())
        .collect();
    assert!(
        services.contains(&"web") && services.contains(&"cart"),
        "{next}"
    );
    // And the proxy that saw the users gets their prediction vectors on its stream.
    let pushed = wait_until(Duration::from_secs(15), || async {
        let d: serde_json::Value =
            serde_json::from_str(&proxy.admin_get("/config/dynamic").await.1).ok()?;
        let users = d["resources"]["presage.mesh.v1.BehaviourProfile"].as_object()?;
        (users.len() == 7).then(|| users.keys().cloned().collect::<Vec<_>>())
    })
    .await
    .expect("the seven users' vectors reach the proxy");
    assert!(pushed.contains(&"user:user1".to_string()), "{pushed:?}");
    // And the proxy's node shows its last report.
    assert!(cp.proxy("p1").await.unwrap()["last_report_unix_ms"]
        .as_i64()
        .is_some());
}

#[tokio::test]
async fn a_restart_keeps_everything_the_api_acknowledged() {
    let dir = TempDir::new();
    let store = dir.0.join("cp.redb");
    let cp = ControlPlane::start(&store, None, None).await;
    cp.put(
        "/v1/services/web",
        r#"{"endpoints":[{"address":"127.0.0.1:9","weight":3,"metadata":{"zone":"a","price":"0.1"}}]}"#,
    )
    .await;
    cp.put("/v1/routes/all", r#"{"cluster":"web"}"#).await;
    cp.put(
        "/v1/qos/profiles/gold",
        r#"{"tier":"gold","latency_p99_ms":100,"reliability":0.999}"#,
    )
    .await;
    let (s, _) = cp.call(Method::DELETE, "/v1/routes/all", "").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    cp.put("/v1/routes/again", r#"{"cluster":"web"}"#).await;
    // A service a route names stays (proxies would refuse the route without it).
    let (s, e) = cp.call(Method::DELETE, "/v1/services/web", "").await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["message"].as_str().unwrap().contains("\"again\""), "{e}");
    // A crash, not a clean stop: only what was committed can survive.
    cp.kill().await;

    let cp = ControlPlane::start(&store, None, None).await;
    let web = cp.get("/v1/services/web").await;
    assert_eq!(web["endpoints"][0]["weight"], 3);
    assert_eq!(web["endpoints"][0]["metadata"]["zone"], "a");
    let routes = cp.get("/v1/routes").await;
    let names: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["again"]);
    assert_eq!(cp.get("/v1/qos/profiles").await[0]["tier"], "gold");
    cp.stop().await;
}

#[tokio::test]
async fn the_api_names_bad_fields_and_documents_itself() {
    let dir = TempDir::new();
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, None).await;
    let (s, e) = cp
        .call(
            Method::PUT,
            "/v1/services/web",
            r#"{"endpoints":[{"adress":"x"}]}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["field"], "endpoints[0].adress", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `adress`"),
        "{e}"
    );
    let (s, e) = cp
        .call(
            Method::PUT,
            "/v1/services/web",
            r#"{"endpoints":[{"address":"127.0.0.1:0"},{"address":"nope"}]}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let fields: Vec<&str> = e["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["endpoints[0].address", "endpoints[1].address"],
        "{e}"
    );
    let (s, e) = cp
        .call(Method::PUT, "/v1/services/web", r#"{"name":"other"}"#)
        .await;
    assert_eq!(
        (s, e["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("name"))
    );
    // A body is one JSON value: anything after it is refused, and nothing is stored.
    for trailing in [
        r#"{"endpoints":[]} garbage"#,
        r#"{"endpoints":[]}{"endpoints":[]}"#,
    ] {
        let (s, e) = cp.call(Method::PUT, "/v1/services/web", trailing).await;
        assert_eq!(
            (s, e["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("(body)")),
            "{trailing}: {e}"
        );
    }
    let (s, _) = cp.call(Method::GET, "/v1/services/web", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no bad write stored the service");
    let (s, e) = cp.call(Method::GET, "/v1/services/ghost", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(e["message"].as_str().unwrap().contains("ghost"));
    let (s, e) = cp
        .call(Method::GET, "/v1/services/web/load?resolution=5s", "")
        .await;
    assert_eq!(
        (s, e["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("resolution"))
    );
    // Bad query strings and methods get JSON errors too.
    let (s, e) = cp.call(Method::GET, "/v1/users/u/next?k=lots", "").await;
    assert_eq!(
        (s, e["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("k")),
        "{e}"
    );
    // A misspelt key is refused, not ignored (it would have listed every service's).
    let (s, e) = cp
        .call(Method::GET, "/v1/dependencies?servce=web", "")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `servce`"),
        "{e}"
    );
    let (s, e) = cp.call(Method::POST, "/v1/services", "{}").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        e["message"].as_str().unwrap().contains("not allowed"),
        "{e}"
    );
    let doc = cp.get("/openapi.json").await;
    for path in [
        "/v1/services",
        "/v1/services/{name}/instances",
        "/v1/proxies",
        "/v1/routes/{name}",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Cluster"].is_object());
}

#[tokio::test]
async fn endpoint_health_combines_the_registry_with_the_proxies_ejections() {
    let dir = TempDir::new();
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, None).await;
    // Round robin, so b keeps being tried (and failing) until it is ejected; P2C over
    // latency could simply stop picking it.
    let web = format!(
        r#"{{"load_balancer":"weighted_round_robin","endpoints":[{{"address":"{}"}},{{"address":"{}"}}]}}"#,
        a.addr, b.addr
    );
    cp.put("/v1/services/web", &web).await;
    cp.put("/v1/routes/all", r#"{"cluster":"web"}"#).await;
    let mut proxy = proxy_for(&cp, "p1").await;
    line(&mut proxy, "presage: synced with the control plane").await;
    let instances = cp.get("/v1/services/web/instances").await;
    assert!(
        instances
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["healthy"] == true),
        "{instances}"
    );

    // b dies: the proxy's outlier detection ejects it, and says so in its next report.
    b.kill();
    let c = h1_client();
    wait_until(Duration::from_secs(10), || async {
        let _ = c.get(proxy.url("/").parse().unwrap()).await;
        let v = cp.get("/v1/services/web/instances").await;
        let b_view = v
            .as_array()?
            .iter()
            .find(|i| i["address"] == b.addr.to_string())?
            .clone();
        (b_view["healthy"] == false).then_some(())
    })
    .await
    .expect("the control plane learnt that p1 ejected b");
    let v = cp.get("/v1/services/web/instances").await;
    for i in v.as_array().unwrap() {
        if i["address"] == b.addr.to_string() {
            assert_eq!(i["ejected_by"], serde_json::json!(["p1"]), "{v}");
        } else {
            assert_eq!(i["healthy"], true, "{v}");
        }
    }
}

#[tokio::test]
async fn ready_waits_for_the_first_resources_from_the_control_plane() {
    // Nothing listens here: the proxy cannot sync, so it must not claim to be ready.
    let unused = std::net::SocketAddr::from(([127, 0, 0, 1], unused_port()));
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: http://{unused}\n  initial_fetch_timeout: 60s\n"
    )))
    .await;
    let (status, body) = proxy.admin_get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("waiting for the control plane"), "{body}");

    let dir = TempDir::new();
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, None).await;
    let mut proxy = proxy_for(&cp, "p1").await;
    line(&mut proxy, "presage: synced with the control plane").await;
    assert_eq!(proxy.admin_get("/ready").await.0, StatusCode::OK);
}

/// Workload identity with attestation (`identity.attest.kubernetes`): a proxy gets a
/// certificate only for the service account its token belongs to, as the API server's
/// TokenReview says (the replay server answers with the API reference's TokenReview,
/// since no API server can run here; kube's real client asks it over a socket).
#[tokio::test]
async fn a_certificate_is_signed_only_for_the_service_account_of_the_token() {
    use support::replay::{Replay, Reply};
    const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
    let replay = Replay::start().await;
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {},
        "status": {
            "authenticated": true,
            "user": {"username": "system:serviceaccount:shop:frontend", "uid": "4b5c"},
            "audiences": ["presage"]
        }
    });
    let body = review.to_string();
    replay.set(
        REVIEWS,
        Reply {
            body,
            consul_index: None,
        },
    );
    let dir = TempDir::new();
    let kubeconfig = dir.0.join("kubeconfig");
    replay.kubeconfig(&kubeconfig);
    let cfg = dir.0.join("cp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "identity:\n  trust_domain: presage.test\n  attest:\n    kubernetes: {{kubeconfig: {}, audiences: [presage]}}\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, Some(&cfg)).await;
    let token = dir.0.join("token");
    std::fs::write(&token, "frontend-token\n").unwrap();
    let proxy_as = |account: &str| {
        config(&format!(
            "control_plane:\n  address: {}\n  identity: {{namespace: shop, service_account: {account}, token_file: {}}}\n",
            cp.url(),
            token.display()
        ))
    };
    let mut frontend = Proxy::start(&proxy_as("frontend")).await;
    let signed = line(&mut frontend, "presage: identity ").await;
    assert!(
        signed.starts_with("presage: identity spiffe://presage.test/ns/shop/sa/frontend "),
        "{signed}"
    );
    // The token went to the API server, with the audience asked for.
    let asked = (replay.writes().into_iter())
        .find(|w| w.method == "POST" && w.path == REVIEWS)
        .expect("a TokenReview was created");
    let asked: serde_json::Value = serde_json::from_str(&asked.body).unwrap();
    assert_eq!(asked["spec"]["token"], "frontend-token", "{asked}");
    assert_eq!(asked["spec"]["audiences"], serde_json::json!(["presage"]));

    // The same token naming another service account is refused, and counted.
    let _admin = Proxy::start(&proxy_as("admin")).await;
    let certificates = |result: &'static str| {
        let url = format!("http://{}/metrics", cp.api);
        async move {
            let text = get(&h1_client(), &url).await.body;
            metric_sum(
                &text,
                "presage_cp_certificates_total",
                &[("result", result)],
            )
        }
    };
    let denied = wait_until(Duration::from_secs(10), || async {
        (certificates("denied").await >= 1.0).then_some(())
    })
    .await;
    assert!(denied.is_some(), "the admin request was denied");
    assert_eq!(
        certificates("signed").await,
        1.0,
        "only frontend's was signed"
    );
}
