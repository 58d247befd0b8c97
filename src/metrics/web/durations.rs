//! Session durations as a multiset of sorted runs: exact nearest-rank percentiles without copying a window's values.

use std::sync::Arc;

use crate::metrics::nearest_rank_runs;

/// Session durations (ms) as a multiset of sorted runs, read by selection
/// without copying.
///
/// A bucket appends one value per closed session to an unsorted tail (8 bytes,
/// no tree insert) and [`Durations::seal`] sorts the tail into the bucket's one
/// shared run before a snapshot reads it (a merge of the new values, since the
/// run is already sorted). A window's aggregate only shares the buckets' runs
/// (`Arc` clones) and [`Durations::percentile`] finds the exact nearest rank by
/// bisection over values ([`nearest_rank_runs`]): a snapshot costs
/// O(runs × log values) instead of a copy of every session in the window.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
pub struct Durations {
    runs: Vec<Arc<Vec<u64>>>,
    tail: Vec<u64>,
}

impl From<Vec<u64>> for Durations {
    fn from(mut v: Vec<u64>) -> Durations {
        v.sort_unstable();
        let runs = if v.is_empty() {
            vec![]
        } else {
            vec![Arc::new(v)]
        };
        Durations { runs, tail: vec![] }
    }
}

/// Saved as the flat list of values (the checkpoint form does not change).
impl From<Durations> for Vec<u64> {
    fn from(d: Durations) -> Vec<u64> {
        let mut v = Vec::with_capacity(d.len());
        d.runs.iter().for_each(|r| v.extend_from_slice(r));
        v.extend_from_slice(&d.tail);
        v
    }
}

impl Durations {
    pub fn push(&mut self, ms: u64) {
        self.tail.push(ms);
    }

    /// Sorts the values appended since the last seal into one run with the
    /// others (in place when no snapshot still shares the run).
    pub(crate) fn seal(&mut self) {
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
        all.append(&mut self.tail);
        // A stable sort merges the sorted runs it finds in linear time.
        all.sort();
        self.runs = vec![Arc::new(all)];
    }

    /// Copies `other`'s values into this one's tail (a bucket taking a rolled-up
    /// slot: one run per bucket once sealed, not one per slot).
    pub(crate) fn absorb(&mut self, other: &Durations) {
        other
            .runs
            .iter()
            .for_each(|r| self.tail.extend_from_slice(r));
        self.tail.extend_from_slice(&other.tail);
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
    }

    /// The nearest-rank `p`-th percentile (see [`super::nearest_rank`]).
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let mut tail = self.tail.clone();
        tail.sort_unstable();
        let mut runs: Vec<&[u64]> = self.runs.iter().map(|r| r.as_slice()).collect();
        runs.push(&tail);
        nearest_rank_runs(&runs, p)
    }

    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.len()).sum::<usize>() + self.tail.len()
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
