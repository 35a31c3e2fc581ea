//! QoS enforcement on the request path: which profile and tier a request runs under,
//! per-profile throughput limits, and admission by tier priority under overload.
//!
//! ```text
//! (from callers the listener believes: `config::QosHeaders`; removed from others')
//! x-presage-qos: NAME ─┐ (else)
//! x-presage-user ──────┼─▶ subject's profile or tier ─┐ (else)
//! x-presage-tenant ────┘                             ├─▶ route's default profile ─▶ default tier
//!                                                    ▼
//!   profile rate limit (token bucket) ─▶ 429 + Retry-After
//!   cluster in flight ≥ max_in_flight × tier share ─▶ 503 + Retry-After (shed)
//! ```
//! Tier shares are Bronze 60%, Silver 75%, Gold 90%, Platinum 100% of the cluster's
//! `max_in_flight` by default (tiers may be added and changed): as load grows Bronze is
//! refused first and Platinum last, and since the shares are ordered by priority a
//! higher tier is never shed while a lower one is admitted.
//! Profiles keep their token buckets across reloads while their spec is unchanged.
//!
//! A profile's reliability target buys retries: each nine of it one more attempt (after
//! the first nine) and 10 points more retry budget, from its own budget (see
//! `ProfileRetry`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};
use tower::retry::budget::TpsBudget;

use crate::balance::Needs;
pub use crate::config::Tier;
use crate::config::{QosProfileSpec, SubjectKind, SubjectSpec};
use crate::errors::ProxyError;

pub static X_PRESAGE_QOS: HeaderName = HeaderName::from_static("x-presage-qos");
pub static X_PRESAGE_USER: HeaderName = HeaderName::from_static("x-presage-user");
pub static X_PRESAGE_TENANT: HeaderName = HeaderName::from_static("x-presage-tenant");
/// The caller's remaining latency budget in ms, honoured and passed on (as
/// `grpc-timeout` is in gRPC).
pub static X_PRESAGE_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-presage-timeout-ms");

/// Removes the headers by which a caller chooses its own treatment (profile, user,
/// tenant, deadline): those of a caller its listener does not believe
/// (`config::QosHeaders`), who then gets the route's default.
pub fn drop_claims(h: &mut HeaderMap) {
    for name in [
        &X_PRESAGE_QOS,
        &X_PRESAGE_USER,
        &X_PRESAGE_TENANT,
        &X_PRESAGE_TIMEOUT_MS,
    ] {
        h.remove(name);
    }
}

/// A profile with its live rate-limit state.
#[derive(Debug)]
pub struct Profile {
    pub spec: QosProfileSpec,
    /// What the profile requires of an endpoint (None: nothing).
    pub needs: Option<Needs>,
    /// The retries its reliability target buys (None: no target, the route's policy).
    pub retry: Option<ProfileRetry>,
    bucket: Option<TokenBucket>,
}

/// Retries and hedges for requests under a profile with a reliability target, from its
/// own budget (so one profile's retries never spend another's).
///
/// An endpoint meeting the profile fails at most `1 - target` of the time, so `k`
/// attempts fail together at most `(1 - target)^k`: a target of `n` nines (0.99: 2) needs
/// no more than `n - 1` retries to cover a chance failure with a margin, and a 90%
/// target none. The budget grows by 10% extra load per nine (99% gets Linkerd's default
/// 20%), capped at 50% so that retries can never double the load of an overloaded service.
///
/// A profile that may retry (99% or more) and has a p99 latency target also hedges: a
/// request not answered within the p99 target is sent to a second endpoint as well,
/// paid from the same budget. A healthy service answers ~1% of requests that late, so
/// hedging costs about 1% extra load and cuts the tail a slow instance causes.
#[derive(Debug)]
pub struct ProfileRetry {
    /// Extra attempts after the first.
    pub attempts: u32,
    /// When to send a hedged copy (None: never).
    pub hedge_after: Option<Duration>,
    pub budget: TpsBudget,
}

impl ProfileRetry {
    const MAX_ATTEMPTS: u32 = 4;
    const PERCENT_PER_NINE: f32 = 10.0;
    const MAX_PERCENT: f32 = 50.0;

    pub fn of(spec: &QosProfileSpec) -> Option<ProfileRetry> {
        if spec.reliability <= 0.0 {
            return None;
        }
        let nines = Self::nines(spec.reliability);
        let attempts = nines.saturating_sub(1).min(Self::MAX_ATTEMPTS);
        Some(ProfileRetry {
            attempts,
            hedge_after: (attempts > 0 && spec.latency_p99_ms > 0.0)
                .then(|| secs(spec.latency_p99_ms / 1000.0)),
            budget: crate::runtime::retry_budget(
                (nines as f32 * Self::PERCENT_PER_NINE).min(Self::MAX_PERCENT),
            ),
        })
    }

    /// Whole nines of a target: 0.9 → 1, 0.999 → 3, 0.995 → 2, 0.5 → 0 (1.0: many).
    fn nines(reliability: f64) -> u32 {
        let miss = 1.0 - reliability.min(1.0);
        if miss <= 0.0 {
            return u32::MAX;
        }
        // The epsilon keeps 0.999 (whose miss is 0.0010000000000000009) at three.
        (-miss.log10() + 1e-9).floor().max(0.0) as u32
    }
}

/// What a subject is assigned to.
#[derive(Debug, Clone)]
enum Assignment {
    Profile(Arc<Profile>),
    Tier(Tier),
}

/// The profiles and subject assignments of one runtime.
#[derive(Debug, Default)]
pub struct Qos {
    pub profiles: HashMap<String, Arc<Profile>>,
    users: HashMap<String, Assignment>,
    tenants: HashMap<String, Assignment>,
}

/// How one request is treated.
#[derive(Debug, Clone)]
pub struct Decision {
    pub profile: Option<Arc<Profile>>,
    pub tier: Tier,
}

impl Decision {
    pub fn profile_name(&self) -> &str {
        self.profile.as_ref().map_or("", |p| p.spec.name.as_str())
    }
}

impl Qos {
    /// Builds from validated specs, keeping the buckets of unchanged profiles.
    pub fn build(
        profiles: &[QosProfileSpec],
        subjects: &[SubjectSpec],
        previous: Option<&Qos>,
    ) -> Qos {
        let profiles: HashMap<String, Arc<Profile>> = profiles
            .iter()
            .map(|spec| {
                let kept = previous
                    .and_then(|p| p.profiles.get(&spec.name))
                    .filter(|p| p.spec == *spec)
                    .cloned();
                let p = kept.unwrap_or_else(|| {
                    Arc::new(Profile {
                        needs: Needs::of(spec),
                        retry: ProfileRetry::of(spec),
                        bucket: (spec.rate_limit_rps > 0.0)
                            .then(|| TokenBucket::new(spec.rate_limit_rps)),
                        spec: spec.clone(),
                    })
                });
                (spec.name.clone(), p)
            })
            .collect();
        let mut users = HashMap::new();
        let mut tenants = HashMap::new();
        for s in subjects {
            // Validation guarantees a profile or a tier, and that the profile exists.
            let a = match s.profile.as_ref().and_then(|p| profiles.get(p)) {
                Some(p) => Assignment::Profile(p.clone()),
                None => Assignment::Tier(s.tier.unwrap_or_default()),
            };
            match s.kind {
                SubjectKind::User => users.insert(s.id.clone(), a),
                SubjectKind::Tenant => tenants.insert(s.id.clone(), a),
            };
        }
        Qos {
            profiles,
            users,
            tenants,
        }
    }

    /// The request's profile and tier. An unknown profile named in `x-presage-qos` is
    /// the client's error; unknown users and tenants just get the route's default.
    pub fn resolve(
        &self,
        headers: &HeaderMap,
        route_default: Option<&str>,
        default_tier: Tier,
    ) -> Result<Decision, ProxyError> {
        let text = |h: &HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
        if let Some(name) = text(&X_PRESAGE_QOS) {
            return match self.profiles.get(name) {
                Some(p) => Ok(decision(p)),
                None => Err(ProxyError::UnknownQosProfile(name.to_string())),
            };
        }
        // Header lookups only where assignments exist (most proxies have none).
        let user = || {
            (!self.users.is_empty())
                .then(|| text(&X_PRESAGE_USER).and_then(|u| self.users.get(u)))
                .flatten()
        };
        let tenant = || {
            (!self.tenants.is_empty())
                .then(|| text(&X_PRESAGE_TENANT).and_then(|t| self.tenants.get(t)))
                .flatten()
        };
        let assigned = user().or_else(tenant);
        match assigned {
            Some(Assignment::Profile(p)) => return Ok(decision(p)),
            Some(Assignment::Tier(t)) => {
                return Ok(Decision {
                    profile: None,
                    tier: *t,
                })
            }
            None => {}
        }
        Ok(match route_default.and_then(|n| self.profiles.get(n)) {
            Some(p) => decision(p),
            None => Decision {
                profile: None,
                tier: default_tier,
            },
        })
    }
}

fn decision(p: &Arc<Profile>) -> Decision {
    Decision {
        tier: p.spec.tier,
        profile: Some(p.clone()),
    }
}

impl Profile {
    /// Takes one request from the profile's rate limit.
    pub fn throttle(&self) -> Result<(), ProxyError> {
        match &self.bucket {
            Some(b) => b
                .take()
                .map_err(|wait| ProxyError::Throttled(self.spec.name.clone(), wait)),
            None => Ok(()),
        }
    }
}

/// Seconds as a `Duration`, at most a day. Profiles and tiers are checked against
/// `presage_api::qos_limits` before they get here; this only keeps a slip from
/// panicking (`Duration::from_secs_f64` does on overflow) in the request path.
pub(crate) fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.min(86_400.0)).unwrap_or_default()
}

/// A request's latency budget: the caller's `x-presage-timeout-ms` when it sent one
/// (a chain of sidecars shares one deadline), else its profile's `deadline_ms`.
pub fn budget(headers: &HeaderMap, profile: Option<&Profile>) -> Option<Duration> {
    let from_caller = headers
        .get(&X_PRESAGE_TIMEOUT_MS)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    from_caller.or_else(|| {
        let ms = profile?.spec.deadline_ms;
        (ms > 0.0).then(|| secs(ms / 1000.0))
    })
}

/// A token bucket refilled at `rate` per second, holding at most one second's worth.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(rate: f64) -> TokenBucket {
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// `Err(wait)`: empty; a token is back after `wait`.
    fn take(&self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *s;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate)
            .min(self.burst);
        if tokens >= 1.0 {
            *s = (tokens - 1.0, now);
            Ok(())
        } else {
            *s = (tokens, now);
            Err(secs((1.0 - tokens) / self.rate))
        }
    }
}

/// A request counted in its cluster's in-flight total until dropped.
#[derive(Debug)]
pub struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Admits a request whose tier may fill `share` of a cluster's `max_in_flight` (0: no
/// limit, always admitted and still counted), given its `in_flight` requests.
pub fn admit(in_flight: &AtomicUsize, max_in_flight: usize, share: f64) -> Option<Admitted<'_>> {
    let before = in_flight.fetch_add(1, Relaxed);
    let guard = Admitted(in_flight);
    if max_in_flight == 0 {
        return Some(guard);
    }
    let limit = (max_in_flight as f64 * share).ceil() as usize;
    (before < limit.max(1)).then_some(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_TIERS;

    const BRONZE: Tier = Tier(0);
    const SILVER: Tier = Tier(1);
    const GOLD: Tier = Tier(2);
    const PLATINUM: Tier = Tier(3);

    fn profile(name: &str, tier: Tier, rate: f64) -> QosProfileSpec {
        QosProfileSpec {
            name: name.into(),
            tier,
            rate_limit_rps: rate,
            ..QosProfileSpec::default()
        }
    }

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert((*k).clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn seconds_out_of_range_do_not_panic() {
        assert_eq!(secs(0.25), Duration::from_millis(250));
        assert_eq!(secs(1e20), Duration::from_secs(86_400));
        assert_eq!(secs(f64::INFINITY), Duration::from_secs(86_400));
        assert_eq!(secs(-1.0), Duration::ZERO);
    }

    #[test]
    fn profile_comes_from_header_then_user_then_tenant_then_route() {
        let qos = Qos::build(
            &[
                profile("fast", PLATINUM, 0.0),
                profile("cheap", BRONZE, 0.0),
                profile("std", SILVER, 0.0),
            ],
            &[
                SubjectSpec {
                    id: "alice".into(),
                    kind: SubjectKind::User,
                    profile: Some("fast".into()),
                    tier: None,
                },
                SubjectSpec {
                    id: "acme".into(),
                    kind: SubjectKind::Tenant,
                    profile: None,
                    tier: Some(GOLD),
                },
            ],
            None,
        );
        let r = |h: HeaderMap| {
            let d = qos.resolve(&h, Some("std"), BRONZE).unwrap();
            (d.profile_name().to_string(), d.tier)
        };
        assert_eq!(
            r(headers(&[
                (&X_PRESAGE_QOS, "cheap"),
                (&X_PRESAGE_USER, "alice")
            ])),
            ("cheap".into(), BRONZE)
        );
        assert_eq!(
            r(headers(&[
                (&X_PRESAGE_USER, "alice"),
                (&X_PRESAGE_TENANT, "acme")
            ])),
            ("fast".into(), PLATINUM)
        );
        assert_eq!(
            r(headers(&[
                (&X_PRESAGE_USER, "bob"),
                (&X_PRESAGE_TENANT, "acme")
            ])),
            ("".into(), GOLD)
        );
        assert_eq!(
            r(headers(&[(&X_PRESAGE_USER, "bob")])),
            ("std".into(), SILVER)
        );
        let none = qos.resolve(&HeaderMap::new(), None, BRONZE).unwrap();
        assert_eq!((none.profile_name(), none.tier), ("", BRONZE));
        let bad = qos.resolve(&headers(&[(&X_PRESAGE_QOS, "gold-ish")]), None, BRONZE);
        assert!(matches!(bad, Err(ProxyError::UnknownQosProfile(n)) if n == "gold-ish"));
    }

    #[test]
    fn lower_tiers_are_refused_first_and_never_while_a_higher_one_is_refused() {
        let in_flight = AtomicUsize::new(0);
        let mut held = Vec::new();
        // Fill with Platinum until it is refused, noting where each tier stopped.
        let mut refused_at = HashMap::new();
        for n in 0..20 {
            for (t, share) in DEFAULT_TIERS {
                if !refused_at.contains_key(t) && admit(&in_flight, 10, share).is_none() {
                    refused_at.insert(t, n);
                }
            }
            if let Some(g) = admit(&in_flight, 10, 1.0) {
                held.push(g);
            }
        }
        assert_eq!(refused_at["bronze"], 6);
        assert_eq!(refused_at["silver"], 8);
        assert_eq!(refused_at["gold"], 9);
        assert_eq!(refused_at["platinum"], 10);
        assert_eq!(in_flight.load(Relaxed), 10, "refusals are not counted");
        held.clear();
        assert_eq!(in_flight.load(Relaxed), 0, "guards give their slot back");
        // No limit: always admitted.
        assert!(admit(&in_flight, 0, 0.6).is_some());
    }

    #[test]
    fn reliability_buys_retries_by_its_nines() {
        let of = |reliability: f64, latency_p99_ms: f64| {
            ProfileRetry::of(&QosProfileSpec {
                reliability,
                latency_p99_ms,
                ..QosProfileSpec::default()
            })
        };
        assert!(of(0.0, 50.0).is_none(), "no target: the route's policy");
        let cases = [
            (0.5, 0),
            (0.9, 0),
            (0.99, 1),
            (0.995, 1),
            (0.999, 2),
            (0.9999, 3),
            (1.0, ProfileRetry::MAX_ATTEMPTS),
        ];
        for (target, attempts) in cases {
            assert_eq!(of(target, 0.0).unwrap().attempts, attempts, "{target}");
        }
        assert_eq!(
            of(0.999, 50.0).unwrap().hedge_after,
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            of(0.999, 0.0).unwrap().hedge_after,
            None,
            "no latency target"
        );
        assert_eq!(of(0.9, 50.0).unwrap().hedge_after, None, "no retries");
        assert_eq!(ProfileRetry::nines(0.999), 3);
        assert_eq!(ProfileRetry::nines(0.5), 0);
    }

    #[test]
    fn token_bucket_allows_its_rate_and_says_when_to_retry() {
        let b = TokenBucket::new(10.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(b.take_at(t0).is_ok(), "a second's worth of burst");
        }
        let wait = b.take_at(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(b.take_at(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take_at(t0 + Duration::from_millis(150)).is_err());
    }
}
