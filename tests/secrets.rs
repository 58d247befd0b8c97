//! Secrets and ids (issue 12, item 4).
//!
//! A librdkafka property's value may come from the configuration file, from an
//! `ENGAGED_<TABLE>__<PROPERTY>` variable (`__` for each `.` of the name) or from a
//! file named by a `<property>_file` key. Whatever the source, it reaches librdkafka,
//! and no secret is ever shown: not in start-up errors, not in the log (engaged's and
//! librdkafka's, at debug level), not on `/metrics`, the live page or the probes. No
//! input id (customer, visitor, message, order, event) is shown on `/metrics` or the
//! live page either, nor logged at info level or above.
//!
//! The secrets are recognisable canaries set on a sidecar that consumes from
//! librdkafka's mock cluster with `security.protocol` left at `plaintext` (the mock
//! speaks no SASL, and this build's librdkafka has no OpenSSL): librdkafka keeps them
//! unused, but holds them in its configuration, and its own configuration dump
//! (`debug = "conf"`) is in the log.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use engaged::config::kafka::{Role, client_config_for};
use engaged::config::{EnvVars, RawConfig};
use engaged::event::{
    EmailEvent, EmailEventType, Event, Millis, PageView, Purchase, PurchaseType, SurveyKind,
    SurveyResponse,
};

use support::{Cluster, Engaged, Metrics, clock_events, engaged_topics, now_ms, routed};

const TOPICS: [&str; 4] = ["pageviews", "emails", "purchases", "surveys"];
const PARTITIONS: i32 = 2;

/// Secrets, one per source: the file, a variable, a secret file, a secret file named
/// by a variable.
const INLINE_SECRET: &str = "S3cr3t-canary-inline";
const INLINE_USER: &str = "S3cr3t-canary-username";
const ENV_SECRET: &str = "S3cr3t-canary-variable";
const FILE_SECRET: &str = "S3cr3t-canary-file";
const ENV_FILE_SECRET: &str = "S3cr3t-canary-named-by-variable";
const SECRETS: [&str; 5] = [
    INLINE_SECRET,
    INLINE_USER,
    ENV_SECRET,
    FILE_SECRET,
    ENV_FILE_SECRET,
];
/// What every secret above contains.
const SECRET_MARK: &str = "S3cr3t-canary";
/// What every input id contains.
const ID_MARK: &str = "idcanary";

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

fn vars(pairs: &[(&str, &str)]) -> EnvVars {
    EnvVars::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn secrets_from_a_file_or_a_variable_reach_librdkafka_and_no_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "kafka-password", &format!("{FILE_SECRET}\n"));
    let env_file = write(dir.path(), "username", &format!("{ENV_FILE_SECRET}\r\n"));
    let toml = format!(
        "[kafka]\n\"sasl.password_file\" = \"{file}\"\n\"sasl.username\" = \"{INLINE_USER}\"\n\
         [kafka_consumer]\n\"session.timeout.ms\" = \"6000\"\n"
    );
    let config_file = write(dir.path(), "engaged.toml", &toml);
    let env = vars(&[
        ("ENGAGED_KAFKA_PRODUCER__SASL__PASSWORD", ENV_SECRET),
        ("ENGAGED_KAFKA_CONSUMER__SASL__USERNAME_FILE", &env_file),
    ]);
    let no_flags = BTreeMap::<String, String>::new();
    let raw = RawConfig::load_with_env(Some(Path::new(&config_file)), env, &no_flags).unwrap();
    let config = raw.validate().unwrap();

    let consumer = client_config_for(&config, Role::Consumer);
    let producer = client_config_for(&config, Role::Producer);
    let admin = client_config_for(&config, Role::Admin);
    // From the file named by `sasl.password_file`, without its line break.
    assert_eq!(consumer.get("sasl.password"), Some(FILE_SECRET));
    assert_eq!(admin.get("sasl.password"), Some(FILE_SECRET));
    // From `ENGAGED_KAFKA_PRODUCER__SASL__PASSWORD`, over `[kafka]`.
    assert_eq!(producer.get("sasl.password"), Some(ENV_SECRET));
    // From the file named by `ENGAGED_KAFKA_CONSUMER__SASL__USERNAME_FILE`, over
    // `[kafka]`'s own.
    assert_eq!(consumer.get("sasl.username"), Some(ENV_FILE_SECRET));
    assert_eq!(producer.get("sasl.username"), Some(INLINE_USER));
    assert_eq!(admin.get("sasl.username"), Some(INLINE_USER));
    assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
    assert_eq!(consumer.get("bootstrap.servers"), Some("localhost:9092"));
    for c in [&consumer, &producer, &admin] {
        assert!(
            c.config_map().keys().all(|k| !k.ends_with("_file")),
            "{c:?}"
        );
        // librdkafka accepts the whole configuration.
        c.create_native_config().unwrap();
    }
    // No `Debug` form of the configuration shows them.
    for debug in [format!("{raw:?}"), format!("{config:?}")] {
        assert!(!debug.contains(SECRET_MARK), "{debug}");
    }
    // rdkafka's `Debug` of a `ClientConfig` hides passwords, but not every property
    // librdkafka treats as sensitive (`sasl.username` shows): engaged never prints one.
    for c in [&consumer, &producer, &admin] {
        let debug = format!("{c:?}");
        for secret in [FILE_SECRET, ENV_SECRET] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
    assert!(format!("{config:?}").contains("\"session.timeout.ms\": \"6000\""));
}

/// `engaged run` with `config` and `env`, expected to stop at start-up: its stderr.
fn start_up_error(name: &str, config: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("bootstrap_servers = \"127.0.0.1:1\"\n{config}");
    let mut e = Engaged::start_with_env(name, dir.path(), &config, env);
    let status = e.wait_exit(Duration::from_secs(30));
    let log = e.log();
    assert_eq!(status.code(), Some(2), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{log}");
    assert!(!log.contains(SECRET_MARK), "a secret is shown:\n{log}");
    errors[0].to_string()
}

#[test]
fn secrets_that_cannot_be_used_stop_start_up_with_one_line_that_never_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "password", &format!("{FILE_SECRET}\n"));
    let missing = dir.path().join("no-such-secret").display().to_string();

    let e = start_up_error(
        "missing-file",
        &format!("[kafka_consumer]\n\"sasl.password_file\" = \"{missing}\"\n"),
        &[],
    );
    assert!(
        e.contains(&format!(
            "`kafka_consumer.sasl.password_file` = {missing:?}"
        )) && e.contains("a readable file holding the value of `sasl.password`"),
        "{e}"
    );
    let e = start_up_error(
        "missing-file-env",
        "",
        &[("ENGAGED_KAFKA__SASL__PASSWORD_FILE", &missing)],
    );
    assert!(
        e.contains(&format!("`kafka.sasl.password_file` = {missing:?}")),
        "{e}"
    );
    // Set twice, from a variable and from a file.
    let e = start_up_error(
        "twice",
        &format!("[kafka]\n\"sasl.password_file\" = \"{file}\"\n"),
        &[("ENGAGED_KAFKA__SASL__PASSWORD", ENV_SECRET)],
    );
    assert!(
        e.contains("either `kafka.sasl.password` or `kafka.sasl.password_file`"),
        "{e}"
    );
    // Refused by librdkafka: this build has no OpenSSL.
    let e = start_up_error(
        "no-openssl",
        "",
        &[("ENGAGED_KAFKA__SSL__KEY__PASSWORD", ENV_SECRET)],
    );
    assert!(
        e.contains("`kafka.ssl.key.password` = (hidden)")
            && e.contains("OpenSSL not available at build time"),
        "{e}"
    );
    // Refused by librdkafka, whose message quotes the value.
    let e = start_up_error(
        "refused",
        &format!("[kafka_producer]\n\"acks_file\" = \"{file}\"\n"),
        &[],
    );
    assert!(
        e.contains("`kafka_producer.acks_file`") && e.contains("librdkafka refuses it"),
        "{e}"
    );
    // Not TOML, on the line of a secret.
    let e = start_up_error(
        "not-toml",
        &format!("[kafka]\n\"sasl.password\" = \"{INLINE_SECRET}\n"),
        &[],
    );
    assert!(e.contains("TOML parse error"), "{e}");
}

// ---------------------------------------------------------------------------
// A running sidecar with secrets, fed events whose ids all contain `ID_MARK`.

fn customer(i: usize) -> String {
    format!("{ID_MARK}-customer-{i}")
}

/// Every family, every id with `ID_MARK`; plus a duplicate and a purchase in another
/// currency (rejected: dead letters whose reasons are on `/metrics`).
fn events(t0: Millis) -> Vec<Event> {
    let min = 60_000;
    let mut out = vec![];
    for i in 0..12 {
        let t = t0 + i as Millis * min;
        let event_id = |what: &str, k: usize| format!("{ID_MARK}-event-{what}-{i}-{k}");
        for k in 0..3 {
            out.push(Event::PageView(PageView {
                event_id: event_id("pv", k),
                event_time: t + k as Millis * 2 * min,
                visitor_id: format!("{ID_MARK}-visitor-{i}"),
                customer_id: (i % 2 == 0).then(|| customer(i)),
                site: "shop.example".into(),
                page: "/products".into(),
                referrer: None,
                channel: Some("email".into()),
            }));
        }
        for (k, kind) in [
            EmailEventType::Sent,
            EmailEventType::Delivered,
            EmailEventType::Opened,
            EmailEventType::Clicked,
        ]
        .into_iter()
        .enumerate()
        {
            out.push(Event::Email(EmailEvent {
                event_id: event_id("email", k),
                event_time: t + k as Millis * min,
                customer_id: customer(i),
                campaign_id: "spring".into(),
                message_id: format!("{ID_MARK}-message-{i}"),
                kind,
                url: None,
            }));
        }
        out.push(Event::Purchase(Purchase {
            event_id: event_id("purchase", 0),
            event_time: t + 5 * min,
            customer_id: customer(i),
            order_id: format!("{ID_MARK}-order-{i}"),
            kind: PurchaseType::Order,
            amount_minor: 1_999,
            currency: "EUR".into(),
            cost_minor: Some(1_200),
            items: 1,
            campaign_id: Some("spring".into()),
        }));
        out.push(Event::Survey(SurveyResponse {
            event_id: event_id("survey", 0),
            event_time: t + 6 * min,
            customer_id: Some(customer(i)),
            survey_id: "q1".into(),
            kind: SurveyKind::Nps,
            score: (i % 11) as i32,
            comment: None,
        }));
    }
    // Rejected: a duplicate of the latest event (an earlier one would be late), and a
    // currency that is not the configured one.
    out.push(out[out.len() - 1].clone());
    out.push(Event::Purchase(Purchase {
        event_id: format!("{ID_MARK}-event-usd"),
        event_time: t0,
        customer_id: customer(0),
        order_id: format!("{ID_MARK}-order-usd"),
        kind: PurchaseType::Order,
        amount_minor: 500,
        currency: "USD".into(),
        cost_minor: None,
        items: 1,
        campaign_id: None,
    }));
    out
}

/// Polls `e` until `/metrics` satisfies `ok`; fails after a generous bound (or at once
/// if the process exited).
fn wait_metrics(e: &mut Engaged, what: &str, ok: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(text) = e.metrics()
            && let Ok(m) = Metrics::parse(&text)
            && ok(&m)
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached:\n{}",
            e.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_and_no_input_id_reaches_metrics_the_live_page_or_the_log() {
    let cluster = Cluster::new(&engaged_topics(&TOPICS, PARTITIONS));
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "consumer-password", &format!("{FILE_SECRET}\n"));
    let env_file = write(dir.path(), "username", &format!("{ENV_FILE_SECRET}\n"));
    // librdkafka's own configuration dump (`debug = "conf"`) goes to the log too.
    let config = format!(
        "bootstrap_servers = \"{}\"\n\
         group_id = \"engaged-secrets\"\n\
         snapshot_interval = \"300ms\"\n\
         idle_timeout = \"2s\"\n\
         [kafka]\n\
         \"sasl.password\" = \"{INLINE_SECRET}\"\n\
         \"sasl.username\" = \"{INLINE_USER}\"\n\
         debug = \"conf\"\n\
         [kafka_consumer]\n\
         \"session.timeout.ms\" = \"6000\"\n\
         \"sasl.password_file\" = \"{file}\"\n",
        cluster.bootstrap
    );
    let env = [
        ("ENGAGED_KAFKA_PRODUCER__SASL__PASSWORD", ENV_SECRET),
        ("ENGAGED_KAFKA_PRODUCER__SASL__USERNAME_FILE", &env_file),
        ("RUST_LOG", "debug"),
    ];
    let mut e = Engaged::start_with_env("secrets", dir.path(), &config, &env);

    let t0 = (now_ms() - 3 * 3_600_000) / 60_000 * 60_000;
    let mut records = routed(events(t0), PARTITIONS);
    records.extend(clock_events("secrets", now_ms() - 60_000, PARTITIONS));
    let sent = records.len() as f64;
    cluster.produce_events(&records).await;
    let m = wait_metrics(&mut e, "every record consumed", |m| {
        m.sum("engaged_events_consumed_total") >= sent && m.sum("engaged_snapshot_sequence") > 0.0
    });
    let rejected = |reason: &str| -> f64 {
        m.series("engaged_events_rejected_total")
            .iter()
            .filter(|s| s.labels.get("reason").map(String::as_str) == Some(reason))
            .map(|s| s.value)
            .sum()
    };
    assert!(
        rejected("duplicate") == 1.0 && rejected("invalid") == 1.0,
        "the duplicate and the USD purchase are rejected:\n{}",
        m.relevant("engaged_events_rejected_total")
    );
    // Two more rounds, so that the pages show the events.
    std::thread::sleep(Duration::from_millis(800));

    let mut pages = vec![];
    for path in [
        "/metrics",
        "/",
        "/?window=5m",
        "/?window=1h",
        "/?window=24h",
        "/?window=30d",
        "/readyz",
        "/healthz",
    ] {
        let (status, body) = e
            .get(path)
            .unwrap_or_else(|| panic!("GET {path}: no answer"));
        assert!(status == 200 || path == "/readyz", "GET {path}: {status}");
        pages.push((path, body));
    }
    assert!(
        pages[1].1.contains("<html") && pages[1].1.len() > 1_000,
        "the live page:\n{}",
        pages[1].1
    );
    for (path, body) in &pages {
        for secret in SECRETS {
            assert!(!body.contains(secret), "GET {path} shows {secret}:\n{body}");
        }
        let ids: Vec<&str> = body.lines().filter(|l| l.contains(ID_MARK)).collect();
        assert!(ids.is_empty(), "GET {path} shows input ids:\n{ids:#?}");
    }

    e.sigterm();
    assert!(e.wait_exit(Duration::from_secs(60)).success());
    let log = e.log();
    // The secrets reached librdkafka, which dumped its configuration, redacted.
    for property in ["sasl.password", "sasl.username"] {
        assert!(
            log.contains(&format!("{property} = [redacted]")),
            "no redacted `{property}` in librdkafka's configuration dump:\n{}",
            e.log_tail()
        );
    }
    assert!(!log.contains(SECRET_MARK), "a secret is in the log");
    // No input id at info level or above. At debug level, a rejected record's reason
    // may name its event id (`event_id "…" was already accepted`), as its dead letter
    // does: those lines only.
    let shown: Vec<&str> = log.lines().filter(|l| l.contains(ID_MARK)).collect();
    let above_debug: Vec<&&str> = shown
        .iter()
        .filter(|l| !(l.contains(" DEBUG ") && l.contains("rejected")))
        .collect();
    assert!(
        above_debug.is_empty(),
        "input ids in the log:\n{above_debug:#?}"
    );
}
