//! Session durations as a multiset of sorted runs: exact nearest-rank percentiles without copying a window's values.

use std::sync::Arc;

use crate::metrics::{nearest_rank_of, value_of_rank};

/// Session durations (ms) as a multiset of sorted runs, read by selection
/// without copying.
///
/// A bucket appends one value per closed session to an unsorted tail (4 bytes,
/// no tree insert) and [`Durations::seal`] sorts the tail into the bucket's one
/// shared run before a snapshot reads it (a merge of the new values, since the
/// run is already sorted). A window's aggregate only shares the buckets' runs
/// (`Arc` clones) and [`Durations::percentile`] finds the exact nearest rank by
/// bisection over values ([`crate::metrics::nearest_rank_runs`]): a snapshot costs
/// O(runs × log values) instead of a copy of every session in the window.
///
/// Values are kept as `u32` milliseconds (49.7 days), half the memory and the
/// copying of `u64`; a longer session (a view every half hour for seven weeks)
/// goes to `long`, exactly: every long value is above every short one, so the
/// value of a rank is either a short run's or the long list's.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
pub struct Durations {
    runs: Vec<Arc<Vec<u32>>>,
    tail: Vec<u32>,
    /// Durations of `u32::MAX` ms and more, unsorted.
    long: Vec<u64>,
}

impl From<Vec<u64>> for Durations {
    fn from(v: Vec<u64>) -> Durations {
        let mut d = Durations::default();
        v.into_iter().for_each(|ms| d.push(ms));
        d.seal();
        d
    }
}

/// Saved as the flat list of values (the checkpoint form does not change).
impl From<Durations> for Vec<u64> {
    fn from(d: Durations) -> Vec<u64> {
        let mut v = Vec::with_capacity(d.len());
        d.runs
            .iter()
            .for_each(|r| v.extend(r.iter().map(|x| u64::from(*x))));
        v.extend(d.tail.iter().map(|x| u64::from(*x)));
        v.extend_from_slice(&d.long);
        v
    }
}

impl Durations {
    /// Empty, keeping the tail's allocation (a reused staging slot).
    pub fn clear(&mut self) {
        self.runs.clear();
        self.tail.clear();
        self.long.clear();
    }

    pub fn push(&mut self, ms: u64) {
        match u32::try_from(ms) {
            Ok(short) if short < u32::MAX => self.tail.push(short),
            _ => self.long.push(ms),
        }
    }

    /// Sorts the values appended since the last seal into one run with the
    /// others (in place when no snapshot still shares the run).
    pub fn seal(&mut self) {
        self.long.sort_unstable();
        if self.tail.is_empty() && self.runs.len() <= 1 {
            return;
        }
        let mut all = if self.runs.len() > 1 {
            let mut v = Vec::with_capacity(self.len());
            self.runs.drain(..).for_each(|r| v.extend_from_slice(&r));
            v
        } else {
            self.runs
                .pop()
                .map(Arc::unwrap_or_clone)
                .unwrap_or_default()
        };
        // The new values sorted on their own (a radix sort: plain `u32`s, three
        // times fewer instructions than a comparison sort here), then the stable
        // sort finds two sorted runs and merges them in linear time.
        radsort::sort(&mut self.tail);
        all.append(&mut self.tail);
        all.sort();
        self.runs = vec![Arc::new(all)];
    }

    /// Copies `other`'s values into this one's tail (a bucket taking a rolled-up
    /// slot: one run per bucket once sealed, not one per slot).
    pub fn absorb(&mut self, other: &Durations) {
        other
            .runs
            .iter()
            .for_each(|r| self.tail.extend_from_slice(r));
        self.tail.extend_from_slice(&other.tail);
        self.long.extend_from_slice(&other.long);
    }

    /// Adds `other`'s values: its runs are shared, an unsealed tail is copied.
    pub fn extend(&mut self, other: &Durations) {
        self.runs
            .extend(other.runs.iter().filter(|r| !r.is_empty()).cloned());
        if !other.tail.is_empty() {
            let mut t = other.tail.clone();
            t.sort_unstable();
            self.runs.push(Arc::new(t));
        }
        self.long.extend_from_slice(&other.long);
    }

    /// The nearest-rank `p`-th percentile (see [`super::nearest_rank`]).
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let rank = nearest_rank_of(p, self.len())?;
        let short = self.len() - self.long.len();
        if rank > short {
            let mut long = self.long.clone();
            long.sort_unstable();
            return long.get(rank - short - 1).copied();
        }
        let mut tail = self.tail.clone();
        tail.sort_unstable();
        let mut runs: Vec<&[u32]> = self.runs.iter().map(|r| r.as_slice()).collect();
        runs.push(&tail);
        value_of_rank(&runs, rank)
    }

    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.len()).sum::<usize>() + self.tail.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Equal as multisets: the order durations were appended in does not matter.
impl PartialEq for Durations {
    fn eq(&self, other: &Durations) -> bool {
        let sorted = |d: &Durations| {
            let mut v: Vec<u64> = d.clone().into();
            v.sort_unstable();
            v
        };
        self.len() == other.len() && sorted(self) == sorted(other)
    }
}

impl Eq for Durations {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::nearest_rank;

    /// Percentiles of durations pushed, sealed, absorbed and extended in pieces,
    /// some of them seven weeks and longer, equal those of the plain list.
    #[test]
    fn percentiles_equal_the_plain_lists_with_long_sessions_among_them() {
        let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
        for case in 0..200 {
            let mut window = Durations::default();
            let mut all = vec![];
            for _ in 0..(next(6) + 1) {
                let mut bucket = Durations::default();
                for _ in 0..next(40) {
                    let ms = match next(10) {
                        0 => u64::from(u32::MAX) + next(3) - 1,
                        1 => u64::from(u32::MAX) + next(1 << 40),
                        _ => next(1 << 31),
                    };
                    bucket.push(ms);
                    all.push(ms);
                }
                let mut rolled = Durations::default();
                rolled.absorb(&bucket);
                if next(2) == 0 {
                    rolled.seal();
                }
                window.extend(&rolled);
            }
            for p in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
                assert_eq!(
                    window.percentile(p),
                    nearest_rank(&all, p),
                    "case {case}, p {p}"
                );
            }
            let saved: Vec<u64> = window.clone().into();
            assert_eq!(Durations::from(saved), window, "case {case}: saved form");
        }
    }
}
