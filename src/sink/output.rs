//! Snapshot rounds and customer-risk records on their way to Kafka, within the bound on output in flight.
//!
//! A snapshot round is a complete state (the latest row per window and dimension
//! wins), so a round that comes while the previous one is still on its way is
//! skipped, not queued: the next round carries the current numbers. A round larger
//! than the room left goes in pieces as room frees, still before the next round.
//! Customer-risk records wait in a [`RiskQueue`] (the latest value per customer)
//! and go as room allows; a full producer queue or a failed delivery puts a record
//! back, it is not dropped. Deliveries are awaited on tasks of their own, which
//! give the room back; the consumer loop calls [`Output::pump`] when room was
//! given back and pauses consumption while [`Output::pressure`] holds
//! (`source::throttle`). Dead letters share the bound (`super::kafka::dead_letters`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::in_flight::{InFlight, Slot};
use super::kafka::OutputProducer;
use super::pending::RiskQueue;
use crate::config::Config;
use crate::metrics::churn_risk::CustomerRisk;
use crate::snapshot::WindowSnapshot;
use crate::telemetry::output::OutputTelemetry;

#[derive(Default)]
struct Queues {
    /// Rows (key, value) of the current snapshot round not yet enqueued.
    round: VecDeque<(String, Vec<u8>)>,
    /// Rows of the current round enqueued whose delivery report has not arrived.
    round_in_flight: usize,
    risks: RiskQueue,
    /// Whether the last [`Output::pump`] stopped with records left for lack of room.
    blocked: bool,
}

impl Queues {
    fn round_active(&self) -> bool {
        !self.round.is_empty() || self.round_in_flight > 0
    }
}

/// The snapshot and customer-risk output of one `run`.
pub struct Output {
    producer: OutputProducer,
    in_flight: Arc<InFlight>,
    snapshot_topic: String,
    risk_topic: String,
    queues: Arc<Mutex<Queues>>,
    telemetry: OutputTelemetry,
}

fn lock(q: &Mutex<Queues>) -> MutexGuard<'_, Queues> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

fn queue_full(e: &KafkaError) -> bool {
    *e == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
}

impl Output {
    pub fn new(producer: OutputProducer, cfg: &Config, telemetry: OutputTelemetry) -> Output {
        Output {
            in_flight: producer.in_flight().clone(),
            producer,
            snapshot_topic: cfg.snapshot_topic.clone(),
            risk_topic: cfg.customer_risk_topic.clone(),
            queues: Arc::new(Mutex::new(Queues::default())),
            telemetry,
        }
    }

    /// A new snapshot round for the snapshot topic: skipped (and counted) while the
    /// previous round is still on its way, else it waits for [`Output::pump`].
    pub fn round(&self, snaps: &[WindowSnapshot]) {
        let mut q = lock(&self.queues);
        if q.round_active() {
            self.telemetry.snapshot_rounds_skipped.inc();
            tracing::debug!(
                waiting = q.round.len(),
                in_flight = q.round_in_flight,
                "snapshot round skipped: the previous one is still on its way"
            );
            return;
        }
        q.round = encode_round(snaps);
    }

    /// Customer-risk changes: each replaces its customer's waiting value, if any;
    /// they wait for [`Output::pump`].
    pub fn risks(&self, changes: Vec<CustomerRisk>) {
        let mut q = lock(&self.queues);
        for r in changes {
            q.risks.offer(r);
        }
    }

    /// Enqueues what waits as far as room in flight allows: the round's rows
    /// first, then customer risks, oldest first.
    pub fn pump(&self) {
        let mut q = lock(&self.queues);
        q.blocked = false;
        while let Some((key, value)) = q.round.front() {
            let Some(slot) = self.in_flight.try_acquire((key.len() + value.len()) as u64) else {
                q.blocked = true;
                break;
            };
            let record = FutureRecord::to(&self.snapshot_topic)
                .key(key)
                .payload(value);
            match self
                .producer
                .kafka()
                .send_result(record)
                .map_err(|(e, _)| e)
            {
                Ok(delivery) => {
                    q.round.pop_front();
                    q.round_in_flight += 1;
                    tokio::spawn(snapshot_delivered(delivery, slot, self.queues.clone()));
                }
                Err(e) if queue_full(&e) => {
                    q.blocked = true;
                    break;
                }
                Err(e) => {
                    // Not a matter of room (e.g. a row larger than `message.max.bytes`):
                    // the next round tries again.
                    tracing::warn!(error = %e, key = %key, "snapshot row not enqueued");
                    q.round.pop_front();
                }
            }
        }
        while !q.blocked {
            let Some(r) = q.risks.take() else {
                break;
            };
            let bytes = match super::customer_risk_record(&r) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "customer-risk record not encodable");
                    q.risks.delivered(&r.customer_id);
                    continue;
                }
            };
            let size = (r.customer_id.len() + bytes.len()) as u64;
            let Some(slot) = self.in_flight.try_acquire(size) else {
                q.risks.failed(r);
                q.blocked = true;
                break;
            };
            let record = FutureRecord::to(&self.risk_topic)
                .key(&r.customer_id)
                .payload(&bytes);
            match self
                .producer
                .kafka()
                .send_result(record)
                .map_err(|(e, _)| e)
            {
                Ok(delivery) => {
                    tokio::spawn(risk_delivered(delivery, slot, r, self.queues.clone()));
                }
                Err(e) if queue_full(&e) => {
                    q.risks.failed(r);
                    q.blocked = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, customer_id = %r.customer_id,
                        "customer-risk record not enqueued");
                    q.risks.delivered(&r.customer_id);
                }
            }
        }
        self.telemetry
            .customer_risk_pending
            .set(q.risks.waiting() as i64);
    }

    /// Whether records wait that room in flight would let go.
    pub fn waiting(&self) -> bool {
        let q = lock(&self.queues);
        !q.round.is_empty() || q.risks.has_ready()
    }

    /// Whether output is at its bound: a bound reached, or records left waiting
    /// for room at the last [`Output::pump`] while more than half the room is
    /// taken (with less, the deliveries that gave it back wake the next pump).
    /// Consumption pauses then.
    pub fn pressure(&self) -> bool {
        self.in_flight.at_bound()
            || (lock(&self.queues).blocked && !self.in_flight.below_low_water())
    }

    /// Whether output drained far enough for paused consumption to resume.
    pub fn drained(&self) -> bool {
        self.in_flight.below_low_water()
    }

    /// Resolves once room was given back (see [`InFlight::released`]).
    pub async fn released(&self) {
        self.in_flight.released().await;
    }

    /// Records and bytes in flight now (dead letters included).
    pub fn in_flight(&self) -> (u64, u64) {
        self.in_flight.now()
    }

    /// Customers whose customer-risk record waits.
    pub fn risks_waiting(&self) -> usize {
        lock(&self.queues).risks.waiting()
    }

    /// At shutdown: writes the final round (after the rows of the previous one in
    /// flight; its rows not yet enqueued are superseded) and every waiting
    /// customer-risk record, and returns once all are acknowledged. The caller
    /// bounds it with a timeout: with the brokers away it would wait for them.
    pub async fn finish(&self, round: Option<Vec<WindowSnapshot>>, risks: Vec<CustomerRisk>) {
        {
            let mut q = lock(&self.queues);
            for r in risks {
                q.risks.offer(r);
            }
            if round.is_some() {
                q.round.clear();
            }
        }
        let mut round = round;
        loop {
            {
                let mut q = lock(&self.queues);
                if round.is_some() && !q.round_active() {
                    q.round = encode_round(round.as_deref().unwrap_or_default());
                    round = None;
                }
            }
            self.pump();
            {
                let q = lock(&self.queues);
                if round.is_none() && !q.round_active() && q.risks.is_idle() {
                    return;
                }
            }
            self.in_flight.released().await;
        }
    }
}

/// A round's rows, keyed by window and dimension.
fn encode_round(snaps: &[WindowSnapshot]) -> VecDeque<(String, Vec<u8>)> {
    let mut rows = VecDeque::with_capacity(snaps.len());
    for s in snaps {
        match super::snapshot_record(s) {
            Ok(bytes) => rows.push_back((super::snapshot_key(s), bytes)),
            Err(e) => tracing::error!(error = %e, "snapshot not encodable"),
        }
    }
    rows
}

/// Awaits a snapshot row's delivery report; a failed row is not written again
/// (the next round carries the current numbers). The room is given back last, so
/// that whoever it wakes sees the round's progress.
async fn snapshot_delivered(delivery: DeliveryFuture, slot: Slot, queues: Arc<Mutex<Queues>>) {
    let outcome = delivery.await;
    lock(&queues).round_in_flight -= 1;
    match outcome {
        Ok(Ok(_)) => {}
        Ok(Err((e, _))) => tracing::warn!(error = %e, "snapshot delivery failed"),
        Err(_) => tracing::warn!("snapshot delivery cancelled"),
    }
    drop(slot);
}

/// Awaits a customer-risk record's delivery report; a failed record waits again
/// (unless a newer value of its customer does). The room is given back last.
async fn risk_delivered(
    delivery: DeliveryFuture,
    slot: Slot,
    r: CustomerRisk,
    queues: Arc<Mutex<Queues>>,
) {
    let outcome = delivery.await;
    let mut q = lock(&queues);
    match outcome {
        Ok(Ok(_)) => q.risks.delivered(&r.customer_id),
        Ok(Err((e, _))) => {
            tracing::warn!(error = %e, "customer-risk delivery failed; it will be written again");
            q.risks.failed(r);
        }
        Err(_) => {
            tracing::warn!("customer-risk delivery cancelled; it will be written again");
            q.risks.failed(r);
        }
    }
    drop(q);
    drop(slot);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::config::RawConfig;
    use crate::http::Health;
    use crate::sink::kafka::producer;
    use crate::telemetry::Telemetry;

    /// An output with room for `bound` records, whose broker never answers: what is
    /// enqueued stays in flight.
    fn output(bound: usize) -> (Output, Telemetry) {
        let raw = RawConfig {
            bootstrap_servers: "127.0.0.1:9".into(),
            max_output_in_flight: bound,
            kafka_producer: BTreeMap::from([("message.timeout.ms".into(), "600000".into())]),
            ..RawConfig::default()
        };
        let cfg = raw.validate().expect("valid configuration");
        let t = Telemetry::new();
        let in_flight = InFlight::new(
            cfg.max_output_in_flight,
            cfg.max_output_in_flight_bytes,
            t.output.clone(),
        );
        let p = producer(&cfg, Arc::new(Health::new()), in_flight).expect("a producer");
        (Output::new(p, &cfg, t.output.clone()), t)
    }

    fn round() -> Vec<WindowSnapshot> {
        ["5m", "1h"]
            .map(|w| WindowSnapshot {
                window: w.into(),
                dimension: "all".into(),
                ..WindowSnapshot::default()
            })
            .to_vec()
    }

    fn risk(customer: usize, churn_risk: f64) -> CustomerRisk {
        CustomerRisk {
            customer_id: format!("c-{customer}"),
            churn_risk,
            p_alive: 1.0 - churn_risk,
            expected_orders_30d: 0.0,
            predicted_value_minor: 0.0,
            x: 0,
            t_x_days: 0.0,
            t_days: 0.0,
            watermark: 0,
            model: "mbg_nbd".into(),
            at_risk: false,
        }
    }

    #[tokio::test]
    async fn rounds_are_skipped_while_one_is_in_flight_and_risks_wait_within_the_bound() {
        let (out, t) = output(5);
        let o = &t.output;
        out.round(&round());
        out.pump();
        assert_eq!(out.in_flight().0, 2, "the round's two rows");
        out.round(&round());
        out.pump();
        assert_eq!(o.snapshot_rounds_skipped.get(), 1);
        assert_eq!(out.in_flight().0, 2, "the skipped round wrote nothing");
        assert!(!out.pressure());

        out.risks((0..10).map(|c| risk(c, 0.1)).collect());
        out.pump();
        assert_eq!(out.in_flight().0, 5, "at the bound");
        assert_eq!(out.risks_waiting(), 7);
        assert_eq!(o.customer_risk_pending.get(), 7);
        assert!(out.pressure() && !out.drained() && out.waiting());
        // Newer values replace the waiting ones; a customer in flight waits behind its record.
        out.risks(vec![risk(9, 0.5), risk(0, 0.6)]);
        assert_eq!(out.risks_waiting(), 8);
        assert_eq!(o.in_flight_peak_records.get(), 5);
        assert_eq!(o.in_flight_records.get(), 5);
        assert!(o.in_flight_bytes.get() > 0);
    }

    #[tokio::test]
    async fn finishing_waits_for_the_acknowledgements() {
        let (out, _t) = output(5);
        let unanswered = out.finish(Some(round()), vec![risk(1, 0.2)]);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), unanswered)
                .await
                .is_err(),
            "no broker acknowledged anything"
        );
        assert_eq!(
            out.in_flight().0,
            3,
            "the final round and the waiting record"
        );
    }
}
