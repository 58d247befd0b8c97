use super::*;
use crate::snapshot::SourcePartition;
use crate::telemetry::history::History;

/// An `all` row whose every number differs (by `k`) from every other's.
fn row(window: &str, k: i64) -> WindowSnapshot {
    let r = |x: f64| Some(x + k as f64 / 1000.0);
    WindowSnapshot {
        window: window.into(),
        window_start: 1_000,
        window_end: 2_000,
        watermark: 1_794_787_200_000 + k,
        dimension: "all".into(),
        dimension_value: None,
        partitions: vec![SourcePartition {
            topic: "secret-topic-name".into(),
            partition: 3,
        }],
        page_views: 12_345 + k,
        sessions: 4_321 + k,
        sessions_active: 77 + k,
        bounced_sessions: 1_000 + k,
        bounce_rate: r(0.4321),
        session_duration_sum_seconds: 9_999.5,
        avg_session_duration_seconds: r(95.25),
        emails_sent: Some(5_000 + k),
        emails_delivered: Some(4_850 + k),
        emails_bounced: Some(150 + k),
        unique_opens: Some(1_200 + k),
        unique_clicks: Some(170 + k),
        unsubscribes: Some(15 + k),
        complaints: Some(2 + k),
        delivered_opened: Some(1_200),
        complaint_rate: r(0.0004),
        open_rate: r(0.2474),
        click_through_rate: r(0.0351),
        click_to_open_rate: r(0.1417),
        unsubscribe_rate: r(0.0031),
        email_bounce_rate: r(0.03),
        attributed_orders: Some(12 + k),
        email_conversion_rate: r(0.07),
        orders: Some(321 + k),
        order_revenue_minor: Some(1_234_500 + k),
        revenue_minor: Some(1_334_567 + k),
        refunds_minor: Some(45_678 + k),
        net_revenue_minor: Some(1_288_889 + k),
        purchasing_customers: Some(300 + k),
        average_order_value: r(4_523.45),
        orders_per_customer: r(1.07),
        returning_customers: Some(120 + k),
        returning_customer_rate: r(0.4),
        new_customers: Some(180 + k),
        nps: r(23.5),
        nps_responses: Some(85 + k),
        csat: r(81.25),
        ces: r(3.125),
        active_customers: Some(1_500 + k),
        churned_customers: Some(25 + k),
        customers_at_window_start: Some(1_480 + k),
        lost_customers: Some(25),
        churn_rate: r(0.0169),
        retention_rate: r(0.9831),
        at_risk_customers: Some(268),
        risk_crossings: Some(9 + k),
        expected_orders_30d: Some(812.345),
        predicted_value_30d_minor: Some(3_456_789.4),
        ..WindowSnapshot::default()
    }
}

/// A round: `all` rows for 5m and 1h, and breakdown rows with ids that must not show.
fn round(k: i64) -> Vec<WindowSnapshot> {
    let mut v = vec![row("5m", k), row("1h", 100 + k)];
    v.push(WindowSnapshot {
        dimension: "campaign".into(),
        dimension_value: Some("c-000123-private-campaign".into()),
        ..row("1h", 7)
    });
    v.push(WindowSnapshot {
        dimension: "site".into(),
        dimension_value: Some("intranet.secret.example".into()),
        ..row("5m", 8)
    });
    v
}

/// Every value cell: (metric, window, data-value, shown text).
fn cells(html: &str) -> Vec<(String, Option<String>, String, String)> {
    let mut out = vec![];
    for part in html.split("<td data-metric=\"").skip(1) {
        let (metric, rest) = part.split_once('"').unwrap();
        let window = rest
            .strip_prefix(" data-window=\"")
            .map(|r| r.split_once('"').unwrap().0.to_string());
        let value = rest.split_once("data-value=\"").unwrap().1;
        let (value, rest) = value.split_once("\">").unwrap();
        let text = rest.split_once("</td>").unwrap().0;
        out.push((
            metric.to_string(),
            window,
            value.to_string(),
            text.to_string(),
        ));
    }
    out
}

/// The `<svg>` element (up to `</svg>`) of the chart of `metric`.
fn svg_of<'a>(html: &'a str, metric: &str) -> &'a str {
    html.split("<svg ")
        .skip(1)
        .map(|s| s.split("</svg>").next().unwrap())
        .find(|s| {
            s.split('>')
                .next()
                .unwrap()
                .contains(&format!("data-metric=\"{metric}\""))
        })
        .unwrap_or_else(|| panic!("no chart of {metric}"))
}

fn view<'a>(seq: u64, p: &'a Published, h: &'a [Arc<HistoryPoint>], now: Millis) -> View<'a> {
    View {
        seq,
        latest: p,
        history: h,
        now_ms: now,
        chart_window: None,
    }
}

#[test]
fn every_number_of_every_family_is_the_snapshots_and_shown_formatted() {
    let p = Published {
        snapshots: round(0),
        ..Published::default()
    };
    let html = render(&view(42, &p, &[], 1_794_790_000_000));
    let cells = cells(&html);
    let all: Vec<&WindowSnapshot> = p
        .snapshots
        .iter()
        .filter(|s| s.dimension == "all")
        .collect();
    for f in FAMILIES {
        assert!(
            html.contains(&format!("<section id=\"{}\"", f.id)),
            "{}",
            f.id
        );
        for k in f.windowed {
            for s in &all {
                let want = telemetry::windowed_value(k.metric, s).unwrap();
                let c = cells
                    .iter()
                    .find(|c| c.0 == k.metric && c.1.as_deref() == Some(s.window.as_str()))
                    .unwrap_or_else(|| panic!("{} {} missing", k.metric, s.window));
                assert_eq!(
                    c.2.parse::<f64>().unwrap(),
                    want,
                    "{} {}",
                    k.metric,
                    s.window
                );
                assert_eq!(c.3, format_value(Some(want), k.format));
            }
        }
        for k in f.now {
            let want = telemetry::now_value(k.metric, &p.snapshots).unwrap();
            let c = cells
                .iter()
                .find(|c| c.0 == k.metric && c.1.is_none())
                .unwrap();
            assert_eq!(c.2.parse::<f64>().unwrap(), want, "{}", k.metric);
            assert_eq!(c.3, format_value(Some(want), k.format));
        }
    }
    // Spot checks against the snapshot itself, not through the shared extractors.
    let find = |m: &str, w: &str| {
        cells
            .iter()
            .find(|c| c.0 == m && c.1.as_deref() == Some(w))
            .map(|c| (c.2.clone(), c.3.clone()))
            .unwrap()
    };
    assert_eq!(
        find("engaged_web_page_views", "5m"),
        ("12345".into(), "12,345".into())
    );
    assert_eq!(
        find("engaged_web_page_views", "1h"),
        ("12445".into(), "12,445".into())
    );
    assert_eq!(
        find("engaged_web_bounce_ratio", "5m"),
        ("0.4321".into(), "43.2%".into())
    );
    assert_eq!(
        find("engaged_commerce_revenue_minor", "5m"),
        ("1334567".into(), "13,345.67".into())
    );
    assert_eq!(
        find("engaged_survey_ces", "1h"),
        ("3.225".into(), "3.23".into())
    );
    assert_eq!(
        find("engaged_churn_risk_crossings", "1h"),
        ("109".into(), "109".into())
    );
    assert!(
        html.contains("data-metric=\"engaged_churn_at_risk_customers\" data-value=\"268\">268<")
    );
    assert!(html.contains("data-metric=\"engaged_web_sessions_active\" data-value=\"77\">77<"));
    assert!(html.contains("data-seq=\"42\""));
    assert!(html.contains(&format!("data-watermark-ms=\"{}\"", 1_794_787_200_000i64)));
}

#[test]
fn absent_ratios_and_a_missing_model_show_a_dash_and_no_value() {
    let mut s = row("5m", 0);
    s.bounce_rate = None;
    s.at_risk_customers = None;
    s.risk_crossings = None;
    let p = Published {
        snapshots: vec![s],
        ..Published::default()
    };
    let html = render(&view(1, &p, &[], 0));
    let cells = cells(&html);
    let bounce = cells
        .iter()
        .find(|c| c.0 == "engaged_web_bounce_ratio")
        .unwrap();
    assert_eq!((bounce.2.as_str(), bounce.3.as_str()), ("", "–"));
    let risk = cells
        .iter()
        .find(|c| c.0 == "engaged_churn_at_risk_customers")
        .unwrap();
    assert_eq!((risk.2.as_str(), risk.3.as_str()), ("", "–"));
}

#[test]
fn no_ids_dimension_values_partitions_scripts_or_outside_urls_on_the_page() {
    let mut h = History::default();
    for i in 0..30 {
        h.record(i + 1, 1_000_000 + i as Millis * 10_000, &round(i as i64));
    }
    let history: Vec<_> = h.points().cloned().collect();
    let p = Published {
        snapshots: round(30),
        ..Published::default()
    };
    let html = render(&View {
        chart_window: Some("<script>alert(1)</script>"),
        ..view(30, &p, &history, 1_300_000)
    });
    for secret in [
        "c-000123",
        "private-campaign",
        "intranet",
        "secret-topic-name",
        "<script",
        "http://",
        "https://",
        "src=",
    ] {
        assert!(!html.contains(secret), "{secret} is on the page");
    }
    // Every link stays on the page's origin.
    for href in html.split("href=\"").skip(1) {
        let href = href.split('"').next().unwrap();
        assert!(href.starts_with('/') || href.starts_with("data:"), "{href}");
    }
}

#[test]
fn charts_plot_the_history_of_the_chart_window_up_to_the_page_round() {
    let mut h = History::default();
    let t0: Millis = 1_000_000_000;
    for i in 0..20 {
        h.record(i + 1, t0 + i as Millis * 10_000, &round(i as i64));
    }
    let history: Vec<_> = h.points().cloned().collect();
    let p = Published {
        snapshots: round(18),
        ..Published::default()
    };
    // The page shows round 19: round 20, published after it, is left out.
    let now = t0 + 18 * 10_000;
    let html = render(&view(19, &p, &history, now));
    let svg = svg_of(&html, "engaged_web_page_views");
    assert!(svg.contains("data-window=\"1h\""), "1h is the default");
    assert!(svg.contains("data-points=\"19\""), "{svg}");
    let points = svg
        .split("<polyline class=\"line\" points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let coords: Vec<(f64, f64)> = points
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert_eq!(coords.len(), 19);
    // Page views of the 1h row grow by one per round: a rising line, oldest left.
    assert!(
        coords
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1)
    );
    // A history younger than an hour spans the whole width, oldest to newest.
    assert_eq!(coords.first().unwrap(), &(PLOT_LEFT, PLOT_BOTTOM));
    assert_eq!(coords.last().unwrap(), &(PLOT_RIGHT, PLOT_TOP));
    assert!(svg.contains(">−3 min<"), "{svg}");
    assert!(
        svg.contains("max 12,463") && svg.contains("min 12,445"),
        "{svg}"
    );
    // `?window=5m` switches every windowed chart to 5m; "now" charts have no window.
    let html = render(&View {
        chart_window: Some("5m"),
        ..view(19, &p, &history, now)
    });
    let svg = svg_of(&html, "engaged_web_page_views");
    assert!(
        svg.contains("data-window=\"5m\"") && svg.contains("max 12,363"),
        "{svg}"
    );
    let at_risk = svg_of(&html, "engaged_churn_at_risk_customers");
    assert!(!at_risk.contains("data-window") && at_risk.contains("data-points=\"19\""));
}

#[test]
fn before_the_first_round_the_page_says_so() {
    let p = Published::default();
    let html = render(&view(0, &p, &[], 0));
    assert!(html.contains("No snapshot published yet"));
    assert!(html.contains("data-seq=\"0\""));
    assert!(!html.contains("<td"));
}

#[test]
fn numbers_are_formatted_for_people() {
    assert_eq!(format_value(Some(1_234_567.0), Count), "1,234,567");
    assert_eq!(format_value(Some(-1_234.0), Count), "-1,234");
    assert_eq!(format_value(Some(999.0), Count), "999");
    assert_eq!(format_value(Some(0.12345), Percent), "12.3%");
    assert_eq!(format_value(Some(123_456.0), Money), "1,234.56");
    assert_eq!(format_value(Some(-5.0), Money), "-0.05");
    assert_eq!(format_value(Some(95.25), Seconds), "95.2 s");
    assert_eq!(format_value(None, Count), "–");
    assert_eq!(format_value(Some(f64::NAN), Percent), "–");
    assert_eq!(
        escape("<a href=\"x\">&'"),
        "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
    );
}
