//! `engaged run` starts in a Kubernetes pod next to its own Service (issue 14, item 6).
//!
//! Kubernetes injects service-link variables into every pod of a namespace: with a
//! Service named `engaged`, `ENGAGED_PORT=tcp://…` and friends. `engaged` reads
//! `ENGAGED_<KEY>` as configuration, and used to stop at start-up with
//! ``unknown field: found `port` ``. The real binary is started here, against
//! librdkafka's mock cluster, with exactly the variables Kubernetes injects; it must
//! start, serve `/healthz`, become ready once events arrive, and name the variables it
//! ignores in its log without their values. A bad value of a real key in the
//! environment still stops it, naming the key and the value.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Cluster, Engaged, clock_events, engaged_topics, now_ms};

const TOPICS: [&str; 4] = ["pageviews", "emails", "purchases", "surveys"];

/// The service links of a Service named `engaged` with port 9898 named `http` (as
/// `kubectl exec POD -- env` lists them; the cluster IP is made up).
const SERVICE_LINKS: [(&str, &str); 8] = [
    ("ENGAGED_SERVICE_HOST", "10.96.14.7"),
    ("ENGAGED_SERVICE_PORT", "9898"),
    ("ENGAGED_SERVICE_PORT_HTTP", "9898"),
    ("ENGAGED_PORT", "tcp://10.96.14.7:9898"),
    ("ENGAGED_PORT_9898_TCP", "tcp://10.96.14.7:9898"),
    ("ENGAGED_PORT_9898_TCP_PROTO", "tcp"),
    ("ENGAGED_PORT_9898_TCP_PORT", "9898"),
    ("ENGAGED_PORT_9898_TCP_ADDR", "10.96.14.7"),
];

fn config(bootstrap: &str) -> String {
    format!(
        "bootstrap_servers = \"{bootstrap}\"\n\
         group_id = \"engaged-k8s\"\n\
         snapshot_interval = \"300ms\"\n\
         idle_timeout = \"2s\"\n\
         [kafka_consumer]\n\
         \"session.timeout.ms\" = \"6000\"\n"
    )
}

/// Polls `path` until `ok` holds for its (status, body); fails after a generous bound.
fn wait_for(e: &mut Engaged, path: &str, ok: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Fails the test at once if the process exited (e.g. at start-up).
        e.metrics();
        if let Some((status, body)) = e.get(path)
            && ok(status, &body)
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered as expected:\n{}",
            e.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_the_service_links_kubernetes_injects_for_a_service_named_engaged() {
    let cluster = Cluster::new(&engaged_topics(&TOPICS, 1));
    let dir = tempfile::tempdir().unwrap();
    let mut env = SERVICE_LINKS.to_vec();
    // The service links are logged at debug level: show them, and only them.
    env.push(("RUST_LOG", "info,engaged::config=debug"));
    let mut e = Engaged::start_with_env("k8s", dir.path(), &config(&cluster.bootstrap), &env);

    let body = wait_for(&mut e, "/healthz", |status, _| status == 200);
    assert_eq!(body, "ok\n");

    // Ready as soon as it has a watermark: a pod would pass its readiness probe too.
    cluster
        .produce_events(&clock_events("k8s", now_ms() - 60_000, 1))
        .await;
    wait_for(&mut e, "/readyz", |status, _| status == 200);

    let log = e.log();
    for (name, value) in SERVICE_LINKS {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("ignoring environment variable {name}:"))),
            "{name} is not named in the log:\n{log}"
        );
        // Values are never logged (a variable's value may be a secret).
        if value.contains("10.96") {
            assert!(
                !log.contains(value),
                "the value of {name} is logged:\n{log}"
            );
        }
    }
    e.sigterm();
    assert!(e.wait_exit(Duration::from_secs(60)).success());
}

#[test]
fn a_bad_value_of_a_real_key_in_the_environment_still_stops_start_up() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engaged"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ENGAGED_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("run")
        .envs(SERVICE_LINKS)
        .env("ENGAGED_RISK_THRESHOLD", "high")
        .env("ENGAGED_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("risk_threshold")
            && stderr.contains("ENGAGED_RISK_THRESHOLD")
            && stderr.contains("\"high\"")
            && stderr.contains("expected f64"),
        "{stderr}"
    );
    assert!(!stderr.contains("unknown field"), "{stderr}");
}
