//! Window snapshots: the published form of every metric, per window and dimension.
//!
//! A [`WindowSnapshot`] is one `EngagementSnapshot` record (schemas/
//! EngagementSnapshot.avsc), one JSON line of `engaged replay`, and the source
//! of the windowed series on `/metrics`. Field names are SPEC §3 metric names.
//! Ratios with a zero denominator are `None` (absent in Prometheus, `null` in
//! the snapshot). Building a snapshot reads state; it never changes it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::metrics::web::WebCounts;
use crate::metrics::{Dim, OTHER, nearest_rank};
use crate::state::{Engine, TopicPartition};

/// A topic-partition whose events a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePartition {
    pub topic: String,
    pub partition: i32,
}

/// Every metric of one window (and one dimension value) at one watermark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSnapshot {
    /// Window name as configured, e.g. `5m`.
    pub window: String,
    pub window_start: Millis,
    pub window_end: Millis,
    /// Instance watermark the snapshot was taken at.
    pub watermark: Millis,
    /// `all`, `site` or `channel`.
    pub dimension: String,
    /// The site or channel (top N, else `other`); `None` for `all`.
    pub dimension_value: Option<String>,
    pub partitions: Vec<SourcePartition>,
    pub page_views: i64,
    pub sessions: i64,
    pub sessions_active: i64,
    pub bounced_sessions: i64,
    pub bounce_rate: Option<f64>,
    pub session_duration_sum_seconds: f64,
    pub avg_session_duration_seconds: Option<f64>,
    pub session_duration_p50_seconds: Option<f64>,
    pub session_duration_p90_seconds: Option<f64>,
}

fn ratio(num: f64, den: u64) -> Option<f64> {
    (den > 0).then(|| num / den as f64)
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Keeps the top `n` values of each breakdown dimension by page views (ties by
/// name) and folds the rest into `other`.
fn fold_top_n<T: Default + Clone>(
    map: HashMap<Dim, T>,
    keep: &dyn Fn(&Dim) -> bool,
    merge: impl Fn(&mut T, &T),
) -> HashMap<Dim, T> {
    let mut out: HashMap<Dim, T> = HashMap::new();
    for (d, v) in map {
        let target = match &d {
            Dim::All => d,
            _ if keep(&d) => d,
            Dim::Site(_) => Dim::Site(OTHER.into()),
            Dim::Channel(_) => Dim::Channel(OTHER.into()),
        };
        merge(out.entry(target).or_default(), &v);
    }
    out
}

/// The dimension values kept by top-N: ranked by page views, then sessions, then name.
fn top_values(web: &HashMap<Dim, WebCounts>, open: &HashMap<Dim, u64>, n: usize) -> Vec<Dim> {
    let mut kept = vec![];
    for name in ["site", "channel"] {
        let mut ranked: Vec<(&Dim, u64, u64)> = web
            .keys()
            .chain(open.keys())
            .filter(|d| d.name() == name)
            .map(|d| {
                let c = web.get(d);
                (
                    d,
                    c.map_or(0, |c| c.page_views),
                    c.map_or(0, |c| c.sessions) + open.get(d).copied().unwrap_or(0),
                )
            })
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
        ranked.dedup_by(|a, b| a.0 == b.0);
        kept.extend(ranked.into_iter().take(n).map(|(d, _, _)| d.clone()));
    }
    kept
}

/// Snapshots of every configured window at instance watermark `watermark`.
pub fn build(
    engine: &Engine,
    watermark: Millis,
    partitions: &[TopicPartition],
) -> Vec<WindowSnapshot> {
    let cfg = engine.config();
    let sources: Vec<SourcePartition> = partitions
        .iter()
        .map(|tp| SourcePartition {
            topic: tp.topic.to_string(),
            partition: tp.partition,
        })
        .collect();
    let mut out = vec![];
    let open_now = engine.open_sessions();
    for (idx, spec) in cfg.windows.iter().enumerate() {
        let (start, end) = spec.bounds_at(watermark);
        let agg = engine.aggregate(idx, start, end);
        let kept = top_values(&agg.web, &open_now, cfg.max_dimension_values);
        let keep = |d: &Dim| kept.contains(d);
        let web = fold_top_n(agg.web, &keep, |a, b| a.merge(b));
        let open = fold_top_n(open_now.clone(), &keep, |a, b| *a += b);
        let mut dims: Vec<&Dim> = web.keys().chain(open.keys()).collect();
        dims.push(&Dim::All);
        dims.sort();
        dims.dedup();
        for d in dims {
            let empty = WebCounts::default();
            let c = web.get(d).unwrap_or(&empty);
            out.push(WindowSnapshot {
                window: spec.name.clone(),
                window_start: start,
                window_end: end,
                watermark,
                dimension: d.name().to_string(),
                dimension_value: d.value().map(str::to_string),
                partitions: sources.clone(),
                page_views: c.page_views as i64,
                sessions: c.sessions as i64,
                sessions_active: open.get(d).copied().unwrap_or(0) as i64,
                bounced_sessions: c.bounced_sessions as i64,
                bounce_rate: ratio(c.bounced_sessions as f64, c.sessions),
                session_duration_sum_seconds: secs(c.duration_ms_sum),
                avg_session_duration_seconds: ratio(secs(c.duration_ms_sum), c.sessions),
                session_duration_p50_seconds: nearest_rank(&c.durations_ms, c.sessions, 0.5)
                    .map(secs),
                session_duration_p90_seconds: nearest_rank(&c.durations_ms, c.sessions, 0.9)
                    .map(secs),
            });
        }
    }
    out
}
