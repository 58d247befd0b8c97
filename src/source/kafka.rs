//! Kafka edge: consumer group in, dead letters and snapshots out, offsets after apply.
//!
//! Every record goes through [`Pipeline::handle_record`]; a rejected record is
//! written to the dead-letter topic (original key, value and headers plus the
//! `engaged.*` headers) and its delivery awaited, and only then is its offset
//! stored. Offsets are stored only after the record is applied or dead-lettered
//! (`enable.auto.offset.store=false`), and auto-commit commits stored offsets,
//! so a crash replays rather than loses. Snapshots go to the snapshot topic
//! every `snapshot_interval`. Shutdown follows SPEC §5: stop fetching, final
//! snapshot, commit, leave the group.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, TopicPartitionList};

use super::background::Background;
use super::checkpointer::{Checkpointer, Write};
use crate::config::Config;
use crate::event::Millis;
use crate::http::Health;
use crate::pipeline::Pipeline;
use crate::sink;
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

fn now_ms() -> Millis {
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
    pipeline: Arc<Pipeline>,
    checkpointer: Arc<Checkpointer>,
    health: Arc<Health>,
    restore_timeout: Duration,
    /// A failure the consumer loop must stop on (restore or checkpoint on revoke).
    fatal: Mutex<Option<String>>,
    /// Tasks of the last assignment: only those can be kept through a rebalance.
    owned: Mutex<Vec<i32>>,
    /// Rebalances seen: records received before one are not applied after it.
    rebalances: std::sync::atomic::AtomicU64,
}

impl EngagedContext {
    fn fail(&self, why: String) {
        tracing::error!(error = %why, "stopping");
        self.health.set_not_ready(why.clone());
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    fn take_fatal(&self) -> Option<String> {
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
                // Idle means silent *and* caught up: a stalled consumer is not idle.
                if p.hi_offset >= 0 {
                    let applied = self.checkpointer.applied_offset(&tp).unwrap_or(0);
                    self.pipeline.set_caught_up(&tp, applied >= p.hi_offset);
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

fn commit_offsets<C: ConsumerContext>(consumer: &impl Consumer<C>, offsets: &[(String, i32, i64)]) {
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

fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    c
}

/// The operator's librdkafka settings win over ours: common ones, then the role's own.
fn apply_user_settings(
    c: &mut ClientConfig,
    common: &BTreeMap<String, String>,
    role: &BTreeMap<String, String>,
) {
    for (k, v) in common.iter().chain(role) {
        c.set(k, v);
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
    })
}

/// The output producer's context: its view of the brokers feeds readiness too (it
/// notices an outage at once, the consumer only at its next fetch).
pub struct ProducerHealth(Arc<Health>);

impl ClientContext for ProducerHealth {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.0.set_brokers_up(false);
        }
        tracing::warn!(%error, reason, "Kafka producer");
    }
}

/// The producer of snapshots, dead letters and customer risks.
pub type OutputProducer = FutureProducer<ProducerHealth>;

pub fn producer(cfg: &Config, health: Arc<Health>) -> Result<OutputProducer, KafkaError> {
    let mut c = client_config(cfg);
    c.set("linger.ms", "5");
    apply_user_settings(&mut c, &cfg.kafka, &cfg.kafka_producer);
    c.create_with_context(ProducerHealth(health))
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

/// Writes a rejected record to the dead-letter topic, retrying until delivered or shut down.
async fn dead_letter(
    producer: &OutputProducer,
    topic: &str,
    msg: &BorrowedMessage<'_>,
    tp: &TopicPartition,
    rejection: &Rejection,
) -> Result<(), KafkaError> {
    let mut headers = OwnedHeaders::new();
    if let Some(h) = msg.headers() {
        for i in 0..h.count() {
            let orig = h.get(i);
            headers = headers.insert(Header {
                key: orig.key,
                value: orig.value,
            });
        }
    }
    for (k, v) in sink::dead_letter_headers(tp, msg.offset(), rejection) {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut attempt = 0u32;
    loop {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).headers(headers.clone());
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        if let Some(p) = msg.payload() {
            record = record.payload(p);
        }
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => return Ok(()),
            Err((e, _)) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "dead-letter write failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Publishes the customer-risk records of the last sweeps (at-least-once).
async fn publish_customer_risks(pipeline: &Pipeline, producer: &OutputProducer, topic: &str) {
    let changes = pipeline.take_risk_changes();
    let mut deliveries = vec![];
    for r in &changes {
        match sink::customer_risk_record(r) {
            Ok(bytes) => {
                let record = FutureRecord::to(topic).key(&r.customer_id).payload(&bytes);
                match producer.send_result(record) {
                    Ok(f) => deliveries.push(f),
                    Err((e, _)) => tracing::warn!(error = %e, "customer-risk record not enqueued"),
                }
            }
            Err(e) => tracing::error!(error = %e, "customer-risk record not encodable"),
        }
    }
    tokio::spawn(async move {
        for d in deliveries {
            if let Ok(Err((e, _))) = d.await {
                tracing::warn!(error = %e, "customer-risk delivery failed");
            }
        }
    });
}

/// Publishes a snapshot round: Prometheus (via telemetry) and the snapshot topic.
async fn publish_snapshots(
    pipeline: &Pipeline,
    producer: &OutputProducer,
    topic: &str,
    health: &Health,
) {
    let now = now_ms();
    if pipeline.assigned().is_empty() {
        // Between a revoke and an assignment (or before the first): nothing is owned,
        // so nothing may be published, although task state may still be in memory.
        health.set_not_ready("no partitions assigned");
        return;
    }
    let Some(snaps) = pipeline.snapshot(now) else {
        if pipeline.assigned().is_empty() {
            health.set_not_ready("no partitions assigned");
        } else {
            health.set_not_ready("waiting for the first watermark");
        }
        return;
    };
    if pipeline.assigned().is_empty() {
        health.set_not_ready("no partitions assigned");
    } else {
        health.set_ready();
    }
    let mut deliveries = vec![];
    for s in &snaps {
        match sink::snapshot_record(s) {
            Ok(bytes) => {
                let key = sink::snapshot_key(s);
                let record = FutureRecord::to(topic).key(&key).payload(&bytes);
                match producer.send_result(record) {
                    Ok(f) => deliveries.push(f),
                    Err((e, _)) => tracing::warn!(error = %e, "snapshot not enqueued"),
                }
            }
            Err(e) => tracing::error!(error = %e, "snapshot not encodable"),
        }
    }
    // Not awaited in the consumer loop: while brokers are away deliveries wait for
    // `message.timeout.ms`, and the loop must keep polling (callbacks, readiness).
    tokio::spawn(async move {
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => tracing::warn!(error = %e, "snapshot delivery failed"),
                Err(_) => tracing::warn!("snapshot delivery cancelled"),
            }
        }
    });
}

/// Runs the sidecar until `shutdown` resolves, then shuts down gracefully (SPEC §5).
/// What woke the consumer loop.
enum Step<'a> {
    Shutdown,
    Snapshot,
    Checkpoint,
    Record(Result<BorrowedMessage<'a>, KafkaError>),
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
/// depend on the grouping. Then, in consumed order, rejected records go to the
/// dead-letter topic, and every record counts as applied.
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
                tps.push(TopicPartition::new(topic, partition));
                tps.len() - 1
            }
        };
        of_record.push(t);
        if checkpointer.already_applied(&tps[t], msg.offset()) {
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
        // Tasks dealt round-robin to the threads; each thread applies its tasks in turn.
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|n| {
                    let mine: Vec<_> = tasks.iter().skip(n).step_by(threads).collect();
                    let apply = &apply;
                    scope.spawn(move || mine.into_iter().flat_map(|g| apply(g)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    };
    let mut results: Vec<Option<Result<(), Rejection>>> = vec![None; batch.len()];
    for (i, r) in done {
        results[i] = Some(r);
    }
    let mut last: Vec<Option<i64>> = vec![None; tps.len()];
    for (i, (msg, result)) in batch.iter().zip(results).enumerate() {
        let Some(result) = result else {
            continue; // applied before the checkpoint it was restored from
        };
        let tp = &tps[of_record[i]];
        if let Err(rejection) = result {
            tracing::debug!(%tp, offset = msg.offset(), reason = rejection.reason.as_str(), error = %rejection.message, "rejected");
            dead_letter(producer, &cfg.dead_letter_topic, msg, tp, &rejection).await?;
            pipeline.telemetry().dead_letters.inc();
        }
        last[of_record[i]] = Some(msg.offset());
    }
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
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    let producer = producer(cfg, health.clone())?;
    let mut base = client_config(cfg);
    apply_user_settings(&mut base, &cfg.kafka, &BTreeMap::new());
    let checkpointer = Arc::new(Checkpointer::new(
        base,
        &cfg.kafka_producer,
        &cfg.group_id,
        &cfg.checkpoint_topic,
        &cfg.input_topics,
    )?);
    let consumer = consumer(cfg, pipeline.clone(), checkpointer.clone(), health.clone())?;
    let partitions = check_co_partitioning(&consumer, &cfg.input_topics, Duration::from_secs(30))?;
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
    ensure_checkpoint_topic(cfg, &consumer, partitions).await?;
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
            _ = tick.tick() => Step::Snapshot,
            _ = checkpoint_tick.tick() => Step::Checkpoint,
            msg = consumer.recv() => Step::Record(msg),
        };
        pipeline
            .telemetry()
            .consumer_idle
            .inc_by(waiting.elapsed().as_secs_f64());
        match step {
            Step::Shutdown => break,
            Step::Snapshot => {
                publish_snapshots(&pipeline, &producer, &cfg.snapshot_topic, &health).await;
                publish_customer_risks(&pipeline, &producer, &cfg.customer_risk_topic).await;
                // A round written in the background: commit its offsets once acknowledged.
                let commit = checkpointer
                    .collect(&pipeline, false)
                    .map_err(|e| SourceError::Checkpoint(e.to_string()))?;
                commit_offsets(&consumer, &commit);
                if let Some(age) = checkpointer.age() {
                    pipeline.telemetry().checkpoint_age.set(age.as_secs_f64());
                }
            }
            Step::Checkpoint => {
                let commit = checkpointer
                    .checkpoint(&pipeline, None, Write::Background)
                    .map_err(|e| SourceError::Checkpoint(e.to_string()))?;
                commit_offsets(&consumer, &commit);
            }
            Step::Record(Ok(first)) => {
                // Everything librdkafka already holds, up to a batch: tasks apply in parallel.
                let mut batch = vec![first];
                let mut error = None;
                let rebalances = || consumer.context().rebalances.load(Ordering::SeqCst);
                let mut generation = rebalances();
                while batch.len() < MAX_BATCH {
                    let next = tokio::time::timeout(Duration::ZERO, consumer.recv()).await;
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
                pipeline
                    .telemetry()
                    .consumer_batch
                    .observe(batch.len() as f64);
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
    }

    drop(background);
    tracing::info!("shutting down: final snapshot, checkpoint, commit, leave group");
    let graceful = async {
        publish_snapshots(&pipeline, &producer, &cfg.snapshot_topic, &health).await;
        publish_customer_risks(&pipeline, &producer, &cfg.customer_risk_topic).await;
        health.set_not_ready("shutting down");
        let commit = checkpointer
            .checkpoint(&pipeline, None, Write::Wait)
            .map_err(|e| SourceError::Checkpoint(e.to_string()))?;
        commit_offsets(&consumer, &commit);
        consumer.unsubscribe();
        let _ = producer.flush(Duration::from_secs(5));
        Ok::<(), SourceError>(())
    };
    tokio::time::timeout(cfg.shutdown_timeout, graceful)
        .await
        .map_err(|_| SourceError::ShutdownTimeout(cfg.shutdown_timeout))??;
    drop(consumer);
    Ok(())
}
