//! Rolling event-time windows: epoch-aligned buckets, read as `[e - W, e)`.
//!
//! SPEC §2: a window of length `W` is a ring of buckets of size `b` (default
//! `W/60`) aligned to the Unix epoch. Its value at watermark `w` covers event
//! times in `[e - W, e)` with `e = floor(w / b) * b`, the end of the last
//! complete bucket. The ring here is keyed by bucket start (a sorted
//! [`slots::SlotMap`]) rather than a fixed array: partitions of one instance
//! can be far apart in event time, and a sparse map stays small when a
//! partition jumps ahead, while eviction (driven by the watermark, never by
//! the wall clock) keeps it bounded.
//! Nothing here reads a clock.

pub mod distinct;
pub mod rolled;
pub(crate) mod slots;

use std::fmt;

use slots::SlotMap;

use crate::event::Millis;

/// One configured window: its name (as used in the `window` label), length and bucket size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub name: String,
    pub length_ms: i64,
    pub bucket_ms: i64,
}

impl WindowSpec {
    /// The default bucket size: `W / 60`, at least one millisecond.
    pub fn with_default_buckets(name: impl Into<String>, length_ms: i64) -> WindowSpec {
        WindowSpec {
            name: name.into(),
            length_ms,
            bucket_ms: (length_ms / 60).max(1),
        }
    }

    /// `[e - W, e)` at watermark `w`, where `e = floor(w / b) * b`.
    pub(crate) fn bounds_at(&self, watermark: Millis) -> (Millis, Millis) {
        let end = watermark.div_euclid(self.bucket_ms) * self.bucket_ms;
        (end - self.length_ms, end)
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Buckets of one window, keyed by bucket start.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct BucketRing<T> {
    bucket_ms: i64,
    buckets: SlotMap<T>,
}

impl<T: Default> BucketRing<T> {
    pub fn new(bucket_ms: i64) -> BucketRing<T> {
        assert!(bucket_ms > 0, "bucket size must be positive");
        BucketRing {
            bucket_ms,
            buckets: SlotMap::default(),
        }
    }

    /// The bucket that holds event time `t`, created empty if needed.
    pub(crate) fn bucket_mut(&mut self, t: Millis) -> &mut T {
        let start = t.div_euclid(self.bucket_ms) * self.bucket_ms;
        self.buckets.get_or_insert_with(start, T::default)
    }

    /// Buckets whose start lies in `[start, end)`, oldest first.
    pub fn range(&self, start: Millis, end: Millis) -> impl Iterator<Item = (Millis, &T)> {
        self.buckets.range(start, end)
    }

    /// Buckets whose start lies in `[start, end)`, oldest first, to change.
    pub(crate) fn range_mut(
        &mut self,
        start: Millis,
        end: Millis,
    ) -> impl Iterator<Item = (Millis, &mut T)> {
        self.buckets.range_mut(start, end)
    }

    /// Drops every bucket that starts before `t`.
    pub(crate) fn evict_before(&mut self, t: Millis) {
        self.buckets.remove_before(t);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Millis, &T)> {
        self.buckets.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn default_buckets_are_a_sixtieth_of_the_window() {
        let w = WindowSpec::with_default_buckets("1h", 60 * MIN);
        assert_eq!(w.bucket_ms, MIN);
        assert_eq!(WindowSpec::with_default_buckets("tiny", 30).bucket_ms, 1);
    }

    #[test]
    fn bounds_end_at_the_last_complete_bucket() {
        let w = WindowSpec::with_default_buckets("1h", 60 * MIN);
        // Watermark exactly on a bucket boundary: that bucket is complete.
        assert_eq!(w.bounds_at(120 * MIN), (60 * MIN, 120 * MIN));
        // One ms before the boundary: the bucket [119m, 120m) is not complete.
        assert_eq!(w.bounds_at(120 * MIN - 1), (59 * MIN, 119 * MIN));
        // Negative times (before 1970) floor, not truncate.
        assert_eq!(w.bounds_at(-1), (-61 * MIN, -MIN));
    }

    #[test]
    fn window_sums_include_start_and_exclude_end() {
        let w = WindowSpec::with_default_buckets("1h", 60 * MIN);
        let mut ring: BucketRing<u64> = BucketRing::new(w.bucket_ms);
        for t in [0, MIN - 1, MIN, 59 * MIN, 60 * MIN - 1, 60 * MIN, 61 * MIN] {
            *ring.bucket_mut(t) += 1;
        }
        let sum = |wm| {
            let (s, e) = w.bounds_at(wm);
            ring.range(s, e).map(|(_, v)| *v).sum::<u64>()
        };
        // At watermark 60m: [0, 60m) holds the five events before 60m.
        assert_eq!(sum(60 * MIN), 5);
        // At 60m + 59.999s: still [0, 60m), the bucket [60m, 61m) is incomplete.
        assert_eq!(sum(61 * MIN - 1), 5);
        // At 61m: [1m, 61m) drops the two events in [0, 1m), adds the one at 60m.
        assert_eq!(sum(61 * MIN), 4);
        // At 62m: [2m, 62m) drops the one at 1m, adds the one at 61m.
        assert_eq!(sum(62 * MIN), 4);
    }

    #[test]
    fn eviction_drops_only_older_buckets() {
        let mut ring: BucketRing<u64> = BucketRing::new(10);
        for t in [0, 9, 10, 25, 1000] {
            *ring.bucket_mut(t) += 1;
        }
        assert_eq!(ring.len(), 4);
        ring.evict_before(20);
        let starts: Vec<_> = ring.iter().map(|(k, _)| k).collect();
        assert_eq!(starts, vec![20, 1000]);
        // Sparse: a jump of a million buckets costs one entry.
        *ring.bucket_mut(10_000_000) += 1;
        assert_eq!(ring.len(), 3);
    }
}
