//! Producing to Kafka: snapshots, customer risks and dead letters, with the producer's view of the brokers.
//!
//! The records are encoded by the parent module; this module only sends them.
//! Snapshot and customer-risk deliveries are awaited in the background (the
//! consumer loop must keep polling while brokers are away); a batch's dead
//! letters are all enqueued at once and their deliveries awaited together,
//! since the rejected records' offsets are marked applied only after them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::config::kafka::{apply_user_settings, client_config};
use crate::http::Health;
use crate::metrics::churn_risk::CustomerRisk;
use crate::snapshot::WindowSnapshot;
use crate::state::{Rejection, TopicPartition};

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

/// The output producer: idempotent (librdkafka's own retries of a request whose answer
/// was lost can then neither write a dead letter or snapshot row twice nor reorder
/// them; it implies `acks=all`), unless the operator's settings rule it out (`acks`
/// other than `all`, more than 5 requests in flight): then without, with a warning.
/// The operator's `enable.idempotence` wins.
pub fn producer(cfg: &Config, health: Arc<Health>) -> Result<OutputProducer, KafkaError> {
    let mut c = client_config(cfg);
    c.set("linger.ms", "5");
    c.set("enable.idempotence", "true");
    apply_user_settings(&mut c, &cfg.kafka, &cfg.kafka_producer);
    let operator_chose = cfg.kafka.contains_key("enable.idempotence")
        || cfg.kafka_producer.contains_key("enable.idempotence");
    match c.create_with_context(ProducerHealth(health.clone())) {
        Err(KafkaError::ClientCreation(why)) if !operator_chose && why.contains("idempotence") => {
            tracing::warn!(
                error = %why,
                "the output producer is not idempotent: the librdkafka settings rule it out \
                 (a retried request may write a dead letter twice)"
            );
            c.set("enable.idempotence", "false");
            c.create_with_context(ProducerHealth(health))
        }
        created => created,
    }
}

/// Attempts of one dead letter's write at most: the first and 5 retries.
const DEAD_LETTER_ATTEMPTS: u32 = 6;
/// How long a dead letter may wait for room in librdkafka's queue before the attempt
/// fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// A rejected record as it goes to the dead-letter topic: its original key, value and
/// headers, plus the `engaged.*` headers ([`super::dead_letter_headers`]).
pub struct DeadLetter<'a> {
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: OwnedHeaders,
}

impl<'a> DeadLetter<'a> {
    pub fn new(msg: &'a BorrowedMessage<'_>, tp: &TopicPartition, rejection: &Rejection) -> Self {
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
        for (k, v) in super::dead_letter_headers(tp, msg.offset(), rejection) {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        DeadLetter {
            key: msg.key(),
            payload: msg.payload(),
            headers,
        }
    }

    fn record<'r>(&'r self, topic: &'r str) -> FutureRecord<'r, [u8], [u8]> {
        let mut record = FutureRecord::to(topic).headers(self.headers.clone());
        if let Some(k) = self.key {
            record = record.key(k);
        }
        if let Some(p) = self.payload {
            record = record.payload(p);
        }
        record
    }
}

/// Writes dead letters to `topic` and returns once every one is acknowledged: all are
/// enqueued without waiting for each (librdkafka batches them), then their deliveries
/// are awaited; when librdkafka's queue is full, the oldest delivery is awaited first.
/// Those that failed are written again, 5 times at most, with a pause growing from
/// 200 ms; then the error of the first that still failed is returned. `delivered` is
/// called once per acknowledged dead letter.
pub async fn dead_letters(
    producer: &OutputProducer,
    topic: &str,
    letters: &[DeadLetter<'_>],
    mut delivered: impl FnMut(),
) -> Result<(), KafkaError> {
    let mut todo: Vec<usize> = (0..letters.len()).collect();
    let mut attempt = 1;
    loop {
        let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
        let mut failed: Vec<(usize, KafkaError)> = vec![];
        for i in todo {
            let mut full_since = None;
            loop {
                match producer.send_result(letters[i].record(topic)) {
                    Ok(f) => {
                        pending.push_back((i, f));
                        break;
                    }
                    Err((e, _))
                        if e == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                            && full_since.get_or_insert_with(Instant::now).elapsed()
                                < QUEUE_TIMEOUT =>
                    {
                        // Deliveries make room (the producer's own thread serves them).
                        match pending.pop_front() {
                            Some((j, f)) => match acknowledged(j, f).await {
                                Ok(()) => delivered(),
                                Err(e) => failed.push(e),
                            },
                            None => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    Err((e, _)) => {
                        failed.push((i, e));
                        break;
                    }
                }
            }
        }
        for (i, f) in pending {
            match acknowledged(i, f).await {
                Ok(()) => delivered(),
                Err(e) => failed.push(e),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort_by_key(|(i, _)| *i);
        if attempt >= DEAD_LETTER_ATTEMPTS {
            let (_, e) = failed.swap_remove(0);
            return Err(e);
        }
        tracing::warn!(
            error = %failed[0].1,
            failed = failed.len(),
            attempt,
            "dead-letter writes failed; retrying"
        );
        tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
        attempt += 1;
        todo = failed.into_iter().map(|(i, _)| i).collect();
    }
}

/// The outcome of dead letter `i`'s delivery.
async fn acknowledged(i: usize, delivery: DeliveryFuture) -> Result<(), (usize, KafkaError)> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err((i, e)),
        Err(_) => Err((i, KafkaError::Canceled)),
    }
}

/// Sends customer-risk records to their topic, keyed by customer (at-least-once);
/// deliveries are awaited in the background.
pub fn send_customer_risks(producer: &OutputProducer, topic: &str, changes: Vec<CustomerRisk>) {
    let mut deliveries = vec![];
    for r in &changes {
        match super::customer_risk_record(r) {
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

/// Sends a snapshot round to the snapshot topic, keyed by window and dimension;
/// deliveries are awaited in the background.
pub fn send_snapshots(producer: &OutputProducer, topic: &str, snaps: &[WindowSnapshot]) {
    let mut deliveries = vec![];
    for s in snaps {
        match super::snapshot_record(s) {
            Ok(bytes) => {
                let key = super::snapshot_key(s);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::RawConfig;

    fn with_producer_settings(settings: &[(&str, &str)]) -> Result<OutputProducer, KafkaError> {
        let raw = RawConfig {
            bootstrap_servers: "127.0.0.1:9".into(),
            kafka_producer: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..RawConfig::default()
        };
        let cfg = raw.validate().expect("valid configuration");
        producer(&cfg, Arc::new(Health::new()))
    }

    #[test]
    fn settings_that_rule_out_idempotence_still_give_a_producer() {
        assert!(with_producer_settings(&[]).is_ok());
        assert!(with_producer_settings(&[("acks", "1")]).is_ok());
        assert!(with_producer_settings(&[("max.in.flight.requests.per.connection", "20")]).is_ok());
        assert!(with_producer_settings(&[("enable.idempotence", "false"), ("acks", "1")]).is_ok());
        // The operator's own choice is not overridden: librdkafka refuses the combination.
        assert!(with_producer_settings(&[("enable.idempotence", "true"), ("acks", "1")]).is_err());
    }
}
