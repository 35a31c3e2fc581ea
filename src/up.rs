//! `presage up`: the local mesh, as one process tree. Starts the control plane (with its
//! embedded store) from the demo config, a sample service for every loopback endpoint of
//! its services (the autoscaled ones get theirs from the control plane's local-process
//! actuator), and a proxy that takes its routes and clusters from the control plane;
//! prints `name: URL` per endpoint once the proxy has synced; stops everything on
//! Ctrl-C/SIGTERM (or when any part exits) and waits for each child.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use presage_control_plane::config as cp_config;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long each part may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long children get to exit after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

struct Part {
    name: String,
    child: Child,
}

pub fn run(path: &Path) -> ExitCode {
    if !path.exists() {
        eprintln!(
            "{}: no such file (run from the repository root, or pass --config)",
            path.display()
        );
        return ExitCode::from(crate::EX_USAGE);
    }
    let cfg = match cp_config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(crate::EX_USAGE);
        }
    };
    let rt = match crate::runtime(1) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let mut parts = Vec::new();
        let result = start(path, &cfg, &mut parts).await;
        let code = match result {
            Ok(()) => {
                let stopped = wait(&mut parts).await;
                if let Some(name) = stopped {
                    eprintln!("presage up: {name} exited; stopping the rest");
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("presage up: {e}");
                ExitCode::FAILURE
            }
        };
        stop(parts).await;
        code
    })
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))
}

/// Spawns `presage ARGS`, reads its stdout until `until` and returns the lines read.
async fn spawn(
    parts: &mut Vec<Part>,
    name: &str,
    args: &[&str],
    until: &str,
) -> Result<Vec<String>, String> {
    spawn_with(parts, name, args, until, &[]).await
}

async fn spawn_with(
    parts: &mut Vec<Part>,
    name: &str,
    args: &[&str],
    until: &str,
    env: &[(&str, &str)],
) -> Result<Vec<String>, String> {
    let mut child = Command::new(exe()?)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    parts.push(Part {
        name: name.to_string(),
        child,
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line == until;
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(START_TIMEOUT, read).await {
        Ok(true) => {
            // Keep draining so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(seen)
        }
        Ok(false) => Err(format!(
            "{name} exited while starting (see its errors above)"
        )),
        Err(_) => Err(format!("{name} did not start within {START_TIMEOUT:?}")),
    }
}

/// 128 random bits from the kernel, in hex.
fn demo_token() -> Result<String, String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for the API token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn addr_after<'a>(lines: &'a [String], prefix: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix(prefix))
}

async fn start(path: &Path, cfg: &cp_config::Config, parts: &mut Vec<Part>) -> Result<(), String> {
    let mut samples = Vec::new();
    // With a registry the instances register themselves (etcd lease or Consul TTL
    // check, 10 s) and deregister on exit, as instances the mesh starts should.
    let registry = match (&cfg.discovery.etcd, &cfg.discovery.consul) {
        (Some(e), _) => Some(("--register-etcd", e.endpoints.join(","))),
        (None, Some(c)) => Some(("--register-consul", c.address.clone())),
        (None, None) => None,
    };
    for svc in &cfg.services {
        for ep in &svc.endpoints {
            if ep.address.starts_with("127.0.0.1:") {
                let name = format!("sample {} {}", svc.name, ep.address);
                let ready = format!("sample-service {} on {}", svc.name, ep.address);
                let mut args = vec![
                    "sample-service",
                    "--listen",
                    &ep.address,
                    "--name",
                    &svc.name,
                ];
                if let Some((flag, at)) = &registry {
                    args.extend([*flag, at.as_str()]);
                }
                spawn(parts, &name, &args, &ready).await?;
                samples.push((svc.name.clone(), ep.address.clone()));
            }
        }
    }
    let config = path.to_string_lossy();
    // The demo's admin token for the REST API (or the caller's, if it set one).
    let token = match std::env::var("PRESAGE_API_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => demo_token()?,
    };
    let lines = spawn_with(
        parts,
        "control plane",
        &["control-plane", "--config", &config],
        "presage: ready",
        &[("PRESAGE_API_TOKEN", &token)],
    )
    .await?;
    let grpc = addr_after(&lines, "presage: grpc on ")
        .ok_or("control plane did not say where it listens")?
        .to_string();
    let api = addr_after(&lines, "presage: api on ")
        .ok_or("control plane did not say where its API is")?
        .to_string();

    let local = cfg.local_proxy.clone().unwrap_or(cp_config::LocalProxy {
        listen: "127.0.0.1:8080".parse().expect("valid default"),
        admin: "127.0.0.1:9901".parse().expect("valid default"),
    });
    // The proxy's own file: listeners and admin here, everything else from the control plane.
    let proxy_yaml = format!(
        "# Written by `presage up` from {}; routes and clusters come from the control plane.\n\
         listeners:\n  - name: main\n    address: \"{}\"\nadmin:\n  address: \"{}\"\ncontrol_plane:\n  address: \"http://{grpc}\"\n  node_id: presage-up-proxy\n",
        path.display(),
        local.listen,
        local.admin
    );
    let proxy_path = cfg.store.with_file_name("proxy.yaml");
    std::fs::write(&proxy_path, proxy_yaml)
        .map_err(|e| format!("cannot write {}: {e}", proxy_path.display()))?;
    let proxy_path = proxy_path.to_string_lossy();
    let lines = spawn(
        parts,
        "proxy",
        &["proxy", "--config", &proxy_path],
        "presage: synced with the control plane",
    )
    .await?;
    let listen = addr_after(&lines, "presage: listener main on ")
        .ok_or("proxy did not say where it listens")?;
    let admin =
        addr_after(&lines, "presage: admin on ").ok_or("proxy did not say where its admin is")?;

    println!("proxy: http://{listen}");
    println!("admin: http://{admin}/metrics");
    println!("api: http://{api}/v1/services");
    println!("openapi: http://{api}/openapi.json");
    println!("token: {token}");
    for (name, addr) in samples {
        println!("{name}: http://{addr}");
    }
    for s in &cfg.autoscaling.services {
        println!(
            "{}: scaled by the planner (instances: http://{api}/v1/autoscaling, why: http://{api}/v1/decisions)",
            s.service
        );
    }
    println!("presage up: running; Ctrl-C stops everything");
    Ok(())
}

/// Waits for Ctrl-C/SIGTERM (None) or for a part to exit (its name).
async fn wait(parts: &mut [Part]) -> Option<String> {
    let any_exit = futures_util::future::select_all(parts.iter_mut().map(|p| {
        let name = p.name.clone();
        Box::pin(async move {
            let _ = p.child.wait().await;
            name
        })
    }));
    tokio::select! {
        _ = presage_proxy::server::shutdown_signal() => None,
        (name, _, _) = any_exit => Some(name),
    }
}

/// SIGTERM to every child (proxy first, samples last), then wait; kill stragglers.
async fn stop(parts: Vec<Part>) {
    for p in parts.iter().rev() {
        if let Some(pid) = p.child.id() {
            // std has no signal API and this crate forbids unsafe: procps' kill(1).
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for mut p in parts.into_iter().rev() {
        if tokio::time::timeout(STOP_TIMEOUT, p.child.wait())
            .await
            .is_err()
        {
            let _ = p.child.kill().await;
        }
    }
}
