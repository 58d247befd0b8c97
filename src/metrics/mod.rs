//! Metric families computed from accepted events: per-partition state and window aggregates.
//!
//! Each family (web today) keeps its per-partition state and bucket contents in
//! its own submodule. Everything here is synchronous and driven by event time.

pub mod churn_risk;
pub mod commerce;
pub mod customers;
pub mod email;
pub mod family;
pub mod survey;
pub mod web;

use std::collections::HashMap;
use std::sync::Arc;

use crate::checkpoint::delta::{self, Form, Merge};

/// Interns label values (sites, channels, campaigns) so events allocate nothing for them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Labels(HashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>);

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

/// A customer of one task, as a dense number (see [`CustomerIds`]).
///
/// Per-customer state (distinct counters, activity runs, order histories) is
/// keyed by this rather than by the id string: hashing and comparing a `u32`
/// is cheaper on every event, and a checkpoint writes 1–3 bytes per reference
/// instead of chasing a pointer to a string (which made saving a million
/// customers' state memory-latency bound) and restore allocates nothing per
/// reference.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct CustomerId(u32);

impl CustomerId {
    /// The customer numbered `i` (numbers are dense from 0, see [`CustomerIds`]).
    pub fn from_index(i: u32) -> CustomerId {
        CustomerId(i)
    }
}

/// Per-customer state is kept in arrays indexed by the number ([`Dense`](crate::checkpoint::dense::Dense)).
impl crate::checkpoint::dense::DenseKey for CustomerId {
    fn index(self) -> usize {
        self.0 as usize
    }
    fn from_index(i: usize) -> CustomerId {
        CustomerId(i as u32)
    }
}

/// The customer ids of one task: id string ↔ [`CustomerId`]. Serialised as the
/// list of id strings in number order (each once); the lookup map is rebuilt.
/// Numbers are never reused, so a checkpoint delta holds the ids added since
/// the last save (with the number of the first).
///
/// A number can be *released* ([`CustomerIds::release`], `state_ttl`) once no
/// family holds state for it: its id leaves the lookup table (the customer gets
/// a new number if it comes back) and reads as `""` (saved so; customer ids are
/// never empty), and its bytes leave the arena at the next compaction. Only the
/// 8-byte end of a released number stays.
///
/// The id strings live end to end in one arena, with the end of each; the lookup
/// table holds only numbers (hashing the string found through the arena). About
/// `len + 13` bytes per customer, where a map of reference-counted strings took
/// about 120.
#[derive(Clone, Default)]
pub struct CustomerIds {
    arena: String,
    /// End of each id in `arena`, by number (u64: no input can make it overflow),
    /// with [`RELEASED`] set for a released number (then its id is empty).
    ends: Vec<u64>,
    table: hashbrown::HashTable<CustomerId>,
    hasher: foldhash::fast::RandomState,
    /// Ids saved so far; in a decoded delta, the number of its first id.
    saved: usize,
    /// Released numbers, and the arena bytes of their ids not yet compacted away.
    released: usize,
    released_bytes: usize,
    /// Numbers below `saved` released since the last save (a delta lists them).
    released_since_save: Vec<u32>,
}

/// Marks a released number in [`CustomerIds`]' `ends`.
const RELEASED: u64 = 1 << 63;

impl std::fmt::Debug for CustomerIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerIds")
            .field("len", &self.len())
            .field("saved", &self.saved)
            .finish()
    }
}

impl CustomerIds {
    fn hash(&self, name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(name)
    }

    /// The arena range of number `i`'s id (empty when released).
    fn span(ends: &[u64], i: usize) -> std::ops::Range<usize> {
        let end = ends[i];
        if end & RELEASED != 0 {
            return 0..0;
        }
        let start = if i == 0 { 0 } else { ends[i - 1] & !RELEASED };
        start as usize..end as usize
    }

    /// The number of `name`, given on first sight.
    pub fn get(&mut self, name: &str) -> CustomerId {
        let hash = self.hash(name);
        let (arena, ends) = (&self.arena, &self.ends);
        if let Some(id) = self
            .table
            .find(hash, |id| &arena[Self::span(ends, id.0 as usize)] == name)
        {
            return *id;
        }
        // Unreachable in practice: 2^32 customers (or 4 GiB of ids) in one task would need
        // over a terabyte of per-customer state before this ran out.
        let id = CustomerId(u32::try_from(self.ends.len()).expect("fewer than 2^32 customers"));
        self.arena.push_str(name);
        self.ends.push(self.arena.len() as u64);
        let hasher = &self.hasher;
        let (arena, ends) = (&self.arena, &self.ends);
        self.table.insert_unique(hash, id, |id| {
            use std::hash::BuildHasher;
            hasher.hash_one(&arena[Self::span(ends, id.0 as usize)])
        });
        id
    }

    /// The id string of a number given by [`CustomerIds::get`] (`""` once released).
    pub fn name(&self, id: CustomerId) -> &str {
        &self.arena[Self::span(&self.ends, id.0 as usize)]
    }

    /// Appends a released number (restoring a saved `""`).
    fn push_released(&mut self) {
        self.ends.push(self.arena.len() as u64 | RELEASED);
        self.released += 1;
    }

    /// Releases number `id`: its id leaves the lookup table and the arena (at
    /// the next compaction); the number is never given again.
    pub fn release(&mut self, id: CustomerId) {
        let i = id.0 as usize;
        if i >= self.ends.len() || self.ends[i] & RELEASED != 0 {
            return;
        }
        let span = Self::span(&self.ends, i);
        let hash = self.hash(&self.arena[span.clone()]);
        if let Ok(entry) = self.table.find_entry(hash, |x| *x == id) {
            entry.remove();
        }
        self.ends[i] |= RELEASED;
        self.released += 1;
        if i < self.saved {
            self.released_since_save.push(id.0);
        }
        self.released_bytes += span.len();
        if self.released_bytes > 4096 && self.released_bytes * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Rewrites the arena without the ids of released numbers (numbers stay).
    fn compact(&mut self) {
        let mut arena = String::with_capacity(self.arena.len() - self.released_bytes);
        let mut ends = Vec::with_capacity(self.ends.len());
        for i in 0..self.ends.len() {
            arena.push_str(&self.arena[Self::span(&self.ends, i)]);
            ends.push(arena.len() as u64 | (self.ends[i] & RELEASED));
        }
        (self.arena, self.ends, self.released_bytes) = (arena, ends, 0);
        // The table holds numbers: unchanged, though its hashes come from the arena.
    }

    /// Numbers not released: the customers the task holds.
    pub fn live(&self) -> usize {
        self.ends.len() - self.released
    }

    /// The id strings in number order, from number `from` on.
    fn names_from(&self, from: usize) -> impl Iterator<Item = &str> {
        (from.min(self.len())..self.len()).map(|i| self.name(CustomerId(i as u32)))
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl serde::Serialize for CustomerIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        match delta::form() {
            Form::Base => s.collect_seq(self.names_from(0)),
            Form::Delta => {
                let mut t = s.serialize_tuple(3)?;
                t.serialize_element(&(self.saved as u64))?;
                t.serialize_element(&self.names_from(self.saved).collect::<Vec<&str>>())?;
                t.serialize_element(&self.released_since_save)?;
                t.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for CustomerIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (first, names, released): (u64, Vec<Box<str>>, Vec<u32>) = match delta::form() {
            Form::Base => (0, serde::Deserialize::deserialize(d)?, vec![]),
            Form::Delta => serde::Deserialize::deserialize(d)?,
        };
        let mut out = CustomerIds::default();
        // A length read from the input is only a hint: bound what it reserves.
        out.ends.reserve(names.len().min(1 << 20));
        for n in names {
            if n.is_empty() {
                out.push_released();
                continue;
            }
            let before = out.len();
            if out.get(&n).0 as usize != before {
                return Err(serde::de::Error::custom(format!(
                    "customer id {n:?} appears twice"
                )));
            }
        }
        out.released_since_save = released;
        out.saved = match delta::form() {
            Form::Base => out.len(),
            Form::Delta => usize::try_from(first).map_err(serde::de::Error::custom)?,
        };
        Ok(out)
    }
}

impl Merge for CustomerIds {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        if newer.saved != self.len() {
            return Err(format!(
                "a delta adds customers from number {}, but the state has {}",
                newer.saved,
                self.len()
            ));
        }
        for &r in &newer.released_since_save {
            if r as usize >= self.len() {
                return Err(format!(
                    "a delta releases customer number {r}, which does not exist"
                ));
            }
            self.release(CustomerId(r));
        }
        for i in 0..newer.len() {
            let n = newer.name(CustomerId(i as u32));
            if n.is_empty() {
                self.push_released();
                continue;
            }
            let before = self.len();
            if self.get(n).0 as usize != before {
                return Err(format!("customer id {n:?} appears twice"));
            }
        }
        Ok(())
    }

    fn saved(&mut self) {
        self.saved = self.len();
        self.released_since_save.clear();
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

/// Nearest-rank percentile of a multiset of values (in any order).
///
/// The `p`-th percentile is the smallest value `v` such that at least
/// `ceil(p * n)` of the `n` values are `<= v` (rank at least 1): the value of
/// that rank once sorted, found by selection on a copy (linear time).
pub fn nearest_rank(values: &[u64], p: f64) -> Option<u64> {
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
pub fn nearest_rank_runs(runs: &[&[u64]], p: f64) -> Option<u64> {
    let n: usize = runs.iter().map(|r| r.len()).sum();
    if n == 0 {
        return None;
    }
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    let mut lo = runs.iter().filter_map(|r| r.first()).copied().min()?;
    let mut hi = runs.iter().filter_map(|r| r.last()).copied().max()?;
    // Per run still in play: values before `a` are < lo, values from `b` on are
    // > hi; `k` is the cut of the current step. A run with nothing left in play
    // leaves, its `a` values (all below any later midpoint) added to `below`.
    let mut span: Vec<(&[u64], usize, usize, usize)> = runs
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| (*r, 0, r.len(), 0))
        .collect();
    let mut below = 0;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let mut at_most = below;
        for (r, a, b, k) in span.iter_mut() {
            *k = *a + r[*a..*b].partition_point(|v| *v <= mid);
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

#[cfg(test)]
mod tests {
    use super::*;

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
