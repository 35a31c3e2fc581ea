//! The warm-pool interceptor: which endpoints are warm instances held out of general
//! rotation (metadata `pool: warm` and `reserved_for: user:<id>` or `tier:<name>`), and
//! the pick that sends a request to one reserved for its user, else for its tier, before
//! the standard pool sees it.
//!
//! A warm instance was started for predicted demand (the control plane's warm pools):
//! keeping everyone else off it is what makes it free when that demand arrives.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::metrics;
use crate::upstream::{Cluster, Endpoint};

/// Who a warm endpoint is held for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    Tier(Arc<str>),
    User(Arc<str>),
    /// `pool: warm` without a reservation a request could match: out of rotation.
    Nobody,
}

impl Reservation {
    /// The reservation in an endpoint's metadata; None for the standard pool.
    pub fn of(m: &std::collections::BTreeMap<String, serde_json::Value>) -> Option<Reservation> {
        if m.get("pool").and_then(|v| v.as_str()) != Some("warm") {
            return None;
        }
        let r = m.get("reserved_for").and_then(|v| v.as_str()).unwrap_or("");
        Some(match (r.strip_prefix("user:"), r.strip_prefix("tier:")) {
            (Some(u), _) if !u.is_empty() => Reservation::User(u.into()),
            (_, Some(t)) if !t.is_empty() => Reservation::Tier(t.into()),
            _ => Reservation::Nobody,
        })
    }

    fn is_user(&self, user: Option<&str>) -> bool {
        matches!((self, user), (Reservation::User(u), Some(v)) if &**u == v)
    }

    fn is_tier(&self, tier: &str) -> bool {
        matches!(self, Reservation::Tier(t) if &**t == tier)
    }
}

/// What the interceptor knows of a request: its tier, its user (when the cluster has
/// warm endpoints and the request names one), and its tier's counters.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub tier: &'a str,
    pub user: Option<&'a str>,
    pub counters: &'a [Counter; metrics::QOS_OUTCOMES.len()],
}

/// A warm endpoint reserved for the request's user, else its tier, if one is usable.
/// When `count`, a pick counts a warm hit, and a request with a reservation whose
/// endpoints are all unusable (ejected) a warm miss; requests nothing was reserved for
/// are not counted.
pub fn pick<'a>(
    cluster: &'a Cluster,
    avoid: Option<usize>,
    req: &Request<'_>,
    count: bool,
) -> Option<&'a Endpoint> {
    if !cluster.has_warm {
        return None;
    }
    let b = &cluster.balancer;
    let eps = &cluster.endpoints;
    let picked = req
        .user
        .filter(|_| cluster.has_user_warm)
        .and_then(|_| b.pick_warm(eps, avoid, |r| r.is_user(req.user)))
        .or_else(|| b.pick_warm(eps, avoid, |r| r.is_tier(req.tier)));
    if count {
        if picked.is_some() {
            req.counters[metrics::WARM_HIT].inc();
        } else if eps.iter().any(|e| {
            e.reserved_for
                .as_ref()
                .is_some_and(|r| r.is_user(req.user) || r.is_tier(req.tier))
        }) {
            req.counters[metrics::WARM_MISS].inc();
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reservations_are_read_from_metadata() {
        let r = |v| Reservation::of(&meta(v));
        assert_eq!(r(json!({"zone": "a"})), None);
        assert_eq!(
            r(json!({"pool": "warm", "reserved_for": "tier:gold"})),
            Some(Reservation::Tier("gold".into()))
        );
        assert_eq!(
            r(json!({"pool": "warm", "reserved_for": "user:alice"})),
            Some(Reservation::User("alice".into()))
        );
        assert_eq!(r(json!({"pool": "warm"})), Some(Reservation::Nobody));
        assert_eq!(
            r(json!({"pool": "warm", "reserved_for": "user:"})),
            Some(Reservation::Nobody)
        );
        assert!(Reservation::User("alice".into()).is_user(Some("alice")));
        assert!(!Reservation::User("alice".into()).is_user(Some("bob")));
        assert!(!Reservation::User("alice".into()).is_user(None));
        assert!(!Reservation::Nobody.is_tier(""));
    }
}
