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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use engaged::decode::encode;
use engaged::demo::generator::{Generator, GeneratorConfig, partition_key, topic_of};
use engaged::event::{
    EmailEvent, EmailEventType, Event, Millis, PageView, Purchase, PurchaseType, SurveyKind,
    SurveyResponse,
};
use engaged::sink::decode_snapshot_record;
use engaged::snapshot::WindowSnapshot;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

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

// ---------------------------------------------------------------------------
// Mock cluster

#[allow(unsafe_code)]
fn no_initial_rebalance_delay(producer: &FutureProducer) {
    // SAFETY: the producer owns the mock cluster; this only sets a mock option.
    unsafe {
        let mc = rdkafka_sys::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
        assert!(!mc.is_null());
        rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, 0);
    }
}

/// A mock cluster, owned by the producer that feeds it.
struct Cluster {
    producer: FutureProducer,
    bootstrap: String,
}

impl Cluster {
    fn new() -> Cluster {
        let producer: FutureProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("linger.ms", "5")
            .create()
            .expect("mock cluster");
        let bootstrap = {
            let mock = producer.client().mock_cluster().expect("mock cluster");
            for t in TOPICS {
                mock.create_topic(t, PARTITIONS, 1).unwrap();
            }
            for t in [SNAPSHOTS, DEAD_LETTERS, "engagement.checkpoints"] {
                mock.create_topic(t, 1, 1).unwrap();
            }
            mock.bootstrap_servers()
        };
        no_initial_rebalance_delay(&producer);
        Cluster {
            producer,
            bootstrap,
        }
    }

    async fn produce(&self, records: &[(i32, Event)]) {
        let mut pending = vec![];
        for (p, e) in records {
            let payload = encode::single_object(e);
            let record = FutureRecord::to(topic_of(e))
                .partition(*p)
                .key(partition_key(e))
                .payload(&payload);
            pending.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
        }
        for d in pending {
            d.await.unwrap().unwrap();
        }
        self.producer.flush(Duration::from_secs(10)).unwrap();
    }
}

/// Co-partitioning (SPEC §1): the partition is a hash of the customer (or visitor) key,
/// the same function on every input topic.
fn partition_of(key: &str) -> i32 {
    (key.bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
        % PARTITIONS as u32) as i32
}

fn routed(events: Vec<Event>) -> Vec<(i32, Event)> {
    events
        .into_iter()
        .map(|e| (partition_of(partition_key(&e)), e))
        .collect()
}

/// One event at `t` in every partition of every input topic: afterwards every
/// partition watermark is `t - allowed_lateness`. Its customer `clock-P` lives in
/// partition P of every topic, so co-partitioning holds for it too.
fn clocks(tag: &str, t: Millis) -> Vec<(i32, Event)> {
    let mut out = vec![];
    for p in 0..PARTITIONS {
        let id = |family: &str| format!("clock-{tag}-{family}-{p}");
        let customer = format!("clock-{p}");
        out.push((
            p,
            Event::PageView(PageView {
                event_id: id("pv"),
                event_time: t,
                visitor_id: customer.clone(),
                customer_id: None,
                site: "shop.example".into(),
                page: "/".into(),
                referrer: None,
                channel: None,
            }),
        ));
        out.push((
            p,
            Event::Email(EmailEvent {
                event_id: id("email"),
                event_time: t,
                customer_id: customer.clone(),
                campaign_id: "clock".into(),
                message_id: id("msg"),
                kind: EmailEventType::Sent,
                url: None,
            }),
        ));
        out.push((
            p,
            Event::Purchase(Purchase {
                event_id: id("purchase"),
                event_time: t,
                customer_id: customer.clone(),
                order_id: id("order"),
                kind: PurchaseType::Refund,
                amount_minor: 0,
                currency: "EUR".into(),
                cost_minor: None,
                items: 0,
                campaign_id: None,
            }),
        ));
        out.push((
            p,
            Event::Survey(SurveyResponse {
                event_id: id("survey"),
                event_time: t,
                customer_id: None,
                survey_id: "clock".into(),
                kind: SurveyKind::Nps,
                score: 9,
                comment: None,
            }),
        ));
    }
    out
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
    let one = routed(g.advance_to(t1));
    let mut two = routed(g.advance_to(t2));
    two.extend(clocks("two", t2));
    let mut three = routed(g.advance_to(end));
    three.extend(clocks("end", end));
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

/// An `engaged run` child process, killed on drop.
struct Engaged {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Engaged {
    fn start(name: &str, bootstrap: &str, group: &str, dir: &Path) -> Engaged {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.join(format!("{name}.toml"));
        // With a clock event closing every phase, every partition ends a phase at the
        // same watermark: idleness is not needed to reach it. `idle_timeout` is longer
        // than the test, so that no input is ever idle: after a pause longer than
        // `idle_timeout`, the first input of a task to wake up moves the task's closing
        // watermark alone, and where sessions close then depends on which topic the
        // consumer happens to fetch first (see docs/operations.md, "Guarantees").
        std::fs::write(
            &config,
            format!(
                "bootstrap_servers = \"{bootstrap}\"\n\
                 group_id = \"{group}\"\n\
                 listen = \"{addr}\"\n\
                 windows = [\"1h\", \"24h\", \"7d\"]\n\
                 snapshot_interval = \"400ms\"\n\
                 checkpoint_interval = \"500ms\"\n\
                 idle_timeout = \"10m\"\n\
                 statistics_interval = \"1s\"\n\
                 shutdown_timeout = \"20s\"\n\
                 [kafka_consumer]\n\
                 \"session.timeout.ms\" = \"6000\"\n\
                 \"heartbeat.interval.ms\" = \"500\"\n"
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engaged"));
        // engaged reads `ENGAGED_*` variables as configuration: only the file counts here.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ENGAGED_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Engaged {
            name: name.to_string(),
            child,
            addr,
            log,
        }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    fn metrics(&mut self) -> Option<String> {
        if let Ok(Some(s)) = self.child.try_wait() {
            panic!("{} exited early with {s}:\n{}", self.name, self.log_tail());
        }
        self.get("/metrics").map(|(_, body)| body)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        log[log.len().saturating_sub(4000)..].to_string()
    }

    /// `kill -TERM` (graceful shutdown, SPEC §5).
    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM {}", self.name);
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Engaged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `KEEP_ENGAGED_LOGS=DIR` keeps the logs.
        if let Some(keep) = std::env::var_os("KEEP_ENGAGED_LOGS") {
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(
                &self.log,
                Path::new(&keep).join(format!("{}.log", self.name)),
            );
        }
        if std::thread::panicking() {
            eprintln!("--- {} log tail:\n{}", self.name, self.log_tail());
        }
    }
}

// ---------------------------------------------------------------------------
// /metrics

/// The windowed series (`name{labels}` → value): state-derived numbers, not
/// process-cumulative counters.
fn windowed(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            [
                "engaged_web_",
                "engaged_email_",
                "engaged_commerce_",
                "engaged_survey_",
                "engaged_customers_",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        // The duration histogram counts since the process started.
        .filter(|l| !l.starts_with("engaged_web_session_duration_seconds_"))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Whether a family is a count or a sum (a numerator or a denominator), which
/// instances add up; ratios, averages, percentiles and scores do not.
fn additive(series: &str) -> bool {
    let name = series.split('{').next().unwrap_or(series);
    let name = ["_by_site", "_by_channel", "_by_campaign"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    !(name.ends_with("_ratio")
        || name.contains("_avg_")
        || name.contains("_p50_")
        || name.contains("_p90_")
        || [
            "engaged_commerce_average_order_value_minor",
            "engaged_commerce_orders_per_customer",
            "engaged_commerce_profit_per_customer_minor",
            "engaged_survey_nps",
            "engaged_survey_csat",
            "engaged_survey_ces",
        ]
        .contains(&name))
}

/// The additive windowed series, summed over instances (a missing series counts 0).
fn summed<'a>(
    instances: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for m in instances {
        for (k, v) in m.iter().filter(|(k, _)| additive(k)) {
            *out.entry(k.clone()).or_default() += v.parse::<f64>().unwrap();
        }
    }
    out
}

fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Waits until every instance is at `watermark` (and, if given, owns `partitions`
/// topic-partitions) and its numbers stop changing; returns its windowed series.
fn settled(
    instances: &mut [&mut Engaged],
    watermark: f64,
    partitions: Option<f64>,
) -> Vec<BTreeMap<String, String>> {
    let deadline = Instant::now() + PATIENCE;
    let mut last: Vec<Option<BTreeMap<String, String>>> = vec![None; instances.len()];
    loop {
        std::thread::sleep(Duration::from_millis(600));
        let mut done = true;
        let mut state = vec![];
        for (e, last) in instances.iter_mut().zip(last.iter_mut()) {
            let Some(text) = e.metrics() else {
                done = false;
                continue;
            };
            let w = value(&text, "engaged_watermark_timestamp_seconds");
            let assigned = value(&text, "engaged_assigned_partitions");
            state.push(format!(
                "{}: watermark {w:?}, assigned {assigned:?}",
                e.name
            ));
            let at = w.is_some_and(|w| (w - watermark).abs() < 1e-3)
                && partitions.is_none_or(|n| assigned == Some(n));
            let now = windowed(&text);
            done &= at && !now.is_empty() && last.as_ref() == Some(&now);
            *last = Some(now);
        }
        if done {
            return last.into_iter().map(Option::unwrap).collect();
        }
        assert!(
            Instant::now() < deadline,
            "not settled at watermark {watermark}: {state:?}"
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

fn restores(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("restored from checkpoints") && !l.contains("restored=0"))
        .map(String::from)
        .collect()
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
    let reference = Cluster::new();
    let cluster = Cluster::new();
    let r = Engaged::start("reference", &reference.bootstrap, GROUP, dir.path());
    let mut a = Engaged::start("a", &cluster.bootstrap, GROUP, dir.path());

    // Phase 1: A alone.
    tokio::join!(reference.produce(&p.one), cluster.produce(&p.one));
    let n1 = p.one.len() as f64;
    let a = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let consumed = a
                .metrics()
                .map(|t| sum_of(&t, "engaged_events_consumed_total"));
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
    let b = Engaged::start("b", &cluster.bootstrap, GROUP, dir.path());
    tokio::join!(reference.produce(&p.two), cluster.produce(&p.two));
    let w2 = p.two_watermark;
    let (r, a, b, want, got) = tokio::task::spawn_blocking(move || {
        let (mut r, mut a, mut b) = (r, a, b);
        let want = settled(&mut [&mut r], w2, None).remove(0);
        eprintln!(
            "{:?}: the reference settled after phase 2",
            started.elapsed()
        );
        let half = f64::from(PARTITIONS * TOPICS.len() as i32 / 2);
        let got = settled(&mut [&mut a, &mut b], w2, Some(half));
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
        // A few snapshot rounds of each instance.
        std::thread::sleep(Duration::from_millis(1500));
        (
            read_snapshots(&bootstrap, Offset::Offset(from)),
            read_snapshots(&bootstrap, Offset::Beginning),
        )
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
        !restores(&b.log()).is_empty(),
        "B did not restore A's checkpoints when it joined:\n{}",
        b.log_tail()
    );

    // Phase 3: A leaves (SIGTERM) while the phase is produced; B takes every task.
    let (first, rest) = p.three.split_at(p.three.len() / 2);
    let leave = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.sigterm();
    };
    tokio::join!(reference.produce(first), cluster.produce(first), leave);
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
    tokio::join!(reference.produce(rest), cluster.produce(rest));
    let wend = p.final_watermark;
    let (want, got, b) = tokio::task::spawn_blocking(move || {
        let (mut r, mut b) = (r, b);
        let want = settled(&mut [&mut r], wend, None).remove(0);
        let all = f64::from(PARTITIONS * TOPICS.len() as i32);
        let got = settled(&mut [&mut b], wend, Some(all)).remove(0);
        (want, got, b)
    })
    .await
    .unwrap();
    eprintln!("{:?}: B settled after phase 3", started.elapsed());
    problems
        .extend(dead_letter_problems(&reference, &cluster, "at the end", &mut dead_lettered).await);
    assert_no_differences(&compare_exact("final", &want, &got), want.len());
    assert!(want.len() > 100, "compared only {} series", want.len());
    let b_restores = restores(&b.log());
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

fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
