//! Prediction in a running control plane: real request counts (NASA HTTP, 1995) and real
//! per-user call sequences (Alibaba) reported over the real telemetry stream; forecasts
//! published and shaped by the events calendar, their quality exported as metrics; the
//! behaviour profiler's predictions and expected arrivals, kept across a restart.

use crate::support;

use std::time::Duration;

use http::{Method, StatusCode};
use presage_api::telemetry_client::TelemetryClient;
use presage_api::{LoadReport, Node, ServiceLoad, Transition};
use support::control_plane::ControlPlane;
use support::*;

/// The trace's counts from `offset`, scaled to requests per second.
fn nasa(offset: usize, n: usize) -> Vec<u64> {
    let text = std::fs::read_to_string(fixture("traces/nasa_5min_14d.csv")).unwrap();
    text.lines()
        .skip(1 + offset)
        .take(n)
        .map(|l| l.split(',').nth(1).unwrap().trim().parse::<u64>().unwrap() / 30)
        .collect()
}

/// The forecast's points whose second falls in `[from_ms, to_ms)`, and the others.
fn split(f: &serde_json::Value, from_ms: i64, to_ms: i64) -> (Vec<f64>, Vec<f64>) {
    let start = f["start_unix_ms"].as_i64().unwrap();
    let step = f["step_seconds"].as_i64().unwrap() * 1000;
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for (i, p) in f["points"].as_array().unwrap().iter().enumerate() {
        let t = start + i as i64 * step;
        let v = p["requests_per_second"].as_f64().unwrap();
        if (from_ms..to_ms).contains(&t) {
            inside.push(v);
        } else {
            outside.push(v);
        }
    }
    (inside, outside)
}

async fn metrics(cp: &ControlPlane) -> String {
    get(&h1_client(), &format!("http://{}/metrics", cp.api))
        .await
        .body
}

#[tokio::test]
async fn forecasts_follow_telemetry_and_the_events_calendar() {
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(&dir.0, "forecast_interval: 1s\n").await;

    // Ten minutes of history, up to now, as a proxy would have reported it.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let counts = nasa(2_000, 600);
    let reports: Vec<LoadReport> = counts
        .iter()
        .enumerate()
        .map(|(i, &requests)| LoadReport {
            node: (i == 0).then(|| Node {
                id: "replay".into(),
                ..Default::default()
            }),
            unix_ms: (now_s - 600 + i as i64) * 1000,
            interval_ms: 1000,
            services: vec![ServiceLoad {
                service: "web".into(),
                requests,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let mut client = TelemetryClient::connect(cp.url()).await.unwrap();
    client
        .report(tokio_stream::iter(reports))
        .await
        .expect("the control plane took the reports");
    let first = wait_until(Duration::from_secs(10), || async {
        let (s, v) = cp.call(Method::GET, "/v1/services/web/forecast", "").await;
        (s == StatusCode::OK).then_some(v)
    })
    .await
    .expect("a forecast from the reported history");
    assert_eq!(first["points"].as_array().unwrap().len(), 60, "{first}");

    // Bad events are refused, naming the field.
    let start = first["start_unix_ms"].as_i64().unwrap() + 20_000;
    let (s, v) = cp
        .call(
            Method::PUT,
            "/v1/events/backwards",
            &format!(
                r#"{{"service": "web", "start_unix_ms": {start}, "end_unix_ms": {}}}"#,
                start - 1
            ),
        )
        .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("end_unix_ms")),
        "{v}"
    );
    let (s, v) = cp
        .call(
            Method::PUT,
            "/v1/events/negative",
            &format!(
                r#"{{"start_unix_ms": {start}, "end_unix_ms": {}, "multiplier": -1}}"#,
                start + 1
            ),
        )
        .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("multiplier")),
        "{v}"
    );

    // A campaign adding 1,000 requests/s for 10 s, and a maintenance window after it.
    let (campaign, maintenance) = ((start, start + 10_000), (start + 15_000, start + 20_000));
    cp.put(
        "/v1/events/launch",
        &format!(
            r#"{{"service": "web", "start_unix_ms": {}, "end_unix_ms": {}, "added_rps": 1000, "description": "product launch"}}"#,
            campaign.0, campaign.1
        ),
    )
    .await;
    cp.put(
        "/v1/events/maintenance",
        &format!(
            r#"{{"start_unix_ms": {}, "end_unix_ms": {}, "multiplier": 0}}"#,
            maintenance.0, maintenance.1
        ),
    )
    .await;
    let listed = cp.get("/v1/events").await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["launch", "maintenance"]);

    let shaped = wait_until(Duration::from_secs(10), || async {
        let f = cp.get("/v1/services/web/forecast").await;
        let (inside, _) = split(&f, campaign.0, campaign.1);
        (!inside.is_empty() && inside.iter().all(|v| *v >= 1000.0)).then_some(f)
    })
    .await
    .expect("the forecast takes the campaign");
    let (inside, outside) = split(&shaped, campaign.0, campaign.1);
    assert_eq!(inside.len(), 10, "{shaped}");
    assert!(outside.iter().all(|v| *v < 1000.0), "{shaped}");
    let (down, _) = split(&shaped, maintenance.0, maintenance.1);
    assert!(
        !down.is_empty() && down.iter().all(|v| *v == 0.0),
        "{down:?}"
    );

    // Removed: the next forecasts no longer have it.
    let (s, _) = cp.call(Method::DELETE, "/v1/events/launch", "").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    wait_until(Duration::from_secs(10), || async {
        let f = cp.get("/v1/services/web/forecast").await;
        let (inside, _) = split(&f, campaign.0, campaign.1);
        inside.iter().all(|v| *v < 1000.0).then_some(())
    })
    .await
    .expect("the campaign is gone from the forecast");

    // The forecasts' quality, as metrics: the model choice, its backtest error, and the
    // realised error and coverage of what was published.
    let text = wait_until(Duration::from_secs(10), || async {
        let m = metrics(&cp).await;
        m.lines()
            .any(|l| {
                l.starts_with("presage_cp_forecast_abs_error{")
                    && l.contains("service=\"web\",resolution=\"1s\"")
            })
            .then_some(m)
    })
    .await
    .expect("realised forecast error is exported");
    assert_eq!(
        metric_sum(
            &text,
            "presage_cp_forecast_model_selections_total",
            &[("service", "web"), ("reason", "first")]
        ),
        1.0,
        "{text}"
    );
    assert!(
        metric_sum(
            &text,
            "presage_cp_forecast_backtest_mase",
            &[("service", "web")]
        ) > 0.0
    );
    let coverage = metric_sum(
        &text,
        "presage_cp_forecast_coverage",
        &[("service", "web"), ("level", "95")],
    );
    assert!((0.0..=1.0).contains(&coverage), "{coverage}");
}

/// The next hour in minutes, from hours of history: real counts (NASA HTTP, 5-minute
/// buckets spread over their seconds), reported second by second over the telemetry
/// stream, and forecast at 1-minute resolution once 6 hours of minutes are closed.
#[tokio::test]
async fn the_next_hour_is_forecast_in_minutes_from_hours_of_history() {
    let dir = TempDir::new();
    let cp = ControlPlane::with_config(&dir.0, "forecast_interval: 1s\n").await;
    let minutes = 380;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let buckets = nasa(2_000, minutes / 5);
    let rate = |i: usize| buckets[i / 300] / 10;
    let reports: Vec<LoadReport> = (0..minutes * 60)
        .map(|i| LoadReport {
            node: (i == 0).then(|| Node {
                id: "replay".into(),
                ..Default::default()
            }),
            unix_ms: (now_s - (minutes * 60) as i64 + i as i64) * 1000,
            interval_ms: 1000,
            services: vec![ServiceLoad {
                service: "web".into(),
                requests: rate(i),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let max_rate = (0..minutes * 60).map(rate).max().unwrap() as f64;
    let mut client = TelemetryClient::connect(cp.url()).await.unwrap();
    client
        .report(tokio_stream::iter(reports))
        .await
        .expect("the control plane took the reports");

    let (s, v) = cp
        .call(Method::GET, "/v1/services/web/forecast?resolution=1h", "")
        .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("resolution"))
    );
    let f = wait_until(Duration::from_secs(20), || async {
        let (s, v) = cp
            .call(Method::GET, "/v1/services/web/forecast?resolution=1m", "")
            .await;
        (s == StatusCode::OK).then_some(v)
    })
    .await
    .expect("an hour-ahead forecast from the minutes");
    assert_eq!(f["step_seconds"], 60, "{f}");
    assert_eq!(
        f["start_unix_ms"].as_i64().unwrap() % 60_000,
        0,
        "starts on a minute"
    );
    let points = f["points"].as_array().unwrap();
    assert_eq!(points.len(), 60, "{f}");
    for p in points {
        let v = |k: &str| p[k].as_f64().unwrap();
        assert!(v("lo95") <= v("lo80") && v("lo80") <= v("requests_per_second") + 1e-9);
        assert!(v("requests_per_second") <= v("hi80") + 1e-9 && v("hi80") <= v("hi95"));
        assert!(
            v("requests_per_second") <= 3.0 * max_rate,
            "{p} vs {max_rate}"
        );
    }
    // The minute-ahead one is there too, and the two are chosen and counted apart.
    let secs = cp.get("/v1/services/web/forecast").await;
    assert_eq!(secs["step_seconds"], 1);
    let text = metrics(&cp).await;
    for resolution in ["1s", "1m"] {
        assert_eq!(
            metric_sum(
                &text,
                "presage_cp_forecast_model_selections_total",
                &[
                    ("service", "web"),
                    ("resolution", resolution),
                    ("reason", "first")
                ]
            ),
            1.0,
            "{resolution}: {text}"
        );
    }
}

/// The Alibaba per-user trace's first `n` calls, moved to end just before `now_s`.
fn alibaba(n: usize, now_s: i64) -> Vec<Transition> {
    let text = std::fs::read_to_string(fixture("traces/alibaba_sessions.csv")).unwrap();
    let rows: Vec<(i64, String, String)> = text
        .lines()
        .skip(1)
        .take(n)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            // `YYYY-MM-DD HH:MM:SS`: seconds since midnight and the day are enough here.
            let (date, time) = f[0].split_once(' ').unwrap();
            let day: i64 = date[8..10].parse().unwrap();
            let hms: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
            let t = day * 86_400 + hms[0] * 3_600 + hms[1] * 60 + hms[2];
            (t, f[1].to_string(), f[2].to_string())
        })
        .collect();
    let shift = now_s - 5 - rows.last().unwrap().0;
    rows.into_iter()
        .map(|(t, user, service)| Transition {
            user,
            previous_service: String::new(),
            next_service: service,
            unix_ms: (t + shift) * 1000,
        })
        .collect()
}

#[tokio::test]
async fn behaviour_predictions_and_arrivals_survive_a_restart() {
    let dir = TempDir::new();
    let store = dir.0.join("cp.redb");
    let cp = ControlPlane::start(&store, None, None).await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let calls = alibaba(3_000, now_s);
    let last_user = calls.last().unwrap().user.clone();
    let report = LoadReport {
        node: Some(Node {
            id: "replay".into(),
            ..Default::default()
        }),
        unix_ms: now_s * 1000,
        transitions: calls,
        ..Default::default()
    };
    let mut client = TelemetryClient::connect(cp.url()).await.unwrap();
    client
        .report(tokio_stream::iter([report]))
        .await
        .expect("the control plane took the report");

    let next = cp.get(&format!("/v1/users/{last_user}/next?k=3")).await;
    assert!(!next.as_array().unwrap().is_empty(), "{next}");
    let arrivals = cp.get("/v1/arrivals?window=10m").await;
    assert!(arrivals["active_users"].as_u64().unwrap() > 0, "{arrivals}");
    let expected: f64 = arrivals["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["expected"].as_f64().unwrap())
        .sum();
    assert!(expected > 0.0, "{arrivals}");
    let (s, v) = cp.call(Method::GET, "/v1/arrivals?window=2h", "").await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("window")),
        "{v}"
    );

    // A clean stop saves the profiler; the next start predicts as before.
    cp.stop().await;
    let cp = ControlPlane::start(&store, None, None).await;
    assert_eq!(
        cp.get(&format!("/v1/users/{last_user}/next?k=3")).await,
        next
    );
    let again = cp.get("/v1/arrivals?window=10m").await;
    assert_eq!(again["active_users"], arrivals["active_users"], "{again}");
}
