//! Endpoint health as the proxies see it: which endpoints each proxy's outlier detection
//! has ejected, from their telemetry. Combined with registry status (a registry lists
//! only live, passing instances) in `GET /v1/services/{name}/instances`.

use std::collections::HashMap;
use std::sync::Mutex;

/// A proxy's report of ejections older than this no longer counts: a proxy that stopped
/// reporting (no traffic, or gone) must not keep an endpoint marked down.
const STALE_MS: i64 = 10_000;

/// A proxy's last report: when, and the (service, address) pairs it had ejected.
type Report = (i64, Vec<(String, String)>);

#[derive(Debug, Default)]
pub struct Ejections {
    by_proxy: Mutex<HashMap<String, Report>>,
}

impl Ejections {
    /// Replaces what `node` reported before.
    pub fn record(&self, node: &str, unix_ms: i64, ejected: &[presage_api::EjectedEndpoint]) {
        let list = ejected
            .iter()
            .map(|e| (e.service.clone(), e.address.clone()))
            .collect();
        self.by_proxy
            .lock()
            .expect("ejections lock poisoned")
            .insert(node.to_string(), (unix_ms, list));
    }

    /// The proxies that have `address` of `service` ejected as of `now_ms`, sorted.
    pub fn ejected_by(&self, service: &str, address: &str, now_ms: i64) -> Vec<String> {
        let map = self.by_proxy.lock().expect("ejections lock poisoned");
        let mut v: Vec<String> = map
            .iter()
            .filter(|(_, (t, _))| now_ms - t <= STALE_MS)
            .filter(|(_, (_, l))| l.iter().any(|(s, a)| s == service && a == address))
            .map(|(node, _)| node.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_report_wins_and_old_reports_expire() {
        let e = Ejections::default();
        let web = |a: &str| presage_api::EjectedEndpoint {
            service: "web".into(),
            address: a.into(),
        };
        e.record("p1", 1_000, &[web("10.0.0.1:80")]);
        e.record("p2", 1_000, &[web("10.0.0.1:80")]);
        assert_eq!(e.ejected_by("web", "10.0.0.1:80", 2_000), ["p1", "p2"]);
        e.record("p2", 2_000, &[]);
        assert_eq!(e.ejected_by("web", "10.0.0.1:80", 2_000), ["p1"]);
        assert!(e
            .ejected_by("web", "10.0.0.1:80", 1_000 + STALE_MS + 1)
            .is_empty());
        assert!(e.ejected_by("api", "10.0.0.1:80", 2_000).is_empty());
    }
}
