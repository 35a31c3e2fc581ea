//! `presage.mesh.v1`: the protobuf types and gRPC stubs the proxy and the control plane
//! share, and nothing else (no runtime logic). The protocol and its sequence diagram are
//! in `api/README.md`; the schema is `api/proto/presage/mesh/v1/mesh.proto`.
//!
//! The Rust code in `src/gen/` is generated from the schema by `scripts/gen-api.sh` and
//! checked in, so building needs no `protoc`.
//!
//! Features: `openapi` derives `utoipa::ToSchema` on the resource types.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod codec;

#[allow(clippy::all, rust_2018_idioms)]
mod gen {
    include!("gen/presage.mesh.v1.rs");
}

pub use gen::*;

/// The resource types of the discovery stream, as `DiscoveryRequest.type_url` names them.
pub mod types {
    pub const CLUSTER: &str = "presage.mesh.v1.Cluster";
    pub const ROUTE: &str = "presage.mesh.v1.Route";
    pub const QOS_PROFILE: &str = "presage.mesh.v1.QosProfile";
    pub const FORECAST: &str = "presage.mesh.v1.Forecast";
    pub const BEHAVIOUR_PROFILE: &str = "presage.mesh.v1.BehaviourProfile";
    pub const WARM_POOL: &str = "presage.mesh.v1.WarmPool";
    pub const SUBJECT: &str = "presage.mesh.v1.Subject";
    pub const QOS_TIER: &str = "presage.mesh.v1.QosTier";
    pub const DEMAND_EVENT: &str = "presage.mesh.v1.DemandEvent";
    pub const WORKFLOW: &str = "presage.mesh.v1.Workflow";
    /// Every type the control plane stores and serves: those it pushes to proxies, in
    /// the order a proxy subscribes (what is named before what names it: clusters and
    /// profiles before the routes naming them, tiers before profiles, profiles before
    /// subjects and workflows), then those only the control plane reads.
    pub const ALL: [&str; 10] = [
        CLUSTER,
        QOS_TIER,
        QOS_PROFILE,
        ROUTE,
        SUBJECT,
        WORKFLOW,
        FORECAST,
        BEHAVIOUR_PROFILE,
        WARM_POOL,
        DEMAND_EVENT,
    ];
    /// The types a proxy subscribes to.
    pub const PUSHED: [&str; 9] = [
        CLUSTER,
        QOS_TIER,
        QOS_PROFILE,
        ROUTE,
        SUBJECT,
        WORKFLOW,
        FORECAST,
        BEHAVIOUR_PROFILE,
        WARM_POOL,
    ];
}

/// The ranges a QoS profile's numbers (and a tier's bandwidth cap) must be in, the same on both sides: the control
/// plane answers 400 outside them, the proxy rejects (or NACKs) them. Each bound keeps
/// the durations and waits the proxy derives from a profile representable.
pub mod qos_limits {
    /// `latency_p50_ms`, `latency_p99_ms` and `deadline_ms`: at most a day.
    pub const MAX_MS: f64 = 86_400_000.0;
    /// `min_throughput_rps` and `rate_limit_rps`: at most a billion per second.
    pub const MAX_RPS: f64 = 1e9;
    /// A rate limit (`rate_limit_rps` above 0) of at least one request per 1,000 s, so
    /// that the wait for a token is bounded.
    pub const MIN_RATE_LIMIT_RPS: f64 = 0.001;
    /// A tier's `bandwidth_max_mbps` above 0: from 1 kbit/s (a paced frame then waits at
    /// most minutes) to 1 Tbit/s.
    pub const MIN_BANDWIDTH_MBPS: f64 = 0.001;
    pub const MAX_BANDWIDTH_MBPS: f64 = 1e6;

    /// `None` when `v` is in range for `field` (a profile's number field, or a tier's
    /// `bandwidth_max_mbps`; any other name is taken for a fraction, as `min_accuracy`
    /// and `reliability` are), else what was expected.
    pub fn check(field: &str, v: f64) -> Option<String> {
        let (ok, want) = match field {
            "latency_p50_ms" | "latency_p99_ms" | "deadline_ms" => {
                ((0.0..=MAX_MS).contains(&v), format!("milliseconds in 0..={MAX_MS}"))
            }
            "min_throughput_rps" => ((0.0..=MAX_RPS).contains(&v), format!("a rate in 0..={MAX_RPS}")),
            "rate_limit_rps" => (
                v == 0.0 || (MIN_RATE_LIMIT_RPS..=MAX_RPS).contains(&v),
                format!("0 (no limit) or a rate in {MIN_RATE_LIMIT_RPS}..={MAX_RPS}"),
            ),
            "bandwidth_max_mbps" => (
                v == 0.0 || (MIN_BANDWIDTH_MBPS..=MAX_BANDWIDTH_MBPS).contains(&v),
                format!("0 (no cap) or megabits per second in {MIN_BANDWIDTH_MBPS}..={MAX_BANDWIDTH_MBPS}"),
            ),
            _ => ((0.0..=1.0).contains(&v), "a fraction in 0..=1".to_string()),
        };
        (!ok).then(|| format!("expected {want}, found {v:?}"))
    }
}

/// The largest endpoint weight either side takes: weighted round robin keeps a table as
/// long as its endpoints' weights added up, rebuilt with the cluster.
pub const MAX_ENDPOINT_WEIGHT: u32 = 10_000;

/// gRPC status code a NACK carries for a resource that does not validate.
pub const INVALID_ARGUMENT: i32 = 3;

impl resource::Body {
    /// The `type_url` of this body's resource type.
    pub fn type_url(&self) -> &'static str {
        use resource::Body::*;
        match self {
            Cluster(_) => types::CLUSTER,
            Route(_) => types::ROUTE,
            QosProfile(_) => types::QOS_PROFILE,
            Forecast(_) => types::FORECAST,
            BehaviourProfile(_) => types::BEHAVIOUR_PROFILE,
            WarmPool(_) => types::WARM_POOL,
            Subject(_) => types::SUBJECT,
            QosTier(_) => types::QOS_TIER,
            DemandEvent(_) => types::DEMAND_EVENT,
            Workflow(_) => types::WORKFLOW,
        }
    }
}

impl Resource {
    /// A resource whose version is a hash of its encoded body: equal content, equal
    /// version, across processes and restarts.
    pub fn new(name: impl Into<String>, body: resource::Body) -> Resource {
        let mut bytes = Vec::new();
        body.encode(&mut bytes);
        Resource {
            name: name.into(),
            version: content_version(&bytes),
            body: Some(body),
        }
    }
}

/// FNV-1a 64 of `bytes`, in hex: stable across builds (unlike `std`'s hasher), which
/// `initial_resource_versions` on reconnect relies on.
pub fn content_version(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_follows_content() {
        let a = |addr: &str| {
            Resource::new(
                "web",
                resource::Body::Cluster(Cluster {
                    name: "web".into(),
                    endpoints: vec![Endpoint {
                        address: addr.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            )
        };
        assert_eq!(a("127.0.0.1:1").version, a("127.0.0.1:1").version);
        assert_ne!(a("127.0.0.1:1").version, a("127.0.0.1:2").version);
    }

    #[test]
    fn rest_json_uses_proto_field_names_and_rejects_unknown_ones() {
        let r: Route =
            serde_json::from_str(r#"{"name":"r","match":{"path_prefix":"/a"},"cluster":"web"}"#)
                .unwrap();
        assert_eq!(r.r#match.unwrap().path_prefix, "/a");
        let err = serde_json::from_str::<Route>(r#"{"name":"r","clustr":"web"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `clustr`"), "{err}");
    }
}
