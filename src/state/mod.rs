//! Per-partition state and the engine that applies accepted events to it.
//!
//! State is sharded by *task* — a partition number across all input topics, as
//! in Kafka Streams — because SPEC §1 co-partitions every input topic by
//! customer: all events of one customer (or anonymous visitor) share a
//! partition number on every topic. One task's state can therefore be
//! checkpointed, dropped and restored on its own, and the consumer group's
//! `range` assignor keeps a task's topic-partitions on one instance.
//!
//! Inside a task, each topic-partition has its own event clock and duplicate
//! memory, so whether a record is accepted depends only on the history of its
//! own topic-partition (SPEC §2). Everything here is synchronous and uses event
//! time only.

pub mod dedup;
pub mod memory;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use serde::Serialize;

use crate::checkpoint::delta::{self, Form, Merge};
use crate::event::{EmailEventType, Event, InvalidEvent, Millis, PurchaseType};
use crate::metrics::churn_risk::{RiskModel, Sweep};
pub use crate::metrics::family::WindowAggregates;
use crate::metrics::family::{Families, FamilyConfig};
use crate::metrics::web::DurationHistogram;
use crate::metrics::{CustomerId, CustomerIds, Dim};
use crate::time::PartitionClock;
use crate::window::WindowSpec;
use dedup::Dedup;

/// A Kafka topic-partition (for replay: topic `replay`, partition 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from(topic),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// The settings the core needs; validated by `config`.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub windows: Vec<WindowSpec>,
    pub allowed_lateness_ms: i64,
    pub session_timeout_ms: i64,
    pub dedup_window_ms: i64,
    /// Top-N values per breakdown dimension (`site`, `channel`, `campaign`); the rest are `other`.
    pub max_dimension_values: usize,
    /// How long a message's first open/click/unsubscribe/complaint is remembered.
    pub email_dedup_ttl_ms: i64,
    /// An ORDER this soon after the customer's last click is attributed to that email.
    pub attribution_window_ms: i64,
    /// Inactivity after which a customer has churned.
    pub churn_horizon_ms: i64,
    /// A customer whose last ORDER is longer ago than this is forgotten (its next
    /// ORDER is a first ORDER; it is no longer scored); `None`: kept for ever.
    pub state_ttl_ms: Option<i64>,
    /// The churn-risk model.
    pub model: crate::model::Model,
    /// Customers a refit uses at most (a uniform sample); 0 = all.
    pub model_sample_size: usize,
    /// `churn_risk` at or above this makes a customer at risk.
    pub risk_threshold: f64,
    /// A customer-risk record is published when the risk moves by more than this.
    pub risk_delta: f64,
    /// Every input topic; a task's closing watermark waits for all of them
    /// (empty: the inputs seen so far, as in replay).
    pub input_topics: Vec<String>,
    /// The one currency of Purchase events; others are rejected as `invalid`.
    pub currency: String,
}

impl Default for CoreConfig {
    fn default() -> Self {
        const MIN: i64 = 60_000;
        const DAY: i64 = 24 * 60 * MIN;
        CoreConfig {
            windows: [
                ("5m", 5 * MIN),
                ("1h", 60 * MIN),
                ("24h", 24 * 60 * MIN),
                ("7d", 7 * 24 * 60 * MIN),
                ("30d", 30 * 24 * 60 * MIN),
            ]
            .into_iter()
            .map(|(n, l)| WindowSpec::with_default_buckets(n, l))
            .collect(),
            allowed_lateness_ms: 5 * MIN,
            session_timeout_ms: 30 * MIN,
            dedup_window_ms: 10 * MIN,
            max_dimension_values: 20,
            email_dedup_ttl_ms: 30 * DAY,
            attribution_window_ms: 7 * DAY,
            churn_horizon_ms: 90 * DAY,
            state_ttl_ms: None,
            input_topics: vec![],
            currency: "EUR".into(),
            model: crate::model::Model::MbgNbd,
            model_sample_size: 100_000,
            risk_threshold: 0.7,
            risk_delta: 0.1,
        }
    }
}

/// Why a record was not applied (`engaged_events_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    Undecodable,
    Invalid,
    Late,
    Duplicate,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] = [
        RejectReason::Undecodable,
        RejectReason::Invalid,
        RejectReason::Late,
        RejectReason::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Undecodable => "undecodable",
            RejectReason::Invalid => "invalid",
            RejectReason::Late => "late",
            RejectReason::Duplicate => "duplicate",
        }
    }
}

/// State that cannot be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot encode task state: {0}")]
    Encode(String),
    #[error("cannot decode task state (written by an incompatible version?): {0}")]
    Decode(String),
}

/// A record the engine refused, with a message for the dead-letter header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}

impl From<InvalidEvent> for Rejection {
    fn from(e: InvalidEvent) -> Self {
        Rejection::new(RejectReason::Invalid, e.to_string())
    }
}

/// Event clock and duplicate memory of one topic-partition.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct InputState {
    clock: PartitionClock,
    dedup: Dedup,
    /// Marked idle by the edge (no records for `idle_timeout`): it does not hold the task back.
    idle: bool,
}

impl InputState {
    fn new(cfg: &CoreConfig) -> InputState {
        InputState {
            clock: PartitionClock::new(),
            dedup: Dedup::new(cfg.dedup_window_ms),
            idle: false,
        }
    }
}

impl Merge for InputState {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        (self.clock, self.idle) = (newer.clock, newer.idle);
        self.dedup.merge(newer.dedup)
    }

    fn saved(&mut self) {
        self.dedup.saved();
    }
}

/// The state of one task (one partition number across the input topics).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskState {
    inputs: BTreeMap<Arc<str>, InputState>,
    /// The instance watermark this task's windows were last evicted at: no
    /// snapshot may be taken before it (restored with the state).
    evicted_at: Option<Millis>,
    /// Every metric family, driven through [`Family`] (in this order on disk).
    families: Families,
    customer_ids: CustomerIds,
    /// The closing watermark the families last saw (`None` inside: not yet).
    #[serde(skip)]
    closed_at: Option<Option<Millis>>,
    /// The lower bound of the last `state_ttl` pass ([`TaskState::expire_customers`]).
    #[serde(skip)]
    expired_at: Option<Millis>,
}

impl TaskState {
    fn new(cfg: &CoreConfig) -> TaskState {
        TaskState {
            inputs: BTreeMap::new(),
            evicted_at: None,
            families: Families::new(FamilyConfig {
                windows: &cfg.windows,
                session_timeout_ms: cfg.session_timeout_ms,
                email_dedup_ttl_ms: cfg.email_dedup_ttl_ms,
                attribution_window_ms: cfg.attribution_window_ms,
                churn_horizon_ms: cfg.churn_horizon_ms,
            }),
            customer_ids: CustomerIds::default(),
            closed_at: None,
            expired_at: None,
        }
    }

    /// Rebuilds what is derived from the saved state, after a restore.
    fn restored(&mut self) {
        self.families
            .all_mut()
            .into_iter()
            .for_each(|f| f.restored());
    }

    /// The task's closing watermark: no input of the task can still deliver an
    /// acceptable event older than this. It is the minimum over the task's
    /// inputs — every configured input topic (`CoreConfig::input_topics`), or the
    /// inputs seen so far when none are configured — where an input that has
    /// not accepted anything yet holds time back, unless the edge marked it idle
    /// (SPEC §2 `idle_timeout`). When every input is idle, the largest watermark.
    /// Sessions and churn runs close, and memory is forgotten, against it, so
    /// closing never depends on how inputs interleave.
    fn closing_watermark(&self, cfg: &CoreConfig) -> Option<Millis> {
        let lateness = cfg.allowed_lateness_ms;
        // (min over the active inputs, whether one of them has no watermark yet,
        // whether any input is active, max over every input): one pass, no allocation.
        let mut fold = (None::<Millis>, false, false, None::<Millis>);
        let mut visit = |input: Option<&InputState>| {
            let wm = input.and_then(|i| i.clock.watermark(lateness));
            fold.3 = fold.3.max(wm);
            if input.is_some_and(|i| i.idle) {
                return;
            }
            fold.2 = true;
            match wm {
                Some(w) => fold.0 = Some(fold.0.map_or(w, |m: Millis| m.min(w))),
                None => fold.1 = true,
            }
        };
        if cfg.input_topics.is_empty() {
            self.inputs.values().for_each(|i| visit(Some(i)));
        } else {
            for t in &cfg.input_topics {
                visit(self.inputs.get(t.as_str()));
            }
        }
        let (min_active, unknown, any_active, max_all) = fold;
        match (any_active, unknown) {
            (false, _) => max_all,
            (true, true) => None,
            (true, false) => min_active,
        }
    }

    fn apply(
        &mut self,
        cfg: &CoreConfig,
        topic: &Arc<str>,
        event: &Event,
    ) -> Result<(), Rejection> {
        let lateness = cfg.allowed_lateness_ms;
        let input = self
            .inputs
            .entry(topic.clone())
            .or_insert_with(|| InputState::new(cfg));
        let t = event.event_time();
        let watermark = input.clock.watermark(lateness);
        if input.clock.is_late(t, lateness) {
            let w = watermark.unwrap_or(Millis::MIN);
            return Err(Rejection::new(
                RejectReason::Late,
                format!("event_time {t} is older than the partition watermark {w}"),
            ));
        }
        if input.dedup.is_duplicate(event.event_id(), watermark) {
            return Err(Rejection::new(
                RejectReason::Duplicate,
                format!("event_id {:?} was already accepted", event.event_id()),
            ));
        }
        input.dedup.insert(event.event_id(), t);
        input.clock.observe(t);
        if let Some(w) = input.clock.watermark(lateness) {
            input.dedup.sweep(w);
        }
        // The customer this event is activity of (SPEC §3 Customers), or the buyer.
        let name: Option<&str> = match event {
            Event::PageView(pv) => pv.customer_id.as_deref(),
            Event::Email(e) => match e.kind {
                EmailEventType::Sent | EmailEventType::Delivered | EmailEventType::Bounced => None,
                _ => Some(&e.customer_id),
            },
            Event::Purchase(p) => Some(&p.customer_id),
            Event::Survey(s) => s.customer_id.as_deref(),
        };
        let customer = name.map(|n| self.customer_ids.get(n));
        // `state_ttl`: an ORDER more than the TTL after the customer's last one
        // starts over (first ORDER, new history), whether or not the memory pass
        // ([`Engine::evict`]) has removed the old one yet.
        if let (Event::Purchase(p), Some(c), Some(ttl)) = (event, customer, cfg.state_ttl_ms)
            && p.kind == PurchaseType::Order
            && self
                .families
                .risk
                .last_order(c)
                .is_some_and(|l| t - l > ttl)
        {
            self.families
                .all_mut()
                .into_iter()
                .for_each(|f| f.forget(c));
        }
        for f in self.families.all_mut() {
            f.on_event(event, customer);
        }
        // What closes at a watermark `w` (sessions at `last + timeout`, churn at
        // `last + horizon`, orders before `w`) lies after every event at or after
        // `w`: unless the closing watermark moved or this event is not after it,
        // nothing new can be due.
        let w = self.closing_watermark(cfg);
        if self.closed_at != Some(w) || w.is_some_and(|w| t <= w) {
            self.close_at(w);
        }
        Ok(())
    }

    /// Frees the lifetime state (first ORDER, repeat-purchase history) of customers
    /// whose last ORDER is more than `ttl` before the lower bound `f`: every later
    /// ORDER would start them over anyway ([`TaskState::apply`]), so this changes
    /// no number. A pass over the histories at most once per `ttl / 16` of progress.
    fn expire_customers(&mut self, f: Millis, ttl: i64) {
        if self.expired_at.is_some_and(|e| f - e < (ttl / 16).max(1)) {
            return;
        }
        self.expired_at = Some(f);
        for c in self.families.risk.expire_before(f - ttl) {
            self.families
                .all_mut()
                .into_iter()
                .for_each(|f| f.forget(c));
        }
        // Numbers no family holds anything for any more (also those a restore
        // brought back without state) leave the id table.
        for i in 0..u32::try_from(self.customer_ids.len()).unwrap_or(u32::MAX) {
            let c = CustomerId::from_index(i);
            if !self.customer_ids.name(c).is_empty()
                && !self.families.all().iter().any(|f| f.holds(c))
            {
                self.customer_ids.release(c);
            }
        }
    }

    fn on_watermark(&mut self, cfg: &CoreConfig) {
        let w = self.closing_watermark(cfg);
        self.close_at(w);
    }

    fn close_at(&mut self, w: Option<Millis>) {
        self.closed_at = Some(w);
        if let Some(w) = w {
            self.families
                .all_mut()
                .into_iter()
                .for_each(|f| f.on_watermark(w));
        }
    }
}

impl Merge for TaskState {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        let TaskState {
            inputs,
            evicted_at,
            families,
            customer_ids,
            closed_at: _,
            expired_at: _,
        } = newer;
        for (topic, input) in inputs {
            match self.inputs.get_mut(&topic) {
                Some(base) => base.merge(input)?,
                // First seen after the base: every entry of it is in this delta.
                None => {
                    self.inputs.insert(topic, input);
                }
            }
        }
        self.evicted_at = evicted_at;
        self.families.merge(families)?;
        self.closed_at = None;
        self.customer_ids.merge(customer_ids)
    }

    fn saved(&mut self) {
        self.inputs.values_mut().for_each(Merge::saved);
        self.families.saved();
        self.customer_ids.saved();
    }
}

/// Applies events to sharded task state and reads window aggregates out of it.
///
/// `Engine` is `Sync`: workers apply events to different tasks at once, and the
/// snapshot reads. Each task has its own lock, taken once per batch of its
/// records ([`Engine::with_task`]); the map of tasks is locked only to find one.
pub struct Engine {
    cfg: Arc<CoreConfig>,
    tasks: DashMap<i32, Arc<Mutex<TaskState>>>,
}

fn lock(task: &Mutex<TaskState>) -> MutexGuard<'_, TaskState> {
    task.lock().unwrap_or_else(|e| e.into_inner())
}

/// One task, locked: applies events to it ([`Engine::with_task`]).
pub struct TaskApplier<'a> {
    cfg: &'a CoreConfig,
    task: &'a mut TaskState,
}

impl TaskApplier<'_> {
    /// Validates and applies one decoded event from `topic` of this task. Rejected events change nothing.
    pub fn apply(&mut self, topic: &Arc<str>, event: &Event) -> Result<(), Rejection> {
        event.validate()?;
        if let Event::Purchase(p) = event
            && p.currency != self.cfg.currency
        {
            return Err(Rejection::new(
                RejectReason::Invalid,
                format!(
                    "currency {:?} is not the configured currency {:?}",
                    p.currency, self.cfg.currency
                ),
            ));
        }
        self.task.apply(self.cfg, topic, event)
    }
}

/// Leads every saved task state: postcard is not self-describing, so a state
/// written by another layout must be refused, not misread. Bump on any change
/// of `TaskState`'s serialised form (2: customers as numbers, `CustomerIds`;
/// 3: bases and deltas; 4: distinct-count buckets as relative bucket numbers;
/// 5: one distinct counter per event set, shared by every window; 6: released
/// customer numbers, `""` in bases and listed in deltas; 7: window buckets fed
/// through a staging ring, `window::rolled`).
const BASE_FORMAT: &[u8] = b"engaged-task-state/7\n";
/// Leads every saved delta (see [`delta`]).
const DELTA_FORMAT: &[u8] = b"engaged-task-delta/7\n";

fn format_tag(form: Form) -> &'static [u8] {
    match form {
        Form::Base => BASE_FORMAT,
        Form::Delta => DELTA_FORMAT,
    }
}

/// Encodes `task` in `form`; what changed from now on goes into the next delta.
fn encode_task(task: &mut TaskState, form: Form) -> Result<Vec<u8>, StateError> {
    let mut out = format_tag(form).to_vec();
    delta::in_form(form, || postcard::to_io(&*task, &mut out))
        .map_err(|e| StateError::Encode(e.to_string()))?;
    task.saved();
    Ok(out)
}

fn decode_task(p: i32, bytes: &[u8], form: Form) -> Result<TaskState, StateError> {
    let tag = format_tag(form);
    let Some(body) = bytes.strip_prefix(tag) else {
        return Err(StateError::Decode(format!(
            "task {p}: the state does not start with {:?}",
            String::from_utf8_lossy(tag)
        )));
    };
    delta::in_form(form, || postcard::from_bytes::<TaskState>(body))
        .map_err(|e| StateError::Decode(format!("task {p}: {e}")))
}

/// A task's saved state: a base, then the deltas saved after it, in order.
pub struct SavedTask<'a> {
    pub partition: i32,
    pub base: &'a [u8],
    pub deltas: Vec<&'a [u8]>,
}

/// `f` over `items` on up to `threads` scoped threads, results in input order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break done };
                        done.push((i, f(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            // A worker's panic is a bug, not bad input: re-raise it with its own message.
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Customers a rescoring sweep scores per lock of a task (about 1 µs each).
pub const RESCORE_CHUNK: u32 = 4096;

impl Engine {
    pub fn new(cfg: CoreConfig) -> Engine {
        Engine {
            cfg: Arc::new(cfg),
            tasks: DashMap::new(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The task of `partition`, created empty on first use.
    fn task(&self, partition: i32) -> Arc<Mutex<TaskState>> {
        if let Some(t) = self.tasks.get(&partition) {
            return t.clone();
        }
        self.tasks
            .entry(partition)
            .or_insert_with(|| Arc::new(Mutex::new(TaskState::new(&self.cfg))))
            .clone()
    }

    /// Runs `f` with the task of `partition` locked: a worker applies a batch of
    /// the task's records under one lock, while other workers apply other tasks.
    pub fn with_task<R>(&self, partition: i32, f: impl FnOnce(&mut TaskApplier<'_>) -> R) -> R {
        let task = self.task(partition);
        let mut guard = lock(&task);
        f(&mut TaskApplier {
            cfg: &self.cfg,
            task: &mut guard,
        })
    }

    /// Validates and applies one decoded event from `tp`. Rejected events change nothing.
    pub fn apply(&self, tp: &TopicPartition, event: &Event) -> Result<(), Rejection> {
        self.with_task(tp.partition, |t| t.apply(&tp.topic, event))
    }

    /// Moves `tp`'s watermark to at least `watermark` (end of a replay).
    pub fn advance(&self, tp: &TopicPartition, watermark: Millis) {
        let task = self.task(tp.partition);
        let mut task = lock(&task);
        let cfg = &self.cfg;
        let input = task
            .inputs
            .entry(tp.topic.clone())
            .or_insert_with(|| InputState::new(cfg));
        input.clock.advance_to(watermark);
        task.on_watermark(cfg);
    }

    /// Marks `tp` idle or active (the edge decides, from `idle_timeout`); an idle
    /// input does not hold its task's closing watermark back.
    pub fn set_idle(&self, tp: &TopicPartition, idle: bool) {
        let task = self.task(tp.partition);
        let mut task = lock(&task);
        let input = task
            .inputs
            .entry(tp.topic.clone())
            .or_insert_with(|| InputState::new(&self.cfg));
        if input.idle != idle {
            input.idle = idle;
            task.on_watermark(&self.cfg);
        }
    }

    /// The watermark of every topic-partition that has state.
    pub fn watermarks(&self) -> Vec<(TopicPartition, Option<Millis>)> {
        let lateness = self.cfg.allowed_lateness_ms;
        let mut out = vec![];
        for entry in self.tasks.iter() {
            let task = lock(entry.value());
            for (topic, input) in &task.inputs {
                out.push((
                    TopicPartition {
                        topic: topic.clone(),
                        partition: *entry.key(),
                    },
                    input.clock.watermark(lateness),
                ));
            }
        }
        out.sort();
        out
    }

    /// The watermark of `tp`, if it has accepted anything (or was advanced).
    pub fn watermark_of(&self, tp: &TopicPartition) -> Option<Millis> {
        let task = self.tasks.get(&tp.partition)?;
        let task = lock(task.value());
        let input = task.inputs.get(&tp.topic)?;
        input.clock.watermark(self.cfg.allowed_lateness_ms)
    }

    /// Drops a task's state (its partitions were revoked).
    pub fn drop_task(&self, partition: i32) {
        self.tasks.remove(&partition);
    }

    /// The latest watermark any task was evicted at (snapshots must not go earlier).
    pub fn evicted_at(&self) -> Option<Millis> {
        self.tasks
            .iter()
            .filter_map(|t| lock(t.value()).evicted_at)
            .max()
    }

    /// The partition numbers that have state.
    pub fn tasks(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.tasks.iter().map(|t| *t.key()).collect();
        v.sort();
        v
    }

    /// Serialises one task's state (for a checkpoint) as a base or as a delta of
    /// what changed since its last save; `None` if it has no state.
    pub fn save_task(&self, partition: i32, form: Form) -> Option<Result<Vec<u8>, StateError>> {
        let task = self.tasks.get(&partition)?.value().clone();
        let mut task = lock(&task);
        Some(encode_task(&mut task, form))
    }

    /// Serialises several tasks, on up to `threads` threads (tasks are
    /// independent); tasks without state are left out.
    pub fn save_tasks(
        &self,
        tasks: &[(i32, Form)],
        threads: usize,
    ) -> Vec<(i32, Result<Vec<u8>, StateError>)> {
        parallel_map(tasks, threads, |&(p, form)| {
            self.save_task(p, form).map(|r| (p, r))
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// Replaces one task's state with a saved base.
    pub fn restore_task(&self, partition: i32, bytes: &[u8]) -> Result<(), StateError> {
        self.restore_tasks(
            &[SavedTask {
                partition,
                base: bytes,
                deltas: vec![],
            }],
            1,
        )
    }

    /// Replaces several tasks' state with saved ones (a base and its deltas),
    /// decoding on up to `threads` threads. Nothing is installed unless every
    /// task decodes.
    pub fn restore_tasks(&self, saved: &[SavedTask<'_>], threads: usize) -> Result<(), StateError> {
        let decoded = parallel_map(saved, threads, |s| {
            let p = s.partition;
            let mut task = decode_task(p, s.base, Form::Base)?;
            for (i, d) in s.deltas.iter().enumerate() {
                let newer = decode_task(p, d, Form::Delta)?;
                task.merge(newer).map_err(|e| {
                    StateError::Decode(format!(
                        "task {p}: delta {} of {}: {e}",
                        i + 1,
                        s.deltas.len()
                    ))
                })?;
            }
            task.restored();
            // The restored state is the last save: the next delta starts from it.
            task.saved();
            Ok((p, task))
        });
        let decoded: Vec<(i32, TaskState)> = decoded.into_iter().collect::<Result<_, _>>()?;
        for (p, task) in decoded {
            self.tasks.insert(p, Arc::new(Mutex::new(task)));
        }
        Ok(())
    }

    /// Sums window `idx` over every task for `[start, end)`.
    pub fn aggregate(&self, idx: usize, start: Millis, end: Millis) -> WindowAggregates {
        let mut bounds = vec![None; self.cfg.windows.len()];
        bounds[idx] = Some((start, end));
        self.aggregate_windows(&bounds).swap_remove(idx)
    }

    /// Sums every window `i` with `bounds[i] = Some((start, end))` over every
    /// task, locking each task once (for the whole snapshot round).
    pub fn aggregate_windows(&self, bounds: &[Option<(Millis, Millis)>]) -> Vec<WindowAggregates> {
        let mut aggs = vec![WindowAggregates::default(); bounds.len()];
        for p in self.tasks() {
            let Some(task) = self.tasks.get(&p).map(|t| t.value().clone()) else {
                continue;
            };
            let mut task = lock(&task);
            for (idx, (agg, b)) in aggs.iter_mut().zip(bounds).enumerate() {
                let Some((start, end)) = *b else {
                    continue;
                };
                for f in task.families.all_mut() {
                    f.collect(idx, start, end, agg);
                }
            }
        }
        aggs
    }

    /// Open sessions now, per dimension, over every task.
    pub fn open_sessions(&self) -> HashMap<Dim, u64> {
        let mut open = HashMap::new();
        for entry in self.tasks.iter() {
            let task = lock(entry.value());
            task.families.web.collect_open(&mut open);
        }
        open
    }

    /// Repeat-purchase histories at `at` for fitting (a uniform sample of about
    /// `sample` customers when there are more; 0 = all): `(x, t_x, T)` rows and
    /// `(x, mean repeat value)` rows of repeat buyers.
    pub fn risk_histories(
        &self,
        at: Millis,
        sample: usize,
    ) -> (Vec<crate::model::History>, Vec<(u32, f64)>) {
        let total: usize = self
            .tasks
            .iter()
            .map(|t| lock(t.value()).families.risk.customers())
            .sum();
        let keep_below = crate::metrics::churn_risk::sample_threshold(sample, total);
        let (mut rfm, mut spend) = (vec![], vec![]);
        for entry in self.tasks.iter() {
            let task = lock(entry.value());
            task.families.risk.histories(
                &task.customer_ids,
                at,
                self.cfg.state_ttl_ms,
                keep_below,
                &mut rfm,
                &mut spend,
            );
        }
        (rfm, spend)
    }

    /// Rescores every customer of every task with a fitted model (a sweep).
    ///
    /// Each task is visited in chunks of [`RESCORE_CHUNK`] customer numbers, its
    /// lock taken once per chunk: a sweep may run beside the workers applying
    /// records (in the background, off the snapshot) and delays a task's records
    /// by one chunk at most. Tasks in partition order, customers in number order.
    pub fn rescore(&self, r: &crate::metrics::churn_risk::Rescore<'_>) -> Sweep {
        let mut sweep = Sweep::default();
        for p in self.tasks() {
            let Some(task) = self.tasks.get(&p).map(|t| t.value().clone()) else {
                continue;
            };
            let mut from = 0u32;
            loop {
                let mut guard = lock(&task);
                let task = &mut *guard;
                let len = u32::try_from(task.customer_ids.len()).unwrap_or(u32::MAX);
                if from >= len {
                    break;
                }
                let to = len.min(from.saturating_add(RESCORE_CHUNK));
                sweep.merge(
                    task.families
                        .risk
                        .rescore_range(&task.customer_ids, from..to, r),
                );
                from = to;
            }
        }
        sweep
    }

    /// Every customer's risk at `at` (replay), by task then customer id.
    pub fn customer_risks(
        &self,
        at: Millis,
        model: &RiskModel,
        threshold: f64,
    ) -> Vec<crate::metrics::churn_risk::CustomerRisk> {
        let mut out = vec![];
        for p in self.tasks() {
            if let Some(task) = self.tasks.get(&p) {
                let task = lock(task.value());
                out.extend(task.families.risk.risks(
                    &task.customer_ids,
                    at,
                    model,
                    threshold,
                    self.cfg.state_ttl_ms,
                ));
            }
        }
        out
    }

    /// The cumulative session-duration histogram over every task.
    pub fn duration_histogram(&self) -> DurationHistogram {
        let mut h = DurationHistogram::default();
        for entry in self.tasks.iter() {
            let task = lock(entry.value());
            h.merge(task.families.web.histogram());
        }
        h
    }

    /// Drops buckets no window can show again once the instance watermark is `watermark`.
    pub fn evict(&self, watermark: Millis) {
        for entry in self.tasks.iter() {
            let mut task = lock(entry.value());
            task.evicted_at = Some(task.evicted_at.map_or(watermark, |e| e.max(watermark)));
            let lower_bound = task.closing_watermark(&self.cfg);
            for (idx, spec) in self.cfg.windows.iter().enumerate() {
                let (start, end) = spec.bounds_at(watermark);
                for f in task.families.all_mut() {
                    f.evict(idx, start, end, lower_bound);
                }
            }
            // After the families forgot what they could: numbers left without state are released.
            if let (Some(ttl), Some(f)) = (self.cfg.state_ttl_ms, lower_bound) {
                task.expire_customers(f, ttl);
            }
        }
    }

    /// Entries per kind of state over every task, for the memory accounting ([`memory`]).
    pub fn state_size(&self) -> memory::StateSize {
        use memory::StateKind;
        let mut size = memory::StateSize::default();
        for entry in self.tasks.iter() {
            let t = lock(entry.value());
            size.add(StateKind::Customer, t.customer_ids.live());
            let ids: usize = t.inputs.values().map(|i| i.dedup.len()).sum();
            size.add(StateKind::EventId, ids);
            t.families.all().iter().for_each(|f| f.account(&mut size));
        }
        size
    }

    /// Entries held in state (open sessions, buckets, remembered ids), for the state-size gauge.
    pub fn state_entries(&self) -> usize {
        self.tasks
            .iter()
            .map(|t| {
                let t = lock(t.value());
                t.families.all().iter().map(|f| f.size()).sum::<usize>()
                    + t.customer_ids.len()
                    + t.inputs.values().map(|i| i.dedup.len()).sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved<'a>(partition: i32, base: &'a [u8], deltas: &[&'a [u8]]) -> SavedTask<'a> {
        SavedTask {
            partition,
            base,
            deltas: deltas.to_vec(),
        }
    }

    #[test]
    fn a_state_of_another_format_is_refused_not_misread() {
        let e = Engine::new(CoreConfig::default());
        let err = e.restore_task(0, b"\x00\x01\x02 older layout").unwrap_err();
        assert!(err.to_string().contains("engaged-task-state/7"), "{err}");
        assert!(e.tasks().is_empty());
        // A header with a truncated body is refused too, and nothing is installed.
        let mut bytes = BASE_FORMAT.to_vec();
        bytes.push(0xff);
        assert!(matches!(
            e.restore_tasks(&[saved(0, b"", &[])], 1),
            Err(StateError::Decode(_))
        ));
        assert!(matches!(
            e.restore_tasks(&[saved(1, &bytes, &[])], 2),
            Err(StateError::Decode(_))
        ));
        // A base where a delta belongs, and the other way round, are refused.
        let t = TopicPartition::new("purchases", 2);
        e.advance(&t, 1_000);
        let base = e.save_task(2, Form::Base).unwrap().unwrap();
        let delta = e.save_task(2, Form::Delta).unwrap().unwrap();
        e.drop_task(2);
        assert!(e.restore_tasks(&[saved(2, &delta, &[])], 1).is_err());
        assert!(e.restore_tasks(&[saved(2, &base, &[&base])], 1).is_err());
        assert!(e.tasks().is_empty());
        e.restore_tasks(&[saved(2, &base, &[&delta])], 1).unwrap();
        assert_eq!(e.tasks(), vec![2]);
    }

    #[test]
    fn a_restored_chain_goes_on_with_deltas() {
        use crate::event::{Event, Purchase, PurchaseType};
        let order = |e: &Engine, n: usize, customer: &str| {
            let p = Event::Purchase(Purchase {
                event_id: format!("e{n}"),
                event_time: 1_700_000_000_000 + n as i64 * 1000,
                customer_id: customer.into(),
                order_id: format!("o{n}"),
                kind: PurchaseType::Order,
                amount_minor: 100,
                currency: "EUR".into(),
                cost_minor: None,
                items: 1,
                campaign_id: None,
            });
            e.apply(&TopicPartition::new("purchases", 0), &p).unwrap();
        };
        let first = Engine::new(CoreConfig::default());
        order(&first, 0, "a");
        let base = first.save_task(0, Form::Base).unwrap().unwrap();
        order(&first, 1, "b");
        let d1 = first.save_task(0, Form::Delta).unwrap().unwrap();
        // Restored from base + d1, the next delta adds only what came after d1.
        let second = Engine::new(CoreConfig::default());
        second.restore_tasks(&[saved(0, &base, &[&d1])], 1).unwrap();
        order(&second, 2, "c");
        let d2 = second.save_task(0, Form::Delta).unwrap().unwrap();
        let third = Engine::new(CoreConfig::default());
        third
            .restore_tasks(&[saved(0, &base, &[&d1, &d2])], 1)
            .unwrap();
        assert_eq!(third.state_entries(), second.state_entries());
        let ids = |e: &Engine| lock(e.tasks.get(&0).unwrap().value()).customer_ids.len();
        assert_eq!(ids(&third), 3);
    }

    #[test]
    fn customer_ids_survive_a_save_and_restore() {
        let mut ids = crate::metrics::CustomerIds::default();
        let (a, b) = (ids.get("alice"), ids.get("bob"));
        assert_eq!(ids.get("alice"), a);
        let bytes = postcard::to_stdvec(&ids).unwrap();
        let mut back: crate::metrics::CustomerIds = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((back.name(a), back.name(b)), ("alice", "bob"));
        assert_eq!(back.get("bob"), b);
        assert_eq!(back.len(), 2);
        // A list naming a customer twice is corrupt.
        let twice = postcard::to_stdvec(&["x", "x"]).unwrap();
        assert!(postcard::from_bytes::<crate::metrics::CustomerIds>(&twice).is_err());
    }

    #[test]
    fn released_customer_numbers_stay_released_through_compaction_bases_and_deltas() {
        use crate::metrics::{CustomerId, CustomerIds};
        let mut ids = CustomerIds::default();
        let names: Vec<String> = (0..3000).map(|i| format!("customer-{i:05}")).collect();
        let numbers: Vec<CustomerId> = names.iter().map(|n| ids.get(n)).collect();
        let base = delta::in_form(Form::Base, || postcard::to_stdvec(&ids).unwrap());
        ids.saved();
        // Release two thirds (the arena compacts on the way), add a few more.
        for (i, c) in numbers.iter().enumerate() {
            if i % 3 != 0 {
                ids.release(*c);
            }
        }
        let late: Vec<CustomerId> = (0..5).map(|i| ids.get(&format!("late-{i}"))).collect();
        ids.release(late[0]);
        let check = |ids: &CustomerIds| {
            assert_eq!(ids.len(), 3005);
            assert_eq!(ids.live(), 1000 + 4);
            for (i, c) in numbers.iter().enumerate() {
                let want = if i % 3 == 0 { names[i].as_str() } else { "" };
                assert_eq!(ids.name(*c), want, "number {i}");
            }
            assert_eq!(ids.name(late[0]), "");
            assert_eq!(ids.name(late[4]), "late-4");
        };
        check(&ids);
        let delta = delta::in_form(Form::Delta, || postcard::to_stdvec(&ids).unwrap());
        // A base after the releases, and the old base plus the delta, read the same.
        let base_now = delta::in_form(Form::Base, || postcard::to_stdvec(&ids).unwrap());
        let from_base: CustomerIds =
            delta::in_form(Form::Base, || postcard::from_bytes(&base_now).unwrap());
        let mut chained: CustomerIds =
            delta::in_form(Form::Base, || postcard::from_bytes(&base).unwrap());
        let d: CustomerIds = delta::in_form(Form::Delta, || postcard::from_bytes(&delta).unwrap());
        chained.merge(d).unwrap();
        for mut restored in [ids.clone(), from_base, chained] {
            check(&restored);
            // A released customer coming back gets a new number; kept ones keep theirs.
            assert_eq!(restored.get(&names[3]), numbers[3]);
            assert_eq!(restored.get(&names[1]), CustomerId::from_index(3005));
        }
    }
}
