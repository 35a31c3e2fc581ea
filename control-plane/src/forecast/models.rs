//! The candidate models. Each fits on a history and forecasts `h` steps (`fit_predict`),
//! and each can be evaluated at every origin of a backtest in one pass (`rolling`): the
//! parameters (and MSTL's seasonal profile) are fitted once on the data before the first
//! origin, then the state is updated one observation at a time, as the live forecaster
//! updates between refits. That makes choosing a model cost one fit per candidate
//! instead of one per origin, so every step of the backtest can be an origin; only
//! the origins asked for (`Origins`) get a forecast.

use augurs::mstl::stlrs::{Mstl, MstlParams, StlParams};

use super::holt::{Holt, Smoothing};
use super::origins::Origins;
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
