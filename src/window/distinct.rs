//! Exact distinct counts over sliding windows, with snapshot cost independent of the number of keys.
//!
//! Technique. A key (customer) with an event in bucket `k` is counted by every
//! window `[e - len, e)` whose end `e` lies in `[k + b, k + len + b)` (ends are
//! bucket-aligned). The set of ends at which a key counts is therefore the union
//! of those intervals over its event buckets, which is a list of disjoint runs.
//! We keep a difference array over window ends: `+1` where a key's run starts,
//! `-1` where it ends. The distinct count at `e` is the prefix sum of the
//! difference array up to `e`, which touches only the positions between the
//! last query and `e` (about `len / b` entries), never the keys.
//!
//! When a key gets an event in a new bucket `k` between its neighbours `p < k < q`,
//! only the gaps around `k` change: the contribution of gap `(p, q)` is removed
//! and those of `(p, k)` and `(k, q)` added, where a gap `(p, q)` contributes
//! `-1` at `p + len + b` and `+1` at `q + b` when the two runs do not touch
//! (`q - p > len`), a first bucket contributes `+1` at its start and a last one
//! `-1` at its end. The result is a function of the *set* of events, whatever
//! their arrival order, which is what SPEC §2 asks of every metric.
//!
//! Memory: per key, the buckets that can still merge with a future event
//! (events older than `lower_bound - len` are dropped, see [`SlidingDistinct::forget_before`]),
//! and one difference entry per bucket position ahead of the last query.

use std::collections::BTreeMap;
use std::hash::Hash;

use smallvec::SmallVec;

use crate::event::Millis;
use crate::state::delta::{Kept, Merge, Tracked};

/// One key's event buckets, ascending, without duplicates.
type Buckets = SmallVec<[Millis; 2]>;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(
    bound(deserialize = "K: serde::Deserialize<'de> + Hash + Eq"),
    try_from = "Saved<Tracked<K, Buckets>, BTreeMap<Millis, i64>>"
)]
pub struct SlidingDistinct<K> {
    bucket_ms: i64,
    len_ms: i64,
    /// Per key, its event buckets in ascending order. Most keys have one or two,
    /// kept inline in the map: no allocation per key, and saving or restoring a
    /// million keys reads memory in order instead of chasing a pointer per key.
    keys: Tracked<K, Buckets>,
    diff: BTreeMap<Millis, i64>,
    /// Sum of the differences at positions `<= folded_to`.
    base: i64,
    folded_to: Millis,
    /// Lower bound of the last pass over the keys (see [`SlidingDistinct::forget_before`]).
    #[serde(default)]
    forgot_at: Option<Millis>,
}

impl<K: Hash + Eq + Clone> SlidingDistinct<K> {
    /// Distinct keys over windows of `len_ms` made of `bucket_ms` buckets (`len_ms % bucket_ms == 0`).
    pub fn new(len_ms: i64, bucket_ms: i64) -> SlidingDistinct<K> {
        assert!(bucket_ms > 0 && len_ms > 0 && len_ms % bucket_ms == 0);
        SlidingDistinct {
            bucket_ms,
            len_ms,
            keys: Tracked::default(),
            diff: BTreeMap::new(),
            base: 0,
            folded_to: Millis::MIN,
            forgot_at: None,
        }
    }

    fn add_diff(&mut self, pos: Millis, d: i64) {
        if pos <= self.folded_to {
            self.base += d;
        } else {
            let e = self.diff.entry(pos).or_insert(0);
            *e += d;
            if *e == 0 {
                self.diff.remove(&pos);
            }
        }
    }

    /// Adds `sign` times the contribution of the gap between neighbour buckets `p` and `q`.
    fn gap(&mut self, p: Option<Millis>, q: Option<Millis>, sign: i64) {
        let (b, len) = (self.bucket_ms, self.len_ms);
        match (p, q) {
            (None, Some(q)) => self.add_diff(q + b, sign),
            (Some(p), None) => self.add_diff(p + len + b, -sign),
            (Some(p), Some(q)) if q - p > len => {
                self.add_diff(p + len + b, -sign);
                self.add_diff(q + b, sign);
            }
            _ => {}
        }
    }

    /// Records an event of `key` at event time `t`.
    pub fn insert(&mut self, key: &K, t: Millis) {
        let k = t.div_euclid(self.bucket_ms) * self.bucket_ms;
        let neighbours = self.keys.update(key.clone(), Buckets::new, |set| {
            let at = set.binary_search(&k).err()?;
            set.insert(at, k);
            Some((at.checked_sub(1).map(|i| set[i]), set.get(at + 1).copied()))
        });
        let Some((p, q)) = neighbours else {
            return;
        };
        self.gap(p, q, -1);
        self.gap(p, Some(k), 1);
        self.gap(Some(k), q, 1);
    }

    /// Distinct keys with an event in `[end - len, end)`; `end` must be bucket-aligned
    /// and not earlier than the last [`SlidingDistinct::fold_to`].
    pub fn count_at(&self, end: Millis) -> i64 {
        self.base + self.diff.range(..=end).map(|(_, d)| d).sum::<i64>()
    }

    /// Promises no query before `end` again: folds the differences up to it into a base.
    pub fn fold_to(&mut self, end: Millis) {
        if end <= self.folded_to {
            return;
        }
        let rest = self.diff.split_off(&(end + 1));
        self.base += self.diff.values().sum::<i64>();
        self.diff = rest;
        self.folded_to = end;
    }

    /// Forgets event buckets that no event at or after `lower_bound` can merge with
    /// (their runs ended before it). Keys left without buckets are dropped.
    ///
    /// A pass over the keys happens at most once per half window of progress of
    /// `lower_bound`, so its cost is amortised instead of paid at every snapshot;
    /// forgetting later only keeps memory a little longer, never changes a count.
    pub fn forget_before(&mut self, lower_bound: Millis) {
        if self
            .forgot_at
            .is_some_and(|f| lower_bound - f < (self.len_ms / 2).max(self.bucket_ms))
        {
            return;
        }
        self.forgot_at = Some(lower_bound);
        let horizon = lower_bound - self.len_ms - self.bucket_ms;
        self.keys.retain(|_, set| {
            let old = set.partition_point(|b| *b < horizon);
            if old == 0 {
                return Kept::Unchanged;
            }
            set.drain(..old);
            if set.is_empty() {
                Kept::Removed
            } else {
                Kept::Changed
            }
        });
    }

    /// Keys currently remembered.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}

/// How a [`SlidingDistinct`] is saved (written from borrowed parts, read into
/// owned ones): its event buckets as bucket counts, the first
/// relative to `origin` (the last query's end) and each next one relative to the one
/// before. They are small numbers, a byte or two as varints, where absolute times
/// take six: the keys' buckets are most of a checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved<Keys, Diff> {
    bucket_ms: i64,
    len_ms: i64,
    origin: Millis,
    keys: Keys,
    diff: Diff,
    base: i64,
    folded_to: Millis,
    forgot_at: Option<Millis>,
}

/// The origin of the saved bucket numbers: a bucket boundary near the buckets kept.
fn origin(folded_to: Millis, bucket_ms: i64) -> Millis {
    if folded_to == Millis::MIN {
        0
    } else {
        folded_to.div_euclid(bucket_ms) * bucket_ms
    }
}

/// One key's buckets as saved (see [`Saved`]).
struct Relative<'a> {
    buckets: &'a Buckets,
    origin: Millis,
    bucket_ms: i64,
}

impl serde::Serialize for Relative<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.bucket_ms;
        let previous = std::iter::once(self.origin).chain(self.buckets.iter().copied());
        s.collect_seq(self.buckets.iter().zip(previous).map(|(k, p)| (k - p) / b))
    }
}

/// The keys of a [`SlidingDistinct`], written as [`Relative`] buckets.
struct SavedKeys<'a, K> {
    keys: &'a Tracked<K, Buckets>,
    origin: Millis,
    bucket_ms: i64,
}

impl<K: serde::Serialize + Hash + Eq> serde::Serialize for SavedKeys<'_, K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (origin, bucket_ms) = (self.origin, self.bucket_ms);
        self.keys.serialize_with(s, |buckets| Relative {
            buckets,
            origin,
            bucket_ms,
        })
    }
}

impl<K: serde::Serialize + Hash + Eq> serde::Serialize for SlidingDistinct<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let origin = origin(self.folded_to, self.bucket_ms);
        Saved {
            bucket_ms: self.bucket_ms,
            len_ms: self.len_ms,
            origin,
            keys: SavedKeys {
                keys: &self.keys,
                origin,
                bucket_ms: self.bucket_ms,
            },
            diff: &self.diff,
            base: self.base,
            folded_to: self.folded_to,
            forgot_at: self.forgot_at,
        }
        .serialize(s)
    }
}

impl<K> TryFrom<Saved<Tracked<K, Buckets>, BTreeMap<Millis, i64>>> for SlidingDistinct<K> {
    type Error = String;

    /// Turns saved bucket numbers back into times; refuses what no saved counter
    /// can hold (corrupt input must be an error, not a panic or a wrong count).
    fn try_from(saved: Saved<Tracked<K, Buckets>, BTreeMap<Millis, i64>>) -> Result<Self, String> {
        let Saved {
            bucket_ms,
            len_ms,
            origin,
            mut keys,
            diff,
            base,
            folded_to,
            forgot_at,
        } = saved;
        if bucket_ms <= 0 || len_ms <= 0 || len_ms % bucket_ms != 0 {
            return Err(format!(
                "a distinct counter with buckets of {bucket_ms} ms over {len_ms} ms"
            ));
        }
        for buckets in keys.decoded_values_mut() {
            let mut at = origin;
            for (i, k) in buckets.iter_mut().enumerate() {
                let step = k.checked_mul(bucket_ms).filter(|s| i == 0 || *s > 0);
                at = step
                    .and_then(|s| at.checked_add(s))
                    .ok_or("a distinct counter's buckets are out of range or out of order")?;
                *k = at;
            }
        }
        Ok(SlidingDistinct {
            bucket_ms,
            len_ms,
            keys,
            diff,
            base,
            folded_to,
            forgot_at,
        })
    }
}

impl<K: Hash + Eq + Clone> Merge for SlidingDistinct<K> {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        let SlidingDistinct {
            bucket_ms,
            len_ms,
            keys,
            diff,
            base,
            folded_to,
            forgot_at,
        } = newer;
        if (bucket_ms, len_ms) != (self.bucket_ms, self.len_ms) {
            return Err(format!(
                "a delta's distinct counter has buckets of {bucket_ms} ms over {len_ms} ms, the base {} over {}",
                self.bucket_ms, self.len_ms
            ));
        }
        self.keys.merge(keys)?;
        (self.diff, self.base, self.folded_to, self.forgot_at) = (diff, base, folded_to, forgot_at);
        Ok(())
    }

    fn saved(&mut self) {
        self.keys.saved();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::delta::{Form, in_form};
    use proptest::prelude::*;

    fn brute(events: &[(u8, i64)], len: i64, end: i64) -> i64 {
        let mut keys: Vec<u8> = events
            .iter()
            .filter(|(_, t)| *t >= end - len && *t < end)
            .map(|(k, _)| *k)
            .collect();
        keys.sort();
        keys.dedup();
        keys.len() as i64
    }

    #[test]
    fn counts_a_key_once_per_window() {
        let mut d = SlidingDistinct::new(60, 10);
        d.insert(&"a", 5);
        d.insert(&"a", 15);
        d.insert(&"b", 15);
        assert_eq!(d.count_at(10), 1); // [-50, 10): a@5
        assert_eq!(d.count_at(20), 2); // a, b
        assert_eq!(d.count_at(70), 2); // [10, 70): a@15, b@15
        assert_eq!(d.count_at(80), 0); // [20, 80)
    }

    fn encode(d: &SlidingDistinct<u32>, form: Form) -> Vec<u8> {
        in_form(form, || postcard::to_allocvec(d)).expect("encodes")
    }

    fn decode(bytes: &[u8], form: Form) -> SlidingDistinct<u32> {
        in_form(form, || postcard::from_bytes(bytes)).expect("decodes")
    }

    #[test]
    fn corrupt_saved_buckets_are_an_error_not_a_panic() {
        let mut d = SlidingDistinct::new(60, 10);
        d.insert(&1u32, 5);
        d.insert(&1u32, 25);
        let good = encode(&d, Form::Base);
        // Every single-byte change decodes to an equal counter or fails cleanly.
        for i in 0..good.len() {
            for v in [0u8, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = in_form(Form::Base, || {
                    postcard::from_bytes::<SlidingDistinct<u32>>(&bad)
                });
            }
        }
        // A bucket number whose time does not fit is refused.
        let mut huge: Tracked<u32, Buckets> = Tracked::default();
        huge.insert(1, SmallVec::from_slice(&[i64::MAX / 2]));
        let saved = Saved {
            bucket_ms: 10,
            len_ms: 60,
            origin: 0,
            keys: huge,
            diff: BTreeMap::<Millis, i64>::new(),
            base: 0,
            folded_to: 0,
            forgot_at: None::<Millis>,
        };
        let bytes = in_form(Form::Base, || postcard::to_allocvec(&saved)).expect("encodes");
        let err = in_form(Form::Base, || {
            postcard::from_bytes::<SlidingDistinct<u32>>(&bytes)
        });
        assert!(err.is_err());
        // Buckets out of order (a zero step) are refused.
        let mut twice = d.clone();
        twice.keys.insert(2, SmallVec::from_slice(&[10, 10]));
        let bytes = encode(&twice, Form::Base);
        let err = in_form(Form::Base, || {
            postcard::from_bytes::<SlidingDistinct<u32>>(&bytes)
        });
        assert!(err.is_err());
    }

    #[test]
    fn saved_buckets_are_small_numbers_and_come_back_as_times() {
        // Real epoch times, a day-long window of 24-minute buckets, as by default.
        let (b, len) = (24 * 60_000, 24 * 3_600_000);
        let t0 = 1_700_000_000_000;
        let mut d = SlidingDistinct::new(len, b);
        for k in 0..1_000u32 {
            d.insert(&k, t0 + i64::from(k) * 1_000);
            d.insert(&k, t0 + 3 * b + i64::from(k) * 1_000);
        }
        d.fold_to((t0 + 2 * b).div_euclid(b) * b);
        let bytes = encode(&d, Form::Base);
        // Per key: the key, a length and two one-byte bucket numbers (absolute times
        // would take six bytes each).
        assert!(bytes.len() < 1_000 * 7, "{} bytes", bytes.len());
        let back = decode(&bytes, Form::Base);
        for end in (0..=40).map(|i| (t0 + 2 * b).div_euclid(b) * b + i * b) {
            assert_eq!(back.count_at(end), d.count_at(end), "end {end}");
        }
        assert_eq!(back.keys.get(&7), d.keys.get(&7));
    }

    proptest! {
        #[test]
        fn equals_brute_force_in_any_order(
            mut events in proptest::collection::vec((0u8..6, 0i64..400), 0..80),
            shuffle in any::<u64>(),
            len_buckets in 1i64..8,
        ) {
            let (b, len) = (10, 10 * len_buckets);
            let mut d = SlidingDistinct::new(len, b);
            // Any arrival order gives the same answers.
            let n = events.len();
            if n > 1 {
                for i in 0..n {
                    let j = (shuffle.wrapping_mul(i as u64 + 7) % n as u64) as usize;
                    events.swap(i, j);
                }
            }
            for (k, t) in &events {
                d.insert(k, *t);
            }
            for end in (0..=500).step_by(10) {
                prop_assert_eq!(d.count_at(end), brute(&events, len, end), "end {}", end);
            }
        }

        #[test]
        fn a_base_and_a_delta_restore_the_counts(
            events in proptest::collection::vec((0u32..8, -400i64..400), 0..60),
            cut in 0usize..60,
            fold in -40i64..40,
            len_buckets in 1i64..8,
        ) {
            // Times on both sides of the origin (the last fold), so that saved
            // bucket numbers are negative and positive.
            let (b, len) = (10, 10 * len_buckets);
            let mut d = SlidingDistinct::new(len, b);
            let cut = cut.min(events.len());
            for (k, t) in &events[..cut] {
                d.insert(k, *t);
            }
            d.fold_to(fold * b - 400);
            let base = encode(&d, Form::Base);
            d.saved();
            for (k, t) in &events[cut..] {
                d.insert(k, *t);
            }
            d.forget_before(fold * b);
            let delta = encode(&d, Form::Delta);
            let mut back = decode(&base, Form::Base);
            back.merge(decode(&delta, Form::Delta)).expect("merges");
            let ends = (-60..=60).map(|i| i * b).filter(|e| *e >= d.folded_to);
            for end in ends {
                prop_assert_eq!(back.count_at(end), d.count_at(end), "end {}", end);
            }
            let mut keys: Vec<_> = back.keys.iter().map(|(k, v)| (*k, v.clone())).collect();
            let mut want: Vec<_> = d.keys.iter().map(|(k, v)| (*k, v.clone())).collect();
            keys.sort();
            want.sort();
            prop_assert_eq!(keys, want);
        }

        #[test]
        fn folding_and_forgetting_follow_a_moving_watermark(
            events in proptest::collection::vec((0u8..6, 0i64..60, -30i64..0), 0..120),
            len_buckets in 1i64..8,
        ) {
            // Events arrive roughly in time order with bounded disorder (a lateness of 30);
            // queries happen at the watermark behind them, as the engine does.
            let (b, len) = (10, 10 * len_buckets);
            let mut d = SlidingDistinct::new(len, b);
            let mut seen = vec![];
            let mut max_t = 0i64;
            for (i, (k, step, jitter)) in events.iter().enumerate() {
                let t = (i as i64 * 5 + step + jitter).max(0);
                let watermark = max_t - 30;
                if t < watermark {
                    continue; // late: rejected before it reaches the structure
                }
                d.insert(k, t);
                seen.push((*k, t));
                max_t = max_t.max(t);
                let w = max_t - 30;
                let end = w.div_euclid(b) * b;
                prop_assert_eq!(d.count_at(end), brute(&seen, len, end));
                d.fold_to(end);
                d.forget_before(w);
                prop_assert_eq!(d.count_at(end), brute(&seen, len, end));
            }
        }
    }
}
