//! The level bound: how far above the service's level (an exponentially weighted mean of
//! its minutes) each of the next few minutes comes, learned per hour of the day.
//!
//! ```text
//!  each complete minute j:  e_j = e_(j-1) + ALPHA (rate_j - e_(j-1))
//!     for d = 1..=D: score(d) = (rate_j - e_(j-d)) / sqrt(e_(j-d)), kept with the
//!     scores of lead d in minute j's hour of the day, the last week's; not where
//!     e_(j-d) was under a tenth of the typical rate then (a slower mean: a lull)
//!  at a decision in minute k at rate r (minute k itself complete or under way):
//!     E = e_k, or e_(k-1) + ALPHA (r - e_(k-1)) while minute k is under way
//!     bound = max over d = 1..=h of E + q_d sqrt(E), q_d the level's quantile of
//!     lead d's scores in minute k+d's hour of the day
//! ```
//! Where the minutes of the hour have no pattern of their own (NASA's page loads: minute
//! counts vary several times more than a Poisson count's, with little autocorrelation),
//! the current minute's rate is mostly noise: a bound from it follows the noise down,
//! shedding instances that a cold start brings back. A mean over about twenty minutes is
//! the level the noise sits on, and the hour of the day says how far above it the noise
//! reaches (a quiet night and a busy afternoon differ). A level far under the service's
//! typical rate is an outage or a lull (NASA's log has three and a half days without a
//! request): scored, its quiet would push the week's scores out of the window. Scores use
//! only complete minutes before the decision, so a replay of a truncated history decides
//! the same up to the cut.

use std::collections::VecDeque;

use super::scores::{Grouped, MIN_RATE};

/// The weight of each new minute in the level: about twenty minutes' memory.
const ALPHA: f64 = 0.05;
/// The weight of each new minute in the typical rate: about a day's memory.
const TYPICAL_ALPHA: f64 = 1.0 / 1440.0;
/// A level under this share of the typical rate is a lull: no score is taken from it.
const LULL: f64 = 0.1;
/// The groups the scores are kept in: the hours of the day.
const HOURS: usize = 24;

fn hour(minute: usize) -> usize {
    minute / 60 % HOURS
}

/// Learns from complete minutes, given in order by the near-term bound that owns it.
#[derive(Debug, Clone, Default)]
pub(super) struct LevelTerm {
    /// The level and the typical rate after each of the last `leads.len()` complete
    /// minutes, oldest first.
    levels: VecDeque<(f64, f64)>,
    /// The minute after the last one taken in.
    next: usize,
    /// `leads[d - 1]`: the scores of the minute `d` after a level.
    leads: Vec<Grouped>,
}

impl LevelTerm {
    /// Keeps scores for leads of up to `minutes` (those it did not keep start empty).
    pub(super) fn reach(&mut self, minutes: usize) {
        while self.leads.len() < minutes {
            self.leads.push(Grouped::new(HOURS));
        }
    }

    /// Takes in minute `j`'s rate (requests/s), `j` being one more than the last's.
    pub(super) fn push(&mut self, j: usize, rate: f64) {
        let n = self.levels.len();
        for d in 1..=n.min(self.leads.len()) {
            let (base, typical) = self.levels[n - d];
            if base >= LULL * typical {
                let s = (rate - base) / base.max(MIN_RATE).sqrt();
                self.leads[d - 1].push(hour(j), s);
            }
        }
        let next = self.levels.back().map_or((rate, rate), |(e, t)| {
            (e + ALPHA * (rate - e), t + TYPICAL_ALPHA * (rate - t))
        });
        self.levels.push_back(next);
        while self.levels.len() > self.leads.len().max(1) {
            self.levels.pop_front();
        }
        self.next = j + 1;
    }

    /// The bound (requests/s) on minutes `k + 1 ..= k + h` at a decision in minute `k`,
    /// whose rate is `rate_rps`, at quantile `tau`. None while too little is known (or
    /// no scores are kept for leads that far), or when the minutes before `k` are not all
    /// in.
    pub(super) fn bound(&self, k: usize, h: usize, rate_rps: f64, tau: f64) -> Option<f64> {
        let (last, _) = *self.levels.back()?;
        let level = if self.next == k + 1 {
            last
        } else if self.next == k {
            last + ALPHA * (rate_rps - last)
        } else {
            return None;
        };
        if h == 0 {
            return Some(rate_rps);
        }
        if self.leads.len() < h {
            return None;
        }
        let spread = level.max(MIN_RATE).sqrt();
        (1..=h).try_fold(0.0_f64, |upper, d| {
            let q = self.leads[d - 1].quantile(hour(k + d), tau)?;
            Some(upper.max(level + q * spread))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_hour_is_provisioned_above_the_level_and_the_quiet_one_is_not() {
        // Two days of minutes alternating around 100 req/s: ±40 in hour 14 (busy, noisy)
        // and ±4 in hour 3 (quiet). Just before each hour, the bound on the next minute
        // at the 95th percentile is the level plus that hour's spread.
        let rate = |m: usize| {
            let swing = match hour(m) {
                14 => 40.0,
                3 => 4.0,
                _ => 10.0,
            };
            if m.is_multiple_of(2) {
                100.0 + swing
            } else {
                100.0 - swing
            }
        };
        let mut level = LevelTerm::default();
        level.reach(1);
        for j in 0..2 * 1440 + 14 * 60 {
            level.push(j, rate(j));
        }
        // Minute 13:59 of day 3 is complete (next = its index + 1): its level is about 100.
        let k = 2 * 1440 + 14 * 60 - 1;
        let busy = level.bound(k, 1, rate(k), 0.95).unwrap();
        assert!((135.0..=145.0).contains(&busy), "{busy}");
        let k = 2 * 1440 + 3 * 60 - 1;
        let mut early = LevelTerm::default();
        early.reach(1);
        for j in 0..=k {
            early.push(j, rate(j));
        }
        let quiet = early.bound(k, 1, rate(k), 0.95).unwrap();
        assert!((100.0..=106.0).contains(&quiet), "{quiet}");
    }

    #[test]
    fn a_lull_leaves_the_scores_before_it_in_place() {
        // A day alternating 60 and 140 req/s (scores of about ±4), then eight days without
        // a request: more than the week's window of minutes. Traffic comes back at 100 in
        // the minute under way: the level moves to 5 req/s, and the bound on the next
        // minute is that plus the day's 95th percentile (about 4 × sqrt 5), not the
        // lull's (about 0).
        let mut level = LevelTerm::default();
        level.reach(1);
        let day: usize = 1440;
        for j in 0..9 * day {
            let rate = match j {
                j if j >= day => 0.0,
                j if j.is_multiple_of(2) => 140.0,
                _ => 60.0,
            };
            level.push(j, rate);
        }
        let b = level.bound(9 * day, 1, 100.0, 0.95).unwrap();
        assert!((12.0..=16.0).contains(&b), "{b}");
    }

    #[test]
    fn the_minute_under_way_moves_the_level_and_a_gap_gives_no_bound() {
        let mut level = LevelTerm::default();
        level.reach(2);
        for j in 0..120 {
            level.push(j, 100.0);
        }
        // Minute 120 under way at 300 req/s: the level moves a twentieth of the way; every
        // score so far is 0, so the bound is the level.
        let b = level.bound(120, 2, 300.0, 0.95).unwrap();
        assert!((b - 110.0).abs() < 1e-9, "{b}");
        assert_eq!(
            level.bound(120, 0, 300.0, 0.95),
            Some(300.0),
            "within minute k"
        );
        assert_eq!(level.bound(122, 1, 100.0, 0.95), None, "minute 121 missing");
    }
}
