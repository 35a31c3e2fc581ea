//! Reads a `timestamp,value` CSV (with header) into a series, with errors that name the
//! line: empty, non-numeric or non-finite values, timestamps out of order.

use std::path::Path;

use crate::time::parse_time;

#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no data rows")]
    Empty { path: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
}

/// Values in file order; timestamps (seconds or `YYYY-MM-DD HH:MM:SS`) must increase.
pub fn load(path: &Path) -> Result<Vec<f64>, SeriesError> {
    load_timed(path).map(|rows| rows.into_iter().map(|(_, v)| v).collect())
}

/// `(timestamp in Unix seconds, value)` rows in file order, checked as `load` checks them.
pub fn load_timed(path: &Path) -> Result<Vec<(f64, f64)>, SeriesError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SeriesError::Io {
        path: p.clone(),
        source,
    })?;
    let mut out = Vec::new();
    let mut prev: Option<f64> = None;
    for (i, line) in text.lines().enumerate().skip(1) {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| SeriesError::Line {
            path: p.clone(),
            line: n,
            message,
        };
        let (ts, v) = line
            .split_once(',')
            .ok_or_else(|| bad(format!("expected `timestamp,value`, found {line:?}")))?;
        let t =
            parse_time(ts.trim()).ok_or_else(|| bad(format!("bad timestamp {:?}", ts.trim())))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| bad(format!("value {:?} is not a number", v.trim())))?;
        if !v.is_finite() {
            return Err(bad(format!("value {v} is not finite")));
        }
        if let Some(pt) = prev {
            if t <= pt {
                return Err(bad(format!(
                    "timestamp {:?} is not after the previous row's; sort the file",
                    ts.trim()
                )));
            }
        }
        prev = Some(t);
        out.push((t, v));
    }
    if out.is_empty() {
        return Err(SeriesError::Empty { path: p });
    }
    Ok(out)
}
