//! `presage`: the command line. Thin: parse flags, load config, call a library, pick the
//! exit code (64 = bad usage or config, as `EX_USAGE`; 69 = a socket could not be bound).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod replay;
mod sample;

mod up;
mod webhook;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use presage_proxy::config;

pub(crate) const EX_USAGE: u8 = 64;
pub(crate) const EX_UNAVAILABLE: u8 = 69;

/// Presage: a service mesh that acts before load arrives.
#[derive(Parser)]
#[command(name = "presage", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the L7 proxy (sidecar or standalone reverse proxy).
    ///
    /// Either from a YAML file (`--config`, hot-reloaded on change and on SIGHUP), or in one
    /// line with `--listen` and `--to`.
    Proxy(ProxyArgs),
    /// Check config files and exit: 0 if all are valid, 64 with every error otherwise.
    ///
    /// A file is a proxy config, or one workflow (a mapping with `steps`, as
    /// `/v1/workflows` takes it): workflow files are checked together, so one may run
    /// another as a step.
    Validate {
        /// Proxy config or workflow files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the local mesh: the control plane with its embedded store, a sample service for
    /// every loopback endpoint of its services, and a proxy connected to it. Prints one
    /// `name: URL` line per endpoint; Ctrl-C stops everything.
    Up {
        /// Control-plane config whose `services` and `routes` seed the mesh.
        #[arg(long, default_value = "config/demo.yaml")]
        config: PathBuf,
    },
    /// Run the control plane: discovery and telemetry gRPC streams for proxies, the REST
    /// API (with /openapi.json) and the embedded store.
    ControlPlane(ControlPlaneArgs),
    /// Run a small HTTP service that answers with JSON about itself (for demos and tests).
    SampleService(sample::SampleArgs),
    /// Evaluate the behaviour profiler on a per-request trace: train on the first part of
    /// each user's sequence, report top-1/top-3 next-service accuracy on the rest, beside
    /// a most-frequent and a first-order Markov baseline.
    ProfileEval(ProfileEvalArgs),
    /// Forecast a series: reads `timestamp,value` rows (the history) and prints CSV rows
    /// `step,point,lo80,hi80,...` (the model and its backtest error go to stderr); with
    /// several inputs, `input,step,point,...`.
    Forecast(ForecastArgs),
    /// Add the Presage sidecar to Kubernetes workloads: reads manifests (multi-document
    /// YAML: Deployments, StatefulSets, DaemonSets, Jobs, CronJobs, Pods) and writes them
    /// with the proxy container, its iptables init container and its config volume.
    /// Idempotent; `presage.io/inject: disabled` on a workload or pod template opts out;
    /// other documents are copied unchanged.
    Inject(InjectArgs),
    /// Serve the mutating admission webhook (HTTPS): answers each AdmissionReview of a Pod
    /// being created with a JSON Patch that adds the sidecar, as `inject` would.
    InjectWebhook(webhook::WebhookArgs),
    /// Replay a request trace against one autoscaling policy (Presage's planner, HPA, KPA
    /// or an oracle) with simulated instances that take a cold start to become ready;
    /// prints requests over capacity (SLO violations), instance-seconds and scaling actions.
    Replay(replay::ReplayArgs),
}

#[derive(Args)]
struct InjectArgs {
    /// Manifest file, or `-` for standard input.
    #[arg(long, short = 'f', default_value = "-")]
    filename: PathBuf,
    #[command(flatten)]
    sidecar: SidecarArgs,
}

/// What `inject` and `inject-webhook` put into pods.
#[derive(Args)]
pub struct SidecarArgs {
    /// The sidecar's image (the presage binary, with iptables for the init step).
    #[arg(long, default_value_t = presage_control_plane::inject::Options::default().image)]
    image: String,
    /// User the proxy runs as; the init step's iptables rules exempt its traffic.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// ConfigMap holding the sidecar's `sidecar.yaml` (see deploy/).
    #[arg(long, default_value = "presage-sidecar")]
    config_map: String,
}

impl SidecarArgs {
    fn options(&self) -> presage_control_plane::inject::Options {
        presage_control_plane::inject::Options {
            image: self.image.clone(),
            proxy_uid: self.proxy_uid,
            config_map: self.config_map.clone(),
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct ControlPlaneArgs {
    /// YAML config (see config/README.md); without it, the defaults and the flags below.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// gRPC address proxies connect to (default 127.0.0.1:9902).
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// REST API address (default 127.0.0.1:9903).
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Store file (default .presage/control-plane.redb, relative to the config file).
    #[arg(long)]
    store: Option<PathBuf>,
}

#[derive(Args)]
struct ForecastArgs {
    /// CSV with a `timestamp,value` header; timestamps increasing. Repeat to forecast
    /// several series in one run: every file is read and checked first, then each is
    /// forecast in turn, and each output row starts with its file's path.
    #[arg(long, required = true)]
    input: Vec<PathBuf>,
    /// Steps to forecast, in the series' own buckets.
    #[arg(long)]
    horizon: usize,
    /// A known seasonal period in buckets (e.g. 288 for a day of 5-minute buckets); repeat
    /// for several. Without one, periods are detected from the series' periodogram.
    #[arg(long = "season")]
    seasons: Vec<usize>,
    /// Interval levels in percent, comma-separated.
    #[arg(long, default_value = "80,95", value_delimiter = ',')]
    interval: Vec<f64>,
}

#[derive(Args)]
struct ProfileEvalArgs {
    /// CSV with a header; one row per request.
    #[arg(long)]
    input: PathBuf,
    /// Column with the request time (seconds, or YYYY-MM-DD HH:MM:SS).
    #[arg(long, default_value = "timestamp")]
    time_column: String,
    /// Column with the user (or tenant) id.
    #[arg(long, default_value = "user")]
    user_column: String,
    /// Column with the service called.
    #[arg(long, default_value = "service")]
    service_column: String,
    /// Share of each user's sequence used for training (0 < f < 1).
    #[arg(long, default_value_t = 0.8)]
    train_fraction: f64,
}

#[derive(Args)]
struct ProxyArgs {
    /// YAML config file (see config/README.md). Conflicts with --listen/--to.
    #[arg(long, short, conflicts_with_all = ["listen", "to"])]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (one-line mode).
    #[arg(long, requires = "to")]
    listen: Option<SocketAddr>,
    /// Upstream URL to proxy to, e.g. http://127.0.0.1:9000 (one-line mode).
    #[arg(long, requires = "listen")]
    to: Option<http::Uri>,
    /// Admin address for /metrics, /ready and /config (one-line mode).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Worker threads; overrides the config's runtime.workers (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Control plane to take routes and clusters from and report load to, e.g.
    /// http://127.0.0.1:9902; overrides the config's control_plane.address.
    #[arg(long)]
    control_plane: Option<String>,
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Proxy(args) => proxy(args),
        Command::Validate { files } => validate(&files),
        Command::Up { config } => up::run(&config),
        Command::ControlPlane(args) => control_plane(args),
        Command::SampleService(args) => sample::run(args),
        Command::ProfileEval(args) => profile_eval(args),
        Command::Forecast(args) => forecast(args),
        Command::Inject(args) => inject(args),
        Command::InjectWebhook(args) => webhook::run(args),
        Command::Replay(args) => replay::run(args),
    }
}

fn inject(a: InjectArgs) -> ExitCode {
    use presage_control_plane::inject;
    use std::io::Read as _;
    let (text, name) = if a.filename.as_os_str() == "-" {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("stdin: {e}");
            return ExitCode::from(EX_USAGE);
        }
        (s, "stdin".to_string())
    } else {
        match std::fs::read_to_string(&a.filename) {
            Ok(s) => (s, a.filename.display().to_string()),
            Err(e) => {
                eprintln!("{}: {e}", a.filename.display());
                return ExitCode::from(EX_USAGE);
            }
        }
    };
    let opts = a.sidecar.options();
    match inject::inject_stream(&text, &name, &opts) {
        Ok((out, n)) => {
            print!("{out}");
            eprintln!("injected {n} workload(s)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn forecast(a: ForecastArgs) -> ExitCode {
    use presage_control_plane::forecast;
    // Every file checked before any is forecast: a bad one stops the run with its
    // error, not half-way through the output.
    let series: Result<Vec<Vec<f64>>, _> =
        a.input.iter().map(|p| forecast::series::load(p)).collect();
    let series = match series {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // Before the clock: the CPU feature probe is once per process (the live
    // forecaster pays it once), not part of any one series' forecast.
    let isa = forecast::holt::instruction_set();
    // With several inputs, each row and message says which it is about.
    let several = a.input.len() > 1;
    let from = |p: &std::path::Path, sep: &str| match several {
        true => format!("{}{sep}", p.display()),
        false => String::new(),
    };
    // A path as a CSV field: quoted where it holds a comma or a quote.
    let field = |p: &std::path::Path| {
        let p = p.display().to_string();
        match p.contains([',', '"', '\n']) {
            true => format!("\"{}\",", p.replace('"', "\"\"")),
            false => format!("{p},"),
        }
    };
    // A closed pipe (`| head`) just ends the output.
    let mut out = std::io::stdout().lock();
    for (k, (path, y)) in a.input.iter().zip(&series).enumerate() {
        let seasons = if a.seasons.is_empty() {
            let found = forecast::detect_periods(y);
            eprintln!(
                "{}no --season given; detected periods: {found:?}",
                from(path, ": ")
            );
            found
        } else {
            a.seasons.clone()
        };
        // Timed apart: choosing runs once per schedule, refitting on every update.
        let t0 = std::time::Instant::now();
        let selected = forecast::select(y, a.horizon, &seasons, &a.interval);
        let t1 = std::time::Instant::now();
        let f = match selected.and_then(|s| forecast::predict(&s, y)) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{}{e}", from(path, ": "));
                return ExitCode::from(EX_USAGE);
            }
        };
        let (choosing, fitting) = (t1 - t0, t1.elapsed());
        eprintln!(
            "{}model: {}, backtest MASE: {:.3}, model choice: {:.3} ms, fit + forecast: {:.3} ms, vectors: {isa}",
            from(path, ": "),
            f.model,
            f.backtest_mase,
            choosing.as_secs_f64() * 1e3,
            fitting.as_secs_f64() * 1e3
        );
        let lead = if several { field(path) } else { String::new() };
        let mut rows = Vec::with_capacity(f.point.len() + 1);
        if k == 0 {
            let mut header = String::from(if several {
                "input,step,point"
            } else {
                "step,point"
            });
            for (l, _, _) in &f.intervals {
                header.push_str(&format!(",lo{l},hi{l}"));
            }
            rows.push(header);
        }
        for (j, p) in f.point.iter().enumerate() {
            let mut row = format!("{lead}{},{p:.4}", j + 1);
            for (_, lo, hi) in &f.intervals {
                row.push_str(&format!(",{:.4},{:.4}", lo[j], hi[j]));
            }
            rows.push(row);
        }
        for r in rows {
            if writeln!(out, "{r}").is_err() {
                return ExitCode::SUCCESS;
            }
        }
    }
    ExitCode::SUCCESS
}

fn profile_eval(a: ProfileEvalArgs) -> ExitCode {
    use presage_control_plane::behaviour::{eval, ProfilerConfig};
    if !(a.train_fraction > 0.0 && a.train_fraction < 1.0) {
        eprintln!(
            "--train-fraction: expected a number between 0 and 1, found {}",
            a.train_fraction
        );
        return ExitCode::from(EX_USAGE);
    }
    let cols = eval::Columns {
        time: a.time_column,
        user: a.user_column,
        service: a.service_column,
    };
    let report = eval::load(&a.input, &cols).and_then(|ev| {
        eval::evaluate(
            &ev,
            a.train_fraction,
            ProfilerConfig::default(),
            &a.input.display().to_string(),
        )
    });
    match report {
        Ok(r) => {
            println!(
                "users {}, training requests {}, predicted requests {}",
                r.users, r.train_events, r.profiler.n
            );
            println!("predictor,top1_pct,top3_pct");
            for (name, s) in [
                ("presage-profiler", &r.profiler),
                ("markov-1", &r.markov1),
                ("most-frequent", &r.most_frequent),
            ] {
                println!("{name},{:.2},{:.2}", s.top1_pct(), s.top3_pct());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    // Files of one workflow each (as `/v1/workflows` takes them) are checked together,
    // so one may run another as a step.
    let mut workflows = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if presage_workflow::is_workflow(&text) {
            match presage_workflow::parse(&text) {
                Ok(_) => workflows.push(f),
                Err(p) => {
                    print_problem(f, &p);
                    ok = false;
                }
            }
            continue;
        }
        match config::load(f) {
            Ok(_) => println!("{}: ok", f.display()),
            Err(errors) => {
                eprintln!("{errors}");
                ok = false;
            }
        }
    }
    // One build per file with the others' definitions after it, for reference: its own
    // problems are those at index 0 (the others' are reported in their turn).
    for (i, f) in workflows.iter().enumerate() {
        let parse = |path: &PathBuf| {
            presage_workflow::parse(&std::fs::read_to_string(path).unwrap_or_default()).ok()
        };
        let mut set: Vec<presage_workflow::RawWorkflow> = parse(f).into_iter().collect();
        set.extend(
            workflows
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter_map(|(_, g)| parse(g)),
        );
        match presage_workflow::build(&set, Some("#"), &Default::default()) {
            Ok(_) => println!("{}: ok", f.display()),
            Err(problems) => {
                let own: Vec<_> = problems
                    .into_iter()
                    .filter_map(|mut p| {
                        let rest = p.field.strip_prefix("#[0]")?;
                        p.field = rest.trim_start_matches('.').to_string();
                        Some(p)
                    })
                    .collect();
                if own.is_empty() {
                    println!("{}: ok", f.display());
                }
                for p in &own {
                    print_problem(f, p);
                    ok = false;
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EX_USAGE)
    }
}

fn print_problem(f: &std::path::Path, p: &presage_workflow::Problem) {
    eprintln!(
        "{}:{}:{}: {}: {}",
        f.display(),
        p.at.line(),
        p.at.column(),
        p.field,
        p.message
    );
}

/// Loads the proxy config from the flags; errors are printed, and map to `EX_USAGE`.
fn load_proxy_config(args: &ProxyArgs) -> Result<(config::Config, Option<PathBuf>), String> {
    let loaded = match (&args.config, args.listen, &args.to) {
        (Some(path), _, _) => config::load(path).map(|c| (c, Some(path.clone()))).map_err(|e| e.to_string()),
        (None, Some(listen), Some(to)) => {
            let mut yaml = config::one_liner(listen, to, args.admin)?;
            if let Some(cp) = &args.control_plane {
                yaml.push_str(&format!("control_plane:\n  address: {cp:?}\n"));
            }
            return config::parse(&yaml, "<command line>", None).map(|c| (c, None)).map_err(|e| e.to_string());
        }
        _ => Err("either --config FILE, or --listen ADDR --to URL, is required (see presage proxy --help)".into()),
    };
    loaded.and_then(|(mut c, p)| {
        if let Some(cp) = &args.control_plane {
            // Checked by the same parser as the file's own control_plane section.
            let yaml = format!("control_plane:\n  address: {cp:?}\n");
            let spec = config::parse(&yaml, "--control-plane", None)
                .map_err(|e| e.to_string())?
                .control_plane;
            c.control_plane = match (c.control_plane.take(), spec) {
                (Some(mut file), Some(flag)) => {
                    file.address = flag.address;
                    Some(file)
                }
                (_, flag) => flag,
            };
        }
        Ok((c, p))
    })
}

fn control_plane(args: ControlPlaneArgs) -> ExitCode {
    use presage_control_plane::{config as cp_config, runtime};
    let mut cfg = match &args.config {
        Some(path) => match cp_config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EX_USAGE);
            }
        },
        None => cp_config::Config::default(),
    };
    cfg.grpc = args.grpc.unwrap_or(cfg.grpc);
    cfg.api = args.api.unwrap_or(cfg.api);
    cfg.admin_token = std::env::var("PRESAGE_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(s) = args.store {
        cfg.store = s;
    }
    // Multi-thread even on one CPU (as measured in bench/RESULTS.md): model fitting and
    // store commits run on blocking threads beside the streams.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let announce = |b: runtime::Bound| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "presage: grpc on {}", b.grpc);
        let _ = writeln!(out, "presage: api on {}", b.api);
        let _ = writeln!(out, "presage: ready");
        let _ = out.flush();
    };
    match rt.block_on(runtime::run(
        cfg,
        announce,
        presage_proxy::server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ runtime::RunError::Bind { .. }) => {
            eprintln!("{e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn proxy(args: ProxyArgs) -> ExitCode {
    let (config, path) = match load_proxy_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    serve(config, path, args.workers)
}

/// A tokio runtime with `workers` threads; one worker is a current-thread runtime (one
/// event loop with no work stealing or cross-thread wake-ups, as an nginx worker). The
/// error is printed and becomes the exit code.
pub(crate) fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    let built = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    built.map_err(|e| {
        eprintln!("cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Runs a proxy on its own runtime sized by `workers`, then the config, then the CPUs.
pub(crate) fn serve(
    config: config::Config,
    path: Option<PathBuf>,
    workers: Option<usize>,
) -> ExitCode {
    let workers = workers
        .or(config.workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(presage_proxy::server::run(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}
