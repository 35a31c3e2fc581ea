//! The `control_plane:` section: where the control plane is and how this proxy talks to
//! it, and the workload identity it asks for (checked like every other section, errors
//! located in the file).

use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::{defaults, raw, Builder, ControlPlaneSpec, IdentitySpec};

/// `hostname-pid`: unique per proxy process on a machine and readable in `/v1/proxies`.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "proxy".into());
    format!("{host}-{}", std::process::id())
}

impl Builder<'_> {
    pub(super) fn control_plane(&mut self, c: &raw::RawControlPlane) -> Option<ControlPlaneSpec> {
        let address = match c.address.value.parse::<http::Uri>() {
            // Plaintext gRPC only for now: the mesh runs it on loopback or a private network.
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => u,
            _ => {
                self.err(
                    c.address.referenced,
                    "control_plane.address",
                    format!(
                        "expected a URL like http://127.0.0.1:9902 (TLS to the control plane is not supported yet), found {:?}",
                        c.address.value
                    ),
                );
                return None;
            }
        };
        let rate = c.transition_sample_rate.as_ref().map_or(1.0, |r| {
            if !(0.0..=1.0).contains(&r.value) {
                self.err(
                    r.referenced,
                    "control_plane.transition_sample_rate",
                    format!("expected a fraction in 0..=1, found {}", r.value),
                );
            }
            r.value
        });
        let buffered =
            c.max_buffered_reports
                .as_ref()
                .map_or(defaults::MAX_BUFFERED_REPORTS, |b| {
                    if b.value == 0 {
                        self.err(
                            b.referenced,
                            "control_plane.max_buffered_reports",
                            "expected at least 1, found 0",
                        );
                    }
                    b.value.max(1)
                });
        let identity = c.identity.as_ref().map(|id| self.identity(id));
        Some(ControlPlaneSpec {
            address,
            identity,
            node_id: c.node_id.clone().unwrap_or_else(default_node_id),
            service: c.service.clone().unwrap_or_default(),
            report_interval: c
                .report_interval
                .as_ref()
                .map_or(defaults::REPORT_INTERVAL, |d| {
                    d.0.max(Duration::from_millis(10))
                }),
            user_header: c.user_header.as_ref().map_or_else(
                || http::HeaderName::from_static(defaults::USER_HEADER),
                |h| h.0.clone(),
            ),
            transition_sample_rate: rate,
            max_buffered_reports: buffered,
            initial_fetch_timeout: c
                .initial_fetch_timeout
                .as_ref()
                .map_or(defaults::INITIAL_FETCH_TIMEOUT, |d| d.0),
        })
    }

    /// The workload's namespace and service account: from the file, else the pod's
    /// environment (`presage inject` sets both from the downward API), else `default`.
    fn identity(&mut self, id: &raw::RawIdentity) -> IdentitySpec {
        let mut field = |v: &Option<Spanned<String>>, env: &str, name: &str| {
            let (value, at) = match v {
                Some(s) => (s.value.clone(), s.referenced),
                None => (
                    std::env::var(env)
                        .ok()
                        .filter(|e| !e.is_empty())
                        .unwrap_or_else(|| "default".into()),
                    Location::UNKNOWN,
                ),
            };
            let ok = !value.is_empty()
                && value.len() <= 253
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
            if !ok {
                self.err(
                    at,
                    format!("control_plane.identity.{name}"),
                    format!("expected a Kubernetes name (lowercase letters, digits, '-', '.'), found {value:?}"),
                );
            }
            value
        };
        IdentitySpec {
            namespace: field(&id.namespace, "POD_NAMESPACE", "namespace"),
            service_account: field(
                &id.service_account,
                "POD_SERVICE_ACCOUNT",
                "service_account",
            ),
            token_file: id
                .token_file
                .as_ref()
                .map_or_else(|| defaults::TOKEN_FILE.into(), |p| self.path(p)),
        }
    }
}
