//! Transparent interception, end to end inside a network namespace the test creates
//! (`ip netns`, `iptables` from Debian; needs root, as CI runs). An unmodified client
//! (curl, a raw TCP client) has its outbound TCP redirected to the proxy's transparent
//! listener by the very iptables rules `presage inject` puts in a pod's init step (the
//! proxy runs as their exempt user, 1337): HTTP is routed by Host, or by its original
//! destination, to mesh services, or passed to where it was headed; other protocols are
//! spliced through as TCP.

use crate::support;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{TempDir, BIN};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A network namespace with its loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "presage-t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add (the test needs root)");
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c.kill_on_drop(true);
        c
    }

    /// Runs to completion; panics on failure.
    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running process and returns it with the first stdout line that
    /// `ready` accepts (and everything before it).
    async fn spawn(&self, args: &[&str], ready: impl Fn(&str) -> bool) -> (Child, Vec<String>) {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(l) = lines.next_line().await.unwrap() {
                let done = ready(&l);
                seen.push(l);
                if done {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "{args:?} did not start: {seen:?}");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (child, seen)
    }
}

impl Netns {
    /// A pod's sidecar, as `presage inject` sets it up: the init step's iptables rules
    /// (in a pod they are in place before any container starts), then the proxy on `cfg`
    /// as its own user. Returns the proxy and its uid.
    async fn sidecar(&self, cfg: &Path) -> (Child, String) {
        self.sidecar_when(cfg, |l| l == "presage: ready").await
    }

    /// `sidecar`, started once the proxy prints a line that `ready` accepts.
    async fn sidecar_when(&self, cfg: &Path, ready: impl Fn(&str) -> bool) -> (Child, String) {
        let o = presage_control_plane::inject::Options::default();
        // Every TCP connection but the proxy's own goes to the proxy.
        self.run(&[
            "sh",
            "-c",
            &presage_control_plane::inject::iptables_script(&o),
        ]);
        let uid = o.proxy_uid.to_string();
        let cmd = as_user(&uid, &[BIN, "proxy", "--config", cfg.to_str().unwrap()]);
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let (proxy, _) = self.spawn(&args, ready).await;
        (proxy, uid)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Links `a` (None: the host's namespace) and `b` with a veth pair named `NAME-a` and
/// `NAME-b`, addressed `SUBNET.1/24` and `SUBNET.2/24`; returns both addresses. The pair
/// goes when `b`'s namespace is deleted.
fn link(a: Option<&Netns>, b: &Netns, name: &str, subnet: &str) -> (String, String) {
    let (ea, eb) = (format!("{name}a"), format!("{name}b"));
    let (ip_a, ip_b) = (format!("{subnet}.1"), format!("{subnet}.2"));
    let host = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args:?}");
    };
    host(&["link", "add", &ea, "type", "veth", "peer", "name", &eb]);
    host(&["link", "set", &eb, "netns", &b.0]);
    let addr_a = format!("{ip_a}/24");
    match a {
        Some(ns) => {
            host(&["link", "set", &ea, "netns", &ns.0]);
            ns.run(&["ip", "addr", "add", &addr_a, "dev", &ea]);
            ns.run(&["ip", "link", "set", &ea, "up"]);
        }
        None => {
            host(&["addr", "add", &addr_a, "dev", &ea]);
            host(&["link", "set", &ea, "up"]);
        }
    }
    b.run(&["ip", "addr", "add", &format!("{ip_b}/24"), "dev", &eb]);
    b.run(&["ip", "link", "set", &eb, "up"]);
    (ip_a, ip_b)
}

/// The address a sample service printed (`sample-service NAME on ADDR`).
async fn sample(ns: &Netns, name: &str) -> (Child, String) {
    let (child, lines) = ns
        .spawn(
            &[
                BIN,
                "sample-service",
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
            ],
            |l| l.starts_with("sample-service "),
        )
        .await;
    (child, last_word(&lines))
}

/// The address at the end of a process's ready line.
fn last_word(lines: &[String]) -> String {
    let line = lines.last().expect("a ready line");
    line.rsplit(' ').next().unwrap_or_default().to_string()
}

/// `args` run as `uid` (setpriv, util-linux): how the proxy and its exempt traffic run.
fn as_user(uid: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec![
        "setpriv".to_string(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

/// A TCP echo server (not HTTP: it speaks whatever it is sent back).
const ECHO: &str = "
import socket, threading
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
print('echo on 127.0.0.1:%d' % s.getsockname()[1], flush=True)
def serve(c):
    while True:
        d = c.recv(4096)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
";

/// Connects to the echo server, sends binary bytes, prints what came back.
const ECHO_CLIENT: &str = "
import socket, sys
host, port = sys.argv[1].rsplit(':', 1)
c = socket.create_connection((host, int(port)))
c.sendall(b'\\x00\\x01binary')
print(c.recv(64).hex(), flush=True)
";

#[tokio::test]
async fn redirected_traffic_is_routed_by_host_passed_through_or_spliced() {
    let ns = Netns::new();
    let (_orders, orders) = sample(&ns, "orders").await;
    let (_billing, billing) = sample(&ns, "billing").await;
    let (_legacy, legacy) = sample(&ns, "legacy").await;
    let (_echo, echo_lines) = ns
        .spawn(&["python3", "-c", ECHO], |l| l.starts_with("echo on "))
        .await;
    let echo = last_word(&echo_lines);

    let dir = TempDir::new();
    let cfg = dir.0.join("sidecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:
  - {{name: outbound, address: \"127.0.0.1:15001\", transparent: true}}
admin: {{address: \"127.0.0.1:15000\"}}
routes:
  - {{name: billing, match: {{host: billing.mesh}}, cluster: billing}}
clusters:
  - {{name: billing, endpoints: [{{address: \"{billing}\"}}]}}
  - {{name: orders, endpoints: [{{address: \"{orders}\"}}]}}
"
        ),
    )
    .unwrap();
    let (_proxy, uid) = ns.sidecar(&cfg).await;
    let as_app = |args: &[&str]| {
        let mut all = vec!["runuser", "-u", "nobody", "--"];
        all.extend_from_slice(args);
        ns.run(&all)
    };
    let json = |s: String| -> serde_json::Value {
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s}"))
    };

    // HTTP to an address outside the mesh: to where it was headed, through the proxy
    // (which gave it a request id on the way).
    let r = json(as_app(&["curl", "-sS", &format!("http://{legacy}/hello")]));
    assert_eq!(r["service"], "legacy", "{r}");
    assert!(r["request_id"].is_string(), "passed through the proxy: {r}");
    // HTTP to an instance of a mesh service: routed as that service.
    let r = json(as_app(&["curl", "-sS", &format!("http://{orders}/hello")]));
    assert_eq!(r["service"], "orders", "{r}");
    assert!(r["request_id"].is_string(), "{r}");
    // The proxy's own user is not redirected: straight there, no request id.
    let url = format!("http://{legacy}/hello");
    let direct_cmd = as_user(&uid, &["curl", "-sS", &url]);
    let direct_args: Vec<&str> = direct_cmd.iter().map(String::as_str).collect();
    let direct = json(ns.run(&direct_args));
    assert!(direct["request_id"].is_null(), "{direct}");

    // HTTP whose Host is a mesh service: routed there, whatever address it was sent to
    // (nothing listens on 127.0.0.9:80).
    let r = json(as_app(&[
        "curl",
        "-sS",
        "--resolve",
        "billing.mesh:80:127.0.0.9",
        "http://billing.mesh/pay",
    ]));
    assert_eq!(r["service"], "billing", "{r}");
    assert_eq!(r["path"], "/pay", "{r}");

    // Not HTTP: spliced through as TCP.
    let back = as_app(&["python3", "-c", ECHO_CLIENT, &echo]);
    assert_eq!(back.trim(), "000162696e617279", "echoed byte for byte");

    // The admin port is exempt too.
    let metrics = ns.run(&["curl", "-sS", "http://127.0.0.1:15000/metrics"]);
    let count = |name: &str| support::metric_sum(&metrics, name, &[]);
    assert_eq!(
        count("presage_passthrough_requests_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count("presage_passthrough_connections_total"),
        1.0,
        "{metrics}"
    );
}

/// Inbound: a client in another namespace (over a veth pair, as another pod would be)
/// calls the application's port; the init step's PREROUTING rule sends the connection
/// to the proxy's inbound listener, which passes it to the application untouched by the
/// routes (a catch-all outbound route to a decoy must not apply).
#[tokio::test]
async fn inbound_traffic_reaches_the_application_through_the_proxy() {
    let (client, pod) = (Netns::new(), Netns::new());
    let k = std::process::id() % 200 + 10;
    let (_, pod_ip) = link(
        Some(&client),
        &pod,
        &format!("pv{k}"),
        &format!("10.199.{k}"),
    );

    let (_app, _) = pod
        .spawn(
            &[
                BIN,
                "sample-service",
                "--listen",
                "0.0.0.0:8080",
                "--name",
                "app",
            ],
            |l| l.starts_with("sample-service "),
        )
        .await;
    let (_decoy, decoy) = sample(&pod, "decoy").await;
    let dir = TempDir::new();
    let cfg = dir.0.join("sidecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:
  - {{name: outbound, address: \"127.0.0.1:15001\", transparent: true}}
  - {{name: inbound, address: \"0.0.0.0:15006\", transparent: true, inbound: true}}
admin: {{address: \"127.0.0.1:15000\"}}
routes:
  - {{name: everything, cluster: decoy}}
clusters:
  - {{name: decoy, endpoints: [{{address: \"{decoy}\"}}]}}
"
        ),
    )
    .unwrap();
    let (_proxy, _) = pod.sidecar(&cfg).await;

    let out = client.run(&["curl", "-sS", &format!("http://{pod_ip}:8080/hello")]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        r["service"], "app",
        "the application, not a route's cluster: {r}"
    );
    assert!(r["request_id"].is_string(), "through the proxy: {r}");
    let metrics = pod.run(&["curl", "-sS", "http://127.0.0.1:15000/metrics"]);
    assert_eq!(
        support::metric_sum(&metrics, "presage_passthrough_requests_total", &[]),
        1.0,
        "{metrics}"
    );
}

/// Mutual TLS between two pods' sidecars with identities from the control plane's CA
/// (the control plane runs in the host's namespace, linked to both pods). An unmodified
/// client's plain HTTP call to the other pod's address goes through both sidecars over
/// mTLS, and the application sees the caller's verified identity; a path the caller's
/// identity is not allowed on gets 403; certificates that live 4 s are rotated while
/// load runs (with ever more connections, so new handshakes use renewed certificates),
/// and no request fails.
#[tokio::test]
async fn sidecars_call_each_other_over_mutual_tls_with_rotating_identities() {
    let (client, pod) = (Netns::new(), Netns::new());
    let k = std::process::id() % 200 + 10;
    let (_, pod_ip) = link(
        Some(&client),
        &pod,
        &format!("mp{k}"),
        &format!("10.196.{k}"),
    );
    let (cp_for_client, _) = link(None, &client, &format!("mc{k}"), &format!("10.197.{k}"));
    let (cp_for_pod, _) = link(None, &pod, &format!("md{k}"), &format!("10.198.{k}"));

    let dir = TempDir::new();
    let cp_cfg = dir.0.join("cp.yaml");
    std::fs::write(
        &cp_cfg,
        "identity: {trust_domain: presage.test, workload_ttl: 4s}\n",
    )
    .unwrap();
    let cp = support::control_plane::ControlPlane::start(
        &dir.0.join("store.redb"),
        Some("0.0.0.0:0".parse().unwrap()),
        Some(&cp_cfg),
    )
    .await;
    let port = cp.grpc.port();

    let (_app, _) = pod
        .spawn(
            &[
                BIN,
                "sample-service",
                "--listen",
                "0.0.0.0:8080",
                "--name",
                "backend",
            ],
            |l| l.starts_with("sample-service "),
        )
        .await;
    let pod_cfg = dir.0.join("pod.yaml");
    std::fs::write(
        &pod_cfg,
        format!(
            "listeners:
  - {{name: outbound, address: \"127.0.0.1:15001\", transparent: true}}
  - name: inbound
    address: \"0.0.0.0:15006\"
    transparent: true
    inbound: true
    authorization:
      - match: {{path: {{prefix: /admin}}}}
        allow: [\"spiffe://presage.test/ns/ops/*\"]
admin: {{address: \"127.0.0.1:15000\"}}
control_plane:
  address: http://{cp_for_pod}:{port}
  identity: {{namespace: shop, service_account: backend}}
"
        ),
    )
    .unwrap();
    let client_cfg = dir.0.join("client.yaml");
    std::fs::write(
        &client_cfg,
        format!(
            "listeners:
  - {{name: outbound, address: \"127.0.0.1:15001\", transparent: true}}
admin: {{address: \"127.0.0.1:15000\"}}
control_plane:
  address: http://{cp_for_client}:{port}
  identity: {{namespace: shop, service_account: frontend}}
clusters:
  - name: backend
    tls: {{mesh: true}}
    endpoints: [{{address: \"{pod_ip}:8080\"}}]
"
        ),
    )
    .unwrap();
    let has_identity = |l: &str| l.starts_with("presage: identity spiffe://presage.test/");
    let (_pod_proxy, _) = pod.sidecar_when(&pod_cfg, has_identity).await;
    let (_client_proxy, _) = client.sidecar_when(&client_cfg, has_identity).await;
    let as_app = |args: &[&str]| {
        let mut all = vec!["runuser", "-u", "nobody", "--"];
        all.extend_from_slice(args);
        client.run(&all)
    };
    let url = format!("http://{pod_ip}:8080/hello");
    let json = |s: String| -> serde_json::Value {
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s}"))
    };

    // Through both sidecars; the application sees who called, as verified by mTLS.
    let xfcc =
        "By=spiffe://presage.test/ns/shop/sa/backend;URI=spiffe://presage.test/ns/shop/sa/frontend";
    let r = json(as_app(&["curl", "-sS", &url]));
    assert_eq!(r["service"], "backend", "{r}");
    assert_eq!(r["client_cert"], xfcc, "{r}");
    // A caller cannot claim another identity with the header.
    let forged = "x-forwarded-client-cert: URI=spiffe://presage.test/ns/ops/sa/admin";
    let r = json(as_app(&["curl", "-sS", "-H", forged, &url]));
    assert_eq!(r["client_cert"], xfcc, "{r}");
    // Per-route authorization on the inbound listener: /admin is for ops only.
    let admin = format!("http://{pod_ip}:8080/admin/reset");
    let out = as_app(&["curl", "-sS", "-D", "-", &admin]);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("x-presage-error: forbidden"), "{out}");
    assert!(
        out.contains("spiffe://presage.test/ns/shop/sa/frontend"),
        "{out}"
    );

    let metric = |ns: &Netns, name: &str, labels: &[(&str, &str)]| {
        let m = ns.run(&["curl", "-sS", "http://127.0.0.1:15000/metrics"]);
        support::metric_sum(&m, name, labels)
    };
    let mtls_before = metric(&pod, "presage_mtls_connections_total", &[]);
    assert!(mtls_before >= 1.0, "the calls came over mTLS");
    assert_eq!(metric(&pod, "presage_authorization_denied_total", &[]), 1.0);
    // The rule holds for the path as the app resolves it, not only as written.
    for sneaky in ["//admin/reset", "/public/../admin/reset", "/%61dmin/reset"] {
        let url = format!("http://{pod_ip}:8080{sneaky}");
        let out = as_app(&["curl", "-sS", "--path-as-is", "-D", "-", &url]);
        assert!(out.starts_with("HTTP/1.1 403"), "{sneaky}: {out}");
    }
    // Silence before the request makes the sniffer give up on HTTP; on a listener with
    // rules that is refused, not passed through as TCP past them.
    let quiet = format!(
        r#"import socket, time
s = socket.create_connection(("{pod_ip}", 8080))
time.sleep(0.5)
s.sendall(b"GET /admin/reset HTTP/1.1\r\nHost: x\r\n\r\n")
s.settimeout(5)
try:
    print(repr(s.recv(200)))
except OSError as e:
    print("error", e)
"#
    );
    let out = as_app(&["python3", "-c", &quiet]);
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    assert_eq!(metric(&pod, "presage_authorization_denied_total", &[]), 5.0);

    // Load across rotations: each round adds a connection, so the client sidecar's pool
    // keeps opening mTLS connections while certificates change under it.
    let renewals = |ns: &Netns| metric(ns, "presage_identity_renewals_total", &[("result", "ok")]);
    let start = std::time::Instant::now();
    let (r0_pod, r0_client) = (renewals(&pod), renewals(&client));
    let (mut total, mut rounds) = (0u64, 0);
    while start.elapsed() < Duration::from_secs(7) || rounds < 3 {
        rounds += 1;
        let c = rounds.to_string();
        let n = (rounds * 100).to_string();
        let out = as_app(&["h2load", "--h1", "-n", &n, "-c", &c, &url]);
        let line = |prefix: &str| {
            out.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} in {out}"))
                .to_string()
        };
        let requests = line("requests:");
        assert!(
            requests.contains(" 0 failed, 0 errored, 0 timeout"),
            "round {rounds}: {requests}"
        );
        assert!(
            line("status codes:").starts_with(&format!("status codes: {n} 2xx")),
            "round {rounds}: {out}"
        );
        total += rounds as u64 * 100;
    }
    assert!(
        renewals(&pod) - r0_pod >= 2.0 && renewals(&client) - r0_client >= 2.0,
        "certificates were rotated during the load"
    );
    assert_eq!(
        metric(
            &client,
            "presage_identity_renewals_total",
            &[("result", "error")]
        ),
        0.0
    );
    assert!(
        metric(&pod, "presage_mtls_connections_total", &[]) > mtls_before,
        "new mTLS connections were opened during the load"
    );
    eprintln!("{total} requests in {rounds} rounds, all 2xx, across certificate rotations");
}
