//! Telemetry in one place: every Prometheus family engaged exposes, with its help text.
//!
//! Operational families (consumed, rejected, lag, watermarks, …) are ordinary
//! `prometheus` metrics in [`Telemetry::registry`]. The windowed metric families
//! are rendered at scrape time from the latest published snapshots, so that a
//! ratio with a zero denominator is simply absent (SPEC §3) and a scrape never
//! sees half of an update.

use std::sync::{Arc, RwLock};

use prometheus::core::Collector;
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::metrics::web::{DURATION_BUCKETS_SECONDS, DurationHistogram};
use crate::snapshot::WindowSnapshot;
use crate::state::RejectReason;

/// What the latest snapshot round published.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub snapshots: Vec<WindowSnapshot>,
    pub durations: DurationHistogram,
}

/// Every operational metric, plus the latest snapshots for the windowed families.
pub struct Telemetry {
    registry: Registry,
    pub consumed: IntCounterVec,
    pub accepted: IntCounterVec,
    pub rejected: IntCounterVec,
    pub dead_letters: IntCounter,
    pub watermark: prometheus::Gauge,
    pub watermark_delay: prometheus::Gauge,
    pub partition_watermark: prometheus::GaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub state_entries: IntGauge,
    pub snapshot_duration: Histogram,
    pub snapshots_published: IntCounter,
    published: RwLock<Arc<Published>>,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric families are defined once, with distinct names");
    c
}

impl Telemetry {
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
                    "Entries held in state: open sessions, window buckets, remembered event ids.",
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
            registry: r,
            published: RwLock::new(Arc::new(Published::default())),
        };
        for reason in RejectReason::ALL {
            t.rejected.with_label_values(&[reason.as_str()]);
        }
        t
    }

    pub fn count_rejected(&self, reason: RejectReason) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// Replaces the snapshots the windowed families are rendered from.
    pub fn publish(&self, p: Published) {
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }

    pub fn latest(&self) -> Arc<Published> {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(windowed_families(&self.latest()));
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

/// Windowed gauges: (name, help, value). `None` values are absent.
const WINDOWED: &[(&str, &str, Extract)] = &[
    ("engaged_web_page_views", "Page views in the window.", |s| {
        Some(s.page_views as f64)
    }),
    (
        "engaged_web_sessions",
        "Sessions closed in the window.",
        |s| Some(s.sessions as f64),
    ),
    (
        "engaged_web_bounced_sessions",
        "Closed sessions with exactly one page view.",
        |s| Some(s.bounced_sessions as f64),
    ),
    (
        "engaged_web_bounce_ratio",
        "bounced_sessions / sessions; absent when there are no sessions.",
        |s| s.bounce_rate,
    ),
    (
        "engaged_web_sessions_duration_seconds",
        "Sum of the durations of the sessions closed in the window.",
        |s| Some(s.session_duration_sum_seconds),
    ),
    (
        "engaged_web_session_duration_avg_seconds",
        "Average session duration: sessions_duration / sessions.",
        |s| s.avg_session_duration_seconds,
    ),
    (
        "engaged_web_session_duration_p50_seconds",
        "Median session duration (nearest rank).",
        |s| s.session_duration_p50_seconds,
    ),
    (
        "engaged_web_session_duration_p90_seconds",
        "90th percentile of session duration (nearest rank).",
        |s| s.session_duration_p90_seconds,
    ),
];

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
    for dimension in ["all", "site", "channel"] {
        let snaps: Vec<&WindowSnapshot> = p
            .snapshots
            .iter()
            .filter(|s| s.dimension == dimension)
            .collect();
        for (name, help, extract) in WINDOWED {
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
