//! Metric families computed from accepted events: per-partition state and window aggregates.
//!
//! Each family (web today) keeps its per-partition state and bucket contents in
//! its own submodule. Everything here is synchronous and driven by event time.

pub mod churn_risk;
pub mod commerce;
pub mod customer_ids;
pub mod customers;
pub mod email;
pub mod family;
pub(crate) mod labels;
pub mod survey;
pub mod web;

use std::sync::Arc;

pub use customer_ids::{CustomerId, CustomerIds};
pub(crate) use labels::LabelIds;

/// A breakdown of a metric: the whole stream, or one value of a bounded dimension.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub(crate) enum Dim {
    All,
    Site(Arc<str>),
    Channel(Arc<str>),
    Campaign(Arc<str>),
    Page(Arc<str>),
}

impl Dim {
    /// Dimension name as published (`all`, `site`, `channel`).
    pub fn name(&self) -> &'static str {
        match self {
            Dim::All => "all",
            Dim::Site(_) => "site",
            Dim::Channel(_) => "channel",
            Dim::Campaign(_) => "campaign",
            Dim::Page(_) => "page",
        }
    }

    pub fn value(&self) -> Option<&str> {
        match self {
            Dim::All => None,
            Dim::Site(v) | Dim::Channel(v) | Dim::Campaign(v) | Dim::Page(v) => Some(v),
        }
    }
}

/// Label value for a page view without a channel (GA's "(none)").
pub(crate) const NO_CHANNEL: &str = "(none)";
/// Label value that gathers every dimension value outside the top N.
pub(crate) const OTHER: &str = "other";

/// Nearest-rank percentile of a multiset of values (in any order).
///
/// The `p`-th percentile is the smallest value `v` such that at least
/// `ceil(p * n)` of the `n` values are `<= v` (rank at least 1): the value of
/// that rank once sorted, found by selection on a copy (linear time).
#[cfg(test)]
pub(crate) fn nearest_rank(values: &[u64], p: f64) -> Option<u64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    let mut v = values.to_vec();
    Some(*v.select_nth_unstable(rank - 1).1)
}

/// The nearest-rank `p`-th percentile of the union of sorted `runs` (the same
/// value as [`nearest_rank`] of all their values), found without merging them:
/// the smallest value `x` with at least `rank` values `<= x`, by bisection over
/// values. Each run keeps the index range still in play (values before it are
/// below the bracket, values after it above), so a step costs one binary search
/// per run over what is left: O(runs × log(values) × 64) at most.
#[cfg(test)]
pub(crate) fn nearest_rank_runs<T: Copy + Into<u64>>(runs: &[&[T]], p: f64) -> Option<u64> {
    let n: usize = runs.iter().map(|r| r.len()).sum();
    value_of_rank(runs, nearest_rank_of(p, n)?)
}

/// The rank (from 1) of the nearest-rank `p`-th percentile of `n` values.
pub(crate) fn nearest_rank_of(p: f64, n: usize) -> Option<usize> {
    (n > 0).then(|| ((p * n as f64).ceil() as usize).clamp(1, n))
}

/// The value of rank `rank` (from 1) in the union of sorted `runs`, by the
/// bisection of [`nearest_rank_runs`]; `None` when there are fewer values.
pub(crate) fn value_of_rank<T: Copy + Into<u64>>(runs: &[&[T]], rank: usize) -> Option<u64> {
    let n: usize = runs.iter().map(|r| r.len()).sum();
    if rank == 0 || rank > n {
        return None;
    }
    let mut lo: u64 = runs
        .iter()
        .filter_map(|r| r.first())
        .map(|v| (*v).into())
        .min()?;
    let mut hi: u64 = runs
        .iter()
        .filter_map(|r| r.last())
        .map(|v| (*v).into())
        .max()?;
    // Per run still in play: values before `a` are < lo, values from `b` on are
    // > hi; `k` is the cut of the current step. A run with nothing left in play
    // leaves, its `a` values (all below any later midpoint) added to `below`.
    let mut span: Vec<(&[T], usize, usize, usize)> = runs
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| (*r, 0, r.len(), 0))
        .collect();
    let mut below = 0;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let mut at_most = below;
        for (r, a, b, k) in span.iter_mut() {
            *k = *a + r[*a..*b].partition_point(|v| (*v).into() <= mid);
            at_most += *k;
        }
        if at_most >= rank {
            hi = mid;
            span.iter_mut().for_each(|(_, _, b, k)| *b = *k);
        } else {
            lo = mid + 1;
            span.iter_mut().for_each(|(_, a, _, k)| *a = *k);
        }
        span.retain(|(_, a, b, _)| {
            if a == b {
                below += a;
            }
            a < b
        });
    }
    Some(lo)
}

/// `a == b` for short strings without a call to `memcmp`: up to 32 bytes
/// compared as overlapping words (label values are looked up about three times
/// per event, and the call was most of a comparison).
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().unwrap_or([0; 8]));
    let half = |s: &[u8], i: usize| u32::from_ne_bytes(s[i..i + 4].try_into().unwrap_or([0; 4]));
    match n {
        0 => true,
        // Bytes 0, n / 2 and n - 1 are every byte of 1 to 3.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        17..=32 => {
            word(a, 0) == word(b, 0)
                && word(a, 8) == word(b, 8)
                && word(a, n - 16) == word(b, n - 16)
                && word(a, n - 8) == word(b, n - 8)
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_equality_at_every_length() {
        // Every length to 40, equal and differing at each position in turn.
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert!(same_bytes(&a, &a.clone()), "{n} bytes");
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x20;
                assert!(!same_bytes(&a, &b), "{n} bytes, differing at {i}");
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!same_bytes(&a, &longer));
        }
    }

    #[test]
    fn nearest_rank_of_runs_equals_nearest_rank_of_their_union() {
        // A small LCG: runs of random lengths with duplicates, extremes and empties.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % m
        };
        for case in 0..300 {
            let runs: Vec<Vec<u64>> = (0..next(6))
                .map(|_| {
                    let len = next(40);
                    let range = if case % 3 == 0 {
                        5
                    } else {
                        1 << (next(40) + 1)
                    };
                    let mut r: Vec<u64> = (0..len).map(|_| next(range)).collect();
                    if case % 7 == 0 {
                        r.push(u64::MAX);
                    }
                    r.sort_unstable();
                    r
                })
                .collect();
            let all: Vec<u64> = runs.iter().flatten().copied().collect();
            let slices: Vec<&[u64]> = runs.iter().map(|r| r.as_slice()).collect();
            for p in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0] {
                assert_eq!(
                    nearest_rank_runs(&slices, p),
                    nearest_rank(&all, p),
                    "case {case}, p {p}, runs {runs:?}"
                );
            }
        }
    }

    #[test]
    fn nearest_rank_matches_sorting() {
        let values = [5u64, 1, 9, 9, 3, 7, 2, 8, 4, 6];
        let mut sorted = values.to_vec();
        sorted.sort();
        for p in [0.0, 0.1, 0.5, 0.9, 0.95, 1.0] {
            let rank = ((p * 10.0f64).ceil() as usize).clamp(1, 10);
            assert_eq!(nearest_rank(&values, p), Some(sorted[rank - 1]), "p={p}");
        }
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}
