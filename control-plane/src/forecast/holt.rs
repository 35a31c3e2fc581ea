//! Damped-trend exponential smoothing, ETS(A,Ad,N), which the Holt candidate fits to a
//! series and MSTL's to its deseasonalised one: the grid search of its smoothing
//! parameters (vectorised with pulp) and its state run through a series, forecasting at
//! the origins asked for.

use super::origins::Origins;

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

/// Holt's coarse grid: smoothing of the level, of the trend, and the trend's damping.
const ALPHA: [f64; 8] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0];
const BETA: [f64; 4] = [0.0, 0.01, 0.05, 0.15];
const PHI: [f64; 3] = [0.8, 0.9, 0.98];

/// Smoothing parameters of ETS(A,Ad,N).
#[derive(Debug, Clone, Copy)]
pub(super) struct Holt {
    alpha: f64,
    beta: f64,
    phi: f64,
}

/// Level and trend after the last observation.
#[derive(Debug, Clone, Copy)]
pub(super) struct State {
    level: f64,
    trend: f64,
}

/// The smoothing parameters a fit chose (Holt's, or the ETS on MSTL's deseasonalised
/// series), for a refit to keep (`Model::refit`).
#[derive(Debug, Clone, Copy)]
pub struct Smoothing(pub(super) Holt);

impl Holt {
    /// `keep` and the state it ends in after `y`, or the best parameters for `y` (`fit`).
    pub(super) fn fit_or_keep(y: &[f64], keep: Option<Smoothing>) -> (Holt, State) {
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
    pub(super) fn run(
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
}
