//! The candidate models. Each fits on a history and forecasts `h` steps (`fit_predict`),
//! and each can be evaluated at every origin of a backtest in one pass (`rolling`): the
//! parameters (and MSTL's seasonal profile) are fitted once on the data before the first
//! origin, then the state is updated one observation at a time, as the live forecaster
//! updates between refits. That makes choosing a model cost one fit per candidate
//! instead of one per origin, so every step of the backtest can be an origin.

use augurs::mstl::stlrs::Mstl;

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
    /// `mstl_forecasts_from_a_state_that_filtered_the_newest_points`).
    pub fn fit_predict(&self, y: &[f64], h: usize) -> Result<Vec<f64>, ForecastError> {
        let n = y.len();
        let first = match self {
            Model::MstlEts { periods } => {
                let shortest = periods.iter().copied().min().unwrap_or(0);
                let longest = periods.iter().copied().max().unwrap_or(0);
                let first = n.saturating_sub(shortest / 4);
                if first >= 2 * longest {
                    first
                } else {
                    n
                }
            }
            _ => n,
        };
        let mut out = Vec::with_capacity(h);
        self.rolling(y, first, h, &mut |o, f| {
            if o == n {
                out.extend_from_slice(f)
            }
        })?;
        Ok(out)
    }

    /// Fits on `y[..first]`, then for every origin `o` from `first` on at which `h` steps
    /// can be forecast from `y[..o]` (the last one is `y.len()` itself, with nothing to
    /// compare against), calls `each(o, forecast)` with the `h`-step forecast made from
    /// the data before `o`. Never looks at `y[o..]` for origin `o`.
    pub fn rolling(
        &self,
        y: &[f64],
        first: usize,
        h: usize,
        each: &mut dyn FnMut(usize, &[f64]),
    ) -> Result<(), ForecastError> {
        let n = y.len();
        if first == 0 || first > n {
            return Err(self.error(&"no history before the first origin"));
        }
        let mut f = vec![0.0; h];
        match self {
            Model::SeasonalNaive { period } => {
                seasonal_copy(y, first, *period, &|_| 1.0, &mut f, each)
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
                seasonal_copy(y, first, m, &level, &mut f, each)
            }
            Model::Holt => {
                let (p, s) = Holt::fit(&y[..first]);
                p.run(s, y, first, &mut f, &|_| 0.0, each);
            }
            Model::MstlEts { periods } => {
                let fit = Mstl::fit(&y[..first], periods).map_err(|e| self.error(&e))?;
                let (seasonal, trend, remainder) = fit.into_parts();
                // Past the fitted data (`t >= first`), each component repeats its last cycle.
                let season = |t: usize| -> f64 {
                    periods
                        .iter()
                        .zip(&seasonal)
                        .map(|(&p, c)| c[first - p + (t - first) % p])
                        .sum()
                };
                let deseasonalised: Vec<f64> =
                    trend.iter().zip(&remainder).map(|(t, r)| t + r).collect();
                let (p, s) = Holt::fit(&deseasonalised);
                p.run(s, y, first, &mut f, &season, each);
            }
        }
        Ok(())
    }

    fn error(&self, e: &dyn std::fmt::Display) -> ForecastError {
        ForecastError::Model {
            model: self.name(),
            message: e.to_string(),
        }
    }
}

/// At every origin `o` from `first` on, the `period` steps before it repeated, times
/// `scale(o)`, to `each`.
fn seasonal_copy(
    y: &[f64],
    first: usize,
    period: usize,
    scale: &dyn Fn(usize) -> f64,
    f: &mut [f64],
    each: &mut dyn FnMut(usize, &[f64]),
) {
    for o in first..=y.len() {
        let (m, s) = (period.clamp(1, o), scale(o));
        for (j, v) in f.iter_mut().enumerate() {
            *v = y[o - m + j % m] * s;
        }
        each(o, f);
    }
}

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

impl Holt {
    /// The parameters with the least one-step squared error over `y` from a grid (a
    /// grid, not an optimiser: 96 parameter sets filtered side by side, so the CPU
    /// pipelines and vectorises them; well under a millisecond for a week of 5-minute
    /// buckets, where augurs' AutoETS search takes 20-80 ms), and the state they end in.
    fn fit(y: &[f64]) -> (Holt, State) {
        const ALPHA: [f64; 8] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0];
        const BETA: [f64; 4] = [0.0, 0.01, 0.05, 0.15];
        const PHI: [f64; 3] = [0.8, 0.9, 0.98];
        const K: usize = ALPHA.len() * BETA.len() * PHI.len();
        let (mut alpha, mut beta, mut phi) = ([0.0; K], [0.0; K], [0.0; K]);
        for (k, ((a, b), p)) in alpha.iter_mut().zip(&mut beta).zip(&mut phi).enumerate() {
            *a = ALPHA[k / (BETA.len() * PHI.len())];
            *b = BETA[k / PHI.len() % BETA.len()];
            *p = PHI[k % PHI.len()];
        }
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
        (
            Holt {
                alpha: alpha[k],
                beta: beta[k],
                phi: phi[k],
            },
            State {
                level: level[k],
                trend: trend[k],
            },
        )
    }

    /// From state `s` after `y[..first]`: at every origin `o` from `first` to `y.len()`,
    /// the forecast (plus `season`) to `each`, then `y[o]` (less its season) into the
    /// state.
    fn run(
        &self,
        mut s: State,
        y: &[f64],
        first: usize,
        f: &mut [f64],
        season: &dyn Fn(usize) -> f64,
        each: &mut dyn FnMut(usize, &[f64]),
    ) {
        for o in first..=y.len() {
            self.forecast(&s, f);
            for (j, v) in f.iter_mut().enumerate() {
                *v += season(o + j);
            }
            each(o, f);
            if let Some(&v) = y.get(o) {
                self.update(&mut s, v - season(o));
            }
        }
    }

    fn update(&self, s: &mut State, v: f64) {
        let pred = s.level + self.phi * s.trend;
        let level = pred + self.alpha * (v - pred);
        s.trend = self.beta * (level - s.level) + (1.0 - self.beta) * self.phi * s.trend;
        s.level = level;
    }

    fn forecast(&self, s: &State, out: &mut [f64]) {
        let (mut damp, mut phi_j) = (0.0, 1.0);
        for v in out {
            phi_j *= self.phi;
            damp += phi_j;
            *v = s.level + damp * s.trend;
        }
    }
}
