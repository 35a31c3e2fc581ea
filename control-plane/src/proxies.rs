//! Which proxies are connected and what they have: the ACKed version of each resource
//! type, the last NACK, the last telemetry report. Served by `GET /v1/proxies`.
//!
//! Keyed by node id; a proxy that reconnects replaces its old entry, and a stream that
//! ends removes the entry only if no newer stream of the same node took it over.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::time::unix_ms;

/// One proxy, as the control plane sees it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ProxyStatus {
    pub id: String,
    /// The service the proxy is a sidecar of (empty for a standalone proxy).
    pub service: String,
    pub version: String,
    /// Peer address of its discovery stream.
    pub address: String,
    pub connected: bool,
    pub connected_unix_ms: i64,
    /// When the discovery stream ended (None while connected).
    pub disconnected_unix_ms: Option<i64>,
    /// Resource type -> the type version the proxy last ACKed.
    pub acked: BTreeMap<String, String>,
    pub acks: u64,
    pub nacks: u64,
    /// The reason given by the last NACK, if any.
    pub last_nack: Option<String>,
    pub last_report_unix_ms: Option<i64>,
    /// Telemetry reports the proxy says it dropped (cumulative).
    pub dropped_reports: u64,
}

/// A disconnected proxy is listed for an hour, then forgotten.
const FORGET_AFTER_MS: i64 = 3_600_000;

#[derive(Debug, Default)]
pub struct Proxies {
    inner: Mutex<HashMap<String, (u64, ProxyStatus)>>,
    next_stream: AtomicU64,
}

impl Proxies {
    fn with<R>(&self, id: &str, f: impl FnOnce(&mut ProxyStatus) -> R) -> R {
        let mut map = self.inner.lock().expect("proxies lock poisoned");
        let (_, status) = map.entry(id.to_string()).or_insert_with(|| {
            (
                0,
                ProxyStatus {
                    id: id.to_string(),
                    ..Default::default()
                },
            )
        });
        f(status)
    }

    /// Registers a discovery stream; returns its stream id for `disconnected`.
    pub fn connected(&self, node: &presage_api::Node, address: String) -> u64 {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
        // Proxies come and go (pods get new ids): now and then forget the long gone, or
        // the table grows with every pod ever seen.
        if stream.is_multiple_of(1024) {
            self.forget_disconnected_before(unix_ms() - FORGET_AFTER_MS);
        }
        let mut map = self.inner.lock().expect("proxies lock poisoned");
        let prev = map.remove(&node.id).map(|(_, s)| s);
        let status = ProxyStatus {
            id: node.id.clone(),
            service: node.service.clone(),
            version: node.version.clone(),
            address,
            connected: true,
            connected_unix_ms: unix_ms(),
            last_report_unix_ms: prev.as_ref().and_then(|p| p.last_report_unix_ms),
            dropped_reports: prev.map_or(0, |p| p.dropped_reports),
            ..Default::default()
        };
        map.insert(node.id.clone(), (stream, status));
        stream
    }

    pub fn disconnected(&self, id: &str, stream: u64) {
        let mut map = self.inner.lock().expect("proxies lock poisoned");
        if let Some((s, status)) = map.get_mut(id) {
            if *s == stream {
                status.connected = false;
                status.disconnected_unix_ms = Some(unix_ms());
            }
        }
    }

    pub fn acked(&self, id: &str, type_url: &str, version: &str) {
        self.with(id, |s| {
            s.acks += 1;
            s.acked.insert(type_url.to_string(), version.to_string());
        })
    }

    pub fn nacked(&self, id: &str, reason: &str) {
        self.with(id, |s| {
            s.nacks += 1;
            s.last_nack = Some(reason.to_string());
        })
    }

    pub fn reported(&self, id: &str, dropped: u64) {
        self.with(id, |s| {
            s.last_report_unix_ms = Some(unix_ms());
            s.dropped_reports = dropped;
        })
    }

    /// Drops proxies whose stream ended before `cutoff_ms`.
    pub fn forget_disconnected_before(&self, cutoff_ms: i64) {
        let mut map = self.inner.lock().expect("proxies lock poisoned");
        map.retain(|_, (_, s)| {
            s.connected || s.disconnected_unix_ms.is_none_or(|t| t >= cutoff_ms)
        });
    }

    /// Every known proxy, by id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        let map = self.inner.lock().expect("proxies lock poisoned");
        let mut v: Vec<ProxyStatus> = map.values().map(|(_, s)| s.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_replaces_the_entry_and_the_long_gone_are_forgotten() {
        let p = Proxies::default();
        let node = |id: &str| presage_api::Node {
            id: id.into(),
            ..Default::default()
        };
        let s1 = p.connected(&node("a"), "x:1".into());
        let s2 = p.connected(&node("a"), "x:2".into());
        // The old stream ending does not mark the new one disconnected.
        p.disconnected("a", s1);
        assert!(p.list()[0].connected);
        p.disconnected("a", s2);
        let b = p.connected(&node("b"), "x:3".into());
        assert_eq!(p.list().len(), 2);
        p.forget_disconnected_before(unix_ms() + 1);
        let ids: Vec<String> = p.list().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["b"], "a is gone, b is still connected");
        let _ = b;
    }
}
