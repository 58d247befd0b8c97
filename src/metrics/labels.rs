//! Label values of one task (sites, channels, pages, campaigns) as small numbers, at most a configured number at a time.
//!
//! State keyed by a label hashes a number, not a string: [`LabelIds::id`] gives
//! each value a number the first time it is seen. A task names at most `cap`
//! values of a kind at a time (`max_label_values`); a value that arrives while
//! the table is full gets [`OTHER_ID`] and counts as `other` in every
//! breakdown (its events still count in the `all` rows), so a million distinct
//! sites, channels, pages or campaigns cost the state `cap` entries, not a
//! million. This is GA4's "(other)" row: the values a task saw first keep
//! their names.
//!
//! # Which values keep a name, deterministically
//! Every kind of label comes from one input topic (sites, channels and pages
//! from page views, campaigns from email events), and a task reads one
//! partition of it in offset order, so "first seen" and every decision below
//! are functions of that partition's records, never of how topics or
//! partitions were interleaved, of batch boundaries or of restarts (the table
//! is checkpointed whole). Below the cap nothing is folded: every value is
//! named, exactly as without a cap.
//!
//! A value's *last use* is the greatest event time it was seen at. Once the
//! newest event time of the table is more than `retention` past a value's last
//! use (the longest window plus what can still refer to it, e.g. an open
//! session), no window can show it any more: the value is released when room
//! is needed, and a later event of it is named again if there is room.
//!
//! # Numbers are never given twice
//! A released number stays readable ([`LabelIds::name`]) until the task's
//! windows dropped every bucket that could hold it ([`LabelIds::forget_before`]):
//! a bucket or session that still holds it reads the right name, and a value
//! named again gets a new number (both add up under the one name).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use super::{OTHER, same_bytes};
use crate::event::Millis;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The number every value without a name of its own gets (`other`).
pub(crate) const OTHER_ID: u32 = 0;

/// A named value's number and last use.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Named {
    id: u32,
    last: Millis,
}

/// The label values of one kind in one task (see the module docs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct LabelIds {
    /// At most this many values named at a time.
    cap: usize,
    /// A value last used more than this before the table's newest event time
    /// can be released.
    retention_ms: i64,
    /// The next number to give (0 is `other`).
    next: u32,
    /// The named values.
    named: NameTable,
    /// Every number that something may still hold: the named and the released.
    names: FastMap<u32, Arc<str>>,
    other: Arc<str>,
    /// Released numbers with their last use, readable until forgotten.
    released: Vec<(u32, Millis)>,
    /// The greatest event time seen.
    newest: Millis,
    /// No named value was last used before this (a lower bound).
    oldest: Millis,
}

/// The named values by name: a hash table whose entries carry their name, so a
/// lookup hashes the value once and compares it inline ([`same_bytes`]) instead of
/// calling `memcmp` (label lookups were a tenth of the mixed replay's
/// instructions). Saved as a map from name to number and last use, as the
/// `HashMap` it replaces.
#[derive(Clone, Default)]
struct NameTable {
    table: HashTable<(Arc<str>, Named)>,
    hasher: foldhash::fast::RandomState,
}

impl NameTable {
    #[inline]
    fn get_mut(&mut self, v: &str) -> Option<&mut Named> {
        let h = self.hasher.hash_one(v);
        self.table
            .find_mut(h, |(k, _)| same_bytes(k.as_bytes(), v.as_bytes()))
            .map(|(_, n)| n)
    }

    /// Adds `v` (not there yet).
    fn insert(&mut self, v: Arc<str>, n: Named) {
        let hasher = &self.hasher;
        let h = hasher.hash_one(&*v);
        self.table
            .insert_unique(h, (v, n), |(k, _)| hasher.hash_one(&**k));
    }

    fn retain(&mut self, mut keep: impl FnMut(&Named) -> bool) {
        self.table.retain(|(_, n)| keep(n));
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

impl std::fmt::Debug for NameTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.table.iter().map(|(k, n)| (k, n)))
            .finish()
    }
}

impl serde::Serialize for NameTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.table.iter().map(|(k, n)| (k, n)))
    }
}

impl<'de> serde::Deserialize<'de> for NameTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NameTable, D::Error> {
        let map = HashMap::<Arc<str>, Named>::deserialize(d)?;
        let mut t = NameTable::default();
        for (k, n) in map {
            t.insert(k, n);
        }
        Ok(t)
    }
}

impl LabelIds {
    /// A table naming at most `cap` values (at least 1), releasing values unused
    /// for `retention_ms` of event time.
    pub fn new(cap: usize, retention_ms: i64) -> LabelIds {
        LabelIds {
            cap: cap.max(1),
            retention_ms,
            next: OTHER_ID + 1,
            named: NameTable::default(),
            names: FastMap::default(),
            other: Arc::from(OTHER),
            released: vec![],
            newest: Millis::MIN,
            oldest: Millis::MIN,
        }
    }

    /// The number of `v` seen at event time `t`: its own while it has one or
    /// there is room, [`OTHER_ID`] otherwise.
    #[inline]
    pub(crate) fn id(&mut self, v: &str, t: Millis) -> u32 {
        self.newest = self.newest.max(t);
        if let Some(n) = self.named.get_mut(v) {
            n.last = n.last.max(t);
            return n.id;
        }
        self.name_new(v, t)
    }

    /// [`LabelIds::id`] of a value not named now (out of line: most values are).
    #[inline(never)]
    fn name_new(&mut self, v: &str, t: Millis) -> u32 {
        if self.named.len() >= self.cap && !self.release_unused() {
            return OTHER_ID;
        }
        // u32 numbers run out after 4 G values named in one task: `other` then.
        let Some(next) = self.next.checked_add(1) else {
            return OTHER_ID;
        };
        let id = std::mem::replace(&mut self.next, next);
        let a: Arc<str> = Arc::from(v);
        self.names.insert(id, a.clone());
        self.named.insert(a, Named { id, last: t });
        if self.named.len() == 1 {
            self.oldest = t;
        }
        self.oldest = self.oldest.min(t);
        id
    }

    /// The name of `v` seen at `t` as [`LabelIds::id`] gives it: its own or `other`.
    pub(crate) fn name_of(&mut self, v: &str, t: Millis) -> Arc<str> {
        let id = self.id(v, t);
        self.name(id).clone()
    }

    /// Releases every named value unused for `retention`; whether any was.
    fn release_unused(&mut self) -> bool {
        let bound = self.newest.saturating_sub(self.retention_ms);
        if self.oldest >= bound {
            return false;
        }
        let released = &mut self.released;
        let mut oldest = Millis::MAX;
        self.named.retain(|n| {
            if n.last < bound {
                released.push((n.id, n.last));
                false
            } else {
                oldest = oldest.min(n.last);
                true
            }
        });
        self.oldest = oldest;
        self.named.len() < self.cap
    }

    /// The value numbered `id` (`other` for [`OTHER_ID`] or a number forgotten).
    pub(crate) fn name(&self, id: u32) -> &Arc<str> {
        self.names.get(&id).unwrap_or(&self.other)
    }

    /// Forgets the names of released values last used before `before` (nothing
    /// at or after `before` - `retention` can hold them any more, say the
    /// task's windows).
    pub(crate) fn forget_before(&mut self, before: Millis) {
        let names = &mut self.names;
        self.released.retain(|&(id, last)| {
            let keep = last >= before;
            if !keep {
                names.remove(&id);
            }
            keep
        });
    }

    /// Values named now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.named.len()
    }

    /// Numbers readable (named and released), for the memory accounting.
    pub fn held(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn below_the_cap_every_value_is_named_and_keeps_its_number() {
        let mut l = LabelIds::new(3, HOUR);
        let [a, b, c] = ["a", "b", "c"].map(|v| l.id(v, 0));
        assert!(a != OTHER_ID && b != OTHER_ID && c != OTHER_ID);
        assert_eq!((a, b, c), (l.id("a", 5), l.id("b", 5), l.id("c", 5)));
        assert_eq!(&**l.name(b), "b");
        assert_eq!(&**l.name(OTHER_ID), OTHER);
    }

    #[test]
    fn a_value_seen_while_the_table_is_full_is_other() {
        let mut l = LabelIds::new(2, HOUR);
        l.id("a", 0);
        l.id("b", 0);
        // Within the retention nothing can be released: a million values later
        // the table still names two.
        for i in 0..1_000_000 {
            assert_eq!(l.id(&format!("v{i}"), HOUR - 1), OTHER_ID);
        }
        assert_eq!(l.len(), 2);
        assert_eq!(l.held(), 2);
        assert_eq!(&*l.name_of("zzz", HOUR - 1), OTHER);
        assert_eq!(&*l.name_of("a", HOUR - 1), "a");
    }

    #[test]
    fn values_unused_for_the_retention_make_room_and_stay_readable_until_forgotten() {
        let mut l = LabelIds::new(2, HOUR);
        let a = l.id("a", 0);
        let b = l.id("b", 10);
        // "b" used again: only "a" is past the retention at HOUR + 5.
        l.id("b", HOUR);
        let c = l.id("c", HOUR + 5);
        assert_ne!(c, OTHER_ID);
        assert!(c != a && c != b, "numbers are never given twice");
        assert_eq!(l.len(), 2);
        // "a" is released but something may still hold its number.
        assert_eq!(&**l.name(a), "a");
        assert_eq!(l.held(), 3);
        l.forget_before(0);
        assert_eq!(&**l.name(a), "a", "last used at 0: not before 0");
        l.forget_before(1);
        assert_eq!(&**l.name(a), OTHER);
        assert_eq!(l.held(), 2);
        // Full again ("b" and "c" in use): "a" is other now.
        assert_eq!(l.id("a", HOUR + 6), OTHER_ID);
    }

    #[test]
    fn the_named_values_are_saved_as_a_map_and_read_back() {
        let mut l = LabelIds::new(10, HOUR);
        for (i, v) in ["shop", "blog", "a-much-longer-site-name.example"]
            .iter()
            .enumerate()
        {
            l.id(v, i as i64);
        }
        let json = serde_json::to_value(&l).unwrap();
        // The form the HashMap it replaced had: name -> {id, last}.
        assert_eq!(
            json["named"]["blog"],
            serde_json::json!({"id": 2, "last": 1})
        );
        assert_eq!(json["named"].as_object().unwrap().len(), 3);
        let mut back: LabelIds = postcard::from_bytes(&postcard::to_stdvec(&l).unwrap()).unwrap();
        assert_eq!(back.len(), 3);
        for v in ["shop", "blog", "a-much-longer-site-name.example"] {
            assert_eq!(back.id(v, 5), l.id(v, 5));
        }
    }

    #[test]
    fn a_value_at_exactly_the_retention_is_not_released() {
        let mut l = LabelIds::new(1, HOUR);
        l.id("a", 0);
        assert_eq!(l.id("b", HOUR), OTHER_ID);
        assert_ne!(l.id("c", HOUR + 1), OTHER_ID);
    }
}
