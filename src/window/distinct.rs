//! Exact distinct counts over sliding windows: one key lookup per event whatever the number of windows.
//!
//! A [`SharedDistinct`] counts the distinct keys (customers) of one event set
//! (activity, or ORDERs) over several *views* at once: view `i` answers "how
//! many keys had an event in `[e - len_i, e)`" for ends `e` that are multiples
//! of its bucket `b_i` (`len_i % b_i == 0`). Every window of a family, and the
//! churn-rate denominators, are views of one set, so an event costs one key
//! lookup, not one per window.
//!
//! # Technique
//! Per view, a key with an event in bucket `B` (multiple of `b`) counts at the
//! ends `e` in `[B + b, B + len]`: the union over its event buckets is a list of
//! disjoint runs. A difference array over ends holds `+1` where a key's run
//! starts and `-1` one bucket after it ends; the count at `e` is its prefix sum
//! up to `e` ([`DiffRing`]), which touches the positions between the last fold
//! and `e`, never the keys. Between consecutive distinct buckets `P < Q` of a key
//! the runs are separate iff `Q - P > len`; a gap `(P, Q)` then contributes `-1`
//! at `P + len + b` and `+1` at `Q + b`, a first bucket `+1` at its start and a
//! last one `-1` at its end.
//!
//! Per key we keep one sorted list of event buckets at the *grain* `g`, the
//! greatest common divisor of every view's bucket. Since `g` divides `b`, the
//! view's bucket of a grain bucket `k` is `floor_b(k)`, and the nearest distinct
//! view bucket below `floor_b(k)` is `floor_b(p)` of the nearest grain bucket
//! `p < k` unless `floor_b(p) = floor_b(k)` — in which case the view's bucket set
//! did not change and the view is left alone. So inserting `k` between its grain
//! neighbours `p < k < q` changes, in each view where `floor_b(k)` is new, only
//! the gaps around it: `(P, Q)` is removed and `(P, K)`, `(K, Q)` added. The
//! result is a function of the *set* of events, whatever their arrival order
//! (SPEC §2), and exactly the count a brute-force scan gives (property-tested
//! below against one).
//!
//! # Memory: what a key keeps
//! Every accepted event is at or after the task's lower bound `F` (the closing
//! watermark, [`SharedDistinct::forget_before`]). For such an event only its
//! neighbours in the list matter, and they are the buckets at or after `F` and
//! the latest one before it: everything older is dropped. To stay exact for
//! events up to `tolerance` = min over views of `len + b` behind `F` (an input
//! woken from idleness), the list keeps every bucket at or after `F - tolerance`
//! and the latest one before that. A key whose latest bucket `p` is so old that
//! no such event can share a run with it in any view (`p < F - tolerance - max(len + b)`) is dropped whole: a
//! later event then sees no left neighbour, which contributes the same
//! differences. A key touched by an event is trimmed then; a pass over every key
//! drops the silent ones, at most once per `max(len + b) / 16` of progress of `F`.
//! Most keys hold one bucket, inline in the map entry: no allocation per key.

use std::collections::{BTreeMap, VecDeque};

use smallvec::SmallVec;

use crate::checkpoint::delta::{Kept, Merge};
use crate::checkpoint::dense::{Dense, DenseKey};
use crate::event::Millis;

/// One key's event buckets (grain-aligned), ascending, without duplicates.
type Buckets = SmallVec<[Millis; 2]>;

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

/// Positions per page of a [`DiffRing`].
const PAGE: usize = 1024;
/// A difference further than this many positions from the ring's first page is
/// kept in the sparse overflow map instead (an event far in the future must not
/// allocate pages for every position up to it).
const MAX_SPAN: i64 = 1 << 22;

/// A difference array over bucket-aligned positions, folded into a base from the
/// left: dense pages of `i32` allocated on first use near the present, a sparse
/// map for outliers.
#[derive(Debug, Clone)]
pub(crate) struct DiffRing {
    len_ms: i64,
    bucket_ms: i64,
    /// `len_ms / bucket_ms`: differences are placed by bucket number.
    len_buckets: i64,
    /// Sum of the differences at positions `<= folded_to`.
    base: i64,
    folded_to: Millis,
    /// The bucket number of `folded_to` (rounded down).
    folded_bucket: i64,
    /// Bucket number (`position / bucket_ms`) of the first slot of `pages[0]`.
    first: i64,
    pages: VecDeque<Option<Box<[i32; PAGE]>>>,
    far: BTreeMap<Millis, i64>,
    /// The bucket number and start of the last bucket an insert fell in: the
    /// next one usually falls there too, without a division.
    last_bucket: (i64, Millis),
}

impl DiffRing {
    fn new(len_ms: i64, bucket_ms: i64) -> DiffRing {
        DiffRing {
            len_ms,
            bucket_ms,
            len_buckets: len_ms / bucket_ms,
            base: 0,
            folded_to: Millis::MIN,
            folded_bucket: Millis::MIN.div_euclid(bucket_ms),
            first: 0,
            pages: VecDeque::new(),
            far: BTreeMap::new(),
            last_bucket: (0, 0),
        }
    }

    /// The bucket number of `t` (`t.div_euclid(bucket_ms)`).
    fn bucket_of(&mut self, t: Millis) -> i64 {
        let (n, start) = self.last_bucket;
        if (t.wrapping_sub(start) as u64) < self.bucket_ms as u64 {
            return n;
        }
        let n = t.div_euclid(self.bucket_ms);
        self.last_bucket = (n, n * self.bucket_ms);
        n
    }

    /// Adds `d` at position `slot × bucket_ms` (positions are bucket-aligned).
    #[inline]
    fn add(&mut self, slot: i64, d: i64) {
        if slot <= self.folded_bucket {
            self.base += d;
            return;
        }
        // Most differences land on a page that exists: straight there.
        if let Some(i) = slot
            .checked_sub(self.first)
            .and_then(|d| usize::try_from(d).ok())
            && let Some(Some(page)) = self.pages.get_mut(i / PAGE)
        {
            // A sum of ±1 per key: bounded by the keys of one task (< 2^31).
            page[i % PAGE] += d as i32;
            return;
        }
        self.add_to_new_page(slot, d);
    }

    /// [`DiffRing::add`] where `slot`'s page is not there yet (or too far away).
    #[inline(never)]
    fn add_to_new_page(&mut self, slot: i64, d: i64) {
        if self.pages.is_empty() {
            self.first = slot.div_euclid(PAGE as i64) * PAGE as i64;
        }
        let page_len = PAGE as i64;
        let end = self.first + self.pages.len() as i64 * page_len;
        if slot < self.first - MAX_SPAN || slot >= self.first + MAX_SPAN {
            let pos = slot * self.bucket_ms;
            let e = self.far.entry(pos).or_insert(0);
            *e += d;
            if *e == 0 {
                self.far.remove(&pos);
            }
            return;
        }
        while slot < self.first {
            self.pages.push_front(None);
            self.first -= page_len;
        }
        let mut end = end;
        while slot >= end {
            self.pages.push_back(None);
            end += page_len;
        }
        let i = (slot - self.first) as usize;
        let page = self.pages[i / PAGE].get_or_insert_with(|| Box::new([0; PAGE]));
        // A sum of ±1 per key: bounded by the keys of one task (< 2^31).
        page[i % PAGE] += d as i32;
    }

    /// The sum of the differences at positions `<= end`.
    fn count_at(&self, end: Millis) -> i64 {
        let mut sum = self.base;
        if end > self.folded_to {
            let last = end.div_euclid(self.bucket_ms);
            for (n, page) in self.pages.iter().enumerate() {
                let start = self.first + (n * PAGE) as i64;
                if start > last {
                    break;
                }
                if let Some(page) = page {
                    let upto = ((last - start + 1) as usize).min(PAGE);
                    sum += page[..upto].iter().map(|&d| i64::from(d)).sum::<i64>();
                }
            }
            sum += self.far.range(..=end).map(|(_, d)| d).sum::<i64>();
        }
        sum
    }

    /// Promises no query before `end` again: folds the differences up to it into the base.
    fn fold_to(&mut self, end: Millis) {
        if end <= self.folded_to {
            return;
        }
        self.base = self.count_at(end);
        self.folded_to = end;
        self.folded_bucket = end.div_euclid(self.bucket_ms);
        let rest = self.far.split_off(&(end + 1));
        self.far = rest;
        let last = end.div_euclid(self.bucket_ms);
        while !self.pages.is_empty() {
            let start = self.first;
            if start + PAGE as i64 - 1 <= last {
                self.pages.pop_front();
                self.first += PAGE as i64;
                continue;
            }
            if start <= last
                && let Some(Some(page)) = self.pages.front_mut()
            {
                page[..=(last - start) as usize].fill(0);
            }
            break;
        }
    }

    /// A key got grain bucket `k` between its grain neighbours `p` and `q`.
    ///
    /// With `P < K < Q` the view buckets of `p`, `k`, `q` and `n = len / b`, the
    /// runs before were `P`'s and `Q`'s, joined iff `Q - P <= n`: then `K` lies
    /// inside that run and nothing changes. Otherwise `K` joins `P`'s run iff
    /// `K - P <= n` — moving its end (`-1` at `P + n + 1`) to `K + n + 1` unless `K`
    /// joins `Q`'s run too — or starts a run (`+1` at `K + 1`); on the right
    /// likewise, `K` joins `Q`'s run iff `Q - K <= n`, moving its start (`+1` at
    /// `Q + 1`) to `K + 1`, or ends a run (`-1` at `K + n + 1`). The net change is
    /// two differences: the four of removing gap `(P, Q)` and adding `(P, K)` and
    /// `(K, Q)` cancel pairwise.
    fn on_insert(&mut self, p: Option<Millis>, k: Millis, q: Option<Millis>) {
        let b = self.bucket_ms;
        let kb = self.bucket_of(k);
        let start = kb * b;
        // `p < k < q` at the grain: a neighbour shares `k`'s view bucket iff it
        // lies in `[start, start + b)` (no division for the common case).
        if p.is_some_and(|p| p >= start) || q.is_some_and(|q| q < start + b) {
            return;
        }
        let n = self.len_buckets;
        let (p, q) = (p.map(|t| t.div_euclid(b)), q.map(|t| t.div_euclid(b)));
        if let (Some(p), Some(q)) = (p, q)
            && q - p <= n
        {
            return;
        }
        match p {
            Some(p) if kb - p <= n => self.add(p + n + 1, 1),
            _ => self.add(kb + 1, 1),
        }
        match q {
            Some(q) if q - kb <= n => self.add(q + 1, -1),
            _ => self.add(kb + n + 1, -1),
        }
    }

    /// Every non-zero difference not yet folded, by position.
    fn entries(&self) -> Vec<(Millis, i64)> {
        let mut out = vec![];
        for (n, page) in self.pages.iter().enumerate() {
            let Some(page) = page else { continue };
            let start = self.first + (n * PAGE) as i64;
            for (i, d) in page.iter().enumerate() {
                if *d != 0 {
                    out.push(((start + i as i64) * self.bucket_ms, i64::from(*d)));
                }
            }
        }
        out.extend(self.far.iter().map(|(p, d)| (*p, *d)));
        out.sort_unstable();
        out
    }

    /// Positions held (dense slots in use and sparse entries), for the state-size gauge.
    fn size(&self) -> usize {
        self.pages.iter().flatten().count() * PAGE + self.far.len()
    }
}

/// Exact sliding distinct counts of one event set over several views (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct SharedDistinct<K> {
    grain_ms: i64,
    /// Per key, its event buckets at the grain, ascending. Inline in the map entry.
    keys: Dense<K, Buckets>,
    views: Vec<DiffRing>,
    /// Buckets before this are dropped from a key's list, but for its latest one.
    trim_below: Option<Millis>,
    /// A key whose latest bucket is before this is dropped whole.
    drop_below: Option<Millis>,
    /// Lower bound of the last pass over every key.
    swept_at: Option<Millis>,
}

impl<K: DenseKey> SharedDistinct<K> {
    /// Distinct keys over views `(len_ms, bucket_ms)`, each with `len_ms % bucket_ms == 0`.
    pub fn new(views: &[(i64, i64)]) -> SharedDistinct<K> {
        assert!(
            views.iter().all(|&(l, b)| b > 0 && l > 0 && l % b == 0),
            "views need positive lengths that are multiples of their buckets"
        );
        let grain_ms = views.iter().fold(0, |g, &(_, b)| gcd(g, b)).max(1);
        SharedDistinct {
            grain_ms,
            keys: Dense::default(),
            views: views.iter().map(|&(l, b)| DiffRing::new(l, b)).collect(),
            trim_below: None,
            drop_below: None,
            swept_at: None,
        }
    }

    /// Records an event of `key` at event time `t`: one lookup of the key, then
    /// the views whose bucket set changed.
    pub fn insert(&mut self, key: &K, t: Millis) {
        let g = self.grain_ms;
        let k = t.div_euclid(g) * g;
        let trim = self.trim_below;
        let neighbours = self.keys.update(*key, Buckets::new, |set| {
            if let Some(f) = trim {
                let below = set.partition_point(|b| *b < f);
                if below > 1 {
                    set.drain(..below - 1);
                }
            }
            let at = set.binary_search(&k).err()?;
            set.insert(at, k);
            Some((at.checked_sub(1).map(|i| set[i]), set.get(at + 1).copied()))
        });
        let Some((p, q)) = neighbours else {
            return;
        };
        for v in &mut self.views {
            v.on_insert(p, k, q);
        }
    }

    /// Distinct keys of view `view` with an event in `[end - len, end)`; `end` must
    /// be aligned to the view's bucket and not earlier than its last [`SharedDistinct::fold_to`].
    pub(crate) fn count_at(&self, view: usize, end: Millis) -> i64 {
        self.views[view].count_at(end)
    }

    /// Promises no query of view `view` before `end` again.
    pub(crate) fn fold_to(&mut self, view: usize, end: Millis) {
        self.views[view].fold_to(end);
    }

    /// No event before `lower_bound` is accepted any more (the task's closing
    /// watermark): keys keep only the buckets a future event can be next to.
    pub(crate) fn forget_before(&mut self, lower_bound: Millis) {
        let g = self.grain_ms;
        let f = lower_bound.div_euclid(g) * g;
        let tolerance = self.views.iter().map(|v| v.len_ms + v.bucket_ms).min();
        let longest = self.views.iter().map(|v| v.len_ms + v.bucket_ms).max();
        let (Some(tolerance), Some(longest)) = (tolerance, longest) else {
            return;
        };
        let trim = (f - tolerance).div_euclid(g) * g;
        let drop = trim - longest;
        if self.trim_below.is_some_and(|t| t >= trim) {
            return;
        }
        self.trim_below = Some(trim);
        self.drop_below = Some(drop);
        // A key becomes droppable `longest` after its last event; touched keys are
        // trimmed as they go. A pass every sixteenth of that keeps at most ~6% more
        // silent keys than needed, where a pass per half of the shortest window
        // (every 2.5 minutes by default) cost a pass over every customer each time.
        let shortest = self.views.iter().map(|v| v.len_ms).min().unwrap_or(1);
        let every = (longest / 16).max(shortest / 2).max(g);
        if self.swept_at.is_some_and(|s| lower_bound - s < every) {
            return;
        }
        self.swept_at = Some(lower_bound);
        self.keys.retain(|_, set| {
            if set.last().is_none_or(|l| *l < drop) {
                return Kept::Removed;
            }
            let below = set.partition_point(|b| *b < trim);
            if below > 1 {
                set.drain(..below - 1);
                Kept::Changed
            } else {
                Kept::Unchanged
            }
        });
    }

    /// Whether `k` is remembered (it had an event recently enough to matter).
    pub fn contains(&self, k: &K) -> bool {
        self.keys.get(k).is_some()
    }

    /// Keys currently remembered.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Difference positions held over every view, for the state-size gauge.
    pub(crate) fn positions(&self) -> usize {
        self.views.iter().map(DiffRing::size).sum()
    }
}

// ---- Saved form --------------------------------------------------------------

/// How a [`DiffRing`] is saved: its differences as `(position step in buckets, value)`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedRing {
    len_ms: i64,
    bucket_ms: i64,
    base: i64,
    folded_to: Millis,
    /// Positions as bucket numbers, the first relative to `folded_to`'s, each next
    /// to the one before: small varints.
    diffs: Vec<(i64, i64)>,
}

impl From<&DiffRing> for SavedRing {
    fn from(r: &DiffRing) -> SavedRing {
        let b = r.bucket_ms;
        let mut at = origin(r.folded_to, b) / b;
        let diffs = r
            .entries()
            .into_iter()
            .map(|(pos, d)| {
                let slot = pos / b;
                let step = slot - at;
                at = slot;
                (step, d)
            })
            .collect();
        SavedRing {
            len_ms: r.len_ms,
            bucket_ms: b,
            base: r.base,
            folded_to: r.folded_to,
            diffs,
        }
    }
}

impl TryFrom<SavedRing> for DiffRing {
    type Error = String;

    fn try_from(s: SavedRing) -> Result<DiffRing, String> {
        let (len, b) = (s.len_ms, s.bucket_ms);
        if b <= 0 || len <= 0 || len % b != 0 {
            return Err(format!(
                "a distinct counter with buckets of {b} ms over {len} ms"
            ));
        }
        let mut r = DiffRing::new(len, b);
        r.base = s.base;
        r.folded_to = s.folded_to;
        r.folded_bucket = s.folded_to.div_euclid(b);
        let mut at = origin(s.folded_to, b) / b;
        for (i, (step, d)) in s.diffs.into_iter().enumerate() {
            at = at
                .checked_add(step)
                .filter(|a| (i == 0 || step > 0) && a.checked_mul(b).is_some())
                .ok_or("a distinct counter's differences are out of range or out of order")?;
            let pos = at * b;
            if pos <= r.folded_to || i32::try_from(d).is_err() {
                return Err("a distinct counter's difference is out of range".into());
            }
            r.add(at, d);
        }
        Ok(r)
    }
}

/// How a [`SharedDistinct`] is saved (written from borrowed parts, read into
/// owned ones): each key's buckets as grain counts, the first relative to
/// `origin` and each next one relative to the one before — a byte or two as
/// varints, where absolute times take six; the keys are most of a checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved<Keys, Ring> {
    grain_ms: i64,
    origin: Millis,
    keys: Keys,
    views: Vec<Ring>,
    trim_below: Option<Millis>,
    drop_below: Option<Millis>,
    swept_at: Option<Millis>,
}

/// A bucket boundary near the buckets kept (positions fit in a few varint bytes from it).
fn origin(near: Millis, bucket_ms: i64) -> Millis {
    if near == Millis::MIN {
        0
    } else {
        near.div_euclid(bucket_ms) * bucket_ms
    }
}

/// One key's buckets as saved (see [`Saved`]).
struct Relative<'a> {
    buckets: &'a Buckets,
    origin: Millis,
    grain_ms: i64,
}

impl serde::Serialize for Relative<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let g = self.grain_ms;
        let previous = std::iter::once(self.origin).chain(self.buckets.iter().copied());
        s.collect_seq(self.buckets.iter().zip(previous).map(|(k, p)| (k - p) / g))
    }
}

/// The keys of a [`SharedDistinct`], written as [`Relative`] buckets.
struct SavedKeys<'a, K> {
    keys: &'a Dense<K, Buckets>,
    origin: Millis,
    grain_ms: i64,
}

impl<K: serde::Serialize + DenseKey> serde::Serialize for SavedKeys<'_, K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (origin, grain_ms) = (self.origin, self.grain_ms);
        self.keys.serialize_with(s, |buckets| Relative {
            buckets,
            origin,
            grain_ms,
        })
    }
}

impl<K: serde::Serialize + DenseKey> serde::Serialize for SharedDistinct<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let origin = origin(self.trim_below.unwrap_or(Millis::MIN), self.grain_ms);
        Saved {
            grain_ms: self.grain_ms,
            origin,
            keys: SavedKeys {
                keys: &self.keys,
                origin,
                grain_ms: self.grain_ms,
            },
            views: self.views.iter().map(SavedRing::from).collect(),
            trim_below: self.trim_below,
            drop_below: self.drop_below,
            swept_at: self.swept_at,
        }
        .serialize(s)
    }
}

impl<'de, K: serde::Deserialize<'de> + DenseKey> serde::Deserialize<'de> for SharedDistinct<K> {
    /// Turns saved bucket numbers back into times; refuses what no saved counter
    /// can hold (corrupt input must be an error, not a panic or a wrong count).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let saved: Saved<Dense<K, Buckets>, SavedRing> = serde::Deserialize::deserialize(d)?;
        let Saved {
            grain_ms,
            origin,
            mut keys,
            views,
            trim_below,
            drop_below,
            swept_at,
        } = saved;
        let views = views
            .into_iter()
            .map(DiffRing::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(D::Error::custom)?;
        let want = views.iter().fold(0, |g, v| gcd(g, v.bucket_ms)).max(1);
        if grain_ms != want {
            return Err(D::Error::custom(format!(
                "a distinct counter with a grain of {grain_ms} ms over views whose buckets need {want} ms"
            )));
        }
        for buckets in keys.decoded_values_mut() {
            let mut at = origin;
            for (i, k) in buckets.iter_mut().enumerate() {
                let step = k.checked_mul(grain_ms).filter(|s| i == 0 || *s > 0);
                at = step.and_then(|s| at.checked_add(s)).ok_or_else(|| {
                    D::Error::custom(
                        "a distinct counter's buckets are out of range or out of order",
                    )
                })?;
                *k = at;
            }
        }
        Ok(SharedDistinct {
            grain_ms,
            keys,
            views,
            trim_below,
            drop_below,
            swept_at,
        })
    }
}

impl<K: DenseKey> Merge for SharedDistinct<K> {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        let SharedDistinct {
            grain_ms,
            keys,
            views,
            trim_below,
            drop_below,
            swept_at,
        } = newer;
        let shape = |v: &[DiffRing]| {
            v.iter()
                .map(|r| (r.len_ms, r.bucket_ms))
                .collect::<Vec<_>>()
        };
        if grain_ms != self.grain_ms || shape(&views) != shape(&self.views) {
            return Err(format!(
                "a delta's distinct counter has views {:?}, the base {:?}",
                shape(&views),
                shape(&self.views)
            ));
        }
        self.keys.merge(keys)?;
        (self.views, self.trim_below, self.drop_below, self.swept_at) =
            (views, trim_below, drop_below, swept_at);
        Ok(())
    }

    fn saved(&mut self) {
        self.keys.saved();
    }
}

#[cfg(test)]
mod tests;
