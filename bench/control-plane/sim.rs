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
use tokio_stream::wrappers::ReceiverStream;

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

/// Per proxy: the bench cluster version it last ACKed, and when.
type Seen = Arc<Vec<Mutex<(String, Option<Instant>)>>>;

/// What every simulated proxy shares.
struct Sim {
    grpc: String,
    seen: Seen,
    synced: AtomicUsize,
    reports: Arc<AtomicU64>,
    interval: Duration,
    hist: Arc<Vec<u8>>,
    gate: Semaphore,
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
    let (tx, rx) = mpsc::channel(8);
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
        .await
        .unwrap();
    }
    let mut inbound = disco
        .stream(ReceiverStream::new(rx))
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
    while let Ok(Some(resp)) = inbound.message().await {
        let now = Instant::now();
        for r in &resp.resources {
            if r.name == SERVICE && matches!(r.body, Some(Body::Cluster(_))) {
                *seen[i].lock().unwrap() = (r.version.clone(), Some(now));
            }
        }
        let is_cluster = resp.type_url == types::CLUSTER;
        let _ = tx
            .send(DiscoveryRequest {
                type_url: resp.type_url,
                response_nonce: resp.nonce,
                ..Default::default()
            })
            .await;
        if first && is_cluster {
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
    rest(
        &a.api,
        "PUT",
        &format!("/v1/services/{SERVICE}"),
        endpoints(0),
    )
    .await;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
    for v in [800, 1200, 1500, 2500, 9000] {
        h.record(v).unwrap();
    }
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(&h, &mut bytes).unwrap();
    let hist = Arc::new(bytes);
    let seen: Seen = Arc::new(
        (0..a.proxies)
            .map(|_| Mutex::new((String::new(), None)))
            .collect(),
    );
    let reports = Arc::new(AtomicU64::new(0));
    let sim = Arc::new(Sim {
        grpc: a.grpc.clone(),
        seen: seen.clone(),
        synced: AtomicUsize::new(0),
        reports: reports.clone(),
        interval: a.report_interval,
        hist,
        // Connect in waves, as a rollout would, rather than 10,000 SYNs at once.
        gate: Semaphore::new(256),
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
        let t0 = Instant::now();
        let w = rest(
            &a.api,
            "PUT",
            &format!("/v1/services/{SERVICE}"),
            endpoints(k),
        )
        .await;
        let version = w["version"]
            .as_str()
            .expect("PUT answered with a version")
            .to_string();
        loop {
            let done = seen.iter().all(|s| s.lock().unwrap().0 == version);
            if done {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                panic!("change {k} did not converge in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut this: Vec<f64> = seen
            .iter()
            .map(|s| (s.lock().unwrap().1.unwrap() - t0).as_secs_f64() * 1000.0)
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
