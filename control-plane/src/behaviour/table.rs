//! A small weighted table: the unit every level of the profiler counts in. A `Vec` of
//! `(key, weight)`: per-user tables hold a handful of entries, and a linear scan over a
//! few cache lines beats hashing at that size.

/// Forward-decayed weights by key, with the plain number of observations beside them:
/// the weights say which key is preferred now, the counts how much evidence there is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Table<K> {
    entries: Vec<(K, f64, u32)>,
    total: f64,
    count: u32,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
            total: 0.0,
            count: 0,
        }
    }
}

impl<K: PartialEq + Copy> Table<K> {
    pub fn add(&mut self, k: K, w: f64) {
        self.total += w;
        self.count = self.count.saturating_add(1);
        match self.entries.iter_mut().find(|(e, _, _)| *e == k) {
            Some((_, v, n)) => {
                *v += w;
                *n = n.saturating_add(1);
            }
            None => self.entries.push((k, w, 1)),
        }
    }

    /// Adds, then evicts the weakest entry if there are more than `cap`.
    pub fn add_capped(&mut self, k: K, w: f64, cap: usize) {
        self.add(k, w);
        if self.entries.len() > cap.max(1) {
            let (i, _) = self
                .entries
                .iter()
                .enumerate()
                .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                .expect("more than cap >= 1 entries");
            let (_, v, n) = self.entries.swap_remove(i);
            self.total -= v;
            self.count -= n;
        }
    }

    pub fn get(&self, k: &K) -> f64 {
        self.entries
            .iter()
            .find(|(e, _, _)| e == k)
            .map_or(0.0, |(_, v, _)| *v)
    }

    pub fn total(&self) -> f64 {
        self.total
    }

    /// Observations behind the table (not decayed).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// `(weight, observations)` summed over the keys that satisfy `f`.
    pub fn total_where(&self, f: impl Fn(&K) -> bool) -> (f64, u32) {
        self.entries
            .iter()
            .filter(|(k, _, _)| f(k))
            .fold((0.0, 0), |(w, n), (_, v, c)| (w + v, n + c))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _, _)| k)
    }

    /// The `n` heaviest keys.
    pub fn top(&self, n: usize) -> Vec<K> {
        let mut e: Vec<&(K, f64, u32)> = self.entries.iter().collect();
        e.sort_by(|a, b| b.1.total_cmp(&a.1));
        e.into_iter().take(n).map(|(k, _, _)| *k).collect()
    }

    pub fn scale(&mut self, factor: f64) {
        self.entries.iter_mut().for_each(|(_, v, _)| *v *= factor);
        self.total *= factor;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
