use super::eval::{evaluate, load, Columns, EvalError};
use super::*;

const DAY: f64 = 86_400.0;

fn top(p: &Profiler, user: &str) -> String {
    p.predict(user, 1)
        .first()
        .map(|x| x.service.clone())
        .unwrap_or_default()
}

#[test]
fn learns_a_users_own_sequence() {
    let mut p = Profiler::new(ProfilerConfig::default());
    let mut t = 0.0;
    for _ in 0..20 {
        for s in ["login", "search", "checkout"] {
            p.observe("alice", s, t);
            t += 10.0;
        }
    }
    p.observe("alice", "login", t);
    assert_eq!(top(&p, "alice"), "search");
    p.observe("alice", "search", t + 1.0);
    assert_eq!(top(&p, "alice"), "checkout");
    let probs: f64 = p.predict("alice", 10).iter().map(|x| x.probability).sum();
    assert!((probs - 1.0).abs() < 1e-9, "a distribution: {probs}");
}

#[test]
fn a_new_user_backs_off_to_everyone_else() {
    let mut p = Profiler::new(ProfilerConfig::default());
    for (i, u) in ["a", "b", "c", "d"].iter().enumerate() {
        p.observe(u, "home", i as f64);
        p.observe(u, "cart", i as f64 + 0.5);
    }
    // One request of their own: the newcomer's next is mostly what everyone does next.
    p.observe("newcomer", "home", 10.0);
    let pred = p.predict("newcomer", 2);
    assert_eq!(pred.len(), 2, "{pred:?}");
    assert!(
        pred.iter()
            .any(|x| x.service == "cart" && x.probability > 0.4),
        "{pred:?}"
    );
    assert!(
        p.predict("stranger", 3).iter().any(|x| x.service == "home"),
        "unknown users get popular services"
    );
}

#[test]
fn changed_behaviour_wins_over_old_habits() {
    let mut p = Profiler::new(ProfilerConfig {
        half_life_secs: DAY,
        ..Default::default()
    });
    let mut t = 0.0;
    for _ in 0..50 {
        p.observe("bob", "a", t);
        p.observe("bob", "old", t + 1.0);
        t += 100.0;
    }
    // Two weeks later, a new habit, seen far fewer times.
    t += 14.0 * DAY;
    for _ in 0..5 {
        p.observe("bob", "a", t);
        p.observe("bob", "new", t + 1.0);
        t += 100.0;
    }
    p.observe("bob", "a", t);
    assert_eq!(top(&p, "bob"), "new");
}

#[test]
fn memory_is_bounded_per_user_and_in_users() {
    let mut p = Profiler::new(ProfilerConfig {
        max_users: 100,
        user_transitions: 4,
        user_services: 3,
        ..Default::default()
    });
    for u in 0..1000 {
        for s in 0..20 {
            p.observe(&format!("u{u}"), &format!("s{s}"), (u * 20 + s) as f64);
        }
    }
    assert_eq!(p.users(), 100);
    let (_, last) = p.users.peek_lru().unwrap();
    assert!(last.transitions.len() <= 4 && last.services.len() <= 3);
}

#[test]
fn forward_decay_rescales_without_overflow() {
    // A 1 s half-life over 2,000 s would need weights of 2^2000 without rescaling.
    let mut p = Profiler::new(ProfilerConfig {
        half_life_secs: 1.0,
        ..Default::default()
    });
    for i in 0..2000 {
        p.observe("u", if i % 2 == 0 { "x" } else { "y" }, i as f64);
    }
    let pred = p.predict("u", 2);
    assert_eq!(pred[0].service, "x");
    assert!(
        pred.iter()
            .all(|x| x.probability.is_finite() && x.probability > 0.0),
        "{pred:?}"
    );
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn cols() -> Columns {
    Columns {
        time: "timestamp".into(),
        user: "user".into(),
        service: "service".into(),
    }
}

#[test]
fn matches_markov_and_beats_most_frequent_on_the_alibaba_trace() {
    let path = fixture("traces/alibaba_sessions.csv");
    let events = load(&path, &cols()).unwrap();
    assert_eq!(events.len(), 26_798);
    let r = evaluate(&events, 0.8, ProfilerConfig::default(), "alibaba").unwrap();
    assert!(r.profiler.n > 4000, "{r:?}");
    // Regression guards at the measured level (bench/RESULTS.md): far above the
    // most-frequent baseline, level with a global first-order chain on top-1 and above
    // it on top-3. Beating the chain on top-1 is still open (issue 6).
    assert!(
        r.profiler.top1_pct() > r.most_frequent.top1_pct() + 30.0,
        "{r:?}"
    );
    assert!(r.profiler.top1_pct() > r.markov1.top1_pct() - 1.0, "{r:?}");
    assert!(r.profiler.top3_pct() >= r.markov1.top3_pct(), "{r:?}");
    assert!(r.profiler.top3_pct() >= r.profiler.top1_pct());
}

#[test]
fn bad_input_names_the_column_or_line() {
    let dir = std::env::temp_dir().join(format!("presage-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("a.csv");
    std::fs::write(&f, "time,who,what\n1,a,x\n").unwrap();
    let e = load(&f, &cols()).unwrap_err();
    assert!(
        matches!(e, EvalError::MissingColumn { .. })
            && e.to_string().contains("no column named \"timestamp\""),
        "{e}"
    );
    std::fs::write(&f, "timestamp,user,service\n1,a,x\nyesterday,b,y\n").unwrap();
    let e = load(&f, &cols()).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("a.csv:3: bad time \"yesterday\": expected seconds or YYYY-MM-DD HH:MM:SS"),
        "{e}"
    );
    std::fs::write(&f, "timestamp,user,service\n1,a,x\n2,,y\n").unwrap();
    assert!(load(&f, &cols())
        .unwrap_err()
        .to_string()
        .contains(":3: missing user"));
    std::fs::write(&f, "").unwrap();
    assert!(matches!(
        load(&f, &cols()).unwrap_err(),
        EvalError::Empty { .. }
    ));
    std::fs::write(&f, "timestamp,user,service\n1,a,x\n2,b,y\n").unwrap();
    let ev = load(&f, &cols()).unwrap();
    assert!(matches!(
        evaluate(&ev, 0.8, ProfilerConfig::default(), "f"),
        Err(EvalError::NothingToPredict { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Resident memory of this process in KiB (nextest runs each test in its own process).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn one_million_users_fit_well_under_a_gibibyte() {
    // Synthetic ids beside the real-trace tests: this measures capacity, not accuracy.
    let services: Vec<String> = (0..200).map(|i| format!("svc-{i}")).collect();
    let before = rss_kib();
    let mut p = Profiler::new(ProfilerConfig::default());
    let mut t = 0.0;
    for round in 0..3 {
        for u in 0..1_000_000u32 {
            let s = &services[((u as usize).wrapping_mul(31) + round * 7) % services.len()];
            p.observe(&format!("user-{u:07}"), s, t);
            t += 0.001;
        }
    }
    assert_eq!(p.users(), 1_000_000);
    let used_mib = (rss_kib() - before) / 1024;
    eprintln!("1,000,000 users with 3 requests each: {used_mib} MiB resident");
    assert!(used_mib < 700, "{used_mib} MiB");
    assert_eq!(p.predict("user-0000001", 1).len(), 1);
}
