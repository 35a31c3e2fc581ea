//! The dependency map (`/v1/dependencies`): manual edges from the config and the REST API
//! (kept in the store, bad fields named), and edges discovered from real proxies'
//! telemetry: an edge proxy in front of `frontend` and `frontend`'s sidecar calling `api`,
//! so the discovered ratio is the calls the sidecar sent per request frontend received.

use crate::support;

use std::time::Duration;

use http::Method;
use support::control_plane::ControlPlane;
use support::*;

async fn edge(cp: &ControlPlane, from: &str, to: &str) -> Option<serde_json::Value> {
    let (status, e) = cp
        .call(Method::GET, &format!("/v1/dependencies/{from}/{to}"), "")
        .await;
    (status == 200).then_some(e)
}

#[tokio::test]
async fn manual_edges_are_kept_and_discovered_ones_match_the_traffic() {
    let (frontend, api) = (
        Upstream::spawn("frontend").await,
        Upstream::spawn("api").await,
    );
    let dir = TempDir::new();
    let cfg = dir.0.join("cp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "services:\n  - name: frontend\n    endpoints: [{{ address: \"{}\" }}]\n  - name: api\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: api, order: 10, match: {{ path_prefix: /api }}, cluster: api }}\n  - {{ name: frontend, order: 20, cluster: frontend }}\ndependencies:\n  - {{ from: api, to: db, kind: mandatory, ratio: 1.5 }}\n",
            frontend.addr, api.addr
        ),
    )
    .unwrap();
    let store = dir.0.join("cp.redb");
    let cp = ControlPlane::start(&store, None, Some(&cfg)).await;

    // From the config: a manual edge.
    let imported = edge(&cp, "api", "db")
        .await
        .expect("imported from the config");
    assert_eq!(
        (
            imported["kind"].as_str(),
            imported["ratio"].as_f64(),
            imported["source"].as_str()
        ),
        (Some("mandatory"), Some(1.5), Some("manual"))
    );
    // Through the API: set, read back; bad fields named.
    let (status, set) = cp
        .call(
            Method::PUT,
            "/v1/dependencies/frontend/search",
            r#"{"kind":"best_effort","ratio":0.5}"#,
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["kind"], "best_effort");
    for (path, body, field) in [
        (
            "/v1/dependencies/frontend/search",
            r#"{"ratio":-2}"#,
            "ratio",
        ),
        (
            "/v1/dependencies/frontend/search",
            r#"{"kind":"sometimes","ratio":1}"#,
            "kind",
        ),
        ("/v1/dependencies/frontend/frontend", r#"{"ratio":1}"#, "to"),
        (
            "/v1/dependencies/Front%20End/search",
            r#"{"ratio":1}"#,
            "from",
        ),
    ] {
        let (status, e) = cp.call(Method::PUT, path, body).await;
        assert_eq!(status, 400, "{path} {body}: {e}");
        assert_eq!(e["field"], field, "{e}");
    }

    // Discovered: the edge proxy sends 10 requests to frontend, frontend's sidecar 20 to api.
    let control_plane = |service: &str| {
        format!(
            "control_plane:\n  address: {}\n  node_id: {service}-proxy\n  report_interval: 100ms\n{}",
            cp.url(),
            if service.is_empty() {
                String::new()
            } else {
                format!("  service: {service}\n")
            }
        )
    };
    let edge_proxy = Proxy::start(&config(&control_plane(""))).await;
    let sidecar = Proxy::start(&config(&control_plane("frontend"))).await;
    let c = h1_client();
    for (proxy, path) in [(&edge_proxy, "/"), (&sidecar, "/api")] {
        wait_until(Duration::from_secs(10), || async {
            (get(&c, &proxy.url(path)).await.status == 200).then_some(())
        })
        .await
        .expect("the proxy routes");
    }
    let (f0, a0) = (frontend.hits(), api.hits());
    for _ in 0..10 {
        assert_eq!(get(&c, &edge_proxy.url("/")).await.status, 200);
    }
    for _ in 0..20 {
        assert_eq!(get(&c, &sidecar.url("/api")).await.status, 200);
    }
    let (calls, received) = (api.hits() - a0, frontend.hits() - f0);
    assert_eq!((calls, received), (20, 10));
    // Every request the proxies answered so far is reported within the window: the
    // warm-up ones too, so the counts are compared with the upstreams' own.
    let (fa, total_calls, total_received) = (
        wait_until(Duration::from_secs(10), || async {
            let e = edge(&cp, "frontend", "api").await?;
            let d = &e["discovered"];
            (d["calls"].as_u64()? == api.hits() as u64
                && d["caller_requests"].as_u64()? == frontend.hits() as u64)
                .then_some(e)
        })
        .await,
        api.hits(),
        frontend.hits(),
    );
    let map = cp.get("/v1/dependencies").await;
    let fa = fa.unwrap_or_else(|| panic!("frontend -> api discovered: {map}"));
    assert_eq!(fa["source"], "discovered");
    assert_eq!(
        fa["kind"], "mandatory",
        "discovered alone: assumed mandatory"
    );
    let ratio = fa["ratio"].as_f64().unwrap();
    assert!(
        (ratio - total_calls as f64 / total_received as f64).abs() < 1e-9,
        "{fa}"
    );
    let d = &fa["discovered"];
    assert!(
        d["window_start_ms"].as_i64() <= d["window_end_ms"].as_i64(),
        "{fa}"
    );
    assert!(d["first_seen_ms"].as_i64().unwrap() > 0);
    // The edge proxy fronts no service: it adds no edge of its own.
    let all = cp.get("/v1/dependencies").await;
    let pairs: Vec<(String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("api".to_string(), "db".to_string()),
            ("frontend".into(), "api".into()),
            ("frontend".into(), "search".into()),
        ]
    );
    drop((edge_proxy, sidecar));

    // Manual edges outlive the control plane; deleting one is 204, then 404.
    cp.stop().await;
    let cp = ControlPlane::start(&store, None, None).await;
    assert!(edge(&cp, "frontend", "search").await.is_some());
    let (status, _) = cp
        .call(Method::DELETE, "/v1/dependencies/frontend/search", "")
        .await;
    assert_eq!(status, 204);
    let (status, _) = cp
        .call(Method::DELETE, "/v1/dependencies/frontend/search", "")
        .await;
    assert_eq!(status, 404);
    cp.stop().await;
}
