use super::models::Model;
use super::origins::Origins;
use super::*;

pub(crate) fn nasa() -> Vec<f64> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/traces/nasa_5min_14d.csv");
    series::load(&p).unwrap()
}

/// NYC taxi passengers per half hour, 2014-12-28 to 2015-01-31 (NAB), with the blizzard
/// of 26-27 January.
pub(crate) fn taxi() -> Vec<f64> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/traces/nyc_taxi_5w.csv");
    series::load(&p).unwrap()
}

/// A day in 5-minute buckets.
const DAY: usize = 288;
/// A day and a week in half hours.
const TAXI_PERIODS: [usize; 2] = [48, 336];

#[test]
fn beats_seasonal_naive_out_of_sample_on_nasa_with_calibrated_intervals() {
    let y = nasa();
    assert_eq!(y.len(), 4032);
    let h = 12;
    // Hold out the last 8 windows of an hour; forecast each from the data before it.
    let (mut err, mut naive_err, mut inside80, mut inside95, mut n) = (0.0, 0.0, 0, 0, 0);
    for k in (1..=8).rev() {
        let origin = y.len() - k * h;
        let f = forecast(&y[..origin], h, &[DAY], &[80.0, 95.0]).unwrap();
        let naive = Model::SeasonalNaive { period: DAY }
            .fit_predict(&y[..origin], h)
            .unwrap();
        for j in 0..h {
            let a = y[origin + j];
            err += (a - f.point[j]).abs();
            naive_err += (a - naive[j]).abs();
            inside80 += usize::from(f.intervals[0].1[j] <= a && a <= f.intervals[0].2[j]);
            inside95 += usize::from(f.intervals[1].1[j] <= a && a <= f.intervals[1].2[j]);
            n += 1;
        }
    }
    let relative = err / naive_err;
    assert!(
        relative < 1.0,
        "MAE relative to seasonal naive: {relative:.3}"
    );
    let (c80, c95) = (inside80 as f64 / n as f64, inside95 as f64 / n as f64);
    assert!((0.6..=0.97).contains(&c80), "80% interval covered {c80:.2}");
    assert!(c95 >= c80 && c95 >= 0.8, "95% interval covered {c95:.2}");
}

#[test]
fn intervals_widen_with_the_horizon_and_nest() {
    let y = nasa();
    let f = forecast(&y, 24, &[DAY], &[80.0, 95.0]).unwrap();
    let width = |i: usize, j: usize| f.intervals[i].2[j] - f.intervals[i].1[j];
    assert!(width(0, 23) > width(0, 0));
    assert!(width(1, 5) >= width(0, 5));
    assert!(f.backtest_mase.is_finite() && f.backtest_mase > 0.0);
}

#[test]
fn holt_follows_a_trend_and_naive_repeats_the_season() {
    let y: Vec<f64> = (0..100).map(|i| 10.0 + 2.0 * i as f64).collect();
    let f = Model::Holt.fit_predict(&y, 3).unwrap();
    assert!((f[0] - 210.0).abs() < 5.0, "{f:?}");
    let s: Vec<f64> = (0..20).map(|i| (i % 4) as f64).collect();
    assert_eq!(
        Model::SeasonalNaive { period: 4 }
            .fit_predict(&s, 6)
            .unwrap(),
        vec![0.0, 1.0, 2.0, 3.0, 0.0, 1.0]
    );
}

#[test]
fn bad_requests_are_refused_clearly() {
    let y = nasa();
    assert!(matches!(
        forecast(&y, 0, &[], &[80.0]),
        Err(ForecastError::ZeroHorizon)
    ));
    assert!(matches!(
        forecast(&y, 5, &[], &[120.0]),
        Err(ForecastError::BadLevel(_))
    ));
    let e = forecast(&y[..20], 12, &[], &[80.0]).unwrap_err();
    assert!(e.to_string().contains("at least"), "{e}");
    // A period the series is too short for is dropped, not an error.
    let f = forecast(&y[..400], 12, &[DAY * 7], &[80.0]).unwrap();
    assert!(!f.model.contains("2016"), "{}", f.model);
}

#[test]
fn bad_csv_names_the_line() {
    let dir = std::env::temp_dir().join(format!("presage-series-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("s.csv");
    for (text, want) in [
        (
            "timestamp,value\n1,2\n2,x\n",
            "s.csv:3: value \"x\" is not a number",
        ),
        (
            "timestamp,value\n5,2\n4,3\n",
            "s.csv:3: timestamp \"4\" is not after the previous row's",
        ),
        ("timestamp,value\n", "no data rows"),
        (
            "timestamp,value\n1;2\n",
            "s.csv:2: expected `timestamp,value`",
        ),
    ] {
        std::fs::write(&f, text).unwrap();
        let e = series::load(&f).unwrap_err().to_string();
        assert!(e.contains(want), "{e} (wanted {want})");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_daily_cycle_of_real_traffic_is_detected_when_not_given() {
    let y = nasa();
    let periods = detect_periods(&y);
    assert!(
        periods
            .iter()
            .any(|&p| (p as f64 / DAY as f64 - 1.0).abs() < 0.05),
        "a day is 288 five-minute buckets: {periods:?}"
    );
    assert!(detect_periods(&[1.0; 8]).is_empty(), "too short to say");
}

#[test]
fn the_backtest_never_sees_past_its_origin() {
    // Each origin's forecast must be the same whether or not the series goes on.
    let y = nasa();
    let (first, at, h) = (3000, 3500, 12);
    for m in [
        Model::SeasonalNaive { period: DAY },
        Model::ScaledNaive {
            period: DAY,
            window: DAY / 8,
        },
        Model::Holt,
        Model::MstlEts { periods: vec![DAY] },
    ] {
        let at_origin = |y: &[f64]| {
            let mut out = Vec::new();
            m.rolling(y, first, h, None, Origins::all(y.len()), &mut |o, f| {
                if o == at {
                    out = f.to_vec();
                }
            })
            .unwrap();
            out
        };
        let (full, cut) = (at_origin(&y), at_origin(&y[..at]));
        assert_eq!(full.len(), h, "{}", m.name());
        assert_eq!(full, cut, "{}", m.name());
    }
}

#[test]
fn a_weekly_pattern_is_not_forecast_from_yesterday() {
    // Five busy days and two quiet ones, four weeks of hourly buckets: at a Monday
    // morning the naive candidate must repeat last Monday, not Sunday.
    let (day, week) = (24, 168);
    let y: Vec<f64> = (0..4 * week)
        .map(|t| {
            let busy = (t % week) / day < 5;
            let hour = (t % day) as f64;
            (if busy { 100.0 } else { 10.0 }) + 5.0 * (hour / 24.0 * std::f64::consts::TAU).sin()
        })
        .collect();
    // The series ends on a Sunday night; the next day is a busy one.
    let f = forecast(&y, 12, &[day, week], &[80.0]).unwrap();
    assert!(
        f.point.iter().all(|p| *p > 60.0),
        "{} {:?}",
        f.model,
        f.point
    );
}

#[test]
fn the_newest_errors_weigh_most_in_the_intervals() {
    // 200 origins that erred by 1, then 40 that erred by 10: the regime changed.
    let r: Vec<f64> = (0..240)
        .map(|i| if i < 200 { 1.0 } else { -10.0 })
        .collect();
    let weighted = half_widths(&r, &origin_weights(r.len(), DECAY), 1, 0, &[80.0]);
    assert_eq!(weighted[0].1, vec![10.0]);
    // Counted alike, 83% of the origins erred by 1 and the change would not show.
    let alike = half_widths(&r, &vec![1.0; r.len()], 1, 0, &[80.0]);
    assert_eq!(alike[0].1, vec![1.0]);
}

#[test]
fn a_storm_hands_the_choice_to_the_model_that_follows_it() {
    // 2015-01-27 12:00, the blizzard's second day: over the backtest's six days the
    // weekly copy did best (every origin counted alike, it is chosen), but not over
    // the last day.
    let y = taxi();
    let (o, h) = (1464, 12);
    let hist = &y[o - 1344..o];
    let f = forecast(hist, h, &TAXI_PERIODS, &[80.0]).unwrap();
    assert!(!f.model.starts_with("seasonal-naive"), "{}", f.model);
    let naive = Model::SeasonalNaive { period: 336 }
        .fit_predict(hist, h)
        .unwrap();
    let mae = |p: &[f64]| -> f64 {
        p.iter()
            .zip(&y[o..o + h])
            .map(|(p, a)| (p - a).abs())
            .sum::<f64>()
            / h as f64
    };
    assert!(
        mae(&f.point) < mae(&naive) / 2.0,
        "{}: {:.0} against the weekly copy's {:.0}",
        f.model,
        mae(&f.point),
        mae(&naive)
    );
}

#[test]
fn mstl_forecasts_from_a_state_that_filtered_the_newest_points() {
    // One step ahead at every 7th half hour of the last week (every time of day): the
    // fit that ends a quarter day early and filters the rest beats the fit to the end.
    let y = taxi();
    let m = Model::MstlEts {
        periods: TAXI_PERIODS.to_vec(),
    };
    let (mut filtered, mut refit) = (0.0, 0.0);
    for o in (y.len() - 336..y.len()).step_by(7) {
        let hist = &y[o - 1344..o];
        filtered += (m.fit_predict(hist, 1).unwrap()[0] - y[o]).abs();
        m.rolling(
            hist,
            hist.len(),
            1,
            None,
            Origins::last(hist.len()),
            &mut |_, f| refit += (f[0] - y[o]).abs(),
        )
        .unwrap();
    }
    assert!(
        filtered < 0.9 * refit,
        "one-step MAE {filtered:.0} (filtered) against {refit:.0} (fitted to the end)"
    );
}

#[test]
fn half_widths_match_a_full_sort() {
    // The reference: sort everything, take the first score whose running weight
    // reaches the level.
    fn reference(scored: &[(f64, f64)], total: f64, level: f64) -> f64 {
        let mut all = scored.to_vec();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut below = 0.0;
        all.iter()
            .find(|(_, w)| {
                below += w;
                below >= level / 100.0 * total
            })
            .or(all.last())
            .map_or(0.0, |s| s.0)
    }
    let mut rng = fastrand::Rng::with_seed(6);
    let level_sets: [&[f64]; 5] = [
        &[50.0, 80.0, 95.0, 99.0],
        &[80.0, 95.0],
        &[95.0],
        &[99.0],
        &[99.9],
    ];
    for n in [1, 2, 3, 7, 40, 100, 541] {
        for decay in [DECAY, 1.0, 0.9] {
            // Random scores (with ties), scores growing with age (the largest errors
            // carry the least weight), and scores over eight orders of magnitude with
            // zeros among them (errors scaled by their forecast's size).
            let random: Vec<f64> = (0..n).map(|_| (rng.f64() * 100.0).round()).collect();
            let oldest_largest: Vec<f64> = (0..n).map(|i| (n - i) as f64).collect();
            let magnitudes: Vec<f64> = (0..n)
                .map(|i| match i % 5 {
                    0 => 0.0,
                    _ => 10f64.powf(rng.f64() * 8.0 - 4.0),
                })
                .collect();
            let weights = origin_weights(n, decay);
            for scores in [random, oldest_largest, magnitudes] {
                for levels in level_sets {
                    check(&scores, &weights, 1, 0, levels);
                }
            }
            // Several steps, each pooled with its neighbours: each step's sample is its
            // own and its neighbours' rows, bucketed with every other step's scores.
            for (h, pool) in [(3, 1), (12, 2), (12, 0)] {
                let residuals: Vec<f64> = (0..n * h)
                    .map(|i| match i % 7 {
                        0 => 0.0,
                        _ => (rng.f64() - 0.5) * 10f64.powf(rng.f64() * 6.0 - 2.0),
                    })
                    .collect();
                check(&residuals, &weights, h, pool, &[80.0, 95.0]);
            }
        }
    }

    /// `half_widths` against the reference on each step's pooled sample, made
    /// non-decreasing over the steps as it makes them.
    fn check(residuals: &[f64], weights: &[f64], h: usize, pool: usize, levels: &[f64]) {
        let got = half_widths(residuals, weights, h, pool, levels);
        for ((level, widths), &l) in got.iter().zip(levels) {
            assert_eq!(*level, l);
            let mut widest = 0.0f64;
            for (j, &width) in widths.iter().enumerate() {
                // Each of the step's scores weighs its row's share, the point to be
                // covered one share: in the rows' units (times the number of steps
                // pooled, which leaves the quantile as it is and sums weights of 1
                // exactly), its row's weight and as many as steps.
                let steps = j.saturating_sub(pool)..(j + pool + 1).min(h);
                let scored: Vec<(f64, f64)> = residuals
                    .chunks_exact(h)
                    .zip(weights)
                    .flat_map(|(row, &w)| row[steps.clone()].iter().map(move |e| (e.abs(), w)))
                    .collect();
                let total = scored.iter().map(|s| s.1).sum::<f64>() + steps.len() as f64;
                widest = widest.max(reference(&scored, total, l));
                assert_eq!(
                    width,
                    widest,
                    "{} origins, h = {h}, pool = {pool}, step {j}, level {l}",
                    weights.len()
                );
            }
        }
    }
}

#[test]
fn intervals_are_as_wide_as_the_hour_is_busy() {
    // The taxi's last two weeks before the blizzard, one step ahead from 96 origins 7
    // half hours apart (every hour of the day comes round; with one week's 48, one
    // forecast more or less inside its interval moved a third's coverage by 0.06).
    // Intervals from absolute errors were as wide at 5,000 passengers as at 25,000
    // (here 0.87 times as wide in the busiest third as in the quietest).
    let y = taxi();
    let storm = 29 * 48;
    let mut at: Vec<(f64, f64, f64)> = (0..96)
        .map(|k| {
            let o = storm - 14 * 48 + 7 * k;
            let f = forecast(&y[..o], 1, &TAXI_PERIODS, &[80.0]).unwrap();
            let (lo, hi) = (f.intervals[0].1[0], f.intervals[0].2[0]);
            (
                f.point[0],
                hi - lo,
                f64::from(u8::from(lo <= y[o] && y[o] <= hi)),
            )
        })
        .collect();
    at.sort_by(|a, b| a.0.total_cmp(&b.0));
    // The busiest and the quietest third of the forecasts.
    let (quiet, busy) = (&at[..32], &at[64..]);
    let mean = |v: &[(f64, f64, f64)], pick: fn(&(f64, f64, f64)) -> f64| {
        v.iter().map(pick).sum::<f64>() / v.len() as f64
    };
    let (wb, wq) = (mean(busy, |b| b.1), mean(quiet, |b| b.1));
    let (cb, cq) = (mean(busy, |b| b.2), mean(quiet, |b| b.2));
    eprintln!("busy: width {wb:.0}, covered {cb:.2}; quiet: width {wq:.0}, covered {cq:.2}");
    assert!(wb > 1.4 * wq, "busy width {wb:.0}, quiet {wq:.0}");
    assert!(
        (cb - cq).abs() <= 0.25,
        "covered: busy {cb:.2}, quiet {cq:.2}"
    );
}

#[test]
fn a_copy_of_last_week_follows_todays_level() {
    // 2015-01-26 18:00, the blizzard's first evening: the last three hours ran far below
    // last Monday's, and the next six hours (the travel ban from 23:00) did too.
    let y = taxi();
    let o = 29 * 48 + 36;
    let actual = &y[o..o + 12];
    let mae = |f: &[f64]| {
        f.iter()
            .zip(actual)
            .map(|(p, a)| (p - a).abs())
            .sum::<f64>()
            / 12.0
    };
    let copy = Model::SeasonalNaive { period: 336 }
        .fit_predict(&y[..o], 12)
        .unwrap();
    let scaled = Model::ScaledNaive {
        period: 336,
        window: 6,
    }
    .fit_predict(&y[..o], 12)
    .unwrap();
    let (copy, scaled) = (mae(&copy), mae(&scaled));
    eprintln!("MAE: last week's copy {copy:.0}, scaled {scaled:.0}");
    assert!(scaled < 0.6 * copy, "copy {copy:.0}, scaled {scaled:.0}");
}

#[test]
fn strided_intervals_match_every_origin() {
    // NASA's requests, a day of origins 60 steps ahead: the rows of every tenth origin,
    // pooled over neighbouring steps, against the rows of all of them.
    let y = nasa();
    let (h, first) = (60, y.len() - DAY - 60);
    let (at, keep) = (y.len() + 1 - first - h, interval_stride(60));
    assert_eq!(keep, 10);
    let rows = |keep: usize| {
        let mut kept = Vec::new();
        backtest(&Model::Holt, &y, first, h, &vec![1.0; at], keep, &mut kept).unwrap();
        kept
    };
    let (all, some) = (rows(1), rows(keep));
    assert_eq!(all.len(), at * h);
    assert_eq!(some.len(), at.div_ceil(keep) * h);
    // The newest origin is kept: its row is the last of both.
    assert_eq!(all[all.len() - h..], some[some.len() - h..]);
    let levels = [80.0, 95.0];
    let reference = half_widths(&all, &origin_weights(at, DECAY), h, 0, &levels);
    let weights = interval_weights(some.len() / h, keep);
    let mean_ratio = |pool: usize, level: usize| {
        let w = &half_widths(&some, &weights, h, pool, &levels)[level].1;
        let r = &reference[level].1;
        w.iter().zip(r).map(|(a, b)| a / b).sum::<f64>() / h as f64
    };
    for (i, level) in levels.iter().enumerate() {
        let pooled = mean_ratio(keep / 2, i);
        assert!((pooled - 1.0).abs() < 0.05, "{level}%: {pooled}");
    }
    // Unpooled, each step's quantile of 29 errors wanders and the running maximum keeps
    // its highs: the 95% intervals come out wider.
    let (unpooled, pooled) = (mean_ratio(0, 1), mean_ratio(keep / 2, 1));
    assert!(unpooled > pooled + 0.1, "{unpooled} {pooled}");
}
