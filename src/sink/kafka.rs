//! Producing to Kafka: the output producer (its view of the brokers, its bound on records in flight) and dead letters.
//!
//! The records are encoded by the parent module; this module only sends them.
//! Snapshots and customer risks go through [`super::output`], which awaits their
//! deliveries in the background (the consumer loop must keep polling while
//! brokers are away). A batch's dead letters are enqueued together, as far as
//! the bound on output in flight allows, and their deliveries awaited together,
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

use super::in_flight::{InFlight, Slot};
use crate::config::Config;
use crate::config::kafka::{apply_user_settings, client_config};
use crate::http::Health;
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

/// The producer of snapshots, dead letters and customer risks, with the bound on
/// what it has in flight: every record it sends takes room there first.
#[derive(Clone)]
pub struct OutputProducer {
    kafka: FutureProducer<ProducerHealth>,
    in_flight: Arc<InFlight>,
}

impl OutputProducer {
    /// The librdkafka producer.
    pub fn kafka(&self) -> &FutureProducer<ProducerHealth> {
        &self.kafka
    }

    /// Records and bytes in flight, against `max_output_in_flight(_bytes)`.
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }
}

/// The output producer: idempotent (librdkafka's own retries of a request whose answer
/// was lost can then neither write a dead letter or snapshot row twice nor reorder
/// them; it implies `acks=all`), unless the operator's settings rule it out (`acks`
/// other than `all`, more than 5 requests in flight): then without, with a warning.
/// The operator's `enable.idempotence` wins. What it sends takes room in `in_flight`.
pub fn producer(
    cfg: &Config,
    health: Arc<Health>,
    in_flight: Arc<InFlight>,
) -> Result<OutputProducer, KafkaError> {
    let mut c = client_config(cfg);
    c.set("linger.ms", "5");
    c.set("enable.idempotence", "true");
    apply_user_settings(&mut c, &cfg.kafka, &cfg.kafka_producer);
    let operator_chose = cfg.kafka.contains_key("enable.idempotence")
        || cfg.kafka_producer.contains_key("enable.idempotence");
    let created = match c.create_with_context(ProducerHealth(health.clone())) {
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
    };
    Ok(OutputProducer {
        kafka: created?,
        in_flight,
    })
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
    /// Key, value and headers: the room it takes in flight.
    bytes: u64,
}

impl<'a> DeadLetter<'a> {
    pub fn new(msg: &'a BorrowedMessage<'_>, tp: &TopicPartition, rejection: &Rejection) -> Self {
        let mut headers = OwnedHeaders::new();
        let mut bytes = msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len);
        if let Some(h) = msg.headers() {
            for i in 0..h.count() {
                let orig = h.get(i);
                bytes += orig.key.len() + orig.value.map_or(0, <[u8]>::len);
                headers = headers.insert(Header {
                    key: orig.key,
                    value: orig.value,
                });
            }
        }
        for (k, v) in super::dead_letter_headers(tp, msg.offset(), rejection) {
            bytes += k.len() + v.len();
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        DeadLetter {
            key: msg.key(),
            payload: msg.payload(),
            headers,
            bytes: bytes as u64,
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
/// are awaited. Each takes room in flight first: when the bound is reached or
/// librdkafka's queue is full, the oldest delivery is awaited (with none of them in
/// flight, room given back by snapshots and customer risks). Those that failed are
/// written again, 5 times at most, with a pause growing from 200 ms; then the error of
/// the first that still failed is returned. `delivered` is called once per
/// acknowledged dead letter.
pub async fn dead_letters(
    producer: &OutputProducer,
    topic: &str,
    letters: &[DeadLetter<'_>],
    mut delivered: impl FnMut(),
) -> Result<(), KafkaError> {
    let in_flight = producer.in_flight().clone();
    let mut todo: Vec<usize> = (0..letters.len()).collect();
    let mut attempt = 1;
    loop {
        let mut pending = Pending::new();
        let mut failed: Vec<(usize, KafkaError)> = vec![];
        for i in todo {
            let mut full_since = None;
            loop {
                let Some(slot) = in_flight.try_acquire(letters[i].bytes) else {
                    if !oldest(&mut pending, &mut failed, &mut delivered).await {
                        in_flight.released().await;
                    }
                    continue;
                };
                match producer.kafka().send_result(letters[i].record(topic)) {
                    Ok(f) => {
                        pending.push_back((i, slot, f));
                        break;
                    }
                    Err((e, _))
                        if e == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                            && full_since.get_or_insert_with(Instant::now).elapsed()
                                < QUEUE_TIMEOUT =>
                    {
                        drop(slot);
                        // Deliveries make room (the producer's own thread serves them).
                        if !oldest(&mut pending, &mut failed, &mut delivered).await {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    Err((e, _)) => {
                        failed.push((i, e));
                        break;
                    }
                }
            }
        }
        while oldest(&mut pending, &mut failed, &mut delivered).await {}
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

/// Dead letters enqueued, oldest first: index, room in flight, delivery.
type Pending = VecDeque<(usize, Slot, DeliveryFuture)>;

/// Awaits the oldest pending delivery, if any (false if none), and gives its room back.
async fn oldest(
    pending: &mut Pending,
    failed: &mut Vec<(usize, KafkaError)>,
    delivered: &mut impl FnMut(),
) -> bool {
    let Some((i, slot, f)) = pending.pop_front() else {
        return false;
    };
    match acknowledged(i, f).await {
        Ok(()) => delivered(),
        Err(e) => failed.push(e),
    }
    drop(slot);
    true
}

/// The outcome of dead letter `i`'s delivery.
async fn acknowledged(i: usize, delivery: DeliveryFuture) -> Result<(), (usize, KafkaError)> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err((i, e)),
        Err(_) => Err((i, KafkaError::Canceled)),
    }
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
        let telemetry = crate::telemetry::Telemetry::new();
        let in_flight = InFlight::new(10, 1 << 20, telemetry.output.clone());
        producer(&cfg, Arc::new(Health::new()), in_flight)
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
