//! The near-term bound: how far above the current rate the next few minutes peak, learned
//! per minute of the hour from what followed each past minute.
//!
//! ```text
//!  each complete minute j, for h = 1..=H_max once minutes j+1..j+h are complete:
//!     score(j, h) = (max(rate[j+1..=j+h]) - rate[j]) / sqrt(rate[j])
//!     kept with the scores of the same minute of the hour (j mod 60), the last week's
//!  at a decision in minute k (the one the last observed second fell in), whose lead
//!  time ends h minutes after k:
//!     bound = rate + q * sqrt(rate),  q = the level's quantile of minute k mod 60's scores
//! ```
//! A plan step's forecast (the planner's other half) says where the level goes over
//! hours; this says what the minutes right after this one bring, which a 5-minute step
//! averages away: on the Twitter stream's per-minute volume, posts scheduled on the hour
//! make some minutes of the hour jump far more often than others, and a bound from those
//! minutes' own history provisions for the jump before it, where one quantile over all
//! minutes either misses it or pays for it every minute. The square root scales the
//! spread to the rate as a count's noise scales (Poisson), so the quantiles of a busy
//! hour and a quiet one pool. A minute of the hour with fewer than `GROUP_WARM` scores
//! takes the quantile of every minute's (once there are `ALL_WARM`); before that there
//! is no bound. Every score uses only complete minutes before the decision, so a
//! replay of a truncated history decides the same up to the cut.

use std::collections::VecDeque;

use super::level::LevelTerm;
use super::scores::{Grouped, MIN_RATE};

/// Minutes in the pattern the scores are grouped by: the hour.
const PHASES: usize = 60;

/// Learns from a history at a minute or finer, one complete minute at a time.
#[derive(Debug, Clone)]
pub struct NearTerm {
    /// History steps per minute.
    per_minute: usize,
    /// History steps taken in (whole minutes).
    consumed: usize,
    /// The rates (requests/s) of the last `leads.len() + 1` complete minutes, and how
    /// many minutes there have been.
    recent: VecDeque<f64>,
    minutes: usize,
    /// `leads[h - 1]`: the scores of the peak over the next `h` minutes.
    leads: Vec<Grouped>,
    /// The bound from the service's level by hour of the day, fed the same minutes.
    level: LevelTerm,
    /// Decisions waiting for their minutes: (minute, minutes ahead, [this bound, the same
    /// from every minute's scores, the plan step's bound, the level bound], quantile level).
    pending: VecDeque<(usize, usize, [f64; 4], f64)>,
    /// Decayed quantile (pinball) losses of those four bounds against the peak that
    /// came, and how many decisions were scored.
    loss: [f64; 4],
    judged: usize,
}

/// Decisions scored before the better bound is chosen by its loss: an hour of 5-second
/// decisions.
const JUDGE_WARM: usize = 720;
/// The losses' decay per scored decision: about a day of 5-second decisions weighs.
const JUDGE_DECAY: f64 = 0.99995;
/// Decisions waiting for their minutes, at most.
const MAX_PENDING: usize = 4096;
/// How much lower the loss of the bound by minute of the hour must be than the pooled
/// one's for the pattern to count.
const PATTERN_GAIN: f64 = 0.9;

/// Which bound a decision provisions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The plan step's forecast (the planner's other half).
    PlanStep,
    /// This module's: the current rate and its minute of the hour's scores.
    MinuteOfHour,
    /// The level bound's: the service's level and its hour of the day's scores.
    Level,
}

/// The bound at a decision, and what it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    /// Requests/s the minutes within the lead time are provisioned for.
    pub upper_rps: f64,
    /// The bound from the service's level by hour of the day (`level`), requests/s; None
    /// while it knows too little.
    pub level_rps: Option<f64>,
    /// Whole minutes after the current one the lead time reaches into.
    pub minutes_ahead: usize,
    /// The same bound from every minute's scores pooled (no pattern), requests/s.
    pub pooled_rps: f64,
    /// The minute the decision was made in (on the history's clock).
    pub minute: usize,
    /// Minute of the hour (on the history's clock) whose scores gave the quantile.
    pub phase: usize,
}

impl NearTerm {
    /// For a history of `step_s`-second steps, or None when it is coarser than a minute
    /// or does not divide one (a plan step's forecast covers those alone).
    pub fn new(step_s: u64) -> Option<NearTerm> {
        if step_s == 0 || step_s > 60 || 60 % step_s != 0 {
            return None;
        }
        Some(NearTerm {
            per_minute: (60 / step_s) as usize,
            consumed: 0,
            recent: VecDeque::new(),
            minutes: 0,
            leads: Vec::new(),
            level: LevelTerm::default(),
            pending: VecDeque::new(),
            loss: [0.0; 4],
            judged: 0,
        })
    }

    /// Takes in the complete minutes of `history` (requests per step) not yet seen; a
    /// history shorter than before starts afresh.
    pub fn extend(&mut self, history: &[f64]) {
        if history.len() < self.consumed {
            self.restart(0);
        }
        let g = self.per_minute;
        while self.consumed + g <= history.len() {
            let rate = history[self.consumed..self.consumed + g]
                .iter()
                .sum::<f64>()
                / 60.0;
            self.consumed += g;
            self.push(rate);
        }
    }

    /// Takes in whole minutes of requests/s whose first is minute `first` (minutes since
    /// the Unix epoch, live: the minute of the hour is then the wall clock's). Minutes
    /// already taken are skipped; a gap since the last call starts afresh.
    pub fn extend_minutes(&mut self, first: usize, rates: &[f64]) {
        // (The first call lands here too: nothing is lost.)
        if first > self.minutes {
            self.restart(first);
        }
        for (i, rate) in rates.iter().enumerate() {
            if first + i >= self.minutes {
                self.push(*rate);
            }
        }
    }

    /// Forgets every minute and score, the next minute taken being `minute`; keeps the
    /// leads learned (so that the history given next is scored in full).
    fn restart(&mut self, minute: usize) {
        let leads = self.leads.len();
        *self = NearTerm::new(60 / self.per_minute as u64).expect("a valid step");
        self.reach(leads);
        self.minutes = minute;
    }

    fn push(&mut self, rate: f64) {
        self.recent.push_back(rate);
        self.minutes += 1;
        // The new minute completes the score of minute `minutes - 1 - h` at lead `h`.
        let n = self.recent.len();
        let mut peak = f64::MIN;
        for h in 1..n.min(self.leads.len() + 1) {
            peak = peak.max(self.recent[n - h]);
            let base = self.recent[n - 1 - h];
            let j = self.minutes - 1 - h;
            let s = (peak - base) / base.max(MIN_RATE).sqrt();
            self.leads[h - 1].push(j % PHASES, s);
        }
        self.level.push(self.minutes - 1, rate);
        while self.recent.len() > self.leads.len() + 1 {
            self.recent.pop_front();
        }
        self.judge();
    }

    /// Scores the decisions whose minutes are all complete now: the quantile (pinball)
    /// loss of each bound against the busiest of those minutes, a miss weighing `tau`
    /// per request/s and headroom `1 - tau`: the lower loss is the bound that provisions
    /// less for the same coverage.
    fn judge(&mut self) {
        let n = self.recent.len();
        while let Some(&(k, h, bounds, tau)) = self.pending.front() {
            if k + h >= self.minutes {
                break;
            }
            self.pending.pop_front();
            // Minutes k+1..=k+h are the last (minutes - 1 - k) .. ; held if recent has them.
            let back = self.minutes - 1 - k;
            if back > n || back < h {
                continue;
            }
            let first = n - back;
            let y = (first..first + h)
                .map(|i| self.recent[i])
                .fold(f64::MIN, f64::max);
            let pinball = |u: f64| {
                if y >= u {
                    (y - u) * tau
                } else {
                    (u - y) * (1.0 - tau)
                }
            };
            for (loss, u) in self.loss.iter_mut().zip(bounds) {
                *loss = JUDGE_DECAY * *loss + pinball(u);
            }
            self.judged += 1;
        }
    }

    /// Queues a decision's bounds to be scored once its minutes are complete.
    pub fn compare(&mut self, near: &Bound, plan_upper_rps: f64, level: f64) {
        if near.minutes_ahead > 0 {
            // Bounded for a service whose minutes stop coming (each is scored within the
            // lead's minutes, a dozen decisions a minute).
            if self.pending.len() == MAX_PENDING {
                self.pending.pop_front();
            }
            let tau = (level / 100.0).clamp(0.0, 1.0);
            // A level bound not known yet is scored as the plan step's: it cannot win.
            let level_rps = near.level_rps.unwrap_or(plan_upper_rps);
            let bounds = [near.upper_rps, near.pooled_rps, plan_upper_rps, level_rps];
            self.pending
                .push_back((near.minute, near.minutes_ahead, bounds, tau));
        }
    }

    /// The bound that has provisioned best over the decisions scored (the plan step's
    /// before `JUDGE_WARM` of them). The bound by minute of the hour must also show that
    /// the minutes of the hour differ: its loss under `PATTERN_GAIN` times that of the
    /// same bound from every minute's scores pooled. Where they do not (NASA's page
    /// loads), a bound from the current minute's noisy rate follows the noise down, and
    /// the instances it sheds take a cold start to come back; the level bound (`level`)
    /// is the one for those.
    pub fn choice(&self) -> Choice {
        let [by_minute, pooled, plan, level] = self.loss;
        if self.judged < JUDGE_WARM {
            Choice::PlanStep
        } else if by_minute < plan.min(level) && by_minute < PATTERN_GAIN * pooled {
            Choice::MinuteOfHour
        } else if level < plan {
            Choice::Level
        } else {
            Choice::PlanStep
        }
    }

    /// Keeps scores for leads of up to `minutes` (those it did not keep start empty).
    fn reach(&mut self, minutes: usize) {
        while self.leads.len() < minutes {
            self.leads.push(Grouped::new(PHASES));
        }
        self.level.reach(minutes);
    }

    /// Learns the scores a decision at `now` with a lead time of `lead_s` seconds needs:
    /// called before `extend`, so that a history given at once is scored in full.
    pub fn prepare(&mut self, now: f64, lead_s: f64) {
        let (_, h) = Self::minutes(now, lead_s);
        self.reach(h.max(1));
    }

    /// The minute the last observed second fell in, and how many minutes past it the
    /// lead time reaches.
    fn minutes(now: f64, lead_s: f64) -> (usize, usize) {
        let k = ((now - 1.0) / 60.0).floor().max(0.0) as usize;
        let end = ((now + lead_s - 1.0) / 60.0).floor().max(0.0) as usize;
        (k, end.saturating_sub(k))
    }

    /// The bound at `now` (seconds on the history's clock) for a lead time of `lead_s`
    /// seconds, at `level` percent, from the current rate `rate_rps` (that of the minute
    /// the last observed second fell in). None while too little is known; the current
    /// rate when the lead ends within the current minute (whose rate is known).
    pub fn bound(&mut self, now: f64, lead_s: f64, rate_rps: f64, level: f64) -> Option<Bound> {
        let (k, h) = Self::minutes(now, lead_s);
        // Leads of up to this many minutes are learned from now on.
        self.reach(h.max(1));
        let phase = k % PHASES;
        let tau = (level / 100.0).clamp(0.0, 1.0);
        let lead = &self.leads[h.max(1) - 1];
        let q = lead.quantile(phase, tau)?;
        if h == 0 {
            // Within the current minute, whose rate is known.
            return Some(Bound {
                upper_rps: rate_rps,
                pooled_rps: rate_rps,
                level_rps: Some(rate_rps),
                minutes_ahead: 0,
                minute: k,
                phase,
            });
        }
        let at = |q: f64| (rate_rps + q * rate_rps.max(MIN_RATE).sqrt()).max(0.0);
        let pooled = lead.pooled(tau).unwrap_or(q);
        Some(Bound {
            upper_rps: at(q),
            pooled_rps: at(pooled),
            level_rps: self.level.bound(k, h, rate_rps, tau),
            minutes_ahead: h,
            minute: k,
            phase,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates per minute (req/s) as a per-minute history (requests per minute).
    fn history(rates: impl Iterator<Item = f64>) -> Vec<f64> {
        rates.map(|r| r * 60.0).collect()
    }

    #[test]
    fn a_minute_of_the_hour_that_jumps_is_provisioned_before_its_jump() {
        // Ten hours at 100 req/s, except minute 0 of every hour at 400 (posts scheduled on
        // the hour). At 09:59:30 with a 30 s cold start the lead reaches into 10:00: the
        // bound is 400 req/s, learned from the nine minutes 59 before it. At 09:29:30 the
        // next minute is like the rest: the bound stays at the current rate.
        let h = history((0..600).map(|m| if m % 60 == 0 { 400.0 } else { 100.0 }));
        let mut near = NearTerm::new(60).unwrap();
        near.bound(0.0, 35.0, 0.0, 95.0); // learn leads of one minute
        near.extend(&h[..599]);
        let b = near.bound(599.0 * 60.0 + 30.0, 35.0, 100.0, 95.0).unwrap();
        assert_eq!((b.minutes_ahead, b.phase), (1, 59));
        assert!((b.upper_rps - 400.0).abs() < 1e-9, "{b:?}");
        let mut near = NearTerm::new(60).unwrap();
        near.bound(0.0, 35.0, 0.0, 95.0);
        near.extend(&h[..569]);
        let b = near.bound(569.0 * 60.0 + 30.0, 35.0, 100.0, 95.0).unwrap();
        assert!((b.upper_rps - 100.0).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn a_lead_within_the_current_minute_is_bound_by_its_rate() {
        let mut near = NearTerm::new(60).unwrap();
        // 30 s into the minute with a 25 s lead: its last second is in this minute.
        near.bound(0.0, 35.0, 0.0, 95.0);
        near.extend(&history((0..300).map(|m| 10.0 + (m % 7) as f64)));
        let b = near.bound(300.0 * 60.0 + 30.0, 25.0, 12.0, 95.0).unwrap();
        assert_eq!((b.upper_rps, b.minutes_ahead), (12.0, 0));
    }

    #[test]
    fn too_little_history_gives_no_bound_and_a_shorter_one_starts_afresh() {
        let h = history((0..100).map(|m| 10.0 + m as f64));
        let mut near = NearTerm::new(60).unwrap();
        near.bound(0.0, 35.0, 0.0, 95.0);
        near.extend(&h[..30]);
        assert_eq!(near.bound(30.0 * 60.0 + 30.0, 35.0, 40.0, 95.0), None);
        near.extend(&h);
        assert!(near.bound(100.0 * 60.0 + 30.0, 35.0, 110.0, 95.0).is_some());
        near.extend(&h[..30]);
        assert_eq!(near.minutes, 30);
        assert_eq!(near.bound(30.0 * 60.0 + 30.0, 35.0, 40.0, 95.0), None);
    }

    #[test]
    fn finer_steps_are_summed_into_minutes_and_coarser_ones_are_not_taken() {
        assert!(NearTerm::new(300).is_none());
        assert!(NearTerm::new(7).is_none());
        let mut near = NearTerm::new(15).unwrap();
        // 15 s steps of 150 requests: 10 req/s a minute; a partial minute waits.
        near.extend(&[150.0; 10]);
        assert_eq!((near.minutes, near.consumed), (2, 8));
        assert_eq!(near.recent.back(), Some(&10.0));
    }

    #[test]
    fn live_minutes_are_grouped_by_the_wall_clock_and_a_gap_starts_afresh() {
        // Unix minutes from 2026-11-30 00:00 UTC (a whole hour): minute 0 of every hour
        // at 400 req/s, the rest at 100, fed a sliding window at a time as the control
        // plane's series gives them.
        let day0: usize = 1_764_460_800 / 60;
        let rate = |m: usize| if m.is_multiple_of(60) { 400.0 } else { 100.0 };
        let mut near = NearTerm::new(60).unwrap();
        near.prepare(day0 as f64 * 60.0, 35.0);
        for end in (day0 + 60..day0 + 600).step_by(7) {
            let first = end.saturating_sub(30).max(day0);
            let rates: Vec<f64> = (first..end).map(rate).collect();
            near.extend_minutes(first, &rates);
        }
        assert_eq!(near.minutes, day0 + 599, "every minute once, up to 09:58");
        // 09:59:30 UTC: the lead reaches into 10:00.
        let now = (day0 + 599) as f64 * 60.0 + 30.0;
        let b = near.bound(now, 35.0, 100.0, 95.0).unwrap();
        assert_eq!((b.phase, b.minutes_ahead), (59, 1));
        assert!((b.upper_rps - 400.0).abs() < 1e-9, "{b:?}");
        // An hour with no report: what comes after starts afresh.
        near.extend_minutes(day0 + 700, &[100.0; 5]);
        assert_eq!(near.minutes, day0 + 705);
        let later = (day0 + 705) as f64 * 60.0 + 30.0;
        assert_eq!(near.bound(later, 35.0, 100.0, 95.0), None);
    }
}
