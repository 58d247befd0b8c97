//! A task's customers as dense numbers: id string ↔ [`CustomerId`], the numbers of forgotten customers given again.

use std::collections::{BTreeSet, HashMap};

use crate::checkpoint::delta::{self, Form, Merge};

/// A customer of one task, as a dense number (see [`CustomerIds`]).
///
/// Per-customer state (distinct counters, activity runs, order histories) is
/// kept in arrays indexed by this number ([`Dense`](crate::checkpoint::dense::Dense)):
/// no hashing on the event path, and a checkpoint writes 1–3 bytes per
/// reference instead of the id string.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct CustomerId(u32);

impl CustomerId {
    /// The customer numbered `i` (numbers are dense from 0, see [`CustomerIds`]).
    pub(crate) fn from_index(i: u32) -> CustomerId {
        CustomerId(i)
    }
}

impl crate::checkpoint::dense::DenseKey for CustomerId {
    fn index(self) -> usize {
        self.0 as usize
    }
    fn from_index(i: usize) -> CustomerId {
        CustomerId(i as u32)
    }
}

/// The customer ids of one task: id string ↔ [`CustomerId`].
///
/// Numbers are dense from 0. A number is *released* ([`CustomerIds::release`],
/// `state_ttl`) once no family holds state for it: its id leaves the lookup
/// table and reads as `""` (customer ids are never empty), and the number is
/// *given again* to the next new customer, the lowest released number first.
/// So the arrays indexed by numbers hold the customers the task remembers, not
/// every customer it ever saw; a returning forgotten customer is a new one.
/// Nothing outside the state depends on which number a customer has.
///
/// The id strings live in one arena (start and length per number, packed in 8
/// bytes: [`Spans`]); the lookup table holds only numbers, hashing the string
/// found through the arena. About `len + 13` bytes per customer. Released ids leave the arena when more than
/// half of it is garbage (compaction rewrites it in number order).
///
/// Saved as the list of id strings in number order (`""` for a released
/// number); a delta holds the number of the first new id, the new ids, the
/// numbers below it released since the last save and those given again since,
/// with their ids.
#[derive(Clone, Default)]
pub struct CustomerIds {
    arena: String,
    /// Per number: where its id lies in `arena`.
    spans: Spans,
    table: hashbrown::HashTable<CustomerId>,
    hasher: foldhash::fast::RandomState,
    /// Numbers saved so far; in a decoded delta, the number of its first new id.
    saved: usize,
    /// Released numbers not given again yet.
    free: BTreeSet<u32>,
    /// Arena bytes no number refers to any more.
    garbage: usize,
    /// Numbers below `saved` released since the last save.
    released_since_save: Vec<u32>,
    /// Numbers below `saved` given again since the last save (a number may repeat).
    reused_since_save: Vec<u32>,
    /// In a decoded delta: the numbers given again, with their ids.
    reused: Vec<(u32, Box<str>)>,
}

/// Where each number's id lies in the arena: start and length packed in one
/// `u64` (start in the high 40 bits: an arena of up to 1 TiB; length in the low
/// 24), a length of 16 MiB or more kept aside in `long` (exact for any id a
/// Kafka record can carry), [`RELEASED`] for a released number.
#[derive(Clone, Default)]
struct Spans {
    packed: Vec<u64>,
    long: HashMap<u32, u32>,
}

/// Marks a released number in [`Spans`].
const RELEASED: u64 = u64::MAX;
const LEN_BITS: u32 = 24;
/// The packed length that means "see `long`".
const LONG: u64 = (1 << LEN_BITS) - 1;

impl Spans {
    fn len(&self) -> usize {
        self.packed.len()
    }

    /// The arena range of number `i`'s id (empty when released).
    fn get(&self, i: usize) -> std::ops::Range<usize> {
        let v = self.packed[i];
        if v == RELEASED {
            return 0..0;
        }
        let start = (v >> LEN_BITS) as usize;
        let len = match v & LONG {
            LONG => self.long.get(&(i as u32)).copied().unwrap_or(0) as usize,
            len => len as usize,
        };
        start..start + len
    }

    fn is_released(&self, i: usize) -> bool {
        self.packed.get(i).is_none_or(|v| *v == RELEASED)
    }

    /// Number `i`'s id is `len` bytes at `start` (`i` at most one past the end).
    fn set(&mut self, i: usize, start: usize, len: usize) {
        if i == self.packed.len() {
            self.packed.push(RELEASED);
        }
        self.forget_long(i);
        // An arena of a terabyte would need a terabyte of memory for the ids alone.
        let start = (start as u64) << LEN_BITS;
        self.packed[i] = match u64::try_from(len) {
            Ok(len) if len < LONG => start | len,
            _ => {
                // A Kafka record is under 2 GiB (its sizes are i32), so is any id in it.
                self.long.insert(i as u32, len as u32);
                start | LONG
            }
        };
    }

    /// Drops number `i`'s length from `long`: hashing `i` only when `long` has
    /// any (ids of 16 MiB are not expected; the hash was a tenth of a new customer).
    fn forget_long(&mut self, i: usize) {
        if !self.long.is_empty() {
            self.long.remove(&(i as u32));
        }
    }

    fn release(&mut self, i: usize) {
        self.forget_long(i);
        self.packed[i] = RELEASED;
    }

    fn push_released(&mut self) {
        self.packed.push(RELEASED);
    }

    fn reserve(&mut self, n: usize) {
        self.packed.reserve(n);
    }
}

impl std::fmt::Debug for CustomerIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerIds")
            .field("len", &self.len())
            .field("live", &self.live())
            .field("saved", &self.saved)
            .finish()
    }
}

impl CustomerIds {
    fn hash(&self, name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(name)
    }

    fn find(&self, name: &str) -> Option<CustomerId> {
        let (arena, spans) = (&self.arena, &self.spans);
        self.table
            .find(self.hash(name), |id| {
                &arena[spans.get(id.0 as usize)] == name
            })
            .copied()
    }

    /// Writes `name` as the id of number `id` (new or released) and indexes it.
    fn assign(&mut self, id: CustomerId, name: &str) {
        self.spans.set(id.0 as usize, self.arena.len(), name.len());
        self.arena.push_str(name);
        let hash = self.hash(name);
        let hasher = &self.hasher;
        let (arena, spans) = (&self.arena, &self.spans);
        self.table.insert_unique(hash, id, |id| {
            use std::hash::BuildHasher;
            hasher.hash_one(&arena[spans.get(id.0 as usize)])
        });
    }

    /// The next number never given (2^32 customers in one task would need over a
    /// terabyte of per-customer state before this saturated).
    fn next_new(&self) -> CustomerId {
        CustomerId(u32::try_from(self.spans.len()).unwrap_or(u32::MAX))
    }

    /// The number of `name`, given on first sight: the lowest released number, or a new one.
    pub fn get(&mut self, name: &str) -> CustomerId {
        if let Some(id) = self.find(name) {
            return id;
        }
        let id = match self.free.pop_first() {
            Some(n) => {
                if (n as usize) < self.saved {
                    self.reused_since_save.push(n);
                }
                CustomerId(n)
            }
            None => self.next_new(),
        };
        self.assign(id, name);
        id
    }

    /// Appends `name` (or a released number for `""`) as the next new number, as
    /// a saved list is read; an id already present is corrupt input.
    fn append(&mut self, name: &str) -> Result<(), String> {
        let id = self.next_new();
        if name.is_empty() {
            self.spans.push_released();
            self.free.insert(id.0);
            return Ok(());
        }
        if self.find(name).is_some() {
            return Err(format!("customer id {name:?} appears twice"));
        }
        self.assign(id, name);
        Ok(())
    }

    /// The id string of a number given by [`CustomerIds::get`] (`""` once released).
    pub fn name(&self, id: CustomerId) -> &str {
        &self.arena[self.spans.get(id.0 as usize)]
    }

    /// Releases number `id` (no family holds state for it): its id leaves the
    /// lookup table and, at the next compaction, the arena; the number is given again.
    pub fn release(&mut self, id: CustomerId) {
        let i = id.0 as usize;
        if self.spans.is_released(i) {
            return;
        }
        let span = self.spans.get(i);
        let hash = self.hash(&self.arena[span.clone()]);
        if let Ok(entry) = self.table.find_entry(hash, |x| *x == id) {
            entry.remove();
        }
        self.spans.release(i);
        self.free.insert(id.0);
        if i < self.saved {
            self.released_since_save.push(id.0);
        }
        self.garbage += span.len();
        if self.garbage > 4096 && self.garbage * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Rewrites the arena without the ids of released numbers (numbers stay).
    fn compact(&mut self) {
        let mut arena = String::with_capacity(self.arena.len() - self.garbage);
        for i in 0..self.spans.len() {
            let span = self.spans.get(i);
            if !span.is_empty() {
                self.spans.set(i, arena.len(), span.len());
                arena.push_str(&self.arena[span]);
            }
        }
        (self.arena, self.garbage) = (arena, 0);
        // The table holds numbers: unchanged, though its hashes come from the arena.
    }

    /// Numbers not released: the customers the task holds.
    pub fn live(&self) -> usize {
        self.spans.len() - self.free.len()
    }

    /// The id strings in number order, from number `from` on.
    fn names_from(&self, from: usize) -> impl Iterator<Item = &str> {
        (from.min(self.len())..self.len()).map(|i| self.name(CustomerId(i as u32)))
    }

    /// Numbers ever given (live and released).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.len() == 0
    }
}

impl serde::Serialize for CustomerIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        match delta::form() {
            Form::Base => s.collect_seq(self.names_from(0)),
            Form::Delta => {
                let mut reused = self.reused_since_save.clone();
                reused.sort_unstable();
                reused.dedup();
                // Given again and still held; a number given again and released
                // since is only in the released list.
                let reused: Vec<(u32, &str)> = reused
                    .into_iter()
                    .map(|n| (n, self.name(CustomerId(n))))
                    .filter(|(_, name)| !name.is_empty())
                    .collect();
                let mut t = s.serialize_tuple(4)?;
                t.serialize_element(&(self.saved as u64))?;
                t.serialize_element(&self.names_from(self.saved).collect::<Vec<&str>>())?;
                t.serialize_element(&self.released_since_save)?;
                t.serialize_element(&reused)?;
                t.end()
            }
        }
    }
}

type SavedDelta = (u64, Vec<Box<str>>, Vec<u32>, Vec<(u32, Box<str>)>);

impl<'de> serde::Deserialize<'de> for CustomerIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (first, names, released, reused): SavedDelta = match delta::form() {
            Form::Base => (0, serde::Deserialize::deserialize(d)?, vec![], vec![]),
            Form::Delta => serde::Deserialize::deserialize(d)?,
        };
        let mut out = CustomerIds::default();
        // A length read from the input is only a hint: bound what it reserves.
        out.spans.reserve(names.len().min(1 << 20));
        for n in names {
            out.append(&n).map_err(serde::de::Error::custom)?;
        }
        out.released_since_save = released;
        out.reused = reused;
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
        for (n, name) in &newer.reused {
            if name.is_empty() || !self.free.remove(n) {
                return Err(format!(
                    "a delta gives customer number {n} again, which is not released"
                ));
            }
            if self.find(name).is_some() {
                return Err(format!("customer id {name:?} appears twice"));
            }
            if (*n as usize) < self.saved {
                self.reused_since_save.push(*n);
            }
            self.assign(CustomerId(*n), name);
        }
        for name in newer.names_from(0) {
            self.append(name)?;
        }
        Ok(())
    }

    fn saved(&mut self) {
        self.saved = self.len();
        self.released_since_save.clear();
        self.reused_since_save.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids of every length, a 16 MiB one among them (its length kept aside), stay
    /// exact through releases, compactions and numbers given again.
    #[test]
    fn ids_of_any_length_survive_release_compaction_and_reuse() {
        let long = "x".repeat(LONG as usize + 3);
        let names: Vec<String> = (0..200)
            .map(|i| match i {
                7 => long.clone(),
                _ => format!("customer-{}", "y".repeat(i % 40)) + &i.to_string(),
            })
            .collect();
        let mut ids = CustomerIds::default();
        let numbers: Vec<CustomerId> = names.iter().map(|n| ids.get(n)).collect();
        for (n, id) in names.iter().zip(&numbers) {
            assert_eq!(ids.name(*id), n);
            assert_eq!(ids.get(n), *id, "found again");
        }
        // Release most (the long one too): the arena compacts.
        for id in numbers.iter().filter(|id| id.0 % 5 != 0) {
            ids.release(*id);
        }
        assert_eq!(ids.name(numbers[7]), "");
        for (n, id) in names.iter().zip(&numbers).filter(|(_, id)| id.0 % 5 == 0) {
            assert_eq!(ids.name(*id), n, "kept through the compaction");
        }
        // New customers take the released numbers, the long id again among them.
        let again = ids.get(&long);
        assert_eq!(ids.name(again), long);
        assert_eq!(again.0, 1, "the lowest released number");
        assert_eq!(ids.get("a-new-one"), CustomerId(2));
        assert_eq!(ids.name(CustomerId(2)), "a-new-one");
    }
}
