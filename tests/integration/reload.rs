//! Hot reload under load: no request fails while the config is rewritten 50 times; an
//! invalid config is rejected with file:line:column and the old one keeps serving; SIGHUP
//! reloads too, a Kubernetes ConfigMap update is seen, and bound listeners stay as bound.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn variant(a: &Upstream, b: &Upstream, n: usize) -> String {
    // Alternate the target cluster and stamp the generation into a response header.
    let target = if n.is_multiple_of(2) { "a" } else { "b" };
    config(&format!(
        "routes:\n  - name: main\n    cluster: {target}\n    response_headers: {{ add: {{ x-config: \"v{n}\" }} }}\n\
         clusters:\n  - name: a\n    endpoints:\n      - address: \"{}\"\n  - name: b\n    endpoints:\n      - address: \"{}\"\n",
        a.addr, b.addr
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rewrites_under_continuous_load_fail_no_request() {
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    let proxy = Proxy::start(&variant(&a, &b, 0)).await;
    let (ok, bad, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut workers = Vec::new();
    for i in 0..6 {
        let (url, ok, bad, stop) = (proxy.url("/r"), ok.clone(), bad.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // Mix HTTP/1.1 and h2c clients.
            let c = if i % 3 == 0 {
                h2c_client()
            } else {
                h1_client()
            };
            let mut versions = std::collections::BTreeSet::new();
            while stop.load(Ordering::SeqCst) == 0 {
                match c.get(url.parse().unwrap()).await {
                    Ok(res) if res.status() == 200 => {
                        versions.insert(res.headers()["x-config"].to_str().unwrap().to_string());
                        ok.fetch_add(1, Ordering::SeqCst)
                    }
                    other => {
                        eprintln!("failed: {other:?}");
                        bad.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            versions
        }));
    }
    let start = Instant::now();
    for n in 1..=50 {
        proxy.write_config(&variant(&a, &b, n));
        let want = n as u64 + 1;
        proxy
            .wait_reload(|s| s["generation"].as_u64() == Some(want))
            .await;
        // Pace the 50 rewrites over about 20 s of load.
        let due = start + Duration::from_millis(400 * n as u64);
        tokio::time::sleep_until(due.into()).await;
    }
    stop.store(1, Ordering::SeqCst);
    let mut seen = std::collections::BTreeSet::new();
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    let (ok, bad) = (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst));
    assert_eq!(bad, 0, "{bad} failed requests out of {}", ok + bad);
    assert!(ok > 1000, "load ran: {ok} requests");
    assert!(seen.len() > 10, "requests saw many generations: {seen:?}");
    assert!(a.hits() > 0 && b.hits() > 0);
    assert_eq!(proxy.reload_status().await["failures"], 0);
    assert_eq!(proxy.metric("presage_config_generation", &[]).await, 51.0);
}

#[tokio::test]
async fn invalid_config_is_rejected_with_location_and_the_old_keeps_serving() {
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    let proxy = Proxy::start(&variant(&a, &b, 0)).await;
    let path = proxy.config_path().display().to_string();

    // Line 9 has a misspelt field.
    let bad = variant(&a, &b, 1).replace("    cluster: b\n", "    cluster: b\n    timeuot: 5s\n");
    assert_eq!(bad.lines().nth(8), Some("    timeuot: 5s"));
    proxy.write_config(&bad);
    let status = proxy.wait_reload(|s| s["failures"] == 1).await;
    let err = status["last_error"].as_str().unwrap();
    assert!(
        err.starts_with(&format!(
            "{path}:9:5: routes[0].timeuot: unknown field `timeuot`"
        )),
        "{err}"
    );
    assert_eq!(status["generation"], 1);
    let c = h1_client();
    let ans = get(&c, &proxy.url("/")).await;
    assert_eq!(ans.json()["service"], "a", "the old config still serves");
    assert_eq!(ans.headers["x-config"], "v0");
    assert_eq!(
        proxy
            .metric("presage_config_reloads_total", &[("result", "failure")])
            .await,
        1.0
    );

    // A semantic error (unknown cluster) is rejected the same way.
    proxy.write_config(&variant(&a, &b, 1).replace("    cluster: b\n", "    cluster: nope\n"));
    let status = proxy.wait_reload(|s| s["failures"] == 2).await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains(":8:14: routes[0].cluster: no cluster named \"nope\""),
        "{status}"
    );

    // SIGHUP re-reads the file (still invalid: a third failure).
    proxy.signal("HUP");
    proxy.wait_reload(|s| s["failures"] == 3).await;

    // Fixing the file applies it.
    proxy.write_config(&variant(&a, &b, 1));
    let status = proxy.wait_reload(|s| s["generation"] == 2).await;
    assert!(status["last_error"].is_null());
    assert_eq!(get(&c, &proxy.url("/")).await.json()["service"], "b");
    assert_eq!(proxy.admin_get("/config").await.1, variant(&a, &b, 1));
}

/// A Kubernetes ConfigMap update swaps the volume's `..data` symlink and never touches
/// the file's own name: it is seen. SIGHUP rebuilds even an unchanged file (rotated TLS
/// certificates are read again). A reload that renames a bound listener is refused (the
/// port would otherwise serve without that listener's TLS and authorization), and the
/// old config keeps serving.
#[tokio::test]
async fn a_configmap_swap_reloads_sighup_rebuilds_and_bound_listeners_stay() {
    use std::os::unix::fs::symlink;
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    // The layout of a ConfigMap volume: presage.yaml -> ..data/presage.yaml, ..data -> ..v0.
    let dir = TempDir::new();
    let root = dir.0.clone();
    let version = |n: usize| {
        let v = root.join(format!("..v{n}"));
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("presage.yaml"), variant(&a, &b, n)).unwrap();
    };
    version(0);
    symlink("..v0", root.join("..data")).unwrap();
    symlink("..data/presage.yaml", root.join("presage.yaml")).unwrap();
    let path = root.join("presage.yaml").display().to_string();
    let proxy = Proxy::spawn(vec!["proxy".into(), "--config".into(), path], dir).await;
    let c = h1_client();
    assert_eq!(get(&c, &proxy.url("/")).await.json()["service"], "a");

    // The kubelet's atomic writer: a new version directory, then ..data swapped to it.
    version(1);
    symlink("..v1", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    proxy.wait_reload(|s| s["generation"] == 2).await;
    assert_eq!(get(&c, &proxy.url("/")).await.json()["service"], "b");

    proxy.signal("HUP");
    proxy.wait_reload(|s| s["generation"] == 3).await;

    let renamed = variant(&a, &b, 2).replacen("- name: main", "- name: other", 1);
    proxy.write_config(&renamed);
    let status = proxy.wait_reload(|s| s["failures"] == 1).await;
    let err = status["last_error"].as_str().unwrap();
    assert!(
        err.contains("listeners: the bound listeners (main@127.0.0.1:0) cannot change to other@127.0.0.1:0 without a restart"),
        "{err}"
    );
    assert_eq!(status["generation"], 3);
    let ans = get(&c, &proxy.url("/")).await;
    assert_eq!(
        (
            ans.json()["service"].clone(),
            ans.headers["x-config"].clone()
        ),
        ("b".into(), "v1".parse().unwrap())
    );
}

/// A reload that removes a route and a cluster stops exporting their series: in a mesh
/// routes and clusters come and go, and frozen series of the gone ones would pile up for
/// as long as the proxy runs. What the new config keeps keeps its counts.
#[tokio::test]
async fn a_reload_drops_the_series_of_removed_routes_and_clusters() {
    let (a, b) = (Upstream::spawn("a").await, Upstream::spawn("b").await);
    let route = |name: &str, prefix: &str, cluster: &str| {
        format!("  - name: {name}\n    match: {{ path: {{ prefix: {prefix} }} }}\n    cluster: {cluster}\n")
    };
    let cluster = |name: &str, up: &Upstream| {
        format!(
            "  - name: {name}\n    endpoints:\n      - address: \"{}\"\n",
            up.addr
        )
    };
    let both = config(&format!(
        "routes:\n{}{}clusters:\n{}{}",
        route("old", "/old", "gone"),
        route("kept", "/", "up"),
        cluster("gone", &b),
        cluster("up", &a)
    ));
    let proxy = Proxy::start(&both).await;
    let client = h1_client();
    for path in ["/old", "/kept"] {
        let res = client.get(proxy.url(path).parse().unwrap()).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let text = proxy.admin_get("/metrics").await.1;
    assert!(text.contains(r#"route="old""#), "{text}");
    assert!(text.contains(r#"cluster="gone""#), "{text}");

    proxy.write_config(&config(&format!(
        "routes:\n{}clusters:\n{}",
        route("kept", "/", "up"),
        cluster("up", &a)
    )));
    proxy
        .wait_reload(|s| s["generation"].as_u64() == Some(2))
        .await;
    let text = proxy.admin_get("/metrics").await.1;
    assert!(!text.contains(r#"route="old""#), "{text}");
    assert!(!text.contains(r#"cluster="gone""#), "{text}");
    let kept = [
        ("route", "kept"),
        ("cluster", "up"),
        ("status_class", "2xx"),
    ];
    assert_eq!(metric_sum(&text, "presage_requests_total", &kept), 1.0);
    assert_eq!(metric_sum(&text, "presage_config_generation", &[]), 2.0);
}
