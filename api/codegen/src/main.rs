//! Generates the Rust types and tonic stubs of `presage.mesh.v1` into `api/src/gen/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Types the REST API and YAML also read and write: JSON with proto field names.
    let rest = [
        "Cluster",
        "Endpoint",
        "Route",
        "RouteMatch",
        "HeaderMatch",
        "QosProfile",
        "Forecast",
        "ForecastPoint",
        "BehaviourProfile",
        "NextCall",
        "WarmPool",
        "Subject",
        "QosTier",
        "RequestRecord",
        "DemandEvent",
        "Workflow",
    ];
    let mut b = tonic_prost_build::configure()
        .out_dir(api.join("src/gen"))
        .emit_rerun_if_changed(false)
        // Smaller per-stream buffers than tonic's default (see api/src/codec.rs).
        .codec_path("crate::codec::MeshCodec");
    for t in rest {
        b = b.type_attribute(
            format!(".presage.mesh.v1.{t}"),
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)] \
             #[cfg_attr(feature = \"openapi\", derive(utoipa::ToSchema))]",
        );
    }
    b.compile_protos(
        &[api.join("proto/presage/mesh/v1/mesh.proto")],
        &[api.join("proto")],
    )?;
    Ok(())
}
