//! `presage replay` on a real trace (NASA's 1995 web server log, in 5-minute steps): the
//! planner against the HPA and KPA baselines and the oracle, decisions that never look
//! ahead, and clear errors for bad input.

use crate::support;

use std::path::Path;
use std::process::Command;

use support::{TempDir, BIN};

/// The first `days` of NASA's trace in 5-minute steps (the checked-in fixture cut from
/// `../shared/traces/nasa-http-1995/`; see tests/fixtures/README.md).
fn nasa_5min(days: usize, to: &Path) {
    let text = std::fs::read_to_string(support::fixture("traces/nasa_5min_14d.csv")).unwrap();
    let rows: Vec<&str> = text.lines().take(1 + days * 288).collect();
    assert_eq!(rows.len(), 1 + days * 288);
    std::fs::write(to, rows.join("\n") + "\n").unwrap();
}

fn replay(trace: &Path, policy: &str, schedule: Option<&Path>) -> serde_json::Value {
    let mut args = vec![
        "replay".to_string(),
        "--trace".into(),
        trace.display().to_string(),
        "--capacity".into(),
        "0.5".into(),
        "--cold-start".into(),
        "600".into(),
        "--policy".into(),
        policy.into(),
        "--json".into(),
    ];
    if let Some(s) = schedule {
        args.extend(["--schedule-out".into(), s.display().to_string()]);
    }
    json_of(&args)
}

/// `presage ARGS`, which must succeed, and its JSON output.
fn json_of<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> serde_json::Value {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn schedule(path: &Path) -> Vec<(u64, u32)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (t, n) = l.split_once(',').unwrap();
            (t.parse().unwrap(), n.parse().unwrap())
        })
        .collect()
}

/// With a dependency (two calls per request, 1 req/s per instance, scaling reactively on
/// what it receives), negotiating each scale-up with it first scales it with its caller:
/// fewer requests fail there, through the control plane's own negotiation code.
#[test]
fn negotiated_scale_ups_spare_the_dependency_its_cold_starts() {
    let dir = TempDir::new();
    let trace = dir.0.join("nasa.csv");
    nasa_5min(3, &trace);
    let run = |negotiate: bool| -> serde_json::Value {
        let mut args = vec![
            "replay",
            "--trace",
            trace.to_str().unwrap(),
            "--capacity",
            "0.5",
            "--cold-start",
            "300",
            "--policy",
            "presage",
            "--chain-ratio",
            "2",
            "--chain-capacity",
            "1",
            "--chain-cold-start",
            "300",
        ];
        if negotiate {
            args.push("--negotiate");
        }
        json_of(&args)
    };
    let (off, on) = (run(false), run(true));
    let at_dep = |j: &serde_json::Value| j["violations_at_dependency"].as_f64().unwrap();
    assert_eq!(off["negotiations"], 0);
    assert!(on["negotiations"].as_u64().unwrap() > 0, "{on}");
    assert_eq!(on["requests"], off["requests"]);
    assert!(at_dep(&on) < 0.5 * at_dep(&off), "on {on}\noff {off}");
    // A bad chain is named.
    let out = Command::new(BIN)
        .args([
            "replay",
            "--trace",
            trace.to_str().unwrap(),
            "--capacity",
            "1",
            "--cold-start",
            "30",
            "--chain-ratio",
            "2",
            "--chain-capacity",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--chain-capacity"));
}

#[test]
fn the_planner_scales_ahead_of_demand_that_reactive_baselines_chase() {
    let dir = TempDir::new();
    let trace = dir.0.join("nasa.csv");
    nasa_5min(4, &trace);
    let sched = dir.0.join("presage.csv");
    let presage = replay(&trace, "presage", Some(&sched));
    let hpa = replay(&trace, "hpa", None);
    let kpa = replay(&trace, "kpa", None);
    let oracle = replay(&trace, "oracle", None);
    let v = |j: &serde_json::Value| j["slo_violations"].as_f64().unwrap();
    let cost = |j: &serde_json::Value| j["instance_seconds"].as_f64().unwrap();
    for j in [&presage, &hpa, &kpa, &oracle] {
        assert_eq!(j["requests"], presage["requests"], "{j}");
        assert!(j["scaling_actions"].as_u64().unwrap() > 0, "{j}");
    }
    assert_eq!(v(&oracle), 0.0, "foresight one cold start ahead: {oracle}");
    assert!(cost(&oracle) < cost(&hpa), "{oracle} {hpa}");
    // With a 10-minute cold start, every morning ramp catches HPA and KPA short; the
    // planner had the instances booting before it.
    assert!(
        v(&presage) < 0.5 * v(&hpa) && v(&presage) < 0.5 * v(&kpa),
        "presage {presage}\nhpa {hpa}\nkpa {kpa}"
    );
    eprintln!("presage {presage}\nhpa {hpa}\nkpa {kpa}\noracle {oracle}");

    // No look-ahead: the same trace cut after three and a half days gives the same
    // decisions up to the cut.
    let cut = dir.0.join("cut.csv");
    let full = std::fs::read_to_string(&trace).unwrap();
    let rows = 1 + 288 * 3 + 144;
    let text: Vec<&str> = full.lines().take(rows).collect();
    std::fs::write(&cut, text.join("\n") + "\n").unwrap();
    let cut_sched = dir.0.join("cut-schedule.csv");
    replay(&cut, "presage", Some(&cut_sched));
    let end = (rows as u64 - 1) * 300;
    let before = |s: Vec<(u64, u32)>| -> Vec<(u64, u32)> {
        s.into_iter().filter(|(t, _)| *t < end).collect()
    };
    let (a, b) = (before(schedule(&sched)), before(schedule(&cut_sched)));
    assert!(a.len() > 20, "{a:?}");
    assert_eq!(a, b);
}

#[test]
fn bad_input_is_named() {
    let dir = TempDir::new();
    let trace = dir.0.join("t.csv");
    std::fs::write(&trace, "timestamp,count\n0,5\n60,7\n30,1\n").unwrap();
    let fails = |capacity: &str| {
        let out = Command::new(BIN)
            .args(["replay", "--trace", trace.to_str().unwrap()])
            .args(["--capacity", capacity, "--cold-start", "30"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fails("1");
    assert!(
        err.contains("t.csv:4:") && err.contains("sort the file"),
        "{err}"
    );
    assert!(fails("0").contains("--capacity"));
}
