//! Demand forecasting: given a request-rate series, forecast the next `h` steps with
//! calibrated prediction intervals.
//!
//! ```text
//!  series ─▶ candidates: seasonal naive · Holt (online level/trend) · MSTL + AutoETS
//!        ─▶ rolling-origin backtest (last origins, h steps each) ─▶ pick lowest MAE  (select)
//!        ─▶ refit on everything, forecast h ─▶ intervals from the backtest residuals (predict)
//! ```
//! Intervals are conformal: the chosen model's out-of-sample errors, normalised by
//! `sqrt(step)`, give the quantile for each level, so their width reflects how the model
//! really did on this series (augurs' own intervals only reflect the trend model and are
//! too narrow out of sample). Seasonal models come from Grafana's augurs crate; the known
//! periods are passed in (bucket units), and a period the series is too short for (fewer
//! than two full cycles) is dropped.
//!
//! Pure: no I/O beyond `series::load`, which reads the CLI's CSV.

pub mod models;
pub mod series;

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

/// Backtest origins for horizon `h`: at least 48 residuals where that is cheap (short
/// horizons, where 6 one-step errors would pick the model by chance), at least 6 origins
/// always, at most 24 fits per model.
pub fn origins(h: usize) -> usize {
    (48 / h.max(1)).clamp(6, 24)
}

/// A model chosen by backtest for horizon `h`, with the out-of-sample residuals its
/// intervals come from. Choosing is the costly part (every candidate fitted at every
/// origin); a choice can be kept and refitted cheaply (`predict`) until it drifts.
#[derive(Debug, Clone)]
pub struct Selected {
    pub model: Model,
    pub h: usize,
    /// Mean absolute error of the model in the backtest, in the series' units.
    pub mae: f64,
    /// The MASE denominator (see `naive_scale`).
    pub scale: f64,
    residuals: Vec<Vec<f64>>,
}

/// Forecasts `h` steps of `y` with intervals at `levels` (percent).
pub fn forecast(
    y: &[f64],
    h: usize,
    periods: &[usize],
    levels: &[f64],
) -> Result<Forecast, ForecastError> {
    check_levels(levels)?;
    let selected = select(y, h, periods)?;
    predict(&selected, y, levels)
}

fn check_levels(levels: &[f64]) -> Result<(), ForecastError> {
    match levels.iter().find(|l| !(**l > 0.0 && **l < 100.0)) {
        Some(&l) => Err(ForecastError::BadLevel(l)),
        None => Ok(()),
    }
}

/// Chooses the model for `h` steps of `y` by rolling-origin backtest.
pub fn select(y: &[f64], h: usize, periods: &[usize]) -> Result<Selected, ForecastError> {
    choose(y, h, periods, false)
}

/// MSTL + AutoETS on the `periods` that `y` holds two cycles of (others as `select`
/// when none does), with its backtest residuals for the intervals. For planning across
/// a pattern's turns: the backtest's origins (the last few horizons) may all lie in a
/// flat stretch, where a naive model wins the backtest and then misses the next ramp.
pub fn select_seasonal(y: &[f64], h: usize, periods: &[usize]) -> Result<Selected, ForecastError> {
    choose(y, h, periods, true)
}

fn choose(
    y: &[f64],
    h: usize,
    periods: &[usize],
    seasonal: bool,
) -> Result<Selected, ForecastError> {
    if h == 0 {
        return Err(ForecastError::ZeroHorizon);
    }
    // Periods need two full cycles in the shortest backtest training window.
    let back = origins(h) * h;
    let min_train = y.len().saturating_sub(back);
    let periods: Vec<usize> = periods
        .iter()
        .copied()
        .filter(|&p| p >= 2 && 2 * p <= min_train)
        .collect();
    let need = (back + 8).max(2 * periods.iter().copied().max().unwrap_or(1) + back);
    if y.len() < need {
        return Err(ForecastError::TooShort {
            have: y.len(),
            need,
            horizon: h,
        });
    }
    let season = periods.first().copied().unwrap_or(1);
    let mut candidates = vec![Model::SeasonalNaive { period: season }, Model::Holt];
    if !periods.is_empty() {
        let mstl = Model::MstlEts {
            periods: periods.clone(),
        };
        if seasonal {
            candidates.clear();
        }
        candidates.push(mstl);
    }
    let mut best: Option<(Model, f64, Vec<Vec<f64>>)> = None;
    for m in candidates {
        let residuals = backtest(&m, y, h)?;
        let mae = mean_abs(&residuals);
        if best.as_ref().is_none_or(|(_, b, _)| mae < *b) {
            best = Some((m, mae, residuals));
        }
    }
    let (model, mae, residuals) = best.expect("at least one candidate");
    Ok(Selected {
        model,
        h,
        mae,
        scale: naive_scale(y, season),
        residuals,
    })
}

/// Refits the selected model on `y` and forecasts its horizon, with intervals at
/// `levels` (percent) from the selection's backtest residuals.
pub fn predict(sel: &Selected, y: &[f64], levels: &[f64]) -> Result<Forecast, ForecastError> {
    check_levels(levels)?;
    let point = sel.model.fit_predict(y, sel.h)?;
    let intervals = levels
        .iter()
        .map(|&l| interval(&point, &sel.residuals, l))
        .collect();
    Ok(Forecast {
        model: sel.model.name(),
        backtest_mase: sel.mae / sel.scale,
        point,
        intervals,
    })
}

/// Residuals (actual - forecast) of `m` at the last `origins(h)` origins, `h` steps each.
pub fn backtest(m: &Model, y: &[f64], h: usize) -> Result<Vec<Vec<f64>>, ForecastError> {
    let n = y.len();
    (0..origins(h))
        .rev()
        .map(|k| {
            let origin = n - (k + 1) * h;
            let f = m.fit_predict(&y[..origin], h)?;
            Ok(y[origin..origin + h]
                .iter()
                .zip(&f)
                .map(|(a, p)| a - p)
                .collect())
        })
        .collect()
}

/// Split-conformal interval: the `level` quantile of `|r| / sqrt(step)` over the backtest,
/// scaled back by `sqrt(step)` around the point forecast.
fn interval(point: &[f64], residuals: &[Vec<f64>], level: f64) -> (f64, Vec<f64>, Vec<f64>) {
    let mut scores: Vec<f64> = residuals
        .iter()
        .flat_map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, e)| e.abs() / ((j + 1) as f64).sqrt())
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    // The finite-sample conformal rank: ceil((n + 1) * level).
    let n = scores.len();
    let rank = (((n + 1) as f64 * level / 100.0).ceil() as usize).clamp(1, n);
    let q = scores[rank - 1];
    let half = |j: usize| q * ((j + 1) as f64).sqrt();
    let lo = point.iter().enumerate().map(|(j, p)| p - half(j)).collect();
    let hi = point.iter().enumerate().map(|(j, p)| p + half(j)).collect();
    (level, lo, hi)
}

fn mean_abs(r: &[Vec<f64>]) -> f64 {
    let (s, n) = r
        .iter()
        .flatten()
        .fold((0.0, 0usize), |(s, n), e| (s + e.abs(), n + 1));
    s / n.max(1) as f64
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
