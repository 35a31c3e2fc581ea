//! Recently handled requests, as the proxies recorded them (`LoadReport.requests`), by
//! request id: what `GET /v1/requests/{id}` (the spec's `getServiceStatus`) answers.
//! Kept for `WINDOW` and at most `CAPACITY` records, oldest out first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use presage_api::RequestRecord;

/// How long a request stays findable.
pub const WINDOW_MS: i64 = 10 * 60 * 1000;
/// Most records kept (about 200 bytes each).
pub const CAPACITY: usize = 200_000;

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, RequestRecord>,
    /// (unix_ms, id) in arrival order, for eviction.
    order: VecDeque<(i64, String)>,
}

#[derive(Debug, Default)]
pub struct Requests {
    inner: Mutex<Inner>,
}

impl Requests {
    /// Keeps `records` (a later record of the same id replaces the earlier one), then
    /// forgets what is older than the window or beyond the capacity.
    pub fn add(&self, records: &[RequestRecord], now_ms: i64) {
        let mut g = self.inner.lock().expect("requests lock poisoned");
        for r in records.iter().filter(|r| !r.request_id.is_empty()) {
            g.order.push_back((r.unix_ms, r.request_id.clone()));
            g.by_id.insert(r.request_id.clone(), r.clone());
        }
        while let Some((at, id)) = g.order.front().cloned() {
            if at >= now_ms - WINDOW_MS && g.order.len() <= CAPACITY {
                break;
            }
            g.order.pop_front();
            // Only if this entry is still the newest record of that id.
            if g.by_id.get(&id).is_some_and(|r| r.unix_ms == at) {
                g.by_id.remove(&id);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<RequestRecord> {
        self.inner
            .lock()
            .expect("requests lock poisoned")
            .by_id
            .get(id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, at: i64) -> RequestRecord {
        RequestRecord {
            request_id: id.into(),
            unix_ms: at,
            status: 200,
            ..Default::default()
        }
    }

    #[test]
    fn records_are_found_by_id_until_they_age_out() {
        let r = Requests::default();
        r.add(&[rec("a", 1_000), rec("b", 2_000)], 2_000);
        assert_eq!(r.get("a").unwrap().status, 200);
        r.add(&[rec("c", WINDOW_MS + 1_500)], WINDOW_MS + 1_500);
        assert!(r.get("a").is_none(), "older than the window");
        assert!(r.get("b").is_some() && r.get("c").is_some());
        assert!(r.get("nope").is_none());
    }
}
