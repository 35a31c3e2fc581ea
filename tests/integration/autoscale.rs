//! The live autoscaler: a real control plane process whose planner scales a service
//! through the local-process actuator (real `presage sample-service` processes with a
//! real start-up delay) while a real proxy carries h2load's traffic to them, and a
//! second service through the dry-run actuator. Decisions are read back from
//! `/v1/decisions` with their reasons.

use crate::support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::control_plane::ControlPlane;
use support::*;

const CONFIG: &str = r#"
services:
  - name: api
  - name: catalog
    endpoints: [{ address: "CATALOG" }]
routes:
  - { name: catalog, order: 10, match: { path_prefix: /catalog }, cluster: catalog }
  - { name: api, order: 20, cluster: api }
autoscaling:
  interval: 500ms
  services:
    - service: api
      capacity_rps: 20
      min: 1
      max: 4
      cold_start: 1s
      scale_down_delay: 3s
      actuator:
        local:
          command: ["{presage}", "sample-service", "--listen", "127.0.0.1:{port}",
                    "--name", "api-{index}", "--startup-delay", "300ms"]
          ready_path: /
          drain: 200ms
          cpu: 0.5
          memory_mb: 64
    - service: catalog
      capacity_rps: 2
      max: 50
      level: 95
      policy: { price_per_hour: 0.5, max_cost_per_hour: 1.0 }
      actuator: { dry_run: {} }
"#;

/// The api service's endpoints (none before the first instance made the cluster).
async fn endpoints(cp: &ControlPlane) -> BTreeSet<String> {
    cp.call(http::Method::GET, "/v1/services/api", "").await.1["endpoints"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["address"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn refused(addr: &str) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

/// h2load over HTTP/1.1 at `rps` for `seconds`; returns its "requests:" line.
async fn load(url: String, rps: u32, seconds: u32) -> String {
    let out = tokio::process::Command::new("h2load")
        .args(["--h1", "-c", "4", "--rps", &(rps / 4).to_string(), "-D"])
        .arg(seconds.to_string())
        .arg(url)
        .output()
        .await
        .expect("h2load runs");
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    out.lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("h2load printed no requests line: {out}"))
        .to_string()
}

#[tokio::test]
async fn the_planner_scales_real_processes_with_the_load_and_records_why() {
    let dir = TempDir::new();
    let catalog = Upstream::spawn("catalog").await;
    let cp = ControlPlane::with_config(
        &dir.0,
        &CONFIG.replace("CATALOG", &catalog.addr.to_string()),
    )
    .await;
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n  report_interval: 100ms\n",
        cp.url()
    )))
    .await;

    // The minimum: one instance, started as a process and registered once ready.
    let first = wait_until(Duration::from_secs(15), || async {
        let s = cp.scaled("api").await;
        (s["status"]["ready"] == 1).then_some(s)
    })
    .await
    .expect("the first instance became ready");
    // Per-instance resources follow the traffic's tier: unclassified traffic is bronze.
    assert_eq!(
        first["resources"],
        serde_json::json!({"tier": "bronze", "cpu_weight": 100, "memory_mb": 128})
    );
    let cold = first["status"]["cold_start"]
        .as_f64()
        .expect("a measured cold start");
    assert!(
        cold >= 0.3,
        "launch to ready includes the 300 ms start-up: {cold}"
    );
    // CPU and memory limits: applied through cgroup v2, or the reason they cannot be.
    match first["status"]["limits_unavailable"].as_str() {
        Some(why) => assert!(why.contains("cgroup"), "{why}"),
        None => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let root = presage_control_plane::actuate::cgroup::mount_point(&mountinfo).unwrap();
            let cpu = std::fs::read_to_string(root.join("presage/api-0/cpu.max")).unwrap();
            assert_eq!(cpu.trim(), "50000 100000");
        }
    }
    let answer = wait_until(Duration::from_secs(10), || async {
        let a = get(&h1_client(), &proxy.url("/")).await;
        (a.status == 200).then_some(a)
    })
    .await
    .expect("the proxy reaches the instance");
    assert_eq!(answer.json()["service"], "api-0");
    let decisions = cp.get("/v1/decisions?service=api").await;
    let d0 = &decisions[0];
    assert_eq!(
        (d0["previous"].clone(), d0["target"].clone()),
        (serde_json::Value::Null, 1.into())
    );
    assert_eq!(d0["actuator"], "local");
    assert!(
        d0["reason"].as_str().unwrap().contains("clamped to min"),
        "{d0}"
    );

    // 120 req/s needs 120 / (20 × 0.8) = 8 instances (clamped to the maximum of 4) once
    // the 15 s window of the observed rate has filled.
    let before = endpoints(&cp).await;
    let traffic = tokio::spawn(load(proxy.url("/"), 120, 6));
    let catalog_traffic = tokio::spawn(load(proxy.url("/catalog"), 40, 6));
    let up = wait_until(Duration::from_secs(15), || async {
        let s = cp.scaled("api").await;
        (s["status"]["ready"] == 4).then_some(s)
    })
    .await
    .expect("scaled up to four ready instances under load");
    assert_eq!(up["target"], 4, "{up}");
    let requests = traffic.await.unwrap();
    catalog_traffic.await.unwrap();
    assert!(
        requests.contains(" 0 failed, 0 errored, 0 timeout"),
        "no request failed while instances joined: {requests}"
    );
    // An instance is published to the registry just after it reports ready: await the
    // fourth endpoint rather than read the list once.
    let four = wait_until(Duration::from_secs(10), || async {
        let e = endpoints(&cp).await;
        (e.len() == 4).then_some(e)
    })
    .await;
    let during = match four {
        Some(e) => e,
        None => panic!("four endpoints, have {:?}", endpoints(&cp).await),
    };
    assert!(before.is_subset(&during));
    let names: BTreeSet<String> = {
        let mut n = BTreeSet::new();
        for _ in 0..40 {
            let a = get(&h1_client(), &proxy.url("/")).await;
            n.insert(a.json()["service"].as_str().unwrap().to_string());
        }
        n
    };
    assert!(
        names.len() >= 2,
        "requests spread over the new processes: {names:?}"
    );
    // Each instance's CPU and memory, sampled from its process every second.
    let usage = wait_until(Duration::from_secs(10), || async {
        let u = cp.get("/v1/services/api/usage?horizon=5").await;
        let all = u.as_array()?;
        (all.len() == 4 && all.iter().all(|i| i["samples"].as_u64() >= Some(2))).then_some(u)
    })
    .await
    .expect("every instance's usage is sampled");
    let sampled: BTreeSet<String> = usage
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["endpoint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sampled, during, "one series per running instance");
    for i in usage.as_array().unwrap() {
        // A sample-service process holds megabytes, not kilobytes.
        assert!(i["memory_bytes"].as_f64().unwrap() > 1e6, "{i}");
        assert!(i["cpu_cores_1m"].as_f64().unwrap() >= 0.0, "{i}");
    }
    let (status, body) = cp
        .call(http::Method::GET, "/v1/services/api/usage?horizon=0", "")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "horizon");
    let (status, _) = cp
        .call(http::Method::GET, "/v1/services/catalog/usage", "")
        .await;
    assert_eq!(status, 404, "the dry run sees no processes");
    let decisions = cp.get("/v1/decisions?service=api").await;
    let scale_up = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == 4)
        .expect("the scale-up was recorded");
    let reason = scale_up["reason"].as_str().unwrap();
    assert!(reason.contains("observed"), "{reason}");
    assert!(scale_up["decision"]["observed_rps"].as_f64().unwrap() > 20.0);

    // The load is gone: after the scale-down delay, back to one; the others stop.
    let down = wait_until(Duration::from_secs(20), || async {
        let s = cp.scaled("api").await;
        (s["status"]["ready"] == 1 && s["status"]["starting"] == 0).then_some(s)
    })
    .await
    .expect("scaled back down");
    assert_eq!(down["target"], 1);
    let after = endpoints(&cp).await;
    assert_eq!(after.len(), 1, "{after:?}");
    let left = wait_until(Duration::from_secs(15), || async {
        let u = cp.get("/v1/services/api/usage").await;
        (u.as_array()?.len() == 1).then_some(u)
    })
    .await
    .expect("stopped instances' series are dropped");
    assert!(after.contains(left[0]["endpoint"].as_str().unwrap()));
    for gone in during.difference(&after) {
        let stopped = wait_until(Duration::from_secs(15), || async {
            refused(gone).await.then_some(())
        })
        .await;
        assert!(stopped.is_some(), "the retired process on {gone} exited");
    }

    // The dry run records decisions and starts nothing: the catalog keeps its endpoint.
    let dry = cp.scaled("catalog").await;
    assert_eq!(dry["actuator"], "dry_run");
    let rec = cp.get("/v1/decisions?service=catalog&limit=50").await;
    assert!(rec
        .as_array()
        .is_some_and(|r| !r.is_empty() && r.iter().all(|d| d["actuator"] == "dry_run")));
    let cat = cp.get("/v1/services/catalog").await;
    assert_eq!(cat["endpoints"].as_array().unwrap().len(), 1);
    // Its cost ceiling (1.0/h at 0.5/h each) held it at two though the load asked more.
    let capped = rec
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == 2 && d["decision"]["target"].as_u64().unwrap() > 2)
        .unwrap_or_else(|| panic!("no decision capped at the ceiling: {rec}"));
    assert!(
        capped["reason"]
            .as_str()
            .unwrap()
            .contains("cost ceiling 1/h at 0.5/h each caps"),
        "{capped}"
    );
    // Bad query parameters are a 400 naming the field.
    let (status, body) = cp
        .call(http::Method::GET, "/v1/decisions?limit=0", "")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "limit");

    // A clean stop of the control plane stops the instances it started.
    drop(proxy);
    cp.stop().await;
    for addr in &after {
        let stopped = wait_until(Duration::from_secs(15), || async {
            refused(addr).await.then_some(())
        })
        .await;
        assert!(
            stopped.is_some(),
            "the last instance on {addr} exited with the control plane"
        );
    }
}

#[tokio::test]
async fn instances_do_not_outlive_a_crashed_control_plane() {
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(
        &dir.0,
        r#"
autoscaling:
  interval: 200ms
  services:
    - service: api
      capacity_rps: 20
      min: 2
      actuator:
        local:
          command: ["{presage}", "sample-service", "--listen", "127.0.0.1:{port}"]
"#,
    )
    .await;
    let ready = wait_until(Duration::from_secs(15), || async {
        let e = endpoints(&cp).await;
        (e.len() == 2).then_some(e)
    })
    .await
    .expect("two instances registered");
    for addr in &ready {
        assert!(!refused(addr).await, "{addr} serves");
    }
    // A policy set through the API: bad fields are named, a good one is kept.
    let (status, body) = cp
        .call(
            http::Method::PUT,
            "/v1/autoscaling/api/policy",
            r#"{"rules":[{"if_predicted_utilisation_above":0.8,"add":0}]}"#,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["field"].as_str()),
        (400, Some("rules[0].add")),
        "{body}"
    );
    let (status, _) = cp
        .call(http::Method::PUT, "/v1/autoscaling/nope/policy", "{}")
        .await;
    assert_eq!(status, 404);
    let policy = r#"{"rules":[{"if_predicted_utilisation_above":0.8,"add":2}],"cooldown_s":30.0}"#;
    cp.put("/v1/autoscaling/api/policy", policy).await;

    // SIGKILL: the control plane cannot stop anything; the parent-death signal does.
    let store = cp.store.clone();
    cp.kill().await;
    for addr in &ready {
        let stopped = wait_until(Duration::from_secs(15), || async {
            refused(addr).await.then_some(())
        })
        .await;
        assert!(
            stopped.is_some(),
            "the instance on {addr} exited with its control plane"
        );
    }
    // The policy outlives the crash: the store has it.
    let cp = ControlPlane::start(&store, None, Some(&dir.0.join("cp.yaml"))).await;
    let kept = cp.get("/v1/autoscaling/api/policy").await;
    assert_eq!(kept["rules"][0]["add"], 2, "{kept}");
    assert_eq!(kept["cooldown_s"], 30.0);
    cp.stop().await;
}

/// Requests as `user` through the proxy every 200 ms until `stop`; returns the
/// instances that answered.
fn requests_as(
    url: String,
    user: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let c = h1_client();
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let req = http::Request::get(&url)
                .header("x-presage-user", user)
                .body(http_body_util::Full::default())
                .unwrap();
            let a = send(&c, req).await;
            if a.status == 200 {
                seen.push(a.json()["instance"].as_str().unwrap().to_string());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    })
}

#[tokio::test]
async fn predicted_platinum_users_get_a_warm_instance_that_only_they_reach() {
    warm_instance_for_a_predicted_user(0, "tier:platinum").await;
}

#[tokio::test]
async fn the_busiest_predicted_user_gets_a_warm_instance_of_her_own() {
    warm_instance_for_a_predicted_user(1, "user:alice").await;
}

/// Alice (platinum) and bob (bronze) call through a proxy; the profiler predicts both,
/// and the warm pool (`users` instances for single users at most) starts one instance,
/// reserved `reservation`, that only alice reaches, and releases it after its window.
async fn warm_instance_for_a_predicted_user(users: u32, reservation: &str) {
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(
        &dir.0,
        &r#"
services:
  - name: api
routes:
  - { name: api, cluster: api }
qos_profiles:
  - { name: premium, tier: platinum, latency_p99_ms: 2000, reliability: 0.9 }
autoscaling:
  interval: 300ms
  services:
    - service: api
      capacity_rps: 100
      warm_pool: { tiers: { platinum: 1.0 }, window: 3s, max: 1, min_calls: 0.05, users: USERS }
      actuator:
        local:
          command: ["{presage}", "sample-service", "--listen", "127.0.0.1:{port}", "--name", "api-{index}"]
          drain: 100ms
"#
        .replace("USERS", &users.to_string()),
    )
    .await;
    cp.put("/v1/subjects/alice", r#"{"profile":"premium"}"#)
        .await;
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n  report_interval: 100ms\n",
        cp.url()
    )))
    .await;
    wait_until(Duration::from_secs(15), || async {
        (get(&h1_client(), &proxy.url("/")).await.status == 200).then_some(())
    })
    .await
    .expect("the standard instance serves");
    wait_until(Duration::from_secs(10), || async {
        let p = cp.proxy("p1").await?;
        p["acked"].get(presage_api::types::SUBJECT).map(|_| ())
    })
    .await
    .expect("the proxy has alice's profile");

    // Alice (platinum) and bob (unclassified: bronze) call; the profiler predicts both.
    let stop = Arc::new(AtomicBool::new(false));
    let alice = requests_as(proxy.url("/"), "alice", stop.clone());
    let bob = requests_as(proxy.url("/"), "bob", stop.clone());
    let warm = wait_until(Duration::from_secs(20), || async {
        let s = cp.scaled("api").await;
        (s["status"]["warm_ready"] == 1).then_some(s)
    })
    .await
    .expect("a warm instance for the predicted platinum user");
    assert_eq!(warm["warm"], serde_json::json!({reservation: 1}), "{warm}");
    // Platinum traffic: the instances get platinum's allocation (in place).
    assert_eq!(warm["resources"]["tier"], "platinum", "{warm}");
    assert_eq!(warm["resources"]["cpu_weight"], 800);
    let warm_addr = wait_until(Duration::from_secs(5), || async {
        let cluster = cp.get("/v1/services/api").await;
        cluster["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["metadata"]["pool"] == "warm")
            .map(|e| {
                assert_eq!(e["metadata"]["reserved_for"], reservation);
                e["address"].as_str().unwrap().to_string()
            })
    })
    .await;
    let cluster = cp.get("/v1/services/api").await;
    let warm_addr = warm_addr.unwrap_or_else(|| panic!("no warm endpoint: {cluster}"));
    // Both keep calling once the proxy has the warm endpoint.
    wait_until(Duration::from_secs(5), || async {
        (proxy
            .metric(
                "presage_qos_requests_total",
                &[("tier", "platinum"), ("outcome", "warm_hit")],
            )
            .await
            >= 5.0)
            .then_some(())
    })
    .await
    .expect("alice's requests hit the warm instance");
    // The request record says the warm pool served it (`getServiceStatus`).
    let req = http::Request::get(proxy.url("/"))
        .header("x-presage-user", "alice")
        .header("x-request-id", "warm-check-1")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(
        send(&h1_client(), req).await.json()["instance"],
        warm_addr.as_str()
    );
    let served = wait_until(Duration::from_secs(5), || async {
        let (status, r) = cp
            .call(http::Method::GET, "/v1/requests/warm-check-1", "")
            .await;
        (status == 200).then_some(r)
    })
    .await
    .expect("the request was recorded");
    assert_eq!(
        (served["warm_pool"].as_bool(), served["reason"].as_str()),
        (Some(true), Some("warm-pool")),
        "{served}"
    );
    let record = cp.get("/v1/decisions?service=api").await;
    let with_warm = record
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["warm"][reservation] == 1)
        .expect("the warm pool was a recorded decision");
    assert!(
        with_warm["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("warm {reservation}: 1 for")),
        "{with_warm}"
    );
    stop.store(true, Ordering::Relaxed);
    let (alice, bob) = (alice.await.unwrap(), bob.await.unwrap());
    assert!(
        !bob.contains(&warm_addr),
        "bob never reached the warm instance: {bob:?}"
    );
    assert!(alice.contains(&warm_addr), "{alice:?}");

    // Nobody predicted any more: after its window the warm instance is released.
    wait_until(Duration::from_secs(15), || async {
        let s = cp.scaled("api").await;
        (s["status"]["warm_ready"] == 0 && s["warm"] == serde_json::json!({})).then_some(())
    })
    .await
    .expect("the warm pool released after its window");
    let gone = wait_until(Duration::from_secs(10), || async {
        refused(&warm_addr).await.then_some(())
    })
    .await;
    assert!(gone.is_some(), "the warm process exited");
    drop(proxy);
    cp.stop().await;
}

/// One request as `user` to `path`; the instance that answered.
async fn call_as(proxy: &Proxy, path: &str, user: &str) -> String {
    let req = http::Request::get(proxy.url(path))
        .header("x-presage-user", user)
        .body(http_body_util::Full::default())
        .unwrap();
    let a = send(&h1_client(), req).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // The sample service names its address; the test upstream only its name.
    let j = a.json();
    j["instance"]
        .as_str()
        .unwrap_or_else(|| j["service"].as_str().unwrap())
        .to_string()
}

#[tokio::test]
async fn the_warm_instance_is_up_before_the_predicted_users_first_call() {
    let catalog = Upstream::spawn("catalog").await;
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(
        &dir.0,
        &format!(
            r#"
services:
  - name: api
  - name: catalog
    endpoints: [{{ address: "{}" }}]
routes:
  - {{ name: catalog, order: 1, match: {{ path_prefix: /catalog }}, cluster: catalog }}
  - {{ name: api, order: 2, cluster: api }}
autoscaling:
  interval: 300ms
  services:
    - service: api
      capacity_rps: 100
      warm_pool: {{ tiers: {{ gold: 1.0 }}, window: 2s, max: 1, min_calls: 0.02 }}
      actuator:
        local:
          command: ["{{presage}}", "sample-service", "--listen", "127.0.0.1:{{port}}"]
          drain: 100ms
"#,
            catalog.addr
        ),
    )
    .await;
    cp.put("/v1/subjects/alice", r#"{"tier":"gold"}"#).await;
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n  report_interval: 100ms\n",
        cp.url()
    )))
    .await;
    wait_until(Duration::from_secs(15), || async {
        let p = cp.proxy("p1").await?;
        let ready = get(&h1_client(), &proxy.url("/")).await.status == 200;
        (ready && p["acked"].get(presage_api::types::SUBJECT).is_some()).then_some(())
    })
    .await
    .expect("the mesh serves api and the proxy has alice's tier");
    let warm_endpoint = || async {
        let c = cp.get("/v1/services/api").await;
        c["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["metadata"]["pool"] == "warm")
            .map(|e| e["address"].as_str().unwrap().to_string())
    };

    // Yesterday's session: alice browses the catalog, then calls api, again and again.
    for _ in 0..8 {
        call_as(&proxy, "/catalog", "alice").await;
        call_as(&proxy, "/", "alice").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // She leaves; the warm pool her session asked for goes after its window.
    wait_until(Duration::from_secs(20), || async {
        let s = cp.scaled("api").await;
        (s["warm"] == serde_json::json!({}) && s["status"]["warm_ready"] == 0).then_some(())
    })
    .await
    .expect("the warm pool released once alice left");
    wait_until(Duration::from_secs(10), || async {
        warm_endpoint().await.is_none().then_some(())
    })
    .await
    .expect("and deregistered");
    let hits = || async {
        proxy
            .metric(
                "presage_qos_requests_total",
                &[("tier", "gold"), ("outcome", "warm_hit")],
            )
            .await
    };
    let hits_before = hits().await;

    // Today: she opens the catalog. The profiler predicts her api call from her history,
    // and a warm instance is started for it before she makes it.
    let warm = wait_until(Duration::from_secs(20), || async {
        call_as(&proxy, "/catalog", "alice").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let w = warm_endpoint().await?;
        let s = cp.scaled("api").await;
        (s["status"]["warm_ready"] == 1).then_some(w)
    })
    .await
    .expect("a warm api instance for alice's predicted call");
    // Once the proxy has the endpoint (its health gauge appears), her first api call.
    wait_until(Duration::from_secs(5), || async {
        let healthy = proxy
            .metric(
                "presage_endpoint_healthy",
                &[("cluster", "api"), ("endpoint", warm.as_str())],
            )
            .await;
        (healthy == 1.0).then_some(())
    })
    .await
    .expect("the proxy has the warm endpoint");
    assert_eq!(
        call_as(&proxy, "/", "alice").await,
        warm,
        "her first api call of the session"
    );
    assert_eq!(hits().await, hits_before + 1.0);
    drop(proxy);
    cp.stop().await;
}

/// An instance started through a wrapper (`sh -c`, as start scripts do) is stopped whole:
/// the actuator signals the instance's process group, so what the wrapper started does
/// not outlive it.
#[tokio::test]
async fn a_wrapped_instance_stops_with_everything_it_started() {
    let dir = TempDir::new();
    let marker = dir.0.join("sleeper.pid");
    let cp = ControlPlane::with_config(
        &dir.0,
        &format!(
            r#"
autoscaling:
  interval: 200ms
  services:
    - service: api
      capacity_rps: 20
      min: 1
      max: 1
      actuator:
        local:
          command: ["sh", "-c", "sleep 600 & echo $! > {marker}; exec {{presage}} sample-service --listen 127.0.0.1:{{port}}"]
"#,
            marker = marker.display()
        ),
    )
    .await;
    wait_until(Duration::from_secs(15), || async {
        (endpoints(&cp).await.len() == 1).then_some(())
    })
    .await
    .expect("the instance is up");
    let pid: u32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Running, not a zombie waiting to be reaped.
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    assert!(alive(pid), "the wrapper's sleep runs");
    cp.stop().await;
    let gone = wait_until(Duration::from_secs(15), || async {
        (!alive(pid)).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the sleep the wrapper started stopped with the instance"
    );
}
