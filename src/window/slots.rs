//! Values by bucket start in one sorted ring: appending the newest and dropping the oldest move no other value.
//!
//! A window's buckets and the staging slots are created at the back (event time
//! moves forward), dropped at the front (eviction, rolling) and read by ranges.
//! A `BTreeMap` did that with its values stored in its nodes: taking the first
//! entry shifted the rest of its leaf, and a bucket of web aggregates is about
//! 250 bytes, so rolling a slot moved kilobytes (`memmove` was the top symbol
//! by cycles of the customer replay). Here the entries sit in a `VecDeque`
//! sorted by key: the newest is found without a search, an older one by binary
//! search, and only an entry created behind the newest (a late event into a
//! slot or bucket that had none) shifts others. Saved as a map in key order,
//! exactly as the `BTreeMap` was, so a checkpoint's bytes do not change.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;

use crate::event::Millis;

/// Values by key (bucket or slot start), ascending, each key once.
#[derive(Clone)]
pub(crate) struct SlotMap<T> {
    entries: VecDeque<(Millis, T)>,
    /// The most entries held since the last [`SlotMap::remove_before`] (not saved).
    peak: usize,
}

impl<T> Default for SlotMap<T> {
    fn default() -> Self {
        SlotMap {
            entries: VecDeque::new(),
            peak: 0,
        }
    }
}

impl<T: PartialEq> PartialEq for SlotMap<T> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<T: fmt::Debug> fmt::Debug for SlotMap<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<T> SlotMap<T> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Where `key` is, or where it would go.
    fn search(&self, key: Millis) -> Result<usize, usize> {
        // The newest entry first: most lookups are of it or after it.
        match self.entries.back() {
            None => Err(0),
            Some((last, _)) if *last == key => Ok(self.entries.len() - 1),
            Some((last, _)) if *last < key => Err(self.entries.len()),
            Some(_) => self.entries.binary_search_by_key(&key, |(k, _)| *k),
        }
    }

    /// The value at `key`, made by `make` if there is none.
    pub fn get_or_insert_with(&mut self, key: Millis, make: impl FnOnce() -> T) -> &mut T {
        let i = match self.search(key) {
            Ok(i) => i,
            Err(i) if i == self.entries.len() => {
                self.entries.push_back((key, make()));
                self.peak = self.peak.max(self.entries.len());
                i
            }
            Err(i) => {
                self.entries.insert(i, (key, make()));
                self.peak = self.peak.max(self.entries.len());
                i
            }
        };
        &mut self.entries[i].1
    }

    /// The newest entry.
    pub fn last_mut(&mut self) -> Option<(Millis, &mut T)> {
        self.entries.back_mut().map(|(k, v)| (*k, v))
    }

    /// The oldest key.
    pub fn first_key(&self) -> Option<Millis> {
        self.entries.front().map(|(k, _)| *k)
    }

    /// Takes the oldest entry out.
    pub fn pop_first(&mut self) -> Option<(Millis, T)> {
        self.entries.pop_front()
    }

    /// The index range of the keys in `[start, end)` (empty unless `start < end`).
    fn bounds(&self, start: Millis, end: Millis) -> std::ops::Range<usize> {
        if start >= end {
            return 0..0;
        }
        let lo = self.entries.partition_point(|(k, _)| *k < start);
        let hi = self.entries.partition_point(|(k, _)| *k < end);
        lo..hi
    }

    /// The entries with keys in `[start, end)`, oldest first.
    pub fn range(&self, start: Millis, end: Millis) -> impl Iterator<Item = (Millis, &T)> {
        self.entries
            .range(self.bounds(start, end))
            .map(|(k, v)| (*k, v))
    }

    /// [`SlotMap::range`], to change.
    pub fn range_mut(
        &mut self,
        start: Millis,
        end: Millis,
    ) -> impl Iterator<Item = (Millis, &mut T)> {
        let r = self.bounds(start, end);
        self.entries.range_mut(r).map(|(k, v)| (*k, v))
    }

    /// Drops every entry whose key is before `key` (eviction), and gives back
    /// room no longer used: a window that took a backlog's buckets in one go
    /// holds a window's worth again afterwards, and a `VecDeque` keeps its
    /// capacity. Room for more than four times the most entries held between
    /// two evictions (and 64) is given back, so a ring that fills up again
    /// after every eviction (a replay's) keeps its room. (The staging slots,
    /// taken one by one with [`SlotMap::pop_first`], are bounded by the allowed
    /// lateness.)
    pub fn remove_before(&mut self, key: Millis) {
        let n = self.entries.partition_point(|(k, _)| *k < key);
        self.entries.drain(..n);
        let peak = std::mem::replace(&mut self.peak, self.entries.len());
        if self.entries.capacity() > (4 * peak).max(64) {
            self.entries.shrink_to((2 * peak).max(64));
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Millis, &T)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, v)| v)
    }
}

/// A map from key to value, in key order (the form a `BTreeMap` is saved in).
impl<T: serde::Serialize> serde::Serialize for SlotMap<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for SlotMap<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SlotMap<T>, D::Error> {
        struct Visit<T>(PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = SlotMap<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from bucket start to value")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SlotMap<T>, A::Error> {
                let mut entries: VecDeque<(Millis, T)> =
                    VecDeque::with_capacity(map.size_hint().unwrap_or(0).min(4096));
                while let Some((k, v)) = map.next_entry::<Millis, T>()? {
                    entries.push_back((k, v));
                }
                // Saved in key order; anything else is sorted, the last of a key kept.
                if !entries
                    .iter()
                    .zip(entries.iter().skip(1))
                    .all(|(a, b)| a.0 < b.0)
                {
                    let mut all: Vec<(Millis, T)> = entries.into_iter().collect();
                    all.reverse();
                    all.sort_by_key(|(k, _)| *k);
                    all.dedup_by_key(|(k, _)| *k);
                    entries = all.into();
                }
                Ok(SlotMap {
                    peak: entries.len(),
                    entries,
                })
            }
        }
        d.deserialize_map(Visit(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A tiny deterministic generator (xorshift) for the model test.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn behaves_like_a_btree_map_of_the_same_operations() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        let mut slots: SlotMap<i64> = SlotMap::default();
        let mut model: BTreeMap<Millis, i64> = BTreeMap::new();
        let mut front = 0;
        for step in 0..20_000 {
            let r = next(&mut state);
            // Mostly at or after the newest key, sometimes behind it.
            let newest = model.last_key_value().map_or(0, |(k, _)| *k);
            let key = match r % 10 {
                0..=5 => newest + (r >> 8) as i64 % 3,
                6..=8 => front + (r >> 8) as i64 % (newest - front + 1).max(1),
                _ => front - 1 - (r >> 8) as i64 % 5,
            };
            match (r >> 20) % 16 {
                0 => {
                    let cut = front + (r >> 24) as i64 % 4;
                    slots.remove_before(cut);
                    model = model.split_off(&cut);
                    front = cut;
                }
                1 => assert_eq!(slots.pop_first(), model.pop_first()),
                2 => {
                    let (lo, hi) = (key - 3, key + (r >> 30) as i64 % 6);
                    let got: Vec<(Millis, i64)> =
                        slots.range(lo, hi).map(|(k, v)| (k, *v)).collect();
                    let want: Vec<(Millis, i64)> = if lo < hi {
                        model.range(lo..hi).map(|(k, v)| (*k, *v)).collect()
                    } else {
                        vec![]
                    };
                    assert_eq!(got, want, "step {step}");
                    for (_, v) in slots.range_mut(lo, hi) {
                        *v += 1;
                    }
                    for (_, v) in model.range_mut(lo..hi.max(lo)) {
                        *v += 1;
                    }
                }
                _ => {
                    *slots.get_or_insert_with(key, || 100) += step;
                    *model.entry(key).or_insert(100) += step;
                }
            }
            assert_eq!(slots.len(), model.len());
            assert_eq!(slots.first_key(), model.first_key_value().map(|(k, _)| *k));
            let last = slots.last_mut().map(|(k, v)| (k, *v));
            assert_eq!(last, model.last_key_value().map(|(k, v)| (*k, *v)));
        }
        let all: Vec<(Millis, i64)> = slots.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn gives_back_the_room_of_a_burst() {
        let mut slots: SlotMap<[u64; 32]> = SlotMap::default();
        for k in 0..10_000 {
            slots.get_or_insert_with(k, || [0; 32]);
        }
        assert!(slots.entries.capacity() >= 10_000);
        // The burst was held since the last eviction: its room stays for now.
        slots.remove_before(9_940);
        assert_eq!(slots.len(), 60);
        assert!(slots.entries.capacity() >= 10_000);
        // A window's worth from then on: the room is given back at the next eviction.
        for k in 10_000..10_100 {
            slots.get_or_insert_with(k, || [0; 32]);
            slots.remove_before(k - 59);
        }
        assert_eq!(slots.first_key(), Some(10_040));
        assert_eq!(slots.len(), 60);
        assert!(
            slots.entries.capacity() <= 4 * 61,
            "{}",
            slots.entries.capacity()
        );
    }

    #[test]
    fn is_saved_exactly_as_a_btree_map() {
        let mut slots: SlotMap<u32> = SlotMap::default();
        let mut model: BTreeMap<Millis, u32> = BTreeMap::new();
        for (k, v) in [(50, 1), (-10, 2), (30, 3), (70, 4), (0, 5)] {
            *slots.get_or_insert_with(k, || 0) = v;
            model.insert(k, v);
        }
        let bytes = postcard::to_allocvec(&slots).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&model).unwrap());
        let back: SlotMap<u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, slots);
        let json = serde_json::to_string(&slots).unwrap();
        assert_eq!(json, serde_json::to_string(&model).unwrap());
        // A map out of order (not written by engaged) still reads sorted.
        let unsorted: SlotMap<u32> = serde_json::from_str(r#"{"5":1,"2":2,"9":3}"#).unwrap();
        let keys: Vec<Millis> = unsorted.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![2, 5, 9]);
    }
}
