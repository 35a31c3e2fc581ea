//! Composite services: workflows run by a real proxy process against real upstream
//! services over TCP: data flow between steps, branching, loops, fan-out, retries then a
//! fallback, compensation, the deadline, asynchronous runs with status polling, and
//! definitions rejected with the step named.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use support::control_plane::{service_json, ControlPlane};
use support::*;

fn cluster(name: &str, up: &Upstream) -> String {
    format!(
        "  - name: {name}\n    outlier_detection: {{ consecutive_failures: 0 }}\n    endpoints: [{{ address: \"{}\" }}]\n",
        up.addr
    )
}

async fn post(proxy: &Proxy, path: &str, body: &str, prefer_async: bool) -> Answer {
    let mut b = Request::post(proxy.url(path)).header("content-type", "application/json");
    if prefer_async {
        b = b.header("prefer", "respond-async");
    }
    send(
        &h1_client(),
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
}

const FLOWS: &str = r#"
workflows:
  - name: profile
    steps:
      - name: user
        call: { service: users, path: "/users/{{ input.id | urlencode }}" }
      - name: kind
        switch:
          - if: "steps.user.body.path == '/users/vip'"
            steps:
              - { name: vip, call: { service: orders, path: /vip } }
          - steps:
              - { name: regular, call: { service: orders, path: "/regular?from={{ steps.user.body.service }}" } }
      - name: each
        for_each: { items: input.items, as: item, max: 10 }
        steps:
          - name: price
            call:
              service: orders
              method: POST
              path: "/price/{{ loop_index }}"
              headers: { x-item: "{{ item }}" }
              body: '{"item": {{ item | tojson }}}'
      - name: poll
        while: { condition: "iteration < 3", max: 5 }
        steps:
          - { name: tick, call: { service: orders, path: "/tick/{{ iteration }}" } }
      - name: fan
        parallel:
          - steps: [ { name: left, call: { service: users, path: /left } } ]
          - steps: [ { name: right, call: { service: orders, path: /right } } ]
    output: >-
      { "user": steps.user.body.path, "case": steps.kind.case,
        "branch": steps.kind.body.path, "prices": steps.each.body | map(attribute='path') | list,
        "sent": steps.each.body[1].body, "header": steps.each.body[1].headers['x-item'],
        "ticks": steps.poll.iterations, "last_tick": steps.poll.body.path,
        "fan": steps.fan.body | map(attribute='service') | list }
  - name: resilient
    steps:
      - name: flaky
        call: { service: flaky, path: /fail-at/flaky }
        retry: { attempts: 3, backoff: 10ms }
        fallback: { name: spare, call: { service: orders, path: /spare } }
  - name: checkout
    steps:
      - name: reserve
        call: { service: orders, method: POST, path: /reserve, body: '{}' }
        compensate: { name: release, call: { service: orders, method: POST, path: /release, body: '{}' } }
      - name: charge
        call: { service: flaky, path: /fail-at/flaky }
  - name: slow
    deadline: 300ms
    steps:
      - { name: first, call: { service: users, path: /quick } }
      - { name: crawl, call: { service: orders, path: "/crawl?ms=5000" } }
  - name: tiered
    steps:
      - { name: inherit, call: { service: users, path: /a } }
      - { name: own, qos_profile: gold, call: { service: users, path: /b } }
    output: "[steps.inherit.body.headers['x-presage-qos'], steps.own.body.headers['x-presage-qos'], steps.inherit.body.headers['x-request-id']]"
  - name: later
    steps:
      - { name: wait, call: { service: users, path: "/wait?ms=300" } }
      - { name: done, call: { service: orders, path: /done } }
"#;

async fn mesh() -> (Proxy, Upstream, Upstream, Upstream) {
    mesh_with("").await
}

/// `mesh()` with `extra` top-level config (e.g. limits).
async fn mesh_with(extra: &str) -> (Proxy, Upstream, Upstream, Upstream) {
    let users = Upstream::spawn("users").await;
    let orders = Upstream::spawn("orders").await;
    let flaky = Upstream::spawn("flaky").await;
    let clusters = format!(
        "clusters:\n{}{}{}",
        cluster("users", &users),
        cluster("orders", &orders),
        cluster("flaky", &flaky)
    );
    let profiles = "qos_profiles:\n  - { name: gold, tier: gold }\n  - { name: quick, tier: silver, latency_p99_ms: 150 }\n";
    let proxy = Proxy::start(&config(&format!("{extra}{clusters}{profiles}{FLOWS}"))).await;
    (proxy, users, orders, flaky)
}

#[tokio::test]
async fn every_construct_runs_against_real_services_and_data_flows_between_steps() {
    let (proxy, users, orders, _flaky) = mesh().await;
    let a = post(
        &proxy,
        "/workflows/profile",
        r#"{"id": "a b", "items": ["x", "y"]}"#,
        false,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let out = a.json();
    // The input reached the path (encoded); a field of the first answer chose the branch
    // (the default case) and was passed on in the next call's query.
    assert_eq!(out["user"], "/users/a%20b");
    assert_eq!(out["case"], 1);
    assert_eq!(out["branch"], "/regular?from=users");
    // One call per item, with the item in a templated header and JSON body.
    assert_eq!(out["prices"], serde_json::json!(["/price/0", "/price/1"]));
    assert_eq!(out["sent"], r#"{"item": "y"}"#);
    assert_eq!(out["header"], "y");
    // The while loop ran until its condition failed, below its max.
    assert_eq!(out["ticks"], 3);
    assert_eq!(out["last_tick"], "/tick/2");
    // Both branches of the fan-out, joined in order.
    assert_eq!(out["fan"], serde_json::json!(["users", "orders"]));
    assert_eq!(users.hits(), 2);
    assert_eq!(orders.hits(), 1 + 2 + 3 + 1);

    // The other case of the switch.
    let a = post(
        &proxy,
        "/workflows/profile",
        r#"{"id": "vip", "items": []}"#,
        false,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["branch"], "/vip");
    assert_eq!(a.json()["case"], 0);

    // Bad calls get a 4xx, never a crash.
    let a = post(&proxy, "/workflows/profile", "{not json", false).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.json()["error"].as_str().unwrap().contains("not JSON"),
        "{}",
        a.body
    );
    let a = post(&proxy, "/workflows/nope", "{}", false).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = get(&h1_client(), &proxy.url("/workflows/profile")).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    // Too many items for the loop's max: the step fails, named.
    let items: Vec<u32> = (0..11).collect();
    let a = post(
        &proxy,
        "/workflows/profile",
        &serde_json::json!({"id": "x", "items": items}).to_string(),
        false,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(a.body.contains("more than its max of 10"), "{}", a.body);
}

#[tokio::test]
async fn a_failing_step_is_retried_then_its_fallback_answers() {
    let (proxy, _users, orders, flaky) = mesh().await;
    let a = post(&proxy, "/workflows/resilient", "{}", false).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(flaky.hits(), 3, "three attempts");
    assert_eq!(orders.hits(), 1);
    assert_eq!(a.json()["path"], "/spare", "the fallback's answer");
    let id = a.headers["x-request-id"].to_str().unwrap().to_string();
    let s = get(
        &h1_client(),
        &proxy.url(&format!("/workflows/requests/{id}")),
    )
    .await;
    let steps = &s.json()["steps"];
    assert_eq!(steps[0]["name"], "flaky");
    assert_eq!(steps[0]["state"], "fallback");
    assert_eq!(steps[0]["attempts"], 3);
    assert_eq!(steps[0]["status"], 500);
    assert_eq!(steps[1]["name"], "spare");
    assert_eq!(steps[1]["state"], "succeeded");
    let runs = proxy
        .metric(
            "presage_workflow_runs_total",
            &[("workflow", "resilient"), ("outcome", "succeeded")],
        )
        .await;
    assert_eq!(runs, 1.0);
}

#[tokio::test]
async fn a_late_failure_runs_the_compensations_of_completed_steps() {
    let (proxy, _users, orders, _flaky) = mesh().await;
    let a = post(&proxy, "/workflows/checkout", "{}", false).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    let body = a.json();
    assert_eq!(body["step"], "charge");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("flaky answered 500"),
        "{body}"
    );
    let states: Vec<(&str, &str)> = body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("reserve", "succeeded"),
            ("charge", "failed"),
            ("release", "compensated")
        ]
    );
    assert_eq!(orders.hits(), 2, "reserve, then release");
}

#[tokio::test]
async fn the_deadline_cuts_a_slow_workflow_with_a_clear_error() {
    let (proxy, _users, _orders, _flaky) = mesh().await;
    let a = post(&proxy, "/workflows/slow", "{}", false).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);
    let body = a.json();
    assert_eq!(body["step"], "crawl");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("deadline of 300ms passed"),
        "{body}"
    );
    // The caller's own budget is tighter still: it wins.
    let req = Request::post(proxy.url("/workflows/slow"))
        .header("x-presage-timeout-ms", "100")
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    let a = send(&h1_client(), req).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(a.body.contains("deadline of 100ms"), "{}", a.body);
    // Without one, the caller's profile's latency target.
    let req = Request::post(proxy.url("/workflows/slow"))
        .header("x-presage-qos", "quick")
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    let a = send(&h1_client(), req).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(a.body.contains("deadline of 150ms"), "{}", a.body);
}

#[tokio::test]
async fn steps_inherit_the_callers_qos_profile_unless_they_name_their_own() {
    let (proxy, _users, _orders, _flaky) = mesh().await;
    let req = Request::post(proxy.url("/workflows/tiered"))
        .header("x-presage-qos", "quick")
        .header("x-request-id", "run-7")
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    let a = send(&h1_client(), req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json(), serde_json::json!(["quick", "gold", "run-7"]));
    // An unknown profile is the caller's error.
    let req = Request::post(proxy.url("/workflows/tiered"))
        .header("x-presage-qos", "nope")
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    assert_eq!(
        send(&h1_client(), req).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn an_asynchronous_run_answers_202_and_its_status_shows_each_step() {
    let (proxy, _users, _orders, _flaky) = mesh().await;
    let a = post(&proxy, "/workflows/later", "{}", true).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.headers["preference-applied"], "respond-async");
    let location = a.headers["location"].to_str().unwrap().to_string();
    assert_eq!(a.json()["status"], location);
    let first = get(&h1_client(), &proxy.url(&location)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json()["state"], "running", "{}", first.body);
    let done = wait_until(Duration::from_secs(10), || async {
        let s = get(&h1_client(), &proxy.url(&location)).await.json();
        (s["state"] != "running").then_some(s)
    })
    .await
    .expect("the run ends");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["status"], 200);
    assert_eq!(done["output"]["path"], "/done");
    let names: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["wait", "done"]);
    let unknown = get(&h1_client(), &proxy.url("/workflows/requests/nope")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// A workflow's input over the body limit is a 413, as a proxied request's is.
#[tokio::test]
async fn a_workflow_input_over_the_body_limit_is_a_413() {
    let (proxy, _users, _orders, _flaky) = mesh_with("limits: { max_body_bytes: 3000 }\n").await;
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(4000));
    let a = post(&proxy, "/workflows/later", &big, false).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    let a = post(&proxy, "/workflows/later", "{}", false).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

/// A caller that goes away (an h2 stream reset) does not cancel a run half-way: it
/// runs to its end, its status says so, and its request id is free again.
#[tokio::test]
async fn a_run_whose_caller_goes_away_still_ends() {
    let (proxy, _users, orders, _flaky) = mesh().await;
    let url = proxy.url("/workflows/later");
    let call = tokio::spawn(async move {
        let req = Request::post(url)
            .header("x-request-id", "gone-1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        h2c_client().request(req).await.map(|r| r.status())
    });
    let status_url = proxy.url("/workflows/requests/gone-1");
    wait_until(Duration::from_secs(10), || async {
        (get(&h1_client(), &status_url).await.json()["state"] == "running").then_some(())
    })
    .await
    .expect("the run started");
    // The caller leaves while the first step (300 ms) is in flight.
    call.abort();
    let done = wait_until(Duration::from_secs(10), || async {
        let s = get(&h1_client(), &status_url).await.json();
        (s["state"] != "running").then_some(s)
    })
    .await
    .expect("the run ended");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(orders.hits(), 1, "its last step ran");
    let again = Request::post(proxy.url("/workflows/later"))
        .header("x-request-id", "gone-1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let again = send(&h1_client(), again).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "the id is free: {}",
        again.body
    );
}

#[tokio::test]
async fn invalid_definitions_are_rejected_with_the_step_named_and_never_replace_good_ones() {
    let users = Upstream::spawn("users").await;
    // Four lines: the workflows' lines below are 4 more in the file.
    let clusters = format!("clusters:\n{}", cluster("users", &users));
    let cases = [
        (
            "workflows:\n  - name: w\n    steps:\n      - name: a\n        call: { service: nobody }\n",
            ":9:26: workflows[0].steps[0] (step \"a\").call.service: unknown service \"nobody\"",
        ),
        (
            "workflows:\n  - name: w\n    steps:\n      - name: spin\n        while: { condition: \"true\" }\n        steps: [ { name: b, call: { service: users } } ]\n",
            "workflows[0].steps[0] (step \"spin\").while.max: an unbounded loop",
        ),
        (
            "workflows:\n  - name: w\n    steps:\n      - name: c\n        if: \"steps.x.status ==\"\n        call: { service: users }\n",
            ":9:13: workflows[0].steps[0] (step \"c\").if: bad expression",
        ),
        (
            "workflows:\n  - name: w\n    steps: [ { name: d, workflow: v } ]\n  - name: v\n    steps: [ { name: e, workflow: w } ]\n",
            "a cycle of workflows: v -> w -> v",
        ),
    ];
    let dir = TempDir::new();
    for (i, (flow, want)) in cases.iter().enumerate() {
        let path = dir.0.join(format!("bad{i}.yaml"));
        std::fs::write(&path, format!("{clusters}{flow}")).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["validate", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains(want), "case {i}: want {want:?} in {err}");
    }

    // Files of one workflow each (as the control plane's API takes them), checked
    // together: one may run another as a step; a cycle between files is named.
    let (a, b) = (dir.0.join("a.yaml"), dir.0.join("b.json"));
    std::fs::write(&a, "name: a\nsteps:\n  - { name: first, call: { service: users } }\n  - { name: then, workflow: b }\n").unwrap();
    std::fs::write(
        &b,
        r#"{"name": "b", "steps": [{"name": "only", "call": {"service": "orders"}}]}"#,
    )
    .unwrap();
    let check = |files: &[&std::path::Path]| {
        let out = std::process::Command::new(BIN)
            .arg("validate")
            .args(files)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check(&[&a, &b]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("a.yaml: ok") && out.contains("b.json: ok"),
        "{out}"
    );
    let (code, _, err) = check(&[&a]);
    assert_eq!(code, Some(64));
    assert!(
        err.contains("a.yaml:4:29: steps[1] (step \"then\").workflow: unknown workflow \"b\""),
        "{err}"
    );
    std::fs::write(&b, "name: b\nsteps: [ { name: back, workflow: a } ]\n").unwrap();
    let (code, _, err) = check(&[&a, &b]);
    assert_eq!(code, Some(64));
    assert!(err.contains("a cycle of workflows: a -> b -> a"), "{err}");

    // A running proxy keeps its good workflow when a bad one is written over it.
    let good = format!(
        "{clusters}workflows:\n  - name: w\n    steps: [ {{ name: a, call: {{ service: users, path: /ok }} }} ]\n"
    );
    let proxy = Proxy::start(&config(&good)).await;
    proxy.write_config(&config(&format!("{clusters}{}", cases[1].0)));
    let status = proxy
        .wait_reload(|s| s["failures"].as_u64() >= Some(1))
        .await;
    assert!(status.to_string().contains("unbounded loop"), "{status}");
    let a = post(&proxy, "/workflows/w", "", false).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["path"], "/ok");
}

#[tokio::test]
async fn workflows_stored_at_the_control_plane_are_checked_pushed_and_run_by_its_proxies() {
    use http::Method;
    let dir = TempDir::new();
    let (users, orders) = (
        Upstream::spawn("users").await,
        Upstream::spawn("orders").await,
    );
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, None).await;
    cp.put("/v1/services/users", &service_json(&[users.addr]))
        .await;
    cp.put("/v1/services/orders", &service_json(&[orders.addr]))
        .await;

    // Bad definitions: 400 with the field, its line and column, and nothing stored.
    let (s, e) = cp
        .call(
            Method::PUT,
            "/v1/workflows/spin",
            "name: spin\nsteps:\n  - name: loop\n    while: { condition: \"true\" }\n    steps: [ { name: a, call: { service: users } } ]\n",
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["field"], "steps[0] (step \"loop\").while.max");
    assert!(
        e["message"].as_str().unwrap().contains("(line 4, column"),
        "{e}"
    );
    let (s, e) = cp
        .call(Method::PUT, "/v1/workflows/bad", r#"{"name": "bad", "steps": [{"name": "a", "if": "x ==", "call": {"service": "users"}}]}"#)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["field"], "steps[0] (step \"a\").if");
    assert_eq!(cp.get("/v1/workflows").await, serde_json::json!([]));

    // A good one (JSON here, YAML below), and one that runs it as a step.
    cp.put(
        "/v1/workflows/price",
        r#"{"name": "price", "steps": [{"name": "quote", "call": {"service": "orders", "path": "/quote/{{ input.item }}"}}]}"#,
    )
    .await;
    cp.put(
        "/v1/workflows/checkout",
        "name: checkout\nsteps:\n  - { name: user, call: { service: users, path: /me } }\n  - { name: p, workflow: price }\noutput: \"[steps.user.body.service, steps.p.body.path]\"\n",
    )
    .await;
    let w = cp.get("/v1/workflows/checkout").await;
    assert_eq!(w["services"], serde_json::json!(["orders", "users"]));
    let (s, e) = cp.call(Method::DELETE, "/v1/workflows/price", "").await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["message"].as_str().unwrap().contains("checkout"), "{e}");

    let proxy = Proxy::start(&config(&format!(
        "control_plane:\n  address: {}\n  node_id: p1\n  report_interval: 100ms\n",
        cp.url()
    )))
    .await;
    let client = h1_client();
    let run = |id: &'static str| {
        let req = Request::post(proxy.url("/workflows/checkout"))
            .header("x-request-id", id)
            .header("x-presage-user", "u1")
            .body(Full::new(Bytes::from(r#"{"item": "x1"}"#)))
            .unwrap();
        send(&client, req)
    };
    let a = wait_until(Duration::from_secs(10), || async {
        let a = run("wf-1").await;
        (a.status == StatusCode::OK).then_some(a)
    })
    .await
    .expect("the proxy runs the pushed workflow");
    assert_eq!(a.json(), serde_json::json!(["users", "/quote/x1"]));

    // The run's record reaches the control plane's getServiceStatus, with its steps.
    let record = wait_until(Duration::from_secs(10), || async {
        let (s, v) = cp.call(Method::GET, "/v1/requests/wf-1", "").await;
        (s == StatusCode::OK).then_some(v)
    })
    .await
    .expect("the run's record reaches the control plane");
    assert_eq!(record["service"], "checkout");
    assert_eq!(record["status"], 200);
    let progress: serde_json::Value =
        serde_json::from_str(record["workflow"].as_str().unwrap()).unwrap();
    let steps: Vec<&str> = progress["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["user", "p", "quote"]);
    assert_eq!(
        progress["output"],
        serde_json::json!(["users", "/quote/x1"])
    );

    // The profiler learned the user's composite call and its constituents: after the
    // last constituent of one run comes the workflow again.
    assert_eq!(run("wf-2").await.status, StatusCode::OK);
    let next = wait_until(Duration::from_secs(10), || async {
        let v = cp.get("/v1/users/u1/next?k=1").await;
        (v[0]["service"] == "checkout").then_some(v)
    })
    .await;
    assert!(next.is_some(), "{}", cp.get("/v1/users/u1/next?k=3").await);

    // Runs are kept in the store for their workflow's retention: a restart keeps them.
    drop(proxy);
    cp.stop().await;
    let cp = ControlPlane::start(&dir.0.join("cp.redb"), None, None).await;
    let kept = cp.get("/v1/requests/wf-1").await;
    assert_eq!(kept["service"], "checkout");
    assert_eq!(kept["keep_ms"], 600_000, "the default retention, 10 min");
    assert!(kept["workflow"].as_str().unwrap().contains("\"quote\""));
}
