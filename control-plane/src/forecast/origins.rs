//! Which origins a rolling evaluation forecasts from (`Origins`): a backtest's scored ones
//! or a refit's one, for the candidate models and the Holt state they run.

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

    pub(super) fn has(&self, o: usize) -> bool {
        o <= self.last && (self.last - o).is_multiple_of(self.every.max(1))
    }

    /// The origins from `first` on, oldest first.
    pub(super) fn from(self, first: usize) -> impl Iterator<Item = usize> {
        let every = self.every.max(1);
        let start = self.last - self.last.saturating_sub(first) / every * every;
        (start.max(first)..=self.last).step_by(every)
    }
}
