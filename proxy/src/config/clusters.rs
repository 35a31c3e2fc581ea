//! Building the upstream clusters of a config: endpoints and their weights, TLS to
//! them, timeouts and outlier detection, with defaults filled in.

use std::collections::HashSet;

use super::raw::RawConfig;
use super::*;

impl Builder<'_> {
    pub(super) fn clusters(&mut self, raw: &RawConfig) -> Vec<ClusterSpec> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, c) in raw.clusters.iter().enumerate() {
            let f = |s: &str| format!("clusters[{i}].{s}");
            if !seen.insert(c.name.value.clone()) {
                self.err(
                    c.name.referenced,
                    f("name"),
                    format!("duplicate cluster name {:?}", c.name.value),
                );
            }
            if c.endpoints.is_empty() && !c.dynamic {
                self.err(
                    c.name.referenced,
                    f("endpoints"),
                    "expected at least one endpoint, found none",
                );
            }
            for (j, e) in c.endpoints.iter().enumerate() {
                let max = presage_api::MAX_ENDPOINT_WEIGHT;
                if e.weight == 0 || e.weight > max {
                    self.err(
                        c.name.referenced,
                        f(&format!("endpoints[{j}].weight")),
                        format!("expected 1..={max}, found {}", e.weight),
                    );
                }
            }
            let tls = c.tls.as_ref().and_then(|t| {
                if t.mesh {
                    return self.mesh_tls(raw, t, &f);
                }
                let ca_pem = match &t.ca {
                    Some(ca) => Some(self.read(ca, f("tls.ca"))?),
                    None => None,
                };
                let loc = t.ca.as_ref().map_or(c.name.referenced, |ca| ca.referenced);
                if let Some(name) = &t.server_name {
                    if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                        self.err(
                            c.name.referenced,
                            f("tls.server_name"),
                            format!("expected a DNS name or IP address, found {name:?}"),
                        );
                    }
                }
                match tls::client_config(ca_pem.as_deref()) {
                    Ok(config) => Some(ClientTlsSpec {
                        ca_pem,
                        server_name: t.server_name.clone(),
                        config,
                        mesh: false,
                    }),
                    Err(e) => {
                        self.err(loc, f("tls.ca"), e.to_string());
                        None
                    }
                }
            });
            let o = &c.outlier_detection;
            let max_percent = o
                .max_ejection_percent
                .as_ref()
                .map_or(defaults::OUTLIER_MAX_EJECTION_PERCENT, |p| p.value);
            if max_percent > 100 {
                let loc = o
                    .max_ejection_percent
                    .as_ref()
                    .map_or(c.name.referenced, |p| p.referenced);
                self.err(
                    loc,
                    f("outlier_detection.max_ejection_percent"),
                    format!("expected 0..=100, found {max_percent}"),
                );
            }
            // Timers are set at now + the limit: a limit of centuries would overflow.
            const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
            if c.idle_timeout.as_ref().is_some_and(|d| d.0 > YEAR) {
                self.err(
                    c.name.referenced,
                    f("idle_timeout"),
                    "expected at most a year (0s: no limit)",
                );
            }
            out.push(ClusterSpec {
                name: c.name.value.clone(),
                protocol: c.protocol,
                load_balancer: c.load_balancer,
                connect_timeout: c
                    .connect_timeout
                    .as_ref()
                    .map_or(defaults::CONNECT_TIMEOUT, |d| d.0),
                idle_timeout: c
                    .idle_timeout
                    .as_ref()
                    .map_or(defaults::UPSTREAM_IDLE_TIMEOUT, |d| d.0.min(YEAR)),
                tls,
                outlier: OutlierPolicy {
                    consecutive_failures: o
                        .consecutive_failures
                        .unwrap_or(defaults::OUTLIER_FAILURES),
                    base_ejection: o
                        .base_ejection
                        .as_ref()
                        .map_or(defaults::OUTLIER_BASE_EJECTION, |d| d.0),
                    max_ejection: o
                        .max_ejection
                        .as_ref()
                        .map_or(defaults::OUTLIER_MAX_EJECTION, |d| d.0),
                    max_ejection_percent: max_percent.min(100),
                },
                endpoints: c
                    .endpoints
                    .iter()
                    .map(|e| EndpointSpec {
                        authority: e.address.0.clone(),
                        weight: e.weight.max(1),
                        metadata: e.metadata.clone(),
                    })
                    .collect(),
                max_in_flight: c.max_in_flight,
                degraded: c.degraded,
                degraded_callers: c.degraded_callers.clone(),
            });
        }
        out
    }
}
