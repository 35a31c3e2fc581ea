//! The prediction vectors of the users active at each proxy, for its discovery stream:
//! a proxy whose telemetry reported a user's call in the last `ACTIVE_FOR_MS` gets that
//! user's likely next calls (`BehaviourProfile` named `user:<id>`, top `TOP_K`), made by
//! the behaviour profiler when its session pushes them (at the subscription and every
//! `REFRESH`), never stored: a million users' vectors would churn the store, and only the
//! proxies that see a user need hers.
//!
//! ```text
//!  telemetry (node, transitions) ─▶ active users per node (LRU, `PER_NODE`)
//!  discovery session of node ─▶ for_node(node) ─▶ profiler.predict(user, k) per user
//! ```

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use presage_api::resource::Body;
use presage_api::{BehaviourProfile, NextCall, Resource};

use crate::behaviour::Profiler;

/// Users tracked per proxy, the most recently seen kept.
pub const PER_NODE: usize = 1000;
/// A user is active at a proxy this long after her last call there.
pub const ACTIVE_FOR_MS: i64 = 5 * 60 * 1000;
/// Next services in each vector.
pub const TOP_K: usize = 3;
/// How often a session pushes the vectors again (only the changed ones go out).
pub const REFRESH: Duration = Duration::from_secs(5);

/// Probabilities are sent to two decimals: finer changes would only resend vectors.
fn rounded(p: f64) -> f64 {
    (p * 100.0).round() / 100.0
}

pub struct UserVectors {
    active: Mutex<HashMap<String, LruCache<String, i64>>>,
    profiler: Arc<Mutex<Profiler>>,
}

impl std::fmt::Debug for UserVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserVectors").finish_non_exhaustive()
    }
}

impl UserVectors {
    pub fn new(profiler: Arc<Mutex<Profiler>>) -> UserVectors {
        UserVectors {
            active: Mutex::default(),
            profiler,
        }
    }

    /// `user` called something through proxy `node` at `unix_ms`.
    pub fn saw(&self, node: &str, user: &str, unix_ms: i64) {
        let mut active = self.active.lock().expect("active users lock poisoned");
        let users = active
            .entry(node.to_string())
            .or_insert_with(|| LruCache::new(NonZeroUsize::new(PER_NODE).expect("PER_NODE > 0")));
        match users.get_mut(user) {
            Some(at) => *at = (*at).max(unix_ms),
            None => {
                users.put(user.to_string(), unix_ms);
            }
        }
    }

    /// The vectors of the users active at `node` by `now_ms`, by resource name.
    pub fn for_node(&self, node: &str, now_ms: i64) -> BTreeMap<String, Resource> {
        let users: Vec<String> = {
            let active = self.active.lock().expect("active users lock poisoned");
            let Some(users) = active.get(node) else {
                return BTreeMap::new();
            };
            users
                .iter()
                .filter(|(_, at)| now_ms - **at <= ACTIVE_FOR_MS)
                .map(|(u, _)| u.clone())
                .collect()
        };
        let profiler = self.profiler.lock().expect("profiler lock poisoned");
        users
            .into_iter()
            .filter_map(|user| {
                let next: Vec<NextCall> = profiler
                    .predict(&user, TOP_K)
                    .into_iter()
                    .map(|p| NextCall {
                        service: p.service,
                        probability: rounded(p.probability),
                    })
                    .filter(|n| n.probability > 0.0)
                    .collect();
                if next.is_empty() {
                    return None;
                }
                let name = format!("user:{user}");
                let body = Body::BehaviourProfile(BehaviourProfile {
                    service: String::new(),
                    next,
                    user,
                });
                Some((name.clone(), Resource::new(name, body)))
            })
            .collect()
    }

    /// Forgets a proxy's users (it went away for good).
    pub fn forget(&self, node: &str) {
        self.active
            .lock()
            .expect("active users lock poisoned")
            .remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_gets_the_vectors_of_its_recently_active_users_only() {
        let profiler = Arc::new(Mutex::new(Profiler::new(Default::default())));
        {
            let mut p = profiler.lock().unwrap();
            for i in 0..20 {
                let t = f64::from(i);
                p.observe("ann", "browse", t);
                p.observe("ann", "cart", t + 0.5);
            }
            p.observe("bob", "browse", 30.0);
        }
        let v = UserVectors::new(profiler);
        v.saw("p1", "ann", 1_000);
        v.saw("p2", "bob", 1_000);
        // No history of her own: the profiler backs off to everyone's transitions.
        v.saw("p2", "carl", 1_000);
        let p1 = v.for_node("p1", 2_000);
        assert_eq!(p1.keys().collect::<Vec<_>>(), ["user:ann"]);
        let Some(Body::BehaviourProfile(b)) = &p1["user:ann"].body else {
            panic!("a behaviour profile");
        };
        assert_eq!(b.user, "ann");
        assert!(!b.next.is_empty() && b.next.len() <= TOP_K);
        assert!(b
            .next
            .iter()
            .all(|n| (n.probability * 100.0).fract() == 0.0));
        assert_eq!(
            v.for_node("p2", 2_000).keys().collect::<Vec<_>>(),
            ["user:bob", "user:carl"]
        );
        assert!(
            v.for_node("p1", 1_000 + ACTIVE_FOR_MS + 1).is_empty(),
            "inactive for too long"
        );
        assert!(v.for_node("p3", 2_000).is_empty());
        v.forget("p1");
        assert!(v.for_node("p1", 2_000).is_empty());
    }
}
