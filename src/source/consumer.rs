//! The consumer group member: rebalances that checkpoint, restore and hand over task state; statistics; offset commits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use super::checkpointer::{Checkpointer, Write};
use crate::config::Config;
use crate::config::kafka::{apply_user_settings, client_config};
use crate::event::Millis;
use crate::http::Health;
use crate::pipeline::Pipeline;
use crate::state::TopicPartition;

pub(super) fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

fn tps(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

/// Consumer context: rebalances checkpoint, restore and hand over task state;
/// statistics feed the lag gauge.
pub struct EngagedContext {
    pub(super) pipeline: Arc<Pipeline>,
    checkpointer: Arc<Checkpointer>,
    health: Arc<Health>,
    restore_timeout: Duration,
    /// A failure the consumer loop must stop on (restore or checkpoint on revoke).
    fatal: Mutex<Option<String>>,
    /// Tasks of the last assignment: only those can be kept through a rebalance.
    owned: Mutex<Vec<i32>>,
    /// Rebalances seen: records received before one are not applied after it.
    pub(super) rebalances: std::sync::atomic::AtomicU64,
    /// Consumption is paused (`throttle`): a partition is not caught up meanwhile.
    pub(super) paused: std::sync::atomic::AtomicBool,
}

impl EngagedContext {
    fn fail(&self, why: String) {
        tracing::error!(error = %why, "stopping");
        self.health.set_not_ready(why.clone());
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    pub(super) fn take_fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl ClientContext for EngagedContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_brokers_up(false);
        }
        tracing::warn!(%error, reason, "Kafka client");
    }

    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().any(|b| b.state == "UP");
        self.health.set_brokers_up(up);
        let lag = &self.pipeline.telemetry().consumer_lag;
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                // Lag behind what was applied: the high watermark of the fetch responses
                // (right on every broker, unlike ListOffsets on Tansu) minus our position.
                let tp = TopicPartition::new(topic, *partition);
                let v = match self.checkpointer.applied_offset(&tp) {
                    Some(applied) if p.hi_offset >= 0 => (p.hi_offset - applied).max(0),
                    _ => p.consumer_lag,
                };
                // Idle means silent *and* caught up: a stalled consumer is not idle, nor
                // a paused one (its high watermark is not fetched while paused).
                if p.hi_offset >= 0 {
                    let applied = self.checkpointer.applied_offset(&tp).unwrap_or(0);
                    let paused = self.paused.load(std::sync::atomic::Ordering::SeqCst);
                    self.pipeline
                        .set_caught_up(&tp, !paused && applied >= p.hi_offset);
                }
                if v >= 0 {
                    lag.with_label_values(&[topic, &partition.to_string()])
                        .set(v);
                }
            }
        }
    }
}

impl ConsumerContext for EngagedContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match rebalance {
            Rebalance::Revoke(list) => self.on_revoke(consumer, list),
            // Before librdkafka applies the assignment: the tasks are restored and every
            // partition's start offset is set in the list it is about to assign.
            Rebalance::Assign(list) => self.on_assign(list),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

impl EngagedContext {
    fn on_revoke(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) {
        let revoked = tps(list);
        tracing::info!(partitions = ?revoked.iter().map(|t| t.to_string()).collect::<Vec<_>>(), "revoked");
        // Checkpoint and commit before another member takes over; the state stays
        // in memory in case the same tasks come back in this rebalance.
        let tasks: Vec<i32> = task_numbers(&revoked);
        match self
            .checkpointer
            .checkpoint(&self.pipeline, Some(&tasks), Write::Wait)
        {
            Ok(commit) => commit_offsets(consumer, &commit),
            Err(e) => self.fail(format!("checkpoint on revoke failed: {e}")),
        }
        self.pipeline.revoke(&revoked);
    }

    fn on_assign(&self, list: &TopicPartitionList) {
        let assigned = tps(list);
        tracing::info!(partitions = ?assigned.iter().map(|t| t.to_string()).collect::<Vec<_>>(), "assigned");
        let owned: Vec<i32> = task_numbers(&assigned);
        // Kept: tasks this member owned in its last assignment and still holds; any
        // other state in memory is dropped and restored from its checkpoint.
        let previous = std::mem::take(&mut *self.owned.lock().unwrap_or_else(|e| e.into_inner()));
        let in_memory = self.pipeline.engine().tasks();
        let held: Vec<i32> = in_memory
            .iter()
            .copied()
            .filter(|t| previous.contains(t) && owned.contains(t))
            .collect();
        let dropped: Vec<i32> = in_memory
            .iter()
            .copied()
            .filter(|t| !held.contains(t))
            .collect();
        for t in &dropped {
            self.pipeline.engine().drop_task(*t);
        }
        self.checkpointer.forget(&dropped);
        *self.owned.lock().unwrap_or_else(|e| e.into_inner()) = owned.clone();
        let new: Vec<i32> = owned
            .iter()
            .copied()
            .filter(|t| !held.contains(t))
            .collect();
        // Kept tasks resume after what they applied (the group's committed offset may
        // lag behind: a commit refused during the rebalance).
        let kept: Vec<TopicPartition> = assigned
            .iter()
            .filter(|tp| held.contains(&tp.partition))
            .cloned()
            .collect();
        let mut start = self.checkpointer.keep(&kept);
        tracing::info!(owned = ?owned, held = ?held, new = ?new, "tasks after assignment");
        self.pipeline.assign(&assigned, now_ms());
        if !new.is_empty() {
            self.health
                .set_not_ready(format!("restoring tasks {new:?}"));
            match self
                .checkpointer
                .restore(&self.pipeline, &new, self.restore_timeout)
            {
                Ok(restored) => {
                    start.extend(restored);
                    self.health.set_ready();
                }
                Err(e) => self.fail(format!("restoring tasks {new:?} failed: {e}")),
            }
        }
        // Seek to the checkpoints' offsets: whatever the group committed, a restored
        // task continues exactly after the last record its state contains.
        for mut e in list.elements() {
            let tp = TopicPartition::new(e.topic(), e.partition());
            if let Some(offset) = start.get(&tp)
                && let Err(err) = e.set_offset(*offset)
            {
                self.fail(format!("cannot start {tp} at {offset:?}: {err}"));
            }
        }
    }
}

fn task_numbers(tps: &[TopicPartition]) -> Vec<i32> {
    let mut v: Vec<i32> = tps.iter().map(|tp| tp.partition).collect();
    v.sort();
    v.dedup();
    v
}

pub(super) fn commit_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    offsets: &[(String, i32, i64)],
) {
    if offsets.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        if let Err(e) =
            list.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*offset))
        {
            tracing::warn!(error = %e, %topic, partition, offset, "cannot commit");
        }
    }
    let offsets = &list;
    // Asynchronous: a coordinator that is moving must not stall the consumer loop, and
    // the checkpoint, not the group commit, is what restore relies on.
    if let Err(e) = consumer.commit(offsets, CommitMode::Async) {
        // The checkpoint holds the offsets that matter; the group commit only saves re-reading.
        tracing::warn!(error = %e, "committing checkpointed offsets");
    }
}

/// Builds the consumer group member (not yet subscribed).
pub fn consumer(
    cfg: &Config,
    pipeline: Arc<Pipeline>,
    checkpointer: Arc<Checkpointer>,
    health: Arc<Health>,
) -> Result<StreamConsumer<EngagedContext>, KafkaError> {
    let mut c = client_config(cfg);
    // Offsets are committed only together with a checkpoint (SPEC §5).
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // `range` keeps partition N of every input topic on one member (co-partitioning).
        .set("partition.assignment.strategy", "range")
        // librdkafka stops fetching for `fetch.queue.backoff.ms` (default 1 s) once its
        // local queue holds `queued.min.messages`; engaged drains that queue faster
        // than it refills, so with the default it idled most of the time (measured:
        // 110 k msg/s, 221 k with 10 ms on the same topics). `[kafka_consumer]` overrides.
        .set("fetch.queue.backoff.ms", "10")
        .set(
            "statistics.interval.ms",
            cfg.statistics_interval.as_millis().to_string(),
        );
    apply_user_settings(&mut c, &cfg.kafka, &cfg.kafka_consumer);
    c.create_with_context(EngagedContext {
        pipeline,
        checkpointer,
        health,
        restore_timeout: cfg.restore_timeout,
        fatal: Mutex::new(None),
        owned: Mutex::new(vec![]),
        rebalances: std::sync::atomic::AtomicU64::new(0),
        paused: std::sync::atomic::AtomicBool::new(false),
    })
}

/// The group member of the consumer loop, closed within a bound when dropped.
///
/// Dropping a consumer closes it (librdkafka revokes the assignment and leaves the
/// group; rust-rdkafka polls until that is done) and then destroys it, neither with
/// a limit of its own. After a broker went down and came back, the destroy can wait
/// for good for a broker thread that a leaked partition reference keeps alive
/// (librdkafka issue #4674, open; `tests/back_pressure.rs` takes a broker down and
/// hit it in about one run of ten: `rd_kafka_destroy_app` joining `rdk:main`, which
/// joins `rdk:broker1`, 17 minutes after the final checkpoint). By then the state
/// and its offsets are saved, so the close runs on a thread of its own and is waited
/// for until the deadline (the end of `shutdown_timeout`); a close still running
/// then is logged and left to the process exit.
pub struct Closing<T: Send + 'static = StreamConsumer<EngagedContext>> {
    inner: Option<T>,
    bound: Duration,
    deadline: Option<std::time::Instant>,
}

impl<T: Send + 'static> Closing<T> {
    /// Closed within `bound` of being dropped, unless [`Closing::close_by`] says sooner.
    pub fn new(inner: T, bound: Duration) -> Closing<T> {
        Closing {
            inner: Some(inner),
            bound,
            deadline: None,
        }
    }

    /// Waits for the close until `deadline` at most (the end of the graceful shutdown).
    pub fn close_by(&mut self, deadline: std::time::Instant) {
        self.deadline = Some(deadline);
    }
}

impl<T: Send + 'static> std::ops::Deref for Closing<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.inner.as_ref().expect("only taken in drop")
    }
}

impl<T: Send + 'static> Drop for Closing<T> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let deadline = self
            .deadline
            .unwrap_or_else(|| std::time::Instant::now() + self.bound);
        let (done, closed) = std::sync::mpsc::channel();
        let closing = std::thread::Builder::new()
            .name("consumer-close".into())
            .spawn(move || {
                drop(inner);
                let _ = done.send(());
            });
        if let Err(e) = closing {
            tracing::warn!(error = %e, "no thread to close the consumer on: not waiting for it");
            return;
        }
        // At least a moment: a graceful shutdown that used all of its time still gets
        // the chance to leave the group rather than wait for the session to time out.
        let wait = deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_secs(1));
        if closed.recv_timeout(wait).is_err() {
            tracing::warn!(
                waited = ?wait,
                "the consumer did not close in time (leaving the group); \
                 the state and offsets are saved: going on without it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Takes `takes` to drop, then records that it was dropped.
    struct SlowClose {
        takes: Duration,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for SlowClose {
        fn drop(&mut self) {
            std::thread::sleep(self.takes);
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn slow(takes: Duration) -> (SlowClose, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let c = SlowClose {
            takes,
            dropped: dropped.clone(),
        };
        (c, dropped)
    }

    #[test]
    fn a_close_within_the_bound_is_waited_for() {
        let (c, dropped) = slow(Duration::from_millis(200));
        drop(Closing::new(c, Duration::from_secs(30)));
        assert!(
            dropped.load(Ordering::SeqCst),
            "returned before the close ended"
        );
    }

    #[test]
    fn a_close_that_does_not_end_is_left_behind_at_the_deadline() {
        // A close that never ends within the test (an hour): the drop returns anyway.
        let (c, dropped) = slow(Duration::from_secs(3600));
        let mut closing = Closing::new(c, Duration::from_secs(3600));
        closing.close_by(std::time::Instant::now() + Duration::from_secs(2));
        let (returned, drop_returned) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(closing);
            let _ = returned.send(());
        });
        // A liveness bound, far above the 2 s deadline: the drop used to wait for good.
        assert!(
            drop_returned.recv_timeout(Duration::from_secs(60)).is_ok(),
            "the drop waited for the close past its deadline"
        );
        assert!(!dropped.load(Ordering::SeqCst));
    }
}
