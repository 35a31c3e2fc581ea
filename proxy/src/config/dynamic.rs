//! Resources from the control plane (`presage.mesh.v1`), merged into the static YAML
//! config. Each wire resource is turned into the YAML schema's own raw type and goes
//! through the same validation as the file, so the two sources cannot disagree on what
//! is valid; an error in a dynamic resource names it (`cluster "web": endpoints[0]...`)
//! and becomes the NACK's text.
//!
//! Dynamic clusters are added after the static ones (a name clash is an error); dynamic
//! routes are matched after the static routes, in ascending `(order, name)`.
//! QoS profiles and subjects are appended to the YAML's `qos_profiles` and `subjects`;
//! a workflow replaces the file's of the same name.
//! Types the proxy does not act on yet (forecasts, behaviour profiles, warm pools) are
//! kept as received and shown on the admin `/config/dynamic`.

use std::collections::BTreeMap;

use presage_api::{
    resource::Body, Cluster, QosProfile, QosTier, Resource, Route, Subject, Workflow,
};
use serde_json::{json, Map, Value};

use super::raw::{RawCluster, RawQosProfile, RawQosTier, RawRoute, RawSubject};
use super::ConfigError;

/// Everything received from the control plane, by type and name.
#[derive(Debug, Default, Clone)]
pub struct Dynamic {
    pub clusters: BTreeMap<String, Cluster>,
    pub routes: BTreeMap<String, Route>,
    pub qos_profiles: BTreeMap<String, QosProfile>,
    pub subjects: BTreeMap<String, Subject>,
    pub qos_tiers: BTreeMap<String, QosTier>,
    pub workflows: BTreeMap<String, Workflow>,
    /// Every resource (the two above included) by type, for versions and the admin view.
    pub resources: BTreeMap<&'static str, BTreeMap<String, Resource>>,
}

impl Dynamic {
    /// Applies one response's changes: upserts and removals of one type.
    pub fn apply(&mut self, type_url: &'static str, upserts: Vec<Resource>, removed: &[String]) {
        let table = self.resources.entry(type_url).or_default();
        for name in removed {
            table.remove(name);
            match type_url {
                presage_api::types::CLUSTER => {
                    self.clusters.remove(name);
                }
                presage_api::types::ROUTE => {
                    self.routes.remove(name);
                }
                presage_api::types::QOS_PROFILE => {
                    self.qos_profiles.remove(name);
                }
                presage_api::types::SUBJECT => {
                    self.subjects.remove(name);
                }
                presage_api::types::QOS_TIER => {
                    self.qos_tiers.remove(name);
                }
                presage_api::types::WORKFLOW => {
                    self.workflows.remove(name);
                }
                _ => {}
            }
        }
        for r in upserts {
            match &r.body {
                Some(Body::Cluster(c)) => {
                    self.clusters.insert(r.name.clone(), c.clone());
                }
                Some(Body::Route(rt)) => {
                    self.routes.insert(r.name.clone(), rt.clone());
                }
                Some(Body::QosProfile(q)) => {
                    self.qos_profiles.insert(r.name.clone(), q.clone());
                }
                Some(Body::Subject(sj)) => {
                    self.subjects.insert(r.name.clone(), sj.clone());
                }
                Some(Body::QosTier(t)) => {
                    self.qos_tiers.insert(r.name.clone(), t.clone());
                }
                Some(Body::Workflow(w)) => {
                    self.workflows.insert(r.name.clone(), w.clone());
                }
                _ => {}
            }
            table.insert(r.name.clone(), r);
        }
    }

    /// Name -> version of every resource of a type, for `initial_resource_versions`.
    pub fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        self.resources
            .get(type_url)
            .map(|t| {
                t.iter()
                    .map(|(n, r)| (n.clone(), r.version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Routes in match order.
    pub(super) fn ordered_routes(&self) -> Vec<&Route> {
        let mut v: Vec<&Route> = self.routes.values().collect();
        v.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
        v
    }
}

fn ms(v: u32) -> String {
    format!("{v}ms")
}

fn headers_add(m: &std::collections::HashMap<String, String>) -> Value {
    let add: Map<String, Value> = m.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({ "add": add })
}

/// The YAML schema's form of a wire cluster (JSON is YAML).
pub(super) fn cluster_doc(c: &Cluster) -> String {
    let mut o = Map::new();
    o.insert("name".into(), json!(c.name));
    if !c.protocol.is_empty() {
        o.insert("protocol".into(), json!(c.protocol));
    }
    if !c.load_balancer.is_empty() {
        o.insert("load_balancer".into(), json!(c.load_balancer));
    }
    if c.connect_timeout_ms > 0 {
        o.insert("connect_timeout".into(), json!(ms(c.connect_timeout_ms)));
    }
    if c.max_in_flight > 0 {
        o.insert("max_in_flight".into(), json!(c.max_in_flight));
    }
    if c.mesh_tls {
        o.insert("tls".into(), json!({ "mesh": true }));
    }
    if !c.degraded.is_empty() {
        o.insert("degraded".into(), json!(c.degraded));
    }
    if !c.degraded_callers.is_empty() {
        o.insert("degraded_callers".into(), json!(c.degraded_callers));
    }
    let eps: Vec<Value> = c
        .endpoints
        .iter()
        .map(|e| {
            let meta: Map<String, Value> = e
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({ "address": e.address, "weight": e.weight.max(1), "metadata": meta })
        })
        .collect();
    o.insert("endpoints".into(), Value::Array(eps));
    Value::Object(o).to_string()
}

/// The YAML schema's form of a wire route.
pub(super) fn route_doc(r: &Route) -> String {
    let m = r.r#match.clone().unwrap_or_default();
    let mut mo = Map::new();
    if !m.host.is_empty() {
        mo.insert("host".into(), json!(m.host));
    }
    for (k, v) in [
        ("exact", &m.path_exact),
        ("prefix", &m.path_prefix),
        ("regex", &m.path_regex),
    ] {
        if !v.is_empty() {
            mo.insert("path".into(), json!({ k: v }));
        }
    }
    if !m.methods.is_empty() {
        mo.insert("methods".into(), json!(m.methods));
    }
    if !m.headers.is_empty() {
        let hs: Vec<Value> = m
            .headers
            .iter()
            .map(|h| {
                if h.value.is_empty() {
                    json!({ "name": h.name })
                } else {
                    json!({ "name": h.name, "value": h.value })
                }
            })
            .collect();
        mo.insert("headers".into(), Value::Array(hs));
    }
    let mut o = Map::new();
    o.insert("name".into(), json!(r.name));
    o.insert("match".into(), Value::Object(mo));
    o.insert("cluster".into(), json!(r.cluster));
    if !r.rewrite_prefix.is_empty() {
        o.insert("rewrite".into(), json!({ "prefix": r.rewrite_prefix }));
    }
    if r.timeout_ms > 0 {
        o.insert("timeout".into(), json!(ms(r.timeout_ms)));
    }
    if r.retry_attempts > 0 {
        o.insert("retries".into(), json!({ "attempts": r.retry_attempts }));
    }
    if !r.qos_profile.is_empty() {
        o.insert("qos_profile".into(), json!(r.qos_profile));
    }
    if !r.add_request_headers.is_empty() {
        o.insert(
            "request_headers".into(),
            headers_add(&r.add_request_headers),
        );
    }
    if !r.add_response_headers.is_empty() {
        o.insert(
            "response_headers".into(),
            headers_add(&r.add_response_headers),
        );
    }
    Value::Object(o).to_string()
}

/// The YAML schema's form of a wire QoS profile (an empty tier is the default).
pub(super) fn qos_profile_doc(q: &QosProfile) -> String {
    let mut v = json!({
        "name": q.name,
        "latency_p50_ms": q.latency_p50_ms,
        "latency_p99_ms": q.latency_p99_ms,
        "min_throughput_rps": q.min_throughput_rps,
        "min_accuracy": q.min_accuracy,
        "reliability": q.reliability,
        "rate_limit_rps": q.rate_limit_rps,
        "deadline_ms": q.deadline_ms,
    });
    if !q.tier.is_empty() {
        v["tier"] = json!(q.tier);
    }
    v.to_string()
}

/// The YAML schema's form of a wire subject (empty fields left out).
pub(super) fn subject_doc(s: &Subject) -> String {
    let mut v = json!({ "id": s.id });
    for (k, x) in [
        ("kind", &s.kind),
        ("profile", &s.profile),
        ("tier", &s.tier),
    ] {
        if !x.is_empty() {
            v[k] = json!(x);
        }
    }
    v.to_string()
}

/// Names the dynamic resource an error is in: `cluster "web"` as the source, the field
/// relative to the resource.
fn relabel(mut e: ConfigError, kind: &str, name: &str, prefix: &str) -> ConfigError {
    e.source_name = format!("{kind} {name:?}");
    e.line = 0;
    e.column = 0;
    e.field = e
        .field
        .strip_prefix(prefix)
        .map(|f| f.trim_start_matches('.').to_string())
        .unwrap_or(e.field);
    if e.field.is_empty() || e.field == "(document)" {
        e.field = "(resource)".into();
    }
    e
}

/// Every dynamic resource in its raw form.
#[derive(Default)]
pub(super) struct RawItems {
    pub clusters: Vec<RawCluster>,
    pub routes: Vec<RawRoute>,
    pub qos_profiles: Vec<RawQosProfile>,
    pub subjects: Vec<RawSubject>,
    pub qos_tiers: Vec<RawQosTier>,
    pub workflows: Vec<presage_workflow::RawWorkflow>,
}

/// Converts every dynamic resource to its raw form; errors name the resource.
pub(super) fn raw_items(d: &Dynamic) -> (RawItems, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut clusters = Vec::new();
    for c in d.clusters.values() {
        match super::deserialize::<RawCluster>(&cluster_doc(c), "xds") {
            Ok(mut raw) => {
                raw.dynamic = true;
                clusters.push(raw);
            }
            Err(e) => errors.push(relabel(e, "cluster", &c.name, "")),
        }
    }
    let mut routes = Vec::new();
    for r in d.ordered_routes() {
        match super::deserialize::<RawRoute>(&route_doc(r), "xds") {
            Ok(raw) => routes.push(raw),
            Err(e) => errors.push(relabel(e, "route", &r.name, "")),
        }
    }
    let mut qos_profiles = Vec::new();
    for (name, q) in &d.qos_profiles {
        match super::deserialize::<RawQosProfile>(&qos_profile_doc(q), "xds") {
            Ok(raw) => qos_profiles.push(raw),
            Err(e) => errors.push(relabel(e, "QoS profile", name, "")),
        }
    }
    let mut subjects = Vec::new();
    for (name, s) in &d.subjects {
        match super::deserialize::<RawSubject>(&subject_doc(s), "xds") {
            Ok(raw) => subjects.push(raw),
            Err(e) => errors.push(relabel(e, "subject", name, "")),
        }
    }
    let mut qos_tiers = Vec::new();
    for (name, t) in &d.qos_tiers {
        let doc = json!({
            "name": t.name,
            "priority": t.priority,
            "admission_share": t.admission_share,
            "bandwidth_max_mbps": t.bandwidth_max_mbps,
        })
        .to_string();
        match super::deserialize::<RawQosTier>(&doc, "xds") {
            Ok(raw) => qos_tiers.push(raw),
            Err(e) => errors.push(relabel(e, "QoS tier", name, "")),
        }
    }
    let mut workflows = Vec::new();
    for (name, w) in &d.workflows {
        // The definition as users wrote it: the same schema as the file's `workflows[]`.
        match super::deserialize::<presage_workflow::RawWorkflow>(&w.definition, "xds") {
            Ok(raw) if raw.name.value == *name => workflows.push(raw),
            Ok(raw) => errors.push(relabel(
                ConfigError {
                    source_name: String::new(),
                    line: 0,
                    column: 0,
                    field: "name".into(),
                    message: format!("the definition names {:?}", raw.name.value),
                },
                "workflow",
                name,
                "",
            )),
            Err(e) => errors.push(relabel(e, "workflow", name, "")),
        }
    }
    let items = RawItems {
        clusters,
        routes,
        qos_profiles,
        subjects,
        qos_tiers,
        workflows,
    };
    (items, errors)
}

/// Where a merged list's dynamic resources start, and their names.
pub(super) struct Origin {
    list: &'static str,
    kind: &'static str,
    base: usize,
    names: Vec<String>,
}

impl Origin {
    pub fn new(
        list: &'static str,
        kind: &'static str,
        base: usize,
        names: impl Iterator<Item = String>,
    ) -> Origin {
        Origin {
            list,
            kind,
            base,
            names: names.collect(),
        }
    }
}

/// Re-attributes build errors in the merged lists to the dynamic resources they came
/// from (indices at or past the static counts).
pub(super) fn attribute(errors: Vec<ConfigError>, origins: &[Origin]) -> Vec<ConfigError> {
    errors
        .into_iter()
        .map(|e| {
            for o in origins {
                let Some(rest) = e
                    .field
                    .strip_prefix(o.list)
                    .and_then(|r| r.strip_prefix('['))
                else {
                    continue;
                };
                let Some((idx, tail)) = rest.split_once(']') else {
                    continue;
                };
                if let Some(i) = idx
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| i.checked_sub(o.base))
                {
                    if let Some(name) = o.names.get(i) {
                        let tail = tail.to_string();
                        let mut e = relabel(e, o.kind, name, "");
                        e.field = tail.trim_start_matches('.').to_string();
                        if e.field.is_empty() {
                            e.field = "(resource)".into();
                        }
                        return e;
                    }
                }
            }
            e
        })
        .collect()
}
