//! Producing to Kafka: snapshots, customer risks and dead letters, with the producer's view of the brokers.
//!
//! The records are encoded by the parent module; this module only sends them.
//! Snapshot and customer-risk deliveries are awaited in the background (the
//! consumer loop must keep polling while brokers are away); a dead letter is
//! awaited, since the rejected record's offset is stored only after it.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
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

pub fn producer(cfg: &Config, health: Arc<Health>) -> Result<OutputProducer, KafkaError> {
    let mut c = client_config(cfg);
    c.set("linger.ms", "5");
    apply_user_settings(&mut c, &cfg.kafka, &cfg.kafka_producer);
    c.create_with_context(ProducerHealth(health))
}

/// Writes a rejected record to the dead-letter topic, retrying until delivered or shut down.
pub async fn dead_letter(
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
    for (k, v) in super::dead_letter_headers(tp, msg.offset(), rejection) {
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
