//! The Schema Registry client end to end, against librdkafka's mock cluster and a small
//! Confluent-compatible registry started by the test (`support::registry`; issue 12,
//! item 1).
//!
//! Records framed with registry ids decode and count; a writer schema evolved under a
//! new id mid-stream (a field added with a default) decodes too; an id the registry
//! does not know (404) and a registry that does not answer give dead letters naming the
//! id, reason `undecodable`, counted, while later records of the partition are applied;
//! each id is asked for once; a local `schema_ids` entry overrides the registry; basic
//! auth reaches the registry and the password shows nowhere; an https registry is
//! trusted through `ca_file`.
//!
//! `RUST_LOG=engaged=debug cargo test --test registry -- --nocapture` shows the
//! sidecar's logs.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use engaged::config::{RawConfig, RawSchemaRegistry, SchemaRegistryConfig};
use engaged::decode::{DecoderConfig, encode};
use engaged::event::{Event, EventKind, Millis, PageView};
use engaged::registry::RegistryClient;
use rdkafka::message::{Headers, Message};

use support::registry::TestCa;
use support::{
    Cluster, Engaged, Metrics, Rec, Running, TestRegistry, clock_events, close, engaged_topics,
    init_tracing, now_ms, read_topic, settle,
};

const PV: &str = "pageviews";
const DLQ: &str = "engagement.dlq";
const PARTITIONS: i32 = 2;
const MIN: i64 = 60_000;
/// engaged's default `allowed_lateness`.
const LATENESS: i64 = 5 * MIN;

/// `schemas/PageView.avsc` with a field added at the end, with a default: a writer
/// schema evolved as Avro's resolution rules allow.
fn evolved_page_view() -> String {
    let mut schema: serde_json::Value =
        serde_json::from_str(EventKind::PageView.schema_json()).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"name": "user_agent", "type": "string", "default": "unknown"}
        ));
    schema.to_string()
}

/// A record that is not one of our events.
const INVOICE: &str =
    r#"{"type": "record", "name": "Invoice", "fields": [{"name": "n", "type": "long"}]}"#;

fn view(id: &str, visitor: &str, t: Millis) -> Event {
    Event::PageView(PageView {
        event_id: id.into(),
        event_time: t,
        visitor_id: visitor.into(),
        customer_id: None,
        site: "shop".into(),
        page: format!("/{id}"),
        referrer: None,
        channel: None,
    })
}

/// `e` framed with Confluent schema id `id`, on `pageviews`/`partition`.
fn framed(partition: i32, id: u32, e: &Event) -> Rec {
    Rec {
        topic: PV.into(),
        partition,
        key: format!("k{partition}"),
        payload: encode::confluent(id, e),
        headers: vec![],
    }
}

/// `e` written with [`evolved_page_view`] under schema id `id`: our datum, then the
/// added field (an Avro string: its zigzag length, then its bytes).
fn framed_evolved(partition: i32, id: u32, e: &Event, user_agent: &str) -> Rec {
    let mut rec = framed(partition, id, e);
    encode::long(&mut rec.payload, user_agent.len() as i64);
    rec.payload.extend_from_slice(user_agent.as_bytes());
    rec
}

/// Single-object clock views at `t` in both partitions (the watermark becomes `t - 5m`).
fn clocks(tag: &str, t: Millis) -> Vec<Rec> {
    clock_events(tag, t, PARTITIONS)
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::PageView(_)))
        .map(|(p, e)| Rec::event(PV, p, &e))
        .collect()
}

fn raw_config(bootstrap: &str, group: &str, registry: &str) -> RawConfig {
    let mut raw = RawConfig {
        bootstrap_servers: bootstrap.into(),
        group_id: group.into(),
        input_topics: vec![PV.into()],
        listen: "127.0.0.1:0".into(),
        snapshot_interval: "200ms".into(),
        windows: vec!["1h".into(), "24h".into()],
        idle_timeout: "1s".into(),
        shutdown_timeout: "10s".into(),
        statistics_interval: "1s".into(),
        kafka: BTreeMap::from([("session.timeout.ms".into(), "6000".into())]),
        ..RawConfig::default()
    };
    raw.schema_registry.url = registry.into();
    raw
}

/// The dead letters' (`engaged.error`, `engaged.error.reason`) headers; the error is
/// `<reason>: <why>`.
async fn dead_letters(bootstrap: &str) -> Vec<(String, String)> {
    read_topic(bootstrap, DLQ)
        .await
        .iter()
        .map(|m| {
            let h = m.headers().expect("dead letters have headers");
            let get = |key: &str| {
                h.iter()
                    .find(|h| h.key == key)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            (get("engaged.error"), get("engaged.error.reason"))
        })
        .collect()
}

fn lookups(m: &Metrics, outcome: &str) -> f64 {
    m.val(
        "engaged_schema_registry_lookups_total",
        &[("outcome", outcome)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_ids_decode_an_evolved_writer_mid_stream_and_unknown_ids_are_dead_lettered() {
    init_tracing();
    let cluster = Cluster::new(&engaged_topics(&[PV], PARTITIONS));
    let registry = TestRegistry::start();
    let v1 = registry.register("pageviews-value", EventKind::PageView.schema_json());
    let invoice = registry.register("invoices-value", INVOICE);
    assert_eq!((v1, invoice), (1, 2));
    // A local entry for id 2 overrides the registry's Invoice.
    let mut decoder = DecoderConfig::default();
    decoder
        .schema_ids
        .insert(2, EventKind::PageView.schema_json().to_string());

    // Phase 1: views written with v1, one with the local override, and an id the
    // registry does not have (99), in both partitions; a good record after each bad one.
    let t0 = (now_ms() - 3 * 3_600_000) / MIN * MIN;
    let phase1 = vec![
        framed(0, 1, &view("a1", "A", t0)),
        framed(0, 1, &view("a2", "A", t0 + MIN)),
        framed(0, 99, &view("x1", "X", t0 + MIN)),
        framed(0, 99, &view("x2", "X", t0 + MIN)),
        framed(0, 2, &view("a3", "A", t0 + 2 * MIN)),
        framed(1, 1, &view("b1", "B", t0)),
        framed(1, 99, &view("x3", "X", t0 + MIN)),
        framed(1, 1, &view("b2", "B", t0 + 2 * MIN)),
    ];
    cluster.produce(&phase1).await;
    let raw = raw_config(&cluster.bootstrap, "registry-evolve", &registry.url);
    let sidecar = Running::start(raw, &decoder).await;
    settle(sidecar.addr, "phase 1 consumed", |m| {
        m.sum("engaged_events_consumed_total") == 8.0
    })
    .await;

    // Phase 2: the producer evolves its schema; the registry gives it a new id, never
    // seen by engaged before, mid-stream. One more record of the unknown id 99.
    let v2 = registry.register("pageviews-value", &evolved_page_view());
    assert_eq!(v2, 3);
    let mut phase2 = vec![
        framed_evolved(0, 3, &view("a4", "A", t0 + 3 * MIN), "Mozilla/5.0"),
        framed_evolved(1, 3, &view("b3", "B", t0 + 3 * MIN), ""),
        framed(1, 99, &view("x4", "X", t0 + 3 * MIN)),
        framed(0, 1, &view("a5", "A", t0 + 4 * MIN)),
    ];
    let clock = (now_ms() - MIN) / MIN * MIN;
    phase2.extend(clocks("registry", clock));
    cluster.produce(&phase2).await;
    let watermark = (clock - LATENESS) as f64 / 1000.0;
    let m = settle(sidecar.addr, "phase 2 consumed, final watermark", |m| {
        m.sum("engaged_events_consumed_total") == 14.0
            && m.get("engaged_dead_letter_records_total", &[]) == Some(4.0)
            && m.get("engaged_watermark_timestamp_seconds", &[])
                .is_some_and(|w| close(w, watermark))
    })
    .await;

    // a1 a2 a3 a4 a5 b1 b2 b3 and two clocks accepted; x1..x4 dead-lettered.
    assert_eq!(
        m.val("engaged_events_accepted_total", &[("topic", PV)]),
        10.0
    );
    assert_eq!(
        m.val(
            "engaged_events_rejected_total",
            &[("reason", "undecodable")]
        ),
        4.0
    );
    assert_eq!(m.sum("engaged_events_rejected_total"), 4.0);
    // The eight designed views are in the 24h window; the clocks are after its end.
    assert_eq!(
        m.val("engaged_web_page_views", &[("window", "24h")]),
        8.0,
        "{}",
        m.relevant("engaged_web_page_views")
    );
    assert_eq!(
        (
            lookups(&m, "found"),
            lookups(&m, "not_found"),
            lookups(&m, "unusable"),
            lookups(&m, "refused"),
            lookups(&m, "unreachable")
        ),
        (2.0, 1.0, 0.0, 0.0, 0.0)
    );
    // One request per id, the override never asked, nothing else asked.
    assert_eq!(
        (
            registry.lookups_of(1),
            registry.lookups_of(3),
            registry.lookups_of(99),
            registry.lookups_of(2)
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(registry.seen().len(), 3, "{:?}", registry.seen());

    let letters = dead_letters(&cluster.bootstrap).await;
    let want = format!(
        "undecodable: unknown Confluent schema id 99: schema registry {} answered 404 (40403 \
         Schema 99 not found)",
        registry.url
    );
    assert_eq!(letters.len(), 4, "{letters:?}");
    for (error, reason) in &letters {
        assert_eq!(
            (error.as_str(), reason.as_str()),
            (want.as_str(), "undecodable")
        );
    }
    sidecar.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_dead_letters_its_ids_and_the_partition_moves_on() {
    init_tracing();
    let cluster = Cluster::new(&engaged_topics(&[PV], PARTITIONS));
    let registry = TestRegistry::start();
    let id = registry.register("pageviews-value", EventKind::PageView.schema_json());
    registry.set_failing(true);
    let mut raw = raw_config(&cluster.bootstrap, "registry-down", &registry.url);
    raw.schema_registry.max_retries = 2;
    raw.schema_registry.backoff = "50ms".into();
    raw.schema_registry.timeout = "1s".into();
    raw.schema_registry.negative_cache_ttl = "1s".into();
    let t0 = (now_ms() - 3 * 3_600_000) / MIN * MIN;
    // Two framed views the registry cannot be asked about, then a single-object one.
    cluster
        .produce(&[
            framed(0, id, &view("c1", "C", t0)),
            framed(0, id, &view("c2", "C", t0 + MIN)),
            Rec::event(PV, 0, &view("s1", "S", t0 + MIN)),
        ])
        .await;
    let sidecar = Running::start(raw, &DecoderConfig::default()).await;
    let m = settle(sidecar.addr, "the first records consumed", |m| {
        m.sum("engaged_events_consumed_total") == 3.0
            && m.get("engaged_dead_letter_records_total", &[]) == Some(2.0)
    })
    .await;
    assert_eq!(
        m.val("engaged_events_accepted_total", &[("topic", PV)]),
        1.0
    );
    assert_eq!(lookups(&m, "unreachable"), 1.0);
    assert_eq!(registry.lookups_of(id), 3, "1 + max_retries attempts");

    // The registry recovers; once the failure is forgotten (1 s), the id is asked again.
    registry.set_failing(false);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    cluster
        .produce(&[framed(0, id, &view("c3", "C", t0 + 2 * MIN))])
        .await;
    let m = settle(sidecar.addr, "the id learnt after the recovery", |m| {
        m.sum("engaged_events_consumed_total") == 4.0
            && m.val("engaged_events_accepted_total", &[("topic", PV)]) == 2.0
    })
    .await;
    assert_eq!(
        (lookups(&m, "found"), lookups(&m, "unreachable")),
        (1.0, 1.0)
    );
    assert_eq!(registry.lookups_of(id), 4);
    assert_eq!(
        m.val(
            "engaged_events_rejected_total",
            &[("reason", "undecodable")]
        ),
        2.0
    );
    let want = format!(
        "undecodable: unknown Confluent schema id {id}: schema registry {} unreachable after 3 \
         attempt(s): \
         answered 503 (50003 test registry failing)",
        registry.url
    );
    let letters = dead_letters(&cluster.bootstrap).await;
    assert_eq!(
        letters,
        vec![(want.clone(), "undecodable".to_string()); 2],
        "{letters:?}"
    );
    sidecar.stop().await.expect("graceful stop");
}

const USER: &str = "engaged-reader";
const PASSWORD: &str = "S3cr3t-registry-canary";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_reaches_the_registry_and_the_password_is_never_shown() {
    let cluster = Cluster::new(&engaged_topics(&[PV], PARTITIONS));
    let registry = TestRegistry::start();
    // base64("engaged-reader:S3cr3t-registry-canary")
    let header = "Basic ZW5nYWdlZC1yZWFkZXI6UzNjcjN0LXJlZ2lzdHJ5LWNhbmFyeQ==";
    registry.require_basic_auth(header);
    let id = registry.register("pageviews-value", EventKind::PageView.schema_json());
    let t0 = (now_ms() - 3 * 3_600_000) / MIN * MIN;
    cluster
        .produce(&[
            framed(0, id, &view("d1", "D", t0)),
            framed(1, id, &view("d2", "E", t0)),
        ])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "bootstrap_servers = \"{}\"\ngroup_id = \"registry-auth\"\ninput_topics = [\"{PV}\"]\n\
         snapshot_interval = \"300ms\"\n\
         [kafka_consumer]\n\"session.timeout.ms\" = \"6000\"\n\
         [schema_registry]\nurl = \"{}\"\nusername = \"{USER}\"\n",
        cluster.bootstrap, registry.url
    );
    // The password from the environment; the whole log at debug level.
    let env = [
        ("ENGAGED_SCHEMA_REGISTRY__PASSWORD", PASSWORD),
        ("RUST_LOG", "debug"),
    ];
    let mut e = Engaged::start_with_env("registry-auth", dir.path(), &config, &env);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let page = loop {
        let page = e.metrics().unwrap_or_default();
        if support::sum(&page, "engaged_events_accepted_total") == 2.0 {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two records accepted; last /metrics:\n{page}\nlog:\n{}",
            e.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen = registry.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, format!("/schemas/ids/{id}"));
    assert_eq!(seen[0].authorization.as_deref(), Some(header));
    e.sigterm();
    assert!(e.wait_exit(Duration::from_secs(60)).success());
    let log = e.log();
    assert!(
        log.contains("writer schema learnt from the schema registry"),
        "{}",
        e.log_tail()
    );
    for (what, text) in [("/metrics", &page), ("the log", &log)] {
        assert!(!text.contains(PASSWORD), "{what} shows the password");
        assert!(!text.contains(USER), "{what} shows the user name");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_registry_is_trusted_through_the_ca_file() {
    let ca = TestCa::new();
    let registry = TestRegistry::start_tls(&ca);
    assert!(registry.url.starts_with("https://127.0.0.1:"));
    let schema = EventKind::PageView.schema_json();
    let id = registry.register("pageviews-value", schema);
    let raw = RawSchemaRegistry {
        url: registry.url.clone(),
        ca_file: ca.ca.display().to_string(),
        max_retries: 0,
        ..RawSchemaRegistry::default()
    };
    let config = raw.validate().unwrap().expect("a registry");
    let client = RegistryClient::new(&config).unwrap();
    assert_eq!(client.schema(id).await.schema.as_deref(), Ok(schema));
    assert_eq!(registry.lookups_of(id), 1);

    // Without the CA file the test CA is not trusted: no request gets through.
    let untrusted = RegistryClient::new(&SchemaRegistryConfig {
        ca_file: None,
        ..config.clone()
    })
    .unwrap();
    let e = untrusted.schema(id).await.schema.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "schema registry {} unreachable after 1 attempt(s): ",
            registry.url
        )) && e.to_ascii_lowercase().contains("certificate"),
        "{e}"
    );
    assert_eq!(registry.lookups_of(id), 1);

    // A CA file that is not one stops start-up, naming the key and the path.
    let e = RegistryClient::new(&SchemaRegistryConfig {
        ca_file: Some(ca.key.clone()),
        ..config
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!(
            "invalid configuration: `schema_registry.ca_file` = {:?}: a PEM file of CA \
             certificates",
            ca.key.display().to_string()
        )),
        "{e}"
    );
}
