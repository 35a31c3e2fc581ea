//! Recently handled requests, as the proxies recorded them (`LoadReport.requests`), by
//! request id: what `GET /v1/requests/{id}` (the spec's `getServiceStatus`) answers.
//! Kept in memory for `WINDOW` and at most `CAPACITY` records, oldest out first.
//! Workflow runs (records with `workflow`) are also kept in the store, for their
//! workflow's `retention` (`keep_ms`), and survive a restart.

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
    /// Where workflow runs are kept (None: memory only).
    store: Option<crate::store::Store>,
}

impl Requests {
    /// Also keeps workflow runs in `store`.
    pub fn durable(store: crate::store::Store) -> Requests {
        Requests {
            inner: Mutex::default(),
            store: Some(store),
        }
    }

    /// Keeps `records` (a later record of the same id replaces the earlier one), then
    /// forgets what is older than the window or beyond the capacity.
    pub fn add(&self, records: &[RequestRecord], now_ms: i64) {
        self.keep_runs(records, now_ms);
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

    /// Writes the workflow runs among `records` to the store, off the caller's thread
    /// (a commit waits for the disk).
    fn keep_runs(&self, records: &[RequestRecord], now_ms: i64) {
        let Some(store) = &self.store else {
            return;
        };
        let now = now_ms.max(0) as u64;
        let runs: Vec<(RequestRecord, u64)> = records
            .iter()
            .filter(|r| !r.workflow.is_empty() && !r.request_id.is_empty())
            .map(|r| (r.clone(), now + r.keep_ms.max(WINDOW_MS as u64)))
            .collect();
        if runs.is_empty() {
            return;
        }
        let store = store.clone();
        let write = move || {
            if let Err(e) = store.put_runs(&runs, now) {
                tracing::error!(error = %e, "keeping workflow runs failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// The request's record: a recent one from memory, else a kept workflow run.
    pub fn get(&self, id: &str) -> Option<RequestRecord> {
        let recent = self
            .inner
            .lock()
            .expect("requests lock poisoned")
            .by_id
            .get(id)
            .cloned();
        recent.or_else(|| {
            let now = crate::time::unix_ms().max(0) as u64;
            match self.store.as_ref()?.run(id, now) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "reading a kept workflow run failed");
                    None
                }
            }
        })
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

    #[test]
    fn workflow_runs_are_kept_in_the_store_for_their_retention_across_a_restart() {
        let dir = std::env::temp_dir().join(format!("presage-runs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("s.redb");
        let now = crate::time::unix_ms();
        let run = |id: &str, keep_ms: u64| RequestRecord {
            workflow: "{\"state\":\"succeeded\"}".into(),
            keep_ms,
            ..rec(id, now)
        };
        {
            let r = Requests::durable(crate::store::Store::open(&path).unwrap());
            // Without a runtime the write happens at once.
            r.add(
                &[run("long", 3_600_000), run("short", 0), rec("plain", now)],
                now,
            );
        }
        // A restart: memory is empty, the store is not.
        let r = Requests::durable(crate::store::Store::open(&path).unwrap());
        assert_eq!(r.get("long").unwrap().workflow, "{\"state\":\"succeeded\"}");
        assert!(
            r.get("short").is_some(),
            "kept at least the in-memory window"
        );
        assert!(r.get("plain").is_none(), "only workflow runs are kept");
        // Past its expiry a run is gone, and a later write purges it.
        drop(r);
        let s = crate::store::Store::open(&path).unwrap();
        let later = (now + WINDOW_MS + 1) as u64;
        assert!(s.run("short", later).unwrap().is_none());
        s.put_runs(&[], later).unwrap();
        assert!(
            s.run("short", 0).unwrap().is_none(),
            "purged from the table"
        );
        assert!(s.run("long", later).unwrap().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
