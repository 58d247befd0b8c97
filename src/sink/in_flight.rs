//! The bound on output in flight: records produced to the output topics and not yet acknowledged, counted and in bytes.
//!
//! Snapshots, customer risks and dead letters share it (one producer, one queue):
//! each record takes a [`Slot`] before it is enqueued and gives it back when its
//! delivery report arrives, acknowledged or failed. Nothing here talks to Kafka.
//! The consumer loop is the only task that waits for room ([`InFlight::released`]):
//! the dead letters of a batch and the output of a snapshot tick are both produced
//! from it, so one stored wake-up is enough and none is lost.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::telemetry::output::OutputTelemetry;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    records: u64,
    bytes: u64,
}

/// Output records and bytes in flight, against `max_output_in_flight` and
/// `max_output_in_flight_bytes`.
pub struct InFlight {
    max_records: u64,
    max_bytes: u64,
    counts: Mutex<Counts>,
    peak: Mutex<Counts>,
    room: Notify,
    telemetry: OutputTelemetry,
}

/// Room for one record in flight; given back when dropped (after its delivery report).
#[must_use = "the record's room is given back when the slot is dropped"]
pub struct Slot {
    owner: Arc<InFlight>,
    bytes: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.release(self.bytes);
    }
}

impl InFlight {
    pub fn new(max_records: usize, max_bytes: u64, telemetry: OutputTelemetry) -> Arc<InFlight> {
        let max_records = max_records as u64;
        telemetry
            .in_flight_limit_records
            .set(i64::try_from(max_records).unwrap_or(i64::MAX));
        telemetry
            .in_flight_limit_bytes
            .set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        Arc::new(InFlight {
            max_records,
            max_bytes,
            counts: Mutex::new(Counts::default()),
            peak: Mutex::new(Counts::default()),
            room: Notify::new(),
            telemetry,
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for one record of `bytes`, if it fits within both bounds. A record
    /// larger than the byte bound alone goes when nothing else is in flight (so it
    /// cannot wait for ever); `max_output_in_flight_bytes` is at least 1 MiB, above
    /// librdkafka's default `message.max.bytes`, so only a raised limit allows one.
    pub fn try_acquire(self: &Arc<Self>, bytes: u64) -> Option<Slot> {
        let mut c = self.counts();
        let fits = c.records < self.max_records && c.bytes.saturating_add(bytes) <= self.max_bytes;
        if !(fits || c.records == 0) {
            return None;
        }
        c.records += 1;
        c.bytes = c.bytes.saturating_add(bytes);
        let now = *c;
        drop(c);
        self.show(now);
        let mut peak = self.peak.lock().unwrap_or_else(|e| e.into_inner());
        if now.records > peak.records || now.bytes > peak.bytes {
            peak.records = peak.records.max(now.records);
            peak.bytes = peak.bytes.max(now.bytes);
            let t = &self.telemetry;
            t.in_flight_peak_records
                .set(i64::try_from(peak.records).unwrap_or(i64::MAX));
            t.in_flight_peak_bytes
                .set(i64::try_from(peak.bytes).unwrap_or(i64::MAX));
        }
        Some(Slot {
            owner: self.clone(),
            bytes,
        })
    }

    fn release(&self, bytes: u64) {
        let mut c = self.counts();
        c.records = c.records.saturating_sub(1);
        c.bytes = c.bytes.saturating_sub(bytes);
        let now = *c;
        drop(c);
        self.show(now);
        self.room.notify_one();
    }

    fn show(&self, c: Counts) {
        let t = &self.telemetry;
        t.in_flight_records
            .set(i64::try_from(c.records).unwrap_or(i64::MAX));
        t.in_flight_bytes
            .set(i64::try_from(c.bytes).unwrap_or(i64::MAX));
    }

    /// Records and bytes in flight now.
    pub fn now(&self) -> (u64, u64) {
        let c = self.counts();
        (c.records, c.bytes)
    }

    /// Whether either bound is reached.
    pub fn at_bound(&self) -> bool {
        let c = self.counts();
        c.records >= self.max_records || c.bytes >= self.max_bytes
    }

    /// Whether both counts are at most half their bound: paused consumption
    /// resumes only then, so that it does not pause again at the next record.
    pub fn below_low_water(&self) -> bool {
        let c = self.counts();
        c.records <= self.max_records / 2 && c.bytes <= self.max_bytes / 2
    }

    /// Resolves once a slot was given back since the last call (at once if one
    /// was meanwhile): check again for room then.
    pub async fn released(&self) {
        self.room.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    fn bound(records: usize, bytes: u64) -> (Arc<InFlight>, Telemetry) {
        let t = Telemetry::new();
        (InFlight::new(records, bytes, t.output.clone()), t)
    }

    #[test]
    fn records_and_bytes_stay_within_their_bounds() {
        let (f, t) = bound(3, 100);
        let a = f.try_acquire(40).expect("room");
        let b = f.try_acquire(40).expect("room");
        assert!(f.try_acquire(30).is_none(), "110 bytes > 100");
        let c = f.try_acquire(20).expect("room");
        assert!(f.at_bound());
        assert!(f.try_acquire(0).is_none(), "3 records");
        assert_eq!(f.now(), (3, 100));
        assert_eq!(t.output.in_flight_records.get(), 3);
        drop(b);
        assert_eq!(f.now(), (2, 60));
        assert!(!f.at_bound() && !f.below_low_water());
        drop(a);
        assert!(f.below_low_water());
        drop(c);
        assert_eq!(f.now(), (0, 0));
        assert_eq!(t.output.in_flight_bytes.get(), 0);
        assert_eq!(t.output.in_flight_peak_records.get(), 3);
        assert_eq!(t.output.in_flight_peak_bytes.get(), 100);
        assert_eq!(t.output.in_flight_limit_records.get(), 3);
    }

    #[test]
    fn a_record_larger_than_the_byte_bound_goes_alone() {
        let (f, _t) = bound(10, 100);
        let big = f.try_acquire(500).expect("nothing else in flight");
        assert!(f.try_acquire(1).is_none());
        drop(big);
        let small = f.try_acquire(1).expect("room");
        assert!(f.try_acquire(500).is_none(), "not beside another record");
        drop(small);
    }

    #[tokio::test]
    async fn a_released_slot_wakes_the_waiter_even_if_released_first() {
        let (f, _t) = bound(1, 100);
        let slot = f.try_acquire(1).expect("room");
        drop(slot);
        // Released before anyone waited: the stored wake-up is not lost.
        tokio::time::timeout(std::time::Duration::from_secs(5), f.released())
            .await
            .expect("woken");
        let slot = f.try_acquire(1).expect("room");
        let waiter = {
            let f = f.clone();
            tokio::spawn(async move { f.released().await })
        };
        tokio::task::yield_now().await;
        drop(slot);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
