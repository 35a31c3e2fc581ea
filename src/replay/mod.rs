//! `presage replay`: one autoscaling policy over a request trace, with a simulated clock
//! and simulated instances (`sim`), for the autoscaling benchmark (`bench/autoscale/`).
//!
//! The trace is `timestamp,count` rows at a fixed step (seconds or RFC 3339 timestamps);
//! missing steps (an outage in the log) count as zero requests. Policies see only what
//! happened before the simulated second they decide at, so a truncated trace gives the
//! same schedule up to the cut.

mod chain;
mod policies;
mod sim;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::json;

const EX_USAGE: u8 = 64;

#[derive(Args)]
pub struct ReplayArgs {
    /// The trace: `timestamp,count` rows at a fixed step, with a header.
    #[arg(long)]
    trace: PathBuf,
    /// Requests per second one instance serves within its SLO.
    #[arg(long)]
    capacity: f64,
    /// Seconds from an instance's launch to its first request served.
    #[arg(long)]
    cold_start: u64,
    #[arg(long, value_enum, default_value_t = PolicyName::Presage)]
    policy: PolicyName,
    /// Print one JSON object instead of a summary line.
    #[arg(long)]
    json: bool,
    /// Write the decisions as CSV rows `t,target` (seconds from the trace's start, the
    /// instance count from then on).
    #[arg(long)]
    schedule_out: Option<PathBuf>,
    /// Presage: the forecast interval level (percent) whose upper bound is provisioned
    /// for (95 for Gold, 80 for Silver; 50: the central half's upper bound, about the
    /// 75th percentile, where the live planner provisions Bronze at the point forecast).
    #[arg(long, default_value_t = 95.0)]
    level: f64,
    /// Presage: the share of capacity the reactive floor plans to use.
    #[arg(long, default_value_t = 0.8)]
    floor_utilisation: f64,
    /// Presage: seconds a lower target must hold before instances are removed.
    #[arg(long, default_value_t = 60)]
    scale_down_delay: u64,
    /// Presage with a dependency: each request served makes this many calls to a service
    /// that scales reactively on what it receives (see `--chain-capacity`).
    #[arg(long)]
    chain_ratio: Option<f64>,
    /// The dependency's requests per second per instance.
    #[arg(long, requires = "chain_ratio")]
    chain_capacity: Option<f64>,
    /// The dependency's instances at most.
    #[arg(long, default_value_t = 10_000)]
    chain_max: u32,
    /// The dependency's cold start (default: `--cold-start`).
    #[arg(long)]
    chain_cold_start: Option<u64>,
    /// Negotiate each of Presage's scale-ups with the dependency first.
    #[arg(long, requires = "chain_ratio")]
    negotiate: bool,
    /// Write Presage's decisions with their reasons, one JSON object per line.
    #[arg(long)]
    decisions_out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyName {
    /// The planner: forecast one cold start ahead at the 95% bound, with a reactive floor.
    Presage,
    /// Kubernetes Horizontal Pod Autoscaler defaults.
    Hpa,
    /// Knative Pod Autoscaler defaults.
    Kpa,
    /// Perfect foresight, for reference.
    Oracle,
}

impl PolicyName {
    fn name(self) -> &'static str {
        match self {
            PolicyName::Presage => "presage",
            PolicyName::Hpa => "hpa",
            PolicyName::Kpa => "kpa",
            PolicyName::Oracle => "oracle",
        }
    }
}

/// The trace's counts on a fixed grid, and its step in seconds.
fn load(path: &std::path::Path) -> Result<(Vec<f64>, u64), String> {
    let rows =
        presage_control_plane::forecast::series::load_timed(path).map_err(|e| e.to_string())?;
    if rows.len() < 2 {
        return Err(format!("{}: need at least two rows", path.display()));
    }
    let mut gaps: Vec<f64> = rows.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort_by(f64::total_cmp);
    let step = gaps[gaps.len() / 2].round();
    if step < 1.0 {
        return Err(format!(
            "{}: the step is under a second ({step} s); aggregate the trace first",
            path.display()
        ));
    }
    let t0 = rows[0].0;
    let len = ((rows[rows.len() - 1].0 - t0) / step).round() as usize + 1;
    let mut steps = vec![0.0; len];
    for (i, (t, v)) in rows.iter().enumerate() {
        let k = ((t - t0) / step).round() as usize;
        if v.is_sign_negative() {
            return Err(format!(
                "{}:{}: a count cannot be negative, found {v}",
                path.display(),
                i + 2
            ));
        }
        steps[k.min(len - 1)] += v;
    }
    Ok((steps, step as u64))
}

pub fn run(a: ReplayArgs) -> ExitCode {
    if !(a.level > 0.0 && a.level < 100.0) {
        eprintln!(
            "--level: expected a percentage between 0 and 100, found {}",
            a.level
        );
        return ExitCode::from(EX_USAGE);
    }
    if !(a.floor_utilisation > 0.0 && a.floor_utilisation <= 1.0) {
        eprintln!(
            "--floor-utilisation: expected a share in (0, 1], found {}",
            a.floor_utilisation
        );
        return ExitCode::from(EX_USAGE);
    }
    if !(a.capacity.is_finite() && a.capacity > 0.0) {
        eprintln!(
            "--capacity: expected a positive number of requests/s, found {}",
            a.capacity
        );
        return ExitCode::from(EX_USAGE);
    }
    let (steps, step_s) = match load(&a.trace) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Some(ratio) = a.chain_ratio {
        return run_chain(&a, &steps, step_s, ratio);
    }
    let mut presage = None;
    let outcome = match a.policy {
        PolicyName::Presage => {
            let mut p = presage_policy(&a, step_s);
            let out = sim::run(&steps, step_s, a.capacity, a.cold_start, &mut p);
            presage = Some(p);
            out
        }
        PolicyName::Hpa => sim::run(
            &steps,
            step_s,
            a.capacity,
            a.cold_start,
            &mut policies::Hpa::new(a.capacity),
        ),
        PolicyName::Kpa => sim::run(
            &steps,
            step_s,
            a.capacity,
            a.cold_start,
            &mut policies::Kpa::new(a.capacity),
        ),
        PolicyName::Oracle => {
            let mut o = policies::Oracle::new(&steps, step_s, a.capacity, a.cold_start);
            sim::run(&steps, step_s, a.capacity, a.cold_start, &mut o)
        }
    };
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    if let Some(path) = &a.schedule_out {
        let mut csv = String::from("t,target\n");
        for (t, n) in &outcome.schedule {
            csv.push_str(&format!("{t},{n}\n"));
        }
        if let Err(e) = write(path, csv) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    if let (Some(path), Some(p)) = (&a.decisions_out, &presage) {
        let lines: String = p
            .decisions
            .iter()
            .map(|(t, d)| json!({"t": t, "decision": d}).to_string() + "\n")
            .collect();
        if let Err(e) = write(path, lines) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = if a.json {
        let mut v = serde_json::to_value(&outcome).expect("an outcome serializes");
        v["policy"] = json!(a.policy.name());
        v["trace"] = json!(a.trace.display().to_string());
        v["step_s"] = json!(step_s);
        v["capacity"] = json!(a.capacity);
        v["cold_start"] = json!(a.cold_start);
        if matches!(a.policy, PolicyName::Presage) {
            v["level"] = json!(a.level);
        }
        writeln!(out, "{v}")
    } else {
        writeln!(
            out,
            "{}: {:.0} requests, {:.0} over capacity ({:.3}%), {:.0} instance-seconds, {} scaling actions",
            a.policy.name(),
            outcome.requests,
            outcome.slo_violations,
            100.0 * outcome.slo_violation_ratio,
            outcome.instance_seconds,
            outcome.scaling_actions
        )
    };
    ExitCode::SUCCESS
}

/// `--chain-ratio`: Presage with a dependency, negotiated or not (`chain`).
fn run_chain(a: &ReplayArgs, steps: &[f64], step_s: u64, ratio: f64) -> ExitCode {
    let Some(capacity) = a.chain_capacity.filter(|c| c.is_finite() && *c > 0.0) else {
        eprintln!("--chain-capacity: expected a positive number of requests/s");
        return ExitCode::from(EX_USAGE);
    };
    if !(ratio.is_finite() && ratio > 0.0 && matches!(a.policy, PolicyName::Presage)) {
        eprintln!("--chain-ratio: expected calls per request above 0, with --policy presage");
        return ExitCode::from(EX_USAGE);
    }
    let dep = chain::Dependency {
        ratio,
        capacity,
        max: a.chain_max.max(1),
        cold_start: a.chain_cold_start.unwrap_or(a.cold_start),
    };
    let mut p = presage_policy(a, step_s);
    let o = chain::run(
        steps,
        step_s,
        a.capacity,
        a.cold_start,
        &mut p,
        &dep,
        a.negotiate,
    );
    let mut v = serde_json::to_value(&o).expect("an outcome serializes");
    v["policy"] = json!(if a.negotiate {
        "presage+negotiation"
    } else {
        "presage"
    });
    v["trace"] = json!(a.trace.display().to_string());
    let _ = writeln!(std::io::stdout().lock(), "{v}");
    ExitCode::SUCCESS
}

/// Presage's planner as the flags set it.
fn presage_policy(a: &ReplayArgs, step_s: u64) -> policies::Presage {
    policies::Presage::new(
        a.capacity,
        a.cold_start,
        step_s,
        a.level,
        a.floor_utilisation,
        a.scale_down_delay,
    )
}
