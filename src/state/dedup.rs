//! De-duplication by `event_id` within `dedup_window` of event time (SPEC §1).
//!
//! An accepted id is remembered until the partition watermark reaches its event
//! time plus `dedup_window`. Expiry is checked on lookup, and forgetting only
//! frees memory, so whether a record is a duplicate never depends on when
//! memory was freed.
//!
//! # Layout
//! The remembered ids are *records* in arrival order, numbered from 0 for the
//! life of the input: a record is the id's bytes in one arena (appended at the
//! back, dropped from the front), its event time and 32 bits of its id's hash.
//! A hash table holds the numbers of the live records by that hash, comparing
//! ids found through the arena. So an accepted event costs one hash of its id
//! and no allocation (forgetting and growing the table hash nothing), and forgetting
//! is a pop from the front: records are forgotten in arrival order, each once,
//! as soon as it and every record before it has expired (a record behind an
//! out-of-order one waits, at most the lateness, for it). No pass over every id.
//! A record accepted again after it expired (but before it was forgotten) is
//! *killed*, leaves the table, and is remembered again as a new record.
//!
//! # Saved form
//! A base holds every record from the first one not forgotten (killed ones as
//! `None`, to keep the numbering); a delta holds the number of the first record
//! not forgotten, the numbers of records of the last save killed since, and the
//! records appended since the last save and not forgotten yet.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::checkpoint::delta::{self, Form, Merge};
use crate::event::Millis;

/// An id remembered at an event time.
#[derive(Debug, Clone, Copy)]
struct Rec {
    /// Where its bytes start in the arena, counted from the input's first byte.
    pos: u64,
    time: Millis,
    /// The id's length (bits 0..31) and whether it is still in the table, not
    /// killed (bit 31): the record stays 24 bytes with its hash.
    len_live: u32,
    /// The 32 bits of its id's hash the table's hash is made of ([`spread`]):
    /// forgetting and growing the table need not hash the id again.
    hash: u32,
}

const LIVE: u32 = 1 << 31;
// The memory model counts 24 bytes per record (docs/operations.md).
const _: () = assert!(std::mem::size_of::<Rec>() == 24);

impl Rec {
    fn len(&self) -> usize {
        (self.len_live & !LIVE) as usize
    }

    fn live(&self) -> bool {
        self.len_live & LIVE != 0
    }
}

/// The table's 64-bit hash of a record's 32: a bijection (an odd multiplier),
/// so that the table's bucket bits (the low ones) and its tag (the top seven)
/// are different functions of them.
fn spread(h: u32) -> u64 {
    u64::from(h).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[derive(Clone, Default)]
pub(crate) struct Dedup {
    window_ms: i64,
    /// The ids' bytes from record `first_no`'s on; `arena[0]` is byte `arena_base`.
    arena: Vec<u8>,
    arena_base: u64,
    /// Records in arrival order; `records[0]` is record number `first_no`.
    records: VecDeque<Rec>,
    first_no: u64,
    /// Numbers of the live records, by the hash of their id.
    table: HashTable<u64>,
    hasher: foldhash::fast::RandomState,
    /// The number of the next record at the last save (or decode).
    saved_no: u64,
    /// Records below `saved_no` killed since the last save; in a decoded delta,
    /// the killed records it lists.
    killed: Vec<u64>,
    /// In a decoded delta: the first record not forgotten when it was saved (its
    /// records start at `first_no`, which may be later).
    kept_from: u64,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("window_ms", &self.window_ms)
            .field("remembered", &self.len())
            .field("records", &self.records.len())
            .field("first_no", &self.first_no)
            .finish()
    }
}

/// The bytes of record `no` (which must be held).
fn bytes_of<'a>(
    arena: &'a [u8],
    arena_base: u64,
    records: &VecDeque<Rec>,
    first_no: u64,
    no: u64,
) -> &'a [u8] {
    let r = &records[(no - first_no) as usize];
    let start = (r.pos - arena_base) as usize;
    &arena[start..start + r.len()]
}

impl Dedup {
    pub fn new(window_ms: i64) -> Dedup {
        Dedup {
            window_ms,
            ..Dedup::default()
        }
    }

    /// The 32 bits of `id`'s hash that records keep (the table hashes [`spread`] of them).
    fn hash(&self, id: &[u8]) -> u32 {
        (self.hasher.hash_one(id) >> 32) as u32
    }

    fn next_no(&self) -> u64 {
        self.first_no + self.records.len() as u64
    }

    /// The number of the live record of `id`.
    fn find(&self, id: &[u8], hash: u32) -> Option<u64> {
        let (arena, base, records, first) =
            (&self.arena, self.arena_base, &self.records, self.first_no);
        self.table
            .find(spread(hash), |&no| {
                bytes_of(arena, base, records, first, no) == id
            })
            .copied()
    }

    /// Appends a live record of `id` at `time`, or a killed one (`None`).
    #[inline]
    fn push(&mut self, id: &[u8], hash: u32, time: Millis, live: bool) {
        let no = self.next_no();
        let pos = self.arena_base + self.arena.len() as u64;
        self.arena.extend_from_slice(id);
        // An id is a string field of a Kafka record, under 2 GiB.
        let len = u32::try_from(id.len()).unwrap_or(u32::MAX) & !LIVE;
        self.records.push_back(Rec {
            pos,
            time,
            len_live: if live { len | LIVE } else { len },
            hash,
        });
        if live {
            let (records, first) = (&self.records, self.first_no);
            self.table.insert_unique(spread(hash), no, |&n| {
                spread(records[(n - first) as usize].hash)
            });
        }
    }

    /// Takes live record `no` (of `id`, hashed `hash`) out of the table.
    fn kill(&mut self, no: u64, hash: u32) {
        if let Ok(e) = self.table.find_entry(spread(hash), |&n| n == no) {
            e.remove();
        }
        if let Some(r) = self.records.get_mut((no - self.first_no) as usize) {
            r.len_live &= !LIVE;
        }
        if no < self.saved_no {
            self.killed.push(no);
        }
    }

    /// Whether `event_id` was accepted and is still remembered at `watermark`.
    #[cfg(test)]
    pub(crate) fn is_duplicate(&self, event_id: &str, watermark: Option<Millis>) -> bool {
        let id = event_id.as_bytes();
        match self.find(id, self.hash(id)) {
            None => false,
            Some(no) => {
                let t = self.records[(no - self.first_no) as usize].time;
                watermark.is_none_or(|w| t + self.window_ms > w)
            }
        }
    }

    /// Remembers an accepted event (from `event_time` on, if it was remembered).
    #[cfg(test)]
    pub fn insert(&mut self, event_id: &str, event_time: Millis) {
        let id = event_id.as_bytes();
        let hash = self.hash(id);
        if let Some(no) = self.find(id, hash) {
            self.kill(no, hash);
        }
        self.push(id, hash, event_time, true);
    }

    /// Whether `event_id` is new at `watermark` ([`Dedup::is_duplicate`] is
    /// false); if so, remembers it at `event_time`. One hash of the id.
    pub(crate) fn accept(
        &mut self,
        event_id: &str,
        event_time: Millis,
        watermark: Option<Millis>,
    ) -> bool {
        let id = event_id.as_bytes();
        let hash = self.hash(id);
        if let Some(no) = self.find(id, hash) {
            let t = self.records[(no - self.first_no) as usize].time;
            if watermark.is_none_or(|w| t + self.window_ms > w) {
                return false;
            }
            // Remembered, but expired: remembered again from this event.
            self.kill(no, hash);
        }
        self.push(id, hash, event_time, true);
        true
    }

    /// Forgets the records at the front that expired at `watermark` (and killed
    /// ones): amortised one comparison per event.
    pub fn sweep(&mut self, watermark: Millis) {
        let window = self.window_ms;
        while let Some(&r) = self.records.front() {
            if r.live() && r.time + window > watermark {
                break;
            }
            self.pop_front();
        }
        self.compact();
    }

    /// Forgets the first record.
    fn pop_front(&mut self) {
        let Some(&r) = self.records.front() else {
            return;
        };
        if r.live() {
            let no = self.first_no;
            if let Ok(e) = self.table.find_entry(spread(r.hash), |&n| n == no) {
                e.remove();
            }
        }
        self.records.pop_front();
        self.first_no += 1;
    }

    /// Drops the arena's forgotten bytes once they are more than half of it.
    fn compact(&mut self) {
        let keep = self
            .records
            .front()
            .map_or(self.arena_base + self.arena.len() as u64, |r| r.pos);
        let garbage = (keep - self.arena_base) as usize;
        if garbage > 4096 && garbage * 2 > self.arena.len() {
            self.arena.drain(..garbage);
            self.arena_base = keep;
        }
    }

    /// Ids remembered (live records).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Records from number `from` on, as saved: `(id, time)`, or `None` for a killed one.
    fn saved_records(&self, from: u64) -> impl Iterator<Item = Option<(&str, Millis)>> {
        let skip = from.saturating_sub(self.first_no) as usize;
        self.records.iter().skip(skip).map(|r| {
            r.live().then(|| {
                let start = (r.pos - self.arena_base) as usize;
                let bytes = &self.arena[start..start + r.len()];
                // Every id came in as a `&str`.
                (std::str::from_utf8(bytes).unwrap_or_default(), r.time)
            })
        })
    }
}

/// Records from a number on, serialised without an intermediate list.
struct SavedRecords<'a>(&'a Dedup, u64);

impl serde::Serialize for SavedRecords<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.saved_records(self.1))
    }
}

/// The saved form, bases and deltas alike (see the module docs).
#[derive(serde::Serialize)]
struct Saved<'a> {
    window_ms: i64,
    kept_from: u64,
    killed: &'a [u64],
    new_from: u64,
    records: SavedRecords<'a>,
}

#[derive(serde::Deserialize)]
struct Decoded {
    window_ms: i64,
    kept_from: u64,
    killed: Vec<u64>,
    new_from: u64,
    records: Vec<Option<(String, Millis)>>,
}

impl serde::Serialize for Dedup {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (killed, new_from): (&[u64], u64) = match delta::form() {
            Form::Base => (&[], self.first_no),
            Form::Delta => (&self.killed, self.saved_no.max(self.first_no)),
        };
        Saved {
            window_ms: self.window_ms,
            kept_from: self.first_no,
            killed,
            new_from,
            records: SavedRecords(self, new_from),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Dedup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let saved = Decoded::deserialize(d)?;
        let mut out = Dedup::new(saved.window_ms);
        out.first_no = saved.new_from;
        out.records.reserve(saved.records.len());
        for r in &saved.records {
            match r {
                Some((id, time)) => {
                    let hash = out.hash(id.as_bytes());
                    out.push(id.as_bytes(), hash, *time, true);
                }
                None => out.push(b"", 0, 0, false),
            }
        }
        out.saved_no = out.next_no();
        out.kept_from = saved.kept_from;
        out.killed = saved.killed;
        Ok(out)
    }
}

impl Merge for Dedup {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        self.window_ms = newer.window_ms;
        // Forgotten when the delta was saved.
        while self.first_no < newer.kept_from && !self.records.is_empty() {
            self.pop_front();
        }
        for &no in &newer.killed {
            let Some(r) = no
                .checked_sub(self.first_no)
                .and_then(|i| self.records.get(i as usize))
            else {
                continue;
            };
            if r.live() {
                let hash = r.hash;
                self.kill(no, hash);
            }
        }
        if newer.first_no != self.next_no() {
            if !self.records.is_empty() {
                return Err(format!(
                    "a delta's event ids start at record {} where the state has {}",
                    newer.first_no,
                    self.next_no()
                ));
            }
            self.first_no = newer.first_no;
        }
        for r in newer.saved_records(newer.first_no) {
            match r {
                Some((id, time)) => {
                    let hash = self.hash(id.as_bytes());
                    self.push(id.as_bytes(), hash, time, true);
                }
                None => self.push(b"", 0, 0, false),
            }
        }
        self.compact();
        self.saved();
        Ok(())
    }

    fn saved(&mut self) {
        self.saved_no = self.next_no();
        self.killed.clear();
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_until_the_watermark_passes_its_window() {
        let mut d = Dedup::new(600_000);
        assert!(!d.is_duplicate("a", None));
        d.insert("a", 1_000_000);
        assert!(d.is_duplicate("a", None));
        assert!(d.is_duplicate("a", Some(1_599_999)));
        assert!(!d.is_duplicate("a", Some(1_600_000)));
        assert!(!d.is_duplicate("b", Some(0)));
    }

    #[test]
    fn accept_is_is_duplicate_then_insert() {
        let mut d = Dedup::new(600_000);
        assert!(d.accept("a", 1_000_000, None));
        assert!(!d.accept("a", 1_000_000, None), "a duplicate");
        assert!(
            !d.accept("a", 1_200_000, Some(1_599_999)),
            "still remembered"
        );
        // Expired at 1_600_000: accepted, and remembered from the new event on.
        assert!(d.accept("a", 1_700_000, Some(1_600_000)));
        assert!(d.is_duplicate("a", Some(2_299_999)));
        assert!(!d.is_duplicate("a", Some(2_300_000)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn sweeping_does_not_change_answers() {
        let mut swept = Dedup::new(100);
        let mut kept = Dedup::new(100);
        for (i, t) in [(1, 10), (2, 50), (3, 120), (4, 260)] {
            let id = i.to_string();
            swept.insert(&id, t);
            kept.insert(&id, t);
            swept.sweep(t);
        }
        // Watermarks only move forward, so answers are compared from the last sweep on.
        for w in [260, 300, 359, 360, 400] {
            for i in 1..=4 {
                let id = i.to_string();
                if swept.is_duplicate(&id, Some(w)) != kept.is_duplicate(&id, Some(w)) {
                    panic!("id {id} at watermark {w} differs after sweeping");
                }
            }
        }
        swept.sweep(1_000);
        assert!(swept.is_empty());
        assert_eq!(kept.len(), 4);
    }

    /// What a record's fate is, by the SPEC's words: a map of id → time of the
    /// accepted event that is remembered, never forgotten (expiry by comparison).
    struct Model {
        window: i64,
        seen: std::collections::HashMap<String, Millis>,
    }

    impl Model {
        fn accept(&mut self, id: &str, t: Millis, w: Option<Millis>) -> bool {
            if let Some(&s) = self.seen.get(id)
                && w.is_none_or(|w| s + self.window > w)
            {
                return false;
            }
            self.seen.insert(id.to_string(), t);
            true
        }
    }

    fn encode(d: &mut Dedup, form: Form) -> Vec<u8> {
        let bytes = delta::in_form(form, || postcard::to_allocvec(&*d)).unwrap();
        d.saved();
        bytes
    }

    fn decode(bytes: &[u8], form: Form) -> Dedup {
        delta::in_form(form, || postcard::from_bytes(bytes)).unwrap()
    }

    /// Random ids from a small set (so that duplicates, expiries and
    /// re-acceptances happen), times out of order within a lateness, the
    /// watermark moving in steps, sweeps after each event as in the task, and
    /// a base plus deltas saved now and then: the answers equal the model's,
    /// and a state restored from the saves answers as the live one.
    #[test]
    fn answers_equal_the_model_through_sweeps_and_saves() {
        for seed in 1..40u64 {
            let mut rng = crate::testing::xorshift(seed);
            let window = 1 + rng(200) as i64;
            let lateness = rng(50) as i64;
            let mut d = Dedup::new(window);
            let mut model = Model {
                window,
                seen: Default::default(),
            };
            let mut saves: Vec<(Form, Vec<u8>)> = vec![];
            let mut max_t = 0;
            let ids = 1 + rng(60);
            for step in 0..3000 {
                let id = format!("id-{}{}", rng(ids), "x".repeat(rng(3) as usize * 20));
                let t = (max_t - lateness + rng(lateness as u64 + 20) as i64).max(0);
                let w = (step > 0).then_some(max_t - lateness);
                assert_eq!(
                    d.accept(&id, t, w),
                    model.accept(&id, t, w),
                    "seed {seed} step {step}: {id} at {t}, watermark {w:?}"
                );
                max_t = max_t.max(t);
                d.sweep(max_t - lateness);
                if rng(100) == 0 {
                    let form = if saves.is_empty() || rng(5) == 0 {
                        saves.clear();
                        Form::Base
                    } else {
                        Form::Delta
                    };
                    saves.push((form, encode(&mut d, form)));
                    let mut restored = decode(&saves[0].1, Form::Base);
                    for (_, bytes) in &saves[1..] {
                        restored.merge(decode(bytes, Form::Delta)).unwrap();
                    }
                    assert_eq!(restored.len(), d.len(), "seed {seed} step {step}");
                    let w = Some(max_t - lateness);
                    for i in 0..ids * 3 {
                        let id = format!("id-{}{}", i / 3, "x".repeat(i as usize % 3 * 20));
                        assert_eq!(
                            restored.is_duplicate(&id, w),
                            d.is_duplicate(&id, w),
                            "seed {seed} step {step}: {id}"
                        );
                    }
                }
            }
            // Memory follows the window: what is remembered has not expired
            // or waits behind a record that has not.
            assert!(d.len() <= 3 * ids as usize, "seed {seed}");
            assert!(
                d.records.len() <= 3 * ids as usize + 3000 / 10,
                "seed {seed}"
            );
        }
    }

    #[test]
    fn forgotten_bytes_leave_the_arena() {
        let mut d = Dedup::new(10);
        for t in 0..100_000i64 {
            assert!(d.accept(&format!("event-{t:012}"), t, Some(t - 1)));
            d.sweep(t);
        }
        // Ten live ids of 18 bytes; the arena keeps at most twice the live
        // bytes beyond the 4 KiB it may leave before compacting.
        assert_eq!(d.len(), 10);
        assert!(d.arena.len() <= 2 * 4096 + 10 * 18, "{}", d.arena.len());
        assert!(d.records.len() <= 11);
    }
}
