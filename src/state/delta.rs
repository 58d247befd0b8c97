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
use std::collections::{HashMap, HashSet};
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
pub fn in_form<R>(form: Form, f: impl FnOnce() -> R) -> R {
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
pub trait Merge {
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
pub trait OwnKey<Q: ?Sized> {
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
pub enum Kept {
    Unchanged,
    Changed,
    Removed,
}

/// A hash map that remembers which keys changed since the last save.
///
/// Only mutation through its methods is seen, so every method that can change
/// a value marks its key. Decoded from a delta, it holds the changed entries in
/// the map and the removed keys aside, for [`Merge::merge`].
#[derive(Debug, Clone)]
pub struct Tracked<K, V> {
    map: HashMap<K, V, Hasher>,
    /// Keys inserted, changed or removed since the last save.
    changed: HashSet<K, Hasher>,
    /// In a decoded delta only: keys removed since the previous save.
    removed: Vec<K>,
}

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            map: HashMap::default(),
            changed: HashSet::default(),
            removed: Vec::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> Tracked<K, V> {
    fn mark<Q>(&mut self, k: &Q)
    where
        K: Borrow<Q> + OwnKey<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.changed.contains(k) {
            self.changed.insert(K::own(k));
        }
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(k)
    }

    /// The value of `k`, to change (the key counts as changed).
    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q> + OwnKey<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.map.contains_key(k) {
            self.mark(k);
        }
        self.map.get_mut(k)
    }

    /// The value of `k`, inserted by `new` if absent, to change (the key counts as changed).
    pub fn get_or_insert_with<Q>(&mut self, k: &Q, new: impl FnOnce() -> V) -> &mut V
    where
        K: Borrow<Q> + OwnKey<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.mark(k);
        if !self.map.contains_key(k) {
            self.map.insert(K::own(k), new());
        }
        self.map.get_mut(k).expect("present: inserted above")
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        if !self.changed.contains(&k) {
            self.changed.insert(k.clone());
        }
        self.map.insert(k, v)
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q> + OwnKey<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let v = self.map.remove(k);
        if v.is_some() {
            self.mark(k);
        }
        v
    }

    /// Visits every entry; `f` says whether it left it unchanged, changed it, or removes it.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> Kept) {
        let changed = &mut self.changed;
        self.map.retain(|k, v| {
            let kept = f(k, v);
            if kept != Kept::Unchanged && !changed.contains(k) {
                changed.insert(k.clone());
            }
            kept != Kept::Removed
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys changed since the last save.
    pub fn changed(&self) -> usize {
        self.changed.len()
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
        self.changed.clear();
        self.removed.clear();
    }
}

impl<K, V> serde::Serialize for Tracked<K, V>
where
    K: serde::Serialize + Hash + Eq,
    V: serde::Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match form() {
            Form::Base => s.collect_seq(self.map.iter()),
            Form::Delta => s.collect_seq(self.changed.iter().map(|k| (k, self.map.get(k)))),
        }
    }
}

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
        match self.0 {
            Form::Base => {
                while let Some((k, v)) = seq.next_element::<(K, V)>()? {
                    out.map.insert(k, v);
                }
            }
            Form::Delta => {
                while let Some((k, v)) = seq.next_element::<(K, Option<V>)>()? {
                    match v {
                        Some(v) => {
                            out.map.insert(k, v);
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
        assert_eq!(live.changed(), 3);
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
