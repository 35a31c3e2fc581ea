//! The local actuator's unit tests: start back-off, and resizes written to a cgroup.

use super::*;

/// A program that exits before it is ready is not relaunched at every decision: the
/// next launch waits a backoff that doubles with each failure, a batch launched
/// together counting once (real processes).
#[tokio::test]
async fn failed_starts_back_off() {
    let cfg: LocalConfig =
        serde_json::from_value(serde_json::json!({"command": ["sh", "-c", "exit 3", "{port}"]}))
            .unwrap();
    let (tx, _rx) = mpsc::channel(8);
    let local = Local::new("crashy", cfg, tx);
    let want = Want {
        standard: 3,
        ..Default::default()
    };
    let mut tasks = local.inner.tasks.subscribe();
    local.scale(&want).await.unwrap();
    tasks.wait_for(|n| *n == 0).await.unwrap();
    let err = local.scale(&want).await.unwrap_err().to_string();
    assert!(
        err.starts_with("1 start(s) in a row failed; launches resume at 20"),
        "three failures of one batch count once: {err}"
    );
    assert_eq!(local.status().starting, 0, "nothing launched");
    let again = local.scale(&want).await.unwrap_err().to_string();
    assert_eq!(again, err, "the same words while paused: recorded once");
    let mut st = local.inner.lock();
    let first = st.retry_at.unwrap() - Instant::now();
    assert!(first <= START_BACKOFF, "{first:?}");
    st.start_failed("crashy", Instant::now());
    let left = st.retry_at.unwrap() - Instant::now();
    assert!(
        left > START_BACKOFF * 2 - Duration::from_secs(1),
        "{left:?}"
    );
    for _ in 0..10 {
        st.start_failed("crashy", Instant::now());
    }
    let left = st.retry_at.unwrap() - Instant::now();
    assert!(left <= MAX_START_BACKOFF, "{left:?}");
    assert_eq!(st.failed_starts, 12);
}

/// A local actuator whose instances the test puts in place itself (its command is never
/// run).
fn not_launched(service: &str) -> (Local, mpsc::Receiver<Update>) {
    let cfg: LocalConfig =
        serde_json::from_value(serde_json::json!({"command": ["srv", "{port}"]})).unwrap();
    let (tx, rx) = mpsc::channel(8);
    (Local::new(service, cfg, tx), rx)
}

/// A refused resize is written again at the next decision, and once written it is no
/// longer reported. A plain directory (missing, then made) stands in for the cgroup: no
/// delegated cgroup v2 hierarchy is needed.
#[tokio::test]
async fn a_refused_resize_is_written_again() {
    let (local, _registry) = not_launched("resized");
    let dir = std::env::temp_dir().join(format!("presage-resize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let slot = Slot {
        port: 1,
        ready: true,
        pool: None,
        group: Some(Arc::new(Group::at(dir.clone()))),
        limits_error: None,
        stop: None,
    };
    local.inner.lock().slots.insert(0, slot);
    let gold = TierResources {
        tier: "gold".into(),
        cpu_weight: 400,
        memory_mb: 64,
    };
    local.inner.resize(Some(gold.clone()));
    let why = local.status().limits_unavailable.expect("the write failed");
    assert!(why.contains("cpu.weight"), "{why}");
    std::fs::create_dir_all(&dir).unwrap();
    local.inner.resize(Some(gold));
    let now = local.status().limits_unavailable;
    let weight = std::fs::read_to_string(dir.join("cpu.weight"));
    let min = std::fs::read_to_string(dir.join("memory.min"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(weight.unwrap(), "400");
    assert_eq!(min.unwrap(), (64u64 << 20).to_string());
    assert_eq!(now, None, "the write went through: nothing to report");
}

/// An instance whose limits could not be applied is reported while it runs, and not
/// after it stops.
#[tokio::test]
async fn an_instance_without_limits_is_reported_while_it_runs() {
    let (local, _registry) = not_launched("unlimited");
    let (stop, _stopped) = oneshot::channel();
    let refused = "cgroup v2 controllers not delegated";
    let slot = Slot {
        port: 1,
        ready: true,
        pool: None,
        group: None,
        limits_error: Some(refused.into()),
        stop: Some(stop),
    };
    local.inner.lock().slots.insert(1, slot);
    assert_eq!(local.status().limits_unavailable.as_deref(), Some(refused));
    local.inner.lock().slots.get_mut(&1).unwrap().stop = None;
    assert_eq!(local.status().limits_unavailable, None, "it stopped");
}
