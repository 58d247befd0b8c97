//! Back-pressure on consumption: the assigned partitions are paused while output in flight is at its bound, and resumed once it drained.
//!
//! The consumer loop keeps polling while paused, so rebalance callbacks, statistics
//! and the group membership carry on; only fetching stops. librdkafka drops the
//! records it had fetched for a paused partition and fetches again from the last
//! record handed to the loop when it resumes, so nothing is skipped and nothing is
//! applied twice. An application pause outlives a rebalance in librdkafka (a
//! partition revoked while paused comes back paused), so the pause is renewed on
//! the new assignment, and resuming resumes every partition paused since.
//! While paused, no partition counts as caught up, so none turns idle and lets the
//! watermark move on without it (SPEC §2): records may wait behind the pause.

use std::sync::atomic::Ordering;
use std::time::Instant;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};

use super::consumer::EngagedContext;
use crate::state::TopicPartition;
use crate::telemetry::output::OutputTelemetry;

type Member = StreamConsumer<EngagedContext>;

/// A pause at least this long is logged at `info` when it ends (shorter ones at
/// `debug`: with output in steady demand above the bound they come every round).
const LONG_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the loop paused and when.
struct Paused {
    /// Every partition paused since the pause began (assignments may have changed).
    partitions: TopicPartitionList,
    /// The rebalance count when the current assignment was paused.
    generation: u64,
    /// When the paused time was last added to the counter.
    counted: Instant,
    since: Instant,
}

/// Pauses and resumes consumption; owned by the consumer loop.
pub struct Throttle {
    paused: Option<Paused>,
    telemetry: OutputTelemetry,
}

impl Throttle {
    pub fn new(telemetry: OutputTelemetry) -> Throttle {
        telemetry.consumption_paused.set(0);
        Throttle {
            paused: None,
            telemetry,
        }
    }

    /// Whether consumption is paused.
    pub fn paused(&self) -> bool {
        self.paused.is_some()
    }

    /// After every step of the loop: pauses the assignment when output is at its
    /// bound (`pressure`), resumes once it `drained`, and pauses a new assignment
    /// (`generation`: rebalances seen) while paused.
    pub fn update(
        &mut self,
        consumer: &Member,
        generation: u64,
        pressure: bool,
        drained: bool,
        in_flight: (u64, u64),
    ) {
        match &mut self.paused {
            None if pressure => {
                let assigned = assignment(consumer);
                pause(consumer, &assigned);
                tracing::debug!(
                    records = in_flight.0,
                    bytes = in_flight.1,
                    partitions = assigned.count(),
                    "output in flight at its bound: consumption paused"
                );
                let now = Instant::now();
                self.paused = Some(Paused {
                    partitions: assigned,
                    generation,
                    counted: now,
                    since: now,
                });
                self.telemetry.consumption_paused.set(1);
            }
            None => {}
            Some(p) => {
                let now = Instant::now();
                self.telemetry
                    .consumption_paused_seconds
                    .inc_by((now - p.counted).as_secs_f64());
                p.counted = now;
                if drained {
                    let mut all = p.partitions.clone();
                    for e in assignment(consumer).elements() {
                        all.add_partition(e.topic(), e.partition());
                    }
                    if let Err(e) = consumer.resume(&all) {
                        tracing::warn!(error = %e, "resuming consumption");
                    }
                    // Caught up again as the next statistics say.
                    consumer.context().paused.store(false, Ordering::SeqCst);
                    let paused = p.since.elapsed();
                    if paused >= LONG_PAUSE {
                        tracing::info!(?paused, "output drained: consumption resumed");
                    } else {
                        tracing::debug!(?paused, "output drained: consumption resumed");
                    }
                    self.paused = None;
                    self.telemetry.consumption_paused.set(0);
                } else if generation != p.generation {
                    // A rebalance while paused: the new assignment is fetched until paused too.
                    let assigned = assignment(consumer);
                    pause(consumer, &assigned);
                    for e in assigned.elements() {
                        p.partitions.add_partition(e.topic(), e.partition());
                    }
                    p.generation = generation;
                }
            }
        }
    }
}

fn assignment(consumer: &Member) -> TopicPartitionList {
    consumer.assignment().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the assignment");
        TopicPartitionList::new()
    })
}

/// Pauses `partitions`; none of them counts as caught up until consumption resumes.
fn pause(consumer: &Member, partitions: &TopicPartitionList) {
    let context = consumer.context();
    context.paused.store(true, Ordering::SeqCst);
    for e in partitions.elements() {
        context
            .pipeline
            .set_caught_up(&TopicPartition::new(e.topic(), e.partition()), false);
    }
    if partitions.count() > 0
        && let Err(e) = consumer.pause(partitions)
    {
        tracing::warn!(error = %e, "pausing consumption");
    }
}
