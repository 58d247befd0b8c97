//! End-to-end throughput against a real Kafka-protocol broker, reported as ratios to a
//! reference measured in the same run on the same topics (shared machines are noisy).
//!
//! Run it with `scripts/throughput.sh`, which starts Tansu on a free loopback port and
//! sets `ENGAGED_BENCH_BOOTSTRAP` (and `ENGAGED_BENCH_TANSU`, the binary used to create
//! topics; without it topics are created with the Kafka admin API). Phases:
//!
//! 1. produce `ENGAGED_BENCH_EVENTS` (default 1,000,000) generated events of the four
//!    families, single-object encoded, into four co-partitioned topics of 4 partitions
//!    (partition = FNV-1a(partition key) % 4);
//! 2. reference: raw rdkafka `BaseConsumer` and `StreamConsumer` reading all 16
//!    partitions from the beginning to the end, touching every payload byte;
//! 3. engaged in-process (`Sidecar`), a fresh group per run, checkpoints effectively off
//!    (`1h`), at the default `10s`, and at a stressful `1s`;
//! 4. restore: engaged consumes one ORDER each of `ENGAGED_BENCH_CUSTOMERS` (default
//!    1,000,000) distinct customers, stops gracefully (final checkpoint), and a second
//!    sidecar in the same group restores the state; time to restored and to ready;
//! 5. checkpoints of a large state: `ENGAGED_BENCH_LARGE_PASSES` (default 4) ORDERs each
//!    of the same customers, consumed with checkpoints off (`1h`), `10s` and `2s`; the
//!    rate after the first pass (every round then serialises every customer);
//!    `ENGAGED_BENCH_LARGE_REPEATS` (default 1) runs of each, interleaved;
//! 6. only with `ENGAGED_BENCH_HOT_EVENTS` > 0: checkpoints of a resident state: one
//!    ORDER each of the same customers, then `ENGAGED_BENCH_HOT_EVENTS` ORDERs of the
//!    first `ENGAGED_BENCH_HOT_CUSTOMERS` (default a twentieth) of them, same
//!    configurations: the rate over the latter, when a checkpoint writes deltas of the
//!    few that change.
//!
//! Rates are measured from the first consumed record to the last (group joins on Tansu
//! take about half of `session.timeout.ms` and are reported separately as startup). The
//! engaged configurations run `ENGAGED_BENCH_REPEATS` times (default 3), interleaved
//! with raw runs; medians are reported. Every engaged run uses `snapshot_interval`
//! `ENGAGED_BENCH_SNAPSHOT_INTERVAL` (default `1s`) and the librdkafka consumer settings
//! in `ENGAGED_BENCH_CONSUMER` (`key=value,...`, e.g. `max.partition.fetch.bytes=65536`).
//! Prints a table and writes
//! `target/throughput.json`.

/// The allocator the `engaged` binary runs with (src/main.rs), so the figures are its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engaged::app::Sidecar;
use engaged::config::RawConfig;
use engaged::decode::{DecoderConfig, encode};
use engaged::demo::generator::{DEFAULT_START, Generator, GeneratorConfig, partition_key};
use engaged::event::{Event, Purchase, PurchaseType};
use engaged::telemetry::{CollectTotal, Telemetry};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const PARTITIONS: i32 = 4;
const FAMILIES: [&str; 4] = ["pageviews", "emails", "purchases", "surveys"];
/// Longest any phase may wait for records.
const PATIENCE: Duration = Duration::from_secs(300);
/// How often the in-process telemetry is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);

// ---------------------------------------------------------------------------------------
// Environment and topics

struct Env {
    bootstrap: String,
    tansu: Option<PathBuf>,
    tansu_pid: Option<u32>,
    /// Prefix of every topic and group of this run (several runs may share a broker).
    prefix: String,
}

fn env_usize(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a count")),
        Err(_) => default,
    }
}

impl Env {
    fn from_env() -> Env {
        let Ok(bootstrap) = std::env::var("ENGAGED_BENCH_BOOTSTRAP") else {
            eprintln!(
                "benches/throughput.rs needs a broker: run scripts/throughput.sh (it starts \
                 Tansu and sets ENGAGED_BENCH_BOOTSTRAP=127.0.0.1:PORT)"
            );
            std::process::exit(2);
        };
        let millis = chrono::Utc::now().timestamp_millis();
        Env {
            bootstrap,
            tansu: std::env::var_os("ENGAGED_BENCH_TANSU").map(PathBuf::from),
            tansu_pid: std::env::var("ENGAGED_BENCH_TANSU_PID")
                .ok()
                .and_then(|p| p.parse().ok()),
            prefix: format!("tp{}-{}", std::process::id(), millis % 1_000_000),
        }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    fn create_topic(&self, name: &str, partitions: i32) -> Res<()> {
        if let Some(tansu) = &self.tansu {
            let out = Command::new(tansu)
                .args(["topic", "create", "--broker"])
                .arg(format!("tcp://{}", self.bootstrap))
                .args(["--partitions", &partitions.to_string()])
                // Only explicitly set configs are returned by DescribeConfigs on Tansu.
                .args(["--config", "retention.ms=604800000", name])
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "tansu topic create {name}: {}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.client().create()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
        let result = rt.block_on(admin.create_topics([&topic], &AdminOptions::new()))?;
        for r in result {
            r.map_err(|(t, e)| format!("creating topic {t}: {e}"))?;
        }
        Ok(())
    }

    /// Resident memory of the broker process, when we know its pid.
    fn broker_rss_mib(&self) -> Option<f64> {
        rss_mib(&format!("/proc/{}/status", self.tansu_pid?))
    }

    /// CPU seconds used so far by this process (engaged runs in it) and by the broker.
    fn cpu(&self) -> (f64, f64) {
        let broker = self.tansu_pid.and_then(|p| cpu_seconds(&p.to_string()));
        (cpu_seconds("self").unwrap_or(0.0), broker.unwrap_or(0.0))
    }
}

/// CPU time (user + system, seconds) a process has used so far, from `/proc/<pid>/stat`
/// (`pid` "self" for this process); clock ticks of 1/100 s, as Linux reports them.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) closing with ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Per thread of this process, by tid: its name and the seconds it ran and waited
/// on a run queue so far (`/proc/self/task/*/schedstat`).
fn thread_times() -> BTreeMap<u32, (String, f64, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in dir.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
        let name = read("comm").trim().to_string();
        let stat = read("schedstat");
        let mut f = stat
            .split_whitespace()
            .map(|v| v.parse::<f64>().unwrap_or(0.0) / 1e9);
        if let (Some(run), Some(wait)) = (f.next(), f.next()) {
            out.insert(tid, (name, run, wait));
        }
    }
    out
}

/// Per thread name, the run and run-queue wait seconds between two [`thread_times`]
/// (threads alive at both), largest first.
fn thread_deltas(
    a: &BTreeMap<u32, (String, f64, f64)>,
    b: &BTreeMap<u32, (String, f64, f64)>,
) -> String {
    let mut by_name: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (tid, (name, run, wait)) in b {
        if let Some((_, run0, wait0)) = a.get(tid) {
            let e = by_name.entry(name).or_default();
            e.0 += run - run0;
            e.1 += wait - wait0;
        }
    }
    let mut v: Vec<_> = by_name.into_iter().filter(|(_, (r, _))| *r > 0.5).collect();
    v.sort_by(|x, y| y.1.0.total_cmp(&x.1.0));
    v.iter()
        .map(|(n, (r, w))| format!("{n} ran {r:.1}s waited {w:.1}s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Steal time of the whole machine so far (seconds, from `/proc/stat`).
fn steal_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    cpu.split_whitespace()
        .nth(8)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 100.0
}

fn rss_mib(status_path: &str) -> Option<f64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Resident memory of this process (engaged runs in it).
fn own_rss_mib() -> Option<f64> {
    rss_mib("/proc/self/status")
}

// ---------------------------------------------------------------------------------------
// Records in memory: one arena, so generation is not part of the produce rate

/// FNV-1a: a stable hash (the same in every process and build) for co-partitioning.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn partition_of(key: &str) -> i32 {
    (fnv1a(key) % PARTITIONS as u32) as i32
}

#[derive(Default)]
struct Records {
    /// `(topic index, partition, key end, payload end)`; each starts where the previous ended.
    index: Vec<(u8, i32, usize, usize)>,
    arena: Vec<u8>,
    per_topic: [u64; 4],
}

impl Records {
    fn push(&mut self, topic: usize, key: &str, payload: &[u8]) {
        self.arena.extend_from_slice(key.as_bytes());
        let key_end = self.arena.len();
        self.arena.extend_from_slice(payload);
        self.index
            .push((topic as u8, partition_of(key), key_end, self.arena.len()));
        self.per_topic[topic] += 1;
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn payload_bytes(&self) -> usize {
        let keys: usize = self
            .index
            .iter()
            .scan(0usize, |start, &(_, _, key_end, end)| {
                let k = key_end - *start;
                *start = end;
                Some(k)
            })
            .sum();
        self.arena.len() - keys
    }

    /// `(topic index, partition, key, payload)` in order.
    fn iter(&self) -> impl Iterator<Item = (usize, i32, &[u8], &[u8])> + '_ {
        self.index
            .iter()
            .scan(0usize, move |start, &(t, p, key_end, end)| {
                let r = (
                    t as usize,
                    p,
                    &self.arena[*start..key_end],
                    &self.arena[key_end..end],
                );
                *start = end;
                Some(r)
            })
    }
}

fn family(e: &Event) -> usize {
    match e {
        Event::PageView(_) => 0,
        Event::Email(_) => 1,
        Event::Purchase(_) => 2,
        Event::Survey(_) => 3,
    }
}

/// `n` events of realistic generated traffic (all four families), single-object encoded.
fn generated_traffic(n: usize) -> Records {
    let mut g = Generator::new(GeneratorConfig {
        seed: 7,
        customers: 200_000,
        visitors_per_hour: 50_000.0,
        ..GeneratorConfig::default()
    });
    let mut out = Records::default();
    let mut until = DEFAULT_START;
    while out.len() < n {
        until += 10 * 60_000;
        for e in g.advance_to(until) {
            if out.len() == n {
                break;
            }
            out.push(family(&e), partition_key(&e), &encode::single_object(&e));
        }
    }
    out
}

/// One ORDER for each of `customers` distinct customers, event times ending now.
fn orders(customers: usize) -> Records {
    repeat_orders(customers, 1)
}

/// `rounds` ORDERs for each of `customers` distinct customers (customer 0 to the last,
/// then again), event times ending now.
fn repeat_orders(customers: usize, rounds: usize) -> Records {
    order_stream(customers * rounds, "ord", |j| j % customers)
}

/// One ORDER for each of `customers` distinct customers, then `events` ORDERs of the
/// first `hot` of them in a scattered order (a resident state most of which is quiet),
/// event times ending now.
fn hot_orders(customers: usize, hot: usize, events: usize) -> Records {
    let hot = hot.clamp(1, customers.max(1));
    order_stream(customers + events, "hot", |j| {
        // After the first pass: a multiplicative walk over the hot customers.
        if j < customers {
            j
        } else {
            ((j - customers) * 7_919) % hot
        }
    })
}

/// `n` ORDERs 20 ms apart, event times ending now; the `j`-th by customer `customer(j)`.
fn order_stream(n: usize, prefix: &str, customer: impl Fn(usize) -> usize) -> Records {
    let step_ms = 20;
    let start = chrono::Utc::now().timestamp_millis() - (n as i64 + 1) * step_ms;
    let mut out = Records::default();
    for j in 0..n {
        let i = customer(j);
        let customer_id = format!("cust-{i:07}");
        let e = Event::Purchase(Purchase {
            event_id: format!("{prefix}-evt-{j:08}"),
            event_time: start + j as i64 * step_ms,
            customer_id: customer_id.clone(),
            order_id: format!("{prefix}-{j:08}"),
            kind: PurchaseType::Order,
            amount_minor: 1_000 + (fnv1a(&customer_id) % 20_000) as i64,
            currency: "EUR".into(),
            cost_minor: Some(600),
            items: 1 + (i % 3) as i32,
            campaign_id: None,
        });
        out.push(0, &customer_id, &encode::single_object(&e));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Phase 1: produce

#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Produced {
    records: usize,
    seconds: f64,
}

fn produce(env: &Env, topics: &[String], records: &Records) -> Res<Produced> {
    let producer: BaseProducer<Deliveries> = env
        .client()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "120000")
        .create_with_context(Deliveries::default())?;
    let started = Instant::now();
    for (t, p, key, payload) in records.iter() {
        let mut record = BaseRecord::to(&topics[t])
            .partition(p)
            .key(key)
            .payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if !matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        return Err(format!("produce: {e}").into());
                    }
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300))?;
    let seconds = started.elapsed().as_secs_f64();
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} record(s) were not delivered").into());
    }
    Ok(Produced {
        records: records.len(),
        seconds,
    })
}

// ---------------------------------------------------------------------------------------
// Phase 2: the reference, a raw consumer

/// A consume measured from the first record to the last.
#[derive(Debug, Clone, Copy)]
struct Consumed {
    records: u64,
    /// From start (subscribe/assign) to the first record.
    startup_s: f64,
    /// From the first record to the last.
    seconds: f64,
}

impl Consumed {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

fn assignment(topics: &[String]) -> Res<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    Ok(tpl)
}

fn raw_base_consumer(env: &Env, topics: &[String], n: u64) -> Res<(Consumed, u64)> {
    let consumer: BaseConsumer = env
        .client()
        .set("group.id", format!("{}-raw-base", env.prefix))
        .set("enable.auto.commit", "false")
        // What engaged's consumer runs with (source/consumer.rs): with librdkafka's
        // default (1 s) a consumer that drains its queue faster than fetches refill it
        // idles, and on a quiet machine the reference fell to 0.68 M msg/s, below engaged.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let started = Instant::now();
    consumer.assign(&assignment(topics)?)?;
    let mut count = 0u64;
    let mut checksum = 0u64;
    let mut first: Option<Instant> = None;
    while count < n {
        if started.elapsed() > PATIENCE {
            return Err(format!("raw consumer: {count} of {n} records after {PATIENCE:?}").into());
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                count += 1;
                if let Some(p) = m.payload() {
                    checksum = checksum.wrapping_add(p.iter().map(|&b| u64::from(b)).sum());
                }
            }
            Some(Err(e)) => eprintln!("raw consumer: {e}"),
            None => {}
        }
    }
    let first = first.unwrap_or(started);
    Ok((
        Consumed {
            records: count,
            startup_s: (first - started).as_secs_f64(),
            seconds: first.elapsed().as_secs_f64(),
        },
        checksum,
    ))
}

async fn raw_stream_consumer(env: &Env, topics: &[String], n: u64) -> Res<(Consumed, u64)> {
    let consumer: StreamConsumer = env
        .client()
        .set("group.id", format!("{}-raw-stream", env.prefix))
        .set("enable.auto.commit", "false")
        // What engaged's consumer runs with (source/consumer.rs): with librdkafka's
        // default (1 s) a consumer that drains its queue faster than fetches refill it
        // idles, and on a quiet machine the reference fell to 0.68 M msg/s, below engaged.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let started = Instant::now();
    consumer.assign(&assignment(topics)?)?;
    let mut count = 0u64;
    let mut checksum = 0u64;
    let mut first: Option<Instant> = None;
    while count < n {
        let m = tokio::time::timeout(PATIENCE, consumer.recv())
            .await
            .map_err(|_| format!("stream consumer: {count} of {n} records after {PATIENCE:?}"))?;
        match m {
            Ok(m) => {
                first.get_or_insert_with(Instant::now);
                count += 1;
                if let Some(p) = m.payload() {
                    checksum = checksum.wrapping_add(p.iter().map(|&b| u64::from(b)).sum());
                }
            }
            Err(e) => eprintln!("stream consumer: {e}"),
        }
    }
    let first = first.unwrap_or(started);
    Ok((
        Consumed {
            records: count,
            startup_s: (first - started).as_secs_f64(),
            seconds: first.elapsed().as_secs_f64(),
        },
        checksum,
    ))
}

/// Reading to the end on purpose: end-of-partition is not an error worth a log line.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            eprintln!("reading a checkpoint topic: {error} ({reason})");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// Reads every partition of `topic` from the beginning to its end (a checkpoint topic:
/// what a restore has to fetch), without decoding: `(records, value bytes, seconds)`.
fn read_to_end(env: &Env, topic: &str) -> Res<(u64, u64, f64)> {
    let consumer: BaseConsumer<QuietEof> = env
        .client()
        .set("group.id", format!("{}-raw-read", env.prefix))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)?;
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut at_end = std::collections::BTreeSet::new();
    while at_end.len() < PARTITIONS as usize {
        if started.elapsed() > PATIENCE {
            return Err(format!("reading {topic}: not at its end after {PATIENCE:?}").into());
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => eprintln!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok((records, bytes, started.elapsed().as_secs_f64()))
}

// ---------------------------------------------------------------------------------------
// Phases 3 and 4: engaged in-process

#[derive(Clone)]
struct Topics {
    inputs: Vec<String>,
    checkpoints: String,
    snapshots: String,
    dead_letters: String,
    customer_risk: String,
}

fn engaged_config(env: &Env, group: &str, topics: &Topics, checkpoint_interval: &str) -> RawConfig {
    RawConfig {
        bootstrap_servers: env.bootstrap.clone(),
        group_id: group.to_string(),
        input_topics: topics.inputs.clone(),
        snapshot_topic: topics.snapshots.clone(),
        dead_letter_topic: topics.dead_letters.clone(),
        checkpoint_topic: topics.checkpoints.clone(),
        customer_risk_topic: topics.customer_risk.clone(),
        // Tansu joins a group in about half of the session timeout; more consumer
        // settings from `ENGAGED_BENCH_CONSUMER` (`key=value,key=value`).
        kafka_consumer: std::iter::once(("session.timeout.ms".to_string(), "6000".to_string()))
            .chain(
                std::env::var("ENGAGED_BENCH_CONSUMER")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string())),
            )
            .collect(),
        // Generated event times are days old: no clock-skew check.
        max_clock_skew: "0s".into(),
        snapshot_interval: std::env::var("ENGAGED_BENCH_SNAPSHOT_INTERVAL")
            .unwrap_or_else(|_| "1s".into()),
        checkpoint_interval: checkpoint_interval.into(),
        shutdown_timeout: "300s".into(),
        restore_timeout: "300s".into(),
        listen: "127.0.0.1:0".into(),
        ..RawConfig::default()
    }
}

struct Running {
    telemetry: Arc<Telemetry>,
    health: Arc<engaged::http::Health>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), engaged::app::AppError>>,
    started: Instant,
}

async fn start(raw: RawConfig) -> Res<Running> {
    let config = raw.validate()?;
    let sidecar = Sidecar::start(config, &DecoderConfig::default()).await?;
    let telemetry = sidecar.pipeline.telemetry().clone();
    let health = sidecar.health.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(sidecar.run(async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        telemetry,
        health,
        stop,
        task,
        started,
    })
}

impl Running {
    fn consumed(&self) -> u64 {
        self.telemetry.consumed.collect_total()
    }

    /// Stops gracefully (final snapshot, checkpoint, commit, leave); returns the time it took.
    async fn stop(self) -> Res<f64> {
        let t = Instant::now();
        let _ = self.stop.send(());
        self.task.await??;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// Samples `running` until `n` records were consumed.
async fn until_consumed(running: &Running, n: u64, label: &str) -> Res<Consumed> {
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let c = running.consumed();
        let now = Instant::now();
        if c > 0 && first.is_none() {
            first = Some((now, c));
        }
        if c >= n {
            let (t1, c1) = first.unwrap_or((running.started, 0));
            return Ok(Consumed {
                // The records counted at the first sample arrived within one sample period.
                records: n - c1 + 1,
                startup_s: (t1 - running.started).as_secs_f64(),
                seconds: (now - t1).as_secs_f64().max(1e-9),
            });
        }
        if running.task.is_finished() {
            return Err(format!("{label}: engaged stopped after {c} of {n} records").into());
        }
        if running.started.elapsed() > PATIENCE {
            return Err(format!("{label}: {c} of {n} records after {PATIENCE:?}").into());
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

struct EngagedRun {
    label: String,
    checkpoint_interval: String,
    consumed: Consumed,
    accepted: u64,
    rejected: u64,
    /// Checkpoint rounds while consuming, and the time they took (consumer loop blocked).
    checkpoint_rounds: u64,
    checkpoint_seconds: f64,
    checkpoint_written_bytes: u64,
    /// Snapshot rounds while consuming, and the time they took (consumer loop blocked).
    snapshot_rounds: u64,
    snapshot_seconds: f64,
    state_bytes: i64,
    state_entries: i64,
    stop_seconds: f64,
    final_state_bytes: i64,
}

async fn engaged_run(
    env: &Env,
    topics: &Topics,
    label: &str,
    checkpoint_interval: &str,
    n: u64,
) -> Res<EngagedRun> {
    let group = format!("{}-{label}", env.prefix);
    let running = start(engaged_config(env, &group, topics, checkpoint_interval)).await?;
    let cpu0 = env.cpu();
    let consumed = until_consumed(&running, n, label).await?;
    let cpu1 = env.cpu();
    let t = running.telemetry.clone();
    // How busy the process was (cores) and how the loop batched records for its workers.
    let batches = t.consumer_batch.get_sample_count().max(1);
    println!(
        "engaged {label}: {:.2} cores busy while consuming (broker {:.2}); {} batches of {:.0} \
         records on average; the loop idle {:.1}s",
        (cpu1.0 - cpu0.0) / consumed.seconds,
        (cpu1.1 - cpu0.1) / consumed.seconds,
        batches,
        t.consumer_batch.get_sample_sum() / batches as f64,
        t.consumer_idle.get()
    );
    let run = EngagedRun {
        label: label.to_string(),
        checkpoint_interval: checkpoint_interval.to_string(),
        consumed,
        accepted: t.accepted.collect_total(),
        rejected: t.rejected.collect_total(),
        // The consumer loop's share: serialising (the write runs in the background).
        checkpoint_rounds: t.checkpoint_pause.get_sample_count(),
        checkpoint_seconds: t.checkpoint_pause.get_sample_sum(),
        checkpoint_written_bytes: t.checkpoint_bytes_written.get(),
        snapshot_rounds: t.snapshot_duration.get_sample_count(),
        snapshot_seconds: t.snapshot_duration.get_sample_sum(),
        state_bytes: t.checkpoint_state_bytes.get(),
        state_entries: t.state_entries.get(),
        stop_seconds: 0.0,
        final_state_bytes: 0,
    };
    let stop_seconds = running.stop().await?;
    Ok(EngagedRun {
        stop_seconds,
        final_state_bytes: t.checkpoint_state_bytes.get(),
        ..run
    })
}

struct Restore {
    customers: usize,
    produce: Produced,
    consume: EngagedRun,
    /// Final checkpoint of the first sidecar (inside its graceful stop).
    final_checkpoint_s: f64,
    final_checkpoint_bytes: u64,
    /// Second sidecar: from `run` to assignment + restore done, and to ready.
    to_restored_s: f64,
    restore_metric_s: f64,
    to_ready_s: Option<f64>,
    not_ready_reason: Option<String>,
    consumed_after_restore: u64,
    state_entries_before: i64,
    state_entries_after: i64,
    rss_after_consume_mib: Option<f64>,
    rss_after_restore_mib: Option<f64>,
    /// A raw read of the checkpoint topic to its end: records, bytes, seconds.
    checkpoint_read: (u64, u64, f64),
}

async fn restore(env: &Env, customers: usize) -> Res<Restore> {
    let topics = Topics {
        inputs: vec![env.topic(&format!("orders{customers}"))],
        checkpoints: env.topic(&format!("orders{customers}.checkpoints")),
        snapshots: env.topic("snapshots"),
        dead_letters: env.topic("dlq"),
        customer_risk: env.topic("customer-risk"),
    };
    env.create_topic(&topics.inputs[0], PARTITIONS)?;
    env.create_topic(&topics.checkpoints, PARTITIONS)?;
    let records = orders(customers);
    let produce = produce(env, &topics.inputs, &records)?;
    drop(records);
    println!(
        "restore: produced {customers} orders of distinct customers at {:.0} msg/s",
        produce.records as f64 / produce.seconds
    );

    let group = format!("{}-restore{customers}", env.prefix);
    // Checkpoints only at the graceful stop: that round is the one measured.
    let first = start(engaged_config(env, &group, &topics, "1h")).await?;
    let consumed = until_consumed(&first, customers as u64, "restore/first").await?;
    let t = first.telemetry.clone();
    let (snapshot_rounds, snapshot_seconds) = (
        t.snapshot_duration.get_sample_count(),
        t.snapshot_duration.get_sample_sum(),
    );
    let rss_after_consume_mib = own_rss_mib();
    let stop_seconds = first.stop().await?;
    // After the stop, so that it shows the state of the final snapshot round.
    let state_entries_before = t.state_entries.get();
    let consume = EngagedRun {
        label: format!("orders-{customers}"),
        checkpoint_interval: "1h".into(),
        consumed,
        accepted: t.accepted.collect_total(),
        rejected: t.rejected.collect_total(),
        checkpoint_rounds: t.checkpoint_duration.get_sample_count(),
        checkpoint_seconds: t.checkpoint_duration.get_sample_sum(),
        checkpoint_written_bytes: t.checkpoint_bytes_written.get(),
        snapshot_rounds,
        snapshot_seconds,
        state_bytes: t.checkpoint_state_bytes.get(),
        state_entries: state_entries_before,
        stop_seconds,
        final_state_bytes: t.checkpoint_state_bytes.get(),
    };
    println!(
        "restore: first sidecar consumed at {:.0} msg/s, stopped in {stop_seconds:.2}s (final \
         checkpoint {:.2}s, {:.1} MiB state)",
        consumed.rate(),
        t.checkpoint_duration.get_sample_sum(),
        consume.final_state_bytes as f64 / 1048576.0
    );

    let second = start(engaged_config(env, &group, &topics, "1h")).await?;
    let mut to_restored = None;
    let mut to_ready = None;
    loop {
        let elapsed = second.started.elapsed();
        if to_restored.is_none() && second.telemetry.restore_duration.get() > 0.0 {
            to_restored = Some(elapsed.as_secs_f64());
        }
        if to_ready.is_none() && second.health.not_ready().is_none() {
            to_ready = Some(elapsed.as_secs_f64());
        }
        if to_restored.is_some() && to_ready.is_some() {
            break;
        }
        if second.task.is_finished() {
            break;
        }
        if elapsed > PATIENCE || to_restored.is_some_and(|r| elapsed.as_secs_f64() > r + 30.0) {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let not_ready_reason = second.health.not_ready();
    let restore_metric_s = second.telemetry.restore_duration.get();
    let consumed_after_restore = second.consumed();
    let state_entries_after = second.telemetry.state_entries.get();
    let rss_after_restore_mib = own_rss_mib();
    second.stop().await?;
    let to_restored_s = to_restored.ok_or("the second sidecar never finished restoring")?;
    // What the restore had to fetch, read raw: the broker's share of the restore time.
    let checkpoint_read = read_to_end(env, &topics.checkpoints)?;
    Ok(Restore {
        customers,
        produce,
        final_checkpoint_s: consume.checkpoint_seconds,
        final_checkpoint_bytes: consume.checkpoint_written_bytes,
        consume,
        to_restored_s,
        restore_metric_s,
        to_ready_s: to_ready,
        not_ready_reason: to_ready.is_none().then_some(not_ready_reason).flatten(),
        consumed_after_restore,
        state_entries_before,
        state_entries_after,
        rss_after_consume_mib,
        rss_after_restore_mib,
        checkpoint_read,
    })
}

/// What a checkpoint phase consumes after the first pass over `customers` customers.
#[derive(Clone, Copy)]
enum Workload {
    /// `passes` ORDERs each of every customer (all of them, then all again, ...): every
    /// round changes a large share of the state.
    Passes(usize),
    /// Then `events` ORDERs of the first `hot` customers: the state is resident, a
    /// small part of it changes.
    Hot { hot: usize, events: usize },
}

impl Workload {
    fn records(self, customers: usize) -> Records {
        match self {
            Workload::Passes(p) => repeat_orders(customers, p),
            Workload::Hot { hot, events } => hot_orders(customers, hot, events),
        }
    }

    fn total(self, customers: usize) -> usize {
        match self {
            Workload::Passes(p) => p * customers,
            Workload::Hot { events, .. } => customers + events,
        }
    }

    fn describe(self, customers: usize) -> String {
        match self {
            Workload::Passes(p) => format!(
                "{p} ORDERs each of {customers} customers; rate over passes 2-{p} (every round \
                 changes a large share of the state)"
            ),
            Workload::Hot { hot, events } => format!(
                "one ORDER each of {customers} customers, then {events} ORDERs of {hot} of them; \
                 rate over the latter (a resident state, a small part of it changing)"
            ),
        }
    }
}

/// One run of a checkpoint phase.
struct CkRun {
    label: String,
    interval: String,
    /// Rate after the first pass (msg/s).
    rate: f64,
    /// Checkpoint rounds meanwhile, their total pause of the consumer loop, and the
    /// bytes they wrote.
    rounds: u64,
    pause: f64,
    written: u64,
    /// Bases and deltas written meanwhile.
    bases: u64,
    deltas: u64,
    /// What a restore would read after the last round.
    state: i64,
    /// CPU seconds used meanwhile by this process (engaged, the consumer and the
    /// writer) and by the broker.
    cpu: f64,
    broker_cpu: f64,
    /// Seconds the consumer loop waited for records meanwhile (`engaged_consumer_idle_seconds_total`).
    idle: f64,
}

/// Checkpoints of a large state: the `workload` after one ORDER each of `customers`
/// customers, consumed by a fresh group per configuration. The rate is measured from
/// the end of the first pass to the end, when the state holds every customer. Each
/// configuration runs `repeats` times, interleaved.
struct LargeState {
    name: &'static str,
    description: String,
    runs: Vec<CkRun>,
}

async fn large_state(
    env: &Env,
    name: &'static str,
    customers: usize,
    workload: Workload,
    repeats: usize,
) -> Res<LargeState> {
    let topics = Topics {
        // Part of a topic name: Kafka's characters only.
        inputs: vec![env.topic(&format!("{}{customers}", name.replace(' ', "-")))],
        checkpoints: String::new(),
        snapshots: env.topic("snapshots"),
        dead_letters: env.topic("dlq"),
        customer_risk: env.topic("customer-risk"),
    };
    env.create_topic(&topics.inputs[0], PARTITIONS)?;
    let records = workload.records(customers);
    let produced = produce(env, &topics.inputs, &records)?;
    drop(records);
    let total = workload.total(customers);
    println!(
        "{name}: produced {total} orders at {:.0} msg/s",
        produced.records as f64 / produced.seconds
    );
    let mut runs = vec![];
    for (rep, (label, interval, compression)) in
        (0..repeats).flat_map(|rep| LARGE_STATE_CONFIGS.iter().map(move |c| (rep, *c)))
    {
        // Part of topic names: Kafka's characters only.
        let run = format!("{}-{label}-{rep}", name.replace(' ', "-"));
        let topics = Topics {
            checkpoints: env.topic(&format!("{run}.checkpoints")),
            ..topics.clone()
        };
        env.create_topic(&topics.checkpoints, PARTITIONS)?;
        let group = format!("{}-{run}", env.prefix);
        let mut config = engaged_config(env, &group, &topics, interval);
        if let Some(c) = compression {
            config
                .kafka_producer
                .insert("compression.type".into(), c.into());
        }
        let running = start(config).await?;
        until_consumed(&running, customers as u64, &run).await?;
        // With few customers a batch can take the later passes along with the
        // first: then there is nothing left to time.
        let counted = running.consumed().min(total as u64);
        let t = running.telemetry.clone();
        let pieces = |form: &str| t.checkpoint_pieces.with_label_values(&[form]).get();
        let (rounds0, pause0, written0, bases0, deltas0) = (
            t.checkpoint_pause.get_sample_count(),
            t.checkpoint_pause.get_sample_sum(),
            t.checkpoint_bytes_written.get(),
            pieces("base"),
            pieces("delta"),
        );
        let t0 = Instant::now();
        let cpu0 = env.cpu();
        let idle0 = t.consumer_idle.get();
        let (threads0, steal0) = (thread_times(), steal_seconds());
        until_consumed(&running, total as u64, &run).await?;
        let seconds = t0.elapsed().as_secs_f64();
        let cpu1 = env.cpu();
        let r = CkRun {
            label: label.to_string(),
            interval: interval.to_string(),
            rate: if counted < total as u64 {
                (total as u64 - counted) as f64 / seconds
            } else {
                println!(
                    "{run}: every pass was consumed with the first; no rate \
                     (raise ENGAGED_BENCH_CUSTOMERS)"
                );
                f64::NAN
            },
            rounds: t.checkpoint_pause.get_sample_count() - rounds0,
            pause: t.checkpoint_pause.get_sample_sum() - pause0,
            written: t.checkpoint_bytes_written.get() - written0,
            bases: pieces("base") - bases0,
            deltas: pieces("delta") - deltas0,
            state: t.checkpoint_state_bytes.get(),
            cpu: cpu1.0 - cpu0.0,
            broker_cpu: cpu1.1 - cpu0.1,
            idle: t.consumer_idle.get() - idle0,
        };
        if seconds < 1.0 {
            println!(
                "{run}: the later passes took {seconds:.2}s, too short to time (sampled every \
                 {SAMPLE_EVERY:?}): raise ENGAGED_BENCH_CUSTOMERS for this figure"
            );
        }
        println!(
            "{name} {label} ({rep}) threads: {}; steal {:.1}s",
            thread_deltas(&threads0, &thread_times()),
            steal_seconds() - steal0
        );
        println!(
            "{name} {label} ({rep}): {:.0} msg/s over {seconds:.1}s after the first pass; {} \
             checkpoint rounds paused the loop {:.2}s and wrote {:.1} MiB ({} bases, {} deltas); \
             last round {:.1} MiB; CPU {:.1}s here, {:.1}s in the broker; the loop idle {:.1}s",
            r.rate,
            r.rounds,
            r.pause,
            mib(r.written as f64),
            r.bases,
            r.deltas,
            mib(r.state as f64),
            r.cpu,
            r.broker_cpu,
            r.idle
        );
        running.stop().await?;
        runs.push(r);
    }
    Ok(LargeState {
        name,
        description: workload.describe(customers),
        runs,
    })
}

impl LargeState {
    fn rates(&self, label: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.label == label)
            .map(|r| r.rate)
            .collect()
    }

    fn off(&self) -> f64 {
        median(&self.rates(LARGE_STATE_CONFIGS[0].0))
    }

    fn print(&self, repeats: usize, range: impl Fn(&[f64]) -> String) {
        println!("{}: {}; median of {repeats}", self.name, self.description);
        for (label, interval, _) in LARGE_STATE_CONFIGS {
            let rates = self.rates(label);
            let of_label: Vec<&CkRun> = self.runs.iter().filter(|r| r.label == label).collect();
            let rounds: u64 = of_label.iter().map(|r| r.rounds).sum();
            let pause: f64 = of_label.iter().map(|r| r.pause).sum();
            let written: u64 = of_label.iter().map(|r| r.written).sum();
            let (bases, deltas): (u64, u64) = (
                of_label.iter().map(|r| r.bases).sum(),
                of_label.iter().map(|r| r.deltas).sum(),
            );
            let state = of_label.last().map_or(0, |r| r.state);
            println!(
                "  {label:<18} checkpoint_interval {interval:<4} {:>9.0} msg/s ({}) {:>7.1}% of off; \
                 {rounds} rounds paused the loop {pause:.2}s and wrote {:.0} MiB ({bases} bases, \
                 {deltas} deltas) in all; last round {:.1} MiB",
                median(&rates),
                range(&rates),
                100.0 * median(&rates) / self.off(),
                mib(written as f64),
                mib(state as f64)
            );
        }
    }

    fn json(&self) -> Value {
        let off = self.off();
        json!({
            "description": self.description,
            "median_msgs_per_s_checkpoints_off": off,
            "runs": self.runs.iter().map(|r| json!({
                "label": r.label, "checkpoint_interval": r.interval,
                "msgs_per_s_after_first_pass": r.rate, "ratio_to_median_off": r.rate / off,
                "checkpoint_rounds": r.rounds, "loop_pause_seconds": r.pause,
                "written_bytes": r.written, "bases": r.bases, "deltas": r.deltas,
                "last_round_state_bytes": r.state,
                "cpu_seconds": r.cpu, "broker_cpu_seconds": r.broker_cpu,
                "loop_idle_seconds": r.idle,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The configurations of the large-state phase: label, `checkpoint_interval`, and the
/// producers' `compression.type` (checkpoint writer included).
const LARGE_STATE_CONFIGS: [(&str, &str, Option<&str>); 3] = [
    ("checkpoints-off", "1h", None),
    ("checkpoints-10s", "10s", None),
    ("checkpoints-2s", "2s", None),
];

// ---------------------------------------------------------------------------------------
// Report

fn mib(bytes: f64) -> f64 {
    bytes / 1048576.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn run_json(r: &EngagedRun) -> Value {
    json!({
        "label": r.label,
        "checkpoint_interval": r.checkpoint_interval,
        "records": r.consumed.records,
        "seconds": r.consumed.seconds,
        "startup_seconds": r.consumed.startup_s,
        "msgs_per_s": r.consumed.rate(),
        "accepted": r.accepted,
        "rejected": r.rejected,
        "checkpoint_rounds_while_consuming": r.checkpoint_rounds,
        "checkpoint_seconds_while_consuming": r.checkpoint_seconds,
        "checkpoint_written_bytes_while_consuming": r.checkpoint_written_bytes,
        "snapshot_rounds_while_consuming": r.snapshot_rounds,
        "snapshot_seconds_while_consuming": r.snapshot_seconds,
        "checkpoint_state_bytes_last_round": r.state_bytes,
        "state_entries": r.state_entries,
        "graceful_stop_seconds": r.stop_seconds,
        "final_checkpoint_state_bytes": r.final_state_bytes,
    })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The engaged configurations compared: label, `checkpoint_interval`.
const CONFIGS: [(&str, &str); 3] = [
    ("checkpoints-off", "1h"),
    ("checkpoints-10s", "10s"),
    ("checkpoints-1s", "1s"),
];

fn main() -> Res<()> {
    // `cargo bench` passes `--bench`; nothing else is understood. engaged's own logs are
    // errors only unless RUST_LOG says otherwise (e.g. `engaged=info`).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let env = Env::from_env();
    let n = env_usize("ENGAGED_BENCH_EVENTS", 1_000_000);
    let customers = env_usize("ENGAGED_BENCH_CUSTOMERS", 1_000_000);
    let repeats = env_usize("ENGAGED_BENCH_REPEATS", 3).max(1);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let wall = Instant::now();
    println!(
        "throughput: {n} events x {repeats} repeats, restore of {customers} customers, broker {} \
         (prefix {})",
        env.bootstrap, env.prefix
    );

    // Phase 1: generate, then produce.
    let t = Instant::now();
    let records = generated_traffic(n);
    let generate_s = t.elapsed().as_secs_f64();
    let payload_bytes = records.payload_bytes();
    let per_topic = records.per_topic;
    println!(
        "generated {} events in {generate_s:.1}s: pageviews {} emails {} purchases {} surveys {}, \
         mean payload {:.0} B",
        records.len(),
        per_topic[0],
        per_topic[1],
        per_topic[2],
        per_topic[3],
        payload_bytes as f64 / records.len() as f64
    );
    let inputs: Vec<String> = FAMILIES.iter().map(|f| env.topic(f)).collect();
    let topics_for = |checkpoints: String| Topics {
        inputs: inputs.clone(),
        checkpoints,
        snapshots: env.topic("snapshots"),
        dead_letters: env.topic("dlq"),
        customer_risk: env.topic("customer-risk"),
    };
    for t in &inputs {
        env.create_topic(t, PARTITIONS)?;
    }
    let outputs = topics_for(String::new());
    for t in [
        &outputs.snapshots,
        &outputs.dead_letters,
        &outputs.customer_risk,
    ] {
        env.create_topic(t, 1)?;
    }
    let produced = produce(&env, &inputs, &records)?;
    drop(records);
    let produce_rate = produced.records as f64 / produced.seconds;
    println!(
        "produced {} records in {:.2}s: {produce_rate:.0} msg/s",
        produced.records, produced.seconds
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let n64 = n as u64;

    // Phases 2 and 3, interleaved (raw, the engaged configurations, raw, ...) so that
    // drift of a shared machine shows in the reference as well.
    let raw = |label: &str| -> Res<(Consumed, u64)> {
        let (c, sum) = raw_base_consumer(&env, &inputs, n64)?;
        println!("raw BaseConsumer ({label}): {:.0} msg/s", c.rate());
        Ok((c, sum))
    };
    let (first_raw, checksum) = raw("1")?;
    let mut raw_runs = vec![first_raw];
    let (stream, stream_sum) = rt.block_on(raw_stream_consumer(&env, &inputs, n64))?;
    if stream_sum != checksum {
        return Err("the two raw consumers read different bytes".into());
    }
    println!("raw StreamConsumer: {:.0} msg/s", stream.rate());
    let mut runs: Vec<Vec<EngagedRun>> = CONFIGS.iter().map(|_| vec![]).collect();
    for rep in 0..repeats {
        for (i, (label, interval)) in CONFIGS.iter().enumerate() {
            let name = format!("{label}-{rep}");
            let topics = topics_for(env.topic(&format!("{name}.checkpoints")));
            env.create_topic(&topics.checkpoints, PARTITIONS)?;
            let r = rt.block_on(engaged_run(&env, &topics, &name, interval, n64))?;
            if r.accepted != n64 {
                return Err(format!(
                    "{name}: accepted {} of {n} records ({} rejected)",
                    r.accepted, r.rejected
                )
                .into());
            }
            println!(
                "engaged {name}: {:.0} msg/s (startup {:.1}s; {} checkpoint rounds while \
                 consuming, {:.2}s)",
                r.consumed.rate(),
                r.consumed.startup_s,
                r.checkpoint_rounds,
                r.checkpoint_seconds
            );
            runs[i].push(r);
        }
        let (c, sum) = raw(&format!("{}", rep + 2))?;
        if sum != checksum {
            return Err("raw consumers read different bytes".into());
        }
        raw_runs.push(c);
    }
    let raw_rates: Vec<f64> = raw_runs.iter().map(Consumed::rate).collect();
    let reference = median(&raw_rates);
    let rates: Vec<Vec<f64>> = runs
        .iter()
        .map(|rs| rs.iter().map(|r| r.consumed.rate()).collect())
        .collect();
    let medians: Vec<f64> = rates.iter().map(|r| median(r)).collect();
    let off = medians[0];

    // Phase 4: restore.
    let restored = rt.block_on(restore(&env, customers))?;
    // Phase 5: checkpoints of a large state.
    let passes = env_usize("ENGAGED_BENCH_LARGE_PASSES", 4).max(2);
    // One repeat by default: Tansu's memory storage never compacts, and every round of
    // this phase adds about 200 MiB to it (three repeats grew it past 20 GB here, and the
    // broker stopped acknowledging in time).
    let large_repeats = env_usize("ENGAGED_BENCH_LARGE_REPEATS", 1).max(1);
    let large = rt.block_on(large_state(
        &env,
        "large state",
        customers,
        Workload::Passes(passes),
        large_repeats,
    ))?;
    // Phase 6 (opt-in): checkpoints of a resident state, a small part of which changes.
    // Not run by default: with 2M ORDERs of 50k customers the sidecar slowed to a few
    // thousand records/s with checkpoints off, most likely because every 1 s snapshot
    // rescored the 1M customers with a degenerate fit (0.7 s a sweep; see README).
    let hot_events = env_usize("ENGAGED_BENCH_HOT_EVENTS", 0);
    let hot = if hot_events > 0 {
        Some(rt.block_on(large_state(
            &env,
            "resident state",
            customers,
            Workload::Hot {
                hot: env_usize("ENGAGED_BENCH_HOT_CUSTOMERS", customers / 20),
                events: hot_events,
            },
            large_repeats,
        ))?)
    } else {
        None
    };
    let broker_rss = env.broker_rss_mib();

    // Table.
    println!();
    println!(
        "== {n} events, {cores} cores, Tansu memory storage; reference = raw rdkafka \
         BaseConsumer (median of {} runs interleaved with the engaged runs); engaged: median \
         of {repeats} runs, rate from the first record to the last",
        raw_rates.len()
    );
    println!(
        "{:<36} {:>10} {:>19} {:>7} {:>8} {:>8} {:>13} {:>13}",
        "run", "msg/s", "min..max", "vs raw", "vs off", "startup", "ckpt rounds", "snap rounds"
    );
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.0}..{hi:.0}")
    };
    println!("{:<36} {:>10.0}", "produce (BaseProducer)", produce_rate);
    println!(
        "{:<36} {:>10.0} {:>19} {:>6.2}x {:>8} {:>7.1}s",
        "raw BaseConsumer",
        reference,
        range(&raw_rates),
        1.0,
        "",
        median(&raw_runs.iter().map(|c| c.startup_s).collect::<Vec<_>>())
    );
    println!(
        "{:<36} {:>10.0} {:>19} {:>6.2}x {:>8} {:>7.1}s",
        "raw StreamConsumer",
        stream.rate(),
        "",
        stream.rate() / reference,
        "",
        stream.startup_s
    );
    for (i, (_, interval)) in CONFIGS.iter().enumerate() {
        let rs = &runs[i];
        println!(
            "{:<36} {:>10.0} {:>19} {:>6.2}x {:>7.1}% {:>7.1}s {:>5} in {:>4.1}s {:>5} in {:>4.1}s",
            format!("engaged, checkpoint_interval {interval}"),
            medians[i],
            range(&rates[i]),
            medians[i] / reference,
            100.0 * medians[i] / off,
            median(&rs.iter().map(|r| r.consumed.startup_s).collect::<Vec<_>>()),
            rs.iter().map(|r| r.checkpoint_rounds).sum::<u64>(),
            rs.iter().map(|r| r.checkpoint_seconds).sum::<f64>(),
            rs.iter().map(|r| r.snapshot_rounds).sum::<u64>(),
            rs.iter().map(|r| r.snapshot_seconds).sum::<f64>(),
        );
    }
    let orders = &restored.consume;
    println!(
        "{:<36} {:>10.0} {:>19} {:>6.2}x {:>8} {:>7.1}s {:>13} {:>5} in {:>4.1}s",
        format!("engaged, {} ORDERs only", restored.customers),
        orders.consumed.rate(),
        "",
        orders.consumed.rate() / reference,
        "",
        orders.consumed.startup_s,
        "",
        orders.snapshot_rounds,
        orders.snapshot_seconds,
    );
    println!(
        "(\"ckpt/snap rounds\": checkpoint and snapshot rounds that ran while consuming, summed \
         over the repeats, and the time they blocked the consumer loop)"
    );
    println!();
    println!(
        "restore of {} customers: state {:.1} MiB (engaged_checkpoint_state_bytes, {:.0} B per \
         customer); final checkpoint {:.2}s inside a graceful stop of {:.2}s",
        restored.customers,
        mib(restored.consume.final_state_bytes as f64),
        restored.consume.final_state_bytes as f64 / restored.customers as f64,
        restored.final_checkpoint_s,
        restored.consume.stop_seconds,
    );
    println!(
        "second sidecar (same group): restore done {:.2}s after start \
         (engaged_restore_duration_seconds {:.2}s; the rest is the group join), ready {}",
        restored.to_restored_s,
        restored.restore_metric_s,
        restored.to_ready_s.map_or_else(
            || format!(
                "not within 30s ({})",
                restored.not_ready_reason.clone().unwrap_or_default()
            ),
            |s| format!("{s:.2}s after start")
        ),
    );
    let (ck_records, ck_bytes, ck_s) = restored.checkpoint_read;
    println!(
        "raw read of the checkpoint topic to its end: {ck_records} records, {:.1} MiB in \
         {ck_s:.2}s ({:.0} MiB/s); state entries {} before the stop, {} after the restore",
        mib(ck_bytes as f64),
        mib(ck_bytes as f64) / ck_s,
        restored.state_entries_before,
        restored.state_entries_after,
    );
    println!();
    large.print(large_repeats, range);
    if let Some(hot) = &hot {
        hot.print(large_repeats, range);
    }
    let fmt_mib = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} MiB"));
    println!(
        "resident memory: bench process (engaged) {} after consuming the orders, {} after the \
         restore; broker (Tansu, memory storage) {} at the end",
        fmt_mib(restored.rss_after_consume_mib),
        fmt_mib(restored.rss_after_restore_mib),
        fmt_mib(broker_rss),
    );

    let configs_json: Vec<Value> = CONFIGS
        .iter()
        .enumerate()
        .map(|(i, (label, interval))| {
            json!({
                "label": label,
                "checkpoint_interval": interval,
                "median_msgs_per_s": medians[i],
                "ratio_to_raw": medians[i] / reference,
                "ratio_to_checkpoints_off": medians[i] / off,
                "runs": runs[i].iter().map(run_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let report = json!({
        "machine": {
            "cores": cores,
            "broker": "tansu 0.6.0 (memory storage)",
            "note": "shared, noisy machine: compare ratios, not absolute rates",
        },
        "events": n,
        "repeats": repeats,
        "events_per_topic": {
            "pageviews": per_topic[0], "emails": per_topic[1],
            "purchases": per_topic[2], "surveys": per_topic[3],
        },
        "mean_payload_bytes": payload_bytes as f64 / n as f64,
        "generate_seconds": generate_s,
        "produce": {"records": produced.records, "seconds": produced.seconds, "msgs_per_s": produce_rate},
        "raw_base_consumer": {
            "median_msgs_per_s": reference,
            "runs": raw_runs.iter().map(|c| json!({
                "msgs_per_s": c.rate(), "seconds": c.seconds, "startup_seconds": c.startup_s,
            })).collect::<Vec<_>>(),
        },
        "large_state": large.json(),
        "resident_state": hot.as_ref().map(LargeState::json),
        "raw_stream_consumer": {
            "msgs_per_s": stream.rate(), "seconds": stream.seconds,
            "ratio_to_raw": stream.rate() / reference,
        },
        "engaged": configs_json,
        "checkpoints_on_vs_off": {
            "10s": medians[1] / off,
            "1s": medians[2] / off,
            "target": 0.9,
        },
        "restore": {
            "customers": restored.customers,
            "produce_msgs_per_s": restored.produce.records as f64 / restored.produce.seconds,
            "consume": run_json(&restored.consume),
            "consume_ratio_to_raw": restored.consume.consumed.rate() / reference,
            "checkpoint_state_bytes": restored.consume.final_state_bytes,
            "final_checkpoint_seconds": restored.final_checkpoint_s,
            "final_checkpoint_written_bytes": restored.final_checkpoint_bytes,
            "graceful_stop_seconds": restored.consume.stop_seconds,
            "second_sidecar_restored_after_seconds": restored.to_restored_s,
            "restore_duration_seconds": restored.restore_metric_s,
            "second_sidecar_ready_after_seconds": restored.to_ready_s,
            "not_ready_reason": restored.not_ready_reason,
            "consumed_after_restore": restored.consumed_after_restore,
            "state_entries_before_stop": restored.state_entries_before,
            "state_entries_after_restore": restored.state_entries_after,
            "raw_checkpoint_read": {
                "records": ck_records, "bytes": ck_bytes, "seconds": ck_s,
            },
            "bench_rss_mib_after_consume": restored.rss_after_consume_mib,
            "bench_rss_mib_after_restore": restored.rss_after_restore_mib,
            "target_seconds": 10.0,
        },
        "broker_rss_mib": broker_rss,
        "wall_seconds": wall.elapsed().as_secs_f64(),
    });
    let path = target_dir().join("throughput.json");
    std::fs::create_dir_all(target_dir())?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!(
        "wrote {} ({:.0}s in all)",
        path.display(),
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}
