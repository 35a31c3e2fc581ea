//! deploy/: the kustomize base (control plane, injector, webhook registration) and the
//! sidecar's ConfigMap build offline with `kubectl kustomize`, and validate strictly
//! against the Kubernetes OpenAPI schemas with kubernetes-validate (PyPI, bundles the
//! schemas; installed into target/py by scripts/test.sh), as do the injected golden
//! manifests. (`kubectl apply --dry-run` needs an API server, which this machine has not.)

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> PathBuf {
    let p = std::env::var_os("PRESAGE_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/py/bin/kubernetes-validate"));
    assert!(
        p.exists(),
        "{} is missing: scripts/test.sh installs kubernetes-validate there",
        p.display()
    );
    p
}

/// `kubectl kustomize DIR`, written to a file in `tmp`.
fn kustomize(dir: &str, tmp: &support::TempDir) -> PathBuf {
    let out = Command::new("kubectl")
        .args(["kustomize", root().join(dir).to_str().unwrap()])
        .output()
        .expect("kubectl is installed");
    assert!(
        out.status.success(),
        "{dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = tmp.0.join(format!("{}.yaml", dir.replace('/', "-")));
    std::fs::write(&file, &out.stdout).unwrap();
    file
}

/// Validates strictly (unknown fields are errors); returns the resources that passed.
fn validate(files: &[PathBuf]) -> Vec<String> {
    let out = Command::new(validator())
        .arg("--strict")
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");
    text.lines()
        .filter_map(|l| l.split(" passed for resource ").nth(1))
        .filter_map(|r| r.split(' ').next().map(str::to_string))
        .collect()
}

#[test]
fn the_base_builds_and_validates_and_its_control_plane_config_loads() {
    let tmp = support::TempDir::new();
    let built = kustomize("deploy/base", &tmp);
    let mut passed = validate(&[built]);
    passed.sort();
    assert_eq!(
        passed,
        [
            "clusterrolebinding/presage-control-plane-token-review",
            "configmap/presage-control-plane",
            "deployment/presage-injector",
            "mutatingwebhookconfiguration/presage-injector",
            "namespace/presage-system",
            "role/presage-discovery",
            "rolebinding/presage-discovery",
            "service/presage-control-plane",
            "service/presage-injector",
            "serviceaccount/presage-control-plane",
            "statefulset/presage-control-plane",
        ]
    );
    let cfg = presage_control_plane::config::load(&root().join("deploy/base/control-plane.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.grpc.port(), 9902);
    // Sidecars get their pod's service account's identity only.
    assert!(matches!(
        cfg.identity.attest,
        presage_control_plane::attest::AttestConfig::Kubernetes(_)
    ));
}

#[test]
fn the_sidecar_config_map_and_the_injected_manifests_validate() {
    let tmp = support::TempDir::new();
    let mut files = vec![kustomize("deploy/sidecar", &tmp)];
    for name in ["nginx-deployment", "web-statefulset", "simple-pod", "shop"] {
        files.push(support::fixture(&format!("inject/{name}.injected.yaml")));
    }
    let passed = validate(&files);
    for r in [
        "configmap/presage-sidecar",
        "deployment/nginx-deployment",
        "statefulset/web",
        "pod/nginx",
        "deployment/storefront",
        "cronjob/exporter",
    ] {
        assert!(passed.iter().any(|p| p == r), "{r} in {passed:?}");
    }
}
