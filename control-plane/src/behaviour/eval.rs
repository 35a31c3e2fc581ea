//! Offline evaluation of the profiler on a per-request trace (`presage profile-eval`).
//!
//! Each user's sequence is split in time order: the first `train_fraction` trains, the
//! rest is predicted one request at a time (and then learnt, as in production). Two
//! baselines see exactly the same data: the globally most frequent service, and a
//! first-order global Markov chain.

use std::collections::HashMap;
use std::path::Path;

use crate::time::parse_time;

use super::{Profiler, ProfilerConfig};

/// One request of a trace.
#[derive(Debug, Clone)]
pub struct Event {
    pub time: f64,
    pub user: String,
    pub service: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the file is empty")]
    Empty { path: String },
    #[error("{path}:1: no column named {column:?} (columns: {found})")]
    MissingColumn {
        path: String,
        column: String,
        found: String,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: no user has two or more requests, nothing to predict")]
    NothingToPredict { path: String },
}

/// Column names of the input CSV.
#[derive(Debug, Clone)]
pub struct Columns {
    pub time: String,
    pub user: String,
    pub service: String,
}

/// Reads `path` (CSV with a header). Times are seconds, or `YYYY-MM-DD HH:MM:SS` (UTC).
/// Fields are plain (no quoted commas), as the traces are. Events are sorted by time (stable).
pub fn load(path: &Path, cols: &Columns) -> Result<Vec<Event>, EvalError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: p.clone(),
        source,
    })?;
    let mut lines = text.lines();
    let header = lines
        .next()
        .filter(|h| !h.trim().is_empty())
        .ok_or(EvalError::Empty { path: p.clone() })?;
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let idx = |c: &str| {
        names
            .iter()
            .position(|n| *n == c)
            .ok_or_else(|| EvalError::MissingColumn {
                path: p.clone(),
                column: c.to_string(),
                found: names.join(","),
            })
    };
    let (it, iu, is) = (idx(&cols.time)?, idx(&cols.user)?, idx(&cols.service)?);
    let mut events = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let line_no = n + 2;
        let field = |i: usize, what: &str| {
            f.get(i)
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| EvalError::Line {
                    path: p.clone(),
                    line: line_no,
                    message: format!("missing {what} (column {:?})", names[i]),
                })
        };
        let raw_time = field(it, "time")?;
        let time = parse_time(raw_time).ok_or_else(|| EvalError::Line {
            path: p.clone(),
            line: line_no,
            message: format!("bad time {raw_time:?}: expected seconds or YYYY-MM-DD HH:MM:SS"),
        })?;
        events.push(Event {
            time,
            user: field(iu, "user")?.to_string(),
            service: field(is, "service")?.to_string(),
        });
    }
    if events.is_empty() {
        return Err(EvalError::Empty { path: p });
    }
    events.sort_by(|a, b| a.time.total_cmp(&b.time));
    Ok(events)
}

/// Accuracy of one predictor.
#[derive(Debug, Clone, Default)]
pub struct Score {
    pub top1: usize,
    pub top3: usize,
    pub n: usize,
}

impl Score {
    fn add(&mut self, ranked: &[&str], actual: &str) {
        self.n += 1;
        if ranked.first() == Some(&actual) {
            self.top1 += 1;
        }
        if ranked.iter().take(3).any(|s| *s == actual) {
            self.top3 += 1;
        }
    }
    pub fn top1_pct(&self) -> f64 {
        100.0 * self.top1 as f64 / self.n.max(1) as f64
    }
    pub fn top3_pct(&self) -> f64 {
        100.0 * self.top3 as f64 / self.n.max(1) as f64
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub users: usize,
    pub train_events: usize,
    pub profiler: Score,
    pub most_frequent: Score,
    pub markov1: Score,
}

/// Splits each user's sequence at `train_fraction`, trains on the prefixes, and scores
/// the suffixes in time order.
pub fn evaluate(
    events: &[Event],
    train_fraction: f64,
    cfg: ProfilerConfig,
    path: &str,
) -> Result<Report, EvalError> {
    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for e in events {
        *per_user.entry(&e.user).or_default() += 1;
    }
    // The first `cut` requests of each user train.
    let cut: HashMap<&str, usize> = per_user
        .iter()
        .map(|(u, n)| {
            (
                *u,
                ((*n as f64 * train_fraction).floor() as usize)
                    .max(1)
                    .min(*n),
            )
        })
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for e in events {
        let i = seen.entry(&e.user).or_default();
        if *i < cut[e.user.as_str()] {
            train.push(e)
        } else {
            test.push(e)
        }
        *i += 1;
    }
    if test.is_empty() {
        return Err(EvalError::NothingToPredict { path: path.into() });
    }

    let mut profiler = Profiler::new(cfg);
    let mut base = Baselines::default();
    // Every predictor learns from each event it has seen: the training prefix, then each
    // test event once it has been predicted (online, as the profiler runs in production),
    // so the comparison is like for like.
    for e in &train {
        profiler.observe(&e.user, &e.service, e.time);
        base.learn(e);
    }
    let mut report = Report {
        users: per_user.len(),
        train_events: train.len(),
        profiler: Score::default(),
        most_frequent: Score::default(),
        markov1: Score::default(),
    };
    for e in &test {
        let guess = profiler.predict(&e.user, 3);
        let names: Vec<&str> = guess.iter().map(|p| p.service.as_str()).collect();
        report.profiler.add(&names, &e.service);
        let popular = ranked(&base.popularity);
        report.most_frequent.add(&popular, &e.service);
        let m1 = base
            .last
            .get(e.user.as_str())
            .and_then(|prev| base.markov.get(prev))
            .map(ranked)
            .unwrap_or(popular);
        report.markov1.add(&m1, &e.service);
        profiler.observe(&e.user, &e.service, e.time);
        base.learn(e);
    }
    Ok(report)
}

/// The two baselines' counts: global popularity and a global first-order chain.
#[derive(Default)]
struct Baselines<'a> {
    popularity: HashMap<&'a str, usize>,
    markov: HashMap<&'a str, HashMap<&'a str, usize>>,
    last: HashMap<&'a str, &'a str>,
}

impl<'a> Baselines<'a> {
    fn learn(&mut self, e: &'a Event) {
        *self.popularity.entry(&e.service).or_default() += 1;
        if let Some(prev) = self.last.insert(&e.user, &e.service) {
            *self
                .markov
                .entry(prev)
                .or_default()
                .entry(&e.service)
                .or_default() += 1;
        }
    }
}

/// Keys by count, highest first (ties by name, so runs are repeatable).
fn ranked<'a>(m: &HashMap<&'a str, usize>) -> Vec<&'a str> {
    let mut v: Vec<(&str, usize)> = m.iter().map(|(k, n)| (*k, *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().map(|(k, _)| k).collect()
}
