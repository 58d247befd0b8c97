//! Telemetry in one place: every Prometheus family engaged exposes, with its help text.
//!
//! Operational families (consumed, rejected, lag, watermarks, …) are ordinary
//! `prometheus` metrics in [`Telemetry::registry`]. The windowed metric families
//! are rendered at scrape time from the latest published snapshots, so that a
//! ratio with a zero denominator is simply absent (SPEC §3) and a scrape never
//! sees half of an update.

pub mod history;
pub mod output;
mod windowed;

use std::sync::{Arc, Mutex, RwLock};

use prometheus::core::Collector;
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::metrics::churn_risk::{RISK_BUCKETS, RiskModel};
use crate::metrics::web::{DURATION_BUCKETS_SECONDS, DurationHistogram};
use crate::snapshot::WindowSnapshot;
use crate::state::RejectReason;
pub use windowed::{NOW_FAMILIES, now_value, windowed_help, windowed_value};
use windowed::{family, gauge, windowed_families};

/// What the latest snapshot round published.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub snapshots: Vec<WindowSnapshot>,
    pub durations: DurationHistogram,
    /// Customers per churn-risk bucket at the last sweep (once a model exists).
    pub risk_distribution: Option<[u64; RISK_BUCKETS.len()]>,
}

/// Every operational metric, plus the latest snapshots for the windowed families.
pub struct Telemetry {
    registry: Registry,
    pub consumed: IntCounterVec,
    pub accepted: IntCounterVec,
    pub rejected: IntCounterVec,
    pub dead_letters: IntCounter,
    /// Schema Registry lookups of unknown Confluent schema ids, by outcome
    /// (`crate::registry::Outcome`).
    pub schema_registry_lookups: IntCounterVec,
    pub watermark: prometheus::Gauge,
    pub watermark_delay: prometheus::Gauge,
    pub partition_watermark: prometheus::GaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub state_entries: IntGauge,
    /// Entries per kind of state (see `state::memory`).
    pub state_kind_entries: IntGaugeVec,
    /// Estimated heap bytes per kind of state: entries × the memory model.
    pub state_memory_bytes: IntGaugeVec,
    pub snapshot_duration: Histogram,
    pub snapshots_published: IntCounter,
    pub checkpoint_age: prometheus::Gauge,
    pub checkpoint_duration: Histogram,
    pub checkpoint_pause: Histogram,
    pub consumer_idle: prometheus::Counter,
    /// Time the consumer loop spent on snapshot rounds.
    pub snapshot_loop: prometheus::Counter,
    pub consumer_batch: Histogram,
    pub checkpoint_bytes_written: IntCounter,
    pub checkpoint_pieces: IntCounterVec,
    pub checkpoint_state_bytes: IntGauge,
    pub restore_duration: prometheus::Gauge,
    pub model_parameter: prometheus::GaugeVec,
    pub model_log_likelihood: prometheus::GaugeVec,
    pub model_customers: IntGauge,
    pub model_converged: IntGauge,
    pub model_fit_duration: prometheus::Gauge,
    pub model_fitted_at: prometheus::Gauge,
    /// Back-pressure on output: in flight, skipped rounds, paused consumption.
    pub output: output::OutputTelemetry,
    published: RwLock<Round>,
    /// The last hour of published rounds, for the live page's charts.
    history: Mutex<history::History>,
}

/// The latest published round and its sequence number (0: none yet).
#[derive(Debug, Clone, Default)]
struct Round {
    seq: u64,
    published: Arc<Published>,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric families are defined once, with distinct names");
    c
}

impl Telemetry {
    /// Publishes the state's accounting: entries and estimated bytes per kind.
    pub fn set_state_size(&self, size: &crate::state::memory::StateSize) {
        for kind in crate::state::memory::StateKind::ALL {
            let label = [kind.as_str()];
            let entries = i64::try_from(size.entries(kind)).unwrap_or(i64::MAX);
            let bytes = i64::try_from(size.bytes(kind)).unwrap_or(i64::MAX);
            self.state_kind_entries
                .with_label_values(&label)
                .set(entries);
            self.state_memory_bytes.with_label_values(&label).set(bytes);
        }
    }

    pub fn new() -> Telemetry {
        let r = Registry::new();
        let t = Telemetry {
            consumed: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "engaged_events_consumed_total",
                        "Input records consumed, accepted or not.",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid"),
            ),
            accepted: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "engaged_events_accepted_total",
                        "Input records applied to the metrics.",
                    ),
                    &["topic"],
                )
                .expect("valid"),
            ),
            rejected: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "engaged_events_rejected_total",
                        "Input records rejected (sent to the dead-letter topic), by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            dead_letters: register(
                &r,
                IntCounter::new(
                    "engaged_dead_letter_records_total",
                    "Records written to the dead-letter topic.",
                )
                .expect("valid"),
            ),
            schema_registry_lookups: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "engaged_schema_registry_lookups_total",
                        "Schema Registry lookups of Confluent schema ids the decoder did not know, by \
                         outcome: found, not_found (404), unusable (a schema engaged cannot read), \
                         refused (another 4xx, e.g. 401), unreachable (after every retry). A failed \
                         id's records are dead-lettered as undecodable.",
                    ),
                    &["outcome"],
                )
                .expect("valid"),
            ),
            watermark: register(
                &r,
                prometheus::Gauge::new(
                    "engaged_watermark_timestamp_seconds",
                    "Instance watermark (event time, Unix seconds): min over non-idle partitions.",
                )
                .expect("valid"),
            ),
            watermark_delay: register(
                &r,
                prometheus::Gauge::new(
                    "engaged_watermark_delay_seconds",
                    "Wall clock minus the instance watermark.",
                )
                .expect("valid"),
            ),
            partition_watermark: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "engaged_partition_watermark_timestamp_seconds",
                        "Watermark of each input topic-partition (event time, Unix seconds).",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid"),
            ),
            consumer_lag: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "engaged_consumer_lag_messages",
                        "Consumer lag per partition, from librdkafka statistics.",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid"),
            ),
            assigned_partitions: register(
                &r,
                IntGauge::new(
                    "engaged_assigned_partitions",
                    "Input partitions assigned to this instance.",
                )
                .expect("valid"),
            ),
            state_entries: register(
                &r,
                IntGauge::new(
                    "engaged_state_entries",
                    "Entries held in state: open sessions, window buckets, remembered event ids, per-customer entries (distinct counters, activity runs, order histories, customer ids).",
                )
                .expect("valid"),
            ),
            state_kind_entries: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "engaged_state_kind_entries",
                        "Entries held in state per kind: customer, open_session, session_duration, message, event_id, window_bucket, distinct_position.",
                    ),
                    &["kind"],
                )
                .expect("valid"),
            ),
            state_memory_bytes: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "engaged_state_memory_bytes",
                        "Estimated heap bytes of the state per kind: entries times the documented memory model (docs/operations.md).",
                    ),
                    &["kind"],
                )
                .expect("valid"),
            ),
            snapshot_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "engaged_snapshot_duration_seconds",
                        "Time to compute one snapshot round.",
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                )
                .expect("valid"),
            ),
            snapshots_published: register(
                &r,
                IntCounter::new(
                    "engaged_snapshots_published_total",
                    "Snapshot rounds published.",
                )
                .expect("valid"),
            ),
            checkpoint_age: register(
                &r,
                prometheus::Gauge::new(
                    "engaged_checkpoint_age_seconds",
                    "Time since the last successful checkpoint.",
                )
                .expect("valid"),
            ),
            checkpoint_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "engaged_checkpoint_duration_seconds",
                        "Time to write one checkpoint round (state, manifest, acknowledgements).",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0]),
                )
                .expect("valid"),
            ),
            checkpoint_pause: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "engaged_checkpoint_pause_seconds",
                        "Time a checkpoint round held the consumer loop: serialising the changed tasks (a periodic \
                         round is written and acknowledged in the background).",
                    )
                    .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                )
                .expect("valid"),
            ),
            consumer_idle: register(
                &r,
                prometheus::Counter::new(
                    "engaged_consumer_idle_seconds_total",
                    "Time the consumer loop waited with nothing to do: no record fetched and no snapshot or \
                     checkpoint due. One minus its rate is how busy the loop is (Flink's idleTimeMsPerSecond); \
                     near zero, the sidecar is the bottleneck, not the broker.",
                )
                .expect("valid"),
            ),
            snapshot_loop: register(
                &r,
                prometheus::Counter::new(
                    "engaged_snapshot_loop_seconds_total",
                    "Time the consumer loop spent on snapshot rounds (computing, encoding, enqueueing), \
                     when no record is applied. A round that takes longer than `snapshot_interval` is \
                     followed by as long without one, so its rate stays at or below one half.",
                )
                .expect("valid"),
            ),
            consumer_batch: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "engaged_consumer_batch_records",
                        "Records per batch the consumer loop applied (tasks of a batch apply in parallel).",
                    )
                    .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
                )
                .expect("valid"),
            ),
            checkpoint_bytes_written: register(
                &r,
                IntCounter::new(
                    "engaged_checkpoint_written_bytes_total",
                    "Bytes of state written to the checkpoint topic.",
                )
                .expect("valid"),
            ),
            checkpoint_pieces: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "engaged_checkpoint_pieces_total",
                        "Task states written to the checkpoint topic, as a base (whole) or a delta (what changed since the last save).",
                    ),
                    &["form"],
                )
                .expect("valid"),
            ),
            checkpoint_state_bytes: register(
                &r,
                IntGauge::new(
                    "engaged_checkpoint_state_bytes",
                    "Size of the state written by the last checkpoint round.",
                )
                .expect("valid"),
            ),
            restore_duration: register(
                &r,
                prometheus::Gauge::new(
                    "engaged_restore_duration_seconds",
                    "Time the last restore from the checkpoint topic took.",
                )
                .expect("valid"),
            ),
            model_parameter: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "engaged_churn_model_parameter",
                        "Fitted population parameters: r, alpha (days), a, b of the BTYD model; p, q, v of Gamma-Gamma.",
                    ),
                    &["model", "parameter"],
                )
                .expect("valid"),
            ),
            model_log_likelihood: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "engaged_churn_model_log_likelihood",
                        "Log-likelihood of the last fit (sum over the fitted customers).",
                    ),
                    &["model"],
                )
                .expect("valid"),
            ),
            model_customers: register(
                &r,
                IntGauge::new(
                    "engaged_churn_model_fitted_customers",
                    "Customers the last fit used.",
                )
                .expect("valid"),
            ),
            model_converged: register(
                &r,
                IntGauge::new(
                    "engaged_churn_model_converged",
                    "1 if the last fit converged, else 0.",
                )
                .expect("valid"),
            ),
            model_fit_duration: register(
                &r,
                prometheus::Gauge::new(
                    "engaged_churn_model_fit_duration_seconds",
                    "Time the last fit took.",
                )
                .expect("valid"),
            ),
            model_fitted_at: register(
                &r,
                prometheus::Gauge::new(
                    "engaged_churn_model_fit_timestamp_seconds",
                    "Wall-clock time of the last fit.",
                )
                .expect("valid"),
            ),
            output: output::OutputTelemetry::new(&r),
            registry: r,
            published: RwLock::new(Round::default()),
            history: Mutex::new(history::History::default()),
        };
        for reason in RejectReason::ALL {
            t.rejected.with_label_values(&[reason.as_str()]);
        }
        t
    }

    pub fn count_rejected(&self, reason: RejectReason) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// Publishes a fitted churn model's parameters.
    pub fn publish_model(&self, m: &RiskModel) {
        let name = m.model.name();
        self.model_parameter.reset();
        for (k, v) in [
            ("r", m.params.r),
            ("alpha", m.params.alpha),
            ("a", m.params.a),
            ("b", m.params.b),
        ] {
            self.model_parameter.with_label_values(&[name, k]).set(v);
        }
        if let Some(s) = m.spend {
            for (k, v) in [("p", s.p), ("q", s.q), ("v", s.v)] {
                self.model_parameter
                    .with_label_values(&["gamma_gamma", k])
                    .set(v);
            }
        }
        self.model_log_likelihood.reset();
        self.model_log_likelihood
            .with_label_values(&[name])
            .set(m.log_likelihood);
        self.model_customers.set(m.customers as i64);
        self.model_converged.set(i64::from(m.converged));
        self.model_fitted_at
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }

    /// Replaces the snapshots the windowed families are rendered from, and keeps the
    /// round in the bounded history of the live page.
    pub fn publish(&self, p: Published) {
        let now = chrono::Utc::now().timestamp_millis();
        // The history first: a reader that sees round n on /metrics finds it there too.
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let mut round = self.published.write().unwrap_or_else(|e| e.into_inner());
        let seq = round.seq + 1;
        history.record(seq, now, &p.snapshots);
        *round = Round {
            seq,
            published: Arc::new(p),
        };
    }

    pub fn latest(&self) -> Arc<Published> {
        self.latest_round().1
    }

    /// The latest round with its sequence number (1 = the first published; 0 = none
    /// yet), as `engaged_snapshot_sequence` shows it.
    pub fn latest_round(&self) -> (u64, Arc<Published>) {
        let r = self.published.read().unwrap_or_else(|e| e.into_inner());
        (r.seq, r.published.clone())
    }

    /// The bounded history of published rounds (see [`history`]), oldest first.
    pub fn history(&self) -> Vec<Arc<history::HistoryPoint>> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .points()
            .cloned()
            .collect()
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        let (seq, latest) = self.latest_round();
        families.extend(windowed_families(&latest));
        families.push(family(
            "engaged_snapshot_sequence".into(),
            "Sequence number of the snapshot round the windowed families of this scrape come \
             from (1 = the first published since start; the live page at / shows the same number).",
            MetricType::GAUGE,
            vec![gauge(vec![], seq as f64)],
        ));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = vec![];
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// Sums a counter vector over all its label values.
pub trait CollectTotal {
    fn collect_total(&self) -> u64;
}

impl CollectTotal for IntCounterVec {
    fn collect_total(&self) -> u64 {
        self.collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}
