//! A change-tracking map over dense numeric keys: per-customer state as arrays, not hash tables.
//!
//! [`Dense`] has the interface and the saved form of [`Tracked`](super::delta::Tracked)
//! (a base is every `(key, value)`, a delta the changed ones and the removed
//! keys), for keys that are small dense numbers — a task's customer numbers,
//! handed out from 0 upwards. Values live in fixed chunks of [`CHUNK`] slots
//! indexed by the number, with three bits per slot beside them: *present*,
//! *changed since the last save* and *held by the last save*. So an entry costs
//! the value's size and three bits, where a hash table entry cost the key, two
//! save-period marks, the table's empty slots (a load factor between 44% and
//! 87%) and, while it grows, a second copy of itself. Chunks are allocated when
//! their first key arrives and freed when their last one leaves, so numbers
//! released by `state_ttl` give their memory back a chunk at a time.
//!
//! Iteration is in key order: a save's bytes and a sweep's order depend on the
//! state only, not on a hasher's seed.

use super::delta::{Form, Kept, Merge, form};

/// A key that is a small dense number.
pub(crate) trait DenseKey: Copy {
    fn index(self) -> usize;
    fn from_index(i: usize) -> Self;
}

macro_rules! dense_key {
    ($($t:ty),*) => {$(
        impl DenseKey for $t {
            fn index(self) -> usize {
                self as usize
            }
            fn from_index(i: usize) -> $t {
                i as $t
            }
        }
    )*};
}
dense_key!(u8, u16, u32);

/// Slots per chunk.
pub(crate) const CHUNK: usize = 4096;
const WORDS: usize = CHUNK / 64;

#[derive(Debug, Clone)]
struct Chunk<V> {
    values: Box<[V]>,
    present: [u64; WORDS],
    /// Changed since the last save.
    changed: [u64; WORDS],
    /// Held by the last save (a removal must be written down).
    saved: [u64; WORDS],
    len: u32,
}

impl<V: Default> Chunk<V> {
    fn new() -> Box<Chunk<V>> {
        Box::new(Chunk {
            values: (0..CHUNK).map(|_| V::default()).collect(),
            present: [0; WORDS],
            changed: [0; WORDS],
            saved: [0; WORDS],
            len: 0,
        })
    }
}

fn bit(words: &[u64; WORDS], i: usize) -> bool {
    words[i / 64] & (1 << (i % 64)) != 0
}

fn set(words: &mut [u64; WORDS], i: usize, on: bool) {
    if on {
        words[i / 64] |= 1 << (i % 64);
    } else {
        words[i / 64] &= !(1 << (i % 64));
    }
}

/// The slots of `words` that are set, ascending.
fn ones(words: &[u64; WORDS]) -> impl Iterator<Item = usize> + '_ {
    words.iter().enumerate().flat_map(|(w, &word)| {
        let mut rest = word;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let b = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                w * 64 + b
            })
        })
    })
}

/// A map from dense numbers to values that remembers which keys changed since the last save.
#[derive(Debug, Clone)]
pub(crate) struct Dense<K, V> {
    chunks: Vec<Option<Box<Chunk<V>>>>,
    len: usize,
    /// Entries changed since the last save.
    changed: usize,
    /// Keys the last save had that were removed since.
    removed: Vec<K>,
}

impl<K, V> Default for Dense<K, V> {
    fn default() -> Self {
        Dense {
            chunks: Vec::new(),
            len: 0,
            changed: 0,
            removed: Vec::new(),
        }
    }
}

impl<K: DenseKey, V: Default> Dense<K, V> {
    fn slot(k: K) -> (usize, usize) {
        let i = k.index();
        (i / CHUNK, i % CHUNK)
    }

    fn chunk(&self, c: usize) -> Option<&Chunk<V>> {
        self.chunks.get(c).and_then(|c| c.as_deref())
    }

    /// Chunk `c` of `chunks`, allocated if absent.
    fn chunk_in(chunks: &mut Vec<Option<Box<Chunk<V>>>>, c: usize) -> &mut Chunk<V> {
        if chunks.len() <= c {
            chunks.resize_with(c + 1, || None);
        }
        chunks[c].get_or_insert_with(Chunk::new)
    }

    /// Marks slot `i` of `chunk` changed.
    fn touch(changed: &mut usize, chunk: &mut Chunk<V>, i: usize) {
        if !bit(&chunk.changed, i) {
            set(&mut chunk.changed, i, true);
            *changed += 1;
        }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        let (c, i) = Self::slot(*k);
        let chunk = self.chunk(c)?;
        bit(&chunk.present, i).then(|| &chunk.values[i])
    }

    /// The value of `k`, to change (the key counts as changed).
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let (c, i) = Self::slot(*k);
        let chunk = self.chunks.get_mut(c)?.as_deref_mut()?;
        if !bit(&chunk.present, i) {
            return None;
        }
        Self::touch(&mut self.changed, chunk, i);
        Some(&mut chunk.values[i])
    }

    /// The value of `k`, inserted by `new` if absent, to change (the key counts as changed).
    pub(crate) fn get_or_insert(&mut self, k: K, new: impl FnOnce() -> V) -> &mut V {
        let (c, i) = Self::slot(k);
        let chunk = Self::chunk_in(&mut self.chunks, c);
        if !bit(&chunk.present, i) {
            set(&mut chunk.present, i, true);
            chunk.values[i] = new();
            chunk.len += 1;
            self.len += 1;
        }
        Self::touch(&mut self.changed, chunk, i);
        &mut chunk.values[i]
    }

    /// Applies `f` to the value of `k` (inserted by `new` if absent); `f` returns
    /// `Some` when it changed the value, which then counts as changed.
    pub fn update<R>(
        &mut self,
        k: K,
        new: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> Option<R>,
    ) -> Option<R> {
        let (c, i) = Self::slot(k);
        let chunk = Self::chunk_in(&mut self.chunks, c);
        let fresh = !bit(&chunk.present, i);
        if fresh {
            set(&mut chunk.present, i, true);
            chunk.values[i] = new();
            chunk.len += 1;
            self.len += 1;
        }
        let r = f(&mut chunk.values[i]);
        if fresh || r.is_some() {
            Self::touch(&mut self.changed, chunk, i);
        }
        r
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let (c, i) = Self::slot(k);
        let chunk = Self::chunk_in(&mut self.chunks, c);
        let old = std::mem::replace(&mut chunk.values[i], v);
        let was = bit(&chunk.present, i);
        if !was {
            set(&mut chunk.present, i, true);
            chunk.len += 1;
            self.len += 1;
        }
        Self::touch(&mut self.changed, chunk, i);
        was.then_some(old)
    }

    /// Clears slot `i` of chunk `c` (present), with the removal's bookkeeping.
    fn take(&mut self, c: usize, i: usize) -> V {
        let Some(chunk) = self.chunks[c].as_deref_mut() else {
            return V::default();
        };
        let v = std::mem::take(&mut chunk.values[i]);
        set(&mut chunk.present, i, false);
        if bit(&chunk.changed, i) {
            set(&mut chunk.changed, i, false);
            self.changed -= 1;
        }
        if bit(&chunk.saved, i) {
            set(&mut chunk.saved, i, false);
            self.removed.push(K::from_index(c * CHUNK + i));
        }
        chunk.len -= 1;
        self.len -= 1;
        if chunk.len == 0 {
            self.chunks[c] = None;
        }
        v
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let (c, i) = Self::slot(*k);
        let present = self.chunk(c).is_some_and(|ch| bit(&ch.present, i));
        present.then(|| self.take(c, i))
    }

    /// Visits every entry in key order; `f` says whether it left it unchanged,
    /// changed it, or removes it.
    pub(crate) fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> Kept) {
        let mut gone = Vec::new();
        for c in 0..self.chunks.len() {
            let Some(chunk) = self.chunks[c].as_deref_mut() else {
                continue;
            };
            let present = chunk.present;
            for i in ones(&present) {
                match f(&K::from_index(c * CHUNK + i), &mut chunk.values[i]) {
                    Kept::Unchanged => {}
                    Kept::Changed => Self::touch(&mut self.changed, chunk, i),
                    Kept::Removed => gone.push(i),
                }
            }
            for i in gone.drain(..) {
                self.take(c, i);
            }
        }
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (K, &V)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk.iter().flat_map(move |chunk| {
                ones(&chunk.present).map(move |i| (K::from_index(c * CHUNK + i), &chunk.values[i]))
            })
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Keys changed or removed since the last save.
    #[cfg(test)]
    pub fn changed(&self) -> usize {
        self.changed + self.removed.len()
    }

    /// Every value, to rewrite in place *without* marking it changed: only for
    /// turning a freshly decoded map's values back into their in-memory form.
    pub(crate) fn decoded_values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.chunks.iter_mut().flatten().flat_map(|chunk| {
            let present = chunk.present;
            chunk
                .values
                .iter_mut()
                .enumerate()
                .filter(move |(i, _)| bit(&present, *i))
                .map(|(_, v)| v)
        })
    }

    /// Inserts a decoded entry: held by the save it came from, unchanged since.
    fn decoded(&mut self, k: K, v: V) {
        let (c, i) = Self::slot(k);
        let chunk = Self::chunk_in(&mut self.chunks, c);
        chunk.values[i] = v;
        if !bit(&chunk.present, i) {
            set(&mut chunk.present, i, true);
            chunk.len += 1;
            self.len += 1;
        }
        set(&mut chunk.saved, i, true);
    }
}

impl<K: DenseKey, V: Default> Merge for Dense<K, V> {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        let before = self.removed.len();
        for k in &newer.removed {
            let (c, i) = Self::slot(*k);
            if self.chunk(c).is_some_and(|ch| bit(&ch.present, i)) {
                self.take(c, i);
            }
        }
        // Removals while restoring are not changes of this map since its save.
        self.removed.truncate(before);
        let mut newer = newer;
        for c in 0..newer.chunks.len() {
            let Some(mut chunk) = newer.chunks[c].take() else {
                continue;
            };
            for i in ones(&chunk.present.clone()) {
                self.decoded(
                    K::from_index(c * CHUNK + i),
                    std::mem::take(&mut chunk.values[i]),
                );
            }
        }
        Ok(())
    }

    fn saved(&mut self) {
        for chunk in self.chunks.iter_mut().flatten() {
            chunk.saved = chunk.present;
            chunk.changed = [0; WORDS];
        }
        self.changed = 0;
        self.removed.clear();
    }
}

impl<K, V> serde::Serialize for Dense<K, V>
where
    K: serde::Serialize + DenseKey,
    V: serde::Serialize + Default,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_with(s, |v| v)
    }
}

impl<K: serde::Serialize + DenseKey, V: Default> Dense<K, V> {
    /// Serialises the map in this thread's form (the same as a `Tracked` map's),
    /// each value as `f` makes it; decode the result as a `Dense<K, W>`.
    pub(crate) fn serialize_with<'a, S: serde::Serializer, W: serde::Serialize>(
        &'a self,
        s: S,
        f: impl Fn(&'a V) -> W,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match form() {
            Form::Base => {
                let mut seq = s.serialize_seq(Some(self.len))?;
                for (k, v) in self.iter() {
                    seq.serialize_element(&(k, f(v)))?;
                }
                seq.end()
            }
            Form::Delta => {
                let mut seq = s.serialize_seq(Some(self.removed.len() + self.changed))?;
                for k in &self.removed {
                    seq.serialize_element(&(k, None::<W>))?;
                }
                for (c, chunk) in self.chunks.iter().enumerate() {
                    let Some(chunk) = chunk else { continue };
                    for i in ones(&chunk.changed) {
                        let k = K::from_index(c * CHUNK + i);
                        seq.serialize_element(&(k, Some(f(&chunk.values[i]))))?;
                    }
                }
                seq.end()
            }
        }
    }
}

/// Keys above this are refused when decoding (a corrupt record must not allocate
/// a chunk table for four billion numbers).
const MAX_DECODED_INDEX: usize = 1 << 31;

impl<'de, K, V> serde::Deserialize<'de> for Dense<K, V>
where
    K: serde::Deserialize<'de> + DenseKey,
    V: serde::Deserialize<'de> + Default,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(Entries(form(), std::marker::PhantomData))
    }
}

/// Reads a [`Dense`] map's entries straight into it.
struct Entries<K, V>(Form, std::marker::PhantomData<(K, V)>);

impl<'de, K, V> serde::de::Visitor<'de> for Entries<K, V>
where
    K: serde::Deserialize<'de> + DenseKey,
    V: serde::Deserialize<'de> + Default,
{
    type Value = Dense<K, V>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence of map entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Dense::default();
        let check = |k: K| {
            if k.index() > MAX_DECODED_INDEX {
                Err(serde::de::Error::custom(format!(
                    "key {} is beyond the largest number a task hands out",
                    k.index()
                )))
            } else {
                Ok(k)
            }
        };
        match self.0 {
            Form::Base => {
                while let Some((k, v)) = seq.next_element::<(K, V)>()? {
                    out.decoded(check(k)?, v);
                }
            }
            Form::Delta => {
                while let Some((k, v)) = seq.next_element::<(K, Option<V>)>()? {
                    match v {
                        Some(v) => out.decoded(check(k)?, v),
                        None => out.removed.push(k),
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
