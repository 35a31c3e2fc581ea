//! The dependency map: which services each service calls, how (mandatory, optional,
//! best-effort) and how much (calls to the dependency per request of the caller), for
//! negotiating capacity along a call chain before scaling.
//!
//! ```text
//!  operators: REST /v1/dependencies, the config's `dependencies:` ─▶ manual edges (store)
//!  proxies:   telemetry (caller = a sidecar's service)            ─▶ discovered edges
//!                                                                   (`observed`, 5 min)
//!  merged: one edge per (from, to); a manual edge's kind and ratio win, a discovered
//!          one shows its observation window; discovered alone: mandatory, its ratio
//! ```

pub mod observed;

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};
use crate::validate::{self, FieldError};
pub use observed::Observation;

/// How a caller depends on a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The caller fails without it: its capacity bounds the caller's.
    #[default]
    Mandatory,
    /// The caller degrades without it (answers with less).
    Optional,
    /// Called when there is room; skipped or shed first.
    BestEffort,
}

/// An edge as an operator sets it (`PUT /v1/dependencies/{from}/{to}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    #[serde(default)]
    pub kind: Kind,
    /// Calls to the dependency per request of the caller.
    pub ratio: f64,
}

/// An edge in the config's `dependencies:` list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigEdge {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub kind: Kind,
    pub ratio: f64,
}

/// One edge of the merged map.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub kind: Kind,
    /// The manual ratio, else the discovered one (none until the caller's own requests
    /// are seen).
    pub ratio: Option<f64>,
    /// `manual`, `discovered`, or `manual+discovered`.
    pub source: &'static str,
    pub manual: Option<EdgeSpec>,
    pub discovered: Option<Observation>,
}

/// The problems with an edge, by field.
pub fn check(from: &str, to: &str, spec: &EdgeSpec) -> Vec<FieldError> {
    let mut e = Vec::new();
    validate::name(&mut e, "from", from);
    validate::name(&mut e, "to", to);
    if from == to && !from.is_empty() {
        e.push(FieldError {
            field: "to".into(),
            message: format!("a service cannot depend on itself ({from:?})"),
        });
    }
    if !(spec.ratio.is_finite() && spec.ratio >= 0.0 && spec.ratio <= 1e6) {
        e.push(FieldError {
            field: "ratio".into(),
            message: format!(
                "expected calls per request from 0 to 1000000, found {}",
                spec.ratio
            ),
        });
    }
    e
}

fn key(from: &str, to: &str) -> String {
    format!("{from} -> {to}")
}

#[derive(Debug)]
pub struct Dependencies {
    store: Store,
    manual: Mutex<BTreeMap<(String, String), EdgeSpec>>,
    observed: Mutex<observed::Observed>,
}

impl Dependencies {
    /// The map with the manual edges kept in `store`.
    pub fn load(store: Store) -> Result<Dependencies, StoreError> {
        let mut manual = BTreeMap::new();
        for (k, v) in store.dependencies()? {
            let (Some((from, to)), Ok(spec)) =
                (k.split_once(" -> "), serde_json::from_slice::<EdgeSpec>(&v))
            else {
                tracing::warn!(key = %k, "unreadable dependency edge in the store, skipped");
                continue;
            };
            manual.insert((from.to_string(), to.to_string()), spec);
        }
        Ok(Dependencies {
            store,
            manual: Mutex::new(manual),
            observed: Mutex::default(),
        })
    }

    /// Sets one manual edge, durably; the problems by field when it is not valid.
    pub fn put(
        &self,
        from: &str,
        to: &str,
        spec: EdgeSpec,
    ) -> Result<Result<(), Vec<FieldError>>, StoreError> {
        let errors = check(from, to, &spec);
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
        let json = serde_json::to_vec(&spec).expect("an edge serializes");
        self.store.put_dependency(&key(from, to), &json)?;
        self.lock_manual()
            .insert((from.to_string(), to.to_string()), spec);
        Ok(Ok(()))
    }

    /// Forgets one manual edge (a discovered one stays while it is seen); whether it was
    /// there.
    pub fn delete(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        let had = self.store.delete_dependency(&key(from, to))?;
        let was = self
            .lock_manual()
            .remove(&(from.to_string(), to.to_string()))
            .is_some();
        Ok(had || was)
    }

    /// Counts one telemetry report of a proxy fronting `from` (see `observed`).
    pub fn observe(&self, from: &str, report: &presage_api::LoadReport) {
        self.observed
            .lock()
            .expect("dependency lock poisoned")
            .record(from, report);
    }

    /// The merged map at `now_ms`, by (from, to).
    pub fn edges(&self, now_ms: i64) -> Vec<Edge> {
        let discovered = self
            .observed
            .lock()
            .expect("dependency lock poisoned")
            .edges(now_ms);
        let mut merged: BTreeMap<(String, String), Edge> = self
            .lock_manual()
            .iter()
            .map(|((from, to), spec)| {
                let edge = Edge {
                    from: from.clone(),
                    to: to.clone(),
                    kind: spec.kind,
                    ratio: Some(spec.ratio),
                    source: "manual",
                    manual: Some(spec.clone()),
                    discovered: None,
                };
                ((from.clone(), to.clone()), edge)
            })
            .collect();
        for (from, to, obs) in discovered {
            let edge = merged.entry((from.clone(), to.clone())).or_insert(Edge {
                from,
                to,
                kind: Kind::Mandatory,
                ratio: obs.ratio,
                source: "discovered",
                manual: None,
                discovered: None,
            });
            if edge.manual.is_some() {
                edge.source = "manual+discovered";
            }
            edge.discovered = Some(obs);
        }
        merged.into_values().collect()
    }

    fn lock_manual(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), EdgeSpec>> {
        self.manual.lock().expect("dependency lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_edges_persist_and_win_over_discovered_ones_which_show_their_window() {
        let dir = std::env::temp_dir().join(format!("presage-deps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&dir.join("s.redb")).unwrap();
        let deps = Dependencies::load(s.clone()).unwrap();
        let spec = EdgeSpec {
            kind: Kind::Optional,
            ratio: 3.0,
        };
        deps.put("frontend", "api", spec.clone()).unwrap().unwrap();
        let bad = deps
            .put(
                "frontend",
                "frontend",
                EdgeSpec {
                    kind: Kind::Mandatory,
                    ratio: -1.0,
                },
            )
            .unwrap()
            .unwrap_err();
        let fields: Vec<&str> = bad.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["to", "ratio"]);
        let report = |from: &str, to: &str, n: u64| {
            let r = presage_api::LoadReport {
                unix_ms: 120_000,
                services: vec![presage_api::ServiceLoad {
                    service: to.into(),
                    requests: n,
                    ..Default::default()
                }],
                ..Default::default()
            };
            deps.observe(from, &r);
        };
        report("", "frontend", 10);
        report("frontend", "api", 20);
        report("api", "db", 5);
        let edges = deps.edges(130_000);
        assert_eq!(edges.len(), 2);
        let fa = &edges[1];
        assert_eq!((fa.from.as_str(), fa.to.as_str()), ("frontend", "api"));
        assert_eq!(
            (fa.kind, fa.ratio, fa.source),
            (Kind::Optional, Some(3.0), "manual+discovered")
        );
        assert_eq!(fa.discovered.as_ref().unwrap().ratio, Some(2.0));
        let ad = &edges[0];
        assert_eq!(
            (ad.kind, ad.ratio, ad.source),
            (Kind::Mandatory, Some(0.25), "discovered")
        );
        // Kept in the store: a new map from it has the manual edge.
        let again = Dependencies::load(s).unwrap();
        let kept = again.edges(130_000);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].manual, Some(spec));
        assert!(again.delete("frontend", "api").unwrap());
        assert!(!again.delete("frontend", "api").unwrap());
        assert!(again.edges(130_000).is_empty());
        drop((deps, again));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
