//! Schema Registry interop through a real broker (issue 12, item 1): Confluent's own
//! Python client (`SchemaRegistryClient` + `AvroSerializer`, confluent-kafka 2.16.1,
//! run by `tests/e2e/registry_producer.py`) registers our PageView schema in a registry
//! started by the test (`tests/support/registry.rs`, Confluent's documented endpoints)
//! and produces Confluent-framed records through Tansu; engaged, configured with the
//! registry's URL and no `schema_ids`, consumes them. Mid-stream the producer evolves
//! its writer schema (a field added with a default), which the registry gives a new
//! id; engaged learns it and keeps decoding. Nothing may be dead-lettered, and the
//! page views on `/metrics` are the hand-counted ones.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use engaged::event::Millis;

use super::support::{self, Engaged, TestRegistry};

const PARTITIONS: i32 = 2;
const MIN: Millis = 60_000;
/// engaged's default `allowed_lateness`.
const LATENESS: Millis = 5 * MIN;

/// One PageView for the Python producer: `{"partition", "key", "event"}`.
fn view(partition: i32, id: &str, visitor: &str, t: Millis) -> String {
    serde_json::json!({
        "partition": partition,
        "key": visitor,
        "event": {
            "event_id": id,
            "event_time": t,
            "visitor_id": visitor,
            "customer_id": null,
            "site": "shop",
            "page": format!("/{id}"),
            "referrer": null,
            "channel": "organic",
        },
    })
    .to_string()
}

/// Runs the Python producer with `lines` on stdin; returns the schema ids it used.
fn python_produce(registry: &str, topic: &str, evolve: bool, lines: &[String]) -> Vec<u64> {
    let env = support::env();
    let mut cmd = Command::new("python3");
    cmd.arg(support::repo_path("tests/e2e/registry_producer.py"))
        .args(["--bootstrap", &env.bootstrap])
        .args(["--registry-url", registry])
        .args(["--topic", topic])
        .arg("--schema")
        .arg(support::repo_path("schemas/PageView.avsc"));
    if evolve {
        cmd.arg("--evolve");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/e2e.sh installs confluent-kafka[avro])");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for l in lines {
            writeln!(stdin, "{l}").expect("write to the producer");
        }
    }
    let out = child.wait_with_output().expect("producer output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "registry_producer.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON summary");
    assert_eq!(summary["produced"], lines.len(), "{summary}");
    summary["schema_ids"]
        .as_array()
        .expect("schema ids")
        .iter()
        .map(|v| v.as_u64().expect("an id"))
        .collect()
}

#[test]
fn confluent_python_serializer_through_a_registry_and_tansu_with_an_evolved_schema() {
    let run = support::unique("e2e-registry");
    let (topic, snapshots, dlq) = (
        format!("{run}-pageviews"),
        format!("{run}-snapshots"),
        format!("{run}-dlq"),
    );
    support::create_topic(&topic, PARTITIONS);
    support::create_topic(&snapshots, 1);
    support::create_topic(&dlq, 1);
    let registry = TestRegistry::start();

    // Phase 1, before engaged starts: 6 views written with schemas/PageView.avsc.
    let t0 = (support::now_ms() - 3 * 60 * MIN) / MIN * MIN;
    let phase1: Vec<String> = (0..6)
        .map(|i| {
            view(
                i % 2,
                &format!("{run}-v1-{i}"),
                &format!("visitor-{i}"),
                t0 + i as i64 * MIN,
            )
        })
        .collect();
    let ids = python_produce(&registry.url, &topic, false, &phase1);
    assert_eq!(ids, [1], "the first registration gets id 1");

    let toml = format!(
        "# Written by tests/e2e/registry.rs.\n\
         [kafka]\n\"session.timeout.ms\" = \"6000\"\n\
         [schema_registry]\nurl = \"{}\"\n",
        registry.url
    );
    let vars = vec![
        (
            "ENGAGED_BOOTSTRAP_SERVERS",
            support::env().bootstrap.clone(),
        ),
        ("ENGAGED_GROUP_ID", run.clone()),
        ("ENGAGED_INPUT_TOPICS", topic.clone()),
        ("ENGAGED_SNAPSHOT_TOPIC", snapshots),
        ("ENGAGED_DEAD_LETTER_TOPIC", dlq),
        ("ENGAGED_SNAPSHOT_INTERVAL", "1s".into()),
        ("ENGAGED_STATISTICS_INTERVAL", "1s".into()),
        ("ENGAGED_WINDOWS", "1h,24h".into()),
    ];
    let mut engaged = Engaged::start("registry-engaged", &toml, &vars);
    support::eventually(
        "engaged to consume phase 1",
        Duration::from_secs(90),
        || {
            let m = engaged.scrape()?;
            let got = m.sum("engaged_events_consumed_total");
            if got == 6.0 {
                Ok(())
            } else {
                Err(format!("consumed {got} of 6"))
            }
        },
    );

    // Phase 2: the producer evolves its schema mid-stream; the registry gives it id 2,
    // which engaged has never seen. 4 more views, then a clock view per partition.
    let clock = (support::now_ms() - MIN) / MIN * MIN;
    let mut phase2: Vec<String> = (0..4)
        .map(|i| {
            view(
                i % 2,
                &format!("{run}-v2-{i}"),
                &format!("visitor-{i}"),
                t0 + (10 + i as i64) * MIN,
            )
        })
        .collect();
    for p in 0..PARTITIONS {
        phase2.push(view(
            p,
            &format!("{run}-clock-{p}"),
            &format!("clock-{p}"),
            clock,
        ));
    }
    let ids = python_produce(&registry.url, &topic, true, &phase2);
    assert_eq!(ids, [2], "the evolved schema is registered under a new id");

    let want_wm = (clock - LATENESS) as f64 / 1000.0;
    let m = support::eventually(
        "engaged to apply every record and reach the final watermark",
        Duration::from_secs(90),
        || {
            let m = engaged.scrape()?;
            let got = m.sum("engaged_events_consumed_total");
            let wm = m.get("engaged_watermark_timestamp_seconds", &[]);
            if got == 12.0 && wm == Some(want_wm) {
                Ok(m)
            } else {
                Err(format!(
                    "consumed {got} of 12, watermark {wm:?} (want {want_wm})"
                ))
            }
        },
    );
    // Every record decoded and applied: none rejected, none dead-lettered.
    assert_eq!(
        m.val("engaged_events_accepted_total", &[("topic", &topic)]),
        12.0
    );
    assert_eq!(
        m.sum("engaged_events_rejected_total"),
        0.0,
        "{}",
        m.relevant("engaged_events")
    );
    assert_eq!(m.val("engaged_dead_letter_records_total", &[]), 0.0);
    // The 10 designed views are in the 24h window; the clock views are after its end.
    assert_eq!(m.val("engaged_web_page_views", &[("window", "24h")]), 10.0);
    let lookups = |o: &str| m.val("engaged_schema_registry_lookups_total", &[("outcome", o)]);
    assert_eq!(
        (
            lookups("found"),
            lookups("not_found"),
            lookups("unusable"),
            lookups("unreachable")
        ),
        (2.0, 0.0, 0.0, 0.0)
    );
    // engaged asked for each id once; the Python client registered twice.
    assert_eq!((registry.lookups_of(1), registry.lookups_of(2)), (1, 1));
    let registrations = registry
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && s.path == format!("/subjects/{topic}-value/versions"))
        .count();
    assert_eq!(registrations, 2, "{:?}", registry.seen());

    engaged.proc.sigterm();
    let status = engaged.proc.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}\n{}",
        engaged.proc.log_tail(40)
    );
}
