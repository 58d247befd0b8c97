//! Telemetry in one place: every Prometheus family engaged exposes, with its help text.
//!
//! Operational families (consumed, rejected, lag, watermarks, …) are ordinary
//! `prometheus` metrics in [`Telemetry::registry`]. The windowed metric families
//! are rendered at scrape time from the latest published snapshots, so that a
//! ratio with a zero denominator is simply absent (SPEC §3) and a scrape never
//! sees half of an update.

pub mod history;
pub mod output;

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

type Extract = fn(&WindowSnapshot) -> Option<f64>;

/// Which dimension rows a family is published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// `all`, `_by_site`, `_by_channel`.
    Web,
    /// `all`, `_by_campaign`.
    Email,
    /// `_by_page` only.
    Page,
    /// `all` only.
    All,
}

impl Rows {
    fn has(self, dimension: &str) -> bool {
        match self {
            Rows::Web => matches!(dimension, "all" | "site" | "channel"),
            Rows::Email => matches!(dimension, "all" | "campaign"),
            Rows::Page => dimension == "page",
            Rows::All => dimension == "all",
        }
    }
}

/// Windowed gauges: (name, help, rows, value). `None` values are absent.
const WINDOWED: &[(&str, &str, Rows, Extract)] = &[
    (
        "engaged_web_page_views",
        "Page views in the window.",
        Rows::Web,
        |s| Some(s.page_views as f64),
    ),
    (
        "engaged_web_sessions",
        "Sessions closed in the window.",
        Rows::Web,
        |s| Some(s.sessions as f64),
    ),
    (
        "engaged_web_bounced_sessions",
        "Closed sessions with exactly one page view.",
        Rows::Web,
        |s| Some(s.bounced_sessions as f64),
    ),
    (
        "engaged_web_bounce_ratio",
        "bounced_sessions / sessions; absent when there are no sessions.",
        Rows::Web,
        |s| s.bounce_rate,
    ),
    (
        "engaged_web_sessions_duration_seconds",
        "Sum of the durations of the sessions closed in the window.",
        Rows::Web,
        |s| Some(s.session_duration_sum_seconds),
    ),
    (
        "engaged_web_session_duration_avg_seconds",
        "Average session duration: sessions_duration / sessions.",
        Rows::Web,
        |s| s.avg_session_duration_seconds,
    ),
    (
        "engaged_web_session_duration_p50_seconds",
        "Median session duration (nearest rank).",
        Rows::Web,
        |s| s.session_duration_p50_seconds,
    ),
    (
        "engaged_web_session_duration_p90_seconds",
        "90th percentile of session duration (nearest rank).",
        Rows::Web,
        |s| s.session_duration_p90_seconds,
    ),
    (
        "engaged_web_page_views",
        "Page views of the page in the window (top pages by page views, the rest as other).",
        Rows::Page,
        |s| Some(s.page_views as f64),
    ),
    (
        "engaged_web_exits",
        "Sessions closed in the window whose exit page (the page of their last view) is the page.",
        Rows::Page,
        |s| s.exits.map(|v| v as f64),
    ),
    (
        "engaged_web_exit_ratio",
        "exits / page_views of the page in the window; absent without page views.",
        Rows::Page,
        |s| s.exit_rate,
    ),
    (
        "engaged_email_sent",
        "Messages whose first SENT falls in the window.",
        Rows::Email,
        |s| s.emails_sent.map(|v| v as f64),
    ),
    (
        "engaged_email_delivered",
        "Messages whose first DELIVERED falls in the window.",
        Rows::Email,
        |s| s.emails_delivered.map(|v| v as f64),
    ),
    (
        "engaged_email_bounced",
        "Messages whose first BOUNCED falls in the window.",
        Rows::Email,
        |s| s.emails_bounced.map(|v| v as f64),
    ),
    (
        "engaged_email_unique_opens",
        "Messages whose first open (OPENED or CLICKED) falls in the window.",
        Rows::Email,
        |s| s.unique_opens.map(|v| v as f64),
    ),
    (
        "engaged_email_unique_clicks",
        "Messages whose first CLICKED falls in the window.",
        Rows::Email,
        |s| s.unique_clicks.map(|v| v as f64),
    ),
    (
        "engaged_email_unsubscribes",
        "Messages whose first UNSUBSCRIBED falls in the window.",
        Rows::Email,
        |s| s.unsubscribes.map(|v| v as f64),
    ),
    (
        "engaged_email_complaints",
        "Messages whose first COMPLAINED falls in the window.",
        Rows::Email,
        |s| s.complaints.map(|v| v as f64),
    ),
    (
        "engaged_email_delivered_opened",
        "Of the messages first DELIVERED in the window, those opened (or clicked) less than email_dedup_ttl after it.",
        Rows::Email,
        |s| s.delivered_opened.map(|v| v as f64),
    ),
    (
        "engaged_email_delivered_clicked",
        "Of the messages first DELIVERED in the window, those clicked less than email_dedup_ttl after it.",
        Rows::Email,
        |s| s.delivered_clicked.map(|v| v as f64),
    ),
    (
        "engaged_email_delivered_unsubscribed",
        "Of the messages first DELIVERED in the window, those unsubscribed less than email_dedup_ttl after it.",
        Rows::Email,
        |s| s.delivered_unsubscribed.map(|v| v as f64),
    ),
    (
        "engaged_email_delivered_complained",
        "Of the messages first DELIVERED in the window, those with a complaint less than email_dedup_ttl after it.",
        Rows::Email,
        |s| s.delivered_complained.map(|v| v as f64),
    ),
    (
        "engaged_email_sent_bounced",
        "Of the messages first SENT in the window, those BOUNCED less than email_dedup_ttl after it.",
        Rows::Email,
        |s| s.sent_bounced.map(|v| v as f64),
    ),
    (
        "engaged_email_open_ratio",
        "delivered_opened / delivered: the send cohort's open rate.",
        Rows::Email,
        |s| s.open_rate,
    ),
    (
        "engaged_email_click_through_ratio",
        "delivered_clicked / delivered.",
        Rows::Email,
        |s| s.click_through_rate,
    ),
    (
        "engaged_email_click_to_open_ratio",
        "delivered_clicked / delivered_opened.",
        Rows::Email,
        |s| s.click_to_open_rate,
    ),
    (
        "engaged_email_unsubscribe_ratio",
        "delivered_unsubscribed / delivered.",
        Rows::Email,
        |s| s.unsubscribe_rate,
    ),
    (
        "engaged_email_complaint_ratio",
        "delivered_complained / delivered.",
        Rows::Email,
        |s| s.complaint_rate,
    ),
    (
        "engaged_email_bounce_ratio",
        "sent_bounced / sent.",
        Rows::Email,
        |s| s.email_bounce_rate,
    ),
    (
        "engaged_email_attributed_orders",
        "ORDERs within the attribution window after the customer's last click.",
        Rows::Email,
        |s| s.attributed_orders.map(|v| v as f64),
    ),
    (
        "engaged_email_conversion_ratio",
        "attributed_orders / unique_clicks.",
        Rows::Email,
        |s| s.email_conversion_rate,
    ),
    ("engaged_commerce_orders", "ORDER events.", Rows::All, |s| {
        s.orders.map(|v| v as f64)
    }),
    (
        "engaged_commerce_order_revenue_minor",
        "Sum of amount_minor of ORDER events (minor currency units).",
        Rows::All,
        |s| s.order_revenue_minor.map(|v| v as f64),
    ),
    (
        "engaged_commerce_revenue_minor",
        "Sum of amount_minor of ORDER and RENEWAL events (minor currency units).",
        Rows::All,
        |s| s.revenue_minor.map(|v| v as f64),
    ),
    (
        "engaged_commerce_refunds_minor",
        "Sum of amount_minor of REFUND events (minor currency units).",
        Rows::All,
        |s| s.refunds_minor.map(|v| v as f64),
    ),
    (
        "engaged_commerce_net_revenue_minor",
        "revenue - refunds (minor currency units).",
        Rows::All,
        |s| s.net_revenue_minor.map(|v| v as f64),
    ),
    (
        "engaged_commerce_purchasing_customers",
        "Distinct customers with an ORDER in the window.",
        Rows::All,
        |s| s.purchasing_customers.map(|v| v as f64),
    ),
    (
        "engaged_commerce_average_order_value_minor",
        "order_revenue / orders (minor currency units).",
        Rows::All,
        |s| s.average_order_value,
    ),
    (
        "engaged_commerce_orders_per_customer",
        "orders / purchasing_customers.",
        Rows::All,
        |s| s.orders_per_customer,
    ),
    (
        "engaged_commerce_returning_customers",
        "Purchasing customers whose first ORDER is before the window.",
        Rows::All,
        |s| s.returning_customers.map(|v| v as f64),
    ),
    (
        "engaged_commerce_returning_customer_ratio",
        "returning_customers / purchasing_customers.",
        Rows::All,
        |s| s.returning_customer_rate,
    ),
    (
        "engaged_commerce_new_customers",
        "Customers whose first ORDER falls in the window.",
        Rows::All,
        |s| s.new_customers.map(|v| v as f64),
    ),
    (
        "engaged_commerce_margin_minor",
        "Sum of amount - cost over ORDERs with a cost (minor currency units).",
        Rows::All,
        |s| s.margin_minor.map(|v| v as f64),
    ),
    (
        "engaged_commerce_profit_per_customer_minor",
        "margin / purchasing_customers (minor currency units).",
        Rows::All,
        |s| s.profit_per_customer,
    ),
    (
        "engaged_commerce_renewals",
        "RENEWAL events.",
        Rows::All,
        |s| s.renewals.map(|v| v as f64),
    ),
    (
        "engaged_commerce_cancellations",
        "CANCELLATION events.",
        Rows::All,
        |s| s.cancellations.map(|v| v as f64),
    ),
    (
        "engaged_commerce_revenue_churn_minor",
        "Sum of amount_minor of CANCELLATION events (minor currency units).",
        Rows::All,
        |s| s.revenue_churn_minor.map(|v| v as f64),
    ),
    (
        "engaged_survey_nps",
        "Net Promoter Score: 100 * (promoters - detractors) / responses.",
        Rows::All,
        |s| s.nps,
    ),
    (
        "engaged_survey_nps_responses",
        "NPS responses.",
        Rows::All,
        |s| s.nps_responses.map(|v| v as f64),
    ),
    (
        "engaged_survey_nps_promoters",
        "NPS responses scoring 9-10.",
        Rows::All,
        |s| s.nps_promoters.map(|v| v as f64),
    ),
    (
        "engaged_survey_nps_detractors",
        "NPS responses scoring 0-6.",
        Rows::All,
        |s| s.nps_detractors.map(|v| v as f64),
    ),
    (
        "engaged_survey_csat",
        "CSAT: 100 * satisfied (4-5) / responses.",
        Rows::All,
        |s| s.csat,
    ),
    (
        "engaged_survey_csat_responses",
        "CSAT responses.",
        Rows::All,
        |s| s.csat_responses.map(|v| v as f64),
    ),
    (
        "engaged_survey_csat_satisfied",
        "CSAT responses scoring 4-5.",
        Rows::All,
        |s| s.csat_satisfied.map(|v| v as f64),
    ),
    (
        "engaged_survey_ces",
        "Customer Effort Score: mean score (1-7).",
        Rows::All,
        |s| s.ces,
    ),
    (
        "engaged_survey_ces_responses",
        "CES responses.",
        Rows::All,
        |s| s.ces_responses.map(|v| v as f64),
    ),
    (
        "engaged_survey_ces_points",
        "Sum of CES scores.",
        Rows::All,
        |s| s.ces_sum.map(|v| v as f64),
    ),
    (
        "engaged_customers_active",
        "Distinct customers with activity in the window.",
        Rows::All,
        |s| s.active_customers.map(|v| v as f64),
    ),
    (
        "engaged_customers_churned",
        "Customers whose inactivity reached churn_horizon in the window.",
        Rows::All,
        |s| s.churned_customers.map(|v| v as f64),
    ),
    (
        "engaged_customers_active_at_window_start",
        "Customers active (not churned) at the window start.",
        Rows::All,
        |s| s.customers_at_window_start.map(|v| v as f64),
    ),
    (
        "engaged_customers_lost",
        "Customers active at the window start who churned in the window.",
        Rows::All,
        |s| s.lost_customers.map(|v| v as f64),
    ),
    (
        "engaged_customers_churn_ratio",
        "lost / active at window start: the start cohort's churn.",
        Rows::All,
        |s| s.churn_rate,
    ),
    (
        "engaged_churn_risk_crossings",
        "Customers whose churn risk crossed risk_threshold upward in the window.",
        Rows::All,
        |s| s.risk_crossings.map(|v| v as f64),
    ),
    (
        "engaged_customers_retention_ratio",
        "1 - churn ratio.",
        Rows::All,
        |s| s.retention_rate,
    ),
];

/// The value of the windowed family `name` (its `all` series, as on `/metrics`) in
/// snapshot `s`: `None` where `/metrics` has no sample, or `name` is not windowed.
pub fn windowed_value(name: &str, s: &WindowSnapshot) -> Option<f64> {
    WINDOWED
        .iter()
        .find(|(n, ..)| *n == name)
        .and_then(|(.., extract)| extract(s))
}

/// The help text of a windowed family, as on `/metrics`.
pub fn windowed_help(name: &str) -> Option<&'static str> {
    WINDOWED
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, help, ..)| *help)
}

/// The families that are "now", not windowed, with their help text: the unlabelled
/// series `/metrics` renders from the first `all` row of a round.
pub const NOW_FAMILIES: [(&str, &str); 4] = [
    (
        "engaged_web_sessions_active",
        "Open sessions at the watermark.",
    ),
    (
        "engaged_churn_at_risk_customers",
        "Customers whose churn risk is at or above risk_threshold.",
    ),
    (
        "engaged_churn_expected_orders_30d",
        "Sum over customers of the expected ORDERs in the next 30 days.",
    ),
    (
        "engaged_churn_predicted_value_30d_minor",
        "Sum over customers of the predicted value of the next 30 days (minor currency units).",
    ),
];

/// The value of a "now" family ([`NOW_FAMILIES`]) in a round's snapshots, as
/// `/metrics` shows it: from the first `all` row.
pub fn now_value(name: &str, snapshots: &[WindowSnapshot]) -> Option<f64> {
    let s = snapshots.iter().find(|s| s.dimension == "all")?;
    match name {
        "engaged_web_sessions_active" => Some(s.sessions_active as f64),
        "engaged_churn_at_risk_customers" => s.at_risk_customers.map(|v| v as f64),
        "engaged_churn_expected_orders_30d" => s.expected_orders_30d,
        "engaged_churn_predicted_value_30d_minor" => s.predicted_value_30d_minor,
        _ => None,
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn gauge(labels: Vec<LabelPair>, v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_gauge(g);
    m.set_label(labels);
    m
}

fn family(name: String, help: &str, t: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name);
    f.set_help(help.to_string());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

fn dim_labels(s: &WindowSnapshot) -> Vec<LabelPair> {
    match s.dimension_value.as_deref() {
        Some(v) => vec![label(&s.dimension, v)],
        None => vec![],
    }
}

fn suffix(dimension: &str) -> String {
    if dimension == "all" {
        String::new()
    } else {
        format!("_by_{dimension}")
    }
}

fn windowed_families(p: &Published) -> Vec<MetricFamily> {
    let mut out = vec![];
    for dimension in ["all", "site", "channel", "campaign", "page"] {
        let snaps: Vec<&WindowSnapshot> = p
            .snapshots
            .iter()
            .filter(|s| s.dimension == dimension)
            .collect();
        for (name, help, rows, extract) in WINDOWED {
            if !rows.has(dimension) {
                continue;
            }
            let metrics: Vec<proto::Metric> = snaps
                .iter()
                .filter_map(|s| {
                    let v = extract(s)?;
                    let mut labels = vec![label("window", &s.window)];
                    labels.extend(dim_labels(s));
                    Some(gauge(labels, v))
                })
                .collect();
            if !metrics.is_empty() {
                out.push(family(
                    format!("{name}{}", suffix(dimension)),
                    help,
                    MetricType::GAUGE,
                    metrics,
                ));
            }
        }
        if !Rows::Web.has(dimension) {
            continue;
        }
        // `sessions_active` is "now", not windowed: one series per dimension value.
        let first_window = snaps.first().map(|s| s.window.clone());
        let active: Vec<proto::Metric> = snaps
            .iter()
            .filter(|s| Some(&s.window) == first_window.as_ref())
            .map(|s| gauge(dim_labels(s), s.sessions_active as f64))
            .collect();
        if !active.is_empty() {
            out.push(family(
                format!("engaged_web_sessions_active{}", suffix(dimension)),
                "Open sessions at the watermark.",
                MetricType::GAUGE,
                active,
            ));
        }
    }
    out.push(duration_histogram(&p.durations));
    // Churn risk "now" (not windowed), from the `all` row of any window.
    if let Some(s) = p.snapshots.iter().find(|s| s.dimension == "all") {
        for (name, help, v) in [
            (
                "engaged_churn_at_risk_customers",
                "Customers whose churn risk is at or above risk_threshold.",
                s.at_risk_customers.map(|v| v as f64),
            ),
            (
                "engaged_churn_expected_orders_30d",
                "Sum over customers of the expected ORDERs in the next 30 days.",
                s.expected_orders_30d,
            ),
            (
                "engaged_churn_predicted_value_30d_minor",
                "Sum over customers of the predicted value of the next 30 days (minor currency units).",
                s.predicted_value_30d_minor,
            ),
        ] {
            if let Some(v) = v {
                out.push(family(
                    name.into(),
                    help,
                    MetricType::GAUGE,
                    vec![gauge(vec![], v)],
                ));
            }
        }
    }
    if let Some(dist) = p.risk_distribution {
        let metrics = RISK_BUCKETS
            .iter()
            .zip(dist)
            .map(|(upper, n)| gauge(vec![label("risk_upper", &format!("{upper:.1}"))], n as f64))
            .collect();
        out.push(family(
            "engaged_churn_risk_customers".into(),
            "Customers per churn-risk bucket (risk <= risk_upper and above the previous bound), now.",
            MetricType::GAUGE,
            metrics,
        ));
    }
    out
}

fn duration_histogram(h: &DurationHistogram) -> MetricFamily {
    let mut hist = proto::Histogram::default();
    let mut cumulative = 0;
    let mut buckets = vec![];
    for (i, bound) in DURATION_BUCKETS_SECONDS.iter().enumerate() {
        cumulative += h.counts[i];
        let mut b = proto::Bucket::default();
        b.set_upper_bound(*bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    hist.set_bucket(buckets);
    hist.set_sample_count(h.count);
    hist.set_sample_sum(h.sum_ms as f64 / 1000.0);
    let mut m = proto::Metric::default();
    m.set_histogram(hist);
    family(
        "engaged_web_session_duration_seconds".into(),
        "Durations of closed sessions (cumulative since this instance owns its partitions).",
        MetricType::HISTOGRAM,
        vec![m],
    )
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
