//! Regression test: a flood of bad records must not stall the sidecar (issue 12, item 6).
//!
//! A producer with an unregistered schema ships single-object records whose writer
//! fingerprint no schema has. engaged used to await each dead letter's delivery before
//! the next (about 180 records/s at `linger.ms` 5), so a burst of them held the good
//! records behind it for minutes. Against librdkafka's mock cluster: a burst of
//! undecodable records, then a few good ones; every bad record must reach the
//! dead-letter topic exactly once (by its `engaged.source.*` headers) with its original
//! key, value and headers, and the good ones must be applied, within a liveness bound
//! (how long the test waits at most; it does not measure speed).
//!
//! `RUST_LOG=engaged=debug cargo test --test dead_letter_flood -- --nocapture` shows the
//! sidecar's logs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use engaged::config::RawConfig;
use engaged::decode::DecoderConfig;
use engaged::event::{Event, PageView};
use rdkafka::message::{Headers, Message};

use support::{
    Cluster, Rec, Running, dead_letter_source, init_tracing, now_ms, read_topic, routed,
    settle_within, unknown_fingerprint,
};

const PV: &str = "pageviews";
const DLQ: &str = "engagement.dlq";
const PARTITIONS: i32 = 4;
/// Bad records in the burst: at the old ~180 records/s, minutes of draining.
const BAD: usize = 30_000;
/// Good records produced behind the burst.
const GOOD: usize = 16;
/// How long the burst may take to drain: generous (a debug build on a shared machine
/// drains it in seconds), far below the minutes one awaited delivery per record took.
const PATIENCE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_undecodable_records_is_dead_lettered_once_each_and_drained() {
    init_tracing();
    // The dead-letter topic has several partitions: a mock partition keeps only ~5 MiB.
    let cluster = Cluster::with_producer(
        &[("linger.ms", "5")],
        &[
            (PV, PARTITIONS),
            ("engagement.snapshots", 1),
            (DLQ, PARTITIONS),
            ("engagement.checkpoints", PARTITIONS),
        ],
    );
    let bad: Vec<Rec> = (0..BAD)
        .map(|i| Rec {
            topic: PV.into(),
            partition: i as i32 % PARTITIONS,
            key: format!("bad-{i}"),
            payload: unknown_fingerprint(i as u64),
            headers: vec![("trace-id".into(), format!("t-{i}"))],
        })
        .collect();
    let written = cluster.produce_at(&bad).await;
    // Where each bad record is, and what it carried: (key, value, trace-id).
    let produced: BTreeMap<(String, i32, i64), &Rec> = written
        .iter()
        .zip(&bad)
        .map(|(&(p, o), r)| ((PV.to_string(), p, o), r))
        .collect();
    assert_eq!(produced.len(), BAD, "every bad record at its own offset");

    let t = now_ms() - 60_000;
    let views = (0..GOOD)
        .map(|i| {
            Event::PageView(PageView {
                event_id: format!("good-{i}"),
                event_time: t + i as i64,
                visitor_id: format!("v{i}"),
                customer_id: None,
                site: "shop".into(),
                page: "/".into(),
                referrer: None,
                channel: None,
            })
        })
        .collect();
    let good: Vec<Rec> = routed(views, PARTITIONS)
        .iter()
        .map(|(p, e)| Rec::event(PV, *p, e))
        .collect();
    cluster.produce(&good).await;

    let raw = RawConfig {
        bootstrap_servers: cluster.bootstrap.clone(),
        group_id: "dead-letter-flood".into(),
        input_topics: vec![PV.into()],
        listen: "127.0.0.1:0".into(),
        windows: vec!["1h".into()],
        snapshot_interval: "200ms".into(),
        // Checkpoints during the burst: none may cover a dead letter not yet delivered.
        checkpoint_interval: "500ms".into(),
        idle_timeout: "1s".into(),
        shutdown_timeout: "20s".into(),
        statistics_interval: "1s".into(),
        kafka: BTreeMap::from([("session.timeout.ms".into(), "6000".into())]),
        ..RawConfig::default()
    };
    let started = Instant::now();
    let sidecar = Running::start(raw, &DecoderConfig::default()).await;
    let m = settle_within(
        sidecar.addr,
        "the burst dead-lettered and the good records applied",
        PATIENCE,
        // At least: a record dead-lettered twice fails below, not by a timeout.
        |m| {
            m.get("engaged_dead_letter_records_total", &[]) >= Some(BAD as f64)
                && m.sum("engaged_events_accepted_total") == GOOD as f64
        },
    )
    .await;
    eprintln!(
        "{BAD} dead letters and {GOOD} good records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        m.val("engaged_dead_letter_records_total", &[]),
        BAD as f64,
        "dead letters acknowledged"
    );
    assert_eq!(
        m.val(
            "engaged_events_rejected_total",
            &[("reason", "undecodable")]
        ),
        BAD as f64
    );
    assert_eq!(m.sum("engaged_events_rejected_total"), BAD as f64);
    if let Err(e) = sidecar.stop().await {
        panic!("Sidecar::run returns Ok, not: {e}");
    }

    let dlq = read_topic(&cluster.bootstrap, DLQ).await;
    let mut seen = BTreeSet::new();
    let mut duplicates = vec![];
    for r in &dlq {
        let source = dead_letter_source(r).expect("a dead letter names its source");
        let Some(original) = produced.get(&source) else {
            panic!("dead letter of a record that was not bad: {source:?}");
        };
        assert_eq!(r.key(), Some(original.key.as_bytes()), "{source:?}: key");
        assert_eq!(
            r.payload(),
            Some(&original.payload[..]),
            "{source:?}: value"
        );
        let headers = r.headers().expect("headers");
        let header = |key: &str| {
            (0..headers.count())
                .map(|i| headers.get(i))
                .find(|h| h.key == key)
                .and_then(|h| h.value)
        };
        assert_eq!(
            header("trace-id"),
            Some(original.headers[0].1.as_bytes()),
            "{source:?}: original header"
        );
        assert_eq!(
            header("engaged.error.reason"),
            Some(&b"undecodable"[..]),
            "{source:?}"
        );
        if !seen.insert(source.clone()) {
            duplicates.push(source);
        }
    }
    assert!(
        duplicates.is_empty(),
        "{} records dead-lettered twice, e.g. {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(5)]
    );
    let missing: Vec<_> = produced.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} bad records not dead-lettered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(dlq.len(), BAD);
}
