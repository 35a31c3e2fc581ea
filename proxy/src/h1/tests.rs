//! The in-task HTTP/1.1 path against a raw upstream on a real socket, which answers with
//! scripted bytes so that framing edge cases (split chunks, trailers, interim answers,
//! early closes) can be produced exactly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering, Ordering::SeqCst};
use std::time::Instant;

use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

/// One connection's script: each response is written, piece by piece (flushed apart),
/// after a request head has arrived; then the connection is closed.
type Script = Vec<Vec<&'static [u8]>>;

struct Upstream {
    authority: Authority,
    /// Request heads as received.
    heads: mpsc::UnboundedReceiver<String>,
    accepted: Arc<AtomicUsize>,
}

async fn upstream(connections: Vec<Script>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (tx, heads) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        for script in connections {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for response in script {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut b = [0u8; 4096];
                        let n = s.read(&mut b).await.unwrap();
                        assert!(n > 0, "the proxy closed before sending a request");
                        buf.extend_from_slice(&b[..n]);
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head: Vec<u8> = buf.drain(..end).collect();
                    tx.send(String::from_utf8(head).unwrap()).unwrap();
                    for piece in response {
                        s.write_all(piece).await.unwrap();
                        s.flush().await.unwrap();
                        tokio::task::yield_now().await;
                    }
                }
            });
        }
    });
    Upstream {
        authority: addr.to_string().parse().unwrap(),
        heads,
        accepted,
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

async fn fetch(
    pool: &Arc<Pool>,
    up: &Upstream,
    req: Request<()>,
) -> Result<(StatusCode, HeaderMap, Bytes, Option<HeaderMap>), Error> {
    let res = send(pool, &up.authority, Duration::from_secs(2), &req).await?;
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.expect("the body is complete");
    let trailers = collected.trailers().cloned();
    Ok((parts.status, parts.headers, collected.to_bytes(), trailers))
}

#[tokio::test]
async fn a_sized_body_is_read_and_its_connection_reused() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello";
    let split: Vec<&[u8]> = vec![
        b"HTTP/1.1 201 Created\r\ncontent-le",
        b"ngth: 3\r\n\r\nab",
        b"c",
    ];
    let mut up = upstream(vec![vec![vec![ok], split]]).await;
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    let (status, headers, body, _) = fetch(&pool, &up, get("/a?b=1")).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(headers["x-a"], "1");
    assert_eq!(
        pool.idle(),
        1,
        "a complete response gives its connection back"
    );
    let head = up.heads.recv().await.unwrap();
    assert!(head.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("host: {}\r\n", up.authority)),
        "{head}"
    );

    let (status, _, body, _) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"abc"[..]));
    assert_eq!(
        up.accepted.load(SeqCst),
        1,
        "both requests on one connection"
    );
    assert_eq!(pool.opened.get(), 1, "and counted once");
}

#[tokio::test]
async fn hop_by_hop_fields_and_those_connection_names_stay_at_this_hop() {
    let ok: &[u8] =
        b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nkeep-alive: timeout=5\r\n\
        x-secret: 1\r\nx-kept: 2\r\ntransfer-encoding: chunked\r\nproxy-connection: close\r\n\r\n\
        2\r\nhi\r\n0\r\n\r\n";
    let up = upstream(vec![vec![vec![ok]]]).await;
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    let (status, headers, body, _) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hi"[..]));
    let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-kept"], "only the end-to-end field is left");
    assert_eq!(
        pool.idle(),
        1,
        "`keep-alive` among the options still lets the connection be reused"
    );
}

#[tokio::test]
async fn chunked_bodies_and_trailers_survive_any_split() {
    let pieces: Vec<&[u8]> = vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5\r\nhel",
        b"lo\r",
        b"\n6;ext=1\r\n world\r\n0\r",
        b"\ngrpc-status: 0\r\n",
        b"\r\n",
    ];
    let up = upstream(vec![vec![pieces]]).await;
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    let (_, _, body, trailers) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!(&body[..], b"hello world");
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn a_body_without_length_ends_when_the_upstream_closes() {
    let res: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nall of it";
    let up = upstream(vec![vec![vec![res]]]).await;
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    let (_, _, body, _) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!(&body[..], b"all of it");
    assert_eq!(pool.idle(), 0, "a close-delimited connection is not reused");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // The first connection answers once and closes without saying so.
    let up = upstream(vec![vec![vec![ok]], vec![vec![ok]]]).await;
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!(pool.idle(), 1);
    let (status, _, body, _) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(up.accepted.load(SeqCst), 2);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_some_answers_have_no_body() {
    let cont: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
    let after: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx";
    let mut up = upstream(vec![vec![vec![cont], vec![head], vec![after]]]).await;
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    let req = Request::post("/p").body(()).unwrap();
    let (status, _, body, _) = fetch(&pool, &up, req).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    let sent = up.heads.recv().await.unwrap();
    assert!(sent.contains("content-length: 0\r\n"), "{sent}");
    let req = Request::head("/").body(()).unwrap();
    let (status, headers, body, _) = fetch(&pool, &up, req).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(headers[header::CONTENT_LENGTH], "100");
    let (_, _, body, _) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!(&body[..], b"x");
    assert_eq!(pool.idle(), 0, "`connection: close` is honoured");
    assert_eq!(up.accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn malformed_or_cut_answers_are_errors() {
    let conflicting: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc";
    let garbage: &[u8] = b"HTTP/1.1 2OO OK\r\n\r\n";
    let cut: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
    let up = upstream(vec![
        vec![vec![conflicting]],
        vec![vec![garbage]],
        vec![vec![cut]],
    ])
    .await;
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    let e = fetch(&pool, &up, get("/")).await.unwrap_err().to_string();
    assert!(e.contains("conflicting Content-Length"), "{e}");
    let e = fetch(&pool, &up, get("/")).await.unwrap_err().to_string();
    assert!(e.contains("malformed response head"), "{e}");
    let res = send(&pool, &up.authority, Duration::from_secs(2), &get("/"))
        .await
        .unwrap();
    let e = res.into_body().collect().await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(pool.idle(), 0);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    drop(listener);
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    let e = send(&pool, &to, Duration::from_secs(2), &get("/")).await;
    assert!(matches!(e, Err(Error::Connect(..))), "{e:?}");
}

#[tokio::test]
async fn a_request_the_upstream_may_have_acted_on_is_resent_only_if_idempotent() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // Each of the first two connections answers once, then reads the next request and
    // closes without answering.
    let up = upstream(vec![
        vec![vec![ok], vec![]],
        vec![vec![ok], vec![]],
        vec![vec![ok]],
    ])
    .await;
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    fetch(&pool, &up, get("/")).await.unwrap();
    let post = Request::post("/charge").body(()).unwrap();
    let e = fetch(&pool, &up, post).await.unwrap_err();
    assert!(
        matches!(e, Error::Exchange(..)),
        "not a connect error: {e:?}"
    );
    assert!(e.to_string().contains("without answering"), "{e}");
    assert_eq!(up.accepted.load(SeqCst), 1, "the POST was not sent again");

    fetch(&pool, &up, get("/")).await.unwrap();
    let (status, _, _, _) = fetch(&pool, &up, get("/again")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        up.accepted.load(SeqCst),
        3,
        "the GET went again on a new connection"
    );
    assert_eq!(pool.opened.get(), 3);
}

#[tokio::test]
async fn ambiguous_framing_is_refused_or_never_reused() {
    let plus: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok";
    let empty_size: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n";
    let bare_lf: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n";
    let trailer_lf: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\n";
    let both: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let old_chunked: &[u8] = b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let no_content: &[u8] = b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n";
    // `close` wins, wherever `keep-alive` appears.
    let old_close: &[u8] =
        b"HTTP/1.0 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok";
    let up = upstream(
        [
            plus,
            empty_size,
            bare_lf,
            trailer_lf,
            both,
            old_chunked,
            no_content,
            old_close,
        ]
        .into_iter()
        .map(|r| vec![vec![r]])
        .collect(),
    )
    .await;
    let pool = Pool::new(Duration::from_secs(60), Counter::default());
    let e = fetch(&pool, &up, get("/")).await.unwrap_err().to_string();
    assert!(e.contains("invalid Content-Length"), "{e}");
    for _ in 0..3 {
        let res = send(&pool, &up.authority, Duration::from_secs(2), &get("/"))
            .await
            .unwrap();
        let e = res.into_body().collect().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
    let (_, headers, body, _) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!(
        &body[..],
        b"ok",
        "Transfer-Encoding wins over Content-Length"
    );
    assert!(!headers.contains_key(header::CONTENT_LENGTH), "{headers:?}");
    let (_, _, body, _) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!(&body[..], b"ok");
    let (status, _, _, _) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, body, _) = fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!(&body[..], b"ok");
    assert_eq!(pool.idle(), 0, "none of these connections is reused");
    assert_eq!(up.accepted.load(SeqCst), 8);
}

#[test]
fn chunk_size_lines() {
    assert_eq!(chunk_size(b"1a\r\n"), Ok(Some((4, 26))));
    assert_eq!(chunk_size(b"0;name=\"v\" \t\r\nrest"), Ok(Some((14, 0))));
    assert_eq!(chunk_size(b"ff"), Ok(None), "incomplete");
    assert!(chunk_size(b"\r\n").is_err(), "no digits");
    assert!(chunk_size(b"1 2\r\n").is_err(), "not an extension");
    assert!(
        chunk_size(b"12345678901234567\r\n").is_err(),
        "over 64 bits"
    );
    assert!(chunk_size(&[b'1'; 2000]).is_err(), "endless line");
}

#[tokio::test]
async fn idle_connections_are_closed_once_expired_even_without_traffic() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let up = upstream(vec![vec![vec![ok]]]).await;
    let pool = Pool::new(Duration::from_millis(500), Counter::default());
    fetch(&pool, &up, get("/")).await.unwrap();
    assert_eq!(pool.idle(), 1);
    // Nothing else uses the pool: only its reaper can close the connection. Polled,
    // since no event marks it; bounded so that a missing reaper fails the test.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.idle() > 0 {
        assert!(
            Instant::now() < deadline,
            "the idle connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !pool.reaping.load(Ordering::Acquire),
        "the reaper ends with the pool empty"
    );
}
