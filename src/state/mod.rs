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
mod engine;
pub mod memory;
mod task;

pub use engine::{Engine, SavedTask};

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::event::InvalidEvent;
use crate::window::WindowSpec;

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
    /// Values of each kind of label (site, channel, page, campaign) a task names
    /// at a time; the rest count as `other` (see `metrics::labels`).
    pub max_label_values: usize,
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
            max_label_values: 1_000,
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

#[cfg(test)]
mod tests;
