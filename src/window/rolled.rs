//! Every window's buckets fed through one staging ring at the grain: one bucket update per event, whatever the number of windows.
//!
//! A family's additive aggregates (counts, sums, session durations) used to be
//! added to the bucket of every window for each event: five windows, five map
//! lookups and updates. [`RolledRings`] adds an event to one *staging* slot of
//! the grain `g` (the greatest common divisor of the windows' buckets) and
//! rolls a slot into every window's bucket once no accepted event can fall in
//! it any more: when the task's closing watermark `w` passes the slot's end
//! ([`RolledRings::roll_to`]). Since `g` divides every bucket size, a slot lies
//! in exactly one bucket of each window.
//!
//! # Exactness
//! A value is in a window bucket (rolled) or in its staging slot (not yet),
//! never both, and reads ([`RolledRings::range`]) add both: a window's buckets
//! in `[start, end)` and the staging slots whose start is in `[start, end)` —
//! the same set of slots, because `start` and `end` are multiples of the
//! window's bucket and so of `g`. A write older than what was rolled (an input
//! woken from idleness can deliver events behind the closing watermark) goes
//! straight to every window's bucket, as before: the result is the same sum in
//! any case, so the numbers do not depend on when slots are rolled.

use std::collections::BTreeMap;

use super::{BucketRing, WindowSpec};
use crate::event::Millis;

/// Adds another bucket's aggregates into this one (what rolling a slot up does).
pub(crate) trait Absorb {
    fn absorb(&mut self, other: &Self);
    /// Back to empty, keeping what it allocated: a rolled staging slot is
    /// given to the next grain instead of growing a new one from nothing.
    fn clear(&mut self);
}

/// Rolled staging slots kept for reuse (their maps keep their capacity).
const SPARE_SLOTS: usize = 4;

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

/// One ring per window plus the staging slots not yet rolled into them (see the module docs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RolledRings<T> {
    grain_ms: i64,
    /// Grain slots (by start) not yet rolled into the windows' buckets.
    staging: BTreeMap<Millis, T>,
    /// Every slot starting before this was rolled up (writes before it go to the windows).
    rolled_to: Option<Millis>,
    windows: Vec<BucketRing<T>>,
    /// Emptied staging slots, given to the next new grain (not saved).
    #[serde(skip)]
    spare: Vec<T>,
}

impl<T: Default + Absorb> RolledRings<T> {
    pub fn new(specs: &[WindowSpec]) -> RolledRings<T> {
        let grain_ms = specs.iter().fold(0, |g, s| gcd(g, s.bucket_ms)).max(1);
        RolledRings {
            grain_ms,
            staging: BTreeMap::new(),
            rolled_to: None,
            windows: specs.iter().map(|s| BucketRing::new(s.bucket_ms)).collect(),
            spare: vec![],
        }
    }

    /// Applies `f` to what holds event time `t`: its staging slot, or (behind
    /// what was rolled) the bucket of every window.
    pub fn update(&mut self, t: Millis, mut f: impl FnMut(&mut T)) {
        if self.rolled_to.is_some_and(|r| t < r) {
            for ring in &mut self.windows {
                f(ring.bucket_mut(t));
            }
            return;
        }
        let slot = t.div_euclid(self.grain_ms) * self.grain_ms;
        // Most events fall in the newest slot: no tree search for them.
        if let Some(mut last) = self.staging.last_entry()
            && *last.key() == slot
        {
            f(last.get_mut());
            return;
        }
        let spare = &mut self.spare;
        f(self
            .staging
            .entry(slot)
            .or_insert_with(|| spare.pop().unwrap_or_default()));
    }

    /// Rolls every slot that ends at or before `w` (no accepted event can still
    /// fall in it) into the windows' buckets.
    pub(crate) fn roll_to(&mut self, w: Millis) {
        let to = w.div_euclid(self.grain_ms) * self.grain_ms;
        if self.rolled_to.is_some_and(|r| r >= to) {
            return;
        }
        self.rolled_to = Some(to);
        // Slot by slot from the front: usually one or none is due, and
        // `split_off` built a new tree every time.
        while let Some(first) = self.staging.first_entry()
            && *first.key() < to
        {
            let (slot, mut v) = first.remove_entry();
            for ring in &mut self.windows {
                ring.bucket_mut(slot).absorb(&v);
            }
            if self.spare.len() < SPARE_SLOTS {
                v.clear();
                self.spare.push(v);
            }
        }
    }

    /// Window `idx`'s buckets and the staging slots that start in `[start, end)`,
    /// in no particular order (`start`, `end`: multiples of its bucket).
    pub fn range(&self, idx: usize, start: Millis, end: Millis) -> impl Iterator<Item = &T> {
        let staged = if start < end {
            self.staging.range(start..end)
        } else {
            self.staging.range(start..start)
        };
        self.windows[idx]
            .range(start, end)
            .map(|(_, v)| v)
            .chain(staged.map(|(_, v)| v))
    }

    /// [`RolledRings::range`], to change (e.g. to seal what a snapshot reads).
    pub(crate) fn range_mut(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
    ) -> impl Iterator<Item = &mut T> {
        let staged = if start < end {
            self.staging.range_mut(start..end)
        } else {
            self.staging.range_mut(start..start)
        };
        self.windows[idx]
            .range_mut(start, end)
            .map(|(_, v)| v)
            .chain(staged.map(|(_, v)| v))
    }

    /// Drops window `idx`'s buckets that start before `before`.
    pub(crate) fn evict_before(&mut self, idx: usize, before: Millis) {
        self.windows[idx].evict_before(before);
    }

    /// Every bucket and staging slot held.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.windows
            .iter()
            .flat_map(|w| w.iter().map(|(_, v)| v))
            .chain(self.staging.values())
    }

    /// Buckets and staging slots held, for the memory accounting.
    pub fn len(&self) -> usize {
        self.windows.iter().map(|w| w.len()).sum::<usize>() + self.staging.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Absorb for i64 {
        fn absorb(&mut self, other: &i64) {
            *self += other;
        }

        fn clear(&mut self) {
            *self = 0;
        }
    }

    const MIN: i64 = 60_000;

    /// Every window's sum over `[e - W, e)`, straight from the events.
    fn brute(events: &[(Millis, i64)], spec: &WindowSpec, w: Millis) -> i64 {
        let (start, end) = spec.bounds_at(w);
        events
            .iter()
            .filter(|(t, _)| (start..end).contains(t))
            .map(|(_, v)| v)
            .sum()
    }

    /// Windows of buckets 10 s, 6 min, 7 min, 42 min and 15 s (the grain is 5 s).
    fn specs() -> Vec<WindowSpec> {
        let spec = |name: &str, length_ms: i64, bucket_ms: i64| WindowSpec {
            name: name.into(),
            length_ms,
            bucket_ms,
        };
        vec![
            WindowSpec::with_default_buckets("10m", 10 * MIN),
            spec("1h", 60 * MIN, 6 * MIN),
            spec("35m", 35 * MIN, 7 * MIN),
            spec("7h", 420 * MIN, 42 * MIN),
            spec("3m", 3 * MIN, 15_000),
        ]
    }

    #[test]
    fn reads_equal_brute_force_however_slots_were_rolled_and_evicted() {
        let specs = specs();
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        for case in 0..300 {
            let mut rings: RolledRings<i64> = RolledRings::new(&specs);
            let mut events = vec![];
            let mut clock = 0i64;
            let mut rolled = i64::MIN;
            let mut read_at = i64::MIN;
            for _ in 0..(next(400) + 1) {
                clock += next(40_000) as i64;
                // Mostly near the clock; sometimes behind what was rolled (an idle input).
                let t = if next(10) == 0 {
                    clock - next(30 * MIN as u64) as i64
                } else {
                    clock - next(MIN as u64) as i64
                };
                let v = next(100) as i64 + 1;
                rings.update(t, |b| *b += v);
                events.push((t, v));
                if next(4) == 0 {
                    rolled = rolled.max(clock - next(2 * MIN as u64) as i64);
                    rings.roll_to(rolled);
                }
                if next(8) == 0 {
                    // Snapshots at a watermark that only moves forward, ahead of
                    // or behind what was rolled; then what they cannot show again
                    // is evicted, as `Engine::evict` does.
                    read_at = read_at.max(clock - next(5 * MIN as u64) as i64);
                    for (i, spec) in specs.iter().enumerate() {
                        let (start, end) = spec.bounds_at(read_at);
                        let got: i64 = rings.range(i, start, end).sum();
                        assert_eq!(
                            got,
                            brute(&events, spec, read_at),
                            "case {case}, window {i}, w {read_at}"
                        );
                        let got_mut: i64 = rings.range_mut(i, start, end).map(|v| *v).sum();
                        assert_eq!(got_mut, got);
                    }
                    if next(2) == 0 {
                        for (i, spec) in specs.iter().enumerate() {
                            rings.evict_before(i, spec.bounds_at(read_at).0);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_grain_divides_every_bucket() {
        let specs = [
            WindowSpec::with_default_buckets("5m", 5 * MIN),
            WindowSpec::with_default_buckets("1h", 60 * MIN),
            WindowSpec::with_default_buckets("30d", 30 * 1440 * MIN),
        ];
        let rings: RolledRings<i64> = RolledRings::new(&specs);
        assert_eq!(rings.grain_ms, 5_000);
    }
}
