//! A bounded history of published snapshot rounds, for the live page's charts.
//!
//! Kept where the rounds are published ([`super::Telemetry::publish`]), so the page
//! never reads engine state. Only the `all` rows are kept, without their source
//! partitions, at most one round per [`STEP_MS`] of wall time (a newer round in the
//! same step replaces the older), and nothing older than [`SPAN_MS`]: at most
//! `SPAN_MS / STEP_MS + 1` points of a few kilobytes each, whatever the snapshot
//! interval or the number of partitions.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::event::Millis;
use crate::snapshot::WindowSnapshot;

/// How much wall time the history covers.
pub const SPAN_MS: Millis = 3_600_000;
/// Wall time between two kept points.
pub const STEP_MS: Millis = 10_000;

/// One published round, as the charts need it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPoint {
    /// Sequence number of the round (1 = the first published by this process).
    pub seq: u64,
    /// Wall-clock time of publication, Unix milliseconds.
    pub published_ms: Millis,
    /// The round's `all` rows (one per window), without source partitions.
    pub snapshots: Vec<WindowSnapshot>,
}

/// The last [`SPAN_MS`] of rounds, one per [`STEP_MS`], oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Shared, so that a reader copies pointers, not snapshots.
    points: VecDeque<Arc<HistoryPoint>>,
}

impl History {
    /// Records round `seq` published at `now_ms`; drops what is older than the span.
    pub fn record(&mut self, seq: u64, now_ms: Millis, snapshots: &[WindowSnapshot]) {
        let point = HistoryPoint {
            seq,
            published_ms: now_ms,
            snapshots: snapshots
                .iter()
                .filter(|s| s.dimension == "all")
                .map(|s| WindowSnapshot {
                    partitions: vec![],
                    ..s.clone()
                })
                .collect(),
        };
        let step = |t: Millis| t.div_euclid(STEP_MS);
        match self.points.back_mut() {
            // The wall clock may step back: never keep points out of order.
            Some(last) if step(last.published_ms) >= step(now_ms) => *last = Arc::new(point),
            _ => self.points.push_back(Arc::new(point)),
        }
        while self
            .points
            .front()
            .is_some_and(|p| p.published_ms < now_ms - SPAN_MS)
        {
            self.points.pop_front();
        }
    }

    pub fn points(&self) -> impl ExactSizeIterator<Item = &Arc<HistoryPoint>> {
        self.points.iter()
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SourcePartition;

    fn round(views: i64) -> Vec<WindowSnapshot> {
        ["5m", "1h"]
            .iter()
            .flat_map(|w| {
                let all = WindowSnapshot {
                    window: w.to_string(),
                    dimension: "all".into(),
                    page_views: views,
                    partitions: vec![SourcePartition {
                        topic: "pageviews".into(),
                        partition: 0,
                    }],
                    ..WindowSnapshot::default()
                };
                let site = WindowSnapshot {
                    dimension: "site".into(),
                    dimension_value: Some("shop.example".into()),
                    ..all.clone()
                };
                [all, site]
            })
            .collect()
    }

    #[test]
    fn keeps_one_point_per_step_over_the_span_only_all_rows_without_partitions() {
        let mut h = History::default();
        let t0 = 1_000 * STEP_MS;
        // A round every 2 s for two hours.
        for i in 0..3_600 {
            h.record(i + 1, t0 + i as Millis * 2_000, &round(i as i64));
        }
        let bound = (SPAN_MS / STEP_MS + 1) as usize;
        assert!(h.len() <= bound && h.len() >= bound - 1, "{}", h.len());
        let points: Vec<_> = h.points().collect();
        let last = points.last().unwrap();
        // The newest round is always there (it replaced the older one of its step).
        assert_eq!(last.seq, 3_600);
        assert_eq!(last.snapshots.len(), 2);
        assert!(last.snapshots.iter().all(|s| s.dimension == "all"));
        assert!(last.snapshots.iter().all(|s| s.partitions.is_empty()));
        assert_eq!(last.snapshots[0].page_views, 3_599);
        assert!(points[0].published_ms >= last.published_ms - SPAN_MS);
        assert!(
            points
                .windows(2)
                .all(|w| w[0].published_ms < w[1].published_ms && w[0].seq < w[1].seq)
        );
    }

    #[test]
    fn a_wall_clock_that_steps_back_never_reorders_points() {
        let mut h = History::default();
        h.record(1, 50 * STEP_MS, &round(1));
        h.record(2, 40 * STEP_MS, &round(2));
        assert_eq!(h.len(), 1);
        assert_eq!(h.points().next().unwrap().seq, 2);
    }
}
