//! Window snapshots: the published form of every metric, per window and dimension.
//!
//! A [`WindowSnapshot`] is one `EngagementSnapshot` record (schemas/
//! EngagementSnapshot.avsc), one JSON line of `engaged replay`, and the source
//! of the windowed series on `/metrics`. Field names are SPEC §3 metric names.
//! Ratios with a zero denominator are `None` (absent in Prometheus, `null` in
//! the snapshot). Building a snapshot reads state; it never changes it.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::metrics::commerce::CommerceCounts;
use crate::metrics::customers::CustomerCounts;
use crate::metrics::email::EmailCounts;
use crate::metrics::survey::SurveyCounts;
use crate::metrics::web::WebCounts;
use crate::metrics::{Dim, OTHER};
use crate::state::{Engine, TopicPartition};

/// A topic-partition whose events a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePartition {
    pub topic: String,
    pub partition: i32,
}

/// Every metric of one window (and one dimension value) at one watermark.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowSnapshot {
    /// Window name as configured, e.g. `5m`.
    pub window: String,
    pub window_start: Millis,
    pub window_end: Millis,
    /// Instance watermark the snapshot was taken at.
    pub watermark: Millis,
    /// `all`, `site`, `channel`, `campaign` or `page`.
    pub dimension: String,
    /// The site, channel, campaign or page (top N, else `other`); `None` for `all`.
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
    /// Sessions closed in the window that exited on the page (`page` rows only).
    pub exits: Option<i64>,
    /// `exits / page_views` of the page (`page` rows only).
    pub exit_rate: Option<f64>,
    // Email: in `all` and `campaign` rows; `None` elsewhere.
    pub emails_sent: Option<i64>,
    pub emails_delivered: Option<i64>,
    pub emails_bounced: Option<i64>,
    pub unique_opens: Option<i64>,
    pub unique_clicks: Option<i64>,
    pub unsubscribes: Option<i64>,
    pub complaints: Option<i64>,
    /// Send cohort: of the messages first DELIVERED in the window, those opened
    /// (a click is an open), clicked, unsubscribed, complained less than
    /// `email_dedup_ttl` after it; of those first SENT, those BOUNCED.
    pub delivered_opened: Option<i64>,
    pub delivered_clicked: Option<i64>,
    pub delivered_unsubscribed: Option<i64>,
    pub delivered_complained: Option<i64>,
    pub sent_bounced: Option<i64>,
    pub open_rate: Option<f64>,
    pub click_through_rate: Option<f64>,
    pub click_to_open_rate: Option<f64>,
    pub unsubscribe_rate: Option<f64>,
    pub complaint_rate: Option<f64>,
    pub email_bounce_rate: Option<f64>,
    pub attributed_orders: Option<i64>,
    pub email_conversion_rate: Option<f64>,
    // Commerce, survey and customers: in `all` rows only.
    pub orders: Option<i64>,
    pub order_revenue_minor: Option<i64>,
    pub revenue_minor: Option<i64>,
    pub refunds_minor: Option<i64>,
    pub net_revenue_minor: Option<i64>,
    pub purchasing_customers: Option<i64>,
    pub average_order_value: Option<f64>,
    pub orders_per_customer: Option<f64>,
    pub returning_customers: Option<i64>,
    pub returning_customer_rate: Option<f64>,
    pub new_customers: Option<i64>,
    pub margin_minor: Option<i64>,
    pub profit_per_customer: Option<f64>,
    pub renewals: Option<i64>,
    pub cancellations: Option<i64>,
    pub revenue_churn_minor: Option<i64>,
    pub nps: Option<f64>,
    pub nps_responses: Option<i64>,
    pub nps_promoters: Option<i64>,
    pub nps_detractors: Option<i64>,
    pub csat: Option<f64>,
    pub csat_responses: Option<i64>,
    pub csat_satisfied: Option<i64>,
    pub ces: Option<f64>,
    pub ces_responses: Option<i64>,
    pub ces_sum: Option<i64>,
    pub active_customers: Option<i64>,
    pub churned_customers: Option<i64>,
    /// Customers active (not churned) at the window start: the churn-rate denominator.
    pub customers_at_window_start: Option<i64>,
    /// Of them, those who churned in the window: the churn-rate numerator.
    pub lost_customers: Option<i64>,
    pub churn_rate: Option<f64>,
    pub retention_rate: Option<f64>,
    // Churn risk (model): in `all` rows, once a model has been fitted.
    /// Customers whose churn risk is at or above `risk_threshold` now (not windowed).
    pub at_risk_customers: Option<i64>,
    /// Customers whose churn risk crossed the threshold upward in the window.
    pub risk_crossings: Option<i64>,
    /// Σ over customers of the expected ORDERs in the next 30 days (now).
    pub expected_orders_30d: Option<f64>,
    /// Σ over customers of the predicted value of the next 30 days, minor units (now).
    pub predicted_value_30d_minor: Option<f64>,
}

impl WindowSnapshot {
    fn set_email(&mut self, c: &EmailCounts) {
        let den = |d: i64| d.max(0) as u64;
        self.emails_sent = Some(c.sent);
        self.emails_delivered = Some(c.delivered);
        self.emails_bounced = Some(c.bounced);
        self.unique_opens = Some(c.unique_opens);
        self.unique_clicks = Some(c.unique_clicks);
        self.unsubscribes = Some(c.unsubscribes);
        self.complaints = Some(c.complaints);
        self.delivered_opened = Some(c.delivered_opened);
        self.delivered_clicked = Some(c.delivered_clicked);
        self.delivered_unsubscribed = Some(c.delivered_unsubscribed);
        self.delivered_complained = Some(c.delivered_complained);
        self.sent_bounced = Some(c.sent_bounced);
        let of_delivered = |n: i64| ratio(n as f64, den(c.delivered));
        self.open_rate = of_delivered(c.delivered_opened);
        self.click_through_rate = of_delivered(c.delivered_clicked);
        self.click_to_open_rate = ratio(c.delivered_clicked as f64, den(c.delivered_opened));
        self.unsubscribe_rate = of_delivered(c.delivered_unsubscribed);
        self.complaint_rate = of_delivered(c.delivered_complained);
        self.email_bounce_rate = ratio(c.sent_bounced as f64, den(c.sent));
        self.attributed_orders = Some(c.attributed_orders);
        self.email_conversion_rate = ratio(c.attributed_orders as f64, den(c.unique_clicks));
    }

    fn set_commerce(&mut self, c: &CommerceCounts, purchasing: i64) {
        let den = |d: i64| d.max(0) as u64;
        let revenue = c.order_revenue_minor + c.renewal_revenue_minor;
        let returning = purchasing - c.new_customers;
        self.orders = Some(c.orders);
        self.order_revenue_minor = Some(c.order_revenue_minor);
        self.revenue_minor = Some(revenue);
        self.refunds_minor = Some(c.refunds_minor);
        self.net_revenue_minor = Some(revenue - c.refunds_minor);
        self.purchasing_customers = Some(purchasing);
        self.average_order_value = ratio(c.order_revenue_minor as f64, den(c.orders));
        self.orders_per_customer = ratio(c.orders as f64, den(purchasing));
        self.returning_customers = Some(returning);
        self.returning_customer_rate = ratio(returning as f64, den(purchasing));
        self.new_customers = Some(c.new_customers);
        self.margin_minor = Some(c.margin_minor);
        self.profit_per_customer = ratio(c.margin_minor as f64, den(purchasing));
        self.renewals = Some(c.renewals);
        self.cancellations = Some(c.cancellations);
        self.revenue_churn_minor = Some(c.revenue_churn_minor);
    }

    fn set_survey(&mut self, c: &SurveyCounts) {
        self.nps = c.nps();
        self.nps_responses = Some(c.nps_responses);
        self.nps_promoters = Some(c.nps_promoters);
        self.nps_detractors = Some(c.nps_detractors);
        self.csat = c.csat();
        self.csat_responses = Some(c.csat_responses);
        self.csat_satisfied = Some(c.csat_satisfied);
        self.ces = c.ces();
        self.ces_responses = Some(c.ces_responses);
        self.ces_sum = Some(c.ces_sum);
    }

    fn set_customers(&mut self, c: &CustomerCounts) {
        self.active_customers = Some(c.active_customers);
        self.churned_customers = Some(c.churned_customers);
        self.customers_at_window_start = Some(c.customers_at_start);
        self.lost_customers = Some(c.lost_customers);
        self.churn_rate = ratio(c.lost_customers as f64, c.customers_at_start.max(0) as u64);
        self.retention_rate = self.churn_rate.map(|r| 1.0 - r);
    }
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
            Dim::Campaign(_) => Dim::Campaign(OTHER.into()),
            Dim::Page(_) => Dim::Page(OTHER.into()),
        };
        merge(out.entry(target).or_default(), &v);
    }
    out
}

/// The dimension values kept by top-N: ranked by page views, then sessions, then name.
fn top_values(web: &HashMap<Dim, WebCounts>, open: &HashMap<Dim, u64>, n: usize) -> Vec<Dim> {
    let mut kept = vec![];
    for name in ["site", "channel", "page"] {
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

/// The top `n` campaigns by emails sent (then delivered, then id), the rest as `other`, sorted by id.
fn top_campaigns(by: HashMap<Arc<str>, EmailCounts>, n: usize) -> Vec<(Arc<str>, EmailCounts)> {
    let mut ranked: Vec<(Arc<str>, EmailCounts)> = by
        .into_iter()
        .filter(|(_, v)| *v != EmailCounts::default())
        .collect();
    ranked.sort_by(|a, b| {
        (b.1.sent, b.1.delivered)
            .cmp(&(a.1.sent, a.1.delivered))
            .then(a.0.cmp(&b.0))
    });
    let mut out: Vec<(Arc<str>, EmailCounts)> = vec![];
    let mut other: Option<EmailCounts> = None;
    for (i, (c, v)) in ranked.into_iter().enumerate() {
        if i < n {
            out.push((c, v));
        } else {
            other.get_or_insert_with(EmailCounts::default).merge(&v);
        }
    }
    if let Some(o) = other {
        out.push((Arc::from(OTHER), o));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
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
    let bounds: Vec<Option<(Millis, Millis)>> = cfg
        .windows
        .iter()
        .map(|spec| Some(spec.bounds_at(watermark)))
        .collect();
    let aggs = engine.aggregate_windows(&bounds);
    for ((spec, (start, end)), agg) in cfg
        .windows
        .iter()
        .zip(bounds.into_iter().flatten())
        .zip(aggs)
    {
        let kept = top_values(&agg.web, &open_now, cfg.max_dimension_values);
        let keep = |d: &Dim| kept.contains(d);
        let web = fold_top_n(agg.web, &keep, |a, b| a.merge(b));
        let open = fold_top_n(open_now.clone(), &keep, |a, b| *a += b);
        let mut dims: Vec<&Dim> = web.keys().chain(open.keys()).collect();
        dims.push(&Dim::All);
        dims.sort();
        dims.dedup();
        let row = |d: &Dim| {
            let empty = WebCounts::default();
            let c = web.get(d).unwrap_or(&empty);
            WindowSnapshot {
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
                session_duration_p50_seconds: c.durations_ms.percentile(0.5).map(secs),
                session_duration_p90_seconds: c.durations_ms.percentile(0.9).map(secs),
                exits: matches!(d, Dim::Page(_)).then_some(c.exits as i64),
                exit_rate: if matches!(d, Dim::Page(_)) {
                    ratio(c.exits as f64, c.page_views)
                } else {
                    None
                },
                ..Default::default()
            }
        };
        for d in dims {
            let mut snap = row(d);
            if *d == Dim::All {
                snap.set_email(&agg.email);
                snap.set_commerce(&agg.commerce, agg.purchasing_customers);
                snap.set_survey(&agg.survey);
                snap.set_customers(&agg.customers);
                snap.risk_crossings = Some(agg.risk_crossings);
            }
            out.push(snap);
        }
        for (campaign, counts) in top_campaigns(agg.email_by_campaign, cfg.max_dimension_values) {
            let mut snap = row(&Dim::Campaign(campaign));
            snap.set_email(&counts);
            out.push(snap);
        }
    }
    out
}
