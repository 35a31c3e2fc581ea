//! Protocols through the proxy, with real clients: HTTP/1.1, h2c, TLS with ALPN (curl),
//! gRPC trailers, protocol upgrades, and TLS to upstreams.

use crate::support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn http1_and_h2c_reach_the_upstream_with_request_ids() {
    let up = Upstream::spawn("svc").await;
    let proxy = Proxy::start(&one_cluster(&[up.addr], "")).await;

    let a = get(&h1_client(), &proxy.url("/hello?x=1")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["path"], "/hello?x=1");
    let id = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(
        a.json()["headers"]["x-request-id"],
        id.as_str(),
        "upstream sees the same id"
    );
    assert_eq!(a.json()["headers"]["x-forwarded-for"], "127.0.0.1");

    // A client's own id is kept.
    let req = Request::post(proxy.url("/echo"))
        .header("x-request-id", "client-1")
        .body(Full::new(Bytes::from("payload")))
        .unwrap();
    let a = send(&h1_client(), req).await;
    assert_eq!(a.headers["x-request-id"], "client-1");
    assert_eq!(a.json()["body"], "payload");
    assert_eq!(a.json()["method"], "POST");

    let a = get(&h2c_client(), &proxy.url("/h2")).await;
    assert_eq!(a.version, http::Version::HTTP_2);
    assert_eq!(a.json()["path"], "/h2");
    // HTTP/2's :authority becomes the Host header for the HTTP/1.1 upstream.
    assert_eq!(a.json()["headers"]["host"], proxy.addr.to_string());

    let out = curl(&[
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version}",
        &proxy.url("/curl"),
    ])
    .await;
    assert!(out.ends_with("\n2"), "{out}");
    assert!(out.contains("\"path\":\"/curl\""), "{out}");

    // The three body-less requests, one after another, took one pooled upstream
    // connection (the POST went through hyper's client, which is not counted here).
    let opened = proxy
        .metric(
            "presage_upstream_connections_opened_total",
            &[("cluster", "up")],
        )
        .await;
    assert_eq!(opened, 1.0);
}

#[tokio::test]
async fn tls_listener_negotiates_h2_and_http1_by_alpn() {
    let up = Upstream::spawn("svc").await;
    let (cert, key) = (fixture("tls/server.pem"), fixture("tls/server.key"));
    let yaml = one_cluster(&[up.addr], "").replace(
        "    address: 127.0.0.1:0\nadmin",
        &format!(
            "    address: 127.0.0.1:0\n    tls: {{ cert: {}, key: {} }}\nadmin",
            cert.display(),
            key.display()
        ),
    );
    let proxy = Proxy::start(&yaml).await;
    let url = format!("https://localhost:{}/tls", proxy.addr.port());
    let ca = fixture("tls/ca.pem").display().to_string();
    let resolve = format!("localhost:{}:127.0.0.1", proxy.addr.port());
    let h2 = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--http2",
        "-w",
        "\n%{http_version}",
        &url,
    ])
    .await;
    assert!(
        h2.ends_with("\n2") && h2.contains("\"path\":\"/tls\""),
        "{h2}"
    );
    let h1 = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--http1.1",
        "-w",
        "\n%{http_version}",
        &url,
    ])
    .await;
    assert!(h1.ends_with("\n1.1"), "{h1}");
    assert!(h1.contains("\"x-forwarded-proto\":\"https\""), "{h1}");
}

#[tokio::test]
async fn grpc_trailers_pass_through_intact() {
    // A gRPC exchange on the wire: HTTP/2, `te: trailers`, length-prefixed message, and
    // `grpc-status` in trailers. The upstream is hyper speaking that framing (tonic would
    // add nothing the proxy can see; it arrives with the control-plane protocol).
    let up = Upstream::spawn("grpc").await;
    let proxy = Proxy::start(&one_cluster(&[up.addr], "    protocol: http2\n")).await;
    let msg = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = Request::post(proxy.url("/test.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(msg.clone()))
        .unwrap();
    let res = h2c_client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "echo-from-grpc");
    assert_eq!(collected.to_bytes(), msg);
}

#[tokio::test]
async fn an_h2_stream_is_relayed_message_by_message() {
    // A bidirectional HTTP/2 stream (as gRPC streams are): the client sends each message
    // only once the echo of the one before has come back through the proxy, so every
    // message must leave the proxy's downstream connection while the stream is open (its
    // writes are coalesced per poll of the connection: `coalesce`).
    use hyper::body::Frame;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use std::convert::Infallible;
    let up = Upstream::spawn("stream").await;
    let proxy = Proxy::start(&one_cluster(&[up.addr], "    protocol: http2\n")).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let req = Request::post(proxy.url("/echo-stream"))
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    let mut pending = Some(tokio::spawn(client.request(req)));
    let bound = Duration::from_secs(10);
    let mut body = None;
    for msg in ["first message", "second", "the third"] {
        tx.send(Bytes::from(msg)).await.unwrap();
        let body = match &mut body {
            Some(b) => b,
            None => {
                let res = tokio::time::timeout(bound, pending.take().unwrap())
                    .await
                    .expect("no response head while the stream is open")
                    .unwrap()
                    .unwrap();
                assert_eq!(res.status(), 200);
                body.insert(res.into_body())
            }
        };
        let frame = tokio::time::timeout(bound, body.frame())
            .await
            .unwrap_or_else(|_| panic!("{msg:?} was not relayed while the stream was open"))
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), msg);
    }
    drop(tx);
    let rest = body.unwrap().collect().await.unwrap().to_bytes();
    assert!(rest.is_empty(), "{rest:?}");
}

/// A connection to `proxy` switched to the upstream's `echo` protocol, and the head of
/// the 101 it answered (lowercase).
async fn upgraded(proxy: &Proxy) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "connection closed in the response head"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    (s, head)
}

#[tokio::test]
async fn protocol_upgrade_is_spliced_both_ways() {
    let up = Upstream::spawn("ws").await;
    let proxy = Proxy::start(&one_cluster(&[up.addr], "")).await;
    let (mut s, head) = upgraded(&proxy).await;
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"second message"] {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }
}

/// An upgraded tunnel both of whose peers fall silent is closed after the cluster's
/// `idle_timeout` (traffic either way keeps it open), and counted.
#[tokio::test]
async fn a_silent_upgraded_tunnel_is_closed_after_the_idle_timeout() {
    let up = Upstream::spawn("ws").await;
    let proxy = Proxy::start(&one_cluster(&[up.addr], "    idle_timeout: 2s\n")).await;
    let (mut s, _) = upgraded(&proxy).await;
    let opened = std::time::Instant::now();
    // Each echo is traffic both ways; 0.7 s apart, they outlast the 2 s limit.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
    assert!(opened.elapsed() > Duration::from_secs(2));
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the silent tunnel was closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let cut = proxy
        .metric("presage_upstream_idle_timeouts_total", &[("cluster", "up")])
        .await;
    assert_eq!(cut, 1.0);
}

#[tokio::test]
async fn tls_to_upstream_verifies_the_configured_ca() {
    let up = Upstream::spawn_tls("secure").await;
    let ca = fixture("tls/ca.pem").display().to_string();
    let proxy = Proxy::start(&one_cluster(
        &[up.addr],
        &format!("    tls: {{ ca: {ca}, server_name: localhost }}\n"),
    ))
    .await;
    let a = get(&h1_client(), &proxy.url("/over-tls")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["service"], "secure");

    // Without the CA the upstream is not trusted: a 502 from the proxy, not a crash.
    let bad = Proxy::start(&one_cluster(
        &[up.addr],
        "    tls: { server_name: localhost }\n",
    ))
    .await;
    let a = get(&h1_client(), &bad.url("/over-tls")).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["x-presage-error"], "upstream-connect");
}
