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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;

use crate::event::{Event, InvalidEvent, Millis};
use crate::metrics::Dim;
use crate::metrics::web::{DurationHistogram, WebCounts, WebState};
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
    /// Top-N values per breakdown dimension (`site`, `channel`); the rest are `other`.
    pub max_dimension_values: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        const MIN: i64 = 60_000;
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
#[derive(Debug, Clone)]
struct InputState {
    clock: PartitionClock,
    dedup: Dedup,
    /// Whether this input has carried page views (it then gates session closing).
    carries_views: bool,
}

impl InputState {
    fn new(cfg: &CoreConfig) -> InputState {
        InputState {
            clock: PartitionClock::new(),
            dedup: Dedup::new(cfg.dedup_window_ms),
            carries_views: false,
        }
    }
}

/// The state of one task (one partition number across the input topics).
#[derive(Debug, Clone)]
pub struct TaskState {
    inputs: BTreeMap<Arc<str>, InputState>,
    web: WebState,
}

impl TaskState {
    fn new(cfg: &CoreConfig) -> TaskState {
        TaskState {
            inputs: BTreeMap::new(),
            web: WebState::new(&cfg.windows, cfg.session_timeout_ms),
        }
    }

    /// Sessions close when every input that carries page views has passed their end.
    fn view_watermark(&self, lateness: i64) -> Option<Millis> {
        self.inputs
            .values()
            .filter(|i| i.carries_views)
            .map(|i| i.clock.watermark(lateness))
            .min()
            .flatten()
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
        if let Event::PageView(pv) = event {
            input.carries_views = true;
            self.web.on_view(pv);
        }
        self.on_watermark(lateness);
        Ok(())
    }

    fn on_watermark(&mut self, lateness: i64) {
        if let Some(w) = self.view_watermark(lateness) {
            self.web.on_watermark(w);
        }
    }
}

/// Applies events to sharded task state and reads window aggregates out of it.
///
/// `Engine` is `Sync`: the consumer applies events while the snapshot task reads.
/// A `DashMap` shard lock is held only for one event or one task's read.
pub struct Engine {
    cfg: Arc<CoreConfig>,
    tasks: DashMap<i32, TaskState>,
}

/// Window aggregates of the whole instance for one window, per dimension.
#[derive(Debug, Clone, Default)]
pub struct WindowAggregates {
    pub web: HashMap<Dim, WebCounts>,
}

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

    /// Validates and applies one decoded event from `tp`. Rejected events change nothing.
    pub fn apply(&self, tp: &TopicPartition, event: &Event) -> Result<(), Rejection> {
        event.validate()?;
        let mut task = self
            .tasks
            .entry(tp.partition)
            .or_insert_with(|| TaskState::new(&self.cfg));
        task.apply(&self.cfg, &tp.topic, event)
    }

    /// Moves `tp`'s watermark to at least `watermark` (end of a replay).
    pub fn advance(&self, tp: &TopicPartition, watermark: Millis) {
        let mut task = self
            .tasks
            .entry(tp.partition)
            .or_insert_with(|| TaskState::new(&self.cfg));
        let cfg = &self.cfg;
        let input = task
            .inputs
            .entry(tp.topic.clone())
            .or_insert_with(|| InputState::new(cfg));
        input.clock.advance_to(watermark);
        task.on_watermark(cfg.allowed_lateness_ms);
    }

    /// The watermark of every topic-partition that has state.
    pub fn watermarks(&self) -> Vec<(TopicPartition, Option<Millis>)> {
        let lateness = self.cfg.allowed_lateness_ms;
        let mut out = vec![];
        for task in self.tasks.iter() {
            for (topic, input) in &task.inputs {
                out.push((
                    TopicPartition {
                        topic: topic.clone(),
                        partition: *task.key(),
                    },
                    input.clock.watermark(lateness),
                ));
            }
        }
        out.sort();
        out
    }

    /// Drops a task's state (its partitions were revoked).
    pub fn drop_task(&self, partition: i32) {
        self.tasks.remove(&partition);
    }

    /// Sums window `idx` over every task for `[start, end)`.
    pub fn aggregate(&self, idx: usize, start: Millis, end: Millis) -> WindowAggregates {
        let mut agg = WindowAggregates::default();
        for task in self.tasks.iter() {
            task.web.collect(idx, start, end, &mut agg.web);
        }
        agg
    }

    /// Open sessions now, per dimension, over every task.
    pub fn open_sessions(&self) -> HashMap<Dim, u64> {
        let mut open = HashMap::new();
        for task in self.tasks.iter() {
            task.web.collect_open(&mut open);
        }
        open
    }

    /// The cumulative session-duration histogram over every task.
    pub fn duration_histogram(&self) -> DurationHistogram {
        let mut h = DurationHistogram::default();
        for task in self.tasks.iter() {
            h.merge(task.web.histogram());
        }
        h
    }

    /// Drops buckets no window can show again once the instance watermark is `watermark`.
    pub fn evict(&self, watermark: Millis) {
        for mut task in self.tasks.iter_mut() {
            for (idx, spec) in self.cfg.windows.iter().enumerate() {
                let (start, _) = spec.bounds_at(watermark);
                task.web.evict(idx, start);
            }
        }
    }

    /// Entries held in state (open sessions, buckets, remembered ids), for the state-size gauge.
    pub fn state_entries(&self) -> usize {
        self.tasks
            .iter()
            .map(|t| t.web.size() + t.inputs.values().map(|i| i.dedup.len()).sum::<usize>())
            .sum()
    }
}
