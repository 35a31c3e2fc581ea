//! The control plane as a real child process (`presage control-plane`), on port 0 or on
//! a given gRPC address (to restart it where proxies expect it), with its REST API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{h1_client, BIN};

pub struct ControlPlane {
    pub child: Child,
    pub grpc: SocketAddr,
    pub api: SocketAddr,
    pub store: PathBuf,
}

impl ControlPlane {
    /// Starts a control plane with its store at `store`; `grpc` defaults to port 0.
    /// `config` is an optional YAML file (seeds).
    pub async fn start(
        store: &Path,
        grpc: Option<SocketAddr>,
        config: Option<&Path>,
    ) -> ControlPlane {
        let grpc_arg = grpc.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let mut args = vec![
            "control-plane".to_string(),
            "--grpc".into(),
            grpc_arg,
            "--api".into(),
            "127.0.0.1:0".into(),
            "--store".into(),
            store.display().to_string(),
        ];
        if let Some(c) = config {
            args.extend(["--config".into(), c.display().to_string()]);
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut g, mut a) = (None, None);
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line == "presage: ready" {
                    return true;
                }
                if let Some(x) = line.strip_prefix("presage: grpc on ") {
                    g = Some(x.parse().unwrap());
                } else if let Some(x) = line.strip_prefix("presage: api on ") {
                    a = Some(x.parse().unwrap());
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "control plane did not start ({args:?})");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ControlPlane {
            child,
            grpc: g.unwrap(),
            api: a.unwrap(),
            store: store.to_path_buf(),
        }
    }

    /// Starts a control plane with `yaml` as its config file (`cp.yaml` in `dir`) and its
    /// store in `dir`.
    pub async fn with_config(dir: &Path, yaml: &str) -> ControlPlane {
        let cfg = dir.join("cp.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        ControlPlane::start(&dir.join("cp.redb"), None, Some(&cfg)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// A REST call; returns the status and the body as JSON (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        self.call_as(None, method, path, body).await
    }

    /// A REST call with a bearer token.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.api))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        let res = h1_client().request(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, json)
    }

    /// A scaled service's state at `/v1/autoscaling` (null when it is not scaled).
    pub async fn scaled(&self, service: &str) -> serde_json::Value {
        let list = self.get("/v1/autoscaling").await;
        list.as_array()
            .and_then(|l| l.iter().find(|s| s["service"] == service).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        let (s, v) = self.call(Method::GET, path, "").await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
        v
    }

    pub async fn put(&self, path: &str, body: &str) -> serde_json::Value {
        let (s, v) = self.call(Method::PUT, path, body).await;
        assert_eq!(s, StatusCode::OK, "PUT {path}: {v}");
        v
    }

    /// The proxy with `id` as `/v1/proxies` lists it.
    pub async fn proxy(&self, id: &str) -> Option<serde_json::Value> {
        let list = self.get("/v1/proxies").await;
        list.as_array()?.iter().find(|p| p["id"] == id).cloned()
    }

    /// SIGKILL: a crash, nothing saved beyond what was committed.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM and wait: a clean stop.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "control plane exited with {status}");
    }
}

/// A cluster resource as the REST API takes it.
pub fn service_json(endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{\"address\":\"{a}\"}}"))
        .collect();
    format!("{{\"endpoints\":[{}]}}", eps.join(","))
}
