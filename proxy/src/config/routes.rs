//! Building the routes of a config: matches, rewrites, timeouts, retries, header edits,
//! and their references to clusters and QoS profiles checked.

use std::collections::HashSet;

use super::raw::{self, RawConfig};
use super::*;

impl RouteSpec {
    /// A route to `cluster` with the default timeout and retries, for redirected traffic
    /// addressed to one of its instances (named `original-dst:CLUSTER` in metrics).
    pub fn to_cluster(cluster: &str) -> RouteSpec {
        RouteSpec {
            name: format!("original-dst:{cluster}"),
            matcher: RouteMatch::default(),
            cluster: cluster.to_string(),
            rewrite_prefix: None,
            timeout: defaults::REQUEST_TIMEOUT,
            retry: RetryPolicy {
                attempts: defaults::RETRY_ATTEMPTS,
                budget_percent: defaults::RETRY_BUDGET_PERCENT,
                backoff: defaults::RETRY_BACKOFF,
                max_backoff: defaults::RETRY_MAX_BACKOFF,
            },
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            qos_profile: None,
        }
    }
}

impl Builder<'_> {
    /// A request match (routes', authorization rules'); `at` names it in errors.
    pub(super) fn matcher(&mut self, m: &raw::RawMatch, at: &str) -> RouteMatch {
        let host = m
            .host
            .as_ref()
            .and_then(|h| match HostMatch::parse(&h.value) {
                Ok(m) => Some(m),
                Err(e) => {
                    self.err(h.referenced, format!("{at}.host"), e);
                    None
                }
            });
        let path = m.path.as_ref().map(|p| match p {
            raw::RawPathMatch::Exact(s) => PathMatch::Exact(s.clone()),
            raw::RawPathMatch::Prefix(s) => PathMatch::Prefix(s.clone()),
            raw::RawPathMatch::Regex(re) => PathMatch::Regex(re.0.clone()),
        });
        let headers = m
            .headers
            .iter()
            .map(|h| HeaderMatch {
                name: h.name.0.clone(),
                value: h.value.clone(),
                regex: h.regex.as_ref().map(|p| p.0.clone()),
            })
            .collect();
        RouteMatch {
            host,
            path,
            methods: m.methods.iter().map(|m| m.0.clone()).collect(),
            headers,
        }
    }

    pub(super) fn routes(
        &mut self,
        raw: &RawConfig,
        clusters: &HashSet<&str>,
        profiles: &HashSet<&str>,
    ) -> Vec<RouteSpec> {
        let mut out = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let f = |s: &str| format!("routes[{i}].{s}");
            if !clusters.contains(r.cluster.value.as_str()) {
                let known: Vec<&str> = clusters.iter().copied().collect();
                self.err(
                    r.cluster.referenced,
                    f("cluster"),
                    format!(
                        "no cluster named {:?} (defined: {})",
                        r.cluster.value,
                        known.join(", ")
                    ),
                );
            }
            let matcher = self.matcher(&r.matcher, &f("match"));
            let rewrite_prefix = r.rewrite.as_ref().and_then(|rw| match &matcher.path {
                Some(PathMatch::Prefix(p)) => Some((p.clone(), rw.prefix.value.clone())),
                _ => {
                    self.err(
                        rw.prefix.referenced,
                        f("rewrite.prefix"),
                        "a prefix rewrite needs `match.path.prefix`",
                    );
                    None
                }
            });
            let retry = match &r.retries {
                None => RouteSpec::to_cluster("").retry,
                Some(rt) => {
                    let budget =
                        rt.budget_percent
                            .as_ref()
                            .map_or(defaults::RETRY_BUDGET_PERCENT, |b| {
                                if !(0.0..=1000.0).contains(&b.value) {
                                    self.err(
                                        b.referenced,
                                        f("retries.budget_percent"),
                                        format!("expected 0..=1000, found {}", b.value),
                                    );
                                }
                                b.value.clamp(0.0, 1000.0)
                            });
                    RetryPolicy {
                        attempts: rt.attempts.unwrap_or(defaults::RETRY_ATTEMPTS),
                        budget_percent: budget,
                        backoff: rt.backoff.as_ref().map_or(defaults::RETRY_BACKOFF, |d| d.0),
                        max_backoff: rt
                            .max_backoff
                            .as_ref()
                            .map_or(defaults::RETRY_MAX_BACKOFF, |d| d.0),
                    }
                }
            };
            let ops = |o: &raw::RawHeaderOps| HeaderOps {
                add: o
                    .add
                    .iter()
                    .map(|(k, v)| (k.0.clone(), v.0.clone()))
                    .collect(),
                remove: o.remove.iter().map(|k| k.0.clone()).collect(),
            };
            out.push(RouteSpec {
                name: r.name.clone().unwrap_or_else(|| format!("route{i}")),
                matcher,
                cluster: r.cluster.value.clone(),
                rewrite_prefix,
                timeout: r
                    .timeout
                    .as_ref()
                    .map_or(defaults::REQUEST_TIMEOUT, |d| d.0),
                retry,
                request_headers: ops(&r.request_headers),
                response_headers: ops(&r.response_headers),
                qos_profile: r.qos_profile.as_ref().map(|p| {
                    if !profiles.contains(p.value.as_str()) {
                        self.err(
                            p.referenced,
                            f("qos_profile"),
                            format!("unknown QoS profile {:?}", p.value),
                        );
                    }
                    p.value.clone()
                }),
            });
        }
        out
    }
}
