//! Metric families computed from accepted events: per-partition state and window aggregates.
//!
//! Each family (web today) keeps its per-partition state and bucket contents in
//! its own submodule. Everything here is synchronous and driven by event time.

pub mod churn_risk;
pub mod commerce;
pub mod customers;
pub mod email;
pub mod survey;
pub mod web;

use std::collections::HashMap;
use std::sync::Arc;

/// Interns label values (sites, channels, campaigns) so events allocate nothing for them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Labels(HashMap<Box<str>, Arc<str>>);

impl Labels {
    pub(crate) fn get(&mut self, v: &str) -> Arc<str> {
        if let Some(a) = self.0.get(v) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(v);
        self.0.insert(Box::from(v), a.clone());
        a
    }
}

/// A breakdown of a metric: the whole stream, or one value of a bounded dimension.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Dim {
    All,
    Site(Arc<str>),
    Channel(Arc<str>),
    Campaign(Arc<str>),
}

impl Dim {
    /// Dimension name as published (`all`, `site`, `channel`).
    pub fn name(&self) -> &'static str {
        match self {
            Dim::All => "all",
            Dim::Site(_) => "site",
            Dim::Channel(_) => "channel",
            Dim::Campaign(_) => "campaign",
        }
    }

    pub fn value(&self) -> Option<&str> {
        match self {
            Dim::All => None,
            Dim::Site(v) | Dim::Channel(v) | Dim::Campaign(v) => Some(v),
        }
    }
}

/// Label value for a page view without a channel (GA's "(none)").
pub const NO_CHANNEL: &str = "(none)";
/// Label value that gathers every dimension value outside the top N.
pub const OTHER: &str = "other";

/// Nearest-rank percentile over a multiset given as sorted `value -> count`.
///
/// The `p`-th percentile is the smallest value `v` such that at least
/// `ceil(p * n)` of the `n` values are `<= v` (rank at least 1).
pub fn nearest_rank<'a>(
    sorted_counts: impl IntoIterator<Item = (&'a u64, &'a u64)>,
    n: u64,
    p: f64,
) -> Option<u64> {
    if n == 0 {
        return None;
    }
    let rank = ((p * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for (v, c) in sorted_counts {
        seen += c;
        if seen >= rank {
            return Some(*v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn nearest_rank_matches_sorting() {
        let values = [5u64, 1, 9, 9, 3, 7, 2, 8, 4, 6];
        let mut m = BTreeMap::new();
        for v in values {
            *m.entry(v).or_insert(0u64) += 1;
        }
        let mut sorted = values.to_vec();
        sorted.sort();
        for p in [0.0, 0.1, 0.5, 0.9, 0.95, 1.0] {
            let rank = ((p * 10.0f64).ceil() as usize).clamp(1, 10);
            assert_eq!(nearest_rank(&m, 10, p), Some(sorted[rank - 1]), "p={p}");
        }
        assert_eq!(nearest_rank(&BTreeMap::new(), 0, 0.5), None);
    }
}
