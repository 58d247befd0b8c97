//! Event-time bookkeeping: partition watermarks, idleness and the instance watermark.
//!
//! SPEC §2. A partition's watermark is the largest accepted event time minus
//! `allowed_lateness`; only accepted events move it, so it depends on that
//! partition's history alone. The instance watermark is the minimum over the
//! non-idle partitions. Idleness is the one place wall-clock time enters: it is
//! passed in by the edge (`now`), never read here.

pub mod timers;

use std::collections::BTreeMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::event::Millis;

/// The event clock of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionClock {
    max_event_time: Option<Millis>,
    /// Set by [`PartitionClock::advance_to`] (end of a replay): a floor for the watermark.
    forced: Option<Millis>,
}

impl PartitionClock {
    pub fn new() -> PartitionClock {
        PartitionClock {
            max_event_time: None,
            forced: None,
        }
    }

    /// Largest accepted event time minus `allowed_lateness`; `None` before the first event.
    pub fn watermark(&self, allowed_lateness_ms: i64) -> Option<Millis> {
        let natural = self.max_event_time.map(|t| t - allowed_lateness_ms);
        match (natural, self.forced) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// An event older than the watermark is late (SPEC §2); one at the watermark is not.
    pub(crate) fn is_late(&self, event_time: Millis, allowed_lateness_ms: i64) -> bool {
        matches!(self.watermark(allowed_lateness_ms), Some(w) if event_time < w)
    }

    /// Records an accepted event.
    pub(crate) fn observe(&mut self, event_time: Millis) {
        self.max_event_time = Some(
            self.max_event_time
                .map_or(event_time, |m| m.max(event_time)),
        );
    }

    /// Moves the watermark to at least `w` (end of input in replay).
    pub fn advance_to(&mut self, w: Millis) {
        self.forced = Some(self.forced.map_or(w, |f| f.max(w)));
    }
}

impl Default for PartitionClock {
    fn default() -> Self {
        Self::new()
    }
}

/// One partition's contribution to the instance watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionTime {
    pub watermark: Option<Millis>,
    pub idle: bool,
}

/// SPEC §2: the minimum over assigned, non-idle partitions.
///
/// A non-idle partition without a watermark yet (assigned, nothing accepted)
/// holds time back, as in Flink, until it turns idle. When every partition is
/// idle, the instance watermark is the largest partition watermark, so that the
/// last windows of a stream that stopped still complete; the edge keeps the
/// published value monotone with [`MonotoneWatermark`].
pub fn instance_watermark(parts: impl IntoIterator<Item = PartitionTime>) -> Option<Millis> {
    let mut min_active: Option<Option<Millis>> = None;
    let mut max_idle: Option<Millis> = None;
    for p in parts {
        if p.idle {
            if let Some(w) = p.watermark {
                max_idle = Some(max_idle.map_or(w, |m| m.max(w)));
            }
        } else {
            min_active = Some(match (min_active, p.watermark) {
                (None, w) => w,
                (Some(None), _) | (Some(_), None) => None,
                (Some(Some(a)), Some(b)) => Some(a.min(b)),
            });
        }
    }
    match min_active {
        Some(w) => w,
        None => max_idle,
    }
}

/// Keeps the published instance watermark from moving backwards (a partition
/// that wakes up from idleness behind the others must not rewind snapshots).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MonotoneWatermark(Option<Millis>);

impl MonotoneWatermark {
    pub fn update(&mut self, candidate: Option<Millis>) -> Option<Millis> {
        if let Some(c) = candidate {
            self.0 = Some(self.0.map_or(c, |m| m.max(c)));
        }
        self.0
    }

    pub fn get(&self) -> Option<Millis> {
        self.0
    }
}

/// Wall-clock arrival times per partition, to tell idle partitions (SPEC §2 `idle_timeout`).
#[derive(Debug, Clone)]
pub(crate) struct IdleTracker<K> {
    idle_timeout_ms: i64,
    last_arrival: BTreeMap<K, Millis>,
}

impl<K: Ord + Clone + Hash> IdleTracker<K> {
    pub fn new(idle_timeout_ms: i64) -> Self {
        IdleTracker {
            idle_timeout_ms,
            last_arrival: BTreeMap::new(),
        }
    }

    /// A record (accepted or not) or an assignment at wall time `now`.
    pub(crate) fn touch(&mut self, key: &K, now: Millis) {
        match self.last_arrival.get_mut(key) {
            Some(t) => *t = (*t).max(now),
            None => {
                self.last_arrival.insert(key.clone(), now);
            }
        }
    }

    pub(crate) fn forget(&mut self, key: &K) {
        self.last_arrival.remove(key);
    }

    /// Idle when nothing arrived for `idle_timeout` (an unknown partition is idle).
    pub(crate) fn is_idle(&self, key: &K, now: Millis) -> bool {
        self.last_arrival
            .get(key)
            .is_none_or(|t| now - *t >= self.idle_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_max_accepted_minus_lateness() {
        let mut c = PartitionClock::new();
        assert_eq!(c.watermark(100), None);
        assert!(
            !c.is_late(-1_000_000, 100),
            "nothing is late before the first event"
        );
        c.observe(1_000);
        c.observe(500); // out of order: does not move it back
        assert_eq!(c.watermark(100), Some(900));
        assert!(c.is_late(899, 100));
        assert!(!c.is_late(900, 100));
        c.advance_to(5_000);
        assert_eq!(c.watermark(100), Some(5_000));
        c.observe(10_000);
        assert_eq!(c.watermark(100), Some(9_900));
    }

    fn p(w: Option<Millis>, idle: bool) -> PartitionTime {
        PartitionTime { watermark: w, idle }
    }

    #[test]
    fn instance_watermark_is_min_over_non_idle() {
        assert_eq!(instance_watermark([]), None);
        assert_eq!(
            instance_watermark([p(Some(10), false), p(Some(5), false)]),
            Some(5)
        );
        // An idle partition behind the others does not hold time back.
        assert_eq!(
            instance_watermark([p(Some(10), false), p(Some(5), true)]),
            Some(10)
        );
        // An active partition without any event yet holds time back.
        assert_eq!(
            instance_watermark([p(Some(10), false), p(None, false)]),
            None
        );
        // All idle: the largest watermark.
        assert_eq!(
            instance_watermark([p(Some(10), true), p(Some(5), true), p(None, true)]),
            Some(10)
        );
    }

    #[test]
    fn idle_after_timeout_of_silence() {
        let mut t = IdleTracker::new(60_000);
        assert!(t.is_idle(&1, 0));
        t.touch(&1, 1_000);
        assert!(!t.is_idle(&1, 60_999));
        assert!(t.is_idle(&1, 61_000));
        t.touch(&1, 61_500);
        assert!(!t.is_idle(&1, 62_000));
    }

    #[test]
    fn monotone_watermark_never_rewinds() {
        let mut m = MonotoneWatermark::default();
        assert_eq!(m.update(None), None);
        assert_eq!(m.update(Some(10)), Some(10));
        assert_eq!(m.update(Some(7)), Some(10));
        assert_eq!(m.update(None), Some(10));
        assert_eq!(m.update(Some(12)), Some(12));
    }
}
