//! Every window's buckets fed through one staging ring at the grain: one bucket update per event, whatever the number of windows.
//!
//! A family's additive aggregates (counts, sums, session durations) used to be
//! added to the bucket of every window for each event: five windows, five map
//! lookups and updates. [`RolledRings`] adds an event to one *staging* slot of
//! the grain `g` (the greatest common divisor of the windows' buckets) and
//! rolls a slot up once no accepted event can fall in it any more: when the
//! task's closing watermark `w` passes the slot's end ([`RolledRings::roll_to`]).
//!
//! # Rolling up through the finer windows
//! A window `i` takes its values from a *source*: the window `j` with the
//! greatest bucket `b_j < b_i` that divides `b_i` (its buckets tile `i`'s), or
//! the staging slots when there is none (or it is the grain's). A source's unit (slot or bucket) is
//! *complete* once the rolled-to point `r` (the closing watermark at the grain)
//! reaches its end; at that moment it is absorbed into the bucket of every
//! window it is the source of. With the default windows (buckets of 5 s, 1 min,
//! 24 min, 168 min, 720 min) a slot is absorbed into the hour's window and then
//! becomes the 5-minute window's bucket itself (its bucket is the grain), the
//! hour's minute buckets are absorbed into the day's, and the day's into the
//! week's and the month's: about 1.1 absorbs per slot instead of 5.
//!
//! # Exactness
//! A value is in exactly one place along a window's chain of sources: in the
//! window's bucket once the source unit holding it is complete, else in that
//! unit (recursively: the unit's own incomplete source units, down to the
//! staging slot). A unit of window `x` starting at `s` is complete iff
//! `s + b_x <= r`, i.e. `s < c_x = floor(r / b_x) * b_x`, so a read of window
//! `i` over `[start, end)` ([`RolledRings::range`]) adds window `i`'s buckets in
//! `[start, end)`, each source `x` of its chain's buckets in `[max(start, c_x),
//! end)` and the staging slots in `[start, end)` — tiles of the same interval,
//! since every `b_x` divides `b_i`, which divides `start` and `end`. A write
//! older than `r` (an input woken from idleness can deliver events behind the
//! closing watermark) goes to every window whose source unit at that time is
//! complete, so that it is not absorbed again: the lowest such window takes it
//! and passes it up when its bucket completes. The result is the same sum in
//! any case, so the numbers do not depend on when slots are rolled. A source's
//! incomplete buckets are never evicted (its dependents still read them).

use super::slots::SlotMap;
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

fn floor(t: Millis, b: i64) -> Millis {
    t.div_euclid(b) * b
}

/// One ring per window plus the staging slots not yet rolled into them (see the module docs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RolledRings<T> {
    grain_ms: i64,
    /// Grain slots (by start) not yet rolled up.
    staging: SlotMap<T>,
    /// Every slot starting before this was rolled up (writes before it go to the windows).
    rolled_to: Option<Millis>,
    windows: Vec<BucketRing<T>>,
    /// Emptied staging slots, given to the next new grain (not saved).
    #[serde(skip)]
    spare: Vec<T>,
    /// Who rolls into whom, derived from the bucket sizes (not saved).
    #[serde(skip)]
    plan: Option<Plan>,
}

/// The windows the staging slots roll into, and the (source, window) pairs,
/// finest sources first.
#[derive(Debug, Clone)]
struct Plan {
    from_staging: Vec<bool>,
    links: Vec<(usize, usize)>,
    /// The first window whose bucket is the grain: a rolled slot *is* its
    /// bucket, so it takes the slot itself (after the others absorbed it).
    takes_slot: Option<usize>,
}

impl<T: Default + Absorb> RolledRings<T> {
    pub fn new(specs: &[WindowSpec]) -> RolledRings<T> {
        let grain_ms = specs.iter().fold(0, |g, s| gcd(g, s.bucket_ms)).max(1);
        RolledRings {
            grain_ms,
            staging: SlotMap::default(),
            rolled_to: None,
            windows: specs.iter().map(|s| BucketRing::new(s.bucket_ms)).collect(),
            spare: vec![],
            plan: None,
        }
    }

    fn plan(&self) -> Plan {
        let sources: Vec<Option<usize>> = (0..self.windows.len()).map(|i| self.source(i)).collect();
        let mut links: Vec<(usize, usize)> = sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|j| (j, i)))
            .collect();
        // A window's source has a smaller bucket: it took its own share first.
        links.sort_by_key(|&(j, _)| self.windows[j].bucket_ms);
        let takes_slot = (self.windows.iter())
            .position(|w| w.bucket_ms == self.grain_ms)
            .filter(|&i| sources[i].is_none());
        Plan {
            from_staging: sources.iter().map(Option::is_none).collect(),
            links,
            takes_slot,
        }
    }

    /// The window whose complete buckets window `i` takes (`None`: the staging
    /// slots): the greatest bucket smaller than `i`'s that divides it, the
    /// first such window on ties; not one of the grain (its buckets are the
    /// slots: as many absorbs, and a tree search more per slot). A function of
    /// the bucket sizes only.
    fn source(&self, i: usize) -> Option<usize> {
        let b = self.windows[i].bucket_ms;
        let mut best: Option<usize> = None;
        for (j, w) in self.windows.iter().enumerate() {
            if w.bucket_ms < b
                && w.bucket_ms > self.grain_ms
                && b % w.bucket_ms == 0
                && best.is_none_or(|k| w.bucket_ms > self.windows[k].bucket_ms)
            {
                best = Some(j);
            }
        }
        best
    }

    /// The start of window `x`'s first incomplete bucket (every one before it
    /// was absorbed by the windows it is the source of).
    fn first_incomplete(&self, x: usize) -> Millis {
        self.rolled_to
            .map_or(Millis::MIN, |r| floor(r, self.windows[x].bucket_ms))
    }

    /// Applies `f` to what holds event time `t`: its staging slot, or (behind
    /// what was rolled) the bucket of every window whose source unit holding
    /// `t` is complete.
    pub fn update(&mut self, t: Millis, mut f: impl FnMut(&mut T)) {
        if let Some(r) = self.rolled_to
            && t < r
        {
            for i in 0..self.windows.len() {
                let sealed = self.source(i).is_none_or(|j| {
                    let b = self.windows[j].bucket_ms;
                    floor(t, b) + b <= r
                });
                if sealed {
                    f(self.windows[i].bucket_mut(t));
                }
            }
            return;
        }
        let slot = floor(t, self.grain_ms);
        // Most events fall in the newest slot: no search for them.
        if let Some((last, v)) = self.staging.last_mut()
            && last == slot
        {
            f(v);
            return;
        }
        let spare = &mut self.spare;
        f(self
            .staging
            .get_or_insert_with(slot, || spare.pop().unwrap_or_default()));
    }

    /// Rolls every slot that ends at or before `w` (no accepted event can still
    /// fall in it) up, and every bucket completed by that into the windows it
    /// is the source of.
    pub(crate) fn roll_to(&mut self, w: Millis) {
        let to = floor(w, self.grain_ms);
        let from = self.rolled_to;
        if from.is_some_and(|r| r >= to) {
            return;
        }
        let plan = self.plan.take().unwrap_or_else(|| self.plan());
        // Staging slots into the windows they are the source of, slot by slot
        // from the front: usually one or none is due.
        while self.staging.first_key().is_some_and(|first| first < to)
            && let Some((slot, mut v)) = self.staging.pop_first()
        {
            for (i, (ring, &staged)) in self.windows.iter_mut().zip(&plan.from_staging).enumerate()
            {
                if staged && plan.takes_slot != Some(i) {
                    ring.bucket_mut(slot).absorb(&v);
                }
            }
            if let Some(i) = plan.takes_slot {
                // Never there already (a late write goes to a slot rolled before);
                // absorbed if it were.
                let mut v = Some(v);
                let bucket = self.windows[i]
                    .buckets
                    .get_or_insert_with(slot, || v.take().unwrap_or_default());
                if let Some(v) = v {
                    bucket.absorb(&v);
                }
            } else if self.spare.len() < SPARE_SLOTS {
                v.clear();
                self.spare.push(v);
            }
        }
        // Then the buckets this completed, finest sources first.
        for &(j, i) in &plan.links {
            let b = self.windows[j].bucket_ms;
            let lo = from.map_or(Millis::MIN, |r| floor(r, b));
            if floor(to, b) == lo {
                continue; // no bucket of `j` ended in `(from, to]`
            }
            let (src, dst) = pair(&mut self.windows, j, i);
            for (start, bucket) in src.range(lo, to) {
                if start + b > to {
                    break;
                }
                dst.bucket_mut(start).absorb(bucket);
            }
        }
        self.plan = Some(plan);
        self.rolled_to = Some(to);
    }

    /// Where window `idx`'s values in `[start, end)` are (see the module docs):
    /// per window of its chain of sources, the bucket range to read, then the
    /// staging slots.
    fn chain(&self, idx: usize, start: Millis) -> Vec<(usize, Millis)> {
        let mut out = vec![(idx, start)];
        let mut x = idx;
        while let Some(j) = self.source(x) {
            out.push((j, start.max(self.first_incomplete(j))));
            x = j;
        }
        out
    }

    /// Window `idx`'s values over `[start, end)`: its buckets, its sources'
    /// incomplete buckets and the staging slots there, in no particular order
    /// (`start`, `end`: multiples of its bucket).
    pub fn range(&self, idx: usize, start: Millis, end: Millis) -> impl Iterator<Item = &T> {
        let mut out: Vec<&T> = vec![];
        for (x, lo) in self.chain(idx, start) {
            out.extend(self.windows[x].range(lo, end).map(|(_, v)| v));
        }
        if start < end {
            out.extend(self.staging.range(start, end).map(|(_, v)| v));
        }
        out.into_iter()
    }

    /// [`RolledRings::range`], to change (e.g. to seal what a snapshot reads).
    pub(crate) fn range_mut(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
    ) -> impl Iterator<Item = &mut T> {
        let chain = self.chain(idx, start);
        let mut out: Vec<&mut T> = vec![];
        for (x, ring) in self.windows.iter_mut().enumerate() {
            if let Some(&(_, lo)) = chain.iter().find(|(c, _)| *c == x) {
                out.extend(ring.range_mut(lo, end).map(|(_, v)| v));
            }
        }
        if start < end {
            out.extend(self.staging.range_mut(start, end).map(|(_, v)| v));
        }
        out.into_iter()
    }

    /// Drops window `idx`'s buckets that start before `before`, but for those
    /// that windows it is the source of still read (incomplete ones).
    pub(crate) fn evict_before(&mut self, idx: usize, before: Millis) {
        let is_source = (0..self.windows.len()).any(|i| self.source(i) == Some(idx));
        let before = if is_source {
            before.min(self.first_incomplete(idx))
        } else {
            before
        };
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

/// Window `j` to read and window `i` to write (`i != j`).
fn pair<T>(
    windows: &mut [BucketRing<T>],
    j: usize,
    i: usize,
) -> (&BucketRing<T>, &mut BucketRing<T>) {
    if j < i {
        let (a, b) = windows.split_at_mut(i);
        (&a[j], &mut b[0])
    } else {
        let (a, b) = windows.split_at_mut(j);
        (&b[0], &mut a[i])
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

    /// Windows of buckets 10 s, 6 min, 7 min, 42 min, 15 s and 5 s (the grain).
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
            spec("2m", 2 * MIN, 5_000),
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

    #[test]
    fn windows_take_the_greatest_finer_bucket_that_tiles_theirs() {
        let defaults: Vec<WindowSpec> = [5, 60, 1440, 10_080, 43_200]
            .iter()
            .map(|m| WindowSpec::with_default_buckets(format!("{m}m"), m * MIN))
            .collect();
        let rings: RolledRings<i64> = RolledRings::new(&defaults);
        let sources: Vec<_> = (0..5).map(|i| rings.source(i)).collect();
        // 5 s and 1 min <- slots (5 s is the grain), 24 min <- 1 min, 168 min
        // and 720 min <- 24 min.
        assert_eq!(sources, [None, None, Some(1), Some(2), Some(2)]);
        // The property test's windows: 10 s and 15 s from the slots (neither
        // divides the other), 6 and 7 min from 15 s, 42 min from 7 min.
        // 5 s (the grain's, not a source of 10 s) from the slots.
        let rings: RolledRings<i64> = RolledRings::new(&specs());
        let sources: Vec<_> = (0..6).map(|i| rings.source(i)).collect();
        assert_eq!(sources, [None, Some(4), Some(4), Some(2), None, None]);
    }
}
