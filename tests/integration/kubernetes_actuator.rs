//! The Kubernetes actuator against the replay server: no API server can run on this
//! machine, so a local server answers with the request/response shapes of the
//! Kubernetes API reference (Deployment, Scale, PodList, the pods' `resize`
//! subresource), and kube's real client talks to it over a real socket.

use crate::support;

use std::time::Duration;

use support::control_plane::ControlPlane;
use support::replay::{Replay, Reply};
use support::*;

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/search";
const PODS: &str = "/api/v1/namespaces/shop/pods";

fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn reply(v: &serde_json::Value) -> Reply {
    Reply {
        body: v.to_string(),
        consul_index: None,
    }
}

/// The replay server with the Deployment `deployment` and its scale subresource.
async fn api_server(deployment: &serde_json::Value) -> Replay {
    let replay = Replay::start().await;
    replay.set(DEPLOYMENT, reply(deployment));
    replay.set(
        &format!("{DEPLOYMENT}/scale"),
        reply(&fixture_json("kubernetes/scale.json")),
    );
    replay
}

/// A control plane scaling `search` through the Kubernetes actuator of the replay
/// server, with `extra` fields on the actuator.
async fn control_plane(dir: &TempDir, replay: &Replay, extra: &str) -> ControlPlane {
    let kubeconfig = dir.0.join("kubeconfig");
    replay.kubeconfig(&kubeconfig);
    let cfg = dir.0.join("cp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "autoscaling:\n  interval: 200ms\n  services:\n    - service: search\n      capacity_rps: 10\n      min: 3\n      actuator:\n        kubernetes: {{kubeconfig: {}, namespace: shop, deployment: search{extra}}}\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    ControlPlane::start(&dir.0.join("cp.redb"), None, Some(&cfg)).await
}

#[tokio::test]
async fn the_kubernetes_actuator_patches_the_deployment_scale_and_reads_readiness() {
    let mut deployment = fixture_json("kubernetes/deployment.json");
    let replay = api_server(&deployment).await;
    let dir = TempDir::new();
    let cp = control_plane(&dir, &replay, "").await;

    // The minimum of 3 is a merge patch of the scale subresource, as `kubectl scale`.
    let patch = wait_until(Duration::from_secs(10), || async {
        replay
            .writes()
            .into_iter()
            .find(|w| w.method == "PATCH" && w.path == format!("{DEPLOYMENT}/scale"))
    })
    .await
    .expect("the scale subresource was patched");
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let body: serde_json::Value = serde_json::from_str(&patch.body).unwrap();
    assert_eq!(body, serde_json::json!({"spec": {"replicas": 3}}));
    // The API server now has three replicas wanted, one ready (the new pods are starting).
    deployment["spec"]["replicas"] = 3.into();
    deployment["status"]["replicas"] = 3.into();
    replay.set(DEPLOYMENT, reply(&deployment));
    let starting = wait_until(Duration::from_secs(10), || async {
        let s = cp.scaled("search").await;
        (s["status"]["starting"] == 2).then_some(s)
    })
    .await
    .expect("two replicas starting");
    assert_eq!(starting["status"]["ready"], 1, "{starting}");
    assert!(starting["status"]["cold_start"].is_null());
    // The cluster brings them up: ready replicas and the measured cold start follow.
    deployment["status"]["readyReplicas"] = 3.into();
    replay.set(DEPLOYMENT, reply(&deployment));
    let ready = wait_until(Duration::from_secs(10), || async {
        let s = cp.scaled("search").await;
        (s["status"]["ready"] == 3).then_some(s)
    })
    .await
    .expect("three replicas ready");
    assert_eq!(ready["status"]["starting"], 0);
    assert!(
        ready["status"]["cold_start"].as_f64().unwrap() > 0.0,
        "{ready}"
    );
    let d = cp.get("/v1/decisions?service=search").await;
    assert_eq!(d[0]["actuator"], "kubernetes");
    assert_eq!(d[0]["target"], 3);
    // Patched once: an unchanged target is not patched again.
    let patches = replay
        .writes()
        .iter()
        .filter(|w| w.method == "PATCH")
        .count();
    assert_eq!(patches, 1);

    // Someone scales the Deployment by hand (`kubectl scale --replicas=5`): the actuator
    // owns the count and patches it back.
    deployment["spec"]["replicas"] = 5.into();
    replay.set(DEPLOYMENT, reply(&deployment));
    let again = wait_until(Duration::from_secs(10), || async {
        let patches: Vec<_> = (replay.writes().into_iter())
            .filter(|w| w.method == "PATCH" && w.path == format!("{DEPLOYMENT}/scale"))
            .collect();
        (patches.len() == 2).then(|| patches[1].body.clone())
    })
    .await
    .expect("the drift was patched back");
    let body: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(body, serde_json::json!({"spec": {"replicas": 3}}));
    deployment["spec"]["replicas"] = 3.into();
    replay.set(DEPLOYMENT, reply(&deployment));

    // An API server outage is a recorded failure (once, not every interval), not a crash.
    replay.fail(Some(http::StatusCode::INTERNAL_SERVER_ERROR));
    let failed = wait_until(Duration::from_secs(10), || async {
        let d = cp.get("/v1/decisions?service=search").await;
        d[0]["error"].as_str().map(str::to_string)
    })
    .await
    .expect("the failure was recorded");
    assert!(failed.contains("deployment shop/search"), "{failed}");
    tokio::time::sleep(Duration::from_millis(600)).await; // three intervals of the outage
    let d = cp.get("/v1/decisions?service=search").await;
    assert_eq!(
        d.as_array().unwrap().len(),
        2,
        "one record per failure, not per interval: {d}"
    );
    replay.fail(None);
    cp.stop().await;
}

/// Bronze (the tier of a service without classified traffic): 100 CPU shares and
/// 128 MiB, as container requests.
fn bronze_requests() -> serde_json::Value {
    serde_json::json!({"cpu": "98m", "memory": "128Mi"})
}

/// Requests for `path` logged so far.
fn reads(replay: &Replay, path: &str) -> usize {
    replay
        .log()
        .iter()
        .filter(|l| l.split('?').next() == Some(path))
        .count()
}

#[tokio::test]
async fn the_kubernetes_actuator_resizes_running_pods_in_place_and_reports_a_cluster_without_it() {
    let replay = api_server(&fixture_json("kubernetes/deployment.json")).await;
    let pods = fixture_json("kubernetes/pod-list.json");
    replay.set(PODS, reply(&pods));
    let dir = TempDir::new();
    let cp = control_plane(&dir, &replay, ", resize: in_place").await;

    // No `resize` subresource (a cluster before 1.33): said, and nothing rolled instead.
    let old = "search-5d8c7b9f6-2xk4p";
    let unsupported = wait_until(Duration::from_secs(10), || async {
        cp.scaled("search").await["status"]["limits_unavailable"]
            .as_str()
            .map(str::to_string)
    })
    .await
    .expect("the missing subresource is reported");
    assert!(
        unsupported.contains("in-place resize is not supported by this cluster")
            && unsupported.contains(&format!("pods/{old}/resize: 404")),
        "{unsupported}"
    );
    // The cluster has it: the pod whose requests differ is resized, the other left.
    let mut resized = pods["items"][0].clone();
    resized["spec"]["containers"][0]["resources"]["requests"] = bronze_requests();
    replay.set(&format!("{PODS}/{old}/resize"), reply(&resized));
    let patch = wait_until(Duration::from_secs(10), || async {
        replay
            .writes()
            .into_iter()
            .find(|w| w.method == "PATCH" && w.path == format!("{PODS}/{old}/resize"))
    })
    .await
    .expect("the pod was resized");
    assert_eq!(patch.content_type, "application/strategic-merge-patch+json");
    let body: serde_json::Value = serde_json::from_str(&patch.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"spec": {"containers": [
            {"name": "search", "resources": {"requests": bronze_requests()}}
        ]}})
    );
    wait_until(Duration::from_secs(10), || async {
        cp.scaled("search").await["status"]["limits_unavailable"]
            .is_null()
            .then_some(())
    })
    .await
    .expect("the report cleared once resized");
    let writes = replay.writes();
    assert!(
        writes.iter().all(|w| !w.path.contains("9qv7m")),
        "the pod already at bronze's requests is not patched"
    );
    assert!(
        writes.iter().all(|w| w.path != DEPLOYMENT),
        "in place: the Deployment's template is left alone (no rollout)"
    );
    cp.stop().await;
}

#[tokio::test]
async fn the_kubernetes_actuator_rolls_out_new_resources_through_the_pod_template() {
    let mut deployment = fixture_json("kubernetes/deployment.json");
    let replay = api_server(&deployment).await;
    let dir = TempDir::new();
    let cp = control_plane(&dir, &replay, ", resize: rollout").await;

    let template_patches = || {
        replay
            .writes()
            .into_iter()
            .filter(|w| w.method == "PATCH" && w.path == DEPLOYMENT)
            .collect::<Vec<_>>()
    };
    let patch = wait_until(Duration::from_secs(10), || async {
        template_patches().into_iter().next()
    })
    .await
    .expect("the pod template was patched");
    assert_eq!(patch.content_type, "application/strategic-merge-patch+json");
    let body: serde_json::Value = serde_json::from_str(&patch.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "search", "resources": {"requests": bronze_requests()}}
        ]}}}})
    );
    // The API server applied it: later intervals read it and patch nothing more.
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] =
        bronze_requests();
    replay.set(DEPLOYMENT, reply(&deployment));
    let seen = reads(&replay, DEPLOYMENT);
    wait_until(Duration::from_secs(10), || async {
        (reads(&replay, DEPLOYMENT) >= seen + 3).then_some(())
    })
    .await
    .expect("three more intervals");
    assert_eq!(template_patches().len(), 1);
    assert!(cp.scaled("search").await["status"]["limits_unavailable"].is_null());
    cp.stop().await;
}
