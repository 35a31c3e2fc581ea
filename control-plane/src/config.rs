//! The control plane's YAML config: where it listens, where its store lives, and the
//! resources it is seeded with (`presage control-plane --config FILE`).
//!
//! Seeds are written to the store only when the store has no resource of that name yet:
//! after the first start the store is the source of truth and the REST API edits it.
//! Errors read `file:line:column: field.path: message`, every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use presage_api::{Cluster, QosProfile, Route};
use serde::Deserialize;

use crate::discovery::DiscoveryConfig;
use crate::validate::{self, FieldError};

/// Defaults: the ports `presage up` uses.
pub mod defaults {
    pub const GRPC: &str = "127.0.0.1:9902";
    pub const API: &str = "127.0.0.1:9903";
    pub const STORE: &str = ".presage/control-plane.redb";
    /// How often load histories are saved to the store.
    pub const SNAPSHOT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
    /// How often forecasts are refreshed: a quarter of their one-minute horizon.
    pub const FORECAST_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    grpc: Option<SocketAddr>,
    api: Option<SocketAddr>,
    store: Option<PathBuf>,
    #[serde(default, with = "humantime_opt")]
    snapshot_interval: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    forecast_interval: Option<Duration>,
    #[serde(default)]
    services: Vec<Cluster>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    qos_profiles: Vec<QosProfile>,
    local_proxy: Option<LocalProxy>,
    #[serde(default)]
    discovery: DiscoveryConfig,
    #[serde(default)]
    alerting: crate::sla::alerts::AlertingConfig,
    #[serde(default)]
    auth: crate::auth::AuthConfig,
    #[serde(default)]
    identity: crate::identity::IdentityConfig,
    #[serde(default)]
    autoscaling: crate::autoscale::AutoscalingConfig,
    /// With where each is in the file, for its errors.
    #[serde(default)]
    dependencies: Vec<serde_saphyr::Spanned<crate::deps::ConfigEdge>>,
    #[serde(default)]
    events: crate::bus::EventsConfig,
    /// Files of one workflow each, relative to the config's directory.
    #[serde(default)]
    workflows: Vec<PathBuf>,
}

/// The proxy `presage up` starts next to the control plane (ignored by `control-plane`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalProxy {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// A validated control-plane config.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc: SocketAddr,
    pub api: SocketAddr,
    /// Relative paths are taken from the config file's directory.
    pub store: PathBuf,
    pub snapshot_interval: Duration,
    /// How often each service's forecast is recomputed and pushed.
    pub forecast_interval: Duration,
    pub services: Vec<Cluster>,
    pub routes: Vec<Route>,
    pub qos_profiles: Vec<QosProfile>,
    pub local_proxy: Option<LocalProxy>,
    /// Registries to take instances from.
    pub discovery: DiscoveryConfig,
    /// SLA alert evaluation and delivery.
    pub alerting: crate::sla::alerts::AlertingConfig,
    /// REST API tokens.
    pub auth: crate::auth::AuthConfig,
    /// One more admin token, from `PRESAGE_API_TOKEN` (set by the caller, not the file).
    pub admin_token: Option<String>,
    /// The mesh CA that signs workload certificates.
    pub identity: crate::identity::IdentityConfig,
    /// Services the planner scales, and their actuators.
    pub autoscaling: crate::autoscale::AutoscalingConfig,
    /// Manual dependency edges, imported into the store at start.
    pub dependencies: Vec<crate::deps::ConfigEdge>,
    /// Where the event bus is exported.
    pub events: crate::bus::EventsConfig,
    /// Workflow files (as written; `load` reads and checks them into `workflow_seeds`).
    pub workflows: Vec<PathBuf>,
    /// The workflows seeded into the store at start (checked).
    pub workflow_seeds: Vec<presage_api::Workflow>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc: defaults::GRPC.parse().expect("valid default"),
            api: defaults::API.parse().expect("valid default"),
            store: defaults::STORE.into(),
            snapshot_interval: defaults::SNAPSHOT_INTERVAL,
            forecast_interval: defaults::FORECAST_INTERVAL,
            services: Vec::new(),
            routes: Vec::new(),
            qos_profiles: Vec::new(),
            local_proxy: None,
            discovery: DiscoveryConfig::default(),
            alerting: Default::default(),
            auth: Default::default(),
            admin_token: None,
            identity: Default::default(),
            autoscaling: Default::default(),
            dependencies: Vec::new(),
            events: Default::default(),
            workflows: Vec::new(),
            workflow_seeds: Vec::new(),
        }
    }
}

/// Every problem with a config, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

pub(crate) mod humantime_opt {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s)
                .map_err(|e| serde::de::Error::custom(format!("expected a duration like 30s: {e}")))
        })
        .transpose()
    }
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(vec![format!("{name}: cannot read the file: {e}")]))?;
    let mut cfg = parse(&text, &name)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    if cfg.store.is_relative() {
        cfg.store = dir.join(&cfg.store);
    }
    let files: Vec<PathBuf> = cfg.workflows.iter().map(|f| dir.join(f)).collect();
    cfg.workflow_seeds = workflow_seeds(&files)?;
    Ok(cfg)
}

/// Reads and checks workflow files together (one may run another as a step); every
/// error as `file:line:column: field: message`.
fn workflow_seeds(files: &[PathBuf]) -> Result<Vec<presage_api::Workflow>, ConfigError> {
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(t) => texts.push((f, t)),
            Err(e) => errors.push(format!("{}: cannot read the workflow: {e}", f.display())),
        }
    }
    // Each is checked among those before it that passed (names come from the files).
    let mut seeds: Vec<presage_api::Workflow> = Vec::new();
    let names: Vec<Option<String>> = texts
        .iter()
        .map(|(f, t)| match presage_workflow::parse(t) {
            Ok(r) => Some(r.name.value),
            Err(p) => {
                errors.push(located(f, &p.at, &p.field, &p.message));
                None
            }
        })
        .collect();
    for (i, (f, text)) in texts.iter().enumerate() {
        let Some(name) = &names[i] else {
            continue;
        };
        // The others, unchecked yet, as they are: a step may run any of them.
        let others: Vec<presage_api::Workflow> = texts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(j, (_, t))| {
                Some(presage_api::Workflow {
                    name: names[j].clone()?,
                    definition: t.clone(),
                    services: Vec::new(),
                })
            })
            .collect();
        match crate::workflows::check(name, text, &others, None) {
            Ok(w) => seeds.push(w),
            Err(errs) => {
                for e in errs {
                    errors.push(format!("{}: {}: {}", f.display(), e.field, e.message));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(seeds)
    } else {
        Err(ConfigError(errors))
    }
}

fn located(f: &Path, at: &serde_saphyr::Location, field: &str, message: &str) -> String {
    format!(
        "{}:{}:{}: {field}: {message}",
        f.display(),
        at.line(),
        at.column()
    )
}

/// Parses and validates YAML text; `source` prefixes errors.
pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
    let mut path = String::new();
    let raw: Raw = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            // Spanned entries (autoscaling services) add a `.value` step of their own.
            path = e.path().to_string().replace("].value", "]");
            e.into_inner()
        })
    })
    .map_err(|e| {
        let (line, col) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let mut msg = e.to_string();
        if let Some(i) = msg.rfind(" at line ") {
            msg.truncate(i);
        }
        let field = if path.is_empty() || path == "." {
            "(document)"
        } else {
            &path
        };
        ConfigError(vec![format!("{source}:{line}:{col}: {field}: {msg}")])
    })?;
    let mut errors = Vec::new();
    let mut check = |list: &str, i: usize, errs: Vec<FieldError>| {
        for e in errs {
            errors.push(format!("{source}: {list}[{i}].{}: {}", e.field, e.message));
        }
    };
    for (i, c) in raw.services.iter().enumerate() {
        check("services", i, validate::cluster(c));
    }
    for (i, r) in raw.routes.iter().enumerate() {
        check("routes", i, validate::route(r));
    }
    for (i, q) in raw.qos_profiles.iter().enumerate() {
        // Seeded profiles name default tiers (others are added through the API).
        check(
            "qos_profiles",
            i,
            validate::qos_profile(q, crate::tiers::is_default),
        );
    }
    for (i, e) in raw.dependencies.iter().enumerate() {
        let (l, e) = (&e.referenced, &e.value);
        let spec = crate::deps::EdgeSpec {
            kind: e.kind,
            ratio: e.ratio,
        };
        for err in crate::deps::check(&e.from, &e.to, &spec) {
            errors.push(format!(
                "{source}:{}:{}: dependencies[{i}].{}: {}",
                l.line(),
                l.column(),
                err.field,
                err.message
            ));
        }
    }
    if raw
        .discovery
        .etcd
        .as_ref()
        .is_some_and(|e| e.endpoints.is_empty())
    {
        errors.push(format!(
            "{source}: discovery.etcd.endpoints: expected at least one host:port"
        ));
    }
    if let Some(c) = &raw.discovery.consul {
        if !(c.address.starts_with("http://") || c.address.starts_with("https://")) {
            errors.push(format!(
                "{source}: discovery.consul.address: expected http://host:port or https://host:port, found {:?}",
                c.address
            ));
        }
        if c.wait
            .is_some_and(|w| w > Duration::from_secs(600) || w < Duration::from_secs(1))
        {
            errors.push(format!(
                "{source}: discovery.consul.wait: expected 1s to 10m (Consul's limit)"
            ));
        }
    }
    for (i, url) in raw.alerting.webhooks.iter().enumerate() {
        let ok = url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            errors.push(format!(
                "{source}: alerting.webhooks[{i}]: expected an http:// or https:// URL, found {url:?}"
            ));
        }
    }
    for (i, t) in raw.auth.tokens.iter().enumerate() {
        if t.token.len() < 16 {
            errors.push(format!(
                "{source}: auth.tokens[{i}].token: expected at least 16 characters"
            ));
        }
        if let Some(tenant) = &t.tenant {
            let mut e = Vec::new();
            validate::subject_id(&mut e, "tenant", tenant);
            for err in e {
                errors.push(format!(
                    "{source}: auth.tokens[{i}].tenant: {}",
                    err.message
                ));
            }
        }
    }
    if raw
        .alerting
        .interval
        .is_some_and(|d| d < Duration::from_secs(1))
    {
        errors.push(format!("{source}: alerting.interval: expected at least 1s"));
    }
    if let Some(k) = &raw.discovery.kubernetes {
        let mut e = Vec::new();
        validate::name(&mut e, "namespace", &k.namespace);
        for err in e {
            errors.push(format!(
                "{source}: discovery.kubernetes.{}: {}",
                err.field, err.message
            ));
        }
        if let Some(path) = k.kubeconfig.as_ref().filter(|p| !p.is_file()) {
            errors.push(format!(
                "{source}: discovery.kubernetes.kubeconfig: no such file {}",
                path.display()
            ));
        }
    }
    for (i, s) in raw.discovery.fixed.iter().enumerate() {
        let mut e = Vec::new();
        validate::name(&mut e, "service", &s.service);
        for err in e {
            errors.push(format!(
                "{source}: discovery.static[{i}].{}: {}",
                err.field, err.message
            ));
        }
    }
    for e in raw.autoscaling.check() {
        // `@line:col: ...` when the problem's place in the file is known.
        match e.strip_prefix('@') {
            Some(at) => errors.push(format!("{source}:{at}")),
            None => errors.push(format!("{source}: {e}")),
        }
    }
    if let Some(n) = &raw.events.nats {
        for e in n.check() {
            errors.push(format!("{source}: events.nats.{e}"));
        }
    }
    for (field, message) in raw.identity.check() {
        errors.push(format!("{source}: identity.{field}: {message}"));
    }
    if !errors.is_empty() {
        return Err(ConfigError(errors));
    }
    let d = Config::default();
    Ok(Config {
        grpc: raw.grpc.unwrap_or(d.grpc),
        api: raw.api.unwrap_or(d.api),
        store: raw.store.unwrap_or(d.store),
        snapshot_interval: raw.snapshot_interval.unwrap_or(d.snapshot_interval),
        forecast_interval: raw
            .forecast_interval
            .unwrap_or(d.forecast_interval)
            .max(Duration::from_secs(1)),
        services: raw.services,
        routes: raw.routes,
        qos_profiles: raw.qos_profiles,
        local_proxy: raw.local_proxy,
        discovery: raw.discovery,
        alerting: raw.alerting,
        auth: raw.auth,
        admin_token: None,
        identity: raw.identity,
        autoscaling: raw.autoscaling,
        dependencies: raw.dependencies.into_iter().map(|s| s.value).collect(),
        events: raw.events,
        workflows: raw.workflows,
        workflow_seeds: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_seeds_are_read_beside_the_config_and_checked_with_their_location() {
        let dir = std::env::temp_dir().join(format!("presage-cfg-wf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("flows")).unwrap();
        std::fs::write(
            dir.join("flows/a.yaml"),
            "name: a\nsteps: [ { name: x, workflow: b } ]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("flows/b.yaml"),
            "name: b\nsteps: [ { name: y, call: { service: s } } ]\n",
        )
        .unwrap();
        let cfg = dir.join("cp.yaml");
        std::fs::write(&cfg, "workflows: [flows/a.yaml, flows/b.yaml]\n").unwrap();
        let c = load(&cfg).unwrap();
        let names: Vec<&str> = c.workflow_seeds.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.workflow_seeds[0].services, ["s"], "through b");

        std::fs::write(
            dir.join("flows/b.yaml"),
            "name: b\nsteps:\n  - name: y\n    while: { condition: \"true\" }\n    steps: [ { name: z, call: { service: s } } ]\n",
        )
        .unwrap();
        std::fs::write(&cfg, "workflows: [flows/b.yaml, flows/missing.yaml]\n").unwrap();
        let err = load(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("missing.yaml: cannot read the workflow"),
            "{err}"
        );
        assert!(
            err.contains("b.yaml: steps[0] (step \"y\").while.max: an unbounded loop")
                && err.contains("(line 4, column"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_fields_name_the_line_and_path() {
        let err = parse("services:\n  - name: web\n    endpionts: []\n", "cp.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("cp.yaml:"), "{msg}");
        assert!(
            msg.contains("services[0]") && msg.contains("endpionts"),
            "{msg}"
        );
    }

    #[test]
    fn dependency_edges_are_checked_where_they_are_written() {
        let cfg = parse(
            "dependencies:\n  - { from: frontend, to: api, ratio: 2 }\n  - { from: api, to: db, kind: optional, ratio: 0.5 }\n",
            "cp.yaml",
        )
        .unwrap();
        assert_eq!(cfg.dependencies.len(), 2);
        assert_eq!(cfg.dependencies[0].kind, crate::deps::Kind::Mandatory);
        let err = parse(
            "dependencies:\n  - { from: api, to: db, ratio: 1 }\n  - { from: db, to: db, ratio: -1 }\n",
            "cp.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cp.yaml:3:5: dependencies[1].to: a service cannot depend on itself")
                && err.contains("cp.yaml:3:5: dependencies[1].ratio: expected calls per request"),
            "{err}"
        );
        let err = parse(
            "dependencies:\n  - { from: a, to: b, kind: sometimes, ratio: 1 }\n",
            "cp.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("cp.yaml:2:") && err.contains("dependencies[0].kind"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let err = parse(
            "services:\n  - name: web\n    endpoints: [{address: nope}]\nroutes:\n  - {name: r, cluster: web, rewrite_prefix: /}\n",
            "cp.yaml",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(
            err.0[0].starts_with("cp.yaml: services[0].endpoints[0].address: expected host:port"),
            "{err}"
        );
        assert!(
            err.0[1].starts_with("cp.yaml: routes[0].rewrite_prefix"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_demo_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo.yaml");
        let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.services.len() >= 2 && c.routes.len() >= 2, "{c:?}");
        assert!(c.local_proxy.is_some());
    }

    #[test]
    fn defaults_apply() {
        let c = parse("{}", "x").unwrap();
        assert_eq!(c.grpc.to_string(), defaults::GRPC);
        assert_eq!(c.snapshot_interval, defaults::SNAPSHOT_INTERVAL);
    }
}
