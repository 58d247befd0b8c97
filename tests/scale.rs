//! Scale-out (SPEC §5), against librdkafka's mock cluster: two `engaged run`
//! processes in one consumer group split a co-partitioned stream (4 partitions per
//! input topic), hand tasks over through the checkpoint topic, and together publish
//! exactly what one instance computes from the same data.
//!
//! The generated stream is produced in three phases, to the cluster under test and,
//! identically, to a second mock cluster with a single reference instance:
//!
//! 1. instance A alone;
//! 2. instance B joins mid-stream (a rebalance: half of the tasks move to B, which
//!    restores them from A's checkpoints). Once this phase is consumed, A + B summed
//!    must equal the reference for every windowed count (numerators and denominators),
//!    and their snapshot rows must cover disjoint partitions;
//! 3. A leaves with SIGTERM while the phase is being produced; B takes every task
//!    (restoring A's) and ends with every windowed series equal to the reference.
//!
//! Each phase ends with a "clock" event at one event time in every partition of every
//! input topic, so every partition — and every instance — ends the phase at the same
//! watermark, whatever partitions it owns.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use engaged::demo::generator::{Generator, GeneratorConfig};
use engaged::event::{Event, Millis};
use engaged::sink::decode_snapshot_record;
use engaged::snapshot::WindowSnapshot;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use support::{
    Cluster, Engaged, checkpoint_restores, clock_events, engaged_topics, family, routed, sum,
    summed, value, windowed,
};

const PARTITIONS: i32 = 4;
const TOPICS: [&str; 4] = ["pageviews", "emails", "purchases", "surveys"];
const SNAPSHOTS: &str = "engagement.snapshots";
const DEAD_LETTERS: &str = "engagement.dlq";
const GROUP: &str = "engaged-scale";
const MIN: Millis = 60_000;
const HOUR: Millis = 60 * MIN;
/// Default `allowed_lateness` (SPEC §2).
const LATENESS: Millis = 5 * MIN;
/// Overall limit for anything the test waits for.
const PATIENCE: Duration = Duration::from_secs(60);

/// A mock cluster with the input topics and engaged's output topics, owned by the
/// producer that feeds it.
fn mock_cluster() -> Cluster {
    Cluster::with_producer(&[("linger.ms", "5")], &engaged_topics(&TOPICS, PARTITIONS))
}

/// The stream in three phases, and the watermark each phase ends at (seconds).
struct Phases {
    one: Vec<(i32, Event)>,
    two: Vec<(i32, Event)>,
    three: Vec<(i32, Event)>,
    two_watermark: f64,
    final_watermark: f64,
}

fn phases() -> Phases {
    let now = chrono::Utc::now().timestamp_millis();
    let end = (now - HOUR).div_euclid(MIN) * MIN;
    let start = end - 3 * 24 * HOUR;
    let mut g = Generator::new(GeneratorConfig {
        seed: 11,
        start,
        customers: 250,
        visitors_per_hour: 45.0,
        ..GeneratorConfig::default()
    });
    let t1 = start + 30 * HOUR;
    let t2 = start + 55 * HOUR;
    let one = routed(g.advance_to(t1), PARTITIONS);
    let mut two = routed(g.advance_to(t2), PARTITIONS);
    two.extend(clock_events("two", t2, PARTITIONS));
    let mut three = routed(g.advance_to(end), PARTITIONS);
    three.extend(clock_events("end", end, PARTITIONS));
    let seconds = |t: Millis| (t - LATENESS) as f64 / 1000.0;
    Phases {
        one,
        two,
        three,
        two_watermark: seconds(t2),
        final_watermark: seconds(end),
    }
}

// ---------------------------------------------------------------------------
// engaged processes

/// The configuration of an instance of `group` (`listen` aside).
fn config(bootstrap: &str, group: &str) -> String {
    // With a clock event closing every phase, every partition ends a phase at the
    // same watermark: idleness is not needed to reach it. `idle_timeout` is longer
    // than the test, so that no input is ever idle: after a pause longer than
    // `idle_timeout`, the first input of a task to wake up moves the task's closing
    // watermark alone, and where sessions close then depends on which topic the
    // consumer happens to fetch first (see docs/operations.md, "Guarantees").
    // Top-N is per instance (a page can be named by one instance and `other` on
    // another, docs/metrics.md): `max_dimension_values` names every value here, so
    // that every row adds up. Naming every page makes a round a few thousand rows:
    // at 400 ms the debug builds of three instances on two cores spent their time
    // snapshotting and fell behind the test's patience (seen with this session's page
    // rows), so rounds come every second.
    format!(
        "bootstrap_servers = \"{bootstrap}\"\n\
         group_id = \"{group}\"\n\
         windows = [\"1h\", \"24h\", \"7d\"]\n\
         max_dimension_values = 1000\n\
         snapshot_interval = \"1s\"\n\
         checkpoint_interval = \"500ms\"\n\
         idle_timeout = \"10m\"\n\
         statistics_interval = \"1s\"\n\
         shutdown_timeout = \"20s\"\n\
         [kafka_consumer]\n\
         \"session.timeout.ms\" = \"6000\"\n\
         \"heartbeat.interval.ms\" = \"500\"\n"
    )
}

// ---------------------------------------------------------------------------
// /metrics

/// Waits until every instance is at `watermark` (and, if given, owns `partitions`
/// topic-partitions), the instances together consumed at least `consumed` records,
/// and their numbers stop changing; returns their windowed series.
///
/// The watermark and two equal scrapes alone are no proof that every record was
/// applied: twice on this 2-core machine the reference "settled" at the phase's
/// watermark with most of its purchases missing (a partition not assigned yet
/// does not hold the instance watermark back), hence the count, and the
/// reference's partition count too.
fn settled(
    instances: &mut [&mut Engaged],
    watermark: f64,
    partitions: Option<f64>,
    consumed: f64,
) -> Vec<BTreeMap<String, String>> {
    let deadline = Instant::now() + PATIENCE;
    let mut last: Vec<Option<BTreeMap<String, String>>> = vec![None; instances.len()];
    loop {
        std::thread::sleep(Duration::from_millis(600));
        let mut done = true;
        let mut state = vec![];
        let mut consumed_now = 0.0;
        for (e, last) in instances.iter_mut().zip(last.iter_mut()) {
            let Some(text) = e.metrics() else {
                done = false;
                continue;
            };
            let w = value(&text, "engaged_watermark_timestamp_seconds");
            let assigned = value(&text, "engaged_assigned_partitions");
            consumed_now += sum(&text, "engaged_events_consumed_total");
            // Enough to tell a stalled consumer from a slow one when this fails.
            let behind: Vec<String> =
                family(&text, "engaged_partition_watermark_timestamp_seconds")
                    .into_iter()
                    .filter(|(_, v)| (v - watermark).abs() >= 1e-3)
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
            state.push(format!(
                "{}: watermark {w:?}, assigned {assigned:?}, consumed {}, paused {:?}, \
                 output in flight {:?}, lag {:?}, partitions behind {behind:?}",
                e.name,
                sum(&text, "engaged_events_consumed_total"),
                value(&text, "engaged_consumption_paused"),
                value(&text, "engaged_output_in_flight_records"),
                family(&text, "engaged_consumer_lag_messages"),
            ));
            let at = w.is_some_and(|w| (w - watermark).abs() < 1e-3)
                && partitions.is_none_or(|n| assigned == Some(n));
            let now = windowed(&text);
            done &= at && !now.is_empty() && last.as_ref() == Some(&now);
            *last = Some(now);
        }
        if done && consumed_now >= consumed {
            return last.into_iter().map(Option::unwrap).collect();
        }
        assert!(
            Instant::now() < deadline,
            "not settled at watermark {watermark} with {consumed_now} of {consumed} records consumed: {state:?}"
        );
    }
}

fn compare_exact(
    what: &str,
    want: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{what}: {k}: reference {v}, got {:?}", got.get(k)))
        .collect();
    out.extend(
        got.keys()
            .filter(|k| !want.contains_key(*k))
            .map(|k| format!("{what}: {k} only in the scaled-out run")),
    );
    out
}

fn compare_sums(
    what: &str,
    want: &BTreeMap<String, f64>,
    got: &BTreeMap<String, f64>,
) -> Vec<String> {
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (w, g) = (
                want.get(k).copied().unwrap_or(0.0),
                got.get(k).copied().unwrap_or(0.0),
            );
            ((w - g).abs() > 1e-9 * w.abs().max(1.0))
                .then(|| format!("{what}: {k}: reference {w}, A + B {g}"))
        })
        .collect()
}

fn assert_no_differences(differences: &[String], compared: usize) {
    assert!(
        differences.is_empty(),
        "{} differences (of {compared} series), e.g. {:#?}",
        differences.len(),
        &differences[..differences.len().min(25)]
    );
}

// ---------------------------------------------------------------------------
// Snapshot topic

/// Every snapshot row from `from` to the current end of the snapshot topic, with its offset.
fn read_snapshots(bootstrap: &str, from: Offset) -> Vec<(i64, WindowSnapshot)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "scale-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let (_, end) = c
        .fetch_watermarks(SNAPSHOTS, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(SNAPSHOTS, 0, from).unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rows = vec![];
    loop {
        assert!(Instant::now() < deadline, "reading {SNAPSHOTS} timed out");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let s = decode_snapshot_record(m.payload().unwrap_or_default()).unwrap();
                rows.push((m.offset(), s));
            }
            Some(Err(KafkaError::PartitionEOF(_)))
                if rows.last().is_none_or(|(o, _)| o + 1 >= end) =>
            {
                break;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => eprintln!("reading {SNAPSHOTS}: {e}"),
            None => {}
        }
    }
    rows
}

/// The end offset of partition 0 of `topic`.
fn end_offset(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .1
}

fn covered(s: &WindowSnapshot) -> BTreeSet<(String, i32)> {
    s.partitions
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect()
}

/// The stream has no undecodable, invalid, late or duplicated record: nothing may be
/// dead-lettered, also not a record that is consumed again after a rebalance. Returns
/// what went wrong (checked at the end, so that every other check runs too).
async fn dead_letter_problems(
    reference: &Cluster,
    cluster: &Cluster,
    when: &str,
    seen: &mut usize,
) -> Vec<String> {
    let (r, c) = (reference.bootstrap.clone(), cluster.bootstrap.clone());
    let (r, c) = tokio::task::spawn_blocking(move || (dead_letters(&r), dead_letters(&c)))
        .await
        .unwrap();
    assert!(
        r.is_empty(),
        "the reference dead-lettered records of a clean stream: {r:?}"
    );
    let total: usize = c.values().sum();
    if total == *seen {
        return vec![];
    }
    let new = total - *seen;
    *seen = total;
    vec![format!(
        "{when}: the scaled-out run dead-lettered {new} more records of a clean stream \
         ({total} in all; the reference: none); (reason, source topic/partition) → count \
         in all: {c:?}"
    )]
}

/// Dead letters by (reason, source topic/partition).
fn dead_letters(bootstrap: &str) -> BTreeMap<(String, String), usize> {
    let end = end_offset(bootstrap, DEAD_LETTERS);
    let mut out = BTreeMap::new();
    if end == 0 {
        return out;
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "scale-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(DEAD_LETTERS, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut read = 0;
    while read < end {
        assert!(
            Instant::now() < deadline,
            "reading {DEAD_LETTERS} timed out"
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            read = m.offset() + 1;
            let header = |k: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == k))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let key = (
                header("engaged.error.reason"),
                format!(
                    "{}/{}",
                    header("engaged.source.topic"),
                    header("engaged.source.partition")
                ),
            );
            *out.entry(key).or_default() += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sum_to_one_and_hand_over_through_checkpoints() {
    let started = Instant::now();
    let p = phases();
    let total = p.one.len() + p.two.len() + p.three.len();
    assert!(total > 5_000, "{total} events");
    eprintln!(
        "phases: {} + {} + {} events",
        p.one.len(),
        p.two.len(),
        p.three.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let reference = mock_cluster();
    let cluster = mock_cluster();
    let r = Engaged::start(
        "reference",
        dir.path(),
        &config(&reference.bootstrap, GROUP),
    );
    let mut a = Engaged::start("a", dir.path(), &config(&cluster.bootstrap, GROUP));

    // Phase 1: A alone.
    tokio::join!(
        reference.produce_events(&p.one),
        cluster.produce_events(&p.one)
    );
    let n1 = p.one.len() as f64;
    let a = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let consumed = a
                .metrics()
                .map(|t| sum(&t, "engaged_events_consumed_total"));
            if consumed == Some(n1) {
                return a;
            }
            assert!(Instant::now() < deadline, "A consumed {consumed:?} of {n1}");
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    eprintln!("{:?}: A consumed phase 1", started.elapsed());

    // Phase 2: B joins while the phase is produced.
    let b = Engaged::start("b", dir.path(), &config(&cluster.bootstrap, GROUP));
    tokio::join!(
        reference.produce_events(&p.two),
        cluster.produce_events(&p.two)
    );
    let w2 = p.two_watermark;
    let n2 = p.two.len();
    let (r, a, b, want, got) = tokio::task::spawn_blocking(move || {
        let (mut r, mut a, mut b) = (r, a, b);
        let n12 = (n1 as usize + n2) as f64;
        let all = f64::from(PARTITIONS * TOPICS.len() as i32);
        let want = settled(&mut [&mut r], w2, Some(all), n12).remove(0);
        eprintln!(
            "{:?}: the reference settled after phase 2",
            started.elapsed()
        );
        let half = f64::from(PARTITIONS * TOPICS.len() as i32 / 2);
        // Every record of phases 1 and 2 was consumed by A or B (some twice, around the rebalance).
        let got = settled(&mut [&mut a, &mut b], w2, Some(half), n12);
        (r, a, b, want, got)
    })
    .await
    .unwrap();
    eprintln!("{:?}: A and B settled after phase 2", started.elapsed());
    let mut dead_lettered = 0;
    let mut problems =
        dead_letter_problems(&reference, &cluster, "after phase 2", &mut dead_lettered).await;
    let want_sums = summed([&want]);
    let got_sums = summed(&got);
    assert_no_differences(
        &compare_sums("phase 2", &want_sums, &got_sums),
        want_sums.len(),
    );
    assert!(
        want_sums.len() > 100,
        "compared only {} series",
        want_sums.len()
    );
    // Each instance owns part of the numbers, not all of them.
    for (m, name) in got.iter().zip(["A", "B"]) {
        let own = summed([m]);
        let views = "engaged_web_page_views{window=\"24h\"}";
        assert!(
            own.get(views)
                .is_some_and(|v| *v > 0.0 && *v < want_sums[views]),
            "{name} has {:?} of {} 24h page views",
            own.get(views),
            want_sums[views]
        );
    }
    // Snapshot rows published while both run (after both settled): two instances,
    // disjoint partition sets (whole tasks), together every partition.
    let bootstrap = cluster.bootstrap.clone();
    let (steady, history) = tokio::task::spawn_blocking(move || {
        let from = end_offset(&bootstrap, SNAPSHOTS);
        // Rounds of each instance (they come less often than `snapshot_interval` where
        // a round takes longer than that: a debug build on two cores).
        let deadline = Instant::now() + PATIENCE;
        let steady = loop {
            std::thread::sleep(Duration::from_millis(500));
            let rows = read_snapshots(&bootstrap, Offset::Offset(from));
            let sets: BTreeSet<_> = rows.iter().map(|(_, s)| covered(s)).collect();
            if sets.len() >= 2 || Instant::now() > deadline {
                break rows;
            }
        };
        (steady, read_snapshots(&bootstrap, Offset::Beginning))
    })
    .await
    .unwrap();
    assert!(steady.len() > 10, "{} snapshot rows", steady.len());
    for (o, s) in &steady {
        assert!(
            (s.watermark as f64 / 1000.0 - w2).abs() < 1e-3,
            "snapshot row at offset {o} has watermark {} while both instances are at {w2}",
            s.watermark
        );
    }
    let sets: Vec<BTreeSet<(String, i32)>> = steady
        .iter()
        .map(|(_, s)| covered(s))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        sets.len(),
        2,
        "snapshot partition sets while A and B run: {sets:?}"
    );
    assert!(
        sets[0].is_disjoint(&sets[1]),
        "A's and B's snapshots overlap: {sets:?}"
    );
    let all: BTreeSet<(String, i32)> = TOPICS
        .iter()
        .flat_map(|t| (0..PARTITIONS).map(move |p| (t.to_string(), p)))
        .collect();
    assert_eq!(
        sets[0].union(&sets[1]).cloned().collect::<BTreeSet<_>>(),
        all
    );
    for s in &sets {
        let tasks: BTreeSet<i32> = s.iter().map(|(_, p)| *p).collect();
        assert_eq!(
            s.len(),
            tasks.len() * TOPICS.len(),
            "a task is split: {s:?}"
        );
    }
    // Every row names the partitions its numbers come from (SPEC §4), also during the
    // rebalance: a row that names none has no numbers.
    let unowned: Vec<String> = history
        .iter()
        .filter(|(_, s)| s.partitions.is_empty())
        .filter(|(_, s)| {
            s.page_views != 0
                || s.sessions != 0
                || s.emails_sent.is_some_and(|v| v != 0)
                || s.orders.is_some_and(|v| v != 0)
        })
        .map(|(o, s)| {
            format!(
                "offset {o}: {}/{}{} at watermark {}: partitions [], page_views {}, sessions {}, emails_sent {:?}, orders {:?}",
                s.window,
                s.dimension,
                s.dimension_value.as_deref().map(|v| format!("/{v}")).unwrap_or_default(),
                s.watermark,
                s.page_views,
                s.sessions,
                s.emails_sent,
                s.orders
            )
        })
        .collect();
    if !unowned.is_empty() {
        problems.push(format!(
            "{} of {} snapshot rows name no partitions but carry numbers, e.g. {:#?}",
            unowned.len(),
            history.len(),
            &unowned[..unowned.len().min(3)]
        ));
    }
    assert!(
        !checkpoint_restores(&b.log()).is_empty(),
        "B did not restore A's checkpoints when it joined:\n{}",
        b.log_tail()
    );

    // Phase 3: A leaves (SIGTERM) while the phase is produced; B takes every task.
    let (first, rest) = p.three.split_at(p.three.len() / 2);
    let leave = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.sigterm();
    };
    tokio::join!(
        reference.produce_events(first),
        cluster.produce_events(first),
        leave
    );
    let status = tokio::task::spawn_blocking(move || {
        let mut a = a;
        let s = a.wait_exit(Duration::from_secs(30));
        (s, a)
    })
    .await
    .unwrap();
    let (status, a) = status;
    assert!(
        status.success(),
        "A did not exit 0 on SIGTERM: {status}\n{}",
        a.log_tail()
    );
    tokio::join!(reference.produce_events(rest), cluster.produce_events(rest));
    let wend = p.final_watermark;
    let (want, got, b) = tokio::task::spawn_blocking(move || {
        let (mut r, mut b) = (r, b);
        let all = f64::from(PARTITIONS * TOPICS.len() as i32);
        let want = settled(&mut [&mut r], wend, Some(all), total as f64).remove(0);
        // B restored A's partitions from checkpoints: it consumed only part of the stream.
        let got = settled(&mut [&mut b], wend, Some(all), 0.0).remove(0);
        (want, got, b)
    })
    .await
    .unwrap();
    eprintln!("{:?}: B settled after phase 3", started.elapsed());
    problems
        .extend(dead_letter_problems(&reference, &cluster, "at the end", &mut dead_lettered).await);
    assert_no_differences(&compare_exact("final", &want, &got), want.len());
    assert!(want.len() > 100, "compared only {} series", want.len());
    let b_restores = checkpoint_restores(&b.log());
    assert!(
        b_restores.len() >= 2,
        "B restored from checkpoints {} time(s), expected on joining and when A left:\n{}",
        b_restores.len(),
        b.log_tail()
    );
    for l in b_restores {
        eprintln!("B: {l}");
    }
    eprintln!(
        "{} series equal, {:?} in all",
        want.len(),
        started.elapsed()
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
