//! Behaviour profiler: which service will this user call next?
//!
//! A variable-order Markov model over service calls, blended by interpolated back-off
//! from the most specific evidence to the least:
//!
//! ```text
//!  user's own transitions (from the user's last service)       most specific
//!    └▶ user's own service frequencies (optional, off by default)
//!         └▶ global order-2 transitions (last two services)
//!              └▶ global order-1 transitions (last service)
//!                   └▶ global service popularity                 least specific
//! ```
//! Each level's weight is `n / (n + κ)`, `n` being the (decayed) evidence that level has
//! for this context, so a user with a long history is predicted from it and a new user
//! from everyone else's. All counts decay exponentially with a half-life (forward decay:
//! weights are stored scaled by `2^(t/h)` so nothing has to be touched to age it), so a
//! changed habit wins over an old one. Users live in an LRU with a hard cap, and each user
//! keeps a bounded number of entries, so memory is bounded whatever the traffic.
//!
//! Expected arrivals: each user seen recently is expected to go on at its own recent call
//! rate (exponentially decayed, time constant 10 minutes) unless it has left (silent for
//! four of its usual gaps between calls); its expected calls in the next window are
//! spread over the services by its prediction, and summed per service that is the demand
//! the predicted users bring (what the planner sizes warm pools by). On the Alibaba
//! trace this tracks known users' calls per 10 minutes with a 19% lower error than
//! carrying the last window forward (see the test on the trace).
//!
//! Owns: the model, its predictions, and its encoding for the store. Does not own: where
//! events come from (telemetry) or where predictions go (the REST API, the planner).

pub mod eval;
mod table;

use std::collections::HashMap;
use std::num::NonZeroUsize;

use lru::LruCache;
use serde::{Deserialize, Serialize};
pub use table::Table;

/// Interned service name.
pub type ServiceId = u32;
const NONE: ServiceId = ServiceId::MAX;

/// Knobs; the defaults are what `bench/` and `profile-eval` measured best on real traces.
#[derive(Debug, Clone)]
pub struct ProfilerConfig {
    /// Most users tracked; the least recently seen are evicted beyond it.
    pub max_users: usize,
    /// Half-life of evidence, in seconds of event time.
    pub half_life_secs: f64,
    /// Transitions kept per user (the weakest is evicted).
    pub user_transitions: usize,
    /// Services kept in each user's frequency table.
    pub user_services: usize,
    /// Back-off strength κ: a level with `n` observations gets weight `n / (n + κ)`.
    pub kappa: f64,
    /// Whether the user's own service frequencies form a level (between the user's
    /// transitions and the global ones).
    pub user_frequencies: bool,
}

impl Default for ProfilerConfig {
    fn default() -> Self {
        ProfilerConfig {
            max_users: 1_000_000,
            // A week: habits change over days, not minutes.
            half_life_secs: 7.0 * 86_400.0,
            user_transitions: 8,
            user_services: 4,
            // Measured on the Alibaba trace (bench/RESULTS.md): 10 beats 1 and 3 on top-1.
            kappa: 10.0,
            // Off: on the Alibaba trace it costs 3 points of top-1 (the user's favourite
            // service outvotes what follows their last one).
            user_frequencies: false,
        }
    }
}

/// One predicted next service with its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub service: String,
    pub probability: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct User {
    /// Last two services, most recent first (`NONE` when unknown).
    history: [ServiceId; 2],
    /// `(prev, next)` transitions, forward-decayed.
    transitions: Table<(ServiceId, ServiceId)>,
    services: Table<ServiceId>,
    /// Event time of the last call.
    last_seen: f64,
    /// Smoothed seconds between calls; negative until a second call.
    gap: f64,
    /// Calls per second, exponentially decayed with `RATE_TAU` as of `last_seen`.
    rate: f64,
}

/// Weight of the newest gap in a user's smoothed gap.
const GAP_WEIGHT: f64 = 0.3;
/// A user silent for this many of its gaps has left (its session ended).
const GONE_AFTER_GAPS: f64 = 4.0;
/// Users whose last call is older than this are not scanned for arrivals (seconds).
const ACTIVE_WITHIN: f64 = 1800.0;
/// Time constant of a user's call rate (seconds): it counts about the last 10 minutes.
const RATE_TAU: f64 = 600.0;

/// What the users seen recently are expected to bring in the next window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Arrivals {
    /// Calls expected per service, most first.
    pub services: Vec<ExpectedCalls>,
    /// Users seen in the last 30 minutes and not gone.
    pub active_users: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExpectedCalls {
    pub service: String,
    pub expected: f64,
}

/// The profiler as the store keeps it (users least recently seen first, so restoring
/// them in order rebuilds the LRU).
#[derive(Serialize, Deserialize)]
struct Saved {
    names: Vec<String>,
    users: Vec<(String, User)>,
    order2: Vec<((ServiceId, ServiceId), Table<ServiceId>)>,
    order1: Vec<(ServiceId, Table<ServiceId>)>,
    popularity: Table<ServiceId>,
    epoch: f64,
    now: f64,
    typical_gap: f64,
}

/// The profiler. Feed it `observe` in event-time order; ask it `predict`.
#[derive(Debug)]
pub struct Profiler {
    cfg: ProfilerConfig,
    names: Vec<String>,
    ids: HashMap<String, ServiceId>,
    users: LruCache<String, User>,
    order2: HashMap<(ServiceId, ServiceId), Table<ServiceId>>,
    order1: HashMap<ServiceId, Table<ServiceId>>,
    popularity: Table<ServiceId>,
    /// Event time that forward-decay weights are relative to.
    epoch: f64,
    /// Latest event time seen.
    now: f64,
    /// Smoothed gap between calls over every user: the pace assumed of a user seen once.
    typical_gap: f64,
}

/// Rescale when forward weights reach `2^RESCALE_AT` (f64 holds up to about `2^1023`).
const RESCALE_AT: f64 = 512.0;

impl Profiler {
    pub fn new(cfg: ProfilerConfig) -> Self {
        let cap = NonZeroUsize::new(cfg.max_users.max(1)).expect("max(1) is non-zero");
        Profiler {
            users: LruCache::new(cap),
            cfg,
            names: Vec::new(),
            ids: HashMap::new(),
            order2: HashMap::new(),
            order1: HashMap::new(),
            popularity: Table::default(),
            epoch: f64::NAN,
            now: f64::NEG_INFINITY,
            typical_gap: -1.0,
        }
    }

    /// The profiler in the store's form.
    pub fn encode(&self) -> Vec<u8> {
        let saved = Saved {
            names: self.names.clone(),
            users: self
                .users
                .iter()
                .rev()
                .map(|(k, u)| {
                    let u = User {
                        history: u.history,
                        transitions: u.transitions.clone(),
                        services: u.services.clone(),
                        last_seen: u.last_seen,
                        gap: u.gap,
                        rate: u.rate,
                    };
                    (k.clone(), u)
                })
                .collect(),
            order2: self.order2.iter().map(|(k, t)| (*k, t.clone())).collect(),
            order1: self.order1.iter().map(|(k, t)| (*k, t.clone())).collect(),
            popularity: self.popularity.clone(),
            epoch: self.epoch,
            now: self.now,
            typical_gap: self.typical_gap,
        };
        postcard::to_stdvec(&saved).expect("plain data always encodes")
    }

    /// A profiler from `encode`'s bytes, with `cfg` (a smaller `max_users` keeps the
    /// most recent users).
    pub fn decode(cfg: ProfilerConfig, bytes: &[u8]) -> Result<Profiler, postcard::Error> {
        let saved: Saved = postcard::from_bytes(bytes)?;
        let mut p = Profiler::new(cfg);
        p.ids = saved
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as ServiceId))
            .collect();
        p.names = saved.names;
        for (k, u) in saved.users {
            p.users.put(k, u);
        }
        p.order2 = saved.order2.into_iter().collect();
        p.order1 = saved.order1.into_iter().collect();
        p.popularity = saved.popularity;
        p.epoch = saved.epoch;
        p.now = saved.now;
        p.typical_gap = saved.typical_gap;
        Ok(p)
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn intern(&mut self, service: &str) -> ServiceId {
        if let Some(&id) = self.ids.get(service) {
            return id;
        }
        let id = self.names.len() as ServiceId;
        self.names.push(service.to_string());
        self.ids.insert(service.to_string(), id);
        id
    }

    /// Forward-decay weight of one observation at time `t`.
    fn weight(&mut self, t: f64) -> f64 {
        if self.epoch.is_nan() {
            self.epoch = t;
        }
        self.now = self.now.max(t);
        let mut exp = (t - self.epoch) / self.cfg.half_life_secs;
        if exp > RESCALE_AT {
            self.rescale(t);
            exp = 0.0;
        }
        exp.exp2()
    }

    /// Moves the epoch to `t`, scaling every stored weight down to match.
    fn rescale(&mut self, t: f64) {
        let factor = (-(t - self.epoch) / self.cfg.half_life_secs).exp2();
        self.popularity.scale(factor);
        self.order1.values_mut().for_each(|tb| tb.scale(factor));
        self.order2.values_mut().for_each(|tb| tb.scale(factor));
        for (_, u) in self.users.iter_mut() {
            u.transitions.scale(factor);
            u.services.scale(factor);
        }
        self.epoch = t;
    }

    /// Records that `user` called `service` at event time `t` (seconds).
    pub fn observe(&mut self, user: &str, service: &str, t: f64) {
        let s = self.intern(service);
        let w = self.weight(t);
        let (ut, us) = (self.cfg.user_transitions, self.cfg.user_services);
        let u = match self.users.get_mut(user) {
            Some(u) => u,
            None => {
                self.users.put(
                    user.to_string(),
                    User {
                        history: [NONE; 2],
                        transitions: Table::default(),
                        services: Table::default(),
                        last_seen: t,
                        gap: -1.0,
                        rate: 0.0,
                    },
                );
                self.users.get_mut(user).expect("just inserted")
            }
        };
        let g = (t - u.last_seen).max(0.0);
        // A pause longer than a session's is a new session, not the user's pace.
        if u.history[0] != NONE && g <= ACTIVE_WITHIN {
            u.gap = if u.gap < 0.0 {
                g
            } else {
                u.gap + GAP_WEIGHT * (g - u.gap)
            };
            self.typical_gap = if self.typical_gap < 0.0 {
                g
            } else {
                self.typical_gap + GAP_WEIGHT / 100.0 * (g - self.typical_gap)
            };
        }
        u.rate = u.rate * (-g / RATE_TAU).exp() + 1.0 / RATE_TAU;
        u.last_seen = t;
        let [p1, p2] = u.history;
        if p1 != NONE {
            u.transitions.add_capped((p1, s), w, ut);
        }
        u.services.add_capped(s, w, us);
        u.history = [s, p1];
        if p1 != NONE {
            self.order1.entry(p1).or_default().add(s, w);
            if p2 != NONE {
                self.order2.entry((p1, p2)).or_default().add(s, w);
            }
        }
        self.popularity.add(s, w);
    }

    /// The `k` most likely next services of `user`, best first; empty before any event.
    pub fn predict(&self, user: &str, k: usize) -> Vec<Prediction> {
        let mut scores = self.distribution(user);
        scores.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scores
            .into_iter()
            .take(k)
            .map(|(s, p)| Prediction {
                service: self.names[s as usize].clone(),
                probability: p,
            })
            .collect()
    }

    /// Calls the users seen recently are expected to make in the `window` seconds after
    /// event time `now`, per service.
    pub fn expected_arrivals(&self, now: f64, window: f64) -> Arrivals {
        let mut by: HashMap<ServiceId, f64> = HashMap::new();
        let active_users = self.each_expected(now, window, |_, s, calls| {
            *by.entry(s).or_default() += calls;
        });
        let mut services: Vec<ExpectedCalls> = by
            .into_iter()
            .map(|(s, expected)| ExpectedCalls {
                service: self.names[s as usize].clone(),
                expected,
            })
            .collect();
        services.sort_by(|a, b| {
            b.expected
                .total_cmp(&a.expected)
                .then(a.service.cmp(&b.service))
        });
        Arrivals {
            services,
            active_users,
        }
    }

    /// Latest event time seen (seconds), if any.
    pub fn now(&self) -> Option<f64> {
        self.now.is_finite().then_some(self.now)
    }

    /// Like `expected_arrivals`, per user: `f(user, service, expected calls)` for every
    /// active user's predicted services (for warm pools); returns how many users are
    /// active.
    pub fn expected_by_user(
        &self,
        now: f64,
        window: f64,
        mut f: impl FnMut(&str, &str, f64),
    ) -> usize {
        self.each_expected(now, window, |user, s, calls| {
            f(user, &self.names[s as usize], calls)
        })
    }

    /// Calls `f(user, service, expected calls)` for every active user's predicted
    /// services; returns how many users are active.
    fn each_expected(
        &self,
        now: f64,
        window: f64,
        mut f: impl FnMut(&str, ServiceId, f64),
    ) -> usize {
        let mut active_users = 0;
        // Most recently seen first: stop at the first user idle too long.
        for (name, u) in self.users.iter() {
            let idle = (now - u.last_seen).max(0.0);
            if idle > ACTIVE_WITHIN {
                break;
            }
            let gap = if u.gap > 0.0 { u.gap } else { self.typical_gap };
            if gap <= 0.0 || idle > GONE_AFTER_GAPS * gap {
                continue;
            }
            active_users += 1;
            // The user's recent rate, decayed to now, over the window.
            let q = u.rate * (-idle / RATE_TAU).exp() * window;
            let dist = self.distribution(name);
            let total: f64 = dist.iter().map(|(_, p)| p).sum();
            if total <= 0.0 {
                continue;
            }
            for (s, p) in dist {
                f(name, s, q * p / total);
            }
        }
        active_users
    }

    fn distribution(&self, user: &str) -> Vec<(ServiceId, f64)> {
        let u = self.users.peek(user);
        let [p1, p2] = u.map_or([NONE; 2], |u| u.history);
        // Levels from least to most specific: (total weight, probability of a service).
        let user_trans = u.map(|u| &u.transitions);
        let (user_from_p1, user_from_p1_n) =
            user_trans.map_or((0.0, 0), |t| t.total_where(|&(a, _)| a == p1));
        let o1 = self.order1.get(&p1);
        let o2 = self.order2.get(&(p1, p2));

        // Candidates: everything any level has evidence for, plus the most popular.
        let mut cands: Vec<ServiceId> = self.popularity.top(8).into_iter().collect();
        if let Some(u) = u {
            cands.extend(u.services.keys().copied());
            cands.extend(
                u.transitions
                    .keys()
                    .filter(|(a, _)| *a == p1)
                    .map(|&(_, b)| b),
            );
        }
        if let Some(t) = o1 {
            cands.extend(t.keys().copied());
        }
        if let Some(t) = o2 {
            cands.extend(t.keys().copied());
        }
        cands.sort_unstable();
        cands.dedup();

        // A level's weight grows with how many observations it has, not with how recent
        // they are: a user back after a month is still best predicted by their habits.
        // Recency decides *which* service wins within a level (the decayed weights).
        let kappa = self.cfg.kappa;
        let lambda = |n: u32| n as f64 / (n as f64 + kappa);
        let l_pop = self.popularity.total();
        let l_o1 = o1.map_or(0.0, |t| t.total());
        let l_o2 = o2.map_or(0.0, |t| t.total());
        let l_uf = u.map_or(0.0, |u| u.services.total());
        let lo1 = lambda(o1.map_or(0, |t| t.count()));
        let lo2 = lambda(o2.map_or(0, |t| t.count()));
        let luf = if self.cfg.user_frequencies {
            lambda(u.map_or(0, |u| u.services.count()))
        } else {
            0.0
        };
        let lut = lambda(user_from_p1_n);
        cands
            .into_iter()
            .map(|s| {
                let ratio = |w: f64, total: f64| if total > 0.0 { w / total } else { 0.0 };
                let mut p = ratio(self.popularity.get(&s), l_pop);
                p = lo1 * ratio(o1.map_or(0.0, |t| t.get(&s)), l_o1) + (1.0 - lo1) * p;
                p = lo2 * ratio(o2.map_or(0.0, |t| t.get(&s)), l_o2) + (1.0 - lo2) * p;
                p = luf * ratio(u.map_or(0.0, |u| u.services.get(&s)), l_uf) + (1.0 - luf) * p;
                p = lut * ratio(user_trans.map_or(0.0, |t| t.get(&(p1, s))), user_from_p1)
                    + (1.0 - lut) * p;
                (s, p)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
