//! The windowed families on `/metrics`: one table of every family (name, help, rows, value), rendered at scrape time from the latest published snapshots.

use super::*;

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

pub(super) fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

pub(super) fn gauge(labels: Vec<LabelPair>, v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_gauge(g);
    m.set_label(labels);
    m
}

pub(super) fn family(
    name: String,
    help: &str,
    t: MetricType,
    metrics: Vec<proto::Metric>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name);
    f.set_help(help.to_string());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

pub(super) fn dim_labels(s: &WindowSnapshot) -> Vec<LabelPair> {
    match s.dimension_value.as_deref() {
        Some(v) => vec![label(&s.dimension, v)],
        None => vec![],
    }
}

pub(super) fn suffix(dimension: &str) -> String {
    if dimension == "all" {
        String::new()
    } else {
        format!("_by_{dimension}")
    }
}

pub(super) fn windowed_families(p: &Published) -> Vec<MetricFamily> {
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

pub(super) fn duration_histogram(h: &DurationHistogram) -> MetricFamily {
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
