//! What the proxies reported per service and QoS profile, in time buckets small enough
//! to keep a day of every pair: 10 s buckets for the last hour and 5 min buckets for the
//! last day, each holding counts and a latency histogram of fixed log-spaced bins
//! (x1.25 per bin from 100 µs to about 100 s: a quantile is read within 12%).

use std::collections::VecDeque;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Bins of the latency histogram; bin `i` holds latencies up to `BIN0_US * GROWTH^i`.
const BINS: usize = 62;
const BIN0_US: f64 = 100.0;
const GROWTH: f64 = 1.25;

/// Counts and latency of one time bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub start_s: i64,
    pub requests: u64,
    pub errors: u64,
    bins: [u32; BINS],
}

impl Bucket {
    fn new(start_s: i64) -> Bucket {
        Bucket {
            start_s,
            requests: 0,
            errors: 0,
            bins: [0; BINS],
        }
    }
}

fn bin_of(us: f64) -> usize {
    if us <= BIN0_US {
        return 0;
    }
    ((us / BIN0_US).ln() / GROWTH.ln())
        .ceil()
        .min((BINS - 1) as f64) as usize
}

/// The geometric middle of a bin, in ms.
fn bin_ms(i: usize) -> f64 {
    let hi = BIN0_US * GROWTH.powi(i as i32);
    (hi / GROWTH * hi).sqrt() / 1000.0
}

/// A ring of buckets `width_s` wide, at most `keep` of them.
#[derive(Debug, Clone)]
pub struct Ring {
    width_s: i64,
    keep: usize,
    buckets: VecDeque<Bucket>,
}

impl Ring {
    pub fn new(width_s: i64, keep: usize) -> Ring {
        Ring {
            width_s,
            keep,
            buckets: VecDeque::new(),
        }
    }

    fn bucket(&mut self, unix_s: i64) -> &mut Bucket {
        let start = unix_s - unix_s.rem_euclid(self.width_s);
        // Reports arrive roughly in order; a late one lands in its own bucket if kept.
        if let Some(i) = self.buckets.iter().rposition(|b| b.start_s == start) {
            return &mut self.buckets[i];
        }
        let at = self
            .buckets
            .iter()
            .rposition(|b| b.start_s < start)
            .map_or(0, |i| i + 1);
        self.buckets.insert(at, Bucket::new(start));
        while self.buckets.len() > self.keep {
            self.buckets.pop_front();
        }
        let i = self
            .buckets
            .iter()
            .rposition(|b| b.start_s == start)
            .unwrap_or(self.buckets.len() - 1);
        &mut self.buckets[i]
    }

    pub fn add(
        &mut self,
        unix_s: i64,
        requests: u64,
        errors: u64,
        latency: Option<&Histogram<u64>>,
    ) {
        let b = self.bucket(unix_s);
        b.requests += requests;
        b.errors += errors;
        if let Some(h) = latency {
            for v in h.iter_recorded() {
                let n = v.count_at_value();
                let i = bin_of(v.value_iterated_to() as f64);
                b.bins[i] = b.bins[i].saturating_add(n.min(u64::from(u32::MAX)) as u32);
            }
        }
    }

    /// Buckets that started at or after `since_s`.
    pub fn since(&self, since_s: i64) -> impl Iterator<Item = &Bucket> {
        self.buckets.iter().filter(move |b| b.start_s >= since_s)
    }
}

/// A window's numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub throughput_rps: f64,
    pub error_rate: f64,
    /// 0 when nothing was measured.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// Sums `buckets` covering `seconds` of wall time.
pub fn summarize<'a>(buckets: impl Iterator<Item = &'a Bucket>, seconds: f64) -> Summary {
    let mut requests = 0;
    let mut errors = 0;
    let mut bins = [0u64; BINS];
    for b in buckets {
        requests += b.requests;
        errors += b.errors;
        for (t, v) in bins.iter_mut().zip(b.bins) {
            *t += u64::from(v);
        }
    }
    let total: u64 = bins.iter().sum();
    let quantile = |q: f64| {
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in bins.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bin_ms(i);
            }
        }
        bin_ms(BINS - 1)
    };
    Summary {
        requests,
        errors,
        throughput_rps: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        error_rate: if requests > 0 {
            errors as f64 / requests as f64
        } else {
            0.0
        },
        latency_p50_ms: quantile(0.5),
        latency_p99_ms: quantile(0.99),
    }
}

/// One bucket's summary, for per-bucket attainment.
pub fn bucket_summary(b: &Bucket, width_s: f64) -> Summary {
    summarize(std::iter::once(b), width_s)
}

impl Ring {
    pub fn width_s(&self) -> i64 {
        self.width_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values_ms: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000, 2).unwrap();
        for v in values_ms {
            h.record(v * 1000).unwrap();
        }
        h
    }

    #[test]
    fn quantiles_are_read_within_the_bin_resolution() {
        let mut r = Ring::new(10, 360);
        let mut values: Vec<u64> = (1..=99).map(|_| 10).collect();
        values.push(500);
        r.add(1_000, 100, 3, Some(&hist(&values)));
        let s = summarize(r.since(0), 10.0);
        assert_eq!((s.requests, s.errors), (100, 3));
        assert!((s.error_rate - 0.03).abs() < 1e-9);
        assert!((s.throughput_rps - 10.0).abs() < 1e-9);
        assert!((s.latency_p50_ms - 10.0).abs() / 10.0 < 0.13, "{s:?}");
        assert!(
            (s.latency_p99_ms - 10.0).abs() / 10.0 < 0.13,
            "p99 is the 99th of 100: {s:?}"
        );
        r.add(1_001, 100, 0, Some(&hist(&[500; 100])));
        let s = summarize(r.since(0), 10.0);
        assert!((s.latency_p99_ms - 500.0).abs() / 500.0 < 0.13, "{s:?}");
    }

    #[test]
    fn old_buckets_fall_out_and_windows_select_by_start() {
        let mut r = Ring::new(10, 3);
        for t in [0, 10, 20, 30, 35] {
            r.add(t, 1, 0, None);
        }
        let starts: Vec<i64> = r.since(0).map(|b| b.start_s).collect();
        assert_eq!(starts, [10, 20, 30], "kept three; 35 joined 30's bucket");
        assert_eq!(summarize(r.since(20), 20.0).requests, 3);
        // A late report still lands in its own bucket.
        r.add(12, 5, 0, None);
        assert_eq!(summarize(r.since(10), 30.0).requests, 9);
    }
}
