//! Checks of resources written through the REST API or seeded from config, before they
//! are stored: every problem is reported with the field it is in, and nothing is stored
//! unless all is well. The proxy validates again on its side (and NACKs what it cannot
//! apply, e.g. a route to a cluster it does not know).

use presage_api::{Cluster, DemandEvent, QosProfile, QosTier, Route, Subject};
use serde::Serialize;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `endpoints[1].address`.
    pub field: String,
    pub message: String,
}

fn push(errors: &mut Vec<FieldError>, field: impl Into<String>, message: impl Into<String>) {
    errors.push(FieldError {
        field: field.into(),
        message: message.into(),
    });
}

/// Names: 1-63 characters of `a-z 0-9 - _ .`, like a DNS label (so they fit Kubernetes
/// service names and metric labels).
pub fn name(errors: &mut Vec<FieldError>, field: &str, value: &str) {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !ok {
        push(
            errors,
            field,
            format!("expected 1-63 characters of a-z, 0-9, '-', '_', '.', found {value:?}"),
        );
    }
}

pub fn cluster(c: &Cluster) -> Vec<FieldError> {
    let mut e = Vec::new();
    name(&mut e, "name", &c.name);
    if !["", "http1", "http2"].contains(&c.protocol.as_str()) {
        push(
            &mut e,
            "protocol",
            format!("expected \"http1\" or \"http2\", found {:?}", c.protocol),
        );
    }
    if !["", "optional", "best_effort"].contains(&c.degraded.as_str()) {
        push(
            &mut e,
            "degraded",
            format!(
                "expected \"optional\" or \"best_effort\" (or empty), found {:?}",
                c.degraded
            ),
        );
    }
    for (i, caller) in c.degraded_callers.iter().enumerate() {
        name(&mut e, &format!("degraded_callers[{i}]"), caller);
    }
    if !c.degraded_callers.is_empty() && c.degraded.is_empty() {
        push(
            &mut e,
            "degraded_callers",
            "callers to shed, but no `degraded` mark to shed them by",
        );
    }
    if !["", "peak_ewma", "weighted_round_robin"].contains(&c.load_balancer.as_str()) {
        push(
            &mut e,
            "load_balancer",
            format!(
                "expected \"peak_ewma\" or \"weighted_round_robin\", found {:?}",
                c.load_balancer
            ),
        );
    }
    for (i, ep) in c.endpoints.iter().enumerate() {
        if let Err(m) = address(&ep.address) {
            push(&mut e, format!("endpoints[{i}].address"), m);
        }
        let max = presage_api::MAX_ENDPOINT_WEIGHT;
        if ep.weight > max {
            push(
                &mut e,
                format!("endpoints[{i}].weight"),
                format!("expected 0..={max}, found {}", ep.weight),
            );
        }
    }
    e
}

/// `host:port` with a port in 1..=65535; the host is not resolved here.
fn address(a: &str) -> Result<(), String> {
    let bad = || format!("expected host:port, found {a:?}");
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains('/') {
        return Err(bad());
    }
    // IP literals must parse (without a resolver: this runs on the event loop); names
    // are left to the proxy's resolver.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && host.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Err(bad());
    }
    Ok(())
}

pub fn route(r: &Route) -> Vec<FieldError> {
    let mut e = Vec::new();
    name(&mut e, "name", &r.name);
    name(&mut e, "cluster", &r.cluster);
    let m = r.r#match.clone().unwrap_or_default();
    let paths = [
        ("path_exact", &m.path_exact),
        ("path_prefix", &m.path_prefix),
        ("path_regex", &m.path_regex),
    ];
    let set: Vec<_> = paths.iter().filter(|(_, v)| !v.is_empty()).collect();
    if set.len() > 1 {
        push(
            &mut e,
            "match",
            "expected at most one of path_exact, path_prefix, path_regex",
        );
    }
    for (f, v) in &paths[..2] {
        if !v.is_empty() && !v.starts_with('/') {
            push(
                &mut e,
                format!("match.{f}"),
                format!("expected a path starting with '/', found {v:?}"),
            );
        }
    }
    // As the proxy's `HostMatch::parse`: a wildcard only as a leading `*.`.
    let wildcard_ok = match m.host.strip_prefix("*.") {
        Some(rest) => !rest.is_empty() && !rest.contains('*'),
        None => !m.host.contains('*'),
    };
    if !m.host.is_empty() && (m.host.contains('/') || m.host.contains(' ') || !wildcard_ok) {
        push(
            &mut e,
            "match.host",
            format!("expected a host name or *.suffix, found {:?}", m.host),
        );
    }
    // Compiled as the proxy compiles it (anchored), so that what it would NACK is a 400.
    if !m.path_regex.is_empty() {
        if let Err(err) = regex::Regex::new(&format!("^(?:{})$", m.path_regex)) {
            push(&mut e, "match.path_regex", err.to_string());
        }
    }
    for (i, meth) in m.methods.iter().enumerate() {
        if meth.is_empty() || !meth.bytes().all(|b| b.is_ascii_uppercase()) {
            push(
                &mut e,
                format!("match.methods[{i}]"),
                format!("expected an upper-case method, found {meth:?}"),
            );
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        if h.name.is_empty()
            || !h
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            push(
                &mut e,
                format!("match.headers[{i}].name"),
                format!("expected a header name, found {:?}", h.name),
            );
        }
    }
    if !r.rewrite_prefix.is_empty() && m.path_prefix.is_empty() {
        push(&mut e, "rewrite_prefix", "needs match.path_prefix");
    }
    for (f, added) in [
        ("add_request_headers", &r.add_request_headers),
        ("add_response_headers", &r.add_response_headers),
    ] {
        for (name, value) in added {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                push(
                    &mut e,
                    format!("{f}.{name}"),
                    format!("expected a header name, found {name:?}"),
                );
            } else if http::HeaderValue::from_str(value).is_err() {
                push(
                    &mut e,
                    format!("{f}.{name}"),
                    format!("expected a header value of visible ASCII, found {value:?}"),
                );
            }
        }
    }
    e
}

/// A QoS profile; `tier_exists` says whether a named tier is stored (empty: bronze).
pub fn qos_profile(q: &QosProfile, tier_exists: impl Fn(&str) -> bool) -> Vec<FieldError> {
    let mut e = Vec::new();
    name(&mut e, "name", &q.name);
    tier_ref(&mut e, &q.tier, tier_exists);
    for (f, v) in [
        ("latency_p50_ms", q.latency_p50_ms),
        ("latency_p99_ms", q.latency_p99_ms),
        ("min_throughput_rps", q.min_throughput_rps),
        ("rate_limit_rps", q.rate_limit_rps),
        ("deadline_ms", q.deadline_ms),
        ("min_accuracy", q.min_accuracy),
        ("reliability", q.reliability),
    ] {
        if let Some(expected) = presage_api::qos_limits::check(f, v) {
            push(&mut e, f, expected);
        }
    }
    e
}

/// A subject id: a user or tenant name as applications send it (e-mail addresses too).
pub fn subject_id(errors: &mut Vec<FieldError>, field: &str, id: &str) {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b));
    if !ok {
        push(
            errors,
            field,
            format!(
                "expected 1-128 characters of A-Z, a-z, 0-9, '-', '_', '.', '@', '+', found {id:?}"
            ),
        );
    }
}

/// A reference to a tier: empty (the default), or a stored tier's name.
fn tier_ref(e: &mut Vec<FieldError>, tier: &str, tier_exists: impl Fn(&str) -> bool) {
    if !tier.is_empty() && !tier_exists(tier) {
        push(e, "tier", format!("no QoS tier named {tier:?}"));
    }
}

/// A subject; `profile_exists` and `tier_exists` say whether a named profile or tier
/// is stored.
pub fn subject(
    s: &Subject,
    profile_exists: impl Fn(&str) -> bool,
    tier_exists: impl Fn(&str) -> bool,
) -> Vec<FieldError> {
    let mut e = Vec::new();
    subject_id(&mut e, "id", &s.id);
    if !["", "user", "tenant"].contains(&s.kind.as_str()) {
        push(
            &mut e,
            "kind",
            format!("expected user or tenant, found {:?}", s.kind),
        );
    }
    tier_ref(&mut e, &s.tier, tier_exists);
    if s.profile.is_empty() && s.tier.is_empty() {
        push(
            &mut e,
            "profile",
            "expected a profile or a tier, found neither",
        );
    } else if !s.profile.is_empty() && !profile_exists(&s.profile) {
        push(
            &mut e,
            "profile",
            format!("no QoS profile named {:?}", s.profile),
        );
    }
    e
}

/// A tier, given the stored tiers: a name, sane allocations, and a priority of its own
/// with an admission share that keeps the tiers ordered by priority (a higher tier is
/// never shed while a lower one is admitted).
pub fn qos_tier(t: &QosTier, stored: &[QosTier]) -> Vec<FieldError> {
    let mut e = Vec::new();
    name(&mut e, "name", &t.name);
    let others = stored.iter().filter(|o| o.name != t.name);
    if others.clone().count() + 1 > crate::tiers::MAX {
        push(
            &mut e,
            "name",
            format!("at most {} tiers; delete one first", crate::tiers::MAX),
        );
    }
    if !(t.admission_share > 0.0 && t.admission_share <= 1.0) {
        push(
            &mut e,
            "admission_share",
            format!("expected a fraction in (0, 1], found {}", t.admission_share),
        );
    }
    for (f, v) in [("cpu_shares", t.cpu_shares), ("io_priority", t.io_priority)] {
        if !(1..=10_000).contains(&v) {
            push(&mut e, f, format!("expected 1..=10000, found {v}"));
        }
    }
    if let Some(expected) =
        presage_api::qos_limits::check("bandwidth_max_mbps", t.bandwidth_max_mbps)
    {
        push(&mut e, "bandwidth_max_mbps", expected);
    }
    for (f, v) in [
        ("bandwidth_min_mbps", t.bandwidth_min_mbps),
        ("io_limit_mbps", t.io_limit_mbps),
        ("price_per_hour", t.price_per_hour),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            push(&mut e, f, format!("expected a number >= 0, found {v}"));
        }
    }
    if t.bandwidth_max_mbps > 0.0 && t.bandwidth_max_mbps < t.bandwidth_min_mbps {
        push(
            &mut e,
            "bandwidth_max_mbps",
            format!(
                "expected at least bandwidth_min_mbps ({}), or 0 for unlimited",
                t.bandwidth_min_mbps
            ),
        );
    }
    for other in others {
        if other.priority == t.priority {
            push(
                &mut e,
                "priority",
                format!("{} already has priority {}", other.name, other.priority),
            );
            continue;
        }
        let (lower, higher) = if other.priority < t.priority {
            (other, t)
        } else {
            (t, other)
        };
        if lower.admission_share > higher.admission_share {
            push(
                &mut e,
                "admission_share",
                format!(
                    "{} ({}) would exceed {} ({}): a higher tier must be admitted at least as long",
                    lower.name, lower.admission_share, higher.name, higher.admission_share
                ),
            );
        }
    }
    e
}

/// An events-calendar entry: a window that ends after it starts, and an effect that
/// keeps rates finite (a multiplier of 0 is an outage window; `added_rps` may be
/// negative).
pub fn demand_event(ev: &DemandEvent) -> Vec<FieldError> {
    let mut e = Vec::new();
    name(&mut e, "name", &ev.name);
    if !ev.service.is_empty() {
        name(&mut e, "service", &ev.service);
    }
    if ev.start_unix_ms <= 0 {
        push(
            &mut e,
            "start_unix_ms",
            "expected a Unix time in ms, found none",
        );
    }
    if ev.end_unix_ms <= ev.start_unix_ms {
        push(
            &mut e,
            "end_unix_ms",
            format!(
                "expected a time after start_unix_ms ({}), found {}",
                ev.start_unix_ms, ev.end_unix_ms
            ),
        );
    }
    if let Some(m) = ev.multiplier {
        if !(m.is_finite() && (0.0..=1000.0).contains(&m)) {
            push(
                &mut e,
                "multiplier",
                format!("expected 0..=1000, found {m}"),
            );
        }
    }
    // As a QoS profile's rates: added to forecasts, so bounded (a removal is negative).
    let max = presage_api::qos_limits::MAX_RPS;
    if !(-max..=max).contains(&ev.added_rps) {
        push(
            &mut e,
            "added_rps",
            format!(
                "expected a rate in -{max}..={max}, found {:?}",
                ev.added_rps
            ),
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use presage_api::{Endpoint, RouteMatch};

    #[test]
    fn every_bad_field_is_named() {
        let c = Cluster {
            name: "Web!".into(),
            protocol: "http3".into(),
            endpoints: vec![
                Endpoint {
                    address: "127.0.0.1:80".into(),
                    ..Default::default()
                },
                Endpoint {
                    address: "127.0.0.1".into(),
                    ..Default::default()
                },
                Endpoint {
                    address: "10.0.0.300:80".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let fields: Vec<_> = cluster(&c).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "name",
                "protocol",
                "endpoints[1].address",
                "endpoints[2].address"
            ]
        );
    }

    #[test]
    fn routes_need_one_path_matcher_and_a_prefix_to_rewrite() {
        let r = Route {
            name: "r".into(),
            cluster: "web".into(),
            r#match: Some(RouteMatch {
                path_exact: "/a".into(),
                path_regex: "b".into(),
                ..Default::default()
            }),
            rewrite_prefix: "/".into(),
            ..Default::default()
        };
        let fields: Vec<_> = route(&r).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["match", "rewrite_prefix"]);
        let ok = Route {
            name: "r".into(),
            cluster: "web".into(),
            ..Default::default()
        };
        assert!(route(&ok).is_empty());
    }

    /// What the proxy would reject (and NACK) is refused here with the field named:
    /// otherwise every later push of routes would carry it and be NACKed too.
    #[test]
    fn routes_the_proxy_would_reject_are_refused() {
        let r = Route {
            name: "r".into(),
            cluster: "web".into(),
            r#match: Some(RouteMatch {
                host: "a*.example.com".into(),
                path_regex: "(".into(),
                ..Default::default()
            }),
            add_request_headers: [("bad name".to_string(), "x".to_string())].into(),
            add_response_headers: [("x-ok".to_string(), "line\nbreak".to_string())].into(),
            ..Default::default()
        };
        let fields: Vec<_> = route(&r).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "match.host",
                "match.path_regex",
                "add_request_headers.bad name",
                "add_response_headers.x-ok"
            ]
        );
        let ok = Route {
            name: "r".into(),
            cluster: "web".into(),
            r#match: Some(RouteMatch {
                host: "*.example.com".into(),
                path_regex: "/items/[0-9]+".into(),
                ..Default::default()
            }),
            add_request_headers: [("x-from".to_string(), "mesh".to_string())].into(),
            ..Default::default()
        };
        assert!(route(&ok).is_empty(), "{:?}", route(&ok));
    }
}
