//! End-to-end tests of the Kafka edge against librdkafka's in-process mock cluster.
//!
//! Every test creates its own mock cluster (bound to 127.0.0.1 on random ports),
//! produces hand-designed records, runs a full [`Sidecar`] (consumer group, HTTP
//! server, snapshot and dead-letter producers) and checks `/metrics` and the output
//! topics against numbers worked out by hand in the test. A [`Running`] guard stops
//! the sidecar gracefully even when an assertion fails.
//!
//! `RUST_LOG=engaged=debug cargo test --test kafka_mock -- --nocapture` shows the
//! sidecar's logs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use engaged::config::RawConfig;
use engaged::decode::{DecoderConfig, encode};
use engaged::event::{
    EmailEvent, EmailEventType, Event, EventKind, Millis, PageView, Purchase, PurchaseType,
    SurveyKind, SurveyResponse,
};
use engaged::snapshot::WindowSnapshot;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use support::{
    Cluster, Metrics, Running, close, fetch, init_tracing, now_ms, read_topic, scrape, settle,
};

const MIN: Millis = 60_000;
const HOUR: Millis = 60 * MIN;
/// Default `allowed_lateness` (SPEC §2).
const LATENESS: Millis = 5 * MIN;
/// Bucket of the `24h` window: W / 60.
const BUCKET_24H: Millis = 24 * MIN;

/// A recent-past start of event time, on a whole minute: now − 3 h.
fn recent_t0() -> Millis {
    (now_ms() - 3 * HOUR).div_euclid(MIN) * MIN
}

// ---------------------------------------------------------------------------
// Events

fn page_view(id: &str, t: Millis, visitor: &str, site: &str, channel: Option<&str>) -> Event {
    Event::PageView(PageView {
        event_id: id.into(),
        event_time: t,
        visitor_id: visitor.into(),
        customer_id: None,
        site: site.into(),
        page: "/".into(),
        referrer: None,
        channel: channel.map(String::from),
    })
}

fn email(id: &str, t: Millis, customer: &str, kind: EmailEventType) -> Event {
    Event::Email(EmailEvent {
        event_id: id.into(),
        event_time: t,
        customer_id: customer.into(),
        campaign_id: "spring".into(),
        message_id: format!("msg-{customer}"),
        kind,
        url: None,
    })
}

fn purchase(id: &str, t: Millis, customer: &str, kind: PurchaseType) -> Event {
    Event::Purchase(Purchase {
        event_id: id.into(),
        event_time: t,
        customer_id: customer.into(),
        order_id: format!("order-{id}"),
        kind,
        amount_minor: 1_999,
        currency: "EUR".into(),
        cost_minor: Some(1_200),
        items: 1,
        campaign_id: None,
    })
}

fn survey(id: &str, t: Millis, customer: &str, kind: SurveyKind, score: i32) -> Event {
    Event::Survey(SurveyResponse {
        event_id: id.into(),
        event_time: t,
        customer_id: Some(customer.into()),
        survey_id: "q1".into(),
        kind,
        score,
        comment: None,
    })
}

// ---------------------------------------------------------------------------
// Sidecar and /metrics

fn raw_config(bootstrap: &str, group: &str) -> RawConfig {
    RawConfig {
        bootstrap_servers: bootstrap.into(),
        group_id: group.into(),
        listen: "127.0.0.1:0".into(),
        snapshot_interval: "200ms".into(),
        windows: vec!["1h".into(), "24h".into()],
        shutdown_timeout: "10s".into(),
        statistics_interval: "1s".into(),
        kafka: BTreeMap::from([("session.timeout.ms".into(), "6000".into())]),
        ..RawConfig::default()
    }
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(close(actual, expected), "{what}: {actual} != {expected}");
}

/// The accounting identity of the pipeline: consumed = accepted + rejected.
fn assert_accounting(m: &Metrics) {
    let consumed = m.sum("engaged_events_consumed_total");
    let accepted = m.sum("engaged_events_accepted_total");
    let rejected = m.sum("engaged_events_rejected_total");
    assert_eq!(
        consumed,
        accepted + rejected,
        "consumed {consumed} != accepted {accepted} + rejected {rejected}"
    );
}

fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a [u8]> {
    let h = m.headers()?;
    (0..h.count())
        .map(|i| h.get(i))
        .find(|h| h.key == key)
        .and_then(|h| h.value)
}

fn header_str(m: &OwnedMessage, key: &str) -> String {
    let v = header(m, key).unwrap_or_else(|| panic!("dead letter lacks header {key}"));
    String::from_utf8(v.to_vec()).expect("UTF-8 header")
}

// ---------------------------------------------------------------------------
// 1. Three wire formats → consumer group → /metrics and the snapshot topic

const PV: &str = "pageviews";
const PV_PLAIN: &str = "pageviews-plain";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_wire_formats_give_hand_computed_metrics_and_snapshots() {
    init_tracing();
    let input = [PV, PV_PLAIN, "emails", "purchases", "surveys"];
    let cluster = Cluster::new(&[
        (PV, 2),
        (PV_PLAIN, 2),
        ("emails", 2),
        ("purchases", 2),
        ("surveys", 2),
        ("engagement.snapshots", 1),
        ("engagement.dlq", 1),
        ("engagement.checkpoints", 2),
    ]);
    let t0 = recent_t0();
    // Later than every session end + session_timeout + allowed_lateness.
    let clock = t0 + 170 * MIN;
    let so = encode::single_object;
    let cf = |e: &Event| encode::confluent(7, e);
    let plain = encode::datum;

    // Partition 0 (a task: partition 0 of every input topic).
    //   A (shop, email): t0 SO, t0+10m Confluent, t0+20m plain → one session, 3 views, 20 min.
    //   B (blog, organic): t0+5m Confluent → bounce.
    let a = |id, t| page_view(id, t, "A", "shop", Some("email"));
    let b = |id, t| page_view(id, t, "B", "blog", Some("organic"));
    cluster.send(PV, 0, "A", so(&a("a1", t0))).await;
    cluster.send(PV, 0, "B", cf(&b("b1", t0 + 5 * MIN))).await;
    cluster.send(PV, 0, "A", cf(&a("a2", t0 + 10 * MIN))).await;
    cluster
        .send(PV_PLAIN, 0, "A", plain(&a("a3", t0 + 20 * MIN)))
        .await;
    // Partition 1.
    //   C (shop, no channel): t0 SO, t0+31m plain → two bounces (31 min apart).
    //   D (blog, paid_social): t0+1m SO, t0+29m Confluent → one session, 2 views, 28 min.
    //   E (shop, organic): t0+2m Confluent, t0+32m SO → exactly 30 min apart: two bounces.
    let c = |id, t| page_view(id, t, "C", "shop", None);
    let d = |id, t| page_view(id, t, "D", "blog", Some("paid_social"));
    let e = |id, t| page_view(id, t, "E", "shop", Some("organic"));
    cluster.send(PV, 1, "C", so(&c("c1", t0))).await;
    cluster.send(PV, 1, "D", so(&d("d1", t0 + MIN))).await;
    cluster.send(PV, 1, "E", cf(&e("e1", t0 + 2 * MIN))).await;
    cluster.send(PV, 1, "D", cf(&d("d2", t0 + 29 * MIN))).await;
    cluster.send(PV, 1, "E", so(&e("e2", t0 + 32 * MIN))).await;
    cluster
        .send(PV_PLAIN, 1, "C", plain(&c("c2", t0 + 31 * MIN)))
        .await;
    // Other families: accepted, no web effect.
    cluster
        .send(
            "emails",
            0,
            "cust-1",
            so(&email("m1", t0 + 3 * MIN, "cust-1", EmailEventType::Opened)),
        )
        .await;
    cluster
        .send(
            "purchases",
            0,
            "cust-1",
            plain(&purchase(
                "o1",
                t0 + 15 * MIN,
                "cust-1",
                PurchaseType::Order,
            )),
        )
        .await;
    cluster
        .send(
            "surveys",
            1,
            "cust-2",
            so(&survey("s1", t0 + 40 * MIN, "cust-2", SurveyKind::Nps, 9)),
        )
        .await;
    // Clock events, last in every partition of every input topic. Each clock page
    // view opens a session (distinct visitors) that stays open: 4 active sessions.
    for p in 0..2 {
        let clock_view = |topic: &str| {
            page_view(
                &format!("clock-{topic}-{p}"),
                clock,
                &format!("clock-{topic}-{p}"),
                "clock",
                None,
            )
        };
        cluster.send(PV, p, "clock", so(&clock_view(PV))).await;
        cluster
            .send(PV_PLAIN, p, "clock", plain(&clock_view(PV_PLAIN)))
            .await;
        let id = format!("clock-emails-{p}");
        cluster
            .send(
                "emails",
                p,
                "clock",
                so(&email(&id, clock, "clock", EmailEventType::Sent)),
            )
            .await;
        let id = format!("clock-purchases-{p}");
        cluster
            .send(
                "purchases",
                p,
                "clock",
                plain(&purchase(&id, clock, "clock", PurchaseType::Renewal)),
            )
            .await;
        let id = format!("clock-surveys-{p}");
        cluster
            .send(
                "surveys",
                p,
                "clock",
                so(&survey(&id, clock, "clock", SurveyKind::Csat, 5)),
            )
            .await;
    }
    // Accepted per topic, by hand: pageviews 4+6 (incl. 2 clocks), pageviews-plain
    // 2+2, emails 1+2, purchases 1+2, surveys 1+2.
    let accepted_by_topic = [
        (PV, 10.0),
        (PV_PLAIN, 4.0),
        ("emails", 3.0),
        ("purchases", 3.0),
        ("surveys", 3.0),
    ];
    let total = 23.0;

    let decoder = {
        let mut d = DecoderConfig::default();
        d.schema_ids
            .insert(7, EventKind::PageView.schema_json().to_string());
        d.topic_schemas.insert(
            PV_PLAIN.into(),
            EventKind::PageView.schema_json().to_string(),
        );
        d.topic_schemas.insert(
            "purchases".into(),
            EventKind::Purchase.schema_json().to_string(),
        );
        d
    };
    let raw = RawConfig {
        input_topics: input.map(String::from).to_vec(),
        ..raw_config(&cluster.bootstrap, "formats")
    };
    let sidecar = Running::start(raw, &decoder).await;

    // Every partition's watermark is clock − lateness, so the instance watermark is too.
    let watermark = clock - LATENESS;
    let wm_seconds = watermark as f64 / 1000.0;
    let m = settle(sidecar.addr, "all records and the final watermark", |m| {
        m.sum("engaged_events_consumed_total") == total
            && m.get("engaged_watermark_timestamp_seconds", &[])
                .is_some_and(|w| close(w, wm_seconds))
    })
    .await;

    // Accounting.
    assert_accounting(&m);
    assert_eq!(
        m.sum("engaged_events_rejected_total"),
        0.0,
        "{}",
        m.relevant("engaged_events")
    );
    for (topic, n) in accepted_by_topic {
        assert_eq!(
            m.val("engaged_events_accepted_total", &[("topic", topic)]),
            n,
            "accepted on {topic}"
        );
    }
    for topic in input {
        for p in 0..2 {
            let w = m.val(
                "engaged_partition_watermark_timestamp_seconds",
                &[("topic", topic), ("partition", &p.to_string())],
            );
            assert_close(w, wm_seconds, &format!("watermark of {topic}/{p}"));
        }
    }
    assert_eq!(m.val("engaged_assigned_partitions", &[]), 10.0);

    // 24h window: 10 views; sessions A(1) B(1) C(2) D(1) E(2) = 7, bounces B C C E E = 5,
    // durations 20 min (A) + 28 min (D) = 2880 s.
    let w24 = [("window", "24h")];
    assert_eq!(m.val("engaged_web_page_views", &w24), 10.0);
    assert_eq!(m.val("engaged_web_sessions", &w24), 7.0);
    assert_eq!(m.val("engaged_web_bounced_sessions", &w24), 5.0);
    assert_close(
        m.val("engaged_web_bounce_ratio", &w24),
        5.0 / 7.0,
        "bounce ratio",
    );
    assert_close(
        m.val("engaged_web_sessions_duration_seconds", &w24),
        2880.0,
        "duration sum",
    );
    assert_close(
        m.val("engaged_web_session_duration_avg_seconds", &w24),
        2880.0 / 7.0,
        "avg duration",
    );
    // Durations [0, 0, 0, 0, 0, 1200, 1680]: nearest rank p50 = 4th = 0, p90 = 7th = 1680.
    assert_eq!(m.val("engaged_web_session_duration_p50_seconds", &w24), 0.0);
    assert_eq!(
        m.val("engaged_web_session_duration_p90_seconds", &w24),
        1680.0
    );
    // Per site: shop = A(3) C(2) E(2) views, sessions A C C E E, bounces C C E E;
    // blog = B(1) D(2) views, sessions B D, bounce B; clock views are after the window.
    for (site, views, sessions, bounced, duration) in [
        ("shop", 7.0, 5.0, 4.0, 1200.0),
        ("blog", 3.0, 2.0, 1.0, 1680.0),
        ("clock", 0.0, 0.0, 0.0, 0.0),
    ] {
        let l = [("window", "24h"), ("site", site)];
        assert_eq!(m.val("engaged_web_page_views_by_site", &l), views, "{site}");
        assert_eq!(
            m.val("engaged_web_sessions_by_site", &l),
            sessions,
            "{site}"
        );
        assert_eq!(
            m.val("engaged_web_bounced_sessions_by_site", &l),
            bounced,
            "{site}"
        );
        assert_close(
            m.val("engaged_web_sessions_duration_seconds_by_site", &l),
            duration,
            site,
        );
    }
    assert_close(
        m.val(
            "engaged_web_bounce_ratio_by_site",
            &[("window", "24h"), ("site", "shop")],
        ),
        0.8,
        "shop bounce ratio",
    );
    assert_close(
        m.val(
            "engaged_web_bounce_ratio_by_site",
            &[("window", "24h"), ("site", "blog")],
        ),
        0.5,
        "blog bounce ratio",
    );
    assert_eq!(
        m.get(
            "engaged_web_bounce_ratio_by_site",
            &[("window", "24h"), ("site", "clock")]
        ),
        None,
        "a ratio with a zero denominator is absent"
    );
    // Per channel (a session's channel is its first view's): organic = B + E.
    for (channel, views, sessions) in [
        ("email", 3.0, 1.0),
        ("organic", 3.0, 3.0),
        ("paid_social", 2.0, 1.0),
        ("(none)", 2.0, 2.0),
    ] {
        let l = [("window", "24h"), ("channel", channel)];
        assert_eq!(
            m.val("engaged_web_page_views_by_channel", &l),
            views,
            "{channel}"
        );
        assert_eq!(
            m.val("engaged_web_sessions_by_channel", &l),
            sessions,
            "{channel}"
        );
    }
    // 1h window [e − 1h, e) with e > clock − 6 min: none of the test views or closes.
    let w1 = [("window", "1h")];
    assert_eq!(m.val("engaged_web_page_views", &w1), 0.0);
    assert_eq!(m.val("engaged_web_sessions", &w1), 0.0);
    assert_eq!(m.get("engaged_web_bounce_ratio", &w1), None);
    // Open now: the four clock sessions.
    assert_eq!(m.val("engaged_web_sessions_active", &[]), 4.0);
    assert_eq!(
        m.val("engaged_web_sessions_active_by_site", &[("site", "clock")]),
        4.0
    );
    // Cumulative duration histogram: 5 × 0 s, 1200 s, 1680 s.
    let hist = "engaged_web_session_duration_seconds";
    assert_eq!(m.val(&format!("{hist}_count"), &[]), 7.0);
    assert_close(m.val(&format!("{hist}_sum"), &[]), 2880.0, "histogram sum");
    assert_eq!(m.val(&format!("{hist}_bucket"), &[("le", "0")]), 5.0);
    assert_eq!(m.val(&format!("{hist}_bucket"), &[("le", "600")]), 5.0);
    assert_eq!(m.val(&format!("{hist}_bucket"), &[("le", "1800")]), 7.0);

    let (status, body) = fetch(sidecar.addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 200, "{body}");

    if let Err(e) = sidecar.stop().await {
        panic!("Sidecar::run returns Ok after shutdown, not: {e}");
    }

    // The snapshot topic carries the same numbers.
    let records = read_topic(&cluster.bootstrap, "engagement.snapshots").await;
    let snaps: Vec<(String, WindowSnapshot)> = records
        .iter()
        .map(|r| {
            let key = String::from_utf8(r.key().expect("snapshot key").to_vec()).unwrap();
            let s = engaged::sink::decode_snapshot_record(r.payload().expect("payload"))
                .expect("EngagementSnapshot");
            (key, s)
        })
        .collect();
    let latest = |key: &str| {
        snaps
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no snapshot with key {key}"))
    };
    let all = latest("24h/all");
    let end = watermark.div_euclid(BUCKET_24H) * BUCKET_24H;
    assert_eq!(all.window, "24h");
    assert_eq!(all.dimension, "all");
    assert_eq!(all.dimension_value, None);
    assert_eq!(all.watermark, watermark);
    assert_eq!((all.window_start, all.window_end), (end - 24 * HOUR, end));
    assert_eq!(all.page_views, 10);
    assert_eq!(all.sessions, 7);
    assert_eq!(all.bounced_sessions, 5);
    assert_eq!(all.sessions_active, 4);
    assert_close(
        all.bounce_rate.expect("bounce rate"),
        5.0 / 7.0,
        "snapshot bounce rate",
    );
    assert_close(
        all.session_duration_sum_seconds,
        2880.0,
        "snapshot duration sum",
    );
    assert_close(
        all.avg_session_duration_seconds.expect("avg"),
        2880.0 / 7.0,
        "snapshot avg",
    );
    assert_eq!(all.session_duration_p50_seconds, Some(0.0));
    assert_eq!(all.session_duration_p90_seconds, Some(1680.0));
    let covered: BTreeSet<(String, i32)> = all
        .partitions
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    let expected: BTreeSet<(String, i32)> = input
        .iter()
        .flat_map(|t| (0..2).map(move |p| (t.to_string(), p)))
        .collect();
    assert_eq!(covered, expected, "source partitions of the snapshot");
    assert_eq!(all.partitions.len(), 10);

    let shop = latest("24h/site/shop");
    assert_eq!(
        (shop.page_views, shop.sessions, shop.bounced_sessions),
        (7, 5, 4)
    );
    assert_eq!(shop.bounce_rate, Some(0.8));
    let hour = latest("1h/all");
    assert_eq!((hour.page_views, hour.sessions), (0, 0));
    assert_eq!(hour.bounce_rate, None);
    // Nothing was rejected, so nothing was dead-lettered.
    assert!(
        read_topic(&cluster.bootstrap, "engagement.dlq")
            .await
            .is_empty()
    );
}

// ---------------------------------------------------------------------------
// 2. Garbage, invalid, duplicate and late records → dead-letter topic

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_are_dead_lettered_and_processing_continues() {
    init_tracing();
    let cluster = Cluster::new(&[
        (PV, 2),
        ("emails", 2),
        ("purchases", 2),
        ("surveys", 2),
        ("engagement.snapshots", 1),
        ("engagement.dlq", 1),
        ("engagement.checkpoints", 2),
    ]);
    let t0 = recent_t0();
    let clock = t0 + 170 * MIN;
    let so = encode::single_object;
    let view = |id: &str, t, visitor: &str| page_view(id, t, visitor, "shop", None);

    // pageviews/0
    let o_v1 = cluster.send(PV, 0, "v1", so(&view("p1", t0, "v1"))).await;
    let garbage = b"definitely not Avro \xff\xfe".to_vec();
    let garbage_headers = OwnedHeaders::new().insert(Header {
        key: "trace-id",
        value: Some("abc-123"),
    });
    let o_garbage = cluster
        .send_raw(PV, 0, "bad-key", &garbage, Some(garbage_headers))
        .await;
    let v2 = so(&view("p2", t0 + MIN, "v2"));
    cluster.send(PV, 0, "v2", v2.clone()).await;
    let o_dup = cluster.send(PV, 0, "v2", v2.clone()).await; // same event_id again
    cluster
        .send(PV, 0, "v3", so(&view("p3", t0 + 20 * MIN, "v3")))
        .await; // partition watermark now t0+15m
    let late = so(&view("p4", t0 + 2 * MIN, "v4"));
    let o_late = cluster.send(PV, 0, "v4", late.clone()).await;
    cluster
        .send(PV, 0, "clock", so(&view("p-clock", clock, "clock")))
        .await;
    // surveys/0
    cluster
        .send(
            "surveys",
            0,
            "c1",
            so(&survey("s1", t0, "c1", SurveyKind::Nps, 9)),
        )
        .await;
    let invalid = so(&survey("s2", t0 + MIN, "c2", SurveyKind::Nps, 11));
    let o_invalid = cluster.send("surveys", 0, "c2", invalid.clone()).await;
    cluster
        .send(
            "surveys",
            0,
            "c3",
            so(&survey("s3", t0 + 2 * MIN, "c3", SurveyKind::Csat, 4)),
        )
        .await;
    // purchases/1
    cluster
        .send(
            "purchases",
            1,
            "c1",
            so(&purchase("o1", t0, "c1", PurchaseType::Order)),
        )
        .await;
    assert_eq!(o_v1, 0);

    let raw = RawConfig {
        // Partitions without records must not hold the watermark back for long.
        idle_timeout: "1s".into(),
        ..raw_config(&cluster.bootstrap, "dead-letters")
    };
    let started = std::time::Instant::now();
    let sidecar = Running::start(raw, &DecoderConfig::default()).await;
    let watermark = clock - LATENESS;
    let m = settle(sidecar.addr, "11 records, 4 dead letters, watermark", |m| {
        m.sum("engaged_events_consumed_total") == 11.0
            && m.get("engaged_dead_letter_records_total", &[]) == Some(4.0)
            && m.get("engaged_watermark_timestamp_seconds", &[])
                .is_some_and(|w| close(w, watermark as f64 / 1000.0))
    })
    .await;
    // Eleven records in seconds: the loop mostly waited, and never longer than it ran.
    let idle = m.val("engaged_consumer_idle_seconds_total", &[]);
    let ran = started.elapsed().as_secs_f64();
    assert!(idle > 0.5 && idle < ran, "idle {idle}s of {ran}s");

    assert_accounting(&m);
    for (reason, n) in [
        ("undecodable", 1.0),
        ("invalid", 1.0),
        ("duplicate", 1.0),
        ("late", 1.0),
    ] {
        assert_eq!(
            m.val("engaged_events_rejected_total", &[("reason", reason)]),
            n,
            "rejected as {reason}"
        );
    }
    assert_eq!(m.sum("engaged_events_rejected_total"), 4.0);
    assert_eq!(
        m.val("engaged_events_accepted_total", &[("topic", PV)]),
        4.0
    );
    assert_eq!(
        m.val("engaged_events_accepted_total", &[("topic", "surveys")]),
        2.0
    );
    assert_eq!(
        m.val("engaged_events_accepted_total", &[("topic", "purchases")]),
        1.0
    );
    assert_eq!(m.sum("engaged_events_accepted_total"), 7.0);
    assert_eq!(
        m.val(
            "engaged_events_consumed_total",
            &[("topic", PV), ("partition", "0")]
        ),
        7.0
    );
    // The valid views around the rejected ones were applied, once each: v1, v2, v3 are
    // three bounces closed by the clock view; the duplicate and the late view count nowhere.
    let w24 = [("window", "24h")];
    assert_eq!(m.val("engaged_web_page_views", &w24), 3.0);
    assert_eq!(m.val("engaged_web_sessions", &w24), 3.0);
    assert_eq!(m.val("engaged_web_bounced_sessions", &w24), 3.0);
    assert_eq!(m.val("engaged_web_sessions_active", &[]), 1.0);

    if let Err(e) = sidecar.stop().await {
        panic!("Sidecar::run returns Ok, not: {e}");
    }

    let dlq = read_topic(&cluster.bootstrap, "engagement.dlq").await;
    assert_eq!(dlq.len(), 4, "four dead letters");
    let find = |topic: &str, offset: i64| {
        dlq.iter()
            .find(|r| {
                header(r, "engaged.source.topic") == Some(topic.as_bytes())
                    && header(r, "engaged.source.offset") == Some(offset.to_string().as_bytes())
            })
            .unwrap_or_else(|| panic!("no dead letter for {topic}@{offset}"))
    };
    // (source topic, partition, offset), original key, reason, original value.
    let cases = [
        ((PV, 0, o_garbage), "bad-key", "undecodable", &garbage),
        ((PV, 0, o_dup), "v2", "duplicate", &v2),
        ((PV, 0, o_late), "v4", "late", &late),
        (("surveys", 0, o_invalid), "c2", "invalid", &invalid),
    ];
    for ((topic, partition, offset), key, reason, value) in cases {
        let r = find(topic, offset);
        assert_eq!(r.key(), Some(key.as_bytes()), "{reason}: original key");
        assert_eq!(r.payload(), Some(&value[..]), "{reason}: original value");
        assert_eq!(
            header_str(r, "engaged.source.partition"),
            partition.to_string()
        );
        assert_eq!(header_str(r, "engaged.source.offset"), offset.to_string());
        assert_eq!(header_str(r, "engaged.error.reason"), reason);
        let error = header_str(r, "engaged.error");
        assert!(
            error.starts_with(&format!("{reason}: ")) && error.len() > reason.len() + 2,
            "{reason}: engaged.error = {error:?}"
        );
    }
    let g = find(PV, o_garbage);
    assert_eq!(
        header(g, "trace-id"),
        Some(&b"abc-123"[..]),
        "original header kept"
    );
    let invalid_error = header_str(find("surveys", o_invalid), "engaged.error");
    assert!(invalid_error.contains("11"), "{invalid_error}");
}

// ---------------------------------------------------------------------------
// 3. Offsets are committed only after apply, and a restart resumes exactly

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_resumes_after_the_applied_offsets() {
    init_tracing();
    let cluster = Cluster::new(&[
        (PV, 2),
        ("emails", 2),
        ("purchases", 2),
        ("surveys", 2),
        ("engagement.snapshots", 1),
        ("engagement.dlq", 1),
        ("engagement.checkpoints", 2),
    ]);
    let t0 = recent_t0();
    let so = encode::single_object;
    let view = |id: &str, t, visitor: &str| page_view(id, t, visitor, "shop", None);
    // First run: 5 valid records and a garbage one across partitions and topics.
    cluster.send(PV, 0, "v1", so(&view("a1", t0, "v1"))).await;
    cluster.send(PV, 1, "v2", so(&view("a2", t0, "v2"))).await;
    cluster.send_raw(PV, 1, "junk", b"junk", None).await;
    cluster
        .send(PV, 1, "v2", so(&view("a3", t0 + MIN, "v2")))
        .await;
    cluster
        .send(
            "surveys",
            0,
            "c1",
            so(&survey("s1", t0, "c1", SurveyKind::Ces, 3)),
        )
        .await;
    cluster
        .send(
            "emails",
            1,
            "c2",
            so(&email("m1", t0, "c2", EmailEventType::Delivered)),
        )
        .await;

    let mut raw = raw_config(&cluster.bootstrap, "restart");
    // After a member leaves, the mock holds the next join for session.timeout.ms − 1 s
    // (a real broker would not): keep that short.
    raw.kafka.insert("session.timeout.ms".into(), "2500".into());
    raw.kafka
        .insert("heartbeat.interval.ms".into(), "500".into());
    let first = Running::start(raw.clone(), &DecoderConfig::default()).await;
    let m = settle(first.addr, "first run consumed everything", |m| {
        m.sum("engaged_events_consumed_total") == 6.0
            && m.get("engaged_dead_letter_records_total", &[]) == Some(1.0)
    })
    .await;
    assert_accounting(&m);
    assert_eq!(m.sum("engaged_events_accepted_total"), 5.0);
    if let Err(e) = first.stop().await {
        panic!("first run stops with Ok, not: {e}");
    }

    // Second run, same group: assigned, but nothing old is consumed again.
    let second = Running::start(raw, &DecoderConfig::default()).await;
    settle(second.addr, "second member assigned", |m| {
        m.get("engaged_assigned_partitions", &[]) == Some(8.0)
    })
    .await;
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        let m = scrape(second.addr).await;
        assert_eq!(
            m.sum("engaged_events_consumed_total"),
            0.0,
            "an old record was consumed again:\n{}",
            m.relevant("engaged_events")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New records are consumed, and only they.
    cluster
        .send(PV, 0, "v1", so(&view("b1", t0 + 2 * MIN, "v1")))
        .await;
    cluster
        .send(PV, 1, "v2", so(&view("b2", t0 + 2 * MIN, "v2")))
        .await;
    cluster
        .send(
            "purchases",
            1,
            "c3",
            so(&purchase("o1", t0, "c3", PurchaseType::Order)),
        )
        .await;
    settle(second.addr, "the new records", |m| {
        m.sum("engaged_events_consumed_total") >= 3.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = scrape(second.addr).await;
    assert_eq!(
        m.sum("engaged_events_consumed_total"),
        3.0,
        "{}",
        m.relevant("engaged_events")
    );
    assert_eq!(m.sum("engaged_events_accepted_total"), 3.0);
    assert_eq!(m.sum("engaged_events_rejected_total"), 0.0);
    if let Err(e) = second.stop().await {
        panic!("second run stops with Ok, not: {e}");
    }
}

/// Regression: a restored task used to start at the group's committed offsets and
/// skip the records below the checkpoint's. When the committed offset is ahead of
/// the checkpoint (an older checkpoint, or a commit by something else), records in
/// between were never applied. A restored task must start exactly at its
/// checkpoint's offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_task_starts_at_its_checkpoint_not_at_the_committed_offset() {
    init_tracing();
    let cluster = Cluster::new(&[
        (PV, 1),
        ("emails", 1),
        ("purchases", 1),
        ("surveys", 1),
        ("engagement.snapshots", 1),
        ("engagement.dlq", 1),
        ("engagement.checkpoints", 1),
    ]);
    let t0 = recent_t0();
    let so = encode::single_object;
    let view = |id: &str, t, visitor: &str| page_view(id, t, visitor, "shop", None);
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        cluster
            .send(
                PV,
                0,
                v,
                so(&view(&format!("a{i}"), t0 + i as i64 * MIN, v)),
            )
            .await;
    }
    let mut raw = raw_config(&cluster.bootstrap, "seek");
    // Only pageviews has records: the other inputs must not hold the watermark long.
    raw.idle_timeout = "2s".into();
    raw.kafka.insert("session.timeout.ms".into(), "2500".into());
    raw.kafka
        .insert("heartbeat.interval.ms".into(), "500".into());
    let first = Running::start(raw.clone(), &DecoderConfig::default()).await;
    settle(first.addr, "first run consumed the three views", |m| {
        m.sum("engaged_events_consumed_total") == 3.0
    })
    .await;
    if let Err(e) = first.stop().await {
        panic!("first run stops with Ok, not: {e}");
    }
    // Two more views at offsets 3 and 4, and a later one (offset 5) that moves the
    // watermark past them all; then the group's committed offset is moved to 5, as
    // if a later commit had landed without its checkpoint.
    for (i, v) in ["v4", "v5"].iter().enumerate() {
        cluster
            .send(
                PV,
                0,
                v,
                so(&view(&format!("b{i}"), t0 + (3 + i as i64) * MIN, v)),
            )
            .await;
    }
    cluster
        .send(PV, 0, "v6", so(&view("clock", t0 + 20 * MIN, "v6")))
        .await;
    let bootstrap = cluster.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        // The mock refuses commits from outside the group: join it, then commit.
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "seek")
            .set("session.timeout.ms", "2500")
            .set("heartbeat.interval.ms", "500")
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", "range")
            .create()
            .expect("consumer");
        c.subscribe(&[PV]).expect("subscribe");
        let joined = Instant::now() + Duration::from_secs(30);
        while c.assignment().map_or(0, |a| a.count()) == 0 {
            assert!(
                Instant::now() < joined,
                "the committer never joined the group"
            );
            let _ = c.poll(Duration::from_millis(100));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(PV, 0, Offset::Offset(5)).unwrap();
        c.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .expect("commit offset 5");
        let committed = c.committed(Duration::from_secs(10)).expect("committed");
        assert_eq!(
            committed.find_partition(PV, 0).map(|e| e.offset()),
            Some(Offset::Offset(5))
        );
        c.unsubscribe();
    })
    .await
    .expect("commit thread");

    let second = Running::start(raw, &DecoderConfig::default()).await;
    // The 1h window at watermark t0 + 15 min holds the five views before the clock.
    let settled = settle(second.addr, "the second run's views", |m| {
        m.sum("engaged_events_consumed_total") >= 1.0
            && m.get("engaged_web_page_views", &[("window", "1h")])
                .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = scrape(second.addr).await;
    assert_eq!(
        (
            m.sum("engaged_events_consumed_total"),
            m.get("engaged_web_page_views", &[("window", "1h")])
        ),
        (3.0, Some(5.0)),
        "the restored task must read offsets 3, 4 and 5:\n{}\n{}",
        m.relevant("engaged_events"),
        m.relevant("engaged_web_page_views")
    );
    assert_accounting(&settled);
    if let Err(e) = second.stop().await {
        panic!("second run stops with Ok, not: {e}");
    }
}

/// A member that checkpoints several rounds writes a base and then deltas; the next
/// member restores the base plus every delta. Customers first seen in a delta (their
/// id, first order and distinct-count keys live only there) must be restored: a lost
/// key would count a returning customer as new, or twice as purchasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_deltas_restores_every_customer() {
    init_tracing();
    let cluster = Cluster::new(&[
        (PV, 1),
        ("emails", 1),
        ("purchases", 1),
        ("surveys", 1),
        ("engagement.snapshots", 1),
        ("engagement.dlq", 1),
        ("engagement.checkpoints", 1),
    ]);
    let t0 = recent_t0();
    let so = encode::single_object;
    let mut raw = raw_config(&cluster.bootstrap, "deltas");
    raw.checkpoint_interval = "300ms".into();
    // Only purchases has records: the other inputs must not hold the watermark long.
    raw.idle_timeout = "2s".into();
    raw.kafka.insert("session.timeout.ms".into(), "2500".into());
    raw.kafka
        .insert("heartbeat.interval.ms".into(), "500".into());
    let pieces = |m: &Metrics, form: &str| {
        m.get("engaged_checkpoint_pieces_total", &[("form", form)])
            .unwrap_or(0.0)
    };
    let first = Running::start(raw.clone(), &DecoderConfig::default()).await;
    // Three batches, each checkpointed before the next: a base, then deltas. The
    // first holds 500 more customers, so that a delta is small next to the base
    // (a small state is written whole: see `next_form`).
    let bulk: Vec<String> = (0..500).map(|i| format!("bulk{i}")).collect();
    let first_batch: Vec<(&str, i64)> = bulk
        .iter()
        .map(|c| (c.as_str(), 0))
        .chain([("c1", 0), ("c2", 0), ("c3", 0)])
        .collect();
    let batches: [&[(&str, i64)]; 3] = [&first_batch, &[("c1", 1), ("c4", 1)], &[("c2", 2)]];
    let mut sent = 0.0;
    let mut n = 0;
    for (i, batch) in batches.iter().enumerate() {
        for (customer, minute) in batch.iter() {
            n += 1;
            let order = purchase(
                &format!("o{n}"),
                t0 + minute * MIN,
                customer,
                PurchaseType::Order,
            );
            cluster.send("purchases", 0, customer, so(&order)).await;
            sent += 1.0;
        }
        let done =
            pieces(&scrape(first.addr).await, "base") + pieces(&scrape(first.addr).await, "delta");
        settle(first.addr, &format!("batch {i} checkpointed"), |m| {
            m.sum("engaged_events_consumed_total") == sent
                && pieces(m, "base") + pieces(m, "delta") > done
        })
        .await;
        // A round that ran before the batch's last record was applied writes it
        // in the next round, 300 ms later: let that happen before the next batch.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let m = scrape(first.addr).await;
    assert!(
        pieces(&m, "base") >= 1.0 && pieces(&m, "delta") >= 2.0,
        "{}",
        m.relevant("engaged_checkpoint")
    );
    let entries = m.get("engaged_state_entries", &[]);
    if let Err(e) = first.stop().await {
        panic!("first run stops with Ok, not: {e}");
    }

    let second = Running::start(raw.clone(), &DecoderConfig::default()).await;
    settle(second.addr, "the second member restored", |m| {
        m.get("engaged_assigned_partitions", &[]) == Some(4.0)
            && m.get("engaged_restore_duration_seconds", &[]).is_some()
    })
    .await;
    assert_eq!(
        scrape(second.addr).await.get("engaged_state_entries", &[]),
        entries
    );
    // c1 (base) and c4 (first seen in a delta) order again, c5 is new; then a clock
    // order moves the watermark past them all.
    for (customer, minute) in [("c1", 3), ("c4", 3), ("c5", 3), ("clock", 20)] {
        n += 1;
        let order = purchase(
            &format!("o{n}"),
            t0 + minute * MIN,
            customer,
            PurchaseType::Order,
        );
        cluster.send("purchases", 0, customer, so(&order)).await;
    }
    let window = [("window", "1h")];
    let m = settle(second.addr, "the second member's orders", |m| {
        m.sum("engaged_events_consumed_total") == 4.0
            && m.get("engaged_commerce_orders", &window) == Some(509.0)
    })
    .await;
    assert_eq!(
        (
            m.get("engaged_commerce_purchasing_customers", &window),
            m.get("engaged_commerce_new_customers", &window),
        ),
        (Some(505.0), Some(505.0)),
        "500 bulk customers and c1..c5 purchased, each new once:\n{}",
        m.relevant("engaged_commerce")
    );
    assert_accounting(&m);
    // The second member saved on the chain it restored: a third restores all of it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let m = scrape(second.addr).await;
    assert!(
        pieces(&m, "delta") >= 1.0,
        "{}",
        m.relevant("engaged_checkpoint")
    );
    let entries = m.get("engaged_state_entries", &[]);
    if let Err(e) = second.stop().await {
        panic!("second run stops with Ok, not: {e}");
    }
    let third = Running::start(raw, &DecoderConfig::default()).await;
    // Its first snapshots are at the restored eviction floor, until the inputs
    // without records count as idle and the watermark moves to the restored one.
    let m = settle(third.addr, "the third member's restored windows", |m| {
        m.get("engaged_restore_duration_seconds", &[]).is_some()
            && m.get("engaged_commerce_orders", &window) == Some(509.0)
    })
    .await;
    assert_eq!(m.get("engaged_state_entries", &[]), entries);
    assert_eq!(
        (
            m.get("engaged_commerce_purchasing_customers", &window),
            m.get("engaged_commerce_new_customers", &window),
        ),
        (Some(505.0), Some(505.0)),
        "{}",
        m.relevant("engaged_commerce")
    );
    if let Err(e) = third.stop().await {
        panic!("third run stops with Ok, not: {e}");
    }
}

// ---------------------------------------------------------------------------
// 4. Co-partitioning is checked at start-up

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_topics_with_different_partition_counts_are_refused() {
    init_tracing();
    let cluster = Cluster::new(&[
        (PV, 2),
        ("emails", 3),
        ("purchases", 2),
        ("surveys", 2),
        ("engagement.snapshots", 1),
        ("engagement.dlq", 1),
        ("engagement.checkpoints", 2),
    ]);
    let sidecar = Running::start(
        raw_config(&cluster.bootstrap, "co-partitioning"),
        &DecoderConfig::default(),
    )
    .await;
    let err = sidecar
        .join(Duration::from_secs(30))
        .await
        .expect_err("different partition counts are refused");
    let msg = err.to_string();
    assert!(msg.contains("co-partitioned"), "{msg}");
    for part in [
        "pageviews has 2",
        "emails has 3",
        "purchases has 2",
        "surveys has 2",
    ] {
        assert!(msg.contains(part), "error names `{part}`: {msg}");
    }
}
