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
    /// the order a proxy subscribes (clusters before the routes naming them, profiles
    /// before the subjects naming them), then those only the control plane reads.
    pub const ALL: [&str; 10] = [
        CLUSTER,
        ROUTE,
        QOS_TIER,
        QOS_PROFILE,
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
        ROUTE,
        QOS_TIER,
        QOS_PROFILE,
        SUBJECT,
        WORKFLOW,
        FORECAST,
        BEHAVIOUR_PROFILE,
        WARM_POOL,
    ];
}

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
