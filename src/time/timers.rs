//! Timers over event time in a ring of slots: adding one costs a push, and a watermark visits only what is due.
//!
//! A session closes (or a churn run ends) at an event-time instant, and a
//! closing watermark that only moves forward asks for everything due at or
//! before it. A binary heap costs a logarithmic sift per timer with a cache
//! miss per level; here timers live in slots of `slot_ms` of event time, from
//! `base` on: adding one pushes onto its slot's list, and only the front slot —
//! the one the watermark is in — is sorted, once, when it becomes the front.
//! Timers beyond the ring's reach ([`MAX_SLOTS`] slots, e.g. a far-future event
//! time) wait in a heap and move into the ring as it advances, so memory never
//! follows the distance between event times.
//!
//! # Exactness
//! [`Timers::pop_due`] returns every timer whose instant is at or before `w`,
//! each exactly once, in (instant, item) order, and no other: a timer sits in
//! the slot that holds its instant (or the front slot if that slot was passed,
//! or the overflow heap), slots are visited in time order, and a slot is
//! dropped only once the watermark passed its end.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::event::Millis;

/// Slots the ring holds at most; timers further ahead wait in the overflow heap.
pub(crate) const MAX_SLOTS: usize = 4096;
/// Emptied slot lists kept for the slots the ring grows next (a sparse stream
/// starts a slot for nearly every timer: each grew its list from nothing).
const SPARE_SLOTS: usize = 64;
/// The largest emptied list kept.
const SPARE_CAPACITY: usize = 256;

/// Timers `(instant, item)` by event time (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Timers<T> {
    slot_ms: i64,
    /// Start of the front slot.
    base: Millis,
    slots: VecDeque<Vec<(Millis, T)>>,
    /// Whether the front slot is sorted, latest first (so due timers pop off its end).
    front_sorted: bool,
    far: BinaryHeap<Reverse<(Millis, T)>>,
    len: usize,
    /// Emptied slot lists, given to new slots.
    spare: Vec<Vec<(Millis, T)>>,
}

impl<T: Ord + Copy> Timers<T> {
    /// Timers in slots of `slot_ms` (at least 1 ms).
    pub fn new(slot_ms: i64) -> Timers<T> {
        Timers {
            slot_ms: slot_ms.max(1),
            base: 0,
            slots: VecDeque::new(),
            front_sorted: false,
            far: BinaryHeap::new(),
            len: 0,
            spare: Vec::new(),
        }
    }

    /// Keeps an emptied slot's list for a later slot, up to [`SPARE_SLOTS`] lists
    /// of at most [`SPARE_CAPACITY`] timers (a burst's list is freed).
    fn recycle(spare: &mut Vec<Vec<(Millis, T)>>, mut slot: Vec<(Millis, T)>) {
        if spare.len() < SPARE_SLOTS && (1..=SPARE_CAPACITY).contains(&slot.capacity()) {
            slot.clear();
            spare.push(slot);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a timer at `at`.
    pub fn push(&mut self, at: Millis, item: T) {
        if self.len == 0 {
            for slot in self.slots.drain(..) {
                Self::recycle(&mut self.spare, slot);
            }
            self.front_sorted = false;
            self.base = at.div_euclid(self.slot_ms) * self.slot_ms;
        }
        self.len += 1;
        // A passed slot's timer goes to the front: it is due at the next pass.
        let idx = usize::try_from(at.saturating_sub(self.base) / self.slot_ms).unwrap_or(0);
        if idx >= MAX_SLOTS {
            self.far.push(Reverse((at, item)));
            return;
        }
        if idx >= self.slots.len() {
            let spare = &mut self.spare;
            self.slots
                .resize_with(idx + 1, || spare.pop().unwrap_or_default());
        }
        let slot = &mut self.slots[idx];
        if idx == 0 && self.front_sorted {
            let at_or_after = slot.partition_point(|e| *e > (at, item));
            slot.insert(at_or_after, (at, item));
        } else {
            slot.push((at, item));
        }
    }

    /// Moves the overflow heap's timers that the ring now reaches into it.
    fn pull_far(&mut self) {
        let reach = self
            .base
            .saturating_add(self.slot_ms.saturating_mul(MAX_SLOTS as i64));
        while let Some(&Reverse((at, item))) = self.far.peek()
            && at < reach
        {
            self.far.pop();
            self.len -= 1;
            self.push(at, item);
        }
    }

    /// Appends every timer at or before `w` to `out`, in (instant, item) order,
    /// and removes them.
    pub(crate) fn pop_due(&mut self, w: Millis, out: &mut Vec<(Millis, T)>) {
        let first = out.len();
        while self.len > 0 {
            if self.slots.is_empty() {
                // Only far timers are left: the ring starts again at the earliest.
                let Some(&Reverse((at, _))) = self.far.peek() else {
                    break;
                };
                if at > w {
                    break;
                }
                self.base = at.div_euclid(self.slot_ms) * self.slot_ms;
                self.front_sorted = false;
                self.pull_far();
                continue;
            }
            let front = &mut self.slots[0];
            if !self.front_sorted {
                if front.len() > 1 {
                    front.sort_unstable_by(|a, b| b.cmp(a));
                }
                self.front_sorted = true;
            }
            while let Some(&e) = front.last()
                && e.0 <= w
            {
                front.pop();
                out.push(e);
                self.len -= 1;
            }
            let end = self.base.saturating_add(self.slot_ms);
            if end > w {
                break;
            }
            // The watermark passed the whole slot: it is empty now.
            if let Some(slot) = self.slots.pop_front() {
                Self::recycle(&mut self.spare, slot);
            }
            self.base = end;
            self.front_sorted = false;
            // So are the empty slots after it that it also passed (a sparse stream
            // has many): dropped in one go, the overflow heap looked at once.
            while self.slots.front().is_some_and(Vec::is_empty)
                && self.base.saturating_add(self.slot_ms) <= w
            {
                if let Some(slot) = self.slots.pop_front() {
                    Self::recycle(&mut self.spare, slot);
                }
                self.base = self.base.saturating_add(self.slot_ms);
            }
            self.pull_far();
        }
        // Timers moved from the overflow heap into a passed slot come out of it
        // sorted; a pass that spanned several slots is sorted already.
        if out.len() - first > 1 {
            out[first..].sort_unstable();
        }
    }

    /// Every timer, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &(Millis, T)> {
        self.slots
            .iter()
            .flatten()
            .chain(self.far.iter().map(|Reverse(e)| e))
    }
}

/// Saved as the slot width and the timers, in no particular order.
impl<T: Ord + Copy + serde::Serialize> serde::Serialize for Timers<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct All<'a, T>(&'a Timers<T>);
        impl<T: Ord + Copy + serde::Serialize> serde::Serialize for All<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                // The length up front: postcard needs it, and a chain of slots has no exact hint.
                let mut seq = s.serialize_seq(Some(self.0.len))?;
                for e in self.0.iter() {
                    seq.serialize_element(e)?;
                }
                seq.end()
            }
        }
        (self.slot_ms, All(self)).serialize(s)
    }
}

impl<'de, T: Ord + Copy + serde::Deserialize<'de>> serde::Deserialize<'de> for Timers<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timers<T>, D::Error> {
        let (slot_ms, mut all): (i64, Vec<(Millis, T)>) = serde::Deserialize::deserialize(d)?;
        all.sort_unstable();
        let mut t = Timers::new(slot_ms);
        all.into_iter().for_each(|(at, item)| t.push(at, item));
        Ok(t)
    }
}

#[cfg(test)]
mod tests;
