//! Demand forecasting: given a request-rate series, forecast the next `h` steps with
//! calibrated prediction intervals.
//!
//! ```text
//!  series ─▶ candidates: seasonal naive · the same scaled to today's level · Holt
//!           (damped-trend ETS) · MSTL + the same ETS
//!        ─▶ rolling-origin backtest (every step of the last day or ten horizons is an
//!           origin, h steps each) ─▶ pick lowest recency-weighted MAE,
//!           intervals per step                                               (select)
//!        ─▶ refit on everything with the backtest's smoothing parameters (MSTL's
//!           fit stops a quarter cycle short and the newest points are filtered),
//!           forecast h                                                      (predict)
//! ```
//! Intervals are conformal: at each step ahead, the chosen model's out-of-sample errors
//! at that step give the quantile for each level, so their width reflects how the model
//! really did on this series (model-based intervals only reflect the fit and are too
//! narrow out of sample). An error counts in units of its forecast's size (`spread`), so
//! a busy hour's interval is wider than a quiet one's. Both the choice and the quantiles
//! weigh an origin by how recent it is (`CHOICE_HALF_LIFE`, `DECAY`): traffic changes
//! regime (a storm, a launch, a new release) and the newest errors say more about the
//! next ones than last week's do. The seasonal decomposition is augurs' (stlrs' MSTL); the known
//! periods are passed in (bucket units), and a period the series is too short for
//! (fewer than two full cycles) is dropped.
//!
//! Pure: no I/O beyond `series::load`, which reads the CLI's CSV.

pub mod holt;
pub mod models;
pub mod origins;
pub mod series;

use holt::Smoothing;
use models::Model;

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("the series has {have} points; at least {need} are needed for horizon {horizon}")]
    TooShort {
        have: usize,
        need: usize,
        horizon: usize,
    },
    #[error("horizon must be at least 1")]
    ZeroHorizon,
    #[error("interval level {0} is not between 0 and 100")]
    BadLevel(f64),
    #[error("{model}: {message}")]
    Model { model: String, message: String },
}

/// A forecast with its intervals, one entry per requested level.
#[derive(Debug, Clone)]
pub struct Forecast {
    pub model: String,
    /// Mean absolute scaled error of the chosen model in the backtest (vs one-step naive
    /// in sample, seasonal when a period is given).
    pub backtest_mase: f64,
    pub point: Vec<f64>,
    /// `(level in %, lower, upper)`.
    pub intervals: Vec<(f64, Vec<f64>, Vec<f64>)>,
}

/// Seasonal periods found in `y`, strongest first, at most two: the fallback when no
/// period is known (known periods are better: a periodogram needs three cycles and sees
/// periods up to 512 steps). Peaks of augurs' Welch periodogram are coarse (its periods
/// are the FFT size over an integer: 341, 256, 205, ...), so each is refined to the lag
/// with the highest autocorrelation between its neighbouring periods (288 for a day of
/// 5-minute buckets, which the periodogram sees as 256 or 341).
pub fn detect_periods(y: &[f64]) -> Vec<usize> {
    use augurs::seasons::PeriodogramDetector;
    if y.len() < 16 || y.iter().any(|v| !v.is_finite()) {
        return Vec::new();
    }
    let peaks: Vec<_> = PeriodogramDetector::default()
        .periodogram(y)
        .peaks(0.9)
        .collect();
    let mut found: Vec<usize> = Vec::new();
    // Strongest last in augurs' order.
    for p in peaks.iter().rev() {
        let neighbours = [p.prev_period, p.next_period, p.period];
        let lo = neighbours
            .iter()
            .copied()
            .filter(|&x| x > 0)
            .min()
            .unwrap_or(p.period);
        let hi = neighbours.iter().copied().max().unwrap_or(p.period);
        let best = (lo.max(2) as usize..=(hi as usize).min(y.len() / 2))
            .max_by(|&a, &b| autocorrelation(y, a).total_cmp(&autocorrelation(y, b)))
            .unwrap_or(p.period as usize);
        if !found.contains(&best) {
            found.push(best);
        }
        if found.len() == 2 {
            break;
        }
    }
    found
}

/// Sample autocorrelation of `y` at `lag`.
fn autocorrelation(y: &[f64], lag: usize) -> f64 {
    let n = y.len();
    if lag >= n {
        return 0.0;
    }
    let mean = y.iter().sum::<f64>() / n as f64;
    let var: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
    if var <= 0.0 {
        return 0.0;
    }
    let cov: f64 = (0..n - lag)
        .map(|i| (y[i] - mean) * (y[i + lag] - mean))
        .sum();
    cov / var
}

/// The weight of a backtest origin relative to the next newer one in the interval
/// quantiles (the newest weighs `DECAY`, the point to be covered 1): it halves every 69
/// origins. These are the fixed weights of non-exchangeable conformal prediction
/// (Barber, Candès, Ramdas and Tibshirani, "Conformal prediction beyond
/// exchangeability", 2023, whose experiments use 0.99), whose coverage degrades
/// gracefully with how far the newest errors drift from the older ones, where
/// unweighted quantiles assume they never do.
const DECAY: f64 = 0.99;

/// Origins after which an origin's error counts half as much in the model choice. Slower
/// than `DECAY`: a mean error separates two models more slowly than a quantile moves.
/// Origins are series steps: 144 is half a day of 5-minute steps, where a storm a day
/// old decides the choice (see `a_storm_hands_the_choice_to_the_model_that_follows_it`)
/// and a quiet morning does not; the live forecaster's 1-second and 1-minute series
/// forget in 2.4 minutes and 2.4 hours.
const CHOICE_HALF_LIFE: f64 = 144.0;

/// Backtest origins for horizon `h` that a series must have room for: at least 48
/// residuals where that is cheap (short horizons), at least 6 origins always. The
/// backtest itself uses every step of its span as an origin (see `span`).
pub fn origins(h: usize) -> usize {
    (48 / h.max(1)).clamp(6, 24)
}

/// Steps of history the backtest covers for horizon `h`: a day of 5-minute buckets or
/// ten horizons, whichever is longer, where the series has that much beyond the
/// training it needs (`train`); never less than `origins(h) * h`.
fn span(n: usize, h: usize, train: usize) -> usize {
    let back = origins(h) * h;
    back.max((10 * h).max(288).min(n.saturating_sub(train)))
}

/// A model chosen by backtest for horizon `h`, with the interval half-widths its
/// out-of-sample errors give at each requested level. A choice can be kept and refitted
/// cheaply (`predict`) until it drifts.
#[derive(Debug, Clone)]
pub struct Selected {
    pub model: Model,
    pub h: usize,
    /// Mean absolute error of the model in the backtest (every origin scored counted alike), in
    /// the series' units.
    pub mae: f64,
    /// The MASE denominator (see `naive_scale`).
    pub scale: f64,
    /// `(level in %, half-width per step)`, in units of `spread`.
    half_widths: Vec<(f64, Vec<f64>)>,
    /// The series' mean level over the backtest (see `spread`).
    level: f64,
    /// The smoothing parameters the backtest's fit chose, which refits keep.
    smoothing: Option<Smoothing>,
}

/// The scale of the error of a forecast of `p` on a series whose recent mean is
/// `level`: errors of request rates grow with the rate (a busy hour errs by more
/// requests than a quiet one), so conformal scores are errors in units of this and an
/// interval is that many units of its own forecast's spread wide. Linear in the
/// forecast, and at a forecast of zero half what it is at the mean level, so that a
/// quiet night keeps an interval. Against absolute errors, on the shared traces (`bench/forecast`): the 80%
/// interval of AAPL's tweets at 60 steps covered 69% -> 82%, the NYC taxi's at one step
/// 92% of its 5:30 half hours and 17% of its 11:30 ones before, 58% and 50% now (and
/// see `intervals_are_as_wide_as_the_hour_is_busy`), and at 1 and 12 steps the 95%
/// intervals of the spiky series (AAPL's and the 2021 stream's tweets) are 0.25 to 0.7
/// times as wide at the same coverage.
fn spread(p: f64, level: f64) -> f64 {
    p.max(0.0) + level
}

/// Forecasts `h` steps of `y` with intervals at `levels` (percent).
pub fn forecast(
    y: &[f64],
    h: usize,
    periods: &[usize],
    levels: &[f64],
) -> Result<Forecast, ForecastError> {
    let selected = select(y, h, periods, levels)?;
    predict(&selected, y)
}

fn check_levels(levels: &[f64]) -> Result<(), ForecastError> {
    match levels.iter().find(|l| !(**l > 0.0 && **l < 100.0)) {
        Some(&l) => Err(ForecastError::BadLevel(l)),
        None => Ok(()),
    }
}

/// Chooses the model for `h` steps of `y` by rolling-origin backtest, with intervals
/// at `levels` (percent).
pub fn select(
    y: &[f64],
    h: usize,
    periods: &[usize],
    levels: &[f64],
) -> Result<Selected, ForecastError> {
    if h == 0 {
        return Err(ForecastError::ZeroHorizon);
    }
    check_levels(levels)?;
    // Periods need two full cycles in the shortest backtest training window.
    let back = origins(h) * h;
    let n = y.len();
    let periods: Vec<usize> = periods
        .iter()
        .copied()
        .filter(|&p| p >= 2 && 2 * p <= n.saturating_sub(back))
        .collect();
    let longest = periods.iter().copied().max().unwrap_or(1);
    let need = (back + 8).max(2 * longest + back);
    if n < need {
        return Err(ForecastError::TooShort {
            have: n,
            need,
            horizon: h,
        });
    }
    let first = n - span(n, h, (2 * longest).max(8));
    let season = periods.first().copied().unwrap_or(1);
    // The longest pattern's naive: a day's would copy a Sunday onto a Monday.
    let mut candidates = vec![Model::SeasonalNaive { period: longest }, Model::Holt];
    if longest > 1 {
        // Today's level over the last eighth of the shortest cycle (3 hours of a day).
        let shortest = periods.iter().copied().min().unwrap_or(longest);
        candidates.push(Model::ScaledNaive {
            period: longest,
            window: (shortest / 8).max(1),
        });
    }
    if !periods.is_empty() {
        candidates.push(Model::MstlEts { periods });
    }
    // Every candidate is scored at every `keep`-th origin of `first..=n - h`, counted
    // back from the last, and the intervals take those origins' residuals.
    let at = n + 1 - first - h;
    let keep = interval_stride(h);
    let weights = origin_weights(at, 0.5f64.powf(1.0 / CHOICE_HALF_LIFE));
    // The kept residuals of the best candidate so far and of the one on trial: the
    // buffers are reused, not allocated per origin.
    let (mut best, mut residuals, mut trial) = (None::<(Model, Backtest)>, Vec::new(), Vec::new());
    for m in candidates {
        let b = backtest(&m, y, first, h, &weights, keep, &mut trial)?;
        if best.as_ref().is_none_or(|(_, a)| b.score < a.score) {
            best = Some((m, b));
            std::mem::swap(&mut residuals, &mut trial);
        }
    }
    let (model, b) = best.expect("at least one candidate");
    let recent = &y[first..];
    // Positive, so that a series of zeros scores its errors (all zero) as zero.
    let level = (recent.iter().map(|v| v.abs()).sum::<f64>() / recent.len() as f64).max(1e-9);
    // Each error in units of the spread of the forecast it was the error of (actual -
    // residual), as in locally weighted conformal prediction (Lei et al., 2018). The
    // kept rows' origins end at the last, `n - h`.
    let mut scores = residuals;
    let rows = scores.len() / h;
    for (i, row) in scores.chunks_exact_mut(h).enumerate() {
        let o = n - h - (rows - 1 - i) * keep;
        for (j, e) in row.iter_mut().enumerate() {
            *e /= spread(y[o + j] - *e, level);
        }
    }
    let weights = interval_weights(rows, keep);
    Ok(Selected {
        model,
        h,
        mae: b.mae,
        scale: naive_scale(y, season),
        half_widths: half_widths(&scores, &weights, h, keep / 2, levels),
        level,
        smoothing: b.smoothing,
    })
}

/// Every how many backtest origins a model is scored and the intervals take their
/// residuals, for horizon `h`: every one up to 11 steps, every `h / 6`-th beyond.
/// Neighbouring origins' errors at a far step are nearly the same error (one forecast
/// of 60 steps overlaps the next in 59 targets), so every tenth at 60 steps, its weight
/// ten times one origin's and each step's quantile pooled with the five steps either
/// side, gives the same intervals as all of them (`strided_intervals_match_every_origin`)
/// for a tenth of the quantile work and memory. The model choice made from every
/// `h / 6`-th origin differed from every origin's in 4 of 18 bench cells, two for the
/// better and two for the worse, and cut a 60-step choice by a sixth (`bench/RESULTS.md`,
/// "Fewer origins scored, a cheaper decomposition").
fn interval_stride(h: usize) -> usize {
    (h / 6).max(1)
}

/// Interval weights of `rows` residual rows kept every `keep` origins, oldest first:
/// each stands for `keep` origins, as heavy as they would weigh together and decayed by
/// its age in origins (see `DECAY`).
fn interval_weights(rows: usize, keep: usize) -> Vec<f64> {
    let mut w = origin_weights(rows, DECAY.powi(keep as i32));
    w.iter_mut().for_each(|w| *w *= keep as f64);
    w
}

/// Refits the selected model on `y` and forecasts its horizon, with the selection's
/// intervals. The refit keeps the smoothing parameters the backtest's fit chose (as
/// statsforecast's `forward` keeps a fitted model's): searching them again was most of
/// a refit, and on the bench the kept ones forecast as well or better in 14 of 18
/// cells (`bench/RESULTS.md`, "A refit keeps the chosen smoothing").
pub fn predict(sel: &Selected, y: &[f64]) -> Result<Forecast, ForecastError> {
    let point = sel.model.refit(y, sel.h, sel.smoothing)?;
    let intervals = sel
        .half_widths
        .iter()
        .map(|(l, half)| {
            let width = |(p, w): (&f64, &f64)| w * spread(*p, sel.level);
            let lo = point.iter().zip(half).map(|z| z.0 - width(z)).collect();
            let hi = point.iter().zip(half).map(|z| z.0 + width(z)).collect();
            (*l, lo, hi)
        })
        .collect();
    Ok(Forecast {
        model: sel.model.name(),
        backtest_mase: sel.mae / sel.scale,
        point,
        intervals,
    })
}

/// A candidate's errors over a backtest.
#[derive(Debug, Clone, Copy)]
pub struct Backtest {
    /// Mean absolute error, each origin's weighted (the model choice's score).
    pub score: f64,
    /// Mean absolute error, every origin scored counted alike.
    pub mae: f64,
    /// The smoothing parameters the candidate's fit chose (see `Model::rolling`).
    pub smoothing: Option<Smoothing>,
}

/// The errors of `m` at every `keep`-th origin from `y.len() - h` back to `first`, `h`
/// steps each, the model fitted once on `y[..first]` (see `Model::rolling`): the mean
/// absolute error with origin `first + i` weighted by `weights[i]`, and in `kept` the
/// residuals (actual - forecast, one row of `h` per origin, oldest first).
pub fn backtest(
    m: &Model,
    y: &[f64],
    first: usize,
    h: usize,
    weights: &[f64],
    keep: usize,
    kept: &mut Vec<f64>,
) -> Result<Backtest, ForecastError> {
    let n = y.len();
    let keep = keep.max(1);
    kept.clear();
    kept.reserve((n + 1).saturating_sub(first + h).div_ceil(keep) * h);
    let (mut sum, mut total, mut plain, mut count) = (0.0, 0.0, 0.0, 0usize);
    let at = origins::Origins {
        last: n - h,
        every: keep,
    };
    let smoothing = m.rolling(y, first, h, None, at, &mut |o, f| {
        let mut row = 0.0;
        for (a, p) in y[o..o + h].iter().zip(f) {
            kept.push(a - p);
            row += (a - p).abs();
        }
        let w = weights[o - first];
        sum += w * row;
        total += w * h as f64;
        plain += row;
        count += h;
    })?;
    Ok(Backtest {
        score: sum / total.max(f64::EPSILON),
        mae: plain / count.max(1) as f64,
        smoothing,
    })
}

/// `decay^(age + 1)` for `n` origins, oldest first: the newest weighs `decay`, one step
/// less than the point a conformal interval is to cover.
fn origin_weights(n: usize, decay: f64) -> Vec<f64> {
    let mut w = vec![decay; n];
    for i in (0..n.saturating_sub(1)).rev() {
        w[i] = w[i + 1] * decay;
    }
    w
}

/// Weighted conformal half-widths per step, for each level: at step `j`, the smallest
/// absolute backtest error at that step (and at the `pool` steps either side, each a
/// share of its origin's weight) at or below which `level` percent of the total weight
/// lies, the total counting the point to be covered as one more of weight 1 that is
/// never below (as split conformal counts n + 1 points); the largest such error when
/// none is. Made non-decreasing in `j` (no horizon is more certain than a nearer one).
/// Pooling keeps each step's sample as large when fewer origins are kept: a quantile
/// from a few origins per step would wander from step to step, and the running maximum
/// would keep its highs.
///
/// Each step's weights are summed into the buckets of `Buckets` and only the bucket
/// where a level's running weight crosses is sorted: linear in the origins (selecting
/// the largest 40% and sorting them cost 1.2-1.5 times as much). Each step's rows are
/// ordered by bucket once, so a bucket's members at a step are one run found by binary
/// search, and the sums slide from step to step: the step that enters the pool is
/// added, the one that leaves it taken off. Weights are summed in the rows' own units
/// (the step's share of each is a common factor, taken out of the target): at 60
/// steps, pooled 5 either side, a third of the work of summing each step's sample anew
/// and scanning it for the crossing bucket's members (`bench/RESULTS.md`).
fn half_widths(
    residuals: &[f64],
    weights: &[f64],
    h: usize,
    pool: usize,
    levels: &[f64],
) -> Vec<(f64, Vec<f64>)> {
    let mut out: Vec<(f64, Vec<f64>)> =
        levels.iter().map(|&l| (l, Vec::with_capacity(h))).collect();
    let scores: Vec<f64> = residuals.iter().map(|e| e.abs()).collect();
    let buckets = Buckets::over(&scores);
    let rows = weights.len().min(scores.len() / h.max(1));
    // Step after step, each step's (bucket, row) in order.
    let mut by_bucket: Vec<(u16, u32)> = Vec::with_capacity(rows * h);
    for c in 0..h {
        let start = by_bucket.len();
        let ids = (0..rows).map(|r| (buckets.of(scores[r * h + c]), r as u32));
        by_bucket.extend(ids);
        by_bucket[start..].sort_unstable();
    }
    let step = |c: usize| &by_bucket[c * rows..(c + 1) * rows];
    let row_weight: f64 = weights[..rows].iter().sum();
    let score = |c: usize, r: u32| scores[r as usize * h + c];
    let (mut quantiles, mut members) = (Vec::with_capacity(levels.len()), Vec::new());
    // Per bucket the pooled weight and how many scores it holds: a bucket emptied by
    // the slide is set to exactly zero, not left at a rounding residue the scan for
    // the crossing could stop at with no member in it.
    let (mut sums, mut counts, mut pooled) = ([0.0; Buckets::COUNT], [0u32; Buckets::COUNT], 0..0);
    for j in 0..h {
        let steps = j.saturating_sub(pool)..(j + pool + 1).min(h);
        for c in pooled.end..steps.end {
            for &(b, r) in step(c) {
                sums[usize::from(b)] += weights[r as usize];
                counts[usize::from(b)] += 1;
            }
        }
        for c in pooled.start..steps.start {
            for &(b, r) in step(c) {
                let b = usize::from(b);
                counts[b] -= 1;
                sums[b] = if counts[b] == 0 {
                    0.0
                } else {
                    sums[b] - weights[r as usize]
                };
            }
        }
        pooled = steps.clone();
        // Each row has one score at each step pooled.
        let weight = row_weight * steps.len() as f64;
        quantiles.clear();
        for &level in levels {
            // The point to be covered weighs one share: as many rows' units as steps.
            let target = level / 100.0 * (weight + steps.len() as f64);
            let members_of = |b: usize, members: &mut Vec<(f64, f64)>| {
                for c in steps.clone() {
                    let run = step(c);
                    let from = run.partition_point(|&(id, _)| usize::from(id) < b);
                    let inside = run[from..].iter().take_while(|e| usize::from(e.0) == b);
                    members.extend(inside.map(|&(_, r)| (score(c, r), weights[r as usize])));
                }
            };
            let q = (weight >= target)
                .then(|| crossing(&sums, weight, target, &mut members, members_of));
            // The largest score of the sample where its weight falls short.
            quantiles.push(q.unwrap_or_else(|| {
                steps
                    .clone()
                    .flat_map(|c| step(c).iter().map(move |&(_, r)| score(c, r)))
                    .fold(0.0, f64::max)
            }));
        }
        for ((_, widths), &q) in out.iter_mut().zip(&quantiles) {
            let widest = widths.last().copied().unwrap_or(0.0);
            widths.push(q.max(widest));
        }
    }
    out
}

/// The score at which a sample's running weight reaches `target`, its weight per bucket
/// in `sums` and `weight` in all: 0 among the zeros (a naive forecast of a steady count
/// errs by none at most origins), otherwise the first of the crossing bucket's members
/// (`members_of` fills them in) in sorted order, or its last where rounding leaves their
/// running weight a hair short. The buckets are scanned from the top: the levels asked
/// for are high and the largest scores few, where from the bottom the scan crossed the
/// empty buckets below the bulk too.
fn crossing(
    sums: &[f64; Buckets::COUNT],
    weight: f64,
    target: f64,
    members: &mut Vec<(f64, f64)>,
    members_of: impl FnOnce(usize, &mut Vec<(f64, f64)>),
) -> f64 {
    let (room, mut above, mut b) = (weight - target, 0.0, Buckets::COUNT - 1);
    while b > 0 && above + sums[b] <= room {
        above += sums[b];
        b -= 1;
    }
    if b == 0 {
        return 0.0;
    }
    let mut below = weight - above - sums[b];
    members.clear();
    members_of(b, members);
    members.sort_unstable_by(|x, y| x.0.total_cmp(&y.0));
    let crossing = members.iter().find(|(_, w)| {
        below += w;
        below >= target
    });
    crossing.or(members.last()).map_or(0.0, |s| s.0)
}

/// Non-negative scores in `COUNT` buckets ordered as the scores are: one for zeros and
/// 256 for the positive scores' bit patterns (which order non-negative floats as their
/// values do, about logarithmically spaced), by the top 8 bits of their distance from
/// the smallest's. Zeros (an exact forecast) get a bucket of their own: between 0 and
/// the smallest error lie a thousand binary orders of magnitude the buckets need not
/// cover.
struct Buckets {
    /// The smallest positive score's bits (`u64::MAX` when there is none).
    lo: u64,
    shift: u32,
}

impl Buckets {
    const COUNT: usize = 257;

    fn over(scores: &[f64]) -> Buckets {
        debug_assert!(scores.iter().all(|s| s.is_sign_positive()));
        let (lo, hi) = scores.iter().fold((u64::MAX, 0), |(lo, hi), s| {
            // A zero's bits are 0: as the smallest it would stand for every positive one.
            let k = s.to_bits();
            (lo.min(if k == 0 { u64::MAX } else { k }), hi.max(k))
        });
        let shift = (u64::BITS - hi.saturating_sub(lo).leading_zeros()).saturating_sub(8);
        Buckets { lo, shift }
    }

    /// The bucket of `score`: 1 + the top 8 bits of its bits' distance from the
    /// smallest's; of a zero, 0.
    fn of(&self, score: f64) -> u16 {
        let k = score.to_bits();
        u16::from(k >= self.lo) + (k.saturating_sub(self.lo) >> self.shift) as u16
    }
}

/// In-sample MAE of the (seasonal) naive one-step forecast: the MASE denominator.
pub fn naive_scale(y: &[f64], season: usize) -> f64 {
    let m = season.max(1);
    if y.len() <= m {
        return 1.0;
    }
    let s: f64 = y.windows(m + 1).map(|w| (w[m] - w[0]).abs()).sum();
    (s / (y.len() - m) as f64).max(f64::EPSILON)
}

#[cfg(test)]
pub(crate) mod tests;
