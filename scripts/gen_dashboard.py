#!/usr/bin/env python3
"""Writes deploy/grafana/engaged.json, engaged's Grafana dashboard (python3 stdlib).

  scripts/gen_dashboard.py            write the dashboard
  scripts/gen_dashboard.py --check    exit 1 if the committed file differs

The panels are listed here once, as data; the JSON is generated so that layout, ids and
data sources stay consistent. Panels read the recording rules of
deploy/prometheus/recording.yml (`engaged:<metric>:sum`, per job and window, summed over
the instances) wherever one exists; per-instance panels say so in their title.
scripts/check_deploy.sh checks the file statically, scripts/check_dashboard.py runs every
expression against a real Prometheus scraping `engaged demo`.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "deploy", "grafana", "engaged.json")

DS = {"type": "prometheus", "uid": "${datasource}"}
J = 'job="$job"'
JW = 'job="$job", window="$window"'


def q(expr, legend=""):
    return (expr, legend)


# (row title, [(panel type, title, unit, width, [(expr, legend)], description)])
ROWS = [
    (
        "Overview",
        [
            ("stat", "Instances up", "none", 4,
             [q(f"sum(up{{{J}}})", "up"), q(f"count(up{{{J}}})", "targets")],
             "Targets of the job Prometheus scraped successfully, of all it knows. EngagedDown fires when one stays down."),
            ("stat", "Partitions assigned", "none", 4,
             [q(f"sum(engaged_assigned_partitions{{{J}}})")],
             "Input partitions owned by the group's instances (one task per partition number)."),
            ("stat", "Firing alerts", "none", 4,
             [q(f'count(ALERTS{{service="engaged", alertstate="firing", {J}}}) or vector(0)')],
             "engaged's alerts firing now (deploy/prometheus/alerts.yml)."),
            ("timeseries", "Consumer lag (records)", "short", 12,
             [q(f"engaged:consumer_lag_messages:sum{{{J}}}", "{{topic}}")],
             "Records consumed from the broker's view but not yet applied, per topic, summed over the instances. ConsumerLagHigh: above 100,000 for 10 minutes."),
            ("timeseries", "Watermark delay", "s", 12,
             [q(f"time() - engaged:watermark_timestamp_seconds:min{{{J}}}", "group (slowest instance)"),
              q(f"engaged_watermark_delay_seconds{{{J}}}", "{{instance}}")],
             "Wall clock minus the event-time watermark. Windows are complete up to the watermark. WatermarkStalled: more than 15 minutes and growing."),
            ("timeseries", "Rejected records / s (dead-letter topic)", "rps", 12,
             [q(f"engaged:events_rejected:rate5m{{{J}}}", "{{reason}}"),
              q(f"sum(rate(engaged_dead_letter_records_total{{{J}}}[$__rate_interval]))", "written to the dead-letter topic")],
             "Records rejected per reason (undecodable, invalid, late, duplicate); each goes to the dead-letter topic with its engaged.error header. DeadLetterRateHigh: above 1% of the input."),
            ("timeseries", "Checkpoint age (per instance)", "s", 12,
             [q(f"engaged_checkpoint_age_seconds{{{J}}}", "{{instance}}")],
             "Time since the last successful checkpoint round. CheckpointStale: above 5 minutes."),
            ("timeseries", "Records consumed / s", "rps", 8,
             [q(f"engaged:events_consumed:rate5m{{{J}}}", "{{topic}}")],
             "Input records consumed per topic, summed over the instances."),
            ("timeseries", "Snapshot rounds / s (per instance)", "ops", 8,
             [q(f"sum by (instance) (rate(engaged_snapshots_published_total{{{J}}}[$__rate_interval]))", "{{instance}}")],
             "Snapshot rounds published (every snapshot_interval). SnapshotsStale: none for 10 minutes on an instance owning partitions."),
            ("timeseries", "State memory, modelled (per instance)", "bytes", 8,
             [q(f"sum by (instance) (engaged_state_memory_bytes{{{J}}})", "{{instance}}")],
             "Estimated heap bytes of the state (docs/operations.md \"Memory model\"); compare with max_memory."),
            ("timeseries", "Consumer loop in snapshot rounds (per instance)", "percentunit", 8,
             [q(f"sum by (instance) (rate(engaged_snapshot_loop_seconds_total{{{J}}}[$__rate_interval]))", "{{instance}}")],
             "Share of the consumer loop's time spent computing, encoding and enqueueing snapshot rounds (no record is applied meanwhile). At most one half by design: near it, rounds are the bottleneck; raise snapshot_interval or lower max_dimension_values (docs/operations.md \"Snapshot topic\")."),
        ],
    ),
    (
        "Web",
        [
            ("stat", "Page views", "short", 4, [q(f"engaged:web_page_views:sum{{{JW}}}")], "Page views in the window."),
            ("stat", "Sessions", "short", 4, [q(f"engaged:web_sessions:sum{{{JW}}}")], "Sessions closed in the window."),
            ("stat", "Active sessions", "short", 4, [q(f"engaged:web_sessions_active:sum{{{J}}}")], "Sessions open now."),
            ("stat", "Bounce rate", "percentunit", 4, [q(f"engaged:web_bounce_ratio:sum{{{JW}}}")],
             "Closed sessions with one page view, of all closed sessions (sums over the instances, then divided). BounceRateSpike: 1h 15 points above 7d."),
            ("stat", "Average session duration", "s", 4, [q(f"engaged:web_session_duration_avg_seconds:sum{{{JW}}}")], "Sum of durations / sessions."),
            ("stat", "Bounced sessions", "short", 4, [q(f"engaged:web_bounced_sessions:sum{{{JW}}}")], "Closed sessions with exactly one view."),
            ("timeseries", "Bounce rate: site $site and channel $channel", "percentunit", 12,
             [q(f'engaged:web_bounce_ratio_by_site:sum{{{JW}, site="$site"}}', "site {{site}}"),
              q(f'engaged:web_bounce_ratio_by_channel:sum{{{JW}, channel="$channel"}}', "channel {{channel}}")],
             "Bounce rate of one site and one channel (a session's channel is its first view's)."),
            ("timeseries", "Sessions by site and channel", "short", 12,
             [q(f"engaged:web_sessions_by_site:sum{{{JW}}}", "site {{site}}"),
              q(f"engaged:web_sessions_by_channel:sum{{{JW}}}", "channel {{channel}}")],
             "Top max_dimension_values values per instance; the rest is `other`."),
            ("timeseries", "Exit rate by page (top 10 by exit rate)", "percentunit", 24,
             [q(f"topk(10, engaged:web_exit_ratio_by_page:sum{{{JW}}})", "{{page}}")],
             "Sessions closed in the window that exited on the page (the page of their last view), over the page's views in the window. Top max_dimension_values pages by page views per instance; the rest is `other`."),
            ("timeseries", "Session duration p50 / p90 (per instance, not combinable)", "s", 24,
             [q(f"engaged_web_session_duration_p50_seconds{{{JW}}}", "{{instance}} p50"),
              q(f"engaged_web_session_duration_p90_seconds{{{JW}}}", "{{instance}} p90")],
             "Nearest-rank percentiles of each instance's closed sessions: percentiles of several instances cannot be combined."),
        ],
    ),
    (
        "Email",
        [
            ("stat", "Delivered", "short", 4, [q(f"engaged:email_delivered:sum{{{JW}}}")], "DELIVERED messages in the window."),
            ("stat", "Unique clicks", "short", 4, [q(f"engaged:email_unique_clicks:sum{{{JW}}}")], "Messages whose first click is in the window."),
            ("stat", "Unsubscribes", "short", 4, [q(f"engaged:email_unsubscribes:sum{{{JW}}}")], "Messages whose first unsubscribe is in the window."),
            ("stat", "Attributed orders", "short", 4, [q(f"engaged:email_attributed_orders:sum{{{JW}}}")], "ORDERs within attribution_window after the customer's last click."),
            ("stat", "Bounced", "short", 4, [q(f"engaged:email_bounced:sum{{{JW}}}")], "BOUNCED messages in the window."),
            ("stat", "Conversion", "percentunit", 4, [q(f"engaged:email_conversion_ratio:sum{{{JW}}}")],
             "Attributed orders / unique clicks. ConversionRateDrop: 24h below half of 7d, with fewer orders."),
            ("timeseries", "Open, click-through, click-to-open", "percentunit", 12,
             [q(f"engaged:email_open_ratio:sum{{{JW}}}", "open"),
              q(f"engaged:email_click_through_ratio:sum{{{JW}}}", "click-through"),
              q(f"engaged:email_click_to_open_ratio:sum{{{JW}}}", "click-to-open")],
             "Of the messages delivered in the window (the send cohort), the share opened (a click counts as an open), clicked, and clicked of those opened, within email_dedup_ttl of the delivery. A window's rates grow as its messages' opens arrive."),
            ("timeseries", "Unsubscribe, complaint and bounce rates", "percentunit", 12,
             [q(f"engaged:email_unsubscribe_ratio:sum{{{JW}}}", "unsubscribe"),
              q(f"engaged:email_complaint_ratio:sum{{{JW}}}", "complaint"),
              q(f"engaged:email_bounce_ratio:sum{{{JW}}}", "bounce")],
             "Of the messages delivered in the window, the share unsubscribed (UnsubscribeRateSpike) and complained about; of those sent, the share bounced (EmailBounceRateSpike)."),
            ("timeseries", "Campaign $campaign", "percentunit", 12,
             [q(f'engaged:email_open_ratio_by_campaign:sum{{{JW}, campaign="$campaign"}}', "open"),
              q(f'engaged:email_click_through_ratio_by_campaign:sum{{{JW}, campaign="$campaign"}}', "click-through")],
             "Open and click-through rate of one campaign."),
            ("timeseries", "Delivered by campaign", "short", 12,
             [q(f"engaged:email_delivered_by_campaign:sum{{{JW}}}", "{{campaign}}")],
             "Top campaigns by emails sent per instance; the rest is `other`."),
        ],
    ),
    (
        "Commerce",
        [
            ("stat", "Orders", "short", 4, [q(f"engaged:commerce_orders:sum{{{JW}}}")], "ORDER events in the window."),
            ("stat", "Purchasing customers", "short", 4, [q(f"engaged:commerce_purchasing_customers:sum{{{JW}}}")], "Distinct customers with an ORDER."),
            ("stat", "Average order value (minor units)", "short", 4, [q(f"engaged:commerce_average_order_value_minor:sum{{{JW}}}")], "Order revenue / orders, in minor units of the configured currency."),
            ("stat", "Orders per customer", "short", 4, [q(f"engaged:commerce_orders_per_customer:sum{{{JW}}}")], "Orders / purchasing customers."),
            ("stat", "Returning customers", "percentunit", 4, [q(f"engaged:commerce_returning_customer_ratio:sum{{{JW}}}")], "Purchasing customers whose first ORDER is before the window."),
            ("stat", "Profit per customer (minor units)", "short", 4, [q(f"engaged:commerce_profit_per_customer_minor:sum{{{JW}}}")], "Margin / purchasing customers."),
            ("timeseries", "Revenue (minor units)", "short", 12,
             [q(f"engaged:commerce_revenue_minor:sum{{{JW}}}", "revenue (orders + renewals)"),
              q(f"engaged:commerce_net_revenue_minor:sum{{{JW}}}", "net of refunds")],
             "In minor units of the configured currency (cents for EUR)."),
            ("timeseries", "New customers, cancellations, revenue churn", "short", 12,
             [q(f"sum(engaged_commerce_new_customers{{{JW}}})", "new customers"),
              q(f"sum(engaged_commerce_cancellations{{{JW}}})", "cancellations"),
              q(f"sum(engaged_commerce_revenue_churn_minor{{{JW}}})", "revenue churn (minor units)")],
             "Sums over the instances (customers are co-partitioned, so they add up)."),
        ],
    ),
    (
        "Survey",
        [
            ("stat", "NPS", "none", 6, [q(f"engaged:survey_nps:sum{{{JW}}}")], "100 x (promoters - detractors) / responses. NPSDrop: 24h 15 points below 30d."),
            ("stat", "NPS responses", "short", 6, [q(f"engaged:survey_nps_responses:sum{{{JW}}}")], "NPS answers in the window."),
            ("stat", "CSAT", "none", 6, [q(f"engaged:survey_csat:sum{{{JW}}}")], "100 x satisfied (4-5) / responses."),
            ("stat", "CES", "none", 6, [q(f"engaged:survey_ces:sum{{{JW}}}")], "Mean customer effort score (1-7)."),
            ("timeseries", "NPS, CSAT", "none", 24,
             [q(f"engaged:survey_nps:sum{{{JW}}}", "NPS"), q(f"engaged:survey_csat:sum{{{JW}}}", "CSAT")],
             "Scores over time for the selected window."),
        ],
    ),
    (
        "Customers",
        [
            ("stat", "Active customers", "short", 6, [q(f"engaged:customers_active:sum{{{JW}}}")], "Distinct customers with activity in the window."),
            ("stat", "Churned customers", "short", 6, [q(f"engaged:customers_churned:sum{{{JW}}}")], "Customers whose inactivity reached churn_horizon in the window."),
            ("stat", "Churn rate", "percentunit", 6, [q(f"engaged:customers_churn_ratio:sum{{{JW}}}")], "Of the customers active at the window start, the share that churned in the window (lost / active at the start). ChurnRateHigh: above 5% over 7d."),
            ("stat", "Retention rate", "percentunit", 6, [q(f"engaged:customers_retention_ratio:sum{{{JW}}}")], "1 - churn rate."),
            ("timeseries", "Active and churned customers", "short", 24,
             [q(f"engaged:customers_active:sum{{{JW}}}", "active"), q(f"engaged:customers_churned:sum{{{JW}}}", "churned"), q(f"engaged:customers_lost:sum{{{JW}}}", "lost (active at the start, then churned)")],
             "For the selected window."),
        ],
    ),
    (
        "Churn risk",
        [
            ("stat", "Customers at risk", "short", 6, [q(f"engaged:churn_at_risk_customers:sum{{{J}}}")], "Customers whose churn risk is at or above risk_threshold now."),
            ("stat", "Expected orders, next 30 days", "short", 6, [q(f"sum(engaged_churn_expected_orders_30d{{{J}}})")], "Sum over customers of the model's expected ORDERs."),
            ("stat", "Predicted value, next 30 days (minor units)", "short", 6, [q(f"sum(engaged_churn_predicted_value_30d_minor{{{J}}})")], "Expected orders x expected order value."),
            ("stat", "Model converged (per instance)", "none", 6, [q(f"engaged_churn_model_converged{{{J}}}", "{{instance}}")], "1 if the instance's last fit converged."),
            ("timeseries", "Risk crossings against the ChurnRiskSpike baseline", "short", 12,
             [q(f"engaged:churn_risk_crossings:sum{{{JW}}}", "crossings ({{window}})"),
              q(f"engaged:churn_risk_crossings:baseline{{{JW}}}", "7-day average ({{window}})"),
              q(f'3 * engaged:churn_risk_crossings:baseline{{{J}, window="24h"}}', "ChurnRiskSpike threshold (24h)")],
             "Customers whose risk crossed risk_threshold upward in the window, and their 7-day average. ChurnRiskSpike: 24h crossings above 3 times the average and at least 20."),
            ("bargauge", "Customers by churn risk", "short", 12,
             [q(f"sum by (risk_upper) (engaged_churn_risk_customers{{{J}}})", "risk <= {{risk_upper}}")],
             "Distribution of the customers' churn risk, in tenths."),
            ("timeseries", "Model parameters (per instance)", "none", 24,
             [q(f"engaged_churn_model_parameter{{{J}}}", "{{instance}} {{model}} {{parameter}}")],
             "Fitted population parameters; each instance fits the customers it owns."),
        ],
    ),
]


def variables():
    def query_var(name, label, query, current):
        v = {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-variable"},
            "refresh": 2,
            "sort": 1,
            "multi": False,
            "includeAll": False,
            "hide": 0,
        }
        if current:
            v["current"] = {"selected": True, "text": current, "value": current}
        return v

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "hide": 0,
        },
        query_var("job", "Job (consumer group)", "label_values(engaged_assigned_partitions, job)", "engaged"),
        query_var("window", "Window", 'label_values(engaged:web_page_views:sum{job="$job"}, window)', "24h"),
        query_var("site", "Site", 'label_values(engaged:web_sessions_by_site:sum{job="$job", window="$window"}, site)', None),
        query_var("channel", "Channel", 'label_values(engaged:web_sessions_by_channel:sum{job="$job", window="$window"}, channel)', None),
        query_var("campaign", "Campaign", 'label_values(engaged:email_delivered_by_campaign:sum{job="$job", window="$window"}, campaign)', None),
    ]


def panel(pid, kind, title, unit, x, y, w, h, targets, description):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend, "range": True, "instant": False}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind in ("stat", "bargauge"):
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    if kind == "stat":
        p["options"]["colorMode"] = "value"
        p["options"]["graphMode"] = "area"
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}, "tooltip": {"mode": "multi"}}
    return p


def dashboard():
    panels = []
    pid = 1
    y = 0
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        x = 0
        height = 0
        for kind, ptitle, unit, w, targets, description in row:
            h = 4 if kind == "stat" else 8
            if x + w > 24:
                x = 0
                y += height
                height = 0
            panels.append(panel(pid, kind, ptitle, unit, x, y, w, h, targets, description))
            pid += 1
            x += w
            height = max(height, h)
        y += height
    return {
        "title": "engaged",
        "uid": "engaged",
        "description": "Customer-engagement metrics from engaged (deploy/grafana/engaged.json, generated by scripts/gen_dashboard.py).",
        "tags": ["engaged"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": variables()},
        "panels": panels,
    }


def generate():
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main():
    text = generate()
    if "--check" in sys.argv[1:]:
        try:
            with open(TARGET, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print("deploy/grafana/engaged.json differs from scripts/gen_dashboard.py: run it", file=sys.stderr)
            return 1
        print("deploy/grafana/engaged.json matches scripts/gen_dashboard.py")
        return 0
    os.makedirs(os.path.dirname(TARGET), exist_ok=True)
    with open(TARGET, "w", encoding="utf-8") as f:
        f.write(text)
    print("wrote", os.path.relpath(TARGET, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
