//! Exactly-once across crashes (SPEC §5), against librdkafka's mock cluster:
//! `engaged run` processes is killed with SIGKILL at random moments, ten times,
//! while a generated stream of all four families is produced; every windowed
//! number it ends with equals that of a run that was never killed.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engaged::demo::generator::{Generator, GeneratorConfig};
use engaged::event::Event;

use support::{Cluster, Engaged, checkpoint_restores, engaged_topics, routed, value, windowed};

const PARTITIONS: i32 = 2;
const TOPICS: [&str; 4] = ["pageviews", "emails", "purchases", "surveys"];

/// A mock cluster with the input topics and engaged's output topics.
fn mock_cluster() -> Cluster {
    Cluster::with_producer(&[("linger.ms", "5")], &engaged_topics(&TOPICS, PARTITIONS))
}

/// The configuration of every `engaged run` (`listen` aside).
fn config(bootstrap: &str) -> String {
    format!(
        "bootstrap_servers = \"{bootstrap}\"\n\
         group_id = \"engaged-kill\"\n\
         windows = [\"1h\", \"24h\", \"7d\"]\n\
         snapshot_interval = \"300ms\"\n\
         checkpoint_interval = \"400ms\"\n\
         idle_timeout = \"2s\"\n\
         statistics_interval = \"1s\"\n\
         [kafka_consumer]\n\
         \"session.timeout.ms\" = \"2500\"\n\
         \"heartbeat.interval.ms\" = \"500\"\n"
    )
}

/// Waits until the instance has consumed everything and its numbers stop changing.
fn settled(e: &mut Engaged, expect_watermark: f64) -> BTreeMap<String, String> {
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

fn events() -> (Vec<(i32, Event)>, f64) {
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
    (
        routed(events, PARTITIONS),
        (max - 5 * 60_000) as f64 / 1000.0,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ten_times_counts_every_event_exactly_once() {
    let (events, final_watermark) = events();
    assert!(events.len() > 5_000, "{} events", events.len());
    let dir = tempfile::tempdir().unwrap();

    // Reference: one run that is never killed.
    let reference = mock_cluster();
    reference.produce_events(&events).await;
    let clean_dir = dir.path().join("clean");
    std::fs::create_dir_all(&clean_dir).unwrap();
    let mut clean = Engaged::start("clean", &clean_dir, &config(&reference.bootstrap));
    let want = tokio::task::spawn_blocking(move || settled(&mut clean, final_watermark))
        .await
        .unwrap();

    // The same stream in ten batches; engaged is killed with SIGKILL after each.
    let cluster = mock_cluster();
    let killed_dir = dir.path().join("killed");
    std::fs::create_dir_all(&killed_dir).unwrap();
    let mut seed = 0x9E3779B97F4A7C15u64;
    let batches: Vec<&[(i32, Event)]> = events.chunks(events.len().div_ceil(10)).collect();
    for batch in &batches {
        let mut e = Engaged::start("killed", &killed_dir, &config(&cluster.bootstrap));
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
        tokio::join!(cluster.produce_events(batch), kill);
    }
    let mut last = Engaged::start("killed", &killed_dir, &config(&cluster.bootstrap));
    let got = tokio::task::spawn_blocking(move || settled(&mut last, final_watermark))
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
    let log = std::fs::read_to_string(killed_dir.join("killed.log")).unwrap_or_default();
    assert!(
        differences.is_empty(),
        "{} differences, e.g. {:#?}\nlog tail:\n{}",
        differences.len(),
        &differences[..differences.len().min(20)],
        &log[log.len().saturating_sub(3000)..]
    );
    // Restarts that joined the group before being killed restored their tasks.
    let restores = checkpoint_restores(&log).len();
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
