//! The candidate models. Each fits on a history and forecasts `h` steps; none keeps
//! state between calls, so backtests and the final fit use the same code path.

use augurs::ets::AutoETS;
use augurs::mstl::MSTLModel;
use augurs::{Fit, Predict};

use super::ForecastError;

#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// Repeats the last season (the last value when `period` is 1): the baseline.
    SeasonalNaive { period: usize },
    /// Holt's linear method (level and damped trend updated per sample): fast, for short
    /// horizons. Smoothing parameters from a small grid by one-step squared error.
    Holt,
    /// MSTL decomposition on the known periods, AutoETS on the trend (augurs).
    MstlEts { periods: Vec<usize> },
}

impl Model {
    pub fn name(&self) -> String {
        match self {
            Model::SeasonalNaive { period } => format!("seasonal-naive(period={period})"),
            Model::Holt => "holt".into(),
            Model::MstlEts { periods } => {
                let p: Vec<String> = periods.iter().map(|p| p.to_string()).collect();
                format!("mstl-ets(periods={})", p.join("+"))
            }
        }
    }

    pub fn fit_predict(&self, y: &[f64], h: usize) -> Result<Vec<f64>, ForecastError> {
        match self {
            Model::SeasonalNaive { period } => {
                let m = (*period).clamp(1, y.len());
                let last = &y[y.len() - m..];
                Ok((0..h).map(|j| last[j % m]).collect())
            }
            Model::Holt => Ok(holt(y, h)),
            Model::MstlEts { periods } => {
                let err = |e: &dyn std::fmt::Display| ForecastError::Model {
                    model: self.name(),
                    message: e.to_string(),
                };
                let model =
                    MSTLModel::new(periods.clone(), AutoETS::non_seasonal().into_trend_model());
                let fitted = model.fit(y).map_err(|e| err(&e))?;
                let f = fitted.predict(h, None).map_err(|e| err(&e))?;
                Ok(f.point)
            }
        }
    }
}

/// Damping of the trend: forecasts level off instead of running away.
const PHI: f64 = 0.98;

fn holt(y: &[f64], h: usize) -> Vec<f64> {
    let mut best = (f64::INFINITY, y[y.len() - 1], 0.0);
    for alpha in [0.1, 0.3, 0.5, 0.8] {
        for beta in [0.01, 0.05, 0.2] {
            let (mut level, mut trend, mut sse) = (y[0], 0.0, 0.0);
            for &v in &y[1..] {
                let pred = level + PHI * trend;
                sse += (v - pred).powi(2);
                let new_level = alpha * v + (1.0 - alpha) * pred;
                trend = beta * (new_level - level) + (1.0 - beta) * PHI * trend;
                level = new_level;
            }
            if sse < best.0 {
                best = (sse, level, trend);
            }
        }
    }
    let (_, level, trend) = best;
    let mut damp = 0.0;
    (1..=h)
        .map(|j| {
            damp += PHI.powi(j as i32);
            level + damp * trend
        })
        .collect()
}
