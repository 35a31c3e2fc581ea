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

#[test]
fn expected_arrivals_follow_each_users_pace_and_prediction() {
    let mut p = Profiler::new(ProfilerConfig::default());
    // a alternates x, y every 10 s; b called once, an hour ago.
    p.observe("b", "z", 0.0);
    for i in 0..40 {
        p.observe(
            "a",
            if i % 2 == 0 { "x" } else { "y" },
            3_600.0 + 10.0 * i as f64,
        );
    }
    let now = 3_600.0 + 390.0; // a's last call (y) was just now
    let a = p.expected_arrivals(now, 10.0);
    assert_eq!(a.active_users, 1, "b is long gone: {a:?}");
    let total: f64 = a.services.iter().map(|s| s.expected).sum();
    // a's rate: its 40 calls, each decayed by its age over 600 s.
    let rate: f64 = (0..40)
        .map(|k| (-10.0 * k as f64 / 600.0).exp() / 600.0)
        .sum();
    assert!((total - rate * 10.0).abs() < 1e-9, "a's recent rate: {a:?}");
    assert_eq!(a.services[0].service, "x", "after y comes x: {a:?}");
    // Silent for four of its gaps: a has left too.
    assert_eq!(p.expected_arrivals(now + 41.0, 10.0).active_users, 0);
}

#[test]
fn the_profiler_survives_encoding_for_the_store() {
    let events = load(&fixture("traces/alibaba_sessions.csv"), &cols()).unwrap();
    let mut p = Profiler::new(ProfilerConfig::default());
    for e in &events[..20_000] {
        p.observe(&e.user, &e.service, e.time);
    }
    let bytes = p.encode();
    let q = Profiler::decode(ProfilerConfig::default(), &bytes).unwrap();
    assert_eq!(q.users(), p.users());
    let now = events[19_999].time;
    assert_eq!(
        q.expected_arrivals(now, 600.0),
        p.expected_arrivals(now, 600.0)
    );
    for e in &events[20_000..20_200] {
        assert_eq!(q.predict(&e.user, 3), p.predict(&e.user, 3), "{}", e.user);
    }
    // A smaller cap keeps the users seen last.
    let small = Profiler::decode(
        ProfilerConfig {
            max_users: 10,
            ..Default::default()
        },
        &bytes,
    )
    .unwrap();
    assert_eq!(small.users(), 10);
    assert_eq!(
        small.predict(&events[19_999].user, 1),
        p.predict(&events[19_999].user, 1)
    );
    assert!(Profiler::decode(ProfilerConfig::default(), &bytes[..bytes.len() / 2]).is_err());
}

/// On the real per-user trace: at every 10-minute cut through its last fifth, the calls
/// expected in the next 10 minutes from the users seen so far, against the calls those
/// users really made.
#[test]
fn expected_arrivals_track_the_calls_of_known_users_on_the_alibaba_trace() {
    let events = load(&fixture("traces/alibaba_sessions.csv"), &cols()).unwrap();
    let window = 600.0;
    let start = (events.len() as f64 * 0.8) as usize;
    let mut p = Profiler::new(ProfilerConfig::default());
    let mut known = std::collections::HashSet::new();
    let mut i = 0;
    let learn = |p: &mut Profiler,
                 until: f64,
                 i: &mut usize,
                 known: &mut std::collections::HashSet<String>| {
        while *i < events.len() && events[*i].time < until {
            let e = &events[*i];
            p.observe(&e.user, &e.service, e.time);
            known.insert(e.user.clone());
            *i += 1;
        }
    };
    let mut cut = events[start].time;
    let end = events.last().unwrap().time;
    let (mut expected, mut actual, mut cuts) = (0.0, 0usize, 0);
    let (mut per_cut_err, mut naive_err) = (0.0, 0.0);
    let mut last_actual = 0usize;
    while cut < end {
        learn(&mut p, cut, &mut i, &mut known);
        let e: f64 = p
            .expected_arrivals(cut, window)
            .services
            .iter()
            .map(|s| s.expected)
            .sum();
        let real = events[i..]
            .iter()
            .take_while(|x| x.time < cut + window)
            .filter(|x| known.contains(&x.user))
            .count();
        expected += e;
        actual += real;
        per_cut_err += (e - real as f64).abs();
        naive_err += (last_actual as f64 - real as f64).abs();
        last_actual = real;
        cuts += 1;
        cut += window;
    }
    let (mae, naive) = (per_cut_err / cuts as f64, naive_err / cuts as f64);
    println!("cuts {cuts}, expected {expected:.1}, actual {actual}, mae {mae:.2} vs last window {naive:.2}");
    assert!(cuts > 500);
    // Measured: 3,652 expected against 3,924 made; error per window 2.75 against 3.41.
    assert!(
        (expected / actual as f64 - 1.0).abs() < 0.15,
        "in total, what known users did: {expected} vs {actual}"
    );
    assert!(
        mae < naive,
        "better than carrying the last window forward: {mae} vs {naive}"
    );
}
