//! De-duplication by `event_id` within `dedup_window` of event time (SPEC §1).
//!
//! An accepted id is remembered until the partition watermark reaches its event
//! time plus `dedup_window`. Expiry is checked on lookup, and sweeping only frees
//! memory, so whether a record is a duplicate never depends on when a sweep ran.

use crate::checkpoint::delta::{Kept, Merge, Tracked};
use crate::event::Millis;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Dedup {
    window_ms: i64,
    seen: Tracked<Box<str>, Millis>,
    swept_at: Option<Millis>,
}

impl Dedup {
    pub fn new(window_ms: i64) -> Dedup {
        Dedup {
            window_ms,
            seen: Tracked::default(),
            swept_at: None,
        }
    }

    /// Whether `event_id` was accepted and is still remembered at `watermark`.
    #[cfg(test)]
    pub(crate) fn is_duplicate(&self, event_id: &str, watermark: Option<Millis>) -> bool {
        match self.seen.get(event_id) {
            None => false,
            Some(&t) => watermark.is_none_or(|w| t + self.window_ms > w),
        }
    }

    /// Remembers an accepted event.
    pub fn insert(&mut self, event_id: &str, event_time: Millis) {
        *self.seen.get_or_insert_with(event_id, || event_time) = event_time;
    }

    /// Whether `event_id` is new at `watermark` ([`Dedup::is_duplicate`] is
    /// false); if so, remembers it at `event_time`. Two hash lookups of the id
    /// for a new one, one for a duplicate.
    pub(crate) fn accept(
        &mut self,
        event_id: &str,
        event_time: Millis,
        watermark: Option<Millis>,
    ) -> bool {
        match self.seen.get(event_id).copied() {
            Some(t) if watermark.is_none_or(|w| t + self.window_ms > w) => false,
            // Remembered, but expired: remembered again from this event.
            Some(_) => {
                self.insert(event_id, event_time);
                true
            }
            None => {
                self.seen.insert(Box::from(event_id), event_time);
                true
            }
        }
    }

    /// Frees expired ids; amortised: a full pass at most every quarter window of watermark progress.
    pub fn sweep(&mut self, watermark: Millis) {
        let due = self
            .swept_at
            .is_none_or(|s| watermark - s >= (self.window_ms / 4).max(1));
        if due {
            let window = self.window_ms;
            self.seen.retain(|_, t| {
                if *t + window > watermark {
                    Kept::Unchanged
                } else {
                    Kept::Removed
                }
            });
            self.swept_at = Some(watermark);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

impl Merge for Dedup {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        (self.window_ms, self.swept_at) = (newer.window_ms, newer.swept_at);
        self.seen.merge(newer.seen)
    }

    fn saved(&mut self) {
        self.seen.saved();
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
}
