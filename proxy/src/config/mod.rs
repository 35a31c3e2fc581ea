//! Configuration: parse YAML, validate across fields, build the types the proxy runs on.
//!
//! ```text
//!  text ──serde-saphyr──▶ RawConfig ──build()──▶ Config ──(runtime.rs)──▶ live routes/clusters
//!        (syntax, types,   (raw.rs)    (references,   (this file)
//!         unknown fields)              files, ranges)
//! ```
//! Every error is one sentence, `file:line:column: field.path: message`, and `build` reports
//! all the problems it finds, not just the first. This module does no I/O beyond reading the
//! files the config names (TLS PEMs); swapping a config in is `reload`'s job.

mod clusters;
mod control_plane;
pub mod dynamic;
mod listeners;
mod one_liner;
mod qos;
mod routes;
mod workflows;
pub use presage_workflow::{Call, Step, StepKind, WorkflowSpec, DEFAULT_DEADLINE};
pub use qos::{
    QosProfileSpec, SubjectKind, SubjectSpec, Tier, TierSpec, BASE_TIER, DEFAULT_TIERS, MAX_TIERS,
};
pub mod raw;

pub use control_plane::default_node_id;
pub use one_liner::one_liner;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use crate::routing::{HeaderMatch, HostMatch, PathMatch, RouteMatch};
use crate::tls;
use raw::RawConfig;
pub use raw::{LoadBalancer, Protocol};

/// Default limits, chosen to match nginx's and HAProxy's defaults in spirit.
pub mod defaults {
    use std::time::Duration;
    /// nginx's `large_client_header_buffers` is 4 x 8 KiB; HAProxy's `tune.bufsize` 16 KiB.
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    /// hyper's own default (HAProxy's `tune.http.maxhdr` is 101): up to 100 fields, hyper
    /// parses a request head in arrays on the stack; above it, two heap arrays per request.
    pub const MAX_HEADERS: usize = 100;
    /// nginx's `client_max_body_size` is 1 MiB; proxies of APIs need more.
    pub const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
    /// nginx's `client_header_timeout` is 60 s; slowloris needs far less to hurt.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Envoy's `stream_idle_timeout` (nginx's `proxy_read_timeout` is 60 s, which cuts
    /// quiet server-sent event and gRPC streams).
    pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
    pub const RETRY_ATTEMPTS: u32 = 2;
    /// At most 20% extra load from retries (Linkerd's default budget).
    pub const RETRY_BUDGET_PERCENT: f32 = 20.0;
    pub const RETRY_BACKOFF: Duration = Duration::from_millis(5);
    pub const RETRY_MAX_BACKOFF: Duration = Duration::from_millis(250);
    pub const OUTLIER_FAILURES: u32 = 5;
    pub const OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(5);
    /// Where `presage inject` mounts the pod's service-account token for the control
    /// plane (audience `presage`; not the API server's token, which is never sent).
    pub const TOKEN_FILE: &str = "/var/run/secrets/presage/token";
    pub const OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
    /// At most half a cluster ejected at once (one endpoint always may be), so that a
    /// fault shared by many endpoints does not pile their load onto the rest.
    pub const OUTLIER_MAX_EJECTION_PERCENT: u32 = 50;
    /// Telemetry resolution the control plane's time series are built at.
    pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
    pub const USER_HEADER: &str = "x-presage-user";
    /// One minute of reports at the default interval.
    pub const MAX_BUFFERED_REPORTS: usize = 60;
    /// Envoy's `initial_fetch_timeout` is 15 s; a local control plane answers in ms.
    pub const INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
}

/// A validated, runnable configuration.
#[derive(Debug)]
pub struct Config {
    /// Where it came from: a file path, or `<command line>`.
    pub source: String,
    /// The YAML text it was built from (served at the admin `/config`).
    pub text: String,
    pub listeners: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    pub workers: Option<usize>,
    pub limits: Limits,
    pub access_log: bool,
    pub drain_timeout: Duration,
    pub routes: Vec<RouteSpec>,
    pub clusters: Vec<ClusterSpec>,
    pub control_plane: Option<ControlPlaneSpec>,
    pub qos_profiles: Vec<QosProfileSpec>,
    pub subjects: Vec<SubjectSpec>,
    /// Tier of requests that resolve to no profile.
    pub default_tier: Tier,
    /// The QoS tiers, lowest priority first (`Tier` indexes this).
    pub tiers: Vec<TierSpec>,
    /// Composite services, run by `workflow` at `POST /workflows/{name}`.
    pub workflows: Vec<Arc<WorkflowSpec>>,
}

/// Connection to the control plane (discovery and telemetry streams).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneSpec {
    pub address: http::Uri,
    pub node_id: String,
    pub service: String,
    pub report_interval: Duration,
    pub user_header: http::HeaderName,
    pub transition_sample_rate: f64,
    pub max_buffered_reports: usize,
    pub initial_fetch_timeout: Duration,
    /// Set: get a workload certificate from the control plane (mutual TLS in the mesh).
    pub identity: Option<IdentitySpec>,
}

/// The workload a sidecar's certificate names (see `identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySpec {
    pub namespace: String,
    pub service_account: String,
    /// Sent with each certificate request when the file exists (read each time: the
    /// kubelet rotates projected tokens), for the control plane's `identity.attest`.
    pub token_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Loaded from PEM files at build time; rebuilt (and so re-read) on every reload.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections arrive redirected by iptables; their original destination is where
    /// unrouted traffic goes (see `transparent`).
    pub transparent: bool,
    /// Redirected inbound traffic: never routed, always to its original destination.
    pub inbound: bool,
    /// Rules on callers' mesh identities (see `authz`).
    pub authorization: Vec<crate::authz::AuthzRule>,
    pub qos_headers: QosHeaders,
}

/// Whose `x-presage-qos`, `-user`, `-tenant` and `-timeout-ms` request headers a
/// listener believes (`listeners[].qos_headers`): they choose a request's QoS profile,
/// tier and deadline, so a client that may set them may give itself Platinum. Those of
/// anyone else are removed before the request is routed (as Envoy removes `x-envoy-*`
/// headers from external clients).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QosHeaders {
    /// From loopback, private (RFC 1918, IPv6 unique-local), shared (RFC 6598
    /// 100.64/10, which some clusters give pods) and link-local addresses, and from this
    /// host's own address: a sidecar's application, the mesh's pods, a gateway in front
    /// of an edge proxy. A load balancer that rewrites source addresses (a Kubernetes
    /// Service with `externalTrafficPolicy: Cluster`) makes every client internal:
    /// such an edge listener wants `none`.
    #[default]
    Internal,
    All,
    None,
}

impl QosHeaders {
    /// Whether a caller at `peer`, connected to this host at `local`, is believed.
    pub fn trusts(self, peer: std::net::IpAddr, local: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let internal = |ip: IpAddr| match ip {
            IpAddr::V4(a) => {
                let shared = a.octets()[0] == 100 && a.octets()[1] & 0xc0 == 64;
                a.is_loopback() || a.is_private() || a.is_link_local() || shared
            }
            IpAddr::V6(a) => a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local(),
        };
        match self {
            QosHeaders::All => true,
            QosHeaders::None => false,
            QosHeaders::Internal => {
                let peer = peer.to_canonical();
                internal(peer) || peer == local.to_canonical()
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
}

#[derive(Debug)]
pub struct RouteSpec {
    pub name: String,
    pub matcher: RouteMatch,
    pub cluster: String,
    /// `(matched prefix, replacement)`.
    pub rewrite_prefix: Option<(String, String)>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Profile of requests that name none and whose subject has none.
    pub qos_profile: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts after the first; 0 disables retries.
    pub attempts: u32,
    pub budget_percent: f32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.add {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// An upstream cluster as configured. `PartialEq` ignores source locations, so a reload
/// that only moves lines keeps the live cluster (its pools and endpoint state).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub name: String,
    pub protocol: Protocol,
    pub load_balancer: LoadBalancer,
    pub connect_timeout: Duration,
    /// A response body whose upstream sends nothing for this long is cut (zero: never).
    pub idle_timeout: Duration,
    pub tls: Option<ClientTlsSpec>,
    pub outlier: OutlierPolicy,
    pub endpoints: Vec<EndpointSpec>,
    /// Requests in flight above which tiers are shed (lowest first); 0: no limit.
    pub max_in_flight: usize,
    /// Set when the service cannot take its callers' full load (dependency
    /// negotiation): what its callers' requests to it are spared.
    pub degraded: Option<Degraded>,
    /// Whose calls are shed by it (sidecars' services); empty: every caller's.
    pub degraded_callers: Vec<String>,
}

/// How requests to a degraded dependency are shed (`clusters[].degraded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Degraded {
    /// The lowest tier's requests are refused; the others pass.
    Optional,
    /// Every request is refused at once: callers skip the call.
    BestEffort,
}

#[derive(Debug, Clone)]
pub struct ClientTlsSpec {
    pub ca_pem: Option<Vec<u8>>,
    pub server_name: Option<String>,
    pub config: Arc<rustls::ClientConfig>,
    /// Mutual TLS to mesh sidecars with the workload certificate (`identity`).
    pub mesh: bool,
}

impl PartialEq for ClientTlsSpec {
    fn eq(&self, o: &Self) -> bool {
        self.ca_pem == o.ca_pem && self.server_name == o.server_name && self.mesh == o.mesh
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierPolicy {
    /// Consecutive connect errors or 5xx before ejection; 0 disables.
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Most endpoints ejected at once, in percent of the cluster; one always may be.
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    pub authority: http::uri::Authority,
    pub weight: u32,
    pub metadata: BTreeMap<String, serde_json::Value>,
}

// === errors ===

/// One problem in a config, located in its source.
/// Displayed as `source:line:column: field: message`, or `source: field: message` when
/// there is no position (a resource from the control plane, an unreadable file).
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub source_name: String,
    pub line: u64,
    pub column: u64,
    /// Dotted path of the offending field, e.g. `routes[1].match.path`.
    pub field: String,
    pub message: String,
}

/// Every problem found; `Display` prints one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ConfigError {
            source_name,
            line,
            column,
            field,
            message,
        } = self;
        if *line == 0 {
            write!(f, "{source_name}: {field}: {message}")
        } else {
            write!(f, "{source_name}:{line}:{column}: {field}: {message}")
        }
    }
}

impl std::error::Error for ConfigError {}

// === loading ===

/// Reads and builds the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &dynamic::Dynamic::default())
}

/// Reads the config at `path` and builds it merged with the control plane's resources.
pub fn load_with(path: &Path, dynamic: &dynamic::Dynamic) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            source_name: name.clone(),
            line: 0,
            column: 0,
            field: "(file)".into(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse_with(&text, &name, path.parent(), dynamic)
}

/// Builds a config from YAML text. `source_name` prefixes errors; relative file paths in
/// the config are resolved against `base_dir`.
pub fn parse(
    text: &str,
    source_name: &str,
    base_dir: Option<&Path>,
) -> Result<Config, ConfigErrors> {
    parse_with(text, source_name, base_dir, &dynamic::Dynamic::default())
}

/// `parse`, with the control plane's clusters and routes merged in (see `dynamic`).
pub fn parse_with(
    text: &str,
    source_name: &str,
    base_dir: Option<&Path>,
    dynamic: &dynamic::Dynamic,
) -> Result<Config, ConfigErrors> {
    let mut raw: RawConfig = deserialize(text, source_name).map_err(|e| ConfigErrors(vec![e]))?;
    let (items, errors) = dynamic::raw_items(dynamic);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    // Where each list's dynamic part starts, and its resources' names, so build errors
    // can name the resource they came from.
    // A tier the control plane sends replaces the file's tier of that name.
    raw.qos_tiers
        .retain(|t| !items.qos_tiers.iter().any(|d| d.name.value == t.name.value));
    raw.workflows
        .retain(|w| !items.workflows.iter().any(|d| d.name.value == w.name.value));
    let lists = [
        dynamic::Origin::new(
            "clusters",
            "cluster",
            raw.clusters.len(),
            items.clusters.iter().map(|c| c.name.value.clone()),
        ),
        dynamic::Origin::new(
            "routes",
            "route",
            raw.routes.len(),
            items
                .routes
                .iter()
                .map(|r| r.name.clone().unwrap_or_default()),
        ),
        dynamic::Origin::new(
            "qos_profiles",
            "QoS profile",
            raw.qos_profiles.len(),
            items.qos_profiles.iter().map(|q| q.name.value.clone()),
        ),
        dynamic::Origin::new(
            "subjects",
            "subject",
            raw.subjects.len(),
            items.subjects.iter().map(|s| s.id.value.clone()),
        ),
        dynamic::Origin::new(
            "qos_tiers",
            "QoS tier",
            raw.qos_tiers.len(),
            items.qos_tiers.iter().map(|t| t.name.value.clone()),
        ),
        dynamic::Origin::new(
            "workflows",
            "workflow",
            raw.workflows.len(),
            items.workflows.iter().map(|w| w.name.value.clone()),
        ),
    ];
    raw.clusters.extend(items.clusters);
    raw.routes.extend(items.routes);
    raw.qos_profiles.extend(items.qos_profiles);
    raw.subjects.extend(items.subjects);
    raw.qos_tiers.extend(items.qos_tiers);
    raw.workflows.extend(items.workflows);
    let mut b = Builder {
        source: source_name,
        base: base_dir,
        errors: Vec::new(),
    };
    let config = b.build(raw, text);
    if b.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(dynamic::attribute(b.errors, &lists)))
    }
}

fn deserialize<T: serde::de::DeserializeOwned>(
    text: &str,
    source_name: &str,
) -> Result<T, ConfigError> {
    let mut path = None;
    let res = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    res.map_err(|e| {
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        let (mut line, mut column) = (loc.line(), loc.column());
        let mut message = e.to_string();
        if let Some((l, c, m)) = raw::unlocate(&message) {
            (line, column, message) = (l, c, m.to_string());
        }
        // The location goes in front, in our format; drop saphyr's own copies of it.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        if let Some(rest) = message.strip_prefix("error: line ") {
            message = rest.split_once(": ").map_or(rest, |(_, m)| m).to_string();
        }
        let field = match path.as_deref() {
            None | Some(".") | Some("") => "(document)".to_string(),
            Some(p) => p.to_string(),
        };
        if let Some(key) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
        {
            (line, column) = key_location(text, line, key).unwrap_or((line, column));
        }
        ConfigError {
            source_name: source_name.into(),
            line,
            column,
            field,
            message,
        }
    })
}

/// serde-saphyr places an unknown-field error at the start of its mapping; find the key
/// itself, the first line at or after `from` that starts with `key:` (after any `- `).
fn key_location(text: &str, from: u64, key: &str) -> Option<(u64, u64)> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1) as usize)
        .find_map(|(i, l)| {
            let body = l.trim_start().trim_start_matches("- ").trim_start();
            let rest = body.strip_prefix(key)?;
            rest.trim_start()
                .starts_with(':')
                .then(|| (i as u64 + 1, (l.len() - body.len()) as u64 + 1))
        })
}

struct Builder<'a> {
    source: &'a str,
    base: Option<&'a Path>,
    errors: Vec<ConfigError>,
}

impl Builder<'_> {
    fn err(&mut self, loc: Location, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            source_name: self.source.into(),
            line: loc.line(),
            column: loc.column(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn path(&self, p: &Path) -> PathBuf {
        match self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn read(&mut self, p: &Spanned<PathBuf>, field: String) -> Option<Vec<u8>> {
        let full = self.path(&p.value);
        match std::fs::read(&full) {
            Ok(b) => Some(b),
            Err(e) => {
                self.err(
                    p.referenced,
                    field,
                    format!("cannot read {}: {e}", full.display()),
                );
                None
            }
        }
    }

    fn build(&mut self, raw: RawConfig, text: &str) -> Config {
        let listeners = self.listeners(&raw);
        let clusters = self.clusters(&raw);
        let names: HashSet<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        let tiers = self.tiers(&raw);
        let qos_profiles = self.qos_profiles(&raw, &tiers);
        let profiles: HashSet<&str> = qos_profiles.iter().map(|p| p.name.as_str()).collect();
        let routes = self.routes(&raw, &names, &profiles);
        let subjects = self.subjects(&raw, &profiles, &tiers);
        let workflows = self.workflows(&raw, &names, &profiles);
        let default_tier = self.tier_ref(&tiers, raw.default_tier.as_ref(), "default_tier");
        let workers = raw.runtime.workers.as_ref().map(|w| {
            if w.value == 0 {
                self.err(
                    w.referenced,
                    "runtime.workers",
                    "expected at least 1, found 0",
                );
            }
            w.value.max(1)
        });
        let mut positive = |v: &Option<Spanned<usize>>, field: &str, default: usize| match v {
            Some(s) if s.value == 0 => {
                self.err(s.referenced, field, "expected at least 1, found 0");
                default
            }
            Some(s) => s.value,
            None => default,
        };
        let limits = Limits {
            max_header_bytes: positive(
                &raw.limits.max_header_bytes,
                "limits.max_header_bytes",
                defaults::MAX_HEADER_BYTES,
            )
            // hyper needs room for at least one read buffer.
            .max(8192),
            max_headers: positive(
                &raw.limits.max_headers,
                "limits.max_headers",
                defaults::MAX_HEADERS,
            ),
            max_body_bytes: raw
                .limits
                .max_body_bytes
                .unwrap_or(defaults::MAX_BODY_BYTES),
            header_read_timeout: raw
                .limits
                .header_read_timeout
                .map_or(defaults::HEADER_READ_TIMEOUT, |d| d.0),
        };
        Config {
            source: self.source.into(),
            text: text.into(),
            listeners,
            admin: raw.admin.map(|a| a.address),
            workers,
            limits,
            access_log: raw.access_log.enabled,
            drain_timeout: raw
                .shutdown
                .drain_timeout
                .map_or(defaults::DRAIN_TIMEOUT, |d| d.0),
            routes,
            clusters,
            control_plane: raw
                .control_plane
                .as_ref()
                .and_then(|c| self.control_plane(c)),
            default_tier,
            tiers,
            qos_profiles,
            subjects,
            workflows,
        }
    }
}

#[cfg(test)]
mod tests;
