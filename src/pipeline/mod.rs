//! The record path shared by every edge: decode → validate → late/duplicate → apply, with accounting.
//!
//! Kafka (`source`) and `replay` both call into [`Pipeline`], so a record is
//! judged the same way whatever brought it. Every consumed record ends in
//! exactly one of `engaged_events_accepted_total` or
//! `engaged_events_rejected_total{reason}`. Wall-clock time enters only as the
//! `now` argument (clock-skew check, idleness), never inside the engine.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use prometheus::IntCounter;
use std::time::Instant;

use crate::decode::{DecodeError, Decoder, SchemaError};
use crate::event::{Event, Millis};
use crate::metrics::churn_risk::{self, CustomerRisk, RiskModel, Sweep};
use crate::snapshot::{self, WindowSnapshot};
use crate::state::{Engine, RejectReason, Rejection, TopicPartition};
use crate::telemetry::{Published, Telemetry};
use crate::time::{IdleTracker, MonotoneWatermark, PartitionTime, instance_watermark};

/// How many records ahead of the one applied [`Pipeline::handle_events`] prefetches
/// the strings of ([`Event::prefetch`]) and [`Pipeline::handle_records`] the payload of:
/// enough to cover a cache miss, close enough for the lines to still be there.
const PREFETCH_AHEAD: usize = 4;

struct Clock {
    idle: IdleTracker<TopicPartition>,
    /// Partitions whose applied offset reached the broker's high watermark.
    caught_up: std::collections::HashSet<TopicPartition>,
    /// Whether lag information exists (Kafka); without it idleness is silence alone.
    track_lag: bool,
    assigned: BTreeSet<TopicPartition>,
    published: MonotoneWatermark,
}

/// Per-partition counter handles, so the record path does not hash label values.
#[derive(Clone)]
struct PartitionCounters {
    consumed: IntCounter,
    accepted: IntCounter,
}

/// Decoder, engine and telemetry of one instance.
pub struct Pipeline {
    /// Swapped for a copy with one more schema id when the edge learns one
    /// ([`Pipeline::learn_schema_id`]); a run of records decodes with the one it
    /// started with.
    decoder: RwLock<Arc<Decoder>>,
    /// Why the Confluent schema ids of the batch at hand that the decoder does not
    /// know are unknown (the schema registry's answers, set by the edge): the
    /// error text of their dead letters. Read on the error path only.
    schema_id_errors: RwLock<HashMap<u32, Arc<str>>>,
    engine: Engine,
    telemetry: Arc<Telemetry>,
    max_clock_skew_ms: Option<i64>,
    clock: Mutex<Clock>,
    counters: RwLock<HashMap<TopicPartition, PartitionCounters>>,
    risk: RwLock<Option<Arc<RiskModel>>>,
    /// Customer-risk records of the last sweeps, for the edge to publish.
    risk_changes: Mutex<Vec<CustomerRisk>>,
    last_sweep: Mutex<Option<Sweep>>,
    /// The model the last sweep used (crossings are not counted on a new one's first sweep).
    swept_with: Mutex<Option<Arc<RiskModel>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pipeline {
    pub fn new(
        decoder: Decoder,
        engine: Engine,
        telemetry: Arc<Telemetry>,
        max_clock_skew_ms: Option<i64>,
        idle_timeout_ms: i64,
    ) -> Pipeline {
        Pipeline {
            decoder: RwLock::new(Arc::new(decoder)),
            schema_id_errors: RwLock::new(HashMap::new()),
            engine,
            telemetry,
            max_clock_skew_ms,
            clock: Mutex::new(Clock {
                idle: IdleTracker::new(idle_timeout_ms),
                caught_up: std::collections::HashSet::new(),
                track_lag: false,
                assigned: BTreeSet::new(),
                published: MonotoneWatermark::default(),
            }),
            counters: RwLock::new(HashMap::new()),
            risk: RwLock::new(None),
            risk_changes: Mutex::new(vec![]),
            last_sweep: Mutex::new(None),
            swept_with: Mutex::new(None),
        }
    }

    /// The current churn-risk model, if one has been fitted.
    pub fn risk_model(&self) -> Option<Arc<RiskModel>> {
        self.risk.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fits the churn model on the histories at the published watermark.
    /// Synchronous and CPU-bound: the edge runs it off the consumer loop.
    pub fn fit_risk_model(&self) -> Option<Result<RiskModel, crate::model::ModelError>> {
        let at = lock(&self.clock).published.get()?;
        self.fit_risk_model_at(at)
    }

    /// Fits the churn model on the histories at watermark `at`.
    pub fn fit_risk_model_at(
        &self,
        at: Millis,
    ) -> Option<Result<RiskModel, crate::model::ModelError>> {
        let cfg = self.engine.config();
        let (rfm, spend) = self.engine.risk_histories(at, cfg.model_sample_size);
        if rfm.is_empty() {
            return None;
        }
        let previous = self.risk_model();
        Some(churn_risk::fit(cfg.model, rfm, spend, previous.as_deref()))
    }

    /// Installs a fitted model (used from the next snapshot round on).
    pub fn install_risk_model(&self, m: RiskModel) {
        self.telemetry.publish_model(&m);
        *self.risk.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(m));
    }

    /// Customer-risk records produced since the last call.
    pub fn take_risk_changes(&self) -> Vec<CustomerRisk> {
        std::mem::take(&mut *lock(&self.risk_changes))
    }

    fn counters(&self, tp: &TopicPartition) -> PartitionCounters {
        if let Some(c) = self
            .counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tp)
        {
            return c.clone();
        }
        let c = PartitionCounters {
            consumed: self
                .telemetry
                .consumed
                .with_label_values(&[&*tp.topic, &tp.partition.to_string()]),
            accepted: self.telemetry.accepted.with_label_values(&[&*tp.topic]),
        };
        self.counters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tp.clone(), c.clone());
        c
    }

    /// The decoder of record values (replay compiles its files' writer schemas with it).
    pub fn decoder(&self) -> Arc<Decoder> {
        self.decoder
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds the writer schema of Confluent schema id `id` (from a schema registry):
    /// records framed with `id` decode from the next run of records on. An id the
    /// decoder knows already, a configured one above all, keeps its schema.
    pub fn learn_schema_id(&self, id: u32, text: &str) -> Result<(), SchemaError> {
        let mut current = self.decoder.write().unwrap_or_else(|e| e.into_inner());
        if current.knows_schema_id(id) {
            return Ok(());
        }
        let mut next = Decoder::clone(&current);
        next.add_schema_id(id, text)?;
        *current = Arc::new(next);
        Ok(())
    }

    /// Replaces the reasons why Confluent schema ids are unknown (see the field):
    /// a record framed with one of them is rejected with `unknown Confluent schema
    /// id ID: REASON` instead of the decoder's own message.
    pub fn set_schema_id_errors(&self, errors: HashMap<u32, Arc<str>>) {
        let mut current = self
            .schema_id_errors
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if !(errors.is_empty() && current.is_empty()) {
            *current = errors;
        }
    }

    /// A decode error as the reason of a rejection.
    fn undecodable(&self, e: DecodeError) -> Rejection {
        if let DecodeError::UnknownSchemaId(id) = e
            && let Some(why) = self
                .schema_id_errors
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
        {
            return Rejection::new(
                RejectReason::Undecodable,
                format!("unknown Confluent schema id {id}: {why}"),
            );
        }
        Rejection::new(RejectReason::Undecodable, e.to_string())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// One Kafka record (or any raw payload) from `tp`, arriving at wall time `now`.
    pub fn handle_record(
        &self,
        tp: &TopicPartition,
        payload: Option<&[u8]>,
        now: Millis,
    ) -> Result<(), Rejection> {
        let counters = self.counters(tp);
        counters.consumed.inc();
        self.touch(tp, now);
        let result = self.decode_and_apply(tp, payload, now);
        self.account(&counters, &result);
        result
    }

    /// `tp` delivered records at `now`: it is not idle (any more).
    fn touch(&self, tp: &TopicPartition, now: Millis) {
        let woke_up = {
            let mut c = lock(&self.clock);
            let was_idle = c.idle.is_idle(tp, now);
            c.idle.touch(tp, now);
            was_idle
        };
        if woke_up {
            self.engine.set_idle(tp, false);
        }
    }

    fn decode(&self, tp: &TopicPartition, payload: Option<&[u8]>) -> Result<Event, Rejection> {
        let mut event = Event::empty(crate::event::EventKind::PageView);
        self.decode_into(&self.decoder(), tp, payload, &mut event)
            .map(|()| event)
    }

    /// One record value into `event` ([`Decoder::decode_into`]), or why not.
    fn decode_into(
        &self,
        decoder: &Decoder,
        tp: &TopicPartition,
        payload: Option<&[u8]>,
        event: &mut Event,
    ) -> Result<(), Rejection> {
        match payload {
            None => Err(Rejection::new(
                RejectReason::Undecodable,
                "record has no value",
            )),
            Some(bytes) => decoder
                .decode_into(&tp.topic, bytes, event)
                .map_err(|e| self.undecodable(e)),
        }
    }

    fn decode_and_apply(
        &self,
        tp: &TopicPartition,
        payload: Option<&[u8]>,
        now: Millis,
    ) -> Result<(), Rejection> {
        self.decode(tp, payload)
            .and_then(|event| self.apply(tp, &event, Some(now)))
    }

    /// Consecutive records of one topic-partition, arriving at wall time `now`:
    /// the same as [`Pipeline::handle_record`] on each in turn, with the
    /// per-partition bookkeeping (counters, idleness) done once.
    pub fn handle_records<'a>(
        &self,
        tp: &TopicPartition,
        payloads: impl IntoIterator<Item = Option<&'a [u8]>>,
        now: Millis,
    ) -> Vec<Result<(), Rejection>> {
        let counters = self.counters(tp);
        self.touch(tp, now);
        let (mut accepted, mut consumed) = (0, 0);
        // Every record is decoded into this one event: its strings' buffers
        // are reused instead of allocating each string of each record.
        let mut event = Event::empty(crate::event::EventKind::PageView);
        let decoder = self.decoder();
        // The payloads were written by librdkafka's threads: each is asked for a
        // few records ahead of its decoding ([`PREFETCH_AHEAD`]).
        let payloads: Vec<Option<&[u8]>> = payloads.into_iter().collect();
        // One lock of the task for the whole run of records.
        let results: Vec<_> = self.engine.with_task(tp.partition, |task| {
            payloads
                .iter()
                .enumerate()
                .map(|(i, &payload)| {
                    if let Some(Some(ahead)) = payloads.get(i + PREFETCH_AHEAD) {
                        crate::event::prefetch_bytes(ahead);
                    }
                    consumed += 1;
                    let result = self
                        .decode_into(&decoder, tp, payload, &mut event)
                        .and_then(|()| {
                            self.check_skew(&event, Some(now))?;
                            task.apply(&tp.topic, &event)
                        });
                    match &result {
                        Ok(()) => accepted += 1,
                        Err(r) => self.telemetry.count_rejected(r.reason),
                    }
                    result
                })
                .collect()
        });
        counters.consumed.inc_by(consumed);
        counters.accepted.inc_by(accepted);
        results
    }

    /// One already-decoded event (replay). `now = None` skips the clock-skew check.
    pub fn handle_event(
        &self,
        tp: &TopicPartition,
        event: &Event,
        now: Option<Millis>,
    ) -> Result<(), Rejection> {
        let counters = self.counters(tp);
        counters.consumed.inc();
        let result = self.apply(tp, event, now);
        self.account(&counters, &result);
        result
    }

    /// Decoded events of `tp` in order under one lock of its task (replay's
    /// batches): [`Pipeline::handle_event`] for each `Ok`, and each `Err` (a
    /// record the edge could not decode) counted as consumed and rejected.
    pub fn handle_events(
        &self,
        tp: &TopicPartition,
        events: &[Result<&Event, Rejection>],
        now: Option<Millis>,
    ) -> Vec<Result<(), Rejection>> {
        let counters = self.counters(tp);
        let mut accepted = 0;
        let results: Vec<_> = self.engine.with_task(tp.partition, |task| {
            events
                .iter()
                .enumerate()
                .map(|(i, event)| {
                    if let Some(Ok(ahead)) = events.get(i + PREFETCH_AHEAD) {
                        ahead.prefetch();
                    }
                    let result = match event {
                        Ok(event) => self
                            .check_skew(event, now)
                            .and_then(|()| task.apply(&tp.topic, event)),
                        Err(r) => Err(r.clone()),
                    };
                    match &result {
                        Ok(()) => accepted += 1,
                        Err(r) => self.telemetry.count_rejected(r.reason),
                    }
                    result
                })
                .collect()
        });
        counters.consumed.inc_by(events.len() as u64);
        counters.accepted.inc_by(accepted);
        results
    }

    fn apply(
        &self,
        tp: &TopicPartition,
        event: &Event,
        now: Option<Millis>,
    ) -> Result<(), Rejection> {
        self.check_skew(event, now)?;
        self.engine.apply(tp, event)
    }

    /// SPEC §2: an event too far ahead of the wall clock `now` is invalid (`None`: no check).
    fn check_skew(&self, event: &Event, now: Option<Millis>) -> Result<(), Rejection> {
        if let (Some(now), Some(skew)) = (now, self.max_clock_skew_ms) {
            event.check_clock_skew(now, skew)?;
        }
        Ok(())
    }

    fn account(&self, counters: &PartitionCounters, result: &Result<(), Rejection>) {
        match result {
            Ok(()) => counters.accepted.inc(),
            Err(r) => self.telemetry.count_rejected(r.reason),
        }
    }

    /// From the Kafka client's statistics: whether `tp` is caught up with its high watermark.
    pub fn set_caught_up(&self, tp: &TopicPartition, caught_up: bool) {
        let mut c = lock(&self.clock);
        c.track_lag = true;
        if caught_up {
            c.caught_up.insert(tp.clone());
        } else {
            c.caught_up.remove(tp);
        }
    }

    /// Partitions were assigned at wall time `now` (they count as active until idle).
    pub fn assign(&self, tps: &[TopicPartition], now: Millis) {
        let mut c = lock(&self.clock);
        for tp in tps {
            c.assigned.insert(tp.clone());
            c.idle.touch(tp, now);
        }
        self.telemetry
            .assigned_partitions
            .set(c.assigned.len() as i64);
    }

    /// Partitions were revoked. Their tasks' state is kept until the assignment
    /// that follows says whether they stay (the Kafka edge drops the others).
    pub fn revoke(&self, tps: &[TopicPartition]) {
        let mut c = lock(&self.clock);
        for tp in tps {
            c.assigned.remove(tp);
            c.idle.forget(tp);
        }
        self.telemetry
            .assigned_partitions
            .set(c.assigned.len() as i64);
    }

    /// Installs a task restored from a checkpoint. Snapshots never go back before
    /// the watermark its windows were last evicted at.
    pub fn restore_task(
        &self,
        partition: i32,
        bytes: &[u8],
    ) -> Result<(), crate::state::StateError> {
        self.restore_tasks(&[crate::state::SavedTask {
            partition,
            base: bytes,
            deltas: vec![],
        }])
    }

    /// Installs several restored tasks (a base and its deltas each), decoding them in parallel.
    pub fn restore_tasks(
        &self,
        saved: &[crate::state::SavedTask<'_>],
    ) -> Result<(), crate::state::StateError> {
        self.engine.restore_tasks(saved, state_threads())?;
        let floor = self.engine.evicted_at();
        lock(&self.clock).published.update(floor);
        // At once, not at the next snapshot: a restore is when state size jumps.
        self.telemetry
            .state_entries
            .set(self.engine.state_entries() as i64);
        self.telemetry.set_state_size(&self.engine.state_size());
        Ok(())
    }

    pub fn assigned(&self) -> Vec<TopicPartition> {
        lock(&self.clock).assigned.iter().cloned().collect()
    }

    /// The instance watermark at wall time `now` (SPEC §2), never moving backwards.
    pub fn instance_watermark(&self, now: Millis) -> Option<Millis> {
        let wms: std::collections::HashMap<TopicPartition, Option<Millis>> =
            self.engine.watermarks().into_iter().collect();
        let mut c = lock(&self.clock);
        let parts: Vec<PartitionTime> = c
            .assigned
            .iter()
            .map(|tp| {
                // Silent for `idle_timeout` and caught up with the broker (where known:
                // replay has no broker and no idleness).
                let idle = c.idle.is_idle(tp, now) && (!c.track_lag || c.caught_up.contains(tp));
                self.engine.set_idle(tp, idle);
                PartitionTime {
                    watermark: wms.get(tp).copied().flatten(),
                    idle,
                }
            })
            .collect();
        let candidate = instance_watermark(parts);
        c.published.update(candidate)
    }

    /// Rescores every customer at `at` with the current model (a sweep), if one
    /// is fitted; the next snapshots publish its totals and
    /// [`Pipeline::take_risk_changes`] its customer-risk records. Takes about
    /// 1 µs per customer with an ORDER and each task's lock only per chunk of
    /// customers ([`Engine::rescore`]): the edge runs it in the background, never
    /// inside a snapshot. Returns whether a model was there to sweep with.
    pub fn rescore(&self, at: Millis) -> bool {
        self.sweep(at, true)
    }

    /// [`Pipeline::rescore`] for the totals alone: no customer-risk records
    /// (replay's final sweep, which nothing publishes).
    pub fn rescore_totals(&self, at: Millis) -> bool {
        self.sweep(at, false)
    }

    fn sweep(&self, at: Millis, records: bool) -> bool {
        let Some(m) = self.risk_model() else {
            return false;
        };
        let cfg = self.engine.config();
        let previous = lock(&self.swept_with).replace(m.clone());
        let same_model = previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &m));
        let rescore = churn_risk::Rescore {
            at,
            model: &m,
            threshold: cfg.risk_threshold,
            delta: cfg.risk_delta,
            count_crossings: same_model,
            previous: previous.as_deref().filter(|_| !same_model),
            ttl_ms: cfg.state_ttl_ms,
            records,
        };
        let mut sweep = self.engine.rescore(&rescore, state_threads());
        lock(&self.risk_changes).extend(std::mem::take(&mut sweep.changed));
        *lock(&self.last_sweep) = Some(sweep);
        true
    }

    /// Rescores at the published instance watermark (see [`Pipeline::rescore`]);
    /// false when there is no model or no watermark yet.
    pub fn rescore_published(&self) -> bool {
        let at = lock(&self.clock).published.get();
        at.is_some_and(|at| self.rescore(at))
    }

    /// Computes and publishes the snapshots at `watermark`, then evicts buckets
    /// no window needs. The churn-risk totals are those of the last sweep
    /// ([`Pipeline::rescore`]).
    pub fn snapshot_at(&self, watermark: Millis, now: Option<Millis>) -> Vec<WindowSnapshot> {
        let started = Instant::now();
        let covered = self.assigned();
        let mut snaps = snapshot::build(&self.engine, watermark, &covered);
        if let Some(sweep) = lock(&self.last_sweep).as_ref() {
            for s in snaps.iter_mut().filter(|s| s.dimension == "all") {
                s.at_risk_customers = Some(sweep.at_risk as i64);
                s.expected_orders_30d = Some(sweep.expected_orders_30d.get());
                s.predicted_value_30d_minor = Some(sweep.predicted_value_minor.get());
            }
        }
        self.engine.evict(watermark);
        let t = &self.telemetry;
        for (tp, w) in self.engine.watermarks() {
            if let Some(w) = w {
                t.partition_watermark
                    .with_label_values(&[&*tp.topic, &tp.partition.to_string()])
                    .set(w as f64 / 1000.0);
            }
        }
        t.watermark.set(watermark as f64 / 1000.0);
        if let Some(now) = now {
            t.watermark_delay.set((now - watermark) as f64 / 1000.0);
        }
        t.state_entries.set(self.engine.state_entries() as i64);
        t.set_state_size(&self.engine.state_size());
        t.publish(Published {
            snapshots: snaps.clone(),
            durations: self.engine.duration_histogram(),
            risk_distribution: lock(&self.last_sweep).as_ref().map(|s| s.distribution),
        });
        t.snapshot_duration.observe(started.elapsed().as_secs_f64());
        t.snapshots_published.inc();
        snaps
    }

    /// Snapshot round at wall time `now`; `None` while no instance watermark exists yet.
    pub fn snapshot(&self, now: Millis) -> Option<Vec<WindowSnapshot>> {
        let w = self.instance_watermark(now)?;
        Some(self.snapshot_at(w, Some(now)))
    }
}

/// Threads for saving and restoring task state and for scoring a sweep: one per
/// core. Checkpoints and restores run while the consumer loop waits for them, so
/// they may use every core; a sweep shortens each chunk's hold of a task's lock.
pub fn state_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
