//! Kafka edge: the consumer group in, records applied in batches on every core, offsets stored after apply.
//!
//! Every record goes through [`Pipeline::handle_record`]; a rejected record is
//! written to the dead-letter topic (original key, value and headers plus the
//! `engaged.*` headers). A batch's dead letters are produced together and all
//! their deliveries awaited before the batch's offsets are marked applied, so no
//! checkpoint covers a dead letter that was not acknowledged. Offsets are stored
//! only after the record is applied or dead-lettered
//! (`enable.auto.offset.store=false`), and auto-commit commits stored offsets,
//! so a crash replays rather than loses. Snapshots go to the snapshot topic
//! every `snapshot_interval`. Output in flight is bounded: while it is at its
//! bound consumption pauses (`throttle`, docs/operations.md "Back-pressure").
//! Shutdown follows SPEC §5: stop fetching, final snapshot, commit, leave the group.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_core::Stream;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;

use super::background::Background;
use super::checkpointer::{Checkpointer, Write};
use super::consumer::{Closing, commit_offsets, consumer, now_ms};
use super::throttle::Throttle;
use crate::config::Config;
use crate::config::kafka::{apply_user_settings, client_config};
use crate::http::Health;
use crate::pipeline::Pipeline;
use crate::registry::SchemaRegistry;
use crate::sink::in_flight::InFlight;
use crate::sink::kafka::{DeadLetter, OutputProducer, dead_letters, producer};
use crate::sink::output::Output;
use crate::snapshot::WindowSnapshot;
use crate::state::{Rejection, TopicPartition};

/// Why the Kafka edge stopped with an error (who must act: the operator).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Kafka client error: {0}")]
    Kafka(#[from] KafkaError),
    #[error("input topic `{0}` does not exist (or has no partitions)")]
    MissingTopic(String),
    #[error(
        "checkpoint topic `{0}` does not exist and could not be created: create it \
         (compacted, any partition count), or set `checkpoint_topic`"
    )]
    MissingCheckpointTopic(String),
    #[error(
        "input topics are not co-partitioned: {0}. Every input topic needs the same partition \
         count (SPEC §1), keyed by customer_id"
    )]
    NotCoPartitioned(String),
    #[error("graceful shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
    #[error("checkpointing: {0}")]
    Checkpoint(String),
}

/// SPEC §1 co-partitioning: every input topic exists with one partition count.
pub fn check_co_partitioning<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topics: &[String],
    timeout: Duration,
) -> Result<usize, SourceError> {
    let mut counts = vec![];
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), timeout)?;
        let n = md
            .topics()
            .iter()
            .find(|m| m.name() == t && m.error().is_none())
            .map_or(0, |m| m.partitions().len());
        if n == 0 {
            return Err(SourceError::MissingTopic(t.clone()));
        }
        counts.push((t.clone(), n));
    }
    let first = counts[0].1;
    if counts.iter().any(|(_, n)| *n != first) {
        let list = counts
            .iter()
            .map(|(t, n)| format!("{t} has {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(SourceError::NotCoPartitioned(list));
    }
    Ok(first)
}

/// Creates the checkpoint topic if it does not exist, as Kafka Streams creates its
/// changelog topics: compacted (a hint only — restore never relies on it), with
/// the input topics' partition count and the broker's default replication.
async fn ensure_checkpoint_topic<C: ConsumerContext>(
    cfg: &Config,
    consumer: &impl Consumer<C>,
    partitions: usize,
) -> Result<(), SourceError> {
    let topic = &cfg.checkpoint_topic;
    tracing::debug!(%topic, "checking the checkpoint topic");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let exists = md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if exists {
        return Ok(());
    }
    let mut c = client_config(cfg);
    apply_user_settings(&mut c, &cfg.kafka, &BTreeMap::new());
    let admin: AdminClient<DefaultClientContext> = c.create()?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    // -1: the broker's default replication factor (KIP-464); 1 where that is not understood.
    for replication in [-1, 1] {
        let new = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(replication),
        )
        .set("cleanup.policy", "compact")
        .set("retention.ms", "-1");
        tracing::debug!(%topic, replication, "creating the checkpoint topic");
        let result =
            tokio::time::timeout(Duration::from_secs(15), admin.create_topics([&new], &opts))
                .await
                .unwrap_or(Err(KafkaError::AdminOpCreation("timed out".into())));
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "the broker did not create the checkpoint topic");
                break;
            }
        };
        match result.first() {
            Some(Ok(_)) => {
                tracing::info!(%topic, partitions, "created the checkpoint topic");
                return Ok(());
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(()),
            Some(Err((_, e))) => {
                tracing::warn!(%topic, replication, error = %e, "creating the checkpoint topic")
            }
            None => {}
        }
    }
    Err(SourceError::MissingCheckpointTopic(topic.clone()))
}

/// Publishes a snapshot round on Prometheus (via telemetry) and returns it for the
/// snapshot topic.
fn publish_snapshots(pipeline: &Pipeline, health: &Health) -> Option<Vec<WindowSnapshot>> {
    let now = now_ms();
    if pipeline.assigned().is_empty() {
        // Between a revoke and an assignment (or before the first): nothing is owned,
        // so nothing may be published, although task state may still be in memory.
        health.set_not_ready("no partitions assigned");
        return None;
    }
    let Some(snaps) = pipeline.snapshot(now) else {
        if pipeline.assigned().is_empty() {
            health.set_not_ready("no partitions assigned");
        } else {
            health.set_not_ready("waiting for the first watermark");
        }
        return None;
    };
    if pipeline.assigned().is_empty() {
        health.set_not_ready("no partitions assigned");
    } else {
        health.set_ready();
    }
    Some(snaps)
}

/// Runs the sidecar until `shutdown` resolves, then shuts down gracefully (SPEC §5).
/// What woke the consumer loop.
enum Step<'a> {
    Shutdown,
    /// A snapshot round is due (when it was due).
    Snapshot(tokio::time::Instant),
    /// A checkpoint is due (when it was due).
    Checkpoint(tokio::time::Instant),
    /// Output in flight gave room back, and records wait for it (or consumption is paused).
    Room,
    Record(Result<BorrowedMessage<'a>, KafkaError>),
}

/// After a timed step of the loop (a snapshot round, a checkpoint) that was due at
/// `at` and began at `started`: the next is due an interval after this one, but no
/// sooner than this one took after it ended. A step that takes longer than its
/// interval (a large state, a slow machine) was due again as soon as it ended and,
/// first in the loop's order, left nothing else to run (for 128 steps in a row,
/// tokio's task budget); now it has the loop half of the time at most. Returns how
/// long the step took.
fn pace(
    interval: &mut tokio::time::Interval,
    at: tokio::time::Instant,
    started: tokio::time::Instant,
) -> Duration {
    let now = tokio::time::Instant::now();
    interval.reset_at(next_due(at, started, interval.period(), now));
    now - started
}

/// When the step after one due at `at`, begun at `started` and ended at `now`, is due.
fn next_due(
    at: tokio::time::Instant,
    started: tokio::time::Instant,
    period: Duration,
    now: tokio::time::Instant,
) -> tokio::time::Instant {
    // Begun late (the loop was busy): a period after it began, like tokio's
    // `MissedTickBehavior::Delay`, rather than a burst of steps to catch up.
    let from = if started > at + Duration::from_millis(5) {
        started
    } else {
        at
    };
    (from + period).max(now + (now - started))
}

/// Records taken from librdkafka's queue per step of the consumer loop at most. Large:
/// librdkafka queues a partition's records in fetch-sized runs (thousands), and a batch
/// must span several partitions for its tasks to apply in parallel (measured on the
/// 2-core throughput bench: 4,096 kept 1.15 cores busy, 32,768 about 1.35).
const MAX_BATCH: usize = 32_768;
/// Below this many records a batch is applied on the loop's thread.
const PARALLEL_FROM: usize = 256;

/// Applies a batch of records: grouped by task (partition number) and, in a task,
/// by topic-partition, each in consumed order; the tasks on up to `workers`
/// threads. Tasks share no state (SPEC §1 co-partitioning) and a task's numbers do
/// not depend on how its topics interleave (SPEC §2), so the result does not
/// depend on the grouping. Then the rejected records go to the dead-letter topic,
/// enqueued in consumed order, and once every one is acknowledged the batch's
/// records count as applied (a checkpoint covers only applied offsets).
async fn apply_batch(
    pipeline: &Pipeline,
    checkpointer: &Checkpointer,
    producer: &OutputProducer,
    cfg: &Config,
    batch: &[BorrowedMessage<'_>],
    workers: usize,
) -> Result<(), SourceError> {
    let now = now_ms();
    // Per task, per topic-partition (first seen first), the records' indices in consumed order.
    let mut tps: Vec<TopicPartition> = vec![];
    // Per topic-partition of `tps`: records below this offset are in the restored state.
    let mut restored: Vec<Option<i64>> = vec![];
    let mut tasks: BTreeMap<i32, Vec<(usize, Vec<usize>)>> = BTreeMap::new();
    let mut of_record = Vec::with_capacity(batch.len());
    for (i, msg) in batch.iter().enumerate() {
        let (topic, partition) = (msg.topic(), msg.partition());
        let t = match tps
            .iter()
            .position(|tp| tp.partition == partition && &*tp.topic == topic)
        {
            Some(t) => t,
            None => {
                let tp = pipeline.engine().topic_partition(topic, partition);
                restored.push(checkpointer.restored_up_to(&tp));
                tps.push(tp);
                tps.len() - 1
            }
        };
        of_record.push(t);
        // Applied before the checkpoint it was restored from.
        if restored[t].is_some_and(|r| msg.offset() < r) {
            continue;
        }
        let groups = tasks.entry(partition).or_default();
        match groups.iter_mut().find(|(g, _)| *g == t) {
            Some((_, records)) => records.push(i),
            None => groups.push((t, vec![i])),
        }
    }
    let apply = |groups: &[(usize, Vec<usize>)]| -> Vec<(usize, Result<(), Rejection>)> {
        let mut out = vec![];
        for (t, records) in groups {
            let payloads = records.iter().map(|&i| batch[i].payload());
            let results = pipeline.handle_records(&tps[*t], payloads, now);
            out.extend(records.iter().copied().zip(results));
        }
        out
    };
    let tasks: Vec<Vec<(usize, Vec<usize>)>> = tasks.into_values().collect();
    let threads = workers.min(tasks.len());
    let done: Vec<(usize, Result<(), Rejection>)> = if threads <= 1 || batch.len() < PARALLEL_FROM {
        tasks.iter().flat_map(|g| apply(g)).collect()
    } else {
        // Largest task first, each taken by the next free thread (the loop's own
        // among them): a batch's partitions are seldom of one size, and dealing
        // them round-robin left a thread idle while another finished a large one.
        let mut order: Vec<usize> = (0..tasks.len()).collect();
        order.sort_by_key(|&t| {
            std::cmp::Reverse(tasks[t].iter().map(|(_, r)| r.len()).sum::<usize>())
        });
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || {
            let mut out = vec![];
            while let Some(&t) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                out.extend(apply(&tasks[t]));
            }
            out
        };
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
            let mut done = work();
            for h in helpers {
                done.extend(
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                );
            }
            done
        })
    };
    let mut results: Vec<Option<Result<(), Rejection>>> = vec![None; batch.len()];
    for (i, r) in done {
        results[i] = Some(r);
    }
    let mut last: Vec<Option<i64>> = vec![None; tps.len()];
    let mut letters = vec![];
    for (i, (msg, result)) in batch.iter().zip(results).enumerate() {
        let Some(result) = result else {
            continue; // applied before the checkpoint it was restored from
        };
        let tp = &tps[of_record[i]];
        if let Err(rejection) = result {
            tracing::debug!(%tp, offset = msg.offset(), reason = rejection.reason.as_str(), error = %rejection.message, "rejected");
            letters.push(DeadLetter::new(msg, tp, &rejection));
        }
        last[of_record[i]] = Some(msg.offset());
    }
    // One produce round trip per record drained a burst of bad records at ~180/s.
    let dead_letter_records = &pipeline.telemetry().dead_letters;
    dead_letters(producer, &cfg.dead_letter_topic, &letters, || {
        dead_letter_records.inc()
    })
    .await?;
    for (tp, offset) in tps.iter().zip(last) {
        if let Some(offset) = offset {
            checkpointer.applied(tp, offset);
        }
    }
    Ok(())
}

pub async fn run(
    cfg: &Config,
    pipeline: Arc<Pipeline>,
    health: Arc<Health>,
    registry: Option<Arc<SchemaRegistry>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    let telemetry = pipeline.telemetry().output.clone();
    let in_flight = InFlight::new(
        cfg.max_output_in_flight,
        cfg.max_output_in_flight_bytes,
        telemetry.clone(),
    );
    let producer = producer(cfg, health.clone(), in_flight)?;
    let output = Output::new(producer.clone(), cfg, telemetry.clone());
    let mut throttle = Throttle::new(telemetry);
    let mut base = client_config(cfg);
    apply_user_settings(&mut base, &cfg.kafka, &BTreeMap::new());
    let checkpointer = Arc::new(Checkpointer::new(
        base,
        &cfg.kafka_producer,
        &cfg.group_id,
        &cfg.checkpoint_topic,
        &cfg.input_topics,
    )?);
    let mut consumer = Closing::new(
        consumer(cfg, pipeline.clone(), checkpointer.clone(), health.clone())?,
        cfg.shutdown_timeout,
    );
    let partitions = check_co_partitioning(&*consumer, &cfg.input_topics, Duration::from_secs(30))?;
    if let Some(limit) = cfg.max_memory {
        let all = crate::state::memory::fixed_bytes_per_task(&cfg.core) * partitions as u64;
        if all > limit {
            tracing::warn!(
                partitions,
                fixed_state_bytes = all,
                max_memory = limit,
                "all partitions' fixed state would not fit in `max_memory` on one instance: \
                 run enough instances in the group that each holds its share"
            );
        }
    }
    ensure_checkpoint_topic(cfg, &*consumer, partitions).await?;
    tracing::info!(topics = ?cfg.input_topics, partitions, group = %cfg.group_id, "subscribing");
    let topics: Vec<&str> = cfg.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    health.set_not_ready("waiting for partition assignment");

    let mut tick = tokio::time::interval(cfg.snapshot_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpoint_tick = tokio::time::interval(cfg.checkpoint_interval);
    checkpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checkpoint_tick.tick().await;
    let background = Background::start(&pipeline, cfg.model_refit_interval, cfg.snapshot_interval);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::pin!(shutdown);
    loop {
        if let Some(why) = consumer.context().take_fatal() {
            return Err(SourceError::Checkpoint(why));
        }
        let waiting = std::time::Instant::now();
        let step = tokio::select! {
            biased;
            _ = &mut shutdown => Step::Shutdown,
            at = tick.tick() => Step::Snapshot(at),
            at = checkpoint_tick.tick() => Step::Checkpoint(at),
            _ = output.released(), if throttle.paused() || output.waiting() => Step::Room,
            msg = consumer.recv() => Step::Record(msg),
        };
        pipeline
            .telemetry()
            .consumer_idle
            .inc_by(waiting.elapsed().as_secs_f64());
        match step {
            Step::Shutdown => break,
            Step::Room => output.pump(),
            Step::Snapshot(at) => {
                let started = tokio::time::Instant::now();
                if let Some(snaps) = publish_snapshots(&pipeline, &health) {
                    output.round(&snaps);
                }
                output.risks(pipeline.take_risk_changes());
                output.pump();
                // A round written in the background: commit its offsets once acknowledged.
                let commit = checkpointer
                    .collect(&pipeline, false)
                    .map_err(|e| SourceError::Checkpoint(e.to_string()))?;
                commit_offsets(&*consumer, &commit);
                if let Some(age) = checkpointer.age() {
                    pipeline.telemetry().checkpoint_age.set(age.as_secs_f64());
                }
                let took = pace(&mut tick, at, started);
                pipeline
                    .telemetry()
                    .snapshot_loop
                    .inc_by(took.as_secs_f64());
            }
            Step::Checkpoint(at) => {
                let started = tokio::time::Instant::now();
                let commit = checkpointer
                    .checkpoint(&pipeline, None, Write::Background)
                    .map_err(|e| SourceError::Checkpoint(e.to_string()))?;
                commit_offsets(&*consumer, &commit);
                pace(&mut checkpoint_tick, at, started);
            }
            Step::Record(Ok(first)) => {
                // Everything librdkafka already holds, up to a batch: tasks apply in parallel.
                let mut batch = vec![first];
                let mut error = None;
                let rebalances = || consumer.context().rebalances.load(Ordering::SeqCst);
                let mut generation = rebalances();
                // What librdkafka already holds, without waiting: one message
                // stream polled with a no-op waker (a `recv()` per message
                // registered and dropped a waker slot each time, and a zero
                // timeout armed a timer: the batch loop ran at a third of a
                // plain poll's rate).
                {
                    // Not held across an await: a Context is not Send.
                    let mut held = consumer.stream();
                    let mut ready = std::task::Context::from_waker(std::task::Waker::noop());
                    while batch.len() < MAX_BATCH {
                        let next = match std::pin::Pin::new(&mut held).poll_next(&mut ready) {
                            std::task::Poll::Ready(Some(next)) => Ok(next),
                            _ => Err(()),
                        };
                        if rebalances() != generation {
                            // The rebalance checkpointed what was applied and set where
                            // consumption resumes: records taken before it are not
                            // applied (they are fetched again where still owned).
                            generation = rebalances();
                            batch.clear();
                        }
                        match next {
                            Ok(Ok(msg)) => batch.push(msg),
                            Ok(Err(e)) => {
                                error = Some(e);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                pipeline
                    .telemetry()
                    .consumer_batch
                    .observe(batch.len() as f64);
                if let Some(registry) = &registry {
                    let records = batch.iter().map(|m| (m.topic(), m.payload()));
                    registry.prepare(&pipeline, records).await;
                }
                apply_batch(&pipeline, &checkpointer, &producer, cfg, &batch, workers).await?;
                if let Some(e) = error {
                    tracing::warn!(error = %e, "consumer error");
                    health.set_not_ready(format!("consumer error: {e}"));
                }
            }
            Step::Record(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                health.set_not_ready(format!("consumer error: {e}"));
            }
        }
        throttle.update(
            &consumer,
            consumer.context().rebalances.load(Ordering::SeqCst),
            output.pressure(),
            output.drained(),
            output.in_flight(),
        );
    }

    drop(background);
    tracing::info!("shutting down: final snapshot, checkpoint, commit, leave group");
    // Leaving the group (dropping the consumer) waits for the rest of the time at most.
    consumer.close_by(std::time::Instant::now() + cfg.shutdown_timeout);
    let graceful = async {
        let last = publish_snapshots(&pipeline, &health);
        health.set_not_ready("shutting down");
        // The final round and every waiting customer-risk record, acknowledged before
        // the checkpoint that marks those records published; at most half the time
        // allowed, the checkpoint needs the rest.
        let drain = output.finish(last, pipeline.take_risk_changes());
        if tokio::time::timeout(cfg.shutdown_timeout / 2, drain)
            .await
            .is_err()
        {
            let (records, bytes) = output.in_flight();
            tracing::warn!(
                records,
                bytes,
                customer_risks_waiting = output.risks_waiting(),
                "final output not acknowledged within half of `shutdown_timeout`"
            );
        }
        let commit = checkpointer
            .checkpoint(&pipeline, None, Write::Wait)
            .map_err(|e| SourceError::Checkpoint(e.to_string()))?;
        commit_offsets(&*consumer, &commit);
        consumer.unsubscribe();
        Ok::<(), SourceError>(())
    };
    tokio::time::timeout(cfg.shutdown_timeout, graceful)
        .await
        .map_err(|_| SourceError::ShutdownTimeout(cfg.shutdown_timeout))??;
    drop(consumer);
    Ok(())
}

#[cfg(test)]
mod tests;
