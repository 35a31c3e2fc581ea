//! The candidate models. Each fits on a history and forecasts `h` steps (`fit_predict`),
//! and each can be evaluated at every origin of a backtest in one pass (`rolling`): the
//! parameters (and MSTL's seasonal profile) are fitted once on the data before the first
//! origin, then the state is updated one observation at a time, as the live forecaster
//! updates between refits. That makes choosing a model cost one fit per candidate
//! instead of one per origin, so every step of the backtest can be an origin; only
//! the origins asked for (`Origins`) get a forecast.

use augurs::mstl::stlrs::{Mstl, MstlParams, StlParams};

use super::ForecastError;

#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// Repeats the last season (the last value when `period` is 1): the baseline.
    SeasonalNaive { period: usize },
    /// Exponential smoothing with a damped additive trend, ETS(A,Ad,N) (simple exponential
    /// smoothing and the last value are its corners): level and trend updated per sample.
    Holt,
    /// MSTL decomposition on the known periods (augurs' stlrs), the same damped-trend
    /// exponential smoothing on the deseasonalised series, the seasons repeated on top.
    MstlEts { periods: Vec<usize> },
    /// The last season scaled by how the last `window` steps compare with the same
    /// steps a season before: a copy of last Monday that follows today's level (a storm
    /// that halves the traffic, a launch that doubles it), which the plain copy ignores
    /// until a season has passed.
    ScaledNaive { period: usize, window: usize },
}

impl Model {
    pub fn name(&self) -> String {
        match self {
            Model::SeasonalNaive { period } => format!("seasonal-naive(period={period})"),
            Model::Holt => "holt".into(),
            Model::ScaledNaive { period, window } => {
                format!("scaled-naive(period={period}, window={window})")
            }
            Model::MstlEts { periods } => {
                let p: Vec<String> = periods.iter().map(|p| p.to_string()).collect();
                format!("mstl-ets(periods={})", p.join("+"))
            }
        }
    }

    /// Fits on `y` and forecasts the next `h` steps.
    ///
    /// MSTL's fit ends a quarter of the shortest period before the end of `y`, and the
    /// newest points go through the smoothing state as they do between a backtest's
    /// origins: STL's loess estimates at the very end of a series are one-sided and take
    /// the newest observations into the seasonal and trend components, so a state
    /// started from them is off by just what the next step needs (over the last week of
    /// the NYC taxi trace, a fit to the end errs 1.6 times as much one step ahead:
    /// `mstl_forecasts_from_a_state_that_filtered_the_newest_points`). The fit starts a
    /// whole number of the longest period before where it ends (see `whole_cycles`).
    pub fn fit_predict(&self, y: &[f64], h: usize) -> Result<Vec<f64>, ForecastError> {
        self.refit(y, h, None)
    }

    /// `fit_predict`, keeping the smoothing parameters a backtest's fit chose (`keep`)
    /// rather than searching them again: the live forecaster refits its choice at every
    /// update, and the search is most of a Holt fit.
    pub fn refit(
        &self,
        y: &[f64],
        h: usize,
        keep: Option<Smoothing>,
    ) -> Result<Vec<f64>, ForecastError> {
        let (start, first) = match self {
            Model::MstlEts { periods } => {
                let shortest = periods.iter().copied().min().unwrap_or(0);
                let longest = periods.iter().copied().max().unwrap_or(0);
                let first = y.len().saturating_sub(shortest / 4);
                if first >= 2 * longest {
                    (whole_cycles(first, longest), first)
                } else {
                    (whole_cycles(y.len(), longest), y.len())
                }
            }
            _ => (0, y.len()),
        };
        let y = &y[start..];
        let (n, first) = (y.len(), first - start);
        let mut out = Vec::with_capacity(h);
        self.rolling(y, first, h, keep, Origins::last(n), &mut |_, f| {
            out.extend_from_slice(f)
        })?;
        Ok(out)
    }

    /// Fits on `y[..first]`, then for every origin `o` of `at` from `first` on (at most
    /// `y.len()` itself, with nothing to compare against), calls `each(o, forecast)`
    /// with the `h`-step forecast made from the data before `o`; the state goes through
    /// every step between. Never looks at `y[o..]` for origin `o`. Holt's smoothing
    /// parameters are `keep`'s where given; returned, those it used (None for the
    /// copies, which have none).
    pub fn rolling(
        &self,
        y: &[f64],
        first: usize,
        h: usize,
        keep: Option<Smoothing>,
        at: Origins,
        each: &mut dyn FnMut(usize, &[f64]),
    ) -> Result<Option<Smoothing>, ForecastError> {
        let n = y.len();
        if first == 0 || first > n {
            return Err(self.error(&"no history before the first origin"));
        }
        let mut f = vec![0.0; h];
        match self {
            Model::SeasonalNaive { period } => {
                seasonal_copy(y, first, *period, &|_| 1.0, at, &mut f, each);
                Ok(None)
            }
            Model::ScaledNaive { period, window } => {
                let (m, k) = (*period, *window);
                // One request per step added to both sides: a quiet window a season ago
                // must not multiply the copy a hundredfold.
                let level = |o: usize| {
                    if o < m + k {
                        return 1.0;
                    }
                    let now: f64 = y[o - k..o].iter().sum::<f64>() + k as f64;
                    let before: f64 = y[o - m - k..o - m].iter().sum::<f64>() + k as f64;
                    if before > 0.0 && now >= 0.0 {
                        now / before
                    } else {
                        1.0
                    }
                };
                seasonal_copy(y, first, m, &level, at, &mut f, each);
                Ok(None)
            }
            Model::Holt => {
                let (p, s) = Holt::fit_or_keep(&y[..first], keep);
                p.run((s, first), y, at, &mut f, &[], each);
                Ok(Some(Smoothing(p)))
            }
            Model::MstlEts { periods } => {
                let fit = mstl_params(periods)
                    .fit(&y[..first], periods)
                    .map_err(|e| self.error(&e))?;
                let (seasonal, trend, remainder) = fit.into_parts();
                // Past the fitted data (`t >= first`), each component repeats its last
                // cycle: `season[t - first]`, up to the last origin's horizon.
                let mut season = vec![0.0; y.len() + 1 - first + h];
                for (&p, c) in periods.iter().zip(&seasonal) {
                    for (v, s) in season.iter_mut().zip(c[first - p..first].iter().cycle()) {
                        *v += s;
                    }
                }
                let deseasonalised: Vec<f64> =
                    trend.iter().zip(&remainder).map(|(t, r)| t + r).collect();
                let (p, s) = Holt::fit_or_keep(&deseasonalised, keep);
                p.run((s, first), y, at, &mut f, &season, each);
                Ok(Some(Smoothing(p)))
            }
        }
    }

    fn error(&self, e: &dyn std::fmt::Display) -> ForecastError {
        ForecastError::Model {
            model: self.name(),
            message: e.to_string(),
        }
    }
}

/// The origins a rolling evaluation forecasts from: `last`, `last - every`, and so on
/// back to the first (a backtest's scored ones, or a refit's one).
#[derive(Debug, Clone, Copy)]
pub struct Origins {
    pub last: usize,
    pub every: usize,
}

impl Origins {
    /// Every origin up to `last`.
    pub fn all(last: usize) -> Origins {
        Origins { last, every: 1 }
    }

    /// `last` alone.
    pub fn last(last: usize) -> Origins {
        Origins {
            last,
            every: usize::MAX,
        }
    }

    fn has(&self, o: usize) -> bool {
        o <= self.last && (self.last - o).is_multiple_of(self.every.max(1))
    }

    /// The origins from `first` on, oldest first.
    fn from(self, first: usize) -> impl Iterator<Item = usize> {
        let every = self.every.max(1);
        let start = self.last - self.last.saturating_sub(first) / every * every;
        (start.max(first)..=self.last).step_by(every)
    }
}

/// Where a fit that ends at `first` starts so that it covers a whole number of cycles of
/// `longest`: each step of a cycle is smoothed over its own cycle-subseries (the same
/// half hour of every week), and a partial oldest cycle gives some steps one cycle more
/// than the others. The repeated cycle then jumps where the counts change, by as much as
/// that extra cycle differs from the rest: with the NYC taxi's four weeks of history, one
/// of them Christmas's, a one-step forecast from where the counts change erred twice as
/// much as from anywhere else (`mstl_fits_whole_cycles`). The backtest's fits keep their
/// partial cycle: trimmed too, they differed in one bench cell, where a window chose
/// MSTL over Holt and an hour's spike just before the forecast made it err three times
/// as much (`bench/RESULTS.md`).
fn whole_cycles(first: usize, longest: usize) -> usize {
    first % longest.max(1)
}

/// The instruction set Holt's grid search runs with on this CPU (`Holt::search`). The
/// first call in a process probes the CPU's features (CPUID, which a hypervisor traps:
/// about 50 us on the bench machine), later ones read the cached answer.
pub fn instruction_set() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    return match pulp::Arch::new() {
        pulp::Arch::V4(_) => "AVX-512",
        pulp::Arch::V3(_) => "AVX2",
        _ => "SSE2",
    };
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    "the target's baseline"
}

/// stlrs' MSTL in one pass over the periods (see below), each STL in one inner loop,
/// with its loess smoothers evaluated sparsely: the low-pass smoother once per window
/// (stlrs' default is ten times; after three moving averages at least a period long
/// the curve has no bend shorter than that) and the seasonal one at every eighth point
/// of a cycle-subseries (at its ends where it has fewer: a week of a daily period), the
/// values between interpolated linearly. The windows are sized for the longest period,
/// the one whose smoothers dominate the cost. On the shared traces loess at every fifth
/// of the low-pass window and every fourth cycle left the forecasts' MASE within 0.01 of
/// the default's in every bench cell and halved the fit (`bench/forecast`, RESULTS
/// "Loess evaluated half as often"); once per window and every eighth cycle took
/// another third off and changed only the NYC taxi's cells, whose daily component has
/// 28 cycles (one step 0.209 -> 0.220 MASE, 12 steps 0.494 -> 0.484, 60 steps 0.781 ->
/// 0.731; RESULTS "Fewer origins scored, a cheaper decomposition").
///
/// One inner loop, not stlrs' two: the second re-extracts the season from the series
/// less the first loop's trend. Since the fit covers whole cycles (`whole_cycles`) the
/// bench's MASE moved by at most 0.015 with one (NASA's 5-minute buckets at 60 steps,
/// 0.947 -> 0.962; the taxi's one step 0.198 -> 0.196) and the fit took half as long. In
/// one loop the trend is smoothed after the season is fixed and only splits the
/// deseasonalised series into trend and remainder, which the ETS sees summed (each
/// period's STL starts from a zero trend): it is the shortest loess stlrs allows (3
/// points), evaluated at the two ends only (`the_trend_split_leaves_the_ets_series_alone`).
fn mstl_params(periods: &[usize]) -> MstlParams {
    let longest = periods.iter().copied().max().unwrap_or(2).max(2);
    // stlrs' low-pass window for the longest period (the last one MSTL fits), made odd
    // as it makes it.
    let low_pass = longest | 1;
    let mut stl = StlParams::new();
    stl.inner_loops(1)
        .trend_length(3)
        .trend_jump(usize::MAX)
        .low_pass_jump(low_pass)
        .seasonal_jump(8);
    let mut params = Mstl::params();
    // One pass over the periods, not MSTL's default two (which re-extracts each season
    // from the series less the others): with two periods it halves the fit, and on the
    // taxi's bench windows one pass forecasts one step ahead better (0.289 -> 0.277
    // MASE, 80% coverage 56% -> 65%) and 12 steps within 0.006. One period is always
    // one pass.
    params.iterations(1).stl_params(stl);
    params
}

/// At every origin `o` of `at` from `first` on, the `period` steps before it repeated,
/// times `scale(o)`, to `each`.
fn seasonal_copy(
    y: &[f64],
    first: usize,
    period: usize,
    scale: &dyn Fn(usize) -> f64,
    at: Origins,
    f: &mut [f64],
    each: &mut dyn FnMut(usize, &[f64]),
) {
    for o in at.from(first) {
        let (m, s) = (period.clamp(1, o), scale(o));
        let last = &y[o - m..o];
        if let Some(ahead) = last.get(..f.len()) {
            // The horizon within one cycle (a day's or a week's copy): two slices the
            // compiler vectorises, where the cycling iterator below costs a branch a
            // step (3% of the taxi's 60-step model choice).
            for (v, l) in f.iter_mut().zip(ahead) {
                *v = l * s;
            }
        } else {
            for (v, l) in f.iter_mut().zip(last.iter().cycle()) {
                *v = l * s;
            }
        }
        each(o, f);
    }
}

/// Holt's coarse grid: smoothing of the level, of the trend, and the trend's damping.
const ALPHA: [f64; 8] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0];
const BETA: [f64; 4] = [0.0, 0.01, 0.05, 0.15];
const PHI: [f64; 3] = [0.8, 0.9, 0.98];

/// Smoothing parameters of ETS(A,Ad,N).
#[derive(Debug, Clone, Copy)]
struct Holt {
    alpha: f64,
    beta: f64,
    phi: f64,
}

/// Level and trend after the last observation.
#[derive(Debug, Clone, Copy)]
struct State {
    level: f64,
    trend: f64,
}

/// The smoothing parameters a fit chose (Holt's, or the ETS on MSTL's deseasonalised
/// series), for a refit to keep (`Model::refit`).
#[derive(Debug, Clone, Copy)]
pub struct Smoothing(Holt);

impl Holt {
    /// `keep` and the state it ends in after `y`, or the best parameters for `y` (`fit`).
    fn fit_or_keep(y: &[f64], keep: Option<Smoothing>) -> (Holt, State) {
        match keep {
            Some(Smoothing(p)) => (p, Holt::search(y, &[p]).2),
            None => Holt::fit(y),
        }
    }

    /// The parameters with the least one-step squared error over `y`, and the state they
    /// end in: the best of a coarse grid (`coarse`), then of the midpoints between it and
    /// its grid neighbours (`around`). A grid, not an optimiser: the sets are filtered
    /// side by side, so the CPU pipelines and vectorises them; well under a millisecond
    /// for a week of 5-minute buckets, where augurs' AutoETS search takes 20-80 ms. The
    /// second pass costs a third of the first; a grid as fine everywhere would double it.
    fn fit(y: &[f64]) -> (Holt, State) {
        let (best, sse, state) = Holt::search(y, &Holt::coarse());
        let (refined, refined_sse, refined_state) = Holt::search(y, &best.around());
        if refined_sse < sse {
            (refined, refined_state)
        } else {
            (best, state)
        }
    }

    /// Every combination of `ALPHA`, `BETA` and `PHI`, except that without a trend (it
    /// starts at 0 and beta 0 keeps it there) phi changes nothing: one set per alpha.
    fn coarse() -> [Holt; 80] {
        let mut grid = [Holt {
            alpha: 0.0,
            beta: 0.0,
            phi: PHI[0],
        }; 80];
        let sets = ALPHA.iter().flat_map(|&alpha| {
            BETA.iter().flat_map(move |&beta| {
                let phis = if beta == 0.0 { &PHI[..1] } else { &PHI[..] };
                phis.iter().map(move |&phi| Holt { alpha, beta, phi })
            })
        });
        for (g, set) in grid.iter_mut().zip(sets) {
            *g = set;
        }
        grid
    }

    /// Each parameter at itself and at the midpoints to its neighbours in the coarse
    /// grid (itself again at an edge): 27 sets, this one among them.
    fn around(&self) -> [Holt; 27] {
        let mid = |g: &[f64], v: f64| -> [f64; 3] {
            let i = g.iter().position(|&x| x == v).unwrap_or(0);
            let below = if i > 0 { (g[i - 1] + v) / 2.0 } else { v };
            let above = g.get(i + 1).map_or(v, |&x| (x + v) / 2.0);
            [below, v, above]
        };
        let (a, b, p) = (
            mid(&ALPHA, self.alpha),
            mid(&BETA, self.beta),
            mid(&PHI, self.phi),
        );
        std::array::from_fn(|k| Holt {
            alpha: a[k / 9],
            beta: b[k / 3 % 3],
            phi: p[k % 3],
        })
    }

    /// The set in `grid` with the least one-step squared error over `y`, that error and
    /// the state it ends in, filtered with the widest vectors the CPU has: pulp detects
    /// AVX-512, AVX2 or only SSE2 at run time and compiles `filter` for each. The
    /// arithmetic is the same (no fused multiply-add is introduced), so are the results
    /// to the bit (`the_grid_search_is_the_same_on_every_instruction_set`); with
    /// AVX-512, 3.6 times as fast as SSE2 on 80 sets over a week of 5-minute buckets.
    fn search<const K: usize>(y: &[f64], grid: &[Holt; K]) -> (Holt, f64, State) {
        struct Search<'a, const K: usize>(&'a [f64], &'a [Holt; K]);
        impl<const K: usize> pulp::WithSimd for Search<'_, K> {
            type Output = (Holt, f64, State);
            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _: S) -> Self::Output {
                Holt::filter(self.0, self.1)
            }
        }
        pulp::Arch::new().dispatch(Search(y, grid))
    }

    /// `search`'s work: the sets filtered side by side (K at a time per sample).
    #[inline(always)]
    fn filter<const K: usize>(y: &[f64], grid: &[Holt; K]) -> (Holt, f64, State) {
        let alpha: [f64; K] = std::array::from_fn(|k| grid[k].alpha);
        let beta: [f64; K] = std::array::from_fn(|k| grid[k].beta);
        let phi: [f64; K] = std::array::from_fn(|k| grid[k].phi);
        let (mut level, mut trend, mut sse) = ([y[0]; K], [0.0; K], [0.0; K]);
        for &v in &y[1..] {
            for k in 0..K {
                let pred = level[k] + phi[k] * trend[k];
                let e = v - pred;
                sse[k] += e * e;
                let l = pred + alpha[k] * e;
                trend[k] = beta[k] * (l - level[k]) + (1.0 - beta[k]) * phi[k] * trend[k];
                level[k] = l;
            }
        }
        let k = (0..K)
            .min_by(|&a, &b| sse[a].total_cmp(&sse[b]))
            .unwrap_or(0);
        let state = State {
            level: level[k],
            trend: trend[k],
        };
        (grid[k], sse[k], state)
    }

    /// From state `s` after `y[..first]`: at every origin `o` of `at` from `first` to
    /// `y.len()`, the forecast (plus `season[o - first + j]` at step `j`, where `season`
    /// is not empty) to `each`; at every step, `y[o]` (less its season) into the state.
    fn run(
        &self,
        (mut s, first): (State, usize),
        y: &[f64],
        at: Origins,
        f: &mut [f64],
        season: &[f64],
        each: &mut dyn FnMut(usize, &[f64]),
    ) {
        // The damped trend's multiplier at each step, phi + ... + phi^j: the same at
        // every origin.
        let damp: Vec<f64> = f
            .iter()
            .scan((0.0, 1.0), |(damp, phi_j), _| {
                *phi_j *= self.phi;
                *damp += *phi_j;
                Some(*damp)
            })
            .collect();
        for o in first..=y.len() {
            if at.has(o) {
                for (v, d) in f.iter_mut().zip(&damp) {
                    *v = s.level + d * s.trend;
                }
                if let Some(ahead) = season.get(o - first..o - first + f.len()) {
                    for (v, s) in f.iter_mut().zip(ahead) {
                        *v += s;
                    }
                }
                each(o, f);
            }
            if let Some(&v) = y.get(o) {
                let now = season.get(o - first).copied().unwrap_or(0.0);
                self.update(&mut s, v - now);
            }
        }
    }

    fn update(&self, s: &mut State, v: f64) {
        let pred = s.level + self.phi * s.trend;
        let level = pred + self.alpha * (v - pred);
        s.trend = self.beta * (level - s.level) + (1.0 - self.beta) * self.phi * s.trend;
        s.level = level;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::tests::nasa;

    /// Root mean square.
    fn rms(v: &mut dyn Iterator<Item = f64>) -> f64 {
        let (s, n) = v.fold((0.0, 0.0), |(s, n), x| (s + x * x, n + 1.0));
        (s / n).sqrt()
    }

    #[test]
    fn the_holt_search_refines_between_grid_points() {
        let y = nasa();
        let sse = |h: Holt| Holt::search(&y, &[h]).1;
        let (coarse, coarse_sse, _) = Holt::search(&y, &Holt::coarse());
        let (fitted, _) = Holt::fit(&y);
        // The coarse grid holds no duplicate set and every one it should.
        let grid = Holt::coarse();
        assert_eq!(grid.len(), ALPHA.len() * (1 + (BETA.len() - 1) * PHI.len()));
        for (i, a) in grid.iter().enumerate() {
            assert!(grid[..i]
                .iter()
                .all(|b| (a.alpha, a.beta, a.phi) != (b.alpha, b.beta, b.phi)));
        }
        assert!(grid.iter().all(|g| g.alpha > 0.0));
        // On a week of NASA's requests the best set lies between grid points.
        assert!(
            sse(fitted) < coarse_sse,
            "refined {fitted:?} ({:.0}) against coarse {coarse:?} ({coarse_sse:.0})",
            sse(fitted)
        );
        assert!(coarse
            .around()
            .iter()
            .any(|h| (h.alpha, h.beta, h.phi) == (fitted.alpha, fitted.beta, fitted.phi)));
    }

    #[test]
    fn the_grid_search_is_the_same_on_every_instruction_set() {
        // `filter` called directly is compiled for the baseline (SSE2); `search` runs
        // it with what this CPU has. Same sets, same errors, same state, to the bit.
        // Only an optimised build vectorises (`cargo nextest run --release`); the forecast
        // bench's output, unchanged to the last digit, checks the same end to end.
        let y = nasa();
        let grid = Holt::coarse();
        let (a, a_sse, a_state) = Holt::search(&y, &grid);
        let (b, b_sse, b_state) = Holt::filter(&y, &grid);
        assert_eq!((a.alpha, a.beta, a.phi), (b.alpha, b.beta, b.phi));
        assert_eq!(a_sse.to_bits(), b_sse.to_bits());
        assert_eq!(
            (a_state.level.to_bits(), a_state.trend.to_bits()),
            (b_state.level.to_bits(), b_state.trend.to_bits())
        );
    }

    #[test]
    fn a_refit_keeps_the_smoothing_a_fit_chose() {
        // Holt's parameters as a fit of NASA's first week chose them: refitting that week
        // with them forecasts as the fit did, and over another series (the taxi's) they
        // are kept where a search would choose others. MSTL's ETS returns its
        // parameters too; the copies have none.
        let week = &nasa()[..2016];
        let taxi = crate::forecast::tests::taxi();
        let chosen = |m: &Model, y: &[f64]| {
            m.rolling(y, y.len(), 12, None, Origins::last(y.len()), &mut |_, _| {})
        };
        let kept = chosen(&Model::Holt, week).unwrap();
        assert!(kept.is_some());
        let refit = |y: &[f64]| Model::Holt.refit(y, 12, kept).unwrap();
        assert_eq!(refit(week), Model::Holt.fit_predict(week, 12).unwrap());
        assert_ne!(refit(&taxi), Model::Holt.fit_predict(&taxi, 12).unwrap());
        let mstl = Model::MstlEts { periods: vec![288] };
        assert!(chosen(&mstl, week).unwrap().is_some());
        let copy = Model::SeasonalNaive { period: 288 };
        assert!(chosen(&copy, week).unwrap().is_none());
    }

    #[test]
    fn mstl_fits_whole_cycles() {
        // The taxi's half hours, a daily and a weekly period, forecast one step ahead at
        // 74 origins outside the blizzard. With four weeks of history the fit (which
        // stops a quarter day short) used to end where the cycle-subseries lose their
        // oldest week, and erred twice as much (882 passengers against 433) as with a
        // history 13 steps shorter; over whole weeks both err alike.
        let y = crate::forecast::tests::taxi();
        let m = Model::MstlEts {
            periods: vec![48, 336],
        };
        let error = |history: usize| {
            let ends = (1350..y.len() - 1).step_by(3);
            let errors: Vec<f64> = ends
                .filter(|e| !(1390..1500).contains(e))
                .map(|end| (y[end] - m.fit_predict(&y[end - history..end], 1).unwrap()[0]).abs())
                .collect();
            errors.iter().sum::<f64>() / errors.len() as f64
        };
        let (weeks, shorter) = (error(4 * 336), error(4 * 336 - 13));
        assert!(
            weeks < 1.1 * shorter,
            "four weeks err {weeks:.0}, 13 steps fewer {shorter:.0}"
        );
    }

    #[test]
    fn one_mstl_pass_decomposes_as_two_do() {
        // The taxi's five weeks, daily and weekly periods: each seasonal component from
        // one pass stays within a fifth of the series' noise (the two-pass
        // decomposition's remainder) of the two-pass one. Measured: 243 and 123
        // passengers RMS against 2,778.
        let y = crate::forecast::tests::taxi();
        let periods = [48, 336];
        let one = mstl_params(&periods).fit(&y, &periods).unwrap();
        let mut two = mstl_params(&periods);
        let two = two.iterations(2).fit(&y, &periods).unwrap();
        let noise = rms(&mut two.remainder().iter().copied());
        for (p, (a, b)) in periods
            .iter()
            .zip(one.seasonal().iter().zip(two.seasonal()))
        {
            let moved = rms(&mut a.iter().zip(b).map(|(x, y)| x - y));
            assert!(
                moved < 0.2 * noise,
                "period {p}: moved {moved:.1} RMS; the remainder is {noise:.1}"
            );
        }
    }

    #[test]
    fn a_strided_rolling_forecasts_as_every_origin_does() {
        // Every 7th origin back from the last: forecasts at exactly those origins, each
        // the one every origin's pass made there (the state still steps through all).
        let y = &nasa()[..3000];
        let (first, h) = (2300, 12);
        let at = Origins {
            last: y.len() - h,
            every: 7,
        };
        for m in [
            Model::SeasonalNaive { period: 288 },
            Model::ScaledNaive {
                period: 288,
                window: 36,
            },
            Model::Holt,
            Model::MstlEts { periods: vec![288] },
        ] {
            let forecasts = |at: Origins| {
                let mut out = Vec::new();
                m.rolling(y, first, h, None, at, &mut |o, f| out.push((o, f.to_vec())))
                    .unwrap();
                out
            };
            let all = forecasts(Origins::all(y.len() - h));
            let some = forecasts(at);
            let expected: Vec<_> = all
                .into_iter()
                .filter(|(o, _)| (y.len() - h - o).is_multiple_of(7))
                .collect();
            assert_eq!(
                some.first().map(|s| s.0),
                Some(first + (y.len() - h - first) % 7)
            );
            assert_eq!(some.last().map(|s| s.0), Some(y.len() - h));
            assert_eq!(some, expected, "{}", m.name());
        }
    }

    #[test]
    fn the_trend_split_leaves_the_ets_series_alone() {
        // With one inner loop the trend is smoothed after the seasons are fixed: its
        // window changes how the deseasonalised series splits into trend and remainder,
        // not their sum, which is all the ETS sees. Two loops would feed the trend back
        // into the seasons and fail this.
        let y = crate::forecast::tests::taxi();
        let periods = [48, 336];
        let sum = |params: &MstlParams| {
            let fit = params.fit(&y, &periods).unwrap();
            let (_, trend, remainder) = fit.into_parts();
            trend
                .iter()
                .zip(&remainder)
                .map(|(t, r)| t + r)
                .collect::<Vec<f64>>()
        };
        let short = sum(&mstl_params(&periods));
        let mut stl = StlParams::new();
        stl.inner_loops(1).low_pass_jump(337).seasonal_jump(8);
        let mut wide = Mstl::params();
        wide.iterations(1).stl_params(stl);
        let wide = sum(&wide);
        let scale = rms(&mut short.iter().copied());
        let apart = rms(&mut short.iter().zip(&wide).map(|(a, b)| a - b));
        assert!(apart < 1e-9 * scale, "{apart} apart, series {scale}");
    }

    #[test]
    fn sparser_loess_decomposes_as_the_default_does() {
        // NASA's two weeks, a daily period: loess evaluated sparsely and one inner loop
        // move the seasonal component by less than an eighth of the series' noise (the
        // default decomposition's remainder). Measured: 6.3 requests RMS against 56.8;
        // 4.4 with the seasonal loess at every fourth cycle and the low-pass at every
        // fifth of its window (the bench's forecasts on NASA's traces within 0.001 MASE
        // of these), 3.4 with two inner loops besides.
        let y = nasa();
        let fast = mstl_params(&[288]).fit(&y, &[288]).unwrap();
        let default = Mstl::fit(&y, &[288]).unwrap();
        let (a, b) = (&fast.seasonal()[0], &default.seasonal()[0]);
        let moved = rms(&mut a.iter().zip(b).map(|(x, y)| x - y));
        let noise = rms(&mut default.remainder().iter().copied());
        assert!(
            moved < 0.125 * noise,
            "seasonal component moved {moved:.1} RMS; the remainder is {noise:.1}"
        );
    }
}
