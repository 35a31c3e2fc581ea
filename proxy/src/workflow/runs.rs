//! Workflow runs and their progress: each run's steps as they go, kept after it ends for
//! its workflow's `retention` so `GET /workflows/requests/{id}` (getServiceStatus) can
//! show an asynchronous caller how it went. Bounded: past `MAX_RUNS`, the oldest ended
//! run goes first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Runs kept at most (running ones are never dropped).
pub const MAX_RUNS: usize = 10_000;

/// One run as a status answer shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub request_id: String,
    pub workflow: String,
    /// `running`, `succeeded` or `failed`.
    pub state: &'static str,
    pub started_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    pub steps: Vec<StepProgress>,
    /// The answer's body, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// HTTP status the run answers (or answered) with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// One step's progress (a step in a loop appears once per iteration).
#[derive(Debug, Clone, Serialize)]
pub struct StepProgress {
    pub name: String,
    /// `running`, `succeeded`, `failed`, `skipped`, `fallback` (failed, its fallback ran),
    /// `compensating`, `compensated`.
    pub state: &'static str,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

/// A live run's progress, updated by the engine.
pub type Live = Arc<Mutex<Progress>>;

#[derive(Debug, Default)]
pub struct Runs {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, (Live, Option<Instant>)>,
    /// Ended runs in the order they ended, with when they expire.
    ended: VecDeque<(String, Instant)>,
}

impl Runs {
    /// Starts tracking a run.
    pub fn start(&self, request_id: &str, workflow: &str) -> Live {
        let live = Arc::new(Mutex::new(Progress {
            request_id: request_id.to_string(),
            workflow: workflow.to_string(),
            state: "running",
            started_ms: now_ms(),
            finished_ms: None,
            steps: Vec::new(),
            output: None,
            error: None,
            status: None,
        }));
        let mut inner = self.inner.lock().expect("runs lock poisoned");
        inner.purge(Instant::now());
        inner
            .by_id
            .insert(request_id.to_string(), (live.clone(), None));
        live
    }

    /// The run ended; kept for `retention` from now.
    pub fn ended(&self, request_id: &str, retention: Duration) {
        let until = Instant::now() + retention;
        let mut inner = self.inner.lock().expect("runs lock poisoned");
        if let Some(entry) = inner.by_id.get_mut(request_id) {
            entry.1 = Some(until);
            inner.ended.push_back((request_id.to_string(), until));
        }
        inner.purge(Instant::now());
    }

    pub fn get(&self, request_id: &str) -> Option<Progress> {
        let mut inner = self.inner.lock().expect("runs lock poisoned");
        inner.purge(Instant::now());
        let live = inner.by_id.get(request_id)?.0.clone();
        drop(inner);
        let p = live.lock().expect("progress lock poisoned").clone();
        Some(p)
    }

    pub fn is_running(&self, request_id: &str) -> bool {
        let inner = self.inner.lock().expect("runs lock poisoned");
        inner.by_id.get(request_id).is_some_and(|e| e.1.is_none())
    }
}

impl Inner {
    fn purge(&mut self, now: Instant) {
        while let Some((id, until)) = self.ended.front().cloned() {
            let over = self.by_id.len() > MAX_RUNS;
            if until > now && !over {
                break;
            }
            self.ended.pop_front();
            // A reused request id may have started again since: only its ended entry goes.
            if self.by_id.get(&id).is_some_and(|e| e.1 == Some(until)) {
                self.by_id.remove(&id);
            }
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_runs_are_kept_for_their_retention_and_running_ones_always() {
        let runs = Runs::default();
        runs.start("a", "w");
        runs.start("b", "w");
        runs.ended("a", Duration::ZERO);
        runs.ended("b", Duration::from_secs(60));
        assert!(runs.get("a").is_none(), "expired");
        assert_eq!(runs.get("b").map(|p| p.workflow), Some("w".to_string()));
        runs.start("c", "w");
        assert!(runs.is_running("c"));
        assert!(!runs.is_running("b"));
    }
}
