//! Scores kept for a window and grouped by where they fall in a cycle (the minute of the
//! hour, the hour of the day), with the quantiles the near-term bounds read: the group's
//! own once it holds a few, every group's pooled until then.

use std::collections::VecDeque;

/// Scores kept in all: a week of minutes (each group keeps its share).
const WINDOW: usize = 7 * 1440;
/// Scores a group needs before its own quantile is used.
const GROUP_WARM: usize = 5;
/// Scores in all before any quantile is given.
const ALL_WARM: usize = 60;
/// The rate a score divides by is at least half a request a minute (requests/s), so a
/// minute with no traffic does not make every following one an infinite jump.
pub(super) const MIN_RATE: f64 = 0.5 / 60.0;

/// Scores in arrival order (to drop the oldest) and sorted (for quantiles).
#[derive(Debug, Default, Clone)]
struct Scores {
    order: VecDeque<f64>,
    sorted: Vec<f64>,
    cap: usize,
}

impl Scores {
    fn new(cap: usize) -> Scores {
        Scores {
            order: VecDeque::new(),
            sorted: Vec::new(),
            cap,
        }
    }

    fn push(&mut self, s: f64) {
        if self.order.len() == self.cap {
            if let Some(old) = self.order.pop_front() {
                let i = self.sorted.partition_point(|x| *x < old);
                self.sorted.remove(i);
            }
        }
        self.order.push_back(s);
        let i = self.sorted.partition_point(|x| *x < s);
        self.sorted.insert(i, s);
    }

    fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The `tau` quantile (the smallest score at or above that share of them).
    fn quantile(&self, tau: f64) -> f64 {
        let n = self.sorted.len();
        let i = ((tau * n as f64) as usize).min(n - 1);
        self.sorted[i]
    }
}

/// One lead's scores: by group, and all of them.
#[derive(Debug, Clone)]
pub(super) struct Grouped {
    groups: Vec<Scores>,
    all: Scores,
}

impl Grouped {
    /// `groups` groups sharing a week's window.
    pub(super) fn new(groups: usize) -> Grouped {
        Grouped {
            groups: vec![Scores::new(WINDOW / groups); groups],
            all: Scores::new(WINDOW),
        }
    }

    pub(super) fn push(&mut self, group: usize, s: f64) {
        self.groups[group].push(s);
        self.all.push(s);
    }

    /// The group's `tau` quantile, or every group's while it holds fewer than
    /// `GROUP_WARM`; None before `ALL_WARM` scores in all.
    pub(super) fn quantile(&self, group: usize, tau: f64) -> Option<f64> {
        let own = &self.groups[group];
        if own.len() >= GROUP_WARM {
            Some(own.quantile(tau))
        } else {
            self.pooled(tau)
        }
    }

    /// Every group's `tau` quantile; None before `ALL_WARM` scores.
    pub(super) fn pooled(&self, tau: f64) -> Option<f64> {
        (self.all.len() >= ALL_WARM).then(|| self.all.quantile(tau))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_score_leaves_a_full_window() {
        let mut s = Scores::new(3);
        for x in [5.0, 1.0, 3.0, 2.0] {
            s.push(x);
        }
        assert_eq!(s.sorted, vec![1.0, 2.0, 3.0]);
        assert_eq!(s.quantile(0.0), 1.0);
        assert_eq!(s.quantile(0.99), 3.0);
    }

    #[test]
    fn a_group_takes_the_pooled_quantile_until_it_has_its_own() {
        let mut g = Grouped::new(2);
        assert_eq!(g.quantile(0, 0.5), None);
        for i in 0..ALL_WARM {
            g.push(1, i as f64);
        }
        assert_eq!(g.quantile(0, 0.0), Some(0.0), "pooled");
        for _ in 0..GROUP_WARM {
            g.push(0, 100.0);
        }
        assert_eq!(g.quantile(0, 0.0), Some(100.0), "its own");
    }
}
