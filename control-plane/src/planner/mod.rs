//! The planner: how many instances a service needs, decided one cold start before the
//! demand arrives, with the reason for every decision.
//!
//! ```text
//!  every control interval, per service:
//!   history ─▶ plan steps of 5 minutes (or the history's own, if coarser), each
//!              its busiest minute (the capacity it needs)
//!           ─▶ forecast from now to one cold start + one interval ahead, at the
//!              interval level the service's highest active tier asks for
//!           ─▶ predictive need = peak upper bound / per-instance capacity
//!   recent rate ─▶ reactive floor = rate / (capacity × floor utilisation), where the
//!              rate is the higher of the last 15 s's and the last 5 s's means
//!   minutes ─▶ near-term bounds: the current rate plus the level's quantile of how
//!              far this minute of the hour's successors peaked above it (`near`), and
//!              the service's weighted mean rate plus its hour of the day's (`level`);
//!              either replaces the plan step's bound once it has provisioned better on
//!              the service's own minutes (quantile loss, decayed over about a day)
//!   target = max(predictive, floor) within [min, max]; a lower target waits until it
//!            has held for `scale_down_delay` (no flapping on a forecast's wiggles)
//! ```
//! The floor is what keeps a spike nobody forecast from being met worse than a reactive
//! autoscaler meets it. The model is the forecasting engine's, chosen by its
//! recency-weighted backtest (288 origins: a day of 5-minute steps) among MSTL + ETS on
//! the hourly, daily and weekly patterns the history holds two cycles of, Holt and the
//! seasonal naive (plain, and scaled to today's level); chosen again on a schedule and refitted as history arrives. A
//! decision only ever sees the history it is given, so replaying a truncated trace gives
//! the same decisions up to the cut.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

use crate::forecast::{self, Forecast, Selected};

mod level;
mod near;
mod scores;

pub use near::{Bound, Choice, NearTerm};

#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// Requests per second one instance serves within its latency target.
    pub capacity_rps: f64,
    /// From an instance's launch to its first request served.
    pub cold_start: Duration,
    /// How often a decision is made.
    pub interval: Duration,
    /// The history's resolution (one value per step: requests in that step).
    pub step: Duration,
    /// Interval level (percent) whose upper bound is provisioned for: 95 for Gold.
    pub level: f64,
    /// Share of capacity the reactive floor plans to use (HPA's default target: 0.8).
    pub floor_utilisation: f64,
    pub min_instances: u32,
    pub max_instances: u32,
    /// A lower target is applied only once it has held this long.
    pub scale_down_delay: Duration,
}

impl PlannerConfig {
    /// Defaults for a service of `capacity_rps` per instance and `cold_start`, with a
    /// history at `step` resolution.
    pub fn new(capacity_rps: f64, cold_start: Duration, step: Duration) -> PlannerConfig {
        PlannerConfig {
            capacity_rps,
            cold_start,
            interval: Duration::from_secs(5),
            step,
            level: 95.0,
            floor_utilisation: 0.8,
            min_instances: 1,
            max_instances: 10_000,
            scale_down_delay: Duration::from_secs(60),
        }
    }
}

/// One decision and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Instances wanted from now on.
    pub target: u32,
    /// Instances the forecast asks for (none: no forecast yet, too little history).
    pub predictive: Option<u32>,
    /// Instances the recent rate asks for.
    pub reactive: u32,
    /// The forecast's peak upper bound over the lead time, requests/s (`decide`: of a
    /// planning step's busiest minute; `decide_with`: as the given forecast's steps).
    pub forecast_upper_rps: Option<f64>,
    /// Its point forecast at the same step, requests/s.
    pub forecast_point_rps: Option<f64>,
    /// The near-term bound (`near`): what the minutes after the current one within the
    /// lead time peak at, at the level's quantile of this minute of the hour's past
    /// jumps, requests/s.
    pub near_term_rps: Option<f64>,
    /// The level bound (`level`): what those minutes come to above the service's weighted
    /// mean rate, at the level's quantile of this hour of the day's, requests/s.
    pub level_term_rps: Option<f64>,
    pub level: f64,
    pub model: Option<String>,
    /// How far ahead the forecast was read: one cold start and one interval (seconds).
    pub lead_s: f64,
    pub observed_rps: f64,
    /// The target is above the wanted count because a scale-down is waiting out its delay.
    pub held: bool,
    /// `min` or `max` when the target was clamped.
    pub clamped: Option<&'static str>,
}

/// A forecast's highest upper bound over the lead time, and its point forecast there.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    pub upper_rps: f64,
    pub point_rps: f64,
    pub model: String,
}

/// Decides for one service; keeps its model and recent targets between decisions.
#[derive(Debug)]
pub struct Planner {
    cfg: PlannerConfig,
    selected: Option<Selected>,
    /// History length when the model was chosen / the forecast was made.
    selected_at: usize,
    forecast: Option<(usize, Forecast)>,
    /// Wanted targets of the last `scale_down_delay`: (time s, wanted).
    recent: VecDeque<(f64, u32)>,
    /// The history in planning steps (see `per_plan`): each its busiest minute, in
    /// requests per planning step (see `extend_plan`); and how many of the history's
    /// steps that took.
    plan: Vec<f64>,
    planned: usize,
    /// The near-term bound, for a history at a minute or finer.
    near: Option<NearTerm>,
}

/// Repeating patterns looked for: an hour, a day, a week.
const PERIODS_S: [u64; 3] = [3600, 86_400, 604_800];
/// History used: two cycles of the longest pattern that fits, plus room for the
/// backtest, at most this many steps (a seasonal fit costs about linear time in it).
const WINDOW: usize = 4320;
/// The model is chosen again (and its interval residuals renewed) after this much new
/// history; refitted after this much; in between, the forecast made at the last fit is
/// shifted by its mean error on the steps seen since (cheap, and it follows a change
/// of level within a few steps).
const RESELECT_S: u64 = 6 * 3600;
const REFIT_S: u64 = 900;
/// The reactive floor's window: the mean rate of this much closed time.
pub const OBSERVED_WINDOW: Duration = Duration::from_secs(15);
/// The floor sizes for the mean of this much closed time instead when it is higher: a
/// jump is met one control interval after it starts, not once the longer window has
/// filled with it: 10 s, a twelfth of a 2-minute cold start, saved on every jump
/// (Knative's 6 s panic window is there for the same reason). A falling rate still
/// takes the longer window, and then the scale-down delay.
pub const BURST_WINDOW: Duration = Duration::from_secs(5);
/// The model named in a decision the near-term bound made.
pub const NEAR_TERM: &str = "near-term (minute of the hour)";
/// The model named in a decision the level bound made.
pub const LEVEL_TERM: &str = "near-term (level, hour of the day)";
/// The coarsest planning step finer histories are planned in (seconds).
const PLAN_STEP_S: u64 = 300;

impl Planner {
    pub fn new(cfg: PlannerConfig) -> Planner {
        Planner {
            near: NearTerm::new(cfg.step.as_secs()),
            cfg,
            selected: None,
            selected_at: 0,
            forecast: None,
            recent: VecDeque::new(),
            plan: Vec::new(),
            planned: 0,
        }
    }

    /// Steps of history per planning step: patterns of hours and days are forecast at
    /// no finer than five minutes (a seasonal fit costs about linear time in its window,
    /// and the reactive floor follows what happens within the step).
    fn per_plan(&self) -> usize {
        let s = self.cfg.step.as_secs().max(1);
        if s < PLAN_STEP_S && PLAN_STEP_S.is_multiple_of(s) {
            (PLAN_STEP_S / s) as usize
        } else {
            1
        }
    }

    fn plan_step_s(&self) -> u64 {
        self.cfg.step.as_secs().max(1) * self.per_plan() as u64
    }

    /// History steps per minute where the history is finer than a minute (and a
    /// planning step holds whole minutes), else 1.
    fn per_minute(&self) -> usize {
        let s = self.cfg.step.as_secs().max(1);
        let g = if s < 60 && 60 % s == 0 {
            (60 / s) as usize
        } else {
            1
        };
        if self.per_plan().is_multiple_of(g) {
            g
        } else {
            1
        }
    }

    /// Brings `plan` up to date with `history` (which only grows between decisions; a
    /// history that did not is planned afresh). A planning step holds its busiest
    /// minute (its busiest history step when that is coarser), scaled to the planning
    /// step: instances must serve the busiest minute, and NASA's per-minute traffic
    /// peaks at 1.36 times its 5-minute mean in the median 5 minutes (1.9 times in the
    /// 95th percentile). Not the busiest second: a capacity is a sustained rate.
    fn extend_plan(&mut self, history: &[f64]) {
        let (k, g) = (self.per_plan(), self.per_minute());
        if history.len() < self.planned {
            self.plan.clear();
            self.planned = 0;
            self.forecast = None;
            self.selected = None;
        }
        while self.planned + k <= history.len() {
            let busiest = history[self.planned..self.planned + k]
                .chunks(g)
                .map(|minute| minute.iter().sum::<f64>())
                .fold(0.0, f64::max);
            self.plan.push(busiest * (k / g) as f64);
            self.planned += k;
        }
    }

    pub fn config(&self) -> &PlannerConfig {
        &self.cfg
    }

    /// Planning steps in `d`.
    fn steps(&self, d: Duration) -> usize {
        (d.as_secs_f64() / self.plan_step_s() as f64).ceil() as usize
    }

    /// Forecast steps needed: from the end of history to one cold start and one interval
    /// past the next refit.
    fn horizon(&self) -> usize {
        self.steps(self.cfg.cold_start + self.cfg.interval + Duration::from_secs(REFIT_S)) + 1
    }

    /// The forecast of `plan` from its end on: `(point, upper)` per planning step, in
    /// requests per planning step at its busiest minute. Refitted (and the model chosen
    /// again) when due; else the last fit's, shifted by its mean error on the steps that
    /// arrived since it was made.
    fn forecast(&mut self) -> Option<(Vec<f64>, Vec<f64>, String)> {
        let history = &self.plan;
        let n = history.len();
        let step_s = self.plan_step_s();
        let refit = (REFIT_S / step_s).max(1) as usize;
        // At least a dozen steps apart: choosing costs a backtest of several fits.
        let reselect = (RESELECT_S / step_s).max(12) as usize;
        if self.forecast.as_ref().is_none_or(|(at, _)| n >= at + refit) {
            // Patterns of fewer than four steps are noise to a seasonal fit.
            let periods: Vec<usize> = PERIODS_S
                .iter()
                .filter(|p| *p % step_s == 0 && *p / step_s >= 4)
                .map(|p| (p / step_s) as usize)
                .collect();
            let h = self.horizon();
            // Two cycles of the longest pattern the history can show, and room for the
            // engine's backtest span (288 origins: a day of 5-minute steps) after them.
            let longest = periods
                .iter()
                .copied()
                .filter(|p| 2 * p + forecast::origins(h) * h + h <= n)
                .max()
                .unwrap_or(0);
            let window = (2 * longest + (10 * h).max(288) + h).clamp(256, WINDOW);
            let y = &history[n.saturating_sub(window)..];
            if self.selected.is_none() || n >= self.selected_at + reselect {
                // Too little history yet: the reactive floor decides alone. No model is
                // forced on the series: MSTL made to fit an hourly pattern takes a burst
                // for one and provisions it again an hour later (see
                // `a_burst_is_not_forecast_to_come_back_an_hour_later`), and the
                // backtest's day of origins covers the day's turns (see `window`).
                let s = forecast::select(y, h, &periods, &[self.cfg.level]).ok()?;
                self.selected = Some(s);
                self.selected_at = n;
            }
            let f = forecast::predict(self.selected.as_ref()?, y).ok()?;
            self.forecast = Some((n, f));
        }
        let (at, f) = self.forecast.as_ref()?;
        let seen = n - at;
        let bias = if seen == 0 {
            0.0
        } else {
            (0..seen)
                .map(|k| history[at + k] - f.point[k.min(f.point.len() - 1)])
                .sum::<f64>()
                / seen as f64
        };
        let shift =
            |v: &[f64]| -> Vec<f64> { v.iter().skip(seen).map(|x| (x + bias).max(0.0)).collect() };
        let (_, _, hi) = &f.intervals[0];
        Some((shift(&f.point), shift(hi), f.model.clone()))
    }

    /// Decides at `now` (seconds, on the history's clock: step `i` covers
    /// `[i·step, (i+1)·step)`) from the complete steps of `history` (requests per step)
    /// and the rate observed over the last `OBSERVED_WINDOW`.
    pub fn decide(&mut self, now: f64, history: &[f64], observed_rps: f64) -> Decision {
        self.extend_plan(history);
        let peak = self.peak(now);
        self.decide_near(now, peak, observed_rps, |near| near.extend(history))
    }

    /// As `decide_with`, with the service's whole minutes (requests/s, the first being
    /// minute `first` since the Unix epoch, `now` on the same clock) for the near-term
    /// bound: the live control plane's per-minute series.
    pub fn decide_with_minutes(
        &mut self,
        now: f64,
        peak: Option<Peak>,
        first: usize,
        minutes: &[f64],
        observed_rps: f64,
    ) -> Decision {
        self.decide_near(now, peak, observed_rps, |near| {
            near.extend_minutes(first, minutes)
        })
    }

    /// Feeds the near-term bounds with `feed`, then decides from one of them or `peak`,
    /// whichever has provisioned best (see `near`).
    fn decide_near(
        &mut self,
        now: f64,
        peak: Option<Peak>,
        observed_rps: f64,
        feed: impl FnOnce(&mut NearTerm),
    ) -> Decision {
        let (lead, level) = (self.lead().as_secs_f64(), self.cfg.level);
        let Some(near) = self.near.as_mut() else {
            return self.decide_inner(now, peak, None, observed_rps);
        };
        near.prepare(now, lead);
        feed(near);
        let bound = near.bound(now, lead, observed_rps, level);
        if let (Some(b), Some(p)) = (&bound, &peak) {
            near.compare(b, p.upper_rps, level);
        }
        // The bound that has provisioned best on this service's own minutes decides; its
        // point is the rate it starts from.
        let near_peak = |upper_rps: f64, model: &str| Peak {
            upper_rps,
            point_rps: observed_rps,
            model: model.to_string(),
        };
        let chosen = match (&bound, near.choice()) {
            (Some(b), Choice::MinuteOfHour) => Some(near_peak(b.upper_rps, NEAR_TERM)),
            (
                Some(Bound {
                    level_rps: Some(l), ..
                }),
                Choice::Level,
            ) => Some(near_peak(*l, LEVEL_TERM)),
            _ => peak,
        };
        self.decide_inner(now, chosen, bound, observed_rps)
    }

    /// The own forecast's highest upper bound from `now` to one lead time ahead.
    fn peak(&mut self, now: f64) -> Option<Peak> {
        let step_s = self.plan_step_s() as f64;
        let end = self.plan.len() as f64 * step_s;
        let lead = self.lead().as_secs_f64();
        let (point, hi, model) = self.forecast()?;
        // The steps that begin within one lead time and that the reactive floor has not
        // seen a whole window of, on the forecast's clock: a step under way for longer is
        // what the floor sees happening, and provisioning its upper bound too would pay
        // for headroom nobody needs. A plan step of several history steps is only seen
        // once its last history step is (the rate changes from one to the next, and the
        // floor cannot see the ones still to come).
        let seen = now - OBSERVED_WINDOW.as_secs_f64() - end;
        let data_step_s = step_s / self.per_plan() as f64;
        let first = ((seen + data_step_s) / step_s).floor().max(0.0) as usize;
        let last = (((now + lead - end) / step_s).ceil().max(0.0) as usize).min(hi.len());
        let j = (first..last).max_by(|a, b| hi[*a].total_cmp(&hi[*b]))?;
        Some(Peak {
            upper_rps: hi[j] / step_s,
            point_rps: point[j] / step_s,
            model,
        })
    }

    /// How far ahead a decision must look: one cold start and one control interval.
    pub fn lead(&self) -> Duration {
        self.cfg.cold_start + self.cfg.interval
    }

    /// The interval level provisioned for, from now on (the live planner takes it from
    /// the highest active QoS tier).
    pub fn set_level(&mut self, level: f64) {
        self.cfg.level = level;
    }

    /// The per-instance capacity from now on (learned from telemetry).
    pub fn set_capacity(&mut self, rps: f64) {
        self.cfg.capacity_rps = rps;
    }

    /// The cold start measured by the actuator replaces the configured estimate.
    pub fn set_cold_start(&mut self, d: Duration) {
        self.cfg.cold_start = d;
    }

    /// Decides from a forecast made elsewhere (the live control plane's, with its events
    /// calendar applied): `peak` is its highest upper bound over the next lead time.
    pub fn decide_with(&mut self, now: f64, peak: Option<Peak>, observed_rps: f64) -> Decision {
        self.decide_inner(now, peak, None, observed_rps)
    }

    fn decide_inner(
        &mut self,
        now: f64,
        peak: Option<Peak>,
        near: Option<Bound>,
        observed_rps: f64,
    ) -> Decision {
        let cfg = self.cfg.clone();
        let reactive = (observed_rps / (cfg.capacity_rps * cfg.floor_utilisation))
            .ceil()
            .max(0.0) as u32;
        let predictive = peak
            .as_ref()
            .map(|p| (p.upper_rps / cfg.capacity_rps).ceil() as u32);
        let wanted = predictive.unwrap_or(0).max(reactive);
        let (mut target, clamped) = if wanted < cfg.min_instances {
            (cfg.min_instances, Some("min"))
        } else if wanted > cfg.max_instances {
            (cfg.max_instances, Some("max"))
        } else {
            (wanted, None)
        };
        // Scale down only to the highest target wanted during the delay.
        let delay = cfg.scale_down_delay.as_secs_f64();
        while self.recent.front().is_some_and(|(t, _)| *t <= now - delay) {
            self.recent.pop_front();
        }
        self.recent.push_back((now, target));
        let held_at = self.recent.iter().map(|(_, w)| *w).max().unwrap_or(target);
        let held = held_at > target;
        target = held_at;
        let (forecast_upper_rps, forecast_point_rps, model) = match peak {
            Some(p) => (Some(p.upper_rps), Some(p.point_rps), Some(p.model)),
            None => (None, None, None),
        };
        Decision {
            target,
            predictive,
            reactive,
            forecast_upper_rps,
            forecast_point_rps,
            near_term_rps: near.as_ref().map(|b| b.upper_rps),
            level_term_rps: near.and_then(|b| b.level_rps),
            level: cfg.level,
            model,
            lead_s: (cfg.cold_start + cfg.interval).as_secs_f64(),
            observed_rps,
            held,
            clamped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily cycle at 1-minute steps: night 10 req/s, day 100 req/s, with a ramp.
    fn day(days: usize) -> Vec<f64> {
        (0..days * 1440)
            .map(|i| {
                let m = (i % 1440) as f64;
                let rps = if m < 480.0 {
                    10.0
                } else if m < 540.0 {
                    10.0 + 90.0 * (m - 480.0) / 60.0
                } else if m < 1200.0 {
                    100.0
                } else {
                    10.0
                };
                rps * 60.0
            })
            .collect()
    }

    #[test]
    fn capacity_is_planned_before_a_forecast_ramp() {
        let y = day(4);
        let cfg = PlannerConfig::new(10.0, Duration::from_secs(1800), Duration::from_secs(60));
        let mut p = Planner::new(cfg);
        // Day 4, 07:55: the ramp starts at 08:00 and reaches 100 req/s at 09:00. The
        // floor (the last minute: 10 req/s) asks for 2 instances; the forecast plans for
        // the plan step 08:25-08:30, whose first minute instances launched now are up
        // for, at its busiest minute (08:29, 53.5 req/s).
        let t = 3 * 1440 + 475;
        let d = p.decide(t as f64 * 60.0, &y[..t], y[t - 1] / 60.0);
        assert_eq!(d.reactive, 2, "{d:?}");
        let pred = d.predictive.expect("a forecast after three days");
        assert!((6..=7).contains(&pred), "the ramp foreseen: {d:?}");
        assert_eq!(d.target, pred);
        // The busiest minute, not the step's mean (08:27, 50.5 req/s).
        let point = d.forecast_point_rps.expect("a forecast");
        assert!((point - 53.5).abs() < 1.0, "{d:?}");
    }

    #[test]
    fn the_minutes_still_to_come_in_a_plan_step_under_way_are_provisioned() {
        // 1-minute history, 5-minute plan steps, a 30 s cold start, instances of 7.5
        // req/s and a floor at full capacity. Day 4, 08:03:30, on the morning ramp: the
        // plan step 08:00-08:05 has been under way for minutes, but the floor only sees
        // 08:03's rate (14.5 req/s: 2 instances) and 08:04 is faster; the forecast's
        // bound for the step (its busiest minute, 08:04: 16 req/s) still counts.
        let y = day(4);
        let mut cfg = PlannerConfig::new(7.5, Duration::from_secs(30), Duration::from_secs(60));
        cfg.floor_utilisation = 1.0;
        let mut p = Planner::new(cfg);
        let t = 3 * 1440 + 483;
        let d = p.decide(t as f64 * 60.0 + 30.0, &y[..t], y[t] / 60.0);
        assert_eq!(d.reactive, 2, "{d:?}");
        let pred = d
            .predictive
            .expect("the step under way still has a minute to come");
        assert_eq!(pred, 3, "{d:?}");
        let upper = d.forecast_upper_rps.expect("a forecast");
        assert!((15.5..=17.0).contains(&upper), "{d:?}");
        assert_eq!(d.target, pred);
    }

    #[test]
    fn a_plan_step_is_provisioned_for_its_busiest_minute() {
        // Four days of 1-minute history repeating [10, 10, 10, 10, 28] req/s: each
        // 5-minute plan step averages 13.6 req/s (2 instances of 10 req/s) but holds a
        // minute at 28 (3 instances). At 00:00:30 the floor sees 10 req/s (2 instances
        // at its default 80% of capacity).
        let y: Vec<f64> = (0..4 * 1440)
            .map(|i| if i % 5 == 4 { 28.0 * 60.0 } else { 10.0 * 60.0 })
            .collect();
        let cfg = PlannerConfig::new(10.0, Duration::from_secs(30), Duration::from_secs(60));
        let mut p = Planner::new(cfg);
        let d = p.decide(y.len() as f64 * 60.0 + 30.0, &y, 10.0);
        assert_eq!(d.reactive, 2, "{d:?}");
        assert_eq!(d.predictive, Some(3), "{d:?}");
    }

    #[test]
    fn a_history_finer_than_a_minute_is_planned_at_its_busiest_minute() {
        // Two days of 1-second history at 10 req/s with one second a minute at 70: each
        // minute averages 11 req/s (2 instances of 10 req/s); sized for the busiest
        // second, a plan step would want 7.
        let y: Vec<f64> = (0..2 * 86_400)
            .map(|i| if i % 60 == 59 { 70.0 } else { 10.0 })
            .collect();
        let cfg = PlannerConfig::new(10.0, Duration::from_secs(30), Duration::from_secs(1));
        let mut p = Planner::new(cfg);
        let d = p.decide(y.len() as f64 + 30.0, &y, 10.0);
        assert_eq!(d.predictive, Some(2), "{d:?}");
    }

    #[test]
    fn a_burst_is_not_forecast_to_come_back_an_hour_later() {
        // Twelve days of NASA's real 5-minute traffic; an hour before the step being
        // provisioned a burst quadrupled two 5-minute steps. A model made to fit an
        // hourly pattern takes the burst for one and provisions it again.
        let clean = crate::forecast::tests::nasa()[..12 * 288].to_vec();
        let mut rates: Vec<f64> = clean.iter().map(|c| c / 300.0).collect();
        rates.sort_by(f64::total_cmp);
        let capacity = rates[rates.len() * 95 / 100] / 10.0;
        let mut burst = clean.clone();
        let n = burst.len();
        for v in &mut burst[n - 12..n - 10] {
            *v *= 4.0;
        }
        let decide = |y: &[f64]| {
            let cfg =
                PlannerConfig::new(capacity, Duration::from_secs(30), Duration::from_secs(300));
            let mut p = Planner::new(cfg);
            p.decide(n as f64 * 300.0 + 280.0, y, y[n - 1] / 300.0)
        };
        let (c, b) = (decide(&clean), decide(&burst));
        // MSTL with its hourly pattern forced on: 0.69 -> 1.03 req/s (19 instances
        // instead of 11). Chosen by backtest: 0.60 -> 0.63 (the burst's errors widen the
        // interval, 9 -> 13 instances, but its level stays).
        let point = |d: &Decision| d.forecast_point_rps.expect("a forecast");
        assert!(point(&b) <= 1.1 * point(&c), "{c:?}\n{b:?}");
    }

    #[test]
    fn a_jump_on_the_hour_is_provisioned_by_the_near_term_bound_once_it_proves_better() {
        // Per-minute history, 100 req/s with noise, and minute 0 of every hour at 400
        // (posts scheduled on the hour). Instances of 10 req/s, a 30 s cold start, the
        // floor at full capacity, decisions every 5 s from day 2 on. A plan step's
        // forecast holds the jump's 5 minutes at their busiest minute, 400 req/s for all
        // five; the near-term bound learns that only minute 59 is followed by a jump.
        let rate = |m: usize| {
            if m.is_multiple_of(60) {
                400.0
            } else {
                100.0 + (m * 7 % 11) as f64
            }
        };
        let y: Vec<f64> = (0..3 * 1440).map(|m| rate(m) * 60.0).collect();
        let mut cfg = PlannerConfig::new(10.0, Duration::from_secs(30), Duration::from_secs(60));
        cfg.floor_utilisation = 1.0;
        cfg.scale_down_delay = Duration::from_secs(15);
        let mut p = Planner::new(cfg);
        let at = |p: &mut Planner, t: usize| {
            let m = (t - 1) / 60;
            p.decide(t as f64, &y[..t / 60], rate(m))
        };
        let start = 1440 * 60;
        let first = at(&mut p, start + 59 * 60 + 30);
        assert_ne!(
            first.model.as_deref(),
            Some(NEAR_TERM),
            "not before it is judged: {first:?}"
        );
        for t in (start + 59 * 60 + 35..start + 4 * 3600).step_by(5) {
            at(&mut p, t);
        }
        // 04:59:30: the lead reaches into 05:00.
        let d = at(&mut p, start + 4 * 3600 + 59 * 60 + 30);
        assert_eq!(d.model.as_deref(), Some(NEAR_TERM), "{d:?}");
        // 400 req/s, and the noise of minute 59's rate (100-110) in its scores: at most 42.
        assert!((40..=42).contains(&d.target), "{d:?}");
        let near = d.near_term_rps.unwrap();
        assert!((400.0..=420.0).contains(&near), "{d:?}");
        // 05:29:30: the next minute is like this one, and so is the target.
        for t in (start + 4 * 3600 + 59 * 60 + 35..start + 5 * 3600 + 29 * 60 + 30).step_by(5) {
            at(&mut p, t);
        }
        let d = at(&mut p, start + 5 * 3600 + 29 * 60 + 30);
        assert_eq!(d.model.as_deref(), Some(NEAR_TERM), "{d:?}");
        assert!(d.target <= 12, "{d:?}");
    }

    #[test]
    fn a_noisy_level_is_provisioned_by_the_level_bound_once_it_proves_better() {
        // Per-minute history at 100 req/s with independent noise of ±30 each minute (no
        // minute of the hour stands out), instances of 10 req/s, a 30 s cold start. The
        // level bound holds the weighted mean (about 100) plus the 95th percentile of how
        // far a minute comes above it (about 24 req/s: 13 instances); the bound from the
        // current minute's rate follows the noise.
        let rate = |m: usize| {
            // splitmix64 of the minute: uniform in [0, 1).
            let mut z = (m as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            100.0 + 60.0 * (((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
        };
        let y: Vec<f64> = (0..3 * 1440).map(|m| rate(m) * 60.0).collect();
        let mut cfg = PlannerConfig::new(10.0, Duration::from_secs(30), Duration::from_secs(60));
        cfg.floor_utilisation = 1.0;
        cfg.scale_down_delay = Duration::ZERO;
        let mut p = Planner::new(cfg);
        let start = 1440 * 60;
        let mut last = None;
        for t in (start + 30..start + 3 * 3600).step_by(5) {
            last = Some(p.decide(t as f64, &y[..t / 60], rate((t - 1) / 60)));
        }
        let d = last.unwrap();
        assert_eq!(d.model.as_deref(), Some(LEVEL_TERM), "{d:?}");
        let level = d.level_term_rps.unwrap();
        assert!((115.0..=135.0).contains(&level), "{d:?}");
        assert!((12..=14).contains(&d.target), "{d:?}");
    }

    #[test]
    fn the_reactive_floor_decides_without_history_and_scale_down_waits() {
        let cfg = PlannerConfig::new(10.0, Duration::from_secs(30), Duration::from_secs(60));
        let mut p = Planner::new(cfg);
        let d = p.decide(0.0, &[], 50.0);
        assert_eq!((d.predictive, d.reactive, d.target), (None, 7, 7), "{d:?}");
        // The load drops: the target stays up for the scale-down delay, then follows.
        let d = p.decide(30.0, &[], 5.0);
        assert_eq!((d.target, d.held), (7, true));
        let d = p.decide(61.0, &[], 5.0);
        assert_eq!((d.target, d.held), (1, false));
        let d = p.decide(70.0, &[], 0.0);
        assert_eq!((d.target, d.clamped), (1, Some("min")));
    }
}
