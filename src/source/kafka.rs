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
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Message, TopicPartitionList};

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
        "input topics are not co-partitioned: {0}. Every input topic needs the same partition \
         count (SPEC §1), keyed by customer_id"
    )]
    NotCoPartitioned(String),
    #[error("graceful shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
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

/// Consumer context: rebalances update ownership, statistics feed the lag gauge.
pub struct EngagedContext {
    pipeline: Arc<Pipeline>,
}

impl ClientContext for EngagedContext {
    fn stats(&self, stats: Statistics) {
        let lag = &self.pipeline.telemetry().consumer_lag;
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                // Lag behind what was applied (stored); fall back to the committed lag.
                let v = if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else {
                    p.consumer_lag
                };
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
        if let Rebalance::Revoke(list) = rebalance {
            // Commit what was applied before another member takes over.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke");
            }
            let revoked = tps(list);
            tracing::info!(partitions = ?revoked.iter().map(|t| t.to_string()).collect::<Vec<_>>(), "revoked");
            self.pipeline.revoke(&revoked);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned = tps(list);
            tracing::info!(partitions = ?assigned.iter().map(|t| t.to_string()).collect::<Vec<_>>(), "assigned");
            self.pipeline.assign(&assigned, now_ms());
        }
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
) -> Result<StreamConsumer<EngagedContext>, KafkaError> {
    let mut c = client_config(cfg);
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // `range` keeps partition N of every input topic on one member (co-partitioning).
        .set("partition.assignment.strategy", "range")
        .set(
            "statistics.interval.ms",
            cfg.statistics_interval.as_millis().to_string(),
        );
    apply_user_settings(&mut c, &cfg.kafka, &cfg.kafka_consumer);
    c.create_with_context(EngagedContext { pipeline })
}

pub fn producer(cfg: &Config) -> Result<FutureProducer, KafkaError> {
    let mut c = client_config(cfg);
    c.set("linger.ms", "5");
    apply_user_settings(&mut c, &cfg.kafka, &cfg.kafka_producer);
    c.create()
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

/// Writes a rejected record to the dead-letter topic, retrying until delivered or shut down.
async fn dead_letter(
    producer: &FutureProducer,
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

/// Publishes a snapshot round: Prometheus (via telemetry) and the snapshot topic.
async fn publish_snapshots(
    pipeline: &Pipeline,
    producer: &FutureProducer,
    topic: &str,
    health: &Health,
) {
    let now = now_ms();
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
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => tracing::warn!(error = %e, "snapshot delivery failed"),
            Err(_) => tracing::warn!("snapshot delivery cancelled"),
        }
    }
}

/// Runs the sidecar until `shutdown` resolves, then shuts down gracefully (SPEC §5).
pub async fn run(
    cfg: &Config,
    pipeline: Arc<Pipeline>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    let producer = producer(cfg)?;
    let consumer = consumer(cfg, pipeline.clone())?;
    let partitions = check_co_partitioning(&consumer, &cfg.input_topics, Duration::from_secs(30))?;
    tracing::info!(topics = ?cfg.input_topics, partitions, group = %cfg.group_id, "subscribing");
    let topics: Vec<&str> = cfg.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    health.set_not_ready("waiting for partition assignment");

    let mut tick = tokio::time::interval(cfg.snapshot_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                publish_snapshots(&pipeline, &producer, &cfg.snapshot_topic, &health).await;
            }
            msg = consumer.recv() => match msg {
                Ok(msg) => {
                    let tp = TopicPartition::new(msg.topic(), msg.partition());
                    if let Err(rejection) = pipeline.handle_record(&tp, msg.payload(), now_ms()) {
                        tracing::debug!(%tp, offset = msg.offset(), reason = rejection.reason.as_str(), error = %rejection.message, "rejected");
                        dead_letter(&producer, &cfg.dead_letter_topic, &msg, &tp, &rejection).await?;
                        pipeline.telemetry().dead_letters.inc();
                    }
                    consumer.store_offset_from_message(&msg)?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    health.set_not_ready(format!("consumer error: {e}"));
                }
            }
        }
    }

    tracing::info!("shutting down: final snapshot, commit, leave group");
    let graceful = async {
        publish_snapshots(&pipeline, &producer, &cfg.snapshot_topic, &health).await;
        health.set_not_ready("shutting down");
        if !pipeline.assigned().is_empty()
            && let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
        {
            tracing::debug!(error = %e, "final commit (nothing new to commit)");
        }
        consumer.unsubscribe();
        let _ = producer.flush(Duration::from_secs(5));
    };
    tokio::time::timeout(cfg.shutdown_timeout, graceful)
        .await
        .map_err(|_| SourceError::ShutdownTimeout(cfg.shutdown_timeout))?;
    drop(consumer);
    Ok(())
}
