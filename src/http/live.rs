//! The live page at `/`: the key numbers of every family per window, and small charts
//! of the last hour, refreshing itself every few seconds.
//!
//! Cheap by construction: it renders the latest published round and the bounded
//! history telemetry keeps of them ([`crate::telemetry::history`]), never the engine
//! state. Every number comes from the same extractors as `/metrics`
//! ([`telemetry::windowed_value`], [`telemetry::now_value`]), so the page and a scrape
//! of the same round agree; the round's sequence number is on both
//! (`engaged_snapshot_sequence`). Only aggregated numbers of the `all` rows and window
//! names are shown: no dimension values, no ids, no configuration. The page is one
//! self-contained document: inline CSS and SVG, no script, nothing fetched (its
//! `Content-Security-Policy` forbids it).

use std::fmt::Write;
use std::sync::Arc;

use crate::event::Millis;
use crate::snapshot::WindowSnapshot;
use crate::telemetry::history::{HistoryPoint, SPAN_MS};
use crate::telemetry::{self, Published};

/// Seconds between two reloads of the page (`<meta http-equiv="refresh">`).
pub const REFRESH_SECONDS: u32 = 5;

/// The page's `Content-Security-Policy`: nothing but the document itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How a number is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An integer, with thousands separators: `12,345`.
    Count,
    /// A ratio as a percentage with one decimal: `0.1234` → `12.3%`.
    Percent,
    /// One decimal: NPS, CSAT, expected orders.
    Decimal1,
    /// Two decimals: CES.
    Decimal2,
    /// Seconds with one decimal: `95.2 s`.
    Seconds,
    /// Minor currency units shown in major units with two decimals: `123456` → `1,234.56`.
    Money,
}

/// One number of a family: a `/metrics` family name, its column title and format.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub metric: &'static str,
    pub title: &'static str,
    pub format: Format,
}

const fn key(metric: &'static str, title: &'static str, format: Format) -> Key {
    Key {
        metric,
        title,
        format,
    }
}

/// A section of the page.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub id: &'static str,
    pub title: &'static str,
    /// Windowed numbers: one row per window.
    pub windowed: &'static [Key],
    /// "Now" numbers (not windowed).
    pub now: &'static [Key],
    /// Charted over the last hour: windowed metrics for the chart window, "now" ones as is.
    pub charts: &'static [Key],
}

use Format::*;

/// Every family, in page order, with its key numbers.
pub const FAMILIES: [Family; 6] = [
    Family {
        id: "web",
        title: "Web",
        windowed: &[
            key("engaged_web_page_views", "page views", Count),
            key("engaged_web_sessions", "sessions", Count),
            key("engaged_web_bounce_ratio", "bounce rate", Percent),
            key(
                "engaged_web_session_duration_avg_seconds",
                "avg session",
                Seconds,
            ),
        ],
        now: &[key("engaged_web_sessions_active", "active sessions", Count)],
        charts: &[
            key("engaged_web_page_views", "page views", Count),
            key("engaged_web_bounce_ratio", "bounce rate", Percent),
        ],
    },
    Family {
        id: "email",
        title: "Email",
        windowed: &[
            key("engaged_email_sent", "sent", Count),
            key("engaged_email_delivered", "delivered", Count),
            key("engaged_email_delivered_opened", "of them opened", Count),
            key("engaged_email_open_ratio", "open rate", Percent),
            key(
                "engaged_email_click_through_ratio",
                "click-through",
                Percent,
            ),
            key(
                "engaged_email_unsubscribe_ratio",
                "unsubscribe rate",
                Percent,
            ),
            key("engaged_email_complaint_ratio", "complaint rate", Percent),
            key("engaged_email_bounce_ratio", "bounce rate", Percent),
        ],
        now: &[],
        charts: &[key("engaged_email_open_ratio", "open rate", Percent)],
    },
    Family {
        id: "commerce",
        title: "Commerce",
        windowed: &[
            key("engaged_commerce_orders", "orders", Count),
            key("engaged_commerce_revenue_minor", "revenue", Money),
            key(
                "engaged_commerce_average_order_value_minor",
                "avg order value",
                Money,
            ),
            key(
                "engaged_commerce_returning_customer_ratio",
                "returning",
                Percent,
            ),
            key("engaged_commerce_refunds_minor", "refunds", Money),
        ],
        now: &[],
        charts: &[key("engaged_commerce_orders", "orders", Count)],
    },
    Family {
        id: "survey",
        title: "Survey",
        windowed: &[
            key("engaged_survey_nps", "NPS", Decimal1),
            key("engaged_survey_nps_responses", "NPS answers", Count),
            key("engaged_survey_csat", "CSAT", Decimal1),
            key("engaged_survey_ces", "CES", Decimal2),
        ],
        now: &[],
        charts: &[key("engaged_survey_nps", "NPS", Decimal1)],
    },
    Family {
        id: "customers",
        title: "Customers",
        windowed: &[
            key("engaged_customers_active", "active", Count),
            key("engaged_customers_churned", "churned", Count),
            key(
                "engaged_customers_active_at_window_start",
                "active at start",
                Count,
            ),
            key("engaged_customers_lost", "of them lost", Count),
            key("engaged_customers_churn_ratio", "churn rate", Percent),
            key("engaged_customers_retention_ratio", "retention", Percent),
        ],
        now: &[],
        charts: &[key("engaged_customers_active", "active customers", Count)],
    },
    Family {
        id: "churn",
        title: "Churn risk",
        windowed: &[key("engaged_churn_risk_crossings", "risk crossings", Count)],
        now: &[
            key("engaged_churn_at_risk_customers", "at risk", Count),
            key(
                "engaged_churn_expected_orders_30d",
                "expected orders 30d",
                Decimal1,
            ),
            key(
                "engaged_churn_predicted_value_30d_minor",
                "predicted value 30d",
                Money,
            ),
        ],
        charts: &[
            key("engaged_churn_risk_crossings", "risk crossings", Count),
            key(
                "engaged_churn_at_risk_customers",
                "at-risk customers",
                Count,
            ),
        ],
    },
];

/// What one rendering of the page shows.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Sequence number of `latest` (0: nothing published yet).
    pub seq: u64,
    pub latest: &'a Published,
    /// Published rounds, oldest first (points newer than `seq` are left out).
    pub history: &'a [Arc<HistoryPoint>],
    /// Wall-clock time of the rendering, Unix milliseconds.
    pub now_ms: Millis,
    /// The window the charts show (`?window=`); ignored unless it is configured.
    pub chart_window: Option<&'a str>,
}

fn is_now(metric: &str) -> bool {
    telemetry::NOW_FAMILIES.iter().any(|(n, _)| *n == metric)
}

fn help(metric: &str) -> &'static str {
    telemetry::windowed_help(metric)
        .or_else(|| {
            telemetry::NOW_FAMILIES
                .iter()
                .find(|(n, _)| *n == metric)
                .map(|(_, h)| *h)
        })
        .unwrap_or("")
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A number as the page shows it; `–` when absent (a ratio without denominator).
pub fn format_value(v: Option<f64>, f: Format) -> String {
    let Some(v) = v.filter(|v| v.is_finite()) else {
        return "–".into();
    };
    match f {
        Count => grouped(v.round() as i64),
        Percent => format!("{:.1}%", v * 100.0),
        Decimal1 => format!("{v:.1}"),
        Decimal2 => format!("{v:.2}"),
        Seconds => format!("{v:.1} s"),
        Money => {
            let cents = v.round() as i64;
            let sign = if cents < 0 { "-" } else { "" };
            let cents = cents.unsigned_abs();
            format!("{sign}{}.{:02}", grouped((cents / 100) as i64), cents % 100)
        }
    }
}

/// A table cell: the shown number, with the exact value and what it is as attributes
/// (`data-value` is empty when the series is absent on `/metrics`).
fn cell(out: &mut String, metric: &str, window: Option<&str>, v: Option<f64>, f: Format) {
    let v = v.filter(|v| v.is_finite());
    let _ = write!(out, "<td data-metric=\"{metric}\"");
    if let Some(w) = window {
        let _ = write!(out, " data-window=\"{}\"", escape(w));
    }
    let _ = write!(
        out,
        " data-value=\"{}\">{}</td>",
        v.map_or(String::new(), |v| v.to_string()),
        format_value(v, f)
    );
}

fn utc(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or("-".into(), |d| {
        d.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

const CHART_W: f64 = 300.0;
const CHART_H: f64 = 90.0;
const PLOT_LEFT: f64 = 4.0;
const PLOT_RIGHT: f64 = 296.0;
const PLOT_TOP: f64 = 16.0;
const PLOT_BOTTOM: f64 = 76.0;

/// A small inline SVG line chart of `points` (wall ms, value) over the hour before
/// `now_ms` (or since the oldest point, if younger).
fn chart(
    out: &mut String,
    k: &Key,
    window: Option<&str>,
    points: &[(Millis, f64)],
    now_ms: Millis,
) {
    // The last hour, or since the oldest point when the history is younger.
    let from = points
        .iter()
        .map(|p| p.0)
        .min()
        .filter(|t| *t < now_ms)
        .map_or(now_ms - SPAN_MS, |t| t.max(now_ms - SPAN_MS));
    let label = match window {
        Some(w) => format!("{} ({w} window)", k.title),
        None => format!("{} (now)", k.title),
    };
    let _ = write!(
        out,
        "<figure class=\"chart\"><svg viewBox=\"0 0 {CHART_W} {CHART_H}\" \
         width=\"{CHART_W}\" height=\"{CHART_H}\" role=\"img\" aria-label=\"{} over the last hour\" \
         data-metric=\"{}\"",
        escape(&label),
        k.metric
    );
    if let Some(w) = window {
        let _ = write!(out, " data-window=\"{}\"", escape(w));
    }
    let _ = write!(
        out,
        " data-points=\"{}\"><rect x=\"0\" y=\"0\" width=\"{CHART_W}\" height=\"{CHART_H}\" class=\"bg\"/>",
        points.len()
    );
    let _ = write!(
        out,
        "<text x=\"{PLOT_LEFT}\" y=\"11\" class=\"title\">{}</text>",
        escape(&label)
    );
    if points.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{PLOT_LEFT}\" y=\"{}\" class=\"axis\">no data yet</text>",
            (PLOT_TOP + PLOT_BOTTOM) / 2.0
        );
    } else {
        let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let x = |t: Millis| {
            let share = ((t - from) as f64 / (now_ms - from).max(1) as f64).clamp(0.0, 1.0);
            PLOT_LEFT + share * (PLOT_RIGHT - PLOT_LEFT)
        };
        let y = |v: f64| {
            if hi > lo {
                PLOT_BOTTOM - (v - lo) / (hi - lo) * (PLOT_BOTTOM - PLOT_TOP)
            } else {
                (PLOT_TOP + PLOT_BOTTOM) / 2.0
            }
        };
        let coords: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            out,
            "<polyline class=\"line\" points=\"{}\"/>",
            coords.join(" ")
        );
        if let Some((t, v)) = points.last() {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" class=\"dot\"/>",
                x(*t),
                y(*v)
            );
        }
        let _ = write!(
            out,
            "<text x=\"{PLOT_RIGHT}\" y=\"11\" class=\"axis end\">max {}</text>\
             <text x=\"{PLOT_RIGHT}\" y=\"86\" class=\"axis end\">min {}</text>",
            format_value(Some(hi), k.format),
            format_value(Some(lo), k.format)
        );
    }
    let ago = (now_ms - from).max(0) / 1000;
    let ago = if ago >= 120 {
        format!("−{} min", ago / 60)
    } else {
        format!("−{ago} s")
    };
    let _ = write!(
        out,
        "<text x=\"{PLOT_LEFT}\" y=\"86\" class=\"axis\">{ago}</text></svg></figure>"
    );
}

/// The value a chart shows for one round.
fn series_value(k: &Key, window: &str, snapshots: &[WindowSnapshot]) -> Option<f64> {
    if is_now(k.metric) {
        telemetry::now_value(k.metric, snapshots)
    } else {
        let s = snapshots
            .iter()
            .find(|s| s.dimension == "all" && s.window == window)?;
        telemetry::windowed_value(k.metric, s)
    }
    .filter(|v| v.is_finite())
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#1a202c;background:#f7fafc}\
h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin:.2em 0 .4em}\
header p,nav,footer{color:#4a5568}nav a{margin-right:.6em}nav a.on{font-weight:bold}\
section{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:.6em .9em;margin:.8em 0}\
table{border-collapse:collapse}th,td{padding:.15em .7em;text-align:right;white-space:nowrap}\
th:first-child,td:first-child{text-align:left}thead th{border-bottom:1px solid #cbd5e0;font-weight:600}\
.charts{display:flex;flex-wrap:wrap;gap:.8em;margin-top:.5em}figure{margin:0}\
svg .bg{fill:#f7fafc}svg .line{fill:none;stroke:#2b6cb0;stroke-width:1.5}svg .dot{fill:#2b6cb0}\
svg text{font:10px system-ui,sans-serif;fill:#4a5568}svg .title{font-weight:600;fill:#1a202c}\
svg .end{text-anchor:end}";

/// The whole page.
pub fn render(v: &View<'_>) -> String {
    let all: Vec<&WindowSnapshot> = v
        .latest
        .snapshots
        .iter()
        .filter(|s| s.dimension == "all")
        .collect();
    let windows: Vec<&str> = all.iter().map(|s| s.window.as_str()).collect();
    let chart_window = v
        .chart_window
        .filter(|w| windows.contains(w))
        .or_else(|| windows.iter().copied().find(|w| *w == "1h"))
        .or_else(|| windows.first().copied());
    let history: Vec<&HistoryPoint> = v
        .history
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.seq <= v.seq && p.published_ms >= v.now_ms - SPAN_MS)
        .collect();

    let mut out = String::with_capacity(32 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>engaged — live</title><style>{STYLE}</style></head><body>"
    );
    let watermark = all.first().map(|s| s.watermark);
    let _ = write!(
        out,
        "<header><h1>engaged — live</h1><p id=\"round\" data-seq=\"{}\" data-watermark-ms=\"{}\">",
        v.seq,
        watermark.map_or(String::new(), |w| w.to_string())
    );
    if v.seq == 0 {
        let _ = write!(out, "No snapshot published yet. ");
    } else {
        let _ = write!(
            out,
            "Snapshot <b>#{}</b> · watermark <b>{}</b> · ",
            v.seq,
            watermark.map_or("-".into(), utc)
        );
    }
    let _ = write!(
        out,
        "page rendered {} · reloads every {REFRESH_SECONDS} s · <a href=\"/metrics\">/metrics</a></p></header>",
        utc(v.now_ms)
    );
    if let Some(cw) = chart_window {
        out.push_str("<nav>Charts of the last hour for the window: ");
        for w in &windows {
            let class = if *w == cw { " class=\"on\"" } else { "" };
            let _ = write!(
                out,
                "<a{class} href=\"/?window={}\">{}</a>",
                escape(w),
                escape(w)
            );
        }
        out.push_str("</nav>");
    }

    for f in FAMILIES {
        let _ = write!(
            out,
            "<section id=\"{}\" class=\"family\"><h2>{}</h2>",
            f.id, f.title
        );
        if !f.windowed.is_empty() && !all.is_empty() {
            out.push_str("<table class=\"windowed\"><thead><tr><th>window</th>");
            for k in f.windowed {
                let _ = write!(
                    out,
                    "<th title=\"{}\">{}</th>",
                    escape(help(k.metric)),
                    k.title
                );
            }
            out.push_str("</tr></thead><tbody>");
            for s in &all {
                let _ = write!(out, "<tr><th>{}</th>", escape(&s.window));
                for k in f.windowed {
                    cell(
                        &mut out,
                        k.metric,
                        Some(&s.window),
                        telemetry::windowed_value(k.metric, s),
                        k.format,
                    );
                }
                out.push_str("</tr>");
            }
            out.push_str("</tbody></table>");
        }
        if !f.now.is_empty() && !all.is_empty() {
            out.push_str("<table class=\"now\"><tbody>");
            for k in f.now {
                let _ = write!(
                    out,
                    "<tr><th title=\"{}\">{} (now)</th>",
                    escape(help(k.metric)),
                    k.title
                );
                cell(
                    &mut out,
                    k.metric,
                    None,
                    telemetry::now_value(k.metric, &v.latest.snapshots),
                    k.format,
                );
                out.push_str("</tr>");
            }
            out.push_str("</tbody></table>");
        }
        if let Some(cw) = chart_window {
            out.push_str("<div class=\"charts\">");
            for k in f.charts {
                let points: Vec<(Millis, f64)> = history
                    .iter()
                    .filter_map(|p| Some((p.published_ms, series_value(k, cw, &p.snapshots)?)))
                    .collect();
                let window = (!is_now(k.metric)).then_some(cw);
                chart(&mut out, k, window, &points, v.now_ms);
            }
            out.push_str("</div>");
        }
        out.push_str("</section>");
    }
    out.push_str(
        "<footer>Aggregated numbers of all events per window of event time (the snapshot's \
         <code>all</code> rows, as on <code>/metrics</code>); “–”: no denominator yet, or no \
         churn model fitted yet. Charts: one point per 10 s of wall time.</footer></body></html>\n",
    );
    out
}

#[cfg(test)]
mod tests;
