//! Exactly-once across crashes (SPEC §5), against librdkafka's mock cluster:
//! `engaged run` processes is killed with SIGKILL at random moments, ten times,
//! while a generated stream of all four families is produced; every windowed
//! number it ends with equals that of a run that was never killed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engaged::decode::encode;
use engaged::demo::generator::{Generator, GeneratorConfig, partition_key, topic_of};
use engaged::event::Event;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const PARTITIONS: i32 = 2;
const TOPICS: [&str; 4] = ["pageviews", "emails", "purchases", "surveys"];

#[allow(unsafe_code)]
fn no_initial_rebalance_delay(producer: &FutureProducer) {
    // SAFETY: the producer owns the mock cluster; this only sets a mock option.
    unsafe {
        let mc = rdkafka_sys::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
        assert!(!mc.is_null());
        rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, 0);
    }
}

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

    async fn produce(&self, events: &[Event]) {
        let mut pending = vec![];
        for e in events {
            let key = partition_key(e);
            let p = (key
                .bytes()
                .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
                % PARTITIONS as u32) as i32;
            let payload = encode::single_object(e);
            let record = FutureRecord::to(topic_of(e))
                .partition(p)
                .key(key)
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

/// An `engaged run` child process, killed on drop.
struct Engaged {
    child: Child,
    addr: SocketAddr,
}

impl Engaged {
    fn start(bootstrap: &str, dir: &std::path::Path) -> Engaged {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.join("engaged.toml");
        std::fs::write(
            &config,
            format!(
                "bootstrap_servers = \"{bootstrap}\"\n\
                 group_id = \"engaged-kill\"\n\
                 listen = \"{addr}\"\n\
                 windows = [\"1h\", \"24h\", \"7d\"]\n\
                 snapshot_interval = \"300ms\"\n\
                 checkpoint_interval = \"400ms\"\n\
                 idle_timeout = \"2s\"\n\
                 statistics_interval = \"1s\"\n\
                 [kafka_consumer]\n\
                 \"session.timeout.ms\" = \"2500\"\n\
                 \"heartbeat.interval.ms\" = \"500\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("engaged.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_engaged"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Engaged { child, addr }
    }

    fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn metrics(&self) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body.split_once("\r\n\r\n")?.1.to_string())
    }
}

impl Drop for Engaged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The windowed numbers (state-derived, not process-cumulative counters).
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

fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Waits until the instance has consumed everything and its numbers stop changing.
fn settled(e: &Engaged, expect_watermark: f64) -> BTreeMap<String, String> {
    // Generous: CI machines are shared, and a debug build consumes slowly.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last: Option<BTreeMap<String, String>> = None;
    loop {
        assert!(Instant::now() < deadline, "engaged did not settle");
        std::thread::sleep(Duration::from_millis(700));
        let Some(text) = e.metrics() else { continue };
        let at_end = value(&text, "engaged_watermark_timestamp_seconds")
            .is_some_and(|w| (w - expect_watermark).abs() < 1e-3);
        let now = windowed(&text);
        if at_end && last.as_ref() == Some(&now) && !now.is_empty() {
            return now;
        }
        last = Some(now);
    }
}

fn events() -> (Vec<Event>, f64) {
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - 3 * 24 * 3_600_000;
    let mut g = Generator::new(GeneratorConfig {
        seed: 7,
        start,
        customers: 300,
        visitors_per_hour: 60.0,
        ..GeneratorConfig::default()
    });
    let events = g.advance_to(now - 3_600_000);
    // All partitions idle at the end: the instance watermark is the largest partition watermark.
    let max = events.iter().map(|e| e.event_time()).max().unwrap();
    (events, (max - 5 * 60_000) as f64 / 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ten_times_counts_every_event_exactly_once() {
    let (events, final_watermark) = events();
    assert!(events.len() > 5_000, "{} events", events.len());
    let dir = tempfile::tempdir().unwrap();

    // Reference: one run that is never killed.
    let reference = Cluster::new();
    reference.produce(&events).await;
    let clean_dir = dir.path().join("clean");
    std::fs::create_dir_all(&clean_dir).unwrap();
    let clean = Engaged::start(&reference.bootstrap, &clean_dir);
    let want = tokio::task::spawn_blocking(move || settled(&clean, final_watermark))
        .await
        .unwrap();

    // The same stream in ten batches; engaged is killed with SIGKILL after each.
    let cluster = Cluster::new();
    let killed_dir = dir.path().join("killed");
    std::fs::create_dir_all(&killed_dir).unwrap();
    let mut seed = 0x9E3779B97F4A7C15u64;
    let batches: Vec<&[Event]> = events.chunks(events.len().div_ceil(10)).collect();
    for batch in &batches {
        let e = Engaged::start(&cluster.bootstrap, &killed_dir);
        // Once it owns the partitions (and restored them), feed it and kill it
        // while it is busy, or a little later.
        let e = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !e
                .metrics()
                .and_then(|t| value(&t, "engaged_assigned_partitions"))
                .is_some_and(|n| n > 0.0)
            {
                assert!(Instant::now() < deadline, "never assigned");
                std::thread::sleep(Duration::from_millis(50));
            }
            e
        })
        .await
        .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_millis(seed % 1_500);
        let kill = async move {
            tokio::time::sleep(kill_after).await;
            e.kill9();
        };
        tokio::join!(cluster.produce(batch), kill);
    }
    let last = Engaged::start(&cluster.bootstrap, &killed_dir);
    let got = tokio::task::spawn_blocking(move || settled(&last, final_watermark))
        .await
        .unwrap();

    let differences: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: clean {v}, killed {:?}", got.get(k)))
        .chain(
            got.keys()
                .filter(|k| !want.contains_key(*k))
                .map(|k| format!("{k}: only in the killed run")),
        )
        .collect();
    let log = std::fs::read_to_string(killed_dir.join("engaged.log")).unwrap_or_default();
    assert!(
        differences.is_empty(),
        "{} differences, e.g. {:#?}\nlog tail:\n{}",
        differences.len(),
        &differences[..differences.len().min(20)],
        &log[log.len().saturating_sub(3000)..]
    );
    // Restarts that joined the group before being killed restored their tasks.
    let restores = log
        .lines()
        .filter(|l| l.contains("restored from checkpoints") && !l.contains("restored=0"))
        .count();
    assert!(
        restores >= 3,
        "only {restores} restores from a checkpoint:\n{log}"
    );
    for l in log
        .lines()
        .filter(|l| l.contains("restored from") || l.contains("killed at"))
    {
        eprintln!("{l}");
    }
    eprintln!(
        "{restores} restores from checkpoints, {} series compared",
        want.len()
    );
    assert!(want.len() > 100, "compared {} series", want.len());
}
