//! Simulated proxies for the control-plane benchmark: N lightweight discovery + telemetry
//! stream clients in one process, each on its own HTTP/2 connection, as N sidecars would be.
//!
//! Measures, against a running `presage control-plane`:
//! - convergence: from an endpoint change (a REST PUT) until every simulated proxy has
//!   received the new cluster version and sent its ACK (p50, p99, max over proxies);
//! - control-plane RSS and CPU (read from /proc/PID) idle-connected and under telemetry;
//! - telemetry reports ingested per second (counted by the control plane's own totals).
//!
//! Usage: sim --grpc http://127.0.0.1:9902 --api 127.0.0.1:9903 --cp-pid PID --proxies N
//!            [--changes 10] [--report-interval-ms 1000] [--telemetry-secs 10]
//!            [--etcd HOST:PORT --services 500 --instances 10000]
//! With --etcd (the discovery benchmark) the simulator first writes the instances into
//! etcd, and each measured change moves one instance of one service in etcd, so the
//! latency covers registry -> control plane -> every proxy's ACK.
//! Prints one JSON line of results.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use http_body_util::{BodyExt, Full};
use presage_api::discovery_client::DiscoveryClient;
use presage_api::resource::Body;
use presage_api::telemetry_client::TelemetryClient;
use presage_api::{types, DiscoveryRequest, LoadReport, Node, ServiceLoad};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;

const SERVICE: &str = "bench";
/// Requests each simulated report claims, so ingested reports = requests / this.
const REQUESTS_PER_REPORT: u64 = 10;

struct Args {
    grpc: String,
    api: String,
    cp_pid: u32,
    proxies: usize,
    changes: usize,
    report_interval: Duration,
    telemetry_secs: u64,
    /// Discovery mode: changes go through this etcd instead of the REST API.
    etcd: Option<String>,
    services: usize,
    instances: usize,
}

fn args() -> Args {
    let mut a = Args {
        grpc: "http://127.0.0.1:9902".into(),
        api: "127.0.0.1:9903".into(),
        cp_pid: 0,
        proxies: 100,
        changes: 10,
        report_interval: Duration::from_secs(1),
        telemetry_secs: 10,
        etcd: None,
        services: 500,
        instances: 10_000,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--grpc" => a.grpc = val,
            "--api" => a.api = val,
            "--cp-pid" => a.cp_pid = val.parse().expect("--cp-pid: a number"),
            "--proxies" => a.proxies = val.parse().expect("--proxies: a number"),
            "--changes" => a.changes = val.parse().expect("--changes: a number"),
            "--report-interval-ms" => {
                a.report_interval = Duration::from_millis(val.parse().expect("a number"))
            }
            "--telemetry-secs" => a.telemetry_secs = val.parse().expect("a number"),
            "--etcd" => a.etcd = Some(val),
            "--services" => a.services = val.parse().expect("a number"),
            "--instances" => a.instances = val.parse().expect("a number"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// (CPU seconds used so far, RSS bytes, peak RSS bytes) of a process.
fn proc_usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (ticks / 100.0, kb("VmRSS:"), kb("VmHWM:"))
}

async fn rest(api: &str, method: &str, path: &str, body: String) -> serde_json::Value {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{api}{path}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = client
        .request(req)
        .await
        .expect("control plane API reachable");
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

fn endpoints(k: usize) -> String {
    format!(
        r#"{{"endpoints":[{{"address":"10.0.{}.{}:8080"}}]}}"#,
        k / 250,
        k % 250 + 1
    )
}

/// Per proxy: when it received the change being measured (None: not yet).
type Seen = Arc<Vec<Mutex<Option<Instant>>>>;

/// What every simulated proxy shares.
struct Sim {
    grpc: String,
    /// The endpoint address the change being measured adds.
    target: Mutex<String>,
    seen: Seen,
    synced: AtomicUsize,
    reports: Arc<AtomicU64>,
    interval: Duration,
    hist: Arc<Vec<u8>>,
    gate: Semaphore,
    /// Clusters a proxy must have before it counts as synced.
    expect_clusters: usize,
}

async fn proxy(i: usize, sim: Arc<Sim>) {
    let Sim {
        grpc,
        seen,
        synced,
        reports,
        interval,
        hist,
        gate,
        target: _,
        expect_clusters: _,
    } = &*sim;
    let (grpc, interval, hist) = (grpc.clone(), *interval, hist.clone());
    let permit = gate.acquire().await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(grpc)
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect to the control plane");
    let mut disco = DiscoveryClient::new(channel.clone());
    // Unbounded, as in the proxy: ACKs never wait (see proxy/src/xds.rs).
    let (tx, rx) = mpsc::unbounded_channel();
    let node = Node {
        id: format!("sim-{i}"),
        ..Default::default()
    };
    for (n, t) in [types::CLUSTER, types::ROUTE].into_iter().enumerate() {
        tx.send(DiscoveryRequest {
            node: (n == 0).then(|| node.clone()),
            type_url: t.into(),
            ..Default::default()
        })
        .unwrap();
    }
    let mut inbound = disco
        .stream(UnboundedReceiverStream::new(rx))
        .await
        .expect("discovery stream")
        .into_inner();
    drop(permit);
    // Telemetry on the same connection, as a proxy does.
    let mut tele = TelemetryClient::new(channel);
    let reports_out = reports.clone();
    tokio::spawn(async move {
        let node = Some(node);
        let stream = futures_util::stream::unfold(
            (node, tokio::time::interval(interval)),
            move |(node, mut tick)| {
                let hist = hist.clone();
                let reports = reports_out.clone();
                async move {
                    tick.tick().await;
                    reports.fetch_add(1, Ordering::Relaxed);
                    let r = LoadReport {
                        node,
                        unix_ms: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_millis() as i64,
                        interval_ms: interval.as_millis() as u32,
                        services: vec![ServiceLoad {
                            service: SERVICE.into(),
                            requests: REQUESTS_PER_REPORT,
                            latency_histogram: (*hist).clone(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    };
                    Some((r, (None, tick)))
                }
            },
        );
        let _ = tele.report(stream).await;
    });
    let mut first = true;
    let mut clusters = std::collections::HashSet::new();
    while let Ok(Some(resp)) = inbound.message().await {
        let now = Instant::now();
        for r in &resp.resources {
            if let Some(Body::Cluster(c)) = &r.body {
                clusters.insert(r.name.clone());
                let target = sim.target.lock().unwrap().clone();
                if c.endpoints.iter().any(|e| e.address == target) {
                    seen[i].lock().unwrap().get_or_insert(now);
                }
            }
        }
        let is_cluster = resp.type_url == types::CLUSTER;
        let _ = tx.send(DiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            ..Default::default()
        });
        // Synced once every expected cluster arrived (a big first sync comes in chunks).
        if first && is_cluster && clusters.len() >= sim.expect_clusters {
            first = false;
            synced.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut populate_s = 0.0;
    let mut cp_rss_catalog = 0;
    match &a.etcd {
        None => {
            rest(
                &a.api,
                "PUT",
                &format!("/v1/services/{SERVICE}"),
                endpoints(0),
            )
            .await;
        }
        Some(ep) => {
            // The registry: `instances` records across `services` services, 100 per txn.
            let t = Instant::now();
            let mut c = etcd_client::Client::connect([ep.as_str()], None)
                .await
                .expect("etcd");
            let keys: Vec<(String, String)> = (0..a.instances)
                .map(|j| {
                    let s = j % a.services;
                    let key = format!("/presage/services/svc-{s}/i-{}", j / a.services);
                    let value = format!(
                        r#"{{"address":"10.1.{}.{}","port":8080,"zone":"z{}","price":0.1,"capacity":100}}"#,
                        j / 250,
                        j % 250 + 1,
                        j % 3
                    );
                    (key, value)
                })
                .collect();
            for chunk in keys.chunks(100) {
                let ops: Vec<etcd_client::TxnOp> = chunk
                    .iter()
                    .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.as_str(), None))
                    .collect();
                c.txn(etcd_client::Txn::new().and_then(ops))
                    .await
                    .expect("etcd txn");
            }
            // Until the control plane serves every service.
            loop {
                let v = rest(&a.api, "GET", "/v1/services", String::new()).await;
                let total: u64 = v.as_array().map_or(0, |l| {
                    l.iter().filter_map(|s| s["instances"].as_u64()).sum()
                });
                if total as usize >= a.instances {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            populate_s = t.elapsed().as_secs_f64();
            cp_rss_catalog = proc_usage(a.cp_pid).1;
        }
    }
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
    for v in [800, 1200, 1500, 2500, 9000] {
        h.record(v).unwrap();
    }
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(&h, &mut bytes).unwrap();
    let hist = Arc::new(bytes);
    let seen: Seen = Arc::new((0..a.proxies).map(|_| Mutex::new(None)).collect());
    let reports = Arc::new(AtomicU64::new(0));
    let sim = Arc::new(Sim {
        grpc: a.grpc.clone(),
        target: Mutex::new(String::new()),
        seen: seen.clone(),
        synced: AtomicUsize::new(0),
        reports: reports.clone(),
        interval: a.report_interval,
        hist,
        // Connect in waves, as a rollout would, rather than 10,000 SYNs at once.
        gate: Semaphore::new(256),
        expect_clusters: if a.etcd.is_some() { a.services } else { 1 },
    });
    let t_connect = Instant::now();
    let (cpu0, _, _) = proc_usage(a.cp_pid);
    for i in 0..a.proxies {
        tokio::spawn(proxy(i, sim.clone()));
    }
    while sim.synced.load(Ordering::Relaxed) < a.proxies {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    let (cpu1, rss_connected, _) = proc_usage(a.cp_pid);

    // Convergence: one endpoint change at a time, all proxies must ACK before the next.
    let mut lat_ms = Vec::new();
    let mut worst = Vec::new();
    for k in 1..=a.changes {
        for s in seen.iter() {
            *s.lock().unwrap() = None;
        }
        let t0;
        match &a.etcd {
            None => {
                *sim.target.lock().unwrap() = format!("10.0.{}.{}:8080", k / 250, k % 250 + 1);
                t0 = Instant::now();
                rest(
                    &a.api,
                    "PUT",
                    &format!("/v1/services/{SERVICE}"),
                    endpoints(k),
                )
                .await;
            }
            Some(ep) => {
                // Move instance i-0 of one service to a new address, in etcd.
                let (ip, port) = (format!("10.9.{}.{}", k / 250, k % 250 + 1), 9000);
                *sim.target.lock().unwrap() = format!("{ip}:{port}");
                let mut c = etcd_client::Client::connect([ep.as_str()], None)
                    .await
                    .expect("etcd");
                let key = format!("/presage/services/svc-{}/i-0", k % a.services);
                let value = format!(r#"{{"address":"{ip}","port":{port},"zone":"z{}"}}"#, k % 3);
                t0 = Instant::now();
                c.put(key, value, None).await.expect("etcd put");
            }
        }
        loop {
            if seen.iter().all(|s| s.lock().unwrap().is_some()) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                panic!("change {k} did not converge in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut this: Vec<f64> = seen
            .iter()
            .map(|s| (s.lock().unwrap().unwrap() - t0).as_secs_f64() * 1000.0)
            .collect();
        this.sort_by(f64::total_cmp);
        worst.push(*this.last().unwrap());
        lat_ms.extend(this);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lat_ms.sort_by(f64::total_cmp);

    // Telemetry ingestion over a steady window.
    let before = rest(
        &a.api,
        "GET",
        &format!("/v1/services/{SERVICE}/load"),
        String::new(),
    )
    .await["requests_total"]
        .as_u64()
        .unwrap_or(0);
    let sent0 = reports.load(Ordering::Relaxed);
    let (cpu_t0, _, _) = proc_usage(a.cp_pid);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.telemetry_secs)).await;
    let secs = t.elapsed().as_secs_f64();
    let (cpu_t1, rss_after, peak) = proc_usage(a.cp_pid);
    let after = rest(
        &a.api,
        "GET",
        &format!("/v1/services/{SERVICE}/load"),
        String::new(),
    )
    .await["requests_total"]
        .as_u64()
        .unwrap_or(0);
    let sent = reports.load(Ordering::Relaxed) - sent0;
    let ingested = (after - before) / REQUESTS_PER_REPORT;

    let mut out = HashMap::new();
    out.insert("proxies", serde_json::json!(a.proxies));
    if a.etcd.is_some() {
        out.insert("services", serde_json::json!(a.services));
        out.insert("instances", serde_json::json!(a.instances));
        out.insert("etcd_to_cp_all_instances_s", serde_json::json!(populate_s));
        out.insert(
            "cp_rss_with_catalog_mib",
            serde_json::json!(cp_rss_catalog as f64 / 1048576.0),
        );
    }
    out.insert("connect_all_s", serde_json::json!(connect_secs));
    out.insert("converge_p50_ms", serde_json::json!(pct(&lat_ms, 0.5)));
    out.insert("converge_p99_ms", serde_json::json!(pct(&lat_ms, 0.99)));
    out.insert("converge_max_ms", serde_json::json!(lat_ms.last()));
    out.insert("converge_worst_per_change_ms", serde_json::json!(worst));
    out.insert(
        "cp_rss_connected_mib",
        serde_json::json!(rss_connected as f64 / 1048576.0),
    );
    out.insert(
        "cp_rss_after_telemetry_mib",
        serde_json::json!(rss_after as f64 / 1048576.0),
    );
    out.insert(
        "cp_rss_peak_mib",
        serde_json::json!(peak as f64 / 1048576.0),
    );
    out.insert(
        "cp_rss_per_proxy_kib",
        serde_json::json!(rss_after as f64 / 1024.0 / a.proxies as f64),
    );
    out.insert("cp_cpu_connect_s", serde_json::json!(cpu1 - cpu0));
    out.insert(
        "cp_cpu_telemetry_per_s",
        serde_json::json!((cpu_t1 - cpu_t0) / secs),
    );
    out.insert(
        "cp_cpu_us_per_report",
        serde_json::json!((cpu_t1 - cpu_t0) / secs / (ingested as f64 / secs).max(1.0) * 1e6),
    );
    out.insert("reports_sent_per_s", serde_json::json!(sent as f64 / secs));
    out.insert(
        "reports_ingested_per_s",
        serde_json::json!(ingested as f64 / secs),
    );
    println!("{}", serde_json::to_string(&out).unwrap());
    std::process::exit(0);
}
