//! Helpers of the end-to-end tests: the environment `scripts/e2e.sh` sets up, child
//! processes that cannot outlive a test, and Kafka (Tansu) helpers. The helpers the
//! end-to-end tests share with the others (HTTP client, Prometheus text parser,
//! generated streams) are in `tests/support/`, re-exported here.
//!
//! Every child process is owned by a [`Proc`] guard: dropping it (also while a test
//! panics) kills the process, and its pid is written to `ENGAGED_E2E_PIDDIR` so that
//! `scripts/e2e.sh` can kill it even if the test binary itself is killed.

#![allow(dead_code)]

#[path = "../support/mod.rs"]
mod shared;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub use shared::{
    Metrics, Rec, TestRegistry, checkpoint_restores, clock_events, free_port, http_get, now_ms,
    routed, summed, windowed,
};

// ---------------------------------------------------------------------------------------
// Environment

/// What `scripts/e2e.sh` provides.
pub struct Env {
    /// `127.0.0.1:PORT` of the Tansu broker.
    pub bootstrap: String,
    /// The `tansu` binary (for `tansu topic create`).
    pub tansu: PathBuf,
    /// Logs, configs and Prometheus data of this run.
    pub workdir: PathBuf,
    /// Where child pids are registered (`ENGAGED_E2E_PIDDIR`), if set.
    pub piddir: Option<PathBuf>,
    /// A private copy of the `engaged` binary (immune to concurrent rebuilds of `target/`).
    pub engaged: PathBuf,
}

fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{var} is not set. The end-to-end tests need a running Tansu broker; run them \
             with scripts/e2e.sh, which starts one and sets ENGAGED_E2E_BOOTSTRAP \
             (127.0.0.1:PORT) and ENGAGED_E2E_TANSU (path of the tansu binary)."
        ),
    }
}

/// The environment, checked once: a missing variable fails the test with a clear message.
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let bootstrap = required("ENGAGED_E2E_BOOTSTRAP");
        let tansu = PathBuf::from(required("ENGAGED_E2E_TANSU"));
        assert!(
            tansu.is_file(),
            "ENGAGED_E2E_TANSU={} is not a file",
            tansu.display()
        );
        let base = match std::env::var_os("ENGAGED_E2E_WORKDIR") {
            Some(d) => PathBuf::from(d),
            None => tempfile::Builder::new()
                .prefix("engaged-e2e")
                .tempdir()
                .expect("temp dir")
                .keep(),
        };
        let workdir = base.join(format!("tests-{}", std::process::id()));
        std::fs::create_dir_all(&workdir).expect("create the work directory");
        let engaged = workdir.join("engaged");
        std::fs::copy(env!("CARGO_BIN_EXE_engaged"), &engaged).expect("copy the engaged binary");
        eprintln!(
            "e2e: broker {bootstrap}, work directory {}",
            workdir.display()
        );
        Env {
            bootstrap,
            tansu,
            workdir,
            piddir: std::env::var_os("ENGAGED_E2E_PIDDIR").map(PathBuf::from),
            engaged,
        }
    })
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "{prefix}-{}-{:x}-{}",
        std::process::id(),
        nanos % 0xffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Retries `f` until it returns `Ok` or `timeout` passes; then panics with the last error.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last state: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// A child process that is killed when dropped (also on panic), with its output in a log file.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    pidfile: Option<PathBuf>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `<workdir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let env = env();
        let log = env.workdir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the log file");
        let err = out.try_clone().expect("clone the log file handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let pidfile = env.piddir.as_ref().map(|d| d.join(child.id().to_string()));
        if let Some(p) = &pidfile {
            let _ = std::fs::write(p, name);
        }
        Proc {
            name: name.to_string(),
            child,
            log,
            pidfile,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Panics (showing the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.try_status() {
            panic!(
                "{} exited early with {s}; its log:\n{}",
                self.name,
                self.log_tail(60)
            );
        }
    }

    /// Sends SIGTERM (`kill -TERM`; no libc binding needed).
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM {} ({}) failed", self.pid(), self.name);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(p) = &self.pidfile {
            let _ = std::fs::remove_file(p);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ({}):\n{}\n---",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Kafka (Tansu)

/// `tansu topic create` (topics must be created explicitly on Tansu).
pub fn create_topic(name: &str, partitions: i32) {
    let env = env();
    let out = Command::new(&env.tansu)
        .args([
            "topic",
            "create",
            "--broker",
            &format!("tcp://{}", env.bootstrap),
            "--partitions",
            &partitions.to_string(),
            // Only explicitly set configs are returned by DescribeConfigs on Tansu.
            "--config",
            "retention.ms=604800000",
            name,
        ])
        .output()
        .expect("run tansu topic create");
    assert!(
        out.status.success(),
        "tansu topic create {name} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

fn client(extra: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &env().bootstrap);
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c
}

/// Produces `records` one at a time, in order (each delivery awaited), with a
/// `FutureProducer`; returns where each landed.
pub fn produce(records: &[Rec]) -> Vec<Delivered> {
    let producer: FutureProducer = client(&[("message.timeout.ms", "30000")])
        .create()
        .expect("create the producer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut out = vec![];
        for r in records {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let record = FutureRecord::to(&r.topic)
                .partition(r.partition)
                .key(&r.key)
                .payload(&r.payload)
                .headers(headers);
            let d = producer
                .send(record, Duration::from_secs(30))
                .await
                .unwrap_or_else(|(e, _)| panic!("produce to {}: {e}", r.topic));
            assert_eq!(d.partition, r.partition);
            out.push(Delivered {
                partition: d.partition,
                offset: d.offset,
            });
        }
        out
    })
}

/// Reads `topic`/`partition` from the beginning until `done(records so far)` or `timeout`.
pub fn consume(
    topic: &str,
    partition: i32,
    timeout: Duration,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = client(&[
        ("group.id", &unique("e2e-reader")),
        ("enable.auto.commit", "false"),
    ])
    .create()
    .expect("create the consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("valid offset");
    consumer.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut out = vec![];
    while !done(&out) {
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} reading {topic}/{partition}: {} record(s) read",
                out.len()
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(e)) => eprintln!("e2e: reading {topic}/{partition}: {e}"),
            None => {}
        }
    }
    out
}

/// The offsets `group` has committed for `partitions` (`None`: nothing committed).
pub fn committed(group: &str, partitions: &[(String, i32)]) -> HashMap<(String, i32), Option<i64>> {
    let consumer: BaseConsumer = client(&[("group.id", group), ("enable.auto.commit", "false")])
        .create()
        .expect("create the consumer");
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("OffsetFetch");
    got.elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            ((e.topic().to_string(), e.partition()), offset)
        })
        .collect()
}

/// The headers of a consumed record, as strings.
pub fn headers(m: &OwnedMessage) -> Vec<(String, String)> {
    use rdkafka::message::Headers;
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// engaged and Prometheus as child processes

/// A running `engaged run`.
pub struct Engaged {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Engaged {
    /// `engaged run --config <toml>` configured otherwise by `ENGAGED_*` variables only
    /// (the caller's own `ENGAGED_*` variables, such as `ENGAGED_E2E_BOOTSTRAP`, are
    /// removed: `engaged` rejects unknown keys).
    pub fn start(name: &str, toml: &str, vars: &[(&str, String)]) -> Engaged {
        let env = env();
        let config = env.workdir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("write the config file");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let mut cmd = Command::new(&env.engaged);
        cmd.arg("run").arg("--config").arg(&config);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ENGAGED_") {
                cmd.env_remove(k);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,engaged=debug");
        }
        // Plain log lines in the log file, without terminal colour codes.
        cmd.env("NO_COLOR", "1");
        cmd.env("ENGAGED_LISTEN", addr.to_string());
        for (k, v) in vars {
            assert!(k.starts_with("ENGAGED_"), "{k}");
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(name, cmd);
        eventually(
            &format!("{name} to serve /healthz"),
            Duration::from_secs(20),
            || {
                proc.assert_running();
                match http_get(addr, "/healthz") {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
        Engaged { proc, addr }
    }

    /// Scrapes `/metrics`, failing the test if the process has died.
    pub fn scrape(&mut self) -> Result<Metrics, String> {
        self.proc.assert_running();
        Metrics::scrape(self.addr)
    }
}

/// One series of an instant query's result: its labels and value.
pub type QueryResult = (serde_json::Map<String, serde_json::Value>, f64);

/// A running Prometheus (Debian package) with its data in the work directory.
pub struct Prometheus {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with `config` (YAML text).
    pub fn start(name: &str, config: &str) -> Prometheus {
        let env = env();
        let dir = env.workdir.join(name);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus data dir");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let bin = std::env::var("ENGAGED_E2E_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=info");
        let mut proc = Proc::spawn(name, cmd);
        eventually(
            &format!("{name} to be ready"),
            Duration::from_secs(30),
            || {
                proc.assert_running();
                match http_get(addr, "/-/ready") {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
        Prometheus { proc, addr }
    }

    /// `GET /api/v1/<path>` as JSON, checking `"status": "success"`.
    pub fn api(&mut self, path: &str) -> Result<serde_json::Value, String> {
        self.proc.assert_running();
        let (status, body) = http_get(self.addr, &format!("/api/v1/{path}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{path}: HTTP {status}: {body}"));
        }
        Ok(v)
    }

    /// An instant query: every result as (labels, value).
    pub fn query(&mut self, q: &str) -> Result<Vec<QueryResult>, String> {
        let v = self.api(&format!("query?query={}", urlencode(q)))?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("no result array: {v}"))?;
        result
            .iter()
            .map(|r| {
                let labels = r["metric"].as_object().cloned().unwrap_or_default();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| format!("bad sample {r}"))?;
                Ok((labels, value))
            })
            .collect()
    }
}

/// `promtool <args>` with `stdin`; returns (success, combined output).
pub fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let bin = std::env::var("ENGAGED_E2E_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin} (install prometheus: scripts/e2e.sh): {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The absolute path of a file of this repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
