//! The YAML schema exactly as users write it: what serde reads, nothing more.
//!
//! Every struct denies unknown fields and none uses `flatten` (flatten breaks both the
//! unknown-field check and error locations). Scalars that must be parsed (durations,
//! regexes, header names, addresses) are newtypes whose `Deserialize` parses them, so a bad
//! value fails *during* deserialization and the error carries its line and column. Values
//! checked across fields later (references, duplicates, files) are `Spanned` so validation
//! can still point at them. Turning this into runnable types is `config::build`'s job.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub access_log: RawAccessLog,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub clusters: Vec<RawCluster>,
    pub control_plane: Option<RawControlPlane>,
    #[serde(default)]
    pub qos_profiles: Vec<RawQosProfile>,
    #[serde(default)]
    pub subjects: Vec<RawSubject>,
    /// Tier of requests that resolve to no profile; default bronze.
    pub default_tier: Option<Spanned<String>>,
    /// Tier settings the proxy uses (the control plane pushes its `QosTier`s here).
    #[serde(default)]
    pub qos_tiers: Vec<RawQosTier>,
    /// Composite services (see `config::workflows`).
    #[serde(default)]
    pub workflows: Vec<presage_workflow::RawWorkflow>,
}

/// A tier's rank, admission share and bandwidth cap (the rest of a `QosTier` is for the
/// planner). A default tier's fields may be left out; a new tier needs all but the cap.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQosTier {
    pub name: Spanned<String>,
    pub priority: Option<Spanned<i32>>,
    pub admission_share: Option<Spanned<f64>>,
    /// Cap on each response stream of the tier, megabits per second (0: none).
    pub bandwidth_max_mbps: Option<Spanned<f64>>,
}

/// A QoS profile (the control plane's `QosProfile`, same field names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQosProfile {
    pub name: Spanned<String>,
    /// Default bronze.
    pub tier: Option<Spanned<String>>,
    pub latency_p50_ms: Option<Spanned<f64>>,
    pub latency_p99_ms: Option<Spanned<f64>>,
    pub min_throughput_rps: Option<Spanned<f64>>,
    pub min_accuracy: Option<Spanned<f64>>,
    pub reliability: Option<Spanned<f64>>,
    pub rate_limit_rps: Option<Spanned<f64>>,
    pub deadline_ms: Option<Spanned<f64>>,
}

/// A user's or tenant's assignment to a profile or a tier.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubject {
    pub id: Spanned<String>,
    #[serde(default)]
    pub kind: super::SubjectKind,
    pub profile: Option<Spanned<String>>,
    pub tier: Option<Spanned<String>>,
}

/// Where the control plane is, and how this proxy talks to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControlPlane {
    /// `http://host:port` of the control plane's gRPC server.
    pub address: Spanned<String>,
    /// Unique per proxy; default `hostname-pid`.
    pub node_id: Option<String>,
    /// The service this proxy is a sidecar of.
    pub service: Option<String>,
    pub report_interval: Option<Dur>,
    /// Header naming the user, for per-user transitions; default `x-presage-user`.
    pub user_header: Option<HeaderName>,
    /// Fraction of user requests whose transition is reported, 0..=1; default 1.
    pub transition_sample_rate: Option<Spanned<f64>>,
    /// Reports kept while the control plane is slow or away; the oldest go first.
    pub max_buffered_reports: Option<Spanned<usize>>,
    /// How long `/ready` waits for the first resources before the proxy serves what it has.
    pub initial_fetch_timeout: Option<Dur>,
    /// Get a workload certificate from the control plane's CA (mutual TLS in the mesh).
    pub identity: Option<RawIdentity>,
}

/// The workload the certificate is for: `spiffe://<trust domain>/ns/NAMESPACE/sa/ACCOUNT`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Default: `$POD_NAMESPACE`, else `default`.
    pub namespace: Option<Spanned<String>>,
    /// Default: `$POD_SERVICE_ACCOUNT`, else `default`.
    pub service_account: Option<Spanned<String>>,
    /// The service-account token sent to prove it (default: the one `presage inject`
    /// mounts for the control plane's audience).
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub address: SocketAddr,
    pub tls: Option<RawServerTls>,
    /// Takes connections redirected by iptables (sidecar capture).
    pub transparent: Option<Spanned<bool>>,
    /// With `transparent`: the pod's inbound traffic, always passed to the local
    /// application (routes are for outbound traffic).
    #[serde(default)]
    pub inbound: bool,
    /// Rules on the peer's mesh identity, first match decides (none matching: allowed).
    #[serde(default)]
    pub authorization: Vec<RawAuthzRule>,
    /// Whose `x-presage-*` request headers are believed.
    #[serde(default)]
    pub qos_headers: super::QosHeaders,
}

/// Allow or deny requests that match, by the calling workload's SPIFFE ID. Patterns
/// are exact IDs or end in `*` (a prefix: `spiffe://presage.local/ns/shop/*`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthzRule {
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// When not empty, only these may call (plain or unauthenticated callers may not).
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// These may not call; checked before `allow`.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert: Spanned<PathBuf>,
    pub key: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: SocketAddr,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// Worker threads; default: one per CPU.
    pub workers: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<Spanned<usize>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub drain_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub cluster: Spanned<String>,
    pub rewrite: Option<RawRewrite>,
    pub timeout: Option<Dur>,
    pub retries: Option<RawRetries>,
    #[serde(default)]
    pub request_headers: RawHeaderOps,
    #[serde(default)]
    pub response_headers: RawHeaderOps,
    /// Profile of requests that name none (header) and whose subject has none.
    pub qos_profile: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// `example.com` (exact) or `*.example.com` (any subdomain).
    pub host: Option<Spanned<String>>,
    pub path: Option<RawPathMatch>,
    #[serde(default)]
    pub methods: Vec<Method>,
    #[serde(default)]
    pub headers: Vec<RawHeaderMatch>,
}

/// Exactly one of the three.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum RawPathMatch {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: HeaderName,
    /// Exact value; when absent the header only has to be present.
    pub value: Option<String>,
    pub regex: Option<Pattern>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    /// Replaces the matched path prefix (route must match by `path.prefix`).
    pub prefix: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub attempts: Option<u32>,
    pub budget_percent: Option<Spanned<f32>>,
    pub backoff: Option<Dur>,
    pub max_backoff: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    #[serde(default)]
    pub add: BTreeMap<HeaderName, HeaderValue>,
    #[serde(default)]
    pub remove: Vec<HeaderName>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: Spanned<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    pub connect_timeout: Option<Dur>,
    /// How long a response body may wait for its upstream's next bytes (`0s`: forever).
    pub idle_timeout: Option<Dur>,
    pub tls: Option<RawClientTls>,
    #[serde(default)]
    pub outlier_detection: RawOutlier,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    /// Requests in flight above which tiers are shed, lowest first (0: no limit).
    #[serde(default)]
    pub max_in_flight: usize,
    /// A degraded dependency: `optional` sheds the lowest tier's requests to it,
    /// `best_effort` refuses all of them at once.
    #[serde(default)]
    pub degraded: Option<super::Degraded>,
    /// The callers shed (sidecars whose `control_plane.service` is listed); empty: all.
    #[serde(default)]
    pub degraded_callers: Vec<String>,
    /// From the control plane: may have no endpoints (all instances gone answers 503).
    #[serde(skip)]
    pub dynamic: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive; the default.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c) or over TLS (needed for gRPC).
    Http2,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency; the default.
    #[default]
    PeakEwma,
    WeightedRoundRobin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    /// PEM bundle of trusted roots; default: the Mozilla roots (webpki-roots).
    pub ca: Option<Spanned<PathBuf>>,
    /// SNI and certificate name; default: the endpoint's host.
    pub server_name: Option<String>,
    /// The endpoints are mesh sidecars: mutual TLS with this proxy's workload
    /// certificate, theirs checked against the mesh CA (needs `control_plane.identity`).
    #[serde(default)]
    pub mesh: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<u32>,
    pub base_ejection: Option<Dur>,
    pub max_ejection: Option<Dur>,
    pub max_ejection_percent: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub address: Authority,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

fn default_weight() -> u32 {
    1
}

// === parsed scalars ===

/// Marks a custom error message with its location. serde-saphyr leaves custom errors
/// without one, so the location travels in the message and `config::deserialize` takes it
/// out again (`unlocate`).
const MARK: char = '\u{1}';

fn located(loc: serde_saphyr::Location, msg: &str) -> String {
    format!("{MARK}{}:{}{MARK}{msg}", loc.line(), loc.column())
}

/// Splits a message made by `located` into `(line, column, message)`.
pub(crate) fn unlocate(msg: &str) -> Option<(u64, u64, &str)> {
    let start = msg.find(MARK)?;
    let rest = &msg[start + 1..];
    let end = rest.find(MARK)?;
    let (line, col) = rest[..end].split_once(':')?;
    Some((line.parse().ok()?, col.parse().ok()?, &rest[end + 1..]))
}

/// Parses a scalar with `FromStr` while deserializing, so its error carries a location.
macro_rules! parsed_scalar {
    ($(#[$doc:meta])* $name:ident($inner:ty), $expecting:literal, $parse:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name(pub $inner);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Spanned::<String>::deserialize(d)?;
                let parse: fn(&str) -> Result<$inner, String> = $parse;
                parse(&s.value).map($name).map_err(|e| {
                    let msg = format!("expected {}, found {:?}: {e}", $expecting, s.value);
                    de::Error::custom(located(s.referenced, &msg))
                })
            }
        }
    };
}

parsed_scalar!(
    /// A duration such as `250ms`, `5s` or `1m 30s`.
    Dur(Duration),
    "a duration like 250ms or 5s",
    |s| humantime::parse_duration(s).map_err(|e| e.to_string())
);
parsed_scalar!(
    /// A regular expression, matched against the whole value.
    Pattern(regex::Regex),
    "a regular expression",
    |s| regex::Regex::new(&format!("^(?:{s})$")).map_err(|e| e.to_string())
);
parsed_scalar!(
    /// An HTTP header name (stored lowercase).
    HeaderName(http::HeaderName),
    "an HTTP header name",
    |s| http::HeaderName::from_bytes(s.as_bytes()).map_err(|e| e.to_string())
);
parsed_scalar!(
    /// An HTTP header value.
    HeaderValue(http::HeaderValue),
    "a header value of visible ASCII",
    |s| http::HeaderValue::from_str(s).map_err(|e| e.to_string())
);
parsed_scalar!(
    /// `host:port` of an upstream endpoint.
    Authority(http::uri::Authority),
    "host:port",
    |s| {
        let a: http::uri::Authority = s.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
        if a.port_u16().is_none() {
            return Err("the port is missing".into());
        }
        Ok(a)
    }
);
parsed_scalar!(
    /// An HTTP method.
    Method(http::Method),
    "an HTTP method",
    |s| http::Method::from_bytes(s.as_bytes()).map_err(|e| e.to_string())
);

impl PartialEq for Dur {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl PartialEq for Authority {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl PartialEq for HeaderName {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl Eq for HeaderName {}
impl PartialOrd for HeaderName {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeaderName {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.as_str().cmp(o.0.as_str())
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
