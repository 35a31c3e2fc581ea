//! Sidecar injection: adds the Presage proxy and its iptables init step to the pods of
//! Kubernetes workloads (Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
//! CronJobs and bare Pods) in a multi-document YAML stream.
//!
//! ```text
//! pod ─┬─ init: presage-init    iptables: the pod's outbound TCP ─▶ 127.0.0.1:15001,
//!      │                        except the proxy's own user (uid 1337) and its admin port;
//!      │                        inbound TCP ─▶ :15006, except to the admin port
//!      ├─ the application's containers (unchanged)
//!      └─ presage-proxy         `presage proxy --config /etc/presage/sidecar.yaml`
//!                               (transparent listeners on 15001 and 15006, admin 15000)
//! ```
//! Idempotent: a pod that already has the sidecar is left as it is. A workload or pod
//! template annotated `presage.io/inject: disabled` is left as it is. Documents that are
//! not workloads (Services, ConfigMaps, ...) and workloads left alone are copied byte
//! for byte; a changed document is written back whole (its comments are lost).
//!
//! The init step goes after the pod's own init containers: the proxy starts only once
//! they are done, so traffic of theirs redirected to it would fail.

use serde_json::{json, Value};

/// The opt-out annotation and the value that opts out.
pub const ANNOTATION: &str = "presage.io/inject";
pub const DISABLED: &str = "disabled";
/// Set on the pod template of an injected workload.
pub const INJECTED: &str = "presage.io/injected";
pub const SIDECAR: &str = "presage-proxy";
pub const INIT: &str = "presage-init";
const VOLUME: &str = "presage-config";
/// A service-account token for the control plane only (audience `presage`, an hour):
/// the proof the CA's attestation checks, useless against the API server if it leaks.
const TOKEN_VOLUME: &str = "presage-token";
pub const TOKEN_AUDIENCE: &str = "presage";

/// What goes into the pod.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    /// The proxy runs as this user; the init step's rules exempt it.
    pub proxy_uid: u32,
    /// The transparent listener the pod's outbound TCP is redirected to.
    pub outbound_port: u16,
    /// The transparent listener the pod's inbound TCP is redirected to.
    pub inbound_port: u16,
    pub admin_port: u16,
    /// The ConfigMap holding `sidecar.yaml`.
    pub config_map: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            image: format!("presage:{}", env!("CARGO_PKG_VERSION")),
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            admin_port: 15000,
            config_map: "presage-sidecar".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{source_name}: document {index} (line {line}): {message}")]
    Parse {
        source_name: String,
        index: usize,
        line: usize,
        message: String,
    },
    #[error("{source_name}: document {index}: {message}")]
    Shape {
        source_name: String,
        index: usize,
        message: String,
    },
}

/// The iptables commands of the init step: every TCP connection the pod opens goes to
/// the proxy's outbound listener, except the proxy's own and those to its admin port;
/// every TCP connection to the pod goes to its inbound listener, except to the admin
/// port (the kubelet's probes).
pub fn iptables_script(o: &Options) -> String {
    [
        "iptables -t nat -N PRESAGE_INBOUND".to_string(),
        format!(
            "iptables -t nat -A PRESAGE_INBOUND -p tcp --dport {} -j RETURN",
            o.admin_port
        ),
        format!(
            "iptables -t nat -A PRESAGE_INBOUND -p tcp -j REDIRECT --to-ports {}",
            o.inbound_port
        ),
        "iptables -t nat -A PREROUTING -p tcp -j PRESAGE_INBOUND".to_string(),
        "iptables -t nat -N PRESAGE_OUTPUT".to_string(),
        format!(
            "iptables -t nat -A PRESAGE_OUTPUT -m owner --uid-owner {} -j RETURN",
            o.proxy_uid
        ),
        format!(
            "iptables -t nat -A PRESAGE_OUTPUT -p tcp -d 127.0.0.1/32 --dport {} -j RETURN",
            o.admin_port
        ),
        format!(
            "iptables -t nat -A PRESAGE_OUTPUT -p tcp -j REDIRECT --to-ports {}",
            o.outbound_port
        ),
        "iptables -t nat -A OUTPUT -p tcp -j PRESAGE_OUTPUT".to_string(),
    ]
    .join(" && ")
}

/// Injects every workload of a multi-document YAML stream; `source_name` names it in
/// errors. Returns the stream and how many pods were injected.
pub fn inject_stream(
    text: &str,
    source_name: &str,
    o: &Options,
) -> Result<(String, usize), InjectError> {
    let mut out = String::with_capacity(text.len() + 2048);
    let mut injected = 0;
    for (index, (doc, first_line)) in documents(text).into_iter().enumerate() {
        let body: String = doc
            .lines()
            .filter(|l| !is_separator(l))
            .collect::<Vec<_>>()
            .join("\n");
        let meaningful = body
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if !meaningful {
            out.push_str(doc);
            continue;
        }
        let mut value: Value = serde_saphyr::from_str(&body).map_err(|e| InjectError::Parse {
            source_name: source_name.to_string(),
            index,
            line: first_line,
            message: e.to_string(),
        })?;
        let changed = inject_document(&mut value, o).map_err(|message| InjectError::Shape {
            source_name: source_name.to_string(),
            index,
            message,
        })?;
        if !changed {
            out.push_str(doc);
            continue;
        }
        injected += 1;
        if doc.lines().next().is_some_and(is_separator) {
            out.push_str("---\n");
        }
        let yaml = serde_saphyr::to_string(&value).map_err(|e| InjectError::Shape {
            source_name: source_name.to_string(),
            index,
            message: e.to_string(),
        })?;
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok((out, injected))
}

fn is_separator(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// The stream cut before each `---` line: each piece with the line it starts on.
fn documents(text: &str) -> Vec<(&str, usize)> {
    let mut docs = Vec::new();
    let (mut start, mut start_line) = (0, 1);
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line.trim_end_matches(['\n', '\r'])) && offset > start {
            docs.push((&text[start..offset], start_line));
            start = offset;
            start_line = i + 1;
        }
        offset += line.len();
    }
    if start < text.len() {
        docs.push((&text[start..], start_line));
    }
    docs
}

/// Injects one document if it is a workload that wants it; Ok(false) if left alone.
pub fn inject_document(doc: &mut Value, o: &Options) -> Result<bool, String> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    if opted_out(&doc["metadata"]) {
        return Ok(false);
    }
    let pod = match kind.as_str() {
        "Pod" => Some(doc),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.pointer_mut("/spec/template")
        }
        "CronJob" => doc.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => return Ok(false),
    };
    let Some(pod) = pod.filter(|p| p.is_object()) else {
        return Err(format!("{kind} has no pod template (a mapping)"));
    };
    // The pod's (or template's) metadata apart from its spec, to change both.
    let mut meta = pod["metadata"].take();
    let changed = inject_pod(&mut meta, pod, o);
    if meta.is_null() {
        pod.as_object_mut().map(|t| t.remove("metadata"));
    } else {
        pod["metadata"] = meta;
    }
    changed
}

fn opted_out(meta: &Value) -> bool {
    meta.pointer(&format!("/annotations/{}", ANNOTATION.replace('/', "~1")))
        .and_then(Value::as_str)
        == Some(DISABLED)
}

/// Injects a pod's `spec`, given its `meta`data (taken out of it).
fn inject_pod(meta: &mut Value, pod: &mut Value, o: &Options) -> Result<bool, String> {
    if opted_out(meta) {
        return Ok(false);
    }
    let spec = &mut pod["spec"];
    let containers = spec["containers"]
        .as_array()
        .ok_or("the pod has no containers")?;
    if containers.iter().any(|c| c["name"] == SIDECAR) {
        return Ok(false);
    }
    push(spec, "initContainers", init_container(o));
    push(spec, "containers", sidecar(o));
    push(
        spec,
        "volumes",
        json!({"name": VOLUME, "configMap": {"name": o.config_map}}),
    );
    push(
        spec,
        "volumes",
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token"
        }}]}}),
    );
    if meta.is_null() {
        *meta = json!({});
    }
    let annotations = &mut meta["annotations"];
    if annotations.is_null() {
        *annotations = json!({});
    }
    annotations[INJECTED] = json!("true");
    Ok(true)
}

fn push(spec: &mut Value, key: &str, item: Value) {
    match spec[key].as_array_mut() {
        Some(list) => list.push(item),
        None => spec[key] = json!([item]),
    }
}

fn init_container(o: &Options) -> Value {
    json!({
        "name": INIT,
        "image": o.image,
        "command": ["sh", "-c", iptables_script(o)],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

fn sidecar(o: &Options) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    json!({
        "name": SIDECAR,
        "image": o.image,
        "args": ["proxy", "--config", "/etc/presage/sidecar.yaml"],
        "env": [
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            // With POD_NAMESPACE, the workload identity the proxy asks the CA for.
            {"name": "POD_SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
        ],
        "ports": [{"name": "presage-admin", "containerPort": o.admin_port}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": o.admin_port}},
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
        "securityContext": {
            "runAsUser": o.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": VOLUME, "mountPath": "/etc/presage", "readOnly": true},
            // Where the proxy's `control_plane.identity.token_file` defaults to.
            {"name": TOKEN_VOLUME, "mountPath": "/var/run/secrets/presage", "readOnly": true},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx
";

    #[test]
    fn a_deployment_gets_the_sidecar_the_init_step_and_the_volume_once() {
        let o = Options::default();
        let (once, n) = inject_stream(DEPLOYMENT, "d.yaml", &o).unwrap();
        assert_eq!(n, 1);
        let v: Value = serde_saphyr::from_str(&once).unwrap();
        let spec = &v["spec"]["template"]["spec"];
        let names: Vec<&str> = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web", SIDECAR]);
        assert_eq!(spec["initContainers"][0]["name"], INIT);
        assert_eq!(spec["volumes"][0]["configMap"]["name"], "presage-sidecar");
        assert_eq!(
            v["spec"]["template"]["metadata"]["annotations"][INJECTED],
            "true"
        );
        let (twice, n) = inject_stream(&once, "d.yaml", &o).unwrap();
        assert_eq!((twice.as_str(), n), (once.as_str(), 0), "idempotent");
    }

    #[test]
    fn opted_out_workloads_and_other_documents_are_copied_byte_for_byte() {
        let o = Options::default();
        let text = "# leading comment\napiVersion: v1\nkind: Service\nmetadata: {name: web}  # keep me\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: quiet\n  annotations: {presage.io/inject: disabled}\nspec:\n  template:\n    spec:\n      containers: [{name: a, image: a}]\n";
        let (out, n) = inject_stream(text, "x.yaml", &o).unwrap();
        assert_eq!((out.as_str(), n), (text, 0));
    }

    #[test]
    fn bad_documents_are_named() {
        let o = Options::default();
        let e = inject_stream("kind: Service\n---\nkind: [oops\n", "bad.yaml", &o).unwrap_err();
        assert!(
            e.to_string().starts_with("bad.yaml: document 1 (line 2)"),
            "{e}"
        );
        let e = inject_stream(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n",
            "p.yaml",
            &o,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.yaml: document 0: the pod has no containers"
        );
    }
}
