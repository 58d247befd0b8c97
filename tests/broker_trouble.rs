//! Broker trouble, against librdkafka's mock cluster with fault injection: while one
//! `engaged run` process consumes a generated stream, the (single) broker goes down
//! for a few seconds, and later Produce, Fetch and OffsetCommit requests fail with
//! transient errors. engaged must say so on `/readyz` (not ready during the outage),
//! become ready again, resume, and end with exactly the numbers of a run that saw
//! no trouble: every windowed series, and the same accepted and rejected counts (no
//! record lost, none consumed twice), with `consumed = accepted + Σ rejected`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use engaged::decode::encode;
use engaged::demo::generator::{Generator, GeneratorConfig, partition_key, topic_of};
use engaged::event::{EmailEvent, EmailEventType, Event, Millis, PageView, Purchase, PurchaseType};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const PARTITIONS: i32 = 2;
const TOPICS: [&str; 3] = ["pageviews", "emails", "purchases"];
const GROUP: &str = "engaged-trouble";
const MIN: Millis = 60_000;
const HOUR: Millis = 60 * MIN;
/// Default `allowed_lateness` (SPEC §2).
const LATENESS: Millis = 5 * MIN;
/// How long the broker is down.
const OUTAGE: Duration = Duration::from_secs(4);
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Records

/// One record to produce: where, and what bytes.
#[derive(Clone)]
struct Rec {
    topic: &'static str,
    partition: i32,
    key: String,
    payload: Vec<u8>,
}

/// Co-partitioning (SPEC §1): the same hash of the customer (or visitor) key on every topic.
fn partition_of(key: &str) -> i32 {
    (key.bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
        % PARTITIONS as u32) as i32
}

fn rec(e: &Event, partition: i32) -> Rec {
    Rec {
        topic: topic_of(e),
        partition,
        key: partition_key(e).to_string(),
        payload: encode::single_object(e),
    }
}

/// Generated events (no surveys: three input topics keep the test small), with a
/// producer retry (the same record again) every 150 records and an undecodable
/// record every 400, so that rejections are part of the accounting.
fn records(events: &[Event]) -> Vec<Rec> {
    let mut out = vec![];
    for (i, e) in events
        .iter()
        .filter(|e| TOPICS.contains(&topic_of(e)))
        .enumerate()
    {
        let r = rec(e, partition_of(partition_key(e)));
        out.push(r.clone());
        if i % 150 == 75 {
            out.push(r.clone());
        }
        if i % 400 == 200 {
            out.push(Rec {
                payload: b"\x00\x00\x00\x00not avro at all".to_vec(),
                ..r
            });
        }
    }
    out
}

/// One event at `t` in every partition of every input topic, so that every partition
/// ends at the same watermark, `t - allowed_lateness`, without waiting for idleness.
fn clocks(t: Millis) -> Vec<Rec> {
    let mut out = vec![];
    for p in 0..PARTITIONS {
        let customer = format!("clock-{p}");
        let id = |family: &str| format!("clock-{family}-{p}");
        for e in [
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
            Event::Email(EmailEvent {
                event_id: id("email"),
                event_time: t,
                customer_id: customer.clone(),
                campaign_id: "clock".into(),
                message_id: id("msg"),
                kind: EmailEventType::Sent,
                url: None,
            }),
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
        ] {
            out.push(rec(&e, p));
        }
    }
    out
}

/// The stream in three batches, and the watermark it ends at (seconds).
fn batches() -> ([Vec<Rec>; 3], f64) {
    let now = chrono::Utc::now().timestamp_millis();
    let end = (now - HOUR).div_euclid(MIN) * MIN;
    let start = end - 2 * 24 * HOUR;
    let mut g = Generator::new(GeneratorConfig {
        seed: 23,
        start,
        customers: 250,
        visitors_per_hour: 60.0,
        ..GeneratorConfig::default()
    });
    let one = records(&g.advance_to(start + 16 * HOUR));
    let two = records(&g.advance_to(start + 32 * HOUR));
    let mut three = records(&g.advance_to(end));
    three.extend(clocks(end));
    ([one, two, three], (end - LATENESS) as f64 / 1000.0)
}

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

/// A one-broker mock cluster, owned by the (idempotent: no reordering, no duplicates
/// while it retries through an outage) producer that feeds it.
struct Cluster {
    producer: FutureProducer,
    bootstrap: String,
}

impl Cluster {
    fn new() -> Cluster {
        let producer: FutureProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "120000")
            .create()
            .expect("mock cluster");
        let bootstrap = {
            let mock = producer.client().mock_cluster().expect("mock cluster");
            for t in TOPICS {
                mock.create_topic(t, PARTITIONS, 1).unwrap();
            }
            for t in [
                "engagement.snapshots",
                "engagement.dlq",
                "engagement.checkpoints",
            ] {
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

    async fn produce(&self, records: &[Rec]) {
        let mut pending = vec![];
        for r in records {
            let record = FutureRecord::to(r.topic)
                .partition(r.partition)
                .key(&r.key)
                .payload(&r.payload);
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
        self.producer.flush(Duration::from_secs(60)).unwrap();
    }

    fn broker_down(&self, down: bool) {
        let mock = self.producer.client().mock_cluster().unwrap();
        if down {
            mock.broker_down(-1).unwrap();
        } else {
            mock.broker_up(-1).unwrap();
        }
    }

    fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        let mock = self.producer.client().mock_cluster().unwrap();
        mock.request_errors(api, errors);
    }
}

// ---------------------------------------------------------------------------
// engaged

/// An `engaged run` child process, killed on drop.
struct Engaged {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

impl Engaged {
    fn start(name: &str, bootstrap: &str, dir: &Path) -> Engaged {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.join(format!("{name}.toml"));
        // `idle_timeout` (30 s) outlasts the injected trouble (a 4 s outage, request
        // errors): a partition that cannot be fetched for a moment is not idle, and must
        // not let its task's closing watermark jump ahead (docs/operations.md,
        // "Guarantees"). engaged must not stall longer than that on its own. The session timeout outlasts it too (as
        // librdkafka's default of 45 s does), so the outage does not cost the group
        // membership; reconnects back off for at most 1 s.
        let topics = TOPICS.map(|t| format!("\"{t}\"")).join(", ");
        std::fs::write(
            &config,
            format!(
                "bootstrap_servers = \"{bootstrap}\"\n\
                 group_id = \"{GROUP}\"\n\
                 input_topics = [{topics}]\n\
                 listen = \"{addr}\"\n\
                 windows = [\"1h\", \"24h\", \"7d\"]\n\
                 snapshot_interval = \"300ms\"\n\
                 checkpoint_interval = \"500ms\"\n\
                 idle_timeout = \"30s\"\n\
                 statistics_interval = \"1s\"\n\
                 shutdown_timeout = \"20s\"\n\
                 [kafka]\n\
                 \"reconnect.backoff.max.ms\" = \"1000\"\n\
                 [kafka_consumer]\n\
                 \"session.timeout.ms\" = \"30000\"\n\
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

    /// `/metrics`, failing the test if the process has exited.
    fn metrics(&mut self) -> Option<String> {
        if let Ok(Some(s)) = self.child.try_wait() {
            panic!("{} exited with {s}:\n{}", self.name, self.log_tail());
        }
        http_get(self.addr, "/metrics").map(|(_, body)| body)
    }

    fn ready(&self) -> Option<(u16, String)> {
        http_get(self.addr, "/readyz")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log[log.len().saturating_sub(5000)..].to_string()
    }

    fn sigterm_and_wait(&mut self, timeout: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM {}", self.name);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?} of SIGTERM:\n{}",
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

/// The windowed series (`name{labels}` → value).
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
        .filter(|l| !l.starts_with("engaged_web_session_duration_seconds_"))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Every series of the family `name` (`name{labels}` → value).
fn family(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn sum(text: &str, name: &str) -> f64 {
    family(text, name).values().sum()
}

fn value(text: &str, name: &str) -> Option<f64> {
    family(text, name).get(name).copied()
}

/// Waits until `e` consumed `records` records, is at `watermark` (if given) and its
/// numbers stopped changing; returns the last `/metrics` page.
fn settled(e: &mut Engaged, records: usize, watermark: Option<f64>) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut last: Option<BTreeMap<String, String>> = None;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Some(text) = e.metrics() else { continue };
        let consumed = sum(&text, "engaged_events_consumed_total");
        let w = value(&text, "engaged_watermark_timestamp_seconds");
        let at = watermark.is_none_or(|want| w.is_some_and(|w| (w - want).abs() < 1e-3));
        let now = windowed(&text);
        if consumed >= records as f64 && at && last.as_ref() == Some(&now) {
            return text;
        }
        last = Some(now);
        assert!(
            Instant::now() < deadline,
            "{} did not settle: consumed {consumed} of {records}, watermark {w:?} (want {watermark:?})",
            e.name
        );
    }
}

/// A `/readyz` answer (status, body) that differs from the previous one, and when.
type Seen = (Instant, Option<u16>, String);

/// Polls `/readyz` every 20 ms in a thread until stopped; returns what it saw.
struct ReadyWatch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Seen>>,
}

impl ReadyWatch {
    fn start(addr: SocketAddr) -> ReadyWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen: Vec<Seen> = vec![];
            while !flag.load(Ordering::Relaxed) {
                let r = http_get(addr, "/readyz");
                let (status, body) = match r {
                    Some((s, b)) => (Some(s), b.trim().to_string()),
                    None => (None, String::new()),
                };
                // Keep the changes only.
                if seen
                    .last()
                    .is_none_or(|(_, s, b)| *s != status || *b != body)
                {
                    seen.push((Instant::now(), status, body));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        ReadyWatch { stop, handle }
    }

    fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_and_request_errors_lose_and_double_count_nothing() {
    let started = Instant::now();
    let ([one, two, three], final_watermark) = batches();
    let total = one.len() + two.len() + three.len();
    assert!(total > 3_000, "{total} records");
    let dir = tempfile::tempdir().unwrap();

    // Reference: the same records, no trouble.
    let reference = Cluster::new();
    let clean = Engaged::start("clean", &reference.bootstrap, dir.path());
    let reference_run = async {
        for batch in [&one, &two, &three] {
            reference.produce(batch).await;
        }
        blocking(move || {
            let mut clean = clean;
            let text = settled(&mut clean, total, Some(final_watermark));
            (clean, text)
        })
        .await
        .unwrap()
    };

    let trouble_run = async {
        let cluster = Cluster::new();
        let e = Engaged::start("troubled", &cluster.bootstrap, dir.path());
        cluster.produce(&one).await;
        let n1 = one.len();
        let mut e = blocking(move || {
            let mut e = e;
            settled(&mut e, n1, None);
            let deadline = Instant::now() + PATIENCE;
            while e.ready().map(|r| r.0) != Some(200) {
                assert!(Instant::now() < deadline, "never ready: {:?}", e.ready());
                std::thread::sleep(Duration::from_millis(50));
            }
            e
        })
        .await
        .unwrap();
        eprintln!("{:?}: batch 1 consumed, ready", started.elapsed());

        // Trouble 1: the broker goes down while batch 2 is being produced.
        let watch = ReadyWatch::start(e.addr);
        let outage = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            cluster.broker_down(true);
            let down_at = Instant::now();
            eprintln!(
                "{:?}: broker down at {}",
                started.elapsed(),
                chrono::Utc::now()
            );
            tokio::time::sleep(OUTAGE).await;
            cluster.broker_down(false);
            eprintln!(
                "{:?}: broker up at {}",
                started.elapsed(),
                chrono::Utc::now()
            );
            (down_at, Instant::now())
        };
        let ((), outage_window) = tokio::join!(cluster.produce(&two), outage);
        let n2 = n1 + two.len();
        let (mut e, text) = blocking(move || {
            let text = settled(&mut e, n2, None);
            // Ready again: a reconnect and a stale error or two may take a moment.
            let deadline = Instant::now() + Duration::from_secs(20);
            while e.ready().map(|r| r.0) != Some(200) {
                assert!(
                    Instant::now() < deadline,
                    "not ready again: {:?}",
                    e.ready()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(100));
            (e, text)
        })
        .await
        .unwrap();
        let outage_seen = watch.finish();
        eprintln!(
            "{:?}: batch 2 consumed after the outage; /readyz: {}",
            started.elapsed(),
            timeline(&outage_seen, outage_window.0)
        );
        let consumed_after_outage = sum(&text, "engaged_events_consumed_total");

        // Trouble 2: transient errors on Produce (snapshots, dead letters, checkpoints),
        // Fetch and OffsetCommit requests, while batch 3 is consumed.
        let watch = ReadyWatch::start(e.addr);
        use RDKafkaRespErr::*;
        cluster.request_errors(
            RDKafkaApiKey::Fetch,
            &[
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RD_KAFKA_RESP_ERR__TRANSPORT,
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            ],
        );
        cluster.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[
                RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            ],
        );
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[
                RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RD_KAFKA_RESP_ERR__TRANSPORT,
                RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            ],
        );
        // Let engaged's own requests meet the errors before the test produces again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.produce(&three).await;
        let (mut e, text) = blocking(move || {
            let text = settled(&mut e, total, Some(final_watermark));
            (e, text)
        })
        .await
        .unwrap();
        let errors_seen = watch.finish();
        eprintln!(
            "{:?}: batch 3 consumed after request errors; /readyz: {}",
            started.elapsed(),
            timeline(&errors_seen, errors_seen[0].0)
        );
        let ready_at_end = e.ready();
        let status = blocking(move || {
            let s = e.sigterm_and_wait(Duration::from_secs(30));
            (s, e)
        })
        .await
        .unwrap();
        (
            cluster,
            text,
            outage_seen,
            outage_window,
            consumed_after_outage,
            n1,
            ready_at_end,
            status,
        )
    };

    let (
        (_clean, want),
        (
            _cluster,
            got,
            outage_seen,
            (down_at, up_at),
            consumed_after_outage,
            n1,
            ready_at_end,
            (status, e),
        ),
    ) = tokio::join!(reference_run, trouble_run);
    eprintln!("{:?}: both runs settled", started.elapsed());

    // /readyz said "not ready" while the broker was down (SPEC §4: ready = assigned,
    // restored, watermark advancing), and "ready" again afterwards. Checked last, so
    // that every other check runs too.
    let mut problems = vec![];
    let not_ready_during_outage = outage_seen.iter().enumerate().any(|(i, (t, s, _))| {
        let until = outage_seen.get(i + 1).map(|(t, _, _)| *t);
        *s != Some(200) && *t <= up_at && until.is_none_or(|u| u > down_at)
    });
    if !not_ready_during_outage {
        problems.push(format!(
            "/readyz answered 200 throughout the {:?} the broker was down; its answers \
             (ms relative to broker_down): {}",
            up_at - down_at,
            timeline(&outage_seen, down_at)
        ));
    }
    assert_eq!(
        outage_seen.last().map(|(_, s, _)| *s),
        Some(Some(200)),
        "/readyz not ready again after the outage: {}",
        timeline(&outage_seen, down_at)
    );
    assert_eq!(ready_at_end.map(|r| r.0), Some(200), "/readyz at the end");
    // Processing resumed after the outage.
    assert!(consumed_after_outage > n1 as f64);

    // Nothing lost, nothing counted twice: every windowed series is the reference's.
    let (want_w, got_w) = (windowed(&want), windowed(&got));
    let differences: Vec<String> = want_w
        .iter()
        .filter(|(k, v)| got_w.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: clean {v}, troubled {:?}", got_w.get(k)))
        .chain(
            got_w
                .keys()
                .filter(|k| !want_w.contains_key(*k))
                .map(|k| format!("{k}: only in the troubled run")),
        )
        .collect();
    assert!(
        differences.is_empty(),
        "{} differences, e.g. {:#?}",
        differences.len(),
        &differences[..differences.len().min(20)]
    );
    assert!(want_w.len() > 100, "compared {} series", want_w.len());

    // Accounting: every record consumed once, and judged as in the clean run.
    for (run, text) in [("clean", &want), ("troubled", &got)] {
        let consumed = sum(text, "engaged_events_consumed_total");
        let accepted = sum(text, "engaged_events_accepted_total");
        let rejected = sum(text, "engaged_events_rejected_total");
        assert_eq!(
            consumed, total as f64,
            "{run}: consumed {consumed} records, {total} were produced"
        );
        assert_eq!(
            consumed,
            accepted + rejected,
            "{run}: consumed {consumed} != accepted {accepted} + rejected {rejected}"
        );
    }
    for f in [
        "engaged_events_consumed_total",
        "engaged_events_accepted_total",
        "engaged_events_rejected_total",
        "engaged_dead_letter_records_total",
    ] {
        assert_eq!(family(&got, f), family(&want, f), "{f}");
    }
    assert!(
        sum(&want, "engaged_events_rejected_total") > 10.0,
        "the stream has rejections"
    );
    // A graceful stop still works after the trouble.
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        e.log_tail()
    );
    eprintln!(
        "{} series and the accounting equal, {:?} in all",
        want_w.len(),
        started.elapsed()
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `/readyz` answers as `[+ms status body, …]`, relative to `t0`.
fn timeline(seen: &[Seen], t0: Instant) -> String {
    let ms = |t: Instant| {
        if t >= t0 {
            (t - t0).as_millis() as i64
        } else {
            -((t0 - t).as_millis() as i64)
        }
    };
    let items: Vec<String> = seen
        .iter()
        .map(|(t, s, b)| format!("{:+}ms {s:?} {b:?}", ms(*t)))
        .collect();
    format!("[{}]", items.join(", "))
}
