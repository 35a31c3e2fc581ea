//! Failure handling over real sockets: a killed endpoint under load, retry budgets,
//! timeouts, malformed requests and limits, and graceful drain on SIGTERM.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_endpoint_under_get_load_gives_no_client_errors_and_is_ejected() {
    let ups = [
        Upstream::spawn("a").await,
        Upstream::spawn("b").await,
        Upstream::spawn("c").await,
    ];
    let outlier = "    outlier_detection: { consecutive_failures: 3, base_ejection: 60s }\n";
    let proxy = Proxy::start(&one_cluster(
        &ups.iter().map(|u| u.addr).collect::<Vec<_>>(),
        outlier,
    ))
    .await;
    let url = proxy.url("/load");
    let (ok, bad, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, ok, bad, done) = (url.clone(), ok.clone(), bad.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let c = h1_client();
            while done.load(Ordering::SeqCst) == 0 {
                match c.get(url.parse().unwrap()).await {
                    Ok(res) if res.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => bad.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    // Kill one endpoint once it is carrying load, then keep the load on for 1000 more.
    wait_until(Duration::from_secs(20), || async {
        (ups[0].hits() >= 100).then_some(())
    })
    .await
    .unwrap();
    ups[0].kill();
    let after = ok.load(Ordering::SeqCst) + 1000;
    wait_until(Duration::from_secs(30), || async {
        (ok.load(Ordering::SeqCst) >= after).then_some(())
    })
    .await
    .unwrap();
    let hits_at_end = ups[0].hits();
    done.store(1, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        bad.load(Ordering::SeqCst),
        0,
        "client-visible errors after {} good requests",
        ok.load(Ordering::SeqCst)
    );
    assert_eq!(
        proxy
            .metric("presage_outlier_ejections_total", &[("cluster", "up")])
            .await,
        1.0
    );
    assert!(
        proxy
            .metric("presage_retries_total", &[("cluster", "up")])
            .await
            >= 1.0
    );
    assert_eq!(ups[0].hits(), hits_at_end);
    let dead = ups[0].addr.to_string();
    assert_eq!(
        proxy
            .metric("presage_endpoint_healthy", &[("endpoint", &dead)])
            .await,
        0.0
    );
    let live = ups[1].addr.to_string();
    assert_eq!(
        proxy
            .metric("presage_endpoint_healthy", &[("endpoint", &live)])
            .await,
        1.0
    );
}

#[tokio::test]
async fn retry_budget_caps_extra_load() {
    let up = Upstream::spawn("failing").await;
    let yaml = one_cluster(&[up.addr], "").replace(
        "    cluster: up\n",
        "    cluster: up\n    retries: { attempts: 5, budget_percent: 20, backoff: 1ms, max_backoff: 2ms }\n",
    );
    let proxy = Proxy::start(&yaml).await;
    let c = h1_client();
    let n = 300;
    for _ in 0..n {
        assert_eq!(get(&c, &proxy.url("/status/503")).await.status, 503);
    }
    // Without a budget: 6 attempts each (1800). With it: 20% of requests plus the
    // 10/s reserve over the 10 s window (at most 100).
    let hits = up.hits();
    assert!(hits > n, "retries happened: {hits}");
    assert!(
        hits <= n + n / 5 + 100 + 5,
        "budget exceeded: {hits} upstream requests for {n}"
    );
}

#[tokio::test]
async fn dead_endpoint_is_retried_on_another() {
    let live = Upstream::spawn("live").await;
    let dead = Upstream::spawn("dead").await;
    dead.kill();
    // Round robin, so that requests do go to the dead endpoint first (until it is ejected).
    let lb = "    load_balancer: weighted_round_robin\n";
    let proxy = Proxy::start(&one_cluster(&[live.addr, dead.addr], lb)).await;
    let c = h1_client();
    for _ in 0..50 {
        let req = http::Request::get(proxy.url("/"))
            .header("x-test", "kept")
            .body(Default::default())
            .unwrap();
        let a = send(&c, req).await;
        assert_eq!(a.status, 200);
        let echoed = a.json();
        assert_eq!(echoed["service"], "live");
        // A retry sends the request as it was: the client's headers and the proxy's own.
        assert_eq!(echoed["headers"]["x-test"], "kept");
        assert_eq!(
            echoed["headers"]["x-request-id"],
            a.headers["x-request-id"].to_str().unwrap()
        );
    }
    let retries = proxy.metric("presage_retries_total", &[]).await;
    assert!(
        retries > 0.0,
        "the dead endpoint was tried: {retries} retries"
    );
}

#[tokio::test]
async fn slow_upstream_gets_a_504_at_the_route_timeout() {
    let up = Upstream::spawn("slow").await;
    let yaml = one_cluster(&[up.addr], "")
        .replace("    cluster: up\n", "    cluster: up\n    timeout: 200ms\n");
    let proxy = Proxy::start(&yaml).await;
    let t0 = std::time::Instant::now();
    let a = get(&h1_client(), &proxy.url("/slow?ms=5000")).await;
    assert_eq!(a.status, 504);
    assert_eq!(a.headers["x-presage-error"], "upstream-timeout");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "the timeout cut the request"
    );
    assert_eq!(up.hits(), 1, "a timed-out request is not retried");
}

/// A response whose upstream stops sending mid-body is cut at the cluster's idle
/// timeout, not held open for as long as the client waits; one that keeps sending, if
/// slowly (each byte within the timeout, the whole body well past it), is not.
#[tokio::test]
async fn a_silent_upstream_body_is_cut_at_the_idle_timeout() {
    // A raw upstream: the head and half the body at once, then the rest a byte every
    // 150 ms (`/trickle`) or nothing (any other path).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let trickle = head.starts_with(b"GET /trickle ");
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
                    .await;
                if trickle {
                    for b in b"world" {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        let _ = s.write_all(&[*b]).await;
                    }
                }
                // Silent, the connection open, until the proxy gives up on it.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let proxy = Proxy::start(&one_cluster(&[addr], "    idle_timeout: 400ms\n")).await;
    // Everything the proxy sends on one request's connection, until it closes it.
    let fetch = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let t0 = std::time::Instant::now();
    let cut = fetch("/stall").await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(
        cut.ends_with("hello"),
        "the half that came, then the end of the connection: {cut:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "cut, not held");
    assert_eq!(
        proxy
            .metric("presage_upstream_idle_timeouts_total", &[("cluster", "up")])
            .await,
        1.0
    );
    let whole = fetch("/trickle").await;
    assert!(whole.ends_with("\r\n\r\nhelloworld"), "{whole:?}");
    assert_eq!(
        proxy
            .metric("presage_upstream_idle_timeouts_total", &[("cluster", "up")])
            .await,
        1.0,
        "a slow body that keeps coming is not cut"
    );
}

/// Sends raw bytes on a new connection and returns the status line.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_proxy_keeps_serving() {
    let up = Upstream::spawn("svc").await;
    let yaml = one_cluster(&[up.addr], "").replace(
        "admin:\n",
        "limits: { max_header_bytes: 16384, max_headers: 20, max_body_bytes: 1000 }\nadmin:\n",
    );
    let proxy = Proxy::start(&yaml).await;
    let ok = || async { get(&h1_client(), &proxy.url("/still-ok")).await.status };

    assert!(raw(proxy.addr, b"GARBAGE\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400"));
    assert!(raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"
    )
    .await
    .starts_with("HTTP/1.1 400"));
    assert_eq!(ok().await, 200);

    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(raw(proxy.addr, big.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert!(raw(proxy.addr, many.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    assert_eq!(ok().await, 200);

    let bad_chunk = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    assert!(raw(proxy.addr, bad_chunk).await.starts_with("HTTP/1.1 400"));
    let declared = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n";
    assert!(raw(proxy.addr, declared).await.starts_with("HTTP/1.1 413"));
    let streamed = format!("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n", "b".repeat(2000));
    assert!(raw(proxy.addr, streamed.as_bytes())
        .await
        .starts_with("HTTP/1.1 413"));
    assert_eq!(ok().await, 200);
    assert!(
        proxy
            .metric("presage_requests_total", &[("status_class", "4xx")])
            .await
            >= 3.0
    );
}

/// Over an HTTP/2 cluster too, a request body over the limit is the client's fault: 413,
/// and nothing counted against the endpoint (hyper's HTTP/2 client sends the body from a
/// task of its own and reports only a reset).
#[tokio::test]
async fn an_oversized_body_is_a_413_over_an_http2_cluster_too() {
    let up = Upstream::spawn("svc").await;
    let yaml = one_cluster(&[up.addr], "    protocol: http2\n")
        .replace("admin:\n", "limits: { max_body_bytes: 1000 }\nadmin:\n");
    let proxy = Proxy::start(&yaml).await;
    let streamed = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
        "b".repeat(2000)
    );
    let status = raw(proxy.addr, streamed.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert_eq!(
        proxy
            .metric("presage_upstream_errors_total", &[("cluster", "up")])
            .await,
        0.0,
        "not the endpoint's fault"
    );
    assert_eq!(get(&h1_client(), &proxy.url("/ok")).await.status, 200);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let up = Upstream::spawn("slow").await;
    let mut proxy = Proxy::start(&one_cluster(&[up.addr], "")).await;
    let url = proxy.url("/slow?ms=1500");
    let in_flight = tokio::spawn(async move { get(&h1_client(), &url).await });
    wait_until(Duration::from_secs(10), || async {
        (up.hits() == 1).then_some(())
    })
    .await
    .unwrap();
    proxy.signal("TERM");
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, 200, "the in-flight request completed");
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn slow_client_is_cut_off_at_the_header_read_timeout() {
    let up = Upstream::spawn("svc").await;
    let yaml = one_cluster(&[up.addr], "").replace(
        "admin:\n",
        "limits: { header_read_timeout: 300ms }\nadmin:\n",
    );
    let proxy = Proxy::start(&yaml).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // Slowloris: a request head that never ends.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the proxy closed the connection");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "not before the timeout: {:?}",
        t0.elapsed()
    );
    let head = String::from_utf8_lossy(&buf);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 408"),
        "{head}"
    );
    assert_eq!(up.hits(), 0);
    // A client that connects and sends nothing at all (before the protocol is known)
    // is let go at the same timeout.
    let mut silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the proxy closed the silent connection");
    assert_eq!(get(&h1_client(), &proxy.url("/")).await.status, 200);
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let up = Upstream::spawn("svc").await;
    let yaml =
        one_cluster(&[up.addr], "").replace("admin:\n", "access_log: { enabled: true }\nadmin:\n");
    let mut proxy = Proxy::start(&yaml).await;
    let req = http::Request::get(proxy.url("/logged?q=1"))
        .header("x-request-id", "log-me")
        .body(Default::default())
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.status, 200);
    let line = tokio::time::timeout(Duration::from_secs(10), proxy.stdout.recv())
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["request_id"], "log-me");
    assert_eq!(v["path"], "/logged?q=1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "all");
    assert_eq!(v["upstream"], up.addr.to_string());
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
}

/// Downstream connections carry TCP keep-alive, so one whose client vanished without a
/// FIN (an upgraded tunnel, a long body) is found and closed by the kernel.
#[tokio::test]
async fn downstream_connections_are_kept_alive_by_tcp() {
    let up = Upstream::spawn("svc").await;
    let proxy = Proxy::start(&one_cluster(&[up.addr], "")).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "the connection is up"
    );
    // The proxy's side of this connection, as the kernel sees it (iproute2's ss).
    let filter = format!(
        "( sport = :{} and dport = :{} )",
        proxy.addr.port(),
        s.local_addr().unwrap().port()
    );
    let out = std::process::Command::new("ss")
        .args(["-tno", "state", "established", &filter])
        .output()
        .expect("ss from iproute2");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("timer:(keepalive"), "{out}");
}
