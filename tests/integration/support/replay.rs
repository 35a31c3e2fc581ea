//! A loopback HTTP server that replays registry API responses, for registries no real
//! server of which can run on this machine (Consul, Kubernetes: not in Debian, PyPI or
//! npm, and no container engine). It stands in for the server only: the control plane's
//! real client code (rs-consul, kube) talks to it over a real socket.
//!
//! It serves what the test sets per path, with two behaviours of the real servers:
//! - Consul blocking queries: a request with `?index=N` equal to the path's current
//!   `X-Consul-Index` is held until the test changes the path or `wait=` runs out;
//! - Kubernetes watches: a request with `watch=true` or `watch=1` gets a chunked
//!   stream of the JSON lines the test pushes with [`Replay::push`].
//!
//! PUT and POST are answered 200 (what the Consul agent says to register, pass and
//! deregister) and kept with their bodies; PATCH (Kubernetes) is kept too and answered
//! with the path's canned reply, the patched object. Every request's path and query is logged so
//! tests can check what the client asked.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// One path's canned answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub body: String,
    /// Sent as `X-Consul-Index`; enables blocking queries on this path.
    pub consul_index: Option<u64>,
}

#[derive(Default)]
struct State {
    replies: HashMap<String, Reply>,
    streams: HashMap<String, broadcast::Sender<Bytes>>,
    /// Answer every request with this status (an outage), when set.
    failing: Option<StatusCode>,
    log: Vec<String>,
    writes: Vec<Write>,
}

/// A request with a body (PUT, POST), as received.
#[derive(Clone, Debug)]
pub struct Write {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: String,
}

pub struct Replay {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Bumped on every change so held blocking queries re-check.
    changed: watch::Sender<u64>,
    task: tokio::task::AbortHandle,
}

impl Replay {
    pub async fn start() -> Replay {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let (changed, _) = watch::channel(0);
        let (s, c) = (state.clone(), changed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                let (s, c) = (s.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(s.clone(), c.subscribe(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
        .abort_handle();
        Replay {
            addr,
            state,
            changed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig at `path` whose cluster is this server, so kube's real client
    /// code talks to it.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: replay\n  cluster:\n    server: {}\ncontexts:\n- name: replay\n  context:\n    cluster: replay\n    user: tester\ncurrent-context: replay\nusers:\n- name: tester\n  user:\n    token: test-token\n",
                self.url()
            ),
        )
        .unwrap();
    }

    /// Sets what `path` answers (and wakes blocking queries on it).
    pub fn set(&self, path: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .replies
            .insert(path.to_string(), reply);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sends one line to every open watch on `path`.
    pub fn push(&self, path: &str, line: &str) -> usize {
        let tx = self.stream(path);
        tx.send(Bytes::from(format!("{line}\n"))).unwrap_or(0)
    }

    /// Open watches on `path`.
    pub fn watchers(&self, path: &str) -> usize {
        self.stream(path).receiver_count()
    }

    /// Every request answers `status` (None: back to normal); open watches end.
    pub fn fail(&self, status: Option<StatusCode>) {
        let mut s = self.state.lock().unwrap();
        s.failing = status;
        if status.is_some() {
            s.streams.clear();
        }
        drop(s);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Requests so far, as `path?query`.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// PUT and POST requests so far, with their bodies.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    fn stream(&self, path: &str) -> broadcast::Sender<Bytes> {
        stream(&mut self.state.lock().unwrap(), path)
    }
}

fn stream(s: &mut State, path: &str) -> broadcast::Sender<Bytes> {
    s.streams
        .entry(path.to_string())
        .or_insert_with(|| broadcast::channel(1024).0)
        .clone()
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    q.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// `5s`, `100ms`, `1m` as Consul and rs-consul write them.
fn duration(v: &str) -> Option<Duration> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = v.strip_suffix('s') {
        return s.parse().ok().map(Duration::from_secs);
    }
    v.strip_suffix('m')?
        .parse()
        .ok()
        .map(|m: u64| Duration::from_secs(m * 60))
}

/// The canned reply of `path` (404 without one, the failure status during an outage).
async fn reply(state: &Mutex<State>, path: &str) -> Result<Response<Body>, Infallible> {
    let (reply, failing) = {
        let s = state.lock().unwrap();
        (s.replies.get(path).cloned(), s.failing)
    };
    let (status, body) = match (failing, reply) {
        (Some(status), _) => (status, "{}".to_string()),
        (None, Some(r)) => (StatusCode::OK, r.body),
        (None, None) => (
            StatusCode::NOT_FOUND,
            r#"{"kind":"Status","code":404}"#.to_string(),
        ),
    };
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(res)
}

async fn handle(
    state: Arc<Mutex<State>>,
    mut changed: watch::Receiver<u64>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let q = req.uri().query().unwrap_or("").to_string();
    state.lock().unwrap().log.push(format!("{path}?{q}"));
    let method = req.method().clone();
    if matches!(
        method,
        http::Method::PUT | http::Method::POST | http::Method::PATCH
    ) {
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let write = Write {
            method: method.to_string(),
            path: path.clone(),
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        state.lock().unwrap().writes.push(write);
        // A Kubernetes PATCH answers the patched object, and a POST with a canned reply
        // (a TokenReview) the created one: the path's canned reply.
        let canned = state.lock().unwrap().replies.contains_key(&path);
        if method == http::Method::PATCH || (method == http::Method::POST && canned) {
            return reply(&state, &path).await;
        }
        // What the Consul agent answers to register, pass and deregister.
        let status = state.lock().unwrap().failing.unwrap_or(StatusCode::OK);
        let mut res = Response::new(full(""));
        *res.status_mut() = status;
        return Ok(res);
    }
    let is_watch = matches!(query(&q, "watch"), Some("true" | "1"));
    let held_index: Option<u64> = query(&q, "index").and_then(|i| i.parse().ok());
    let wait = query(&q, "wait")
        .and_then(duration)
        .unwrap_or(Duration::from_secs(300));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (reply, failing, rx) = {
            let mut s = state.lock().unwrap();
            let rx = is_watch.then(|| stream(&mut s, &path).subscribe());
            (s.replies.get(&path).cloned(), s.failing, rx)
        };
        if let Some(status) = failing {
            let mut res = Response::new(full("No cluster leader"));
            *res.status_mut() = status;
            return Ok(res);
        }
        if let Some(rx) = rx {
            let lines = futures_util::stream::unfold(rx, |mut rx| async move {
                match rx.recv().await {
                    Ok(b) => Some((Ok::<_, Infallible>(Frame::data(b)), rx)),
                    Err(_) => None,
                }
            });
            let mut res = Response::new(StreamBody::new(lines).boxed());
            res.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return Ok(res);
        }
        let Some(reply) = reply else {
            let mut res = Response::new(full(r#"{"kind":"Status","code":404}"#));
            *res.status_mut() = StatusCode::NOT_FOUND;
            return Ok(res);
        };
        let blocked = matches!((held_index, reply.consul_index), (Some(h), Some(c)) if h >= c);
        if blocked {
            // Held like a Consul blocking query: until a change or the wait runs out.
            tokio::select! {
                r = changed.changed() => { if r.is_err() { return Ok(Response::new(full(""))); } continue; }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        let mut res = Response::new(full(reply.body));
        let h = res.headers_mut();
        h.insert("content-type", "application/json".parse().unwrap());
        if let Some(i) = reply.consul_index {
            h.insert("x-consul-index", i.to_string().parse().unwrap());
            h.insert("x-consul-knownleader", "true".parse().unwrap());
            h.insert("x-consul-lastcontact", "0".parse().unwrap());
        }
        return Ok(res);
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}
