//! Regression test: snapshot rounds that take longer than `snapshot_interval` must not
//! stop consumption or checkpoints.
//!
//! The consumer loop serves, in order, the snapshot tick, the checkpoint tick and the
//! records. A round that outlasted its interval was due again as soon as it ended, so
//! the loop did nothing but snapshots: no record was consumed and no checkpoint
//! written for as long as rounds stayed slow (seen in the scale test, whose debug
//! builds on two cores took over a second per round of a few thousand rows: an
//! instance stood still for a minute and was dropped from its group). Against
//! librdkafka's mock cluster, an interval far below what a round costs: records
//! produced after the first ones were applied must still be applied, and checkpoints
//! and snapshot rounds must go on.
//!
//! `RUST_LOG=engaged=debug cargo test --test loop_pacing -- --nocapture` shows the
//! sidecar's logs.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engaged::config::RawConfig;
use engaged::decode::DecoderConfig;
use engaged::event::{Event, PageView};

use support::{
    Cluster, Running, clock_events, engaged_topics, init_tracing, now_ms, routed, scrape,
    settle_within,
};

const PV: &str = "pageviews";
const PARTITIONS: i32 = 4;
/// Page views per part; every one on its own page, so a round has hundreds of rows.
const PART: usize = 400;
/// How long the test waits for each part at most (a debug build applies a part in
/// well under a second; the starved loop never did).
const PATIENCE: Duration = Duration::from_secs(60);

/// `PART` page views from `t` on, then a "clock" view at `clock` in every partition
/// (the watermark passes them all: they are in the rounds' rows).
fn views(part: usize, t: i64, clock: i64) -> Vec<(i32, Event)> {
    let events = (0..PART)
        .map(|i| {
            Event::PageView(PageView {
                event_id: format!("p{part}-{i}"),
                event_time: t + i as i64,
                visitor_id: format!("v{i}"),
                customer_id: None,
                site: "shop".into(),
                page: format!("/p{part}/{i}"),
                referrer: None,
                channel: None,
            })
        })
        .collect();
    let mut out = routed(events, PARTITIONS);
    out.extend(
        clock_events(&format!("{part}"), clock, PARTITIONS)
            .into_iter()
            .filter(|(_, e)| matches!(e, Event::PageView(_))),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_slower_than_their_interval_leave_room_to_consume_and_checkpoint() {
    init_tracing();
    let cluster = Cluster::with_producer(&[("linger.ms", "5")], &engaged_topics(&[PV], PARTITIONS));
    const MIN: i64 = 60_000;
    let now = now_ms();
    cluster
        .produce_events(&views(1, now - 120 * MIN, now - 90 * MIN))
        .await;
    let raw = RawConfig {
        bootstrap_servers: cluster.bootstrap.clone(),
        group_id: "loop-pacing".into(),
        input_topics: vec![PV.into()],
        listen: "127.0.0.1:0".into(),
        windows: vec!["1h".into()],
        max_dimension_values: 1000,
        // Far below what a round of hundreds of page rows costs, in any build.
        snapshot_interval: "1ms".into(),
        checkpoint_interval: "100ms".into(),
        idle_timeout: "10m".into(),
        shutdown_timeout: "20s".into(),
        statistics_interval: "1s".into(),
        kafka: BTreeMap::from([("session.timeout.ms".into(), "6000".into())]),
        ..RawConfig::default()
    };
    let sidecar = Running::start(raw, &DecoderConfig::default()).await;
    let accepted = |m: &support::Metrics| m.sum("engaged_events_accepted_total");
    let checkpoints = |m: &support::Metrics| {
        m.get("engaged_checkpoint_duration_seconds_count", &[])
            .unwrap_or(0.0)
    };
    let first = settle_within(sidecar.addr, "the first part applied", PATIENCE, |m| {
        accepted(m) == (PART + PARTITIONS as usize) as f64
    })
    .await;

    // Produced while rounds keep coming, each longer than the interval.
    cluster
        .produce_events(&views(2, now - 80 * MIN, now - 60 * MIN))
        .await;
    let second = settle_within(
        sidecar.addr,
        "the second part applied and checkpointed",
        PATIENCE,
        |m| {
            accepted(m) == 2.0 * (PART + PARTITIONS as usize) as f64
                && checkpoints(m) > checkpoints(&first)
        },
    )
    .await;
    let rounds = |m: &support::Metrics| m.get("engaged_snapshot_sequence", &[]).unwrap_or(0.0);
    assert!(
        rounds(&second) > rounds(&first),
        "snapshot rounds stopped: sequence {} then {}",
        rounds(&first),
        rounds(&second)
    );
    // The last round's page rows cover both parts and the first clocks (the second
    // ones are past the watermark they set).
    let page_views = second.sum("engaged_web_page_views_by_page");
    assert_eq!(
        page_views,
        (2 * PART + PARTITIONS as usize) as f64,
        "page views by page"
    );
    // Rounds take at most half of the loop's time (each is followed by as long
    // without one), measured by the sidecar's own clock over a stretch of the test's:
    // the starved loop spent nearly all of it on rounds. Slack: a round in progress
    // at either scrape.
    let loop_seconds = |m: &support::Metrics| {
        m.get("engaged_snapshot_loop_seconds_total", &[])
            .expect("engaged_snapshot_loop_seconds_total")
    };
    let (before, from) = (scrape(sidecar.addr).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, wall) = (scrape(sidecar.addr).await, from.elapsed().as_secs_f64());
    let spent = loop_seconds(&after) - loop_seconds(&before);
    let rounds = rounds(&after) - rounds(&before);
    eprintln!("{rounds} rounds took {spent:.3} s of {wall:.3} s");
    assert!(rounds > 0.0, "no round in {wall:.1} s");
    assert!(
        spent <= 0.6 * wall,
        "{rounds} rounds took {spent:.3} s of {wall:.3} s: more than half of the loop's time"
    );
    sidecar.stop().await.expect("clean stop");
}
