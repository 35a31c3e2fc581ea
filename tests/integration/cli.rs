//! The `presage` command line: validate, the one-line reverse proxy, help, exit codes, and
//! `presage up` (the README's main job) on free ports.

use crate::support;

use std::process::Command;

use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;

use http::StatusCode;

use support::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn validate_accepts_good_files_and_names_every_error() {
    let dir = TempDir::new();
    let good = dir.0.join("good.yaml");
    std::fs::write(&good, "routes: [{ cluster: a }]\nclusters: [{ name: a, endpoints: [{ address: \"127.0.0.1:1\" }] }]\n").unwrap();
    let (code, out, _) = run(&["validate", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("good.yaml: ok"));

    let bad = dir.0.join("bad.yaml");
    std::fs::write(&bad, "routes:\n  - cluster: x\n    timeout: 5 parsecs\n").unwrap();
    let (code, _, err) = run(&["validate", bad.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.starts_with(&format!(
            "{}:3:14: routes[0].timeout: expected a duration",
            bad.display()
        )),
        "{err}"
    );

    let bad2 = dir.0.join("bad2.yaml");
    std::fs::write(&bad2, "routes:\n  - cluster: x\n").unwrap();
    let (code, _, err) = run(&["validate", bad2.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.contains(":2:14: routes[0].cluster: no cluster named \"x\""),
        "{err}"
    );

    let (code, _, err) = run(&["validate", "/nonexistent.yaml"]);
    assert_eq!(code, 64);
    assert!(err.contains("cannot read the file"), "{err}");
}

/// Validates YAML files against a JSON Schema (Python's jsonschema, installed into
/// target/py by scripts/test.sh with kubernetes-validate); prints one line per error.
const SCHEMA_CHECK: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
bad = 0
for f in sys.argv[2:]:
    for e in v.iter_errors(yaml.safe_load(open(f))):
        bad += 1
        print(f"{f}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
sys.exit(1 if bad else 0)
"#;

/// The JSON Schema editors use (config/presage.schema.json) knows every field the
/// parser accepts: a config using every one of them is valid for both, as are the
/// shipped configs; and the schema is strict (an unknown field is an error there too).
#[test]
fn the_json_schema_knows_every_field_the_parser_accepts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let every = root.join("tests/fixtures/config/every-field.yaml");
    let (code, out, err) = run(&["validate", every.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let python = root.join("target/py/bin/python3");
    assert!(python.exists(), "scripts/test.sh installs target/py");
    let check = |files: &[&std::path::Path]| {
        let out = Command::new(&python)
            .arg("-c")
            .arg(SCHEMA_CHECK)
            .arg(root.join("config/presage.schema.json"))
            .args(files)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let shipped = [
        every.as_path(),
        &root.join("config/presage.yaml"),
        &root.join("deploy/sidecar/sidecar.yaml"),
    ];
    let (ok, text) = check(&shipped);
    assert!(ok, "{text}");

    let dir = TempDir::new();
    let typo = dir.0.join("typo.yaml");
    std::fs::write(
        &typo,
        "listeners:\n  - address: 127.0.0.1:0\n    adress: x\n",
    )
    .unwrap();
    let (ok, text) = check(&[&typo]);
    assert!(!ok && text.contains("'adress' was unexpected"), "{text}");
}

#[test]
fn help_explains_every_flag() {
    let (code, out, _) = run(&["proxy", "--help"]);
    assert_eq!(code, 0);
    for flag in ["--config", "--listen", "--to", "--admin", "--workers"] {
        assert!(out.contains(flag), "{flag} missing from:\n{out}");
    }
    let (_, out, _) = run(&["--help"]);
    for cmd in ["proxy", "validate", "up", "control-plane", "sample-service"] {
        assert!(out.contains(cmd), "{cmd} missing from:\n{out}");
    }
}

#[test]
fn proxy_with_a_bad_config_exits_64() {
    let (code, _, err) = run(&["proxy", "--listen", "127.0.0.1:0", "--to", "ftp://x:1"]);
    assert_eq!(code, 64);
    assert!(err.contains("unsupported scheme"), "{err}");
    let (code, _, _) = run(&["proxy"]);
    assert_eq!(code, 64);
}

#[tokio::test]
async fn one_line_reverse_proxy() {
    let up = Upstream::spawn("one").await;
    let args = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &format!("http://{}/base", up.addr),
        "--admin",
        "127.0.0.1:0",
    ];
    let proxy = Proxy::spawn(args.iter().map(|s| s.to_string()).collect(), TempDir::new()).await;
    let a = get(&h1_client(), &proxy.url("/x?y=1")).await;
    assert_eq!(a.json()["path"], "/base/x?y=1");
    assert!(proxy
        .admin_get("/config")
        .await
        .1
        .contains(&up.addr.to_string()));
    assert_eq!(proxy.admin_get("/ready").await.0, 200);
}

#[tokio::test]
async fn up_runs_the_mesh_and_answers_through_the_proxy() {
    // Free ports for the sample services (the test owns them).
    let mut ports = Vec::new();
    while ports.len() < 2 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], unused_port()));
        if !ports.contains(&addr) {
            ports.push(addr);
        }
    }
    let dir = TempDir::new();
    let path = dir.0.join("demo.yaml");
    // A workflow file beside it, seeded and pushed to the proxy.
    std::fs::create_dir(dir.0.join("flows")).unwrap();
    std::fs::write(
        dir.0.join("flows/both.yaml"),
        "name: both\nsteps:\n  - { name: a, call: { service: demo, path: /a } }\n  - { name: s, call: { service: scaled, path: /s } }\noutput: \"[steps.a.body.service, steps.s.body.service]\"\n",
    )
    .unwrap();
    std::fs::write(
        &path,
        format!(
            "grpc: 127.0.0.1:0\napi: 127.0.0.1:0\nstore: state/cp.redb\nworkflows: [flows/both.yaml]\nlocal_proxy: {{listen: 127.0.0.1:0, admin: 127.0.0.1:0}}\n\
             services:\n  - name: demo\n    load_balancer: weighted_round_robin\n    endpoints: [{{address: \"{}\"}}, {{address: \"{}\"}}]\n\
             \x20 - name: scaled\n\
             routes:\n  - {{name: scaled, order: 1, match: {{path_prefix: /scaled}}, cluster: scaled}}\n  - {{name: all, order: 2, cluster: demo}}\n\
             autoscaling:\n  interval: 200ms\n  services:\n    - service: scaled\n      capacity_rps: 10\n      actuator: {{local: {{command: [\"{{presage}}\", sample-service, --listen, \"127.0.0.1:{{port}}\", --name, scaled]}}}}\n",
            ports[0], ports[1]
        ),
    )
    .unwrap();
    let mut up = tokio::process::Command::new(BIN)
        .args(["up", "--config", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(up.stdout.take().unwrap()));
    let mut urls = std::collections::BTreeMap::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with("presage up: running") {
                return;
            }
            if let Some((name, url)) = l.split_once(": http://") {
                urls.insert(name.to_string(), format!("http://{url}"));
            }
            if let Some(t) = l.strip_prefix("token: ") {
                urls.insert("token".to_string(), t.to_string());
            }
        }
        panic!("presage up exited before running");
    })
    .await
    .expect("presage up started");
    for name in ["proxy", "admin", "api"] {
        assert!(urls.contains_key(name), "no {name} line: {urls:?}");
    }
    // Both sample services answer through the proxy (round robin, so 20 requests reach
    // both), which got its routes from the control plane.
    let c = h1_client();
    let mut instances = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let a = get(&c, &format!("{}/hello", urls["proxy"])).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.json()["service"], "demo");
        instances.insert(a.json()["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(instances.len(), 2, "{instances:?}");
    // The autoscaled service's instance is a process the control plane started.
    let scaled = wait_until(Duration::from_secs(20), || async {
        let a = get(&c, &format!("{}/scaled", urls["proxy"])).await;
        (a.status == StatusCode::OK).then_some(a)
    })
    .await
    .expect("the autoscaled service answers through the proxy");
    assert_eq!(scaled.json()["service"], "scaled");
    // The seeded workflow runs on the proxy, calling both services.
    let req = http::Request::post(format!("{}/workflows/both", urls["proxy"]))
        .body(http_body_util::Full::default())
        .unwrap();
    let both = send(&c, req).await;
    assert_eq!(both.status, StatusCode::OK, "{}", both.body);
    assert_eq!(both.json(), serde_json::json!(["demo", "scaled"]));
    let scaled_addr = scaled.json()["instance"].as_str().unwrap().to_string();
    // The REST API wants the printed token.
    let proxies_url = urls["api"].replace("/v1/services", "/v1/proxies");
    assert_eq!(get(&c, &proxies_url).await.status, StatusCode::UNAUTHORIZED);
    let req = http::Request::get(&proxies_url)
        .header("authorization", format!("Bearer {}", urls["token"]))
        .body(http_body_util::Full::default())
        .unwrap();
    let proxies = send(&c, req).await;
    assert_eq!(proxies.json()[0]["connected"], true, "{}", proxies.body);

    let pid = up.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), up.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    // Every part went with it.
    let proxy_addr = urls["proxy"].trim_start_matches("http://").to_string();
    for addr in ports
        .iter()
        .map(|p| p.to_string())
        .chain([proxy_addr, scaled_addr])
    {
        assert!(
            tokio::net::TcpStream::connect(&addr).await.is_err(),
            "{addr} still served"
        );
    }
}

#[test]
fn profile_eval_reports_accuracy_on_a_real_trace_and_rejects_bad_input() {
    let trace = fixture("traces/alibaba_sessions.csv");
    let (code, out, err) = run(&["profile-eval", "--input", trace.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("users 4244, "), "{out}");
    assert_eq!(rows[1], "predictor,top1_pct,top3_pct");
    let top1 = |name: &str| -> f64 {
        let row = rows
            .iter()
            .find(|r| r.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing: {out}"));
        row.split(',').nth(1).unwrap().parse().unwrap()
    };
    assert!(
        top1("presage-profiler,") > top1("most-frequent,") + 30.0,
        "{out}"
    );

    let dir = TempDir::new();
    let bad = dir.0.join("bad.csv");
    std::fs::write(&bad, "timestamp,user,service\n1,a,x\nnot-a-time,a,y\n").unwrap();
    let (code, _, err) = run(&["profile-eval", "--input", bad.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("bad.csv:3: bad time \"not-a-time\""), "{err}");
    let (code, _, err) = run(&[
        "profile-eval",
        "--input",
        trace.to_str().unwrap(),
        "--train-fraction",
        "1.5",
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("--train-fraction"), "{err}");
}

#[test]
fn forecast_prints_points_and_intervals_and_rejects_bad_input() {
    let trace = fixture("traces/nasa_5min_14d.csv");
    let (code, out, err) = run(&[
        "forecast",
        "--input",
        trace.to_str().unwrap(),
        "--horizon",
        "6",
        "--season",
        "288",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.starts_with("model: "), "{err}");
    // The timings the forecast bench reads, and the vectors Holt's search ran with.
    for key in ["model choice: ", " ms, fit + forecast: ", " ms, vectors: "] {
        assert!(err.contains(key), "{key}: {err}");
    }
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows[0], "step,point,lo80,hi80,lo95,hi95");
    assert_eq!(rows.len(), 7);
    for (i, r) in rows[1..].iter().enumerate() {
        let v: Vec<f64> = r.split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(v[0] as usize, i + 1);
        assert!(
            v[4] <= v[2] && v[2] <= v[1] && v[1] <= v[3] && v[3] <= v[5],
            "nested intervals: {r}"
        );
    }

    // Without --season, the daily cycle is found in the series.
    let (code, out, err) = run(&[
        "forecast",
        "--input",
        trace.to_str().unwrap(),
        "--horizon",
        "6",
    ]);
    assert_eq!(code, 0, "{err}");
    let found = err
        .lines()
        .find_map(|l| l.strip_prefix("no --season given; detected periods: "))
        .unwrap_or_else(|| panic!("{err}"));
    let day = found
        .trim_matches(['[', ']'])
        .split(", ")
        .filter_map(|p| p.parse::<f64>().ok())
        .any(|p| (p / 288.0 - 1.0).abs() < 0.05);
    assert!(day, "{found}");
    assert_eq!(out.lines().count(), 7);

    let dir = TempDir::new();
    let bad = dir.0.join("bad.csv");
    std::fs::write(&bad, "timestamp,value\n1,5\n3,6\n2,7\n").unwrap();
    let (code, _, err) = run(&[
        "forecast",
        "--input",
        bad.to_str().unwrap(),
        "--horizon",
        "2",
    ]);
    assert_eq!(code, 64);
    assert!(
        err.contains("bad.csv:4: timestamp \"2\" is not after"),
        "{err}"
    );
}

#[test]
fn forecast_runs_several_series_in_one_process() {
    // Two histories (the fixture and its first ten days): each file's rows, led by its
    // path (quoted where it holds a comma), are the rows a run on that file alone
    // prints; a bad file among them stops the run before any output, named in the error.
    let trace = fixture("traces/nasa_5min_14d.csv");
    let dir = TempDir::new();
    let shorter = dir.0.join("ten,days.csv");
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().take(1 + 10 * 288).collect();
    std::fs::write(&shorter, lines.join("\n") + "\n").unwrap();
    let (a, b) = (trace.to_str().unwrap(), shorter.to_str().unwrap());
    let args = |inputs: &[&str]| {
        let mut v = vec!["forecast", "--horizon", "6", "--season", "288"];
        for i in inputs {
            v.extend(["--input", i]);
        }
        run(&v)
    };
    let (code, out, err) = args(&[a, b]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows[0], "input,step,point,lo80,hi80,lo95,hi95");
    assert_eq!(rows.len(), 1 + 2 * 6);
    for (k, path) in [a, b].iter().enumerate() {
        let (code, alone, _) = args(&[path]);
        assert_eq!(code, 0);
        let field = match path.contains(',') {
            true => format!("\"{path}\""),
            false => path.to_string(),
        };
        let led: Vec<String> = alone
            .lines()
            .skip(1)
            .map(|r| format!("{field},{r}"))
            .collect();
        assert_eq!(rows[1 + 6 * k..7 + 6 * k], led, "{path}");
        let info = err
            .lines()
            .find(|l| l.starts_with(&format!("{path}: model: ")));
        assert!(info.is_some_and(|l| l.contains("model choice: ")), "{err}");
    }

    let bad = dir.0.join("bad.csv");
    std::fs::write(&bad, "timestamp,value\n1,5\nx,6\n").unwrap();
    let (code, out, err) = args(&[a, bad.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("bad.csv:3"), "{err}");
}

/// `presage inject` on real-world manifests (the Kubernetes documentation's examples and a
/// multi-document app, sources in tests/fixtures/inject/README.md) against reviewed
/// golden files; injecting the result again changes nothing.
#[test]
fn inject_matches_the_golden_manifests_and_is_idempotent() {
    for name in ["nginx-deployment", "web-statefulset", "simple-pod", "shop"] {
        let input = fixture(&format!("inject/{name}.yaml"));
        let golden = fixture(&format!("inject/{name}.injected.yaml"));
        let (code, out, err) = run(&[
            "inject",
            "-f",
            input.to_str().unwrap(),
            "--image",
            "presage:golden",
        ]);
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(out, std::fs::read_to_string(&golden).unwrap(), "{name}");
        assert_eq!(err.trim(), "injected 1 workload(s)", "{name}");
        let (code, again, err) = run(&[
            "inject",
            "-f",
            golden.to_str().unwrap(),
            "--image",
            "presage:golden",
        ]);
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(again, out, "{name}: injecting twice equals injecting once");
        assert_eq!(err.trim(), "injected 0 workload(s)");
    }
    let dir = TempDir::new();
    let bad = dir.0.join("bad.yaml");
    std::fs::write(&bad, "kind: Service\n---\nkind: [oops\n").unwrap();
    let (code, _, err) = run(&["inject", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("bad.yaml: document 1 (line 2)"), "{err}");
}

/// The sidecar config that injected pods mount is valid, and its kustomization builds
/// the ConfigMap `presage inject` names (kubectl kustomize works offline).
#[test]
fn the_sidecar_config_validates_and_builds_into_its_config_map() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/sidecar");
    let file = dir.join("sidecar.yaml");
    let (code, _, err) = run(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let out = Command::new("kubectl")
        .args(["kustomize", dir.to_str().unwrap()])
        .output()
        .expect("kubectl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = String::from_utf8_lossy(&out.stdout);
    assert!(built.contains("kind: ConfigMap\n"), "{built}");
    let name = presage_control_plane::inject::Options::default().config_map;
    assert!(built.contains(&format!("  name: {name}\n")), "{built}");
    assert!(built.contains("  sidecar.yaml: |\n"), "{built}");
    for line in std::fs::read_to_string(&file).unwrap().lines() {
        assert!(
            line.is_empty() || built.contains(&format!("    {line}\n")),
            "{line:?} in {built}"
        );
    }
}

/// The admission webhook over real HTTPS (curl, HTTP/1.1 and HTTP/2): the API
/// reference's AdmissionReview gets a response for its uid with a JSON Patch that, applied
/// to the pod, adds the sidecar; an opted-out pod is allowed unchanged; bad requests get
/// 4xx with a message.
#[tokio::test]
async fn the_admission_webhook_patches_pods_over_https() {
    use base64::Engine as _;
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "inject-webhook",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            fixture("tls/server.pem").to_str().unwrap(),
            "--key",
            fixture("tls/server.key").to_str().unwrap(),
            "--image",
            "presage:golden",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: std::net::SocketAddr = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let l = lines
                .next_line()
                .await
                .unwrap()
                .expect("the webhook started");
            if let Some(a) = l.strip_prefix("presage: webhook on ") {
                return a.parse().unwrap();
            }
        }
    })
    .await
    .unwrap();
    let ca = fixture("tls/ca.pem").display().to_string();
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let url = format!("https://localhost:{}/inject", addr.port());
    let post = |body: String, http2: bool| {
        let (ca, resolve, url) = (ca.clone(), resolve.clone(), url.clone());
        async move {
            let version = if http2 { "--http2" } else { "--http1.1" };
            let out = curl(&[
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                version,
                "-H",
                "content-type: application/json",
                "--data-binary",
                &body,
                "-w",
                "\n%{http_code}",
                &url,
            ])
            .await;
            let (body, code) = out.rsplit_once('\n').unwrap();
            (
                code.to_string(),
                serde_json::from_str::<serde_json::Value>(body).unwrap(),
            )
        }
    };
    let request = std::fs::read_to_string(fixture("inject/admission-review.json")).unwrap();
    let review: serde_json::Value = serde_json::from_str(&request).unwrap();
    for http2 in [false, true] {
        let (code, answer) = post(request.clone(), http2).await;
        assert_eq!(code, "200", "{answer}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let r = &answer["response"];
        assert_eq!(r["uid"], review["request"]["uid"]);
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).unwrap();
        let names = |list: &serde_json::Value| -> Vec<String> {
            list.as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            names(&pod["spec"]["containers"]),
            ["nginx", "presage-proxy"]
        );
        assert_eq!(names(&pod["spec"]["initContainers"]), ["presage-init"]);
        assert_eq!(
            names(&pod["spec"]["volumes"]),
            ["presage-config", "presage-token"]
        );
        assert_eq!(pod["spec"]["containers"][1]["image"], "presage:golden");
        assert_eq!(
            pod["metadata"]["annotations"]["presage.io/injected"],
            "true"
        );
    }
    // Opted out: allowed, nothing to patch.
    let mut quiet = review.clone();
    quiet["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"presage.io/inject": "disabled"});
    let (code, answer) = post(quiet.to_string(), false).await;
    assert_eq!(code, "200");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    // Not a review: 400, said why.
    let (code, answer) = post("{\"kind\": \"Pod\"}".into(), false).await;
    assert_eq!(code, "400");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("AdmissionReview"),
        "{answer}"
    );
}

/// `presage sample-service --concurrency 1 --delay-ms D`: the benches' model of an
/// instance with a fixed capacity. Requests beyond the limit queue (they are served one
/// after another, never refused), which is what makes an overloaded instance slow.
#[tokio::test]
async fn the_sample_service_serves_at_most_its_concurrency_and_queues_the_rest() {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "sample-service",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "limited",
            "--delay-ms",
            "150",
            "--concurrency",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("the sample service started");
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let c = h1_client();
    let url = format!("http://{addr}/");
    let t0 = std::time::Instant::now();
    let answers = futures_util::future::join_all((0..4).map(|_| get(&c, &url))).await;
    let took = t0.elapsed();
    for a in &answers {
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json()["service"], "limited");
    }
    // One at a time: four requests of 150 ms each take at least 600 ms together.
    assert!(took >= Duration::from_millis(600), "{took:?}");
}
