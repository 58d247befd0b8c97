//! Per-key change tracking, so that a checkpoint writes what changed since the last one.
//!
//! A task state is checkpointed as a *base* (everything) followed by *deltas*.
//! A delta holds the small parts of the state whole (bucket rings, difference
//! arrays, clocks) and, of every large keyed map — a [`Tracked`] map — only the
//! keys that changed since the previous base or delta, with their new value or
//! their removal. Restoring decodes the base and merges the deltas in order
//! ([`Merge`]); the result equals the state that was saved.
//!
//! Which of the two forms serde reads or writes is a property of the call,
//! not of the types (the same derived `Serialize` writes both): [`in_form`]
//! sets it for the current thread while one state is encoded or decoded.

use std::borrow::Borrow;
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::Hash;

type Hasher = foldhash::fast::RandomState;

/// What a saved state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Everything.
    Base,
    /// The small parts whole, of each [`Tracked`] map the keys changed since the last save.
    Delta,
}

thread_local! {
    static FORM: Cell<Form> = const { Cell::new(Form::Base) };
}

/// Runs `f` (an encode or a decode of one state) with `form` as this thread's form.
pub(crate) fn in_form<R>(form: Form, f: impl FnOnce() -> R) -> R {
    struct Restore(Form);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORM.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORM.with(|c| c.replace(form)));
    f()
}

/// The form of the state being encoded or decoded on this thread.
pub fn form() -> Form {
    FORM.with(Cell::get)
}

/// A state that can be restored as a base plus deltas.
pub(crate) trait Merge {
    /// Applies `newer`, decoded from a delta saved after `self`'s state.
    fn merge(&mut self, newer: Self) -> Result<(), String>;
    /// The state was saved: what changed from now on goes into the next delta.
    fn saved(&mut self);
}

/// Merges element-wise (a list whose length the configuration fixes).
impl<T: Merge> Merge for Vec<T> {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        if newer.len() != self.len() {
            return Err(format!(
                "a delta has {} windows where the base has {}",
                newer.len(),
                self.len()
            ));
        }
        for (a, b) in self.iter_mut().zip(newer) {
            a.merge(b)?;
        }
        Ok(())
    }

    fn saved(&mut self) {
        self.iter_mut().for_each(Merge::saved);
    }
}

/// Makes an owned key from a borrowed one, to remember it as changed.
pub(crate) trait OwnKey<Q: ?Sized> {
    fn own(q: &Q) -> Self;
}

impl<T: Clone> OwnKey<T> for T {
    fn own(q: &T) -> T {
        q.clone()
    }
}

impl OwnKey<str> for Box<str> {
    fn own(q: &str) -> Box<str> {
        Box::from(q)
    }
}

impl OwnKey<str> for std::sync::Arc<str> {
    fn own(q: &str) -> std::sync::Arc<str> {
        std::sync::Arc::from(q)
    }
}

/// What [`Tracked::retain`]'s closure did to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kept {
    Unchanged,
    Changed,
    Removed,
}

/// A hash map that remembers which keys changed since the last save.
///
/// Only mutation through its methods is seen, so every method that can change
/// a value marks its entry. The mark lives in the entry itself, as the number
/// of the save period it was last changed in: marking costs no extra hash
/// lookup on the event path, a delta is one sequential pass over the map, and
/// a save clears every mark at once by starting a new period. Removed keys are
/// kept aside until the next save, only if the last save had them (so the list
/// is bounded by the saved state). Decoded from a delta, the map holds the
/// changed entries and `removed` the removed keys, for [`Merge::merge`].
#[derive(Debug, Clone)]
pub(crate) struct Tracked<K, V> {
    map: HashMap<K, Entry<V>, Hasher>,
    /// Keys the last save had that were removed since.
    removed: Vec<K>,
    /// Entries changed in this period.
    changed: usize,
    /// The current save period: saves so far + 1 (a u32 lasts 1,300 years of 10 s rounds).
    period: u32,
}

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    /// The period it was inserted in (earlier than the current one: the last save had it).
    born: u32,
    /// The period it was last changed in.
    touched: u32,
}

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            map: HashMap::default(),
            removed: Vec::new(),
            changed: 0,
            period: 1,
        }
    }
}

impl<K: Hash + Eq + Clone, V> Tracked<K, V> {
    fn touch(changed: &mut usize, period: u32, e: &mut Entry<V>) {
        if e.touched != period {
            e.touched = period;
            *changed += 1;
        }
    }

    fn fresh(&mut self, value: V) -> Entry<V> {
        self.changed += 1;
        Entry {
            value,
            born: self.period,
            touched: self.period,
        }
    }

    /// Bookkeeping for an entry that is gone.
    fn gone(changed: &mut usize, removed: &mut Vec<K>, period: u32, k: &K, e: &Entry<V>) {
        if e.touched == period {
            *changed -= 1;
        }
        if e.born < period {
            removed.push(k.clone());
        }
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(k).map(|e| &e.value)
    }

    /// The value of `k`, to change (the key counts as changed).
    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let e = self.map.get_mut(k)?;
        Self::touch(&mut self.changed, self.period, e);
        Some(&mut e.value)
    }

    /// The value of `k`, inserted by `new` if absent, to change (the key counts as changed).
    pub fn get_or_insert_with<Q>(&mut self, k: &Q, new: impl FnOnce() -> V) -> &mut V
    where
        K: Borrow<Q> + OwnKey<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.map.contains_key(k) {
            let e = self.fresh(new());
            return &mut self.map.entry(K::own(k)).or_insert(e).value;
        }
        let e = self.map.get_mut(k).expect("present: checked above");
        Self::touch(&mut self.changed, self.period, e);
        &mut e.value
    }

    /// The value of owned key `k`, inserted by `new` if absent, to change (one
    /// hash lookup; the key counts as changed).
    pub(crate) fn get_or_insert(&mut self, k: K, new: impl FnOnce() -> V) -> &mut V {
        let (changed, period) = (&mut self.changed, self.period);
        let e = self.map.entry(k).or_insert_with(|| Entry {
            value: new(),
            born: period,
            touched: 0,
        });
        Self::touch(changed, period, e);
        &mut e.value
    }

    /// Applies `f` to the value of `k` (inserted by `new` if absent); `f` returns
    /// `Some` when it changed the value. One hash lookup: for keys that are cheap
    /// to own (numbers), on the event path.
    #[cfg(test)]
    pub fn update<R>(
        &mut self,
        k: K,
        new: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> Option<R>,
    ) -> Option<R> {
        use std::collections::hash_map::Entry as Slot;
        let (changed, period) = (&mut self.changed, self.period);
        match self.map.entry(k) {
            Slot::Occupied(mut o) => {
                let e = o.get_mut();
                let r = f(&mut e.value);
                if r.is_some() {
                    Self::touch(changed, period, e);
                }
                r
            }
            Slot::Vacant(v) => {
                *changed += 1;
                let e = v.insert(Entry {
                    value: new(),
                    born: period,
                    touched: period,
                });
                f(&mut e.value)
            }
        }
    }

    /// Sets the value of `k` (one hash lookup; the key counts as changed).
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        use std::collections::hash_map::Entry as Slot;
        let (changed, period) = (&mut self.changed, self.period);
        match self.map.entry(k) {
            Slot::Occupied(mut o) => {
                let e = o.get_mut();
                Self::touch(changed, period, e);
                Some(std::mem::replace(&mut e.value, v))
            }
            Slot::Vacant(slot) => {
                *changed += 1;
                slot.insert(Entry {
                    value: v,
                    born: period,
                    touched: period,
                });
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (k, e) = self.map.remove_entry(k)?;
        Self::gone(&mut self.changed, &mut self.removed, self.period, &k, &e);
        Some(e.value)
    }

    /// Visits every entry; `f` says whether it left it unchanged, changed it, or removes it.
    pub(crate) fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> Kept) {
        let (changed, removed, period) = (&mut self.changed, &mut self.removed, self.period);
        self.map.retain(|k, e| match f(k, &mut e.value) {
            Kept::Unchanged => true,
            Kept::Changed => {
                Self::touch(changed, period, e);
                true
            }
            Kept::Removed => {
                Self::gone(changed, removed, period, k, e);
                false
            }
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, e)| (k, &e.value))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Keys changed or removed since the last save.
    #[cfg(test)]
    pub fn changed(&self) -> usize {
        self.changed + self.removed.len()
    }
}

impl<K: Hash + Eq + Clone, V> Merge for Tracked<K, V> {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        for k in &newer.removed {
            self.map.remove(k);
        }
        self.map.extend(newer.map);
        Ok(())
    }

    fn saved(&mut self) {
        // Every entry now has `born` and `touched` before the new period.
        self.period += 1;
        self.changed = 0;
        self.removed.clear();
    }
}

impl<K, V> serde::Serialize for Tracked<K, V>
where
    K: serde::Serialize + Hash + Eq,
    V: serde::Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_with(s, |v| v)
    }
}

impl<K: serde::Serialize + Hash + Eq, V> Tracked<K, V> {
    /// Serialises the map in this thread's form, each value as `f` makes it (a more
    /// compact equivalent, for example); decode the result as a `Tracked<K, W>`.
    pub(crate) fn serialize_with<'a, S: serde::Serializer, W: serde::Serialize>(
        &'a self,
        s: S,
        f: impl Fn(&'a V) -> W,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match form() {
            Form::Base => s.collect_seq(self.map.iter().map(|(k, e)| (k, f(&e.value)))),
            Form::Delta => {
                let mut seq = s.serialize_seq(Some(self.removed.len() + self.changed))?;
                for k in &self.removed {
                    seq.serialize_element(&(k, None::<W>))?;
                }
                for (k, e) in self.map.iter().filter(|(_, e)| e.touched == self.period) {
                    seq.serialize_element(&(k, Some(f(&e.value))))?;
                }
                seq.end()
            }
        }
    }
}

impl<K, V> Tracked<K, V> {}

impl<'de, K, V> serde::Deserialize<'de> for Tracked<K, V>
where
    K: serde::Deserialize<'de> + Hash + Eq,
    V: serde::Deserialize<'de>,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(Entries(form(), std::marker::PhantomData))
    }
}

/// Reads a [`Tracked`] map's entries straight into it (no intermediate list).
struct Entries<K, V>(Form, std::marker::PhantomData<(K, V)>);

impl<'de, K, V> serde::de::Visitor<'de> for Entries<K, V>
where
    K: serde::Deserialize<'de> + Hash + Eq,
    V: serde::Deserialize<'de>,
{
    type Value = Tracked<K, V>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence of map entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Tracked::default();
        // A length read from the input is only a hint: bound what it reserves.
        out.map.reserve(seq.size_hint().unwrap_or(0).min(1 << 20));
        // Decoded entries were saved, and are unchanged since (period 0 < 1).
        let entry = |value| Entry {
            value,
            born: 0,
            touched: 0,
        };
        match self.0 {
            Form::Base => {
                while let Some((k, v)) = seq.next_element::<(K, V)>()? {
                    out.map.insert(k, entry(v));
                }
            }
            Form::Delta => {
                while let Some((k, v)) = seq.next_element::<(K, Option<V>)>()? {
                    match v {
                        Some(v) => {
                            out.map.insert(k, entry(v));
                        }
                        None => out.removed.push(k),
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(t: &Tracked<u32, String>, form: Form) -> Vec<u8> {
        in_form(form, || postcard::to_stdvec(t).unwrap())
    }

    fn decode(bytes: &[u8], form: Form) -> Tracked<u32, String> {
        in_form(form, || postcard::from_bytes(bytes).unwrap())
    }

    fn sorted(t: &Tracked<u32, String>) -> Vec<(u32, String)> {
        let mut v: Vec<_> = t.iter().map(|(k, v)| (*k, v.clone())).collect();
        v.sort();
        v
    }

    #[test]
    fn a_base_and_its_deltas_rebuild_the_map() {
        let mut live: Tracked<u32, String> = Tracked::default();
        for i in 0..100 {
            live.insert(i, format!("v{i}"));
        }
        let base = encode(&live, Form::Base);
        live.saved();
        // Delta 1: a change, a removal, an insertion; the rest untouched.
        live.get_mut(&3).unwrap().push('!');
        live.remove(&4);
        live.insert(200, "new".into());
        assert_eq!(live.changed(), 3);
        let d1 = encode(&live, Form::Delta);
        live.saved();
        // Delta 2: a key removed then re-inserted, one removed by retain, one changed by it.
        live.remove(&5);
        live.insert(5, "again".into());
        live.retain(|k, v| match k {
            6 => Kept::Removed,
            7 => {
                v.push('?');
                Kept::Changed
            }
            _ => Kept::Unchanged,
        });
        // Two removals of saved keys, the re-inserted key and the changed one.
        assert_eq!(live.changed(), 4);
        let d2 = encode(&live, Form::Delta);
        assert!(d2.len() < base.len() / 10, "{} vs {}", d2.len(), base.len());

        let mut restored = decode(&base, Form::Base);
        restored.merge(decode(&d1, Form::Delta)).unwrap();
        restored.merge(decode(&d2, Form::Delta)).unwrap();
        assert_eq!(sorted(&restored), sorted(&live));
        assert_eq!(restored.get(&5).map(String::as_str), Some("again"));
        assert_eq!(restored.get(&4), None);
        assert_eq!(restored.get(&6), None);
    }

    #[test]
    fn a_key_added_and_removed_between_saves_leaves_no_trace() {
        let mut t: Tracked<u32, u32> = Tracked::default();
        t.insert(1, 1);
        t.saved();
        t.insert(2, 2);
        t.remove(&2);
        t.retain(|_, _| Kept::Unchanged);
        assert_eq!(t.changed(), 0);
        assert_eq!(encode_u32(&t), vec![0]);
        t.remove(&1);
        assert_eq!(t.changed(), 1);
    }

    fn encode_u32(t: &Tracked<u32, u32>) -> Vec<u8> {
        in_form(Form::Delta, || postcard::to_stdvec(t).unwrap())
    }

    #[test]
    fn reading_without_changing_marks_nothing() {
        let mut t: Tracked<u32, u32> = Tracked::default();
        t.insert(1, 1);
        t.saved();
        assert_eq!(t.get(&1), Some(&1));
        assert!(t.get_mut(&2).is_none());
        assert!(t.remove(&2).is_none());
        t.retain(|_, _| Kept::Unchanged);
        assert_eq!(t.changed(), 0);
    }

    #[test]
    fn the_form_is_restored_after_a_panic() {
        let r = std::panic::catch_unwind(|| in_form(Form::Delta, || panic!("boom")));
        assert!(r.is_err());
        assert_eq!(form(), Form::Base);
    }
}
