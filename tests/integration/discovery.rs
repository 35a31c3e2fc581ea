//! Service discovery against a real etcd: registration, deregistration and lease expiry
//! flow to a proxy's routing; bad registry data is skipped; an outage keeps the last
//! known endpoints.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::control_plane::ControlPlane;
use support::etcd::Etcd;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// `presage sample-service` registered in etcd under service `web`.
struct Instance {
    child: tokio::process::Child,
    addr: SocketAddr,
    registered: Instant,
}

async fn instance(etcd: &Etcd, id: &str, ttl: &str) -> Instance {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "sample-service",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "web",
            "--instance",
            id,
        ])
        .args([
            "--register-etcd",
            &etcd.endpoint,
            "--register-ttl",
            ttl,
            "--zone",
            "z1",
            "--price",
            "0.25",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Printed once the registration is stored.
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    Instance {
        child,
        addr,
        registered: Instant::now(),
    }
}

async fn mesh(etcd: &Etcd, dir: &TempDir) -> (ControlPlane, Proxy) {
    let cp = ControlPlane::with_config(
        &dir.0,
        &format!(
            "discovery:\n  etcd:\n    endpoints: [\"{}\"]\nroutes:\n  - {{name: all, cluster: web}}\n",
            etcd.endpoint
        ),
    )
    .await;
    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n  report_interval: 100ms\n",
        cp.url()
    )))
    .await;
    (cp, proxy)
}

/// Instances of `web` the control plane serves, by address.
async fn instances(cp: &ControlPlane) -> Vec<String> {
    let (s, v) = cp
        .call(http::Method::GET, "/v1/services/web/instances", "")
        .await;
    if s != StatusCode::OK {
        return Vec::new();
    }
    let mut a: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    a.sort();
    a
}

/// Polls the proxy until a GET is answered by `addr` (or, with None, gets a 503).
async fn until_served_by(proxy: &Proxy, addr: Option<SocketAddr>) -> Instant {
    let c = h1_client();
    wait_until(Duration::from_secs(10), || async {
        let a = get(&c, &proxy.url("/")).await;
        let ok = match addr {
            Some(addr) => a.status == StatusCode::OK && a.json()["instance"] == addr.to_string(),
            None => a.status == StatusCode::SERVICE_UNAVAILABLE,
        };
        ok.then(Instant::now)
    })
    .await
    .unwrap_or_else(|| panic!("proxy never served by {addr:?}"))
}

#[tokio::test]
async fn registration_deregistration_and_lease_expiry_reach_the_proxy_within_a_second() {
    let etcd = Etcd::start().await;
    let dir = TempDir::new();
    let (cp, proxy) = mesh(&etcd, &dir).await;

    // Registered: in the proxy's routing within a second.
    let a = instance(&etcd, "a", "2s").await;
    let served = until_served_by(&proxy, Some(a.addr)).await;
    assert!(
        served - a.registered < Duration::from_secs(1),
        "registration took {:?}",
        served - a.registered
    );
    let web = cp.get("/v1/services/web").await;
    assert_eq!(web["endpoints"][0]["metadata"]["zone"], "z1", "{web}");
    assert_eq!(web["endpoints"][0]["metadata"]["price"], "0.25", "{web}");

    // A second instance, then a clean stop: SIGTERM deregisters it (revokes its lease).
    let mut b = instance(&etcd, "b", "30s").await;
    wait_until(Duration::from_secs(5), || async {
        (instances(&cp).await.len() == 2).then_some(())
    })
    .await
    .expect("both instances registered");
    let pid = b.child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(b.child.wait().await.unwrap().success());
    let stopped = Instant::now();
    let want = vec![a.addr.to_string()];
    let gone = wait_until(Duration::from_secs(5), || async {
        (instances(&cp).await == want).then(Instant::now)
    })
    .await
    .expect("deregistration reached the control plane");
    // 30 s TTL: only the revoke can have removed it this fast.
    assert!(
        gone - stopped < Duration::from_secs(1),
        "deregistration took {:?}",
        gone - stopped
    );
    let c = h1_client();
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(r.json()["instance"], a.addr.to_string());
    }

    // A crash: nothing deregisters, the 2 s lease expires and the instance goes.
    let mut a = a;
    a.child.kill().await.unwrap();
    let killed = Instant::now();
    let empty = until_served_by(&proxy, None).await;
    assert!(
        empty - killed < Duration::from_secs(3),
        "lease expiry (2 s TTL) took {:?} to reach the proxy",
        empty - killed
    );
    assert!(instances(&cp).await.is_empty());
}

#[tokio::test]
async fn bad_registry_data_is_skipped_and_an_outage_keeps_the_last_endpoints() {
    let mut etcd = Etcd::start().await;
    let dir = TempDir::new();
    let good = instance(&etcd, "good", "30s").await;
    let (cp, proxy) = mesh(&etcd, &dir).await;
    until_served_by(&proxy, Some(good.addr)).await;

    // Malformed JSON, a missing port, an unknown field, and garbage over the good
    // instance's own key: all skipped, and the good copy stays.
    let mut c = etcd.client().await;
    for (key, value) in [
        ("/presage/services/web/broken", "{not json"),
        ("/presage/services/web/noport", r#"{"address":"127.0.0.1"}"#),
        (
            "/presage/services/web/extra",
            r#"{"address":"127.0.0.1","port":1,"colour":"red"}"#,
        ),
        ("/presage/services/web/good", "garbage"),
    ] {
        c.put(key, value, None).await.unwrap();
    }
    let metrics = wait_until(Duration::from_secs(5), || async {
        let text = metrics_text(&cp).await;
        (metric_sum(
            &text,
            "presage_cp_discovery_skipped_total",
            &[("registry", "etcd")],
        ) >= 4.0)
            .then_some(text)
    })
    .await
    .expect("every bad record counted");
    assert_eq!(
        metric_sum(&metrics, "presage_cp_discovery_up", &[("registry", "etcd")]),
        1.0
    );
    assert_eq!(instances(&cp).await, vec![good.addr.to_string()]);
    until_served_by(&proxy, Some(good.addr)).await;

    // The registry goes away: visible in metrics, and the last endpoints keep serving.
    etcd.child.kill().await.unwrap();
    wait_until(Duration::from_secs(20), || async {
        let text = metrics_text(&cp).await;
        (metric_sum(&text, "presage_cp_discovery_up", &[("registry", "etcd")]) == 0.0).then_some(())
    })
    .await
    .expect("the outage shows in presage_cp_discovery_up");
    assert_eq!(instances(&cp).await, vec![good.addr.to_string()]);
    let c = h1_client();
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["instance"], good.addr.to_string());
    }
}

async fn metrics_text(cp: &ControlPlane) -> String {
    let res = h1_client()
        .get(format!("http://{}/metrics", cp.api).parse().unwrap())
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// A registration outlives etcd losing it: when etcd comes back empty (restarted without
/// its data, every lease gone), the instance's lease is granted again and its record put
/// back, with no restart of the instance.
#[tokio::test]
async fn a_registration_comes_back_after_etcd_loses_it() {
    let mut etcd = Etcd::start().await;
    let _a = instance(&etcd, "a-1", "2s").await;
    const KEY: &str = "/presage/services/web/a-1";
    let stored = |etcd: &Etcd| {
        let endpoint = etcd.endpoint.clone();
        async move {
            let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                .await
                .ok()?;
            let r = c.get(KEY, None).await.ok()?;
            (!r.kvs().is_empty()).then_some(())
        }
    };
    assert!(stored(&etcd).await.is_some(), "registered");
    etcd.restart_empty().await;
    let back = wait_until(Duration::from_secs(20), || stored(&etcd)).await;
    assert!(back.is_some(), "the record was put back in the new etcd");
}

/// An instance that went while the control plane was down is not served from the store
/// when it comes back: etcd's first listing no longer has the service, and the stored
/// endpoints all came from etcd, so they are dropped.
#[tokio::test]
async fn an_instance_gone_while_the_control_plane_was_down_is_dropped() {
    let etcd = Etcd::start().await;
    let dir = TempDir::new();
    let yaml = format!(
        "discovery:\n  etcd:\n    endpoints: [\"{}\"]\n",
        etcd.endpoint
    );
    let cp = ControlPlane::with_config(&dir.0, &yaml).await;
    let mut a = instance(&etcd, "a-1", "2s").await;
    let addr = a.addr.to_string();
    wait_until(Duration::from_secs(10), || async {
        (instances(&cp).await == [addr.clone()]).then_some(())
    })
    .await
    .expect("the control plane serves the instance");
    cp.stop().await;
    // The instance dies (no deregistration) and its lease expires meanwhile.
    a.child.kill().await.unwrap();
    let expired = wait_until(Duration::from_secs(15), || async {
        let r = etcd
            .client()
            .await
            .get("/presage/services/web/a-1", None)
            .await
            .ok()?;
        r.kvs().is_empty().then_some(())
    })
    .await;
    assert!(expired.is_some(), "the lease expired");
    let cp = ControlPlane::with_config(&dir.0, &yaml).await;
    let dropped = wait_until(Duration::from_secs(10), || async {
        instances(&cp).await.is_empty().then_some(())
    })
    .await;
    assert!(
        dropped.is_some(),
        "the stored endpoint of the gone instance was dropped: {:?}",
        instances(&cp).await
    );
}
