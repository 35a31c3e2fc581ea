//! Per-service load, counted on the request path for the control plane's telemetry:
//! requests, errors, in-flight and a latency histogram per upstream cluster.
//!
//! Handles are resolved when a route is built (like `metrics::RouteStats`), so a request
//! pays a few atomic adds and one uncontended lock. Counters live in a registry keyed by
//! cluster name, so they survive reloads that rebuild the cluster. `take` empties them
//! once per reporting interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest latency kept exactly (60 s, in µs); longer ones saturate.
const MAX_LATENCY_US: u64 = 60_000_000;
/// 2 significant digits: 1% resolution is plenty for the planner and keeps each
/// histogram near 40 KiB in memory and a few hundred bytes on the wire.
const SIGFIG: u8 = 2;

/// One cluster's counters.
#[derive(Debug)]
pub struct ServiceLoad {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicI64,
    latency: Mutex<Histogram<u64>>,
}

/// Counts one request in flight until `finish`, or until dropped unanswered (the client
/// went away), which counts as an error.
#[derive(Debug)]
pub struct InFlight<'a> {
    load: &'a ServiceLoad,
    done: bool,
}

impl ServiceLoad {
    fn new() -> ServiceLoad {
        ServiceLoad {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG)
                    .expect("valid histogram bounds"),
            ),
        }
    }

    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: self,
            done: false,
        }
    }
}

impl InFlight<'_> {
    /// The response went out with `status` after `elapsed`.
    pub fn finish(mut self, status: u16, elapsed: Duration) {
        self.done = true;
        let l = self.load;
        l.in_flight.fetch_sub(1, Ordering::Relaxed);
        l.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            l.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut h) = l.latency.lock() {
            h.saturating_record((elapsed.as_micros() as u64).max(1));
        }
    }
}

impl InFlight<'_> {
    /// Leaves flight without counting: the attempt was cancelled because another copy
    /// of it answered first.
    pub fn abandon(mut self) {
        self.done = true;
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.load.requests.fetch_add(1, Ordering::Relaxed);
            self.load.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one interval saw for one service (and, when not empty, one QoS profile).
#[derive(Debug)]
pub struct Taken {
    pub service: String,
    pub qos_profile: String,
    pub endpoint: String,
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub latency: Histogram<u64>,
}

/// Every cluster's counters by name, each (cluster, QoS profile) pair's, and each
/// endpoint's: a request counts in its cluster's entry and again in its profile's and
/// (per attempt) its endpoint's, so the cluster's own entry stays the total.
#[derive(Debug, Default)]
pub struct ServiceLoads {
    by_name: Mutex<HashMap<(String, String, String), Arc<ServiceLoad>>>,
}

impl ServiceLoads {
    /// The handle for `cluster`, created on first use.
    pub fn get(&self, cluster: &str) -> Arc<ServiceLoad> {
        self.get_for(cluster, "")
    }

    /// The handle for requests to `cluster` under QoS profile `profile`.
    pub fn get_for(&self, cluster: &str, profile: &str) -> Arc<ServiceLoad> {
        self.entry(cluster, profile, "")
    }

    /// The handle for attempts sent to one endpoint (`host:port`) of `cluster`.
    pub fn get_endpoint(&self, cluster: &str, endpoint: &str) -> Arc<ServiceLoad> {
        self.entry(cluster, "", endpoint)
    }

    fn entry(&self, cluster: &str, profile: &str, endpoint: &str) -> Arc<ServiceLoad> {
        let mut m = self.by_name.lock().expect("service load lock poisoned");
        m.entry((
            cluster.to_string(),
            profile.to_string(),
            endpoint.to_string(),
        ))
        .or_insert_with(|| Arc::new(ServiceLoad::new()))
        .clone()
    }

    /// Empties every counter and returns what they held (services with no traffic and
    /// nothing in flight are left out).
    pub fn take(&self) -> Vec<Taken> {
        let mut m = self.by_name.lock().expect("service load lock poisoned");
        // Forget idle entries nothing holds any more (removed routes and endpoints).
        m.retain(|_, l| {
            Arc::strong_count(l) > 1
                || l.requests.load(Ordering::Relaxed) > 0
                || l.in_flight.load(Ordering::Relaxed) > 0
        });
        let mut out = Vec::new();
        for ((name, profile, endpoint), l) in m.iter() {
            let requests = l.requests.swap(0, Ordering::Relaxed);
            let errors = l.errors.swap(0, Ordering::Relaxed);
            let in_flight = l.in_flight.load(Ordering::Relaxed).max(0) as u64;
            if requests == 0 && in_flight == 0 {
                continue;
            }
            let latency = {
                let mut h = l.latency.lock().expect("latency lock poisoned");
                let copy = h.clone();
                h.reset();
                copy
            };
            out.push(Taken {
                service: name.clone(),
                qos_profile: profile.clone(),
                endpoint: endpoint.clone(),
                requests,
                errors,
                in_flight,
                latency,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_request_counts_as_an_error_and_leaves_flight() {
        let loads = ServiceLoads::default();
        let web = loads.get("web");
        web.start().finish(200, Duration::from_millis(3));
        web.start().finish(503, Duration::from_millis(1));
        let pending = web.start();
        drop(web.start());
        let t = loads.take();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].qos_profile, "");
        assert_eq!((t[0].requests, t[0].errors, t[0].in_flight), (3, 2, 1));
        assert_eq!(t[0].latency.len(), 2);
        drop(pending);
        let t = loads.take();
        assert_eq!((t[0].requests, t[0].in_flight), (1, 0));
        assert!(loads.take().is_empty(), "nothing left to report");
    }
}
