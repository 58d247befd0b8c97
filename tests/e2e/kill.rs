//! Exactly-once across crashes (SPEC §5) through a real broker: the Tansu version of
//! `tests/kill.rs`.
//!
//! A generated stream of all four event families (three days of event time from the
//! generator's fixed start, so every run sees the same events) is produced to four
//! co-partitioned input topics in [`KILLS`] batches. While each batch is being produced,
//! `engaged run` (the release binary, as a child process, always with the same group and
//! checkpoint topic) is killed with SIGKILL at a random moment after it was assigned its
//! partitions (restoring, consuming, or checkpointing), and started again for the next
//! batch. Every partition of every input topic ends with a "clock" event at [`END`], so
//! every partition, hence every instance, ends at the watermark `END - allowed_lateness`.
//!
//! Then a last incarnation consumes the rest, and a reference instance (own group, own
//! checkpoint and output topics), started once the whole stream is in the topics and
//! never killed, consumes the same topics. Once both are at the final watermark and
//! their numbers stopped changing, every series with a `window` label on `/metrics`
//! (every windowed numerator, denominator, ratio, percentile, breakdown), plus the open
//! sessions, must be equal in both; and the reference's process counters must add up:
//! `consumed = accepted + rejected`.
//!
//! Why the timing is what it is:
//! * `idle_timeout` is longer than the whole test: a partition that is silent while
//!   engaged is dead, restarting, or waiting for a rare family (surveys) must not stop
//!   holding its task's closing watermark back, or sessions would close depending on
//!   which topic happens to be fetched first (docs/operations.md, "Guarantees"). The
//!   clock events, not idleness, bring every instance to the final watermark.
//! * `engaged_churn_risk_crossings` (windowed) counts upward crossings at the rescoring
//!   sweeps of a fitted churn model, i.e. at wall-clock moments, so it is a function of
//!   the events only if no instance fits a model before it reached the final watermark.
//!   engaged fits its first model 30 s after it starts (then every
//!   `model_refit_interval`, here 1 h), so every killed incarnation is killed before it
//!   is [`MAX_LIFETIME`] old, and the reference starts only after the whole stream was
//!   produced (it reaches the end within seconds).
//! * Tansu: classic group protocol, a group join takes about half of
//!   `session.timeout.ms` (6 s here) and, after a SIGKILL, waits for the dead member's
//!   session to expire; ListOffsets LATEST is wrong, so "consumed everything" is read
//!   from the watermark (the clock events are the last record of every partition), not
//!   from end offsets; nothing is compacted (restore reads the whole checkpoint topic).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use engaged::demo::generator::{DEFAULT_START, Generator, GeneratorConfig, topic_of};
use engaged::event::Millis;

use super::support::{self, Engaged, Metrics, Rec};

const PARTITIONS: i32 = 2;
const FAMILIES: [&str; 4] = ["pageviews", "emails", "purchases", "surveys"];
const MIN: Millis = 60_000;
const HOUR: Millis = 60 * MIN;
const DAY: Millis = 24 * HOUR;
/// Event time of the first generated event: the generator's fixed default start
/// (2026-11-16T00:00:00Z). `max_clock_skew = "0s"`: no wall clock can make it "future".
const START: Millis = DEFAULT_START;
/// Event time of the clock events, after every generated event.
const END: Millis = START + 3 * DAY;
/// engaged's default `allowed_lateness`.
const LATENESS: Millis = 5 * MIN;
/// SIGKILLs while the stream is produced (one per batch).
const KILLS: usize = 12;
/// A kill comes at most this long after the incarnation was assigned its partitions.
/// Restoring takes about 1 s on Tansu and the first checkpoint round comes
/// `checkpoint_interval` (1 s) later, so about two thirds of the incarnations have
/// written checkpoints when they are killed (and the next one restores them), the others
/// die while restoring or before their first checkpoint.
const MAX_KILL_DELAY_MS: u64 = 6_000;
/// No killed incarnation lives this long: engaged fits its first churn model 30 s after
/// it starts (see the module documentation).
const MAX_LIFETIME: Duration = Duration::from_secs(25);
/// How long the two last instances may take to reach the end (a shared, loaded machine).
const SETTLE: Duration = Duration::from_secs(300);
/// Process (and log file) names.
const KILLED: &str = "kill-killed";
const REFERENCE: &str = "kill-reference";

/// The watermark every instance ends at, in seconds (as on `/metrics`).
fn final_watermark() -> f64 {
    (END - LATENESS) as f64 / 1000.0
}

/// The whole input, in production order: the generated stream, then the clocks.
fn stream(run: &str) -> Vec<Rec> {
    let mut g = Generator::new(GeneratorConfig {
        seed: 7,
        start: START,
        customers: 300,
        visitors_per_hour: 60.0,
        ..GeneratorConfig::default()
    });
    let generated = g.advance_to(END);
    assert!(
        generated.iter().all(|e| e.event_time() < END),
        "the clocks must be the last event time"
    );
    support::routed(generated, PARTITIONS)
        .into_iter()
        .chain(support::clock_events("end", END, PARTITIONS))
        .map(|(p, e)| Rec::event(format!("{run}-{}", topic_of(&e)), p, &e))
        .collect()
}

/// The topics and configuration of one consumer group: the killed one or the reference.
struct Group {
    group: String,
    snapshots: String,
    dead_letters: String,
    checkpoints: String,
    customer_risk: String,
}

impl Group {
    fn new(run: &str, role: &str) -> Group {
        let t = |name: &str| format!("{run}-{role}-{name}");
        Group {
            group: t("group"),
            snapshots: t("snapshots"),
            dead_letters: t("dlq"),
            checkpoints: t("checkpoints"),
            customer_risk: t("customer-risk"),
        }
    }

    fn create_topics(&self) {
        support::create_topic(&self.checkpoints, PARTITIONS);
        for t in [&self.snapshots, &self.dead_letters, &self.customer_risk] {
            support::create_topic(t, 1);
        }
    }

    fn toml(&self, inputs: &[String]) -> String {
        let inputs: Vec<String> = inputs.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
            r#"# Written by tests/e2e/kill.rs.
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topics = [{inputs}]
snapshot_topic = "{snapshots}"
dead_letter_topic = "{dead_letters}"
checkpoint_topic = "{checkpoints}"
customer_risk_topic = "{customer_risk}"
windows = ["1h", "24h", "7d"]
snapshot_interval = "500ms"
checkpoint_interval = "1s"
statistics_interval = "1s"
# Longer than the test: no partition ever turns idle (see tests/e2e/kill.rs).
idle_timeout = "10m"
# Fixed event times in the past: never "ahead of the wall clock".
max_clock_skew = "0s"
# Only the first fit (30 s after start) happens during the test.
model_refit_interval = "1h"
shutdown_timeout = "20s"

[kafka_consumer]
# Tansu's group join takes about half the session timeout.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"#,
            bootstrap = support::env().bootstrap,
            group = self.group,
            inputs = inputs.join(", "),
            snapshots = self.snapshots,
            dead_letters = self.dead_letters,
            checkpoints = self.checkpoints,
            customer_risk = self.customer_risk,
        )
    }
}

/// Appends a line to the killed instance's log (between the lines of its incarnations),
/// timestamped like engaged's own lines.
fn mark(line: &str) {
    let path = support::env().workdir.join(format!("{KILLED}.log"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the killed instance's log");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    writeln!(f, "{now} ===== e2e kill test: {line}").expect("write to the log");
    eprintln!("e2e kill: {line}");
}

/// xorshift64: the random kill moments (the seed is printed with every kill).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Waits until `e` owns every input partition; `None` if `until` passes first.
fn wait_assigned(e: &mut Engaged, until: Instant) -> Option<Instant> {
    let all = f64::from(PARTITIONS * FAMILIES.len() as i32);
    loop {
        // `scrape` fails the test if the process died on its own.
        if let Ok(m) = e.scrape()
            && m.get("engaged_assigned_partitions", &[]) == Some(all)
        {
            return Some(Instant::now());
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The series compared: every series with a `window` label, and the open sessions
/// ("now", but a function of the accepted events at the final watermark).
type Windowed = BTreeMap<String, f64>;

fn windowed(m: &Metrics) -> Windowed {
    m.samples
        .iter()
        .filter(|s| {
            s.labels.contains_key("window") || s.name.starts_with("engaged_web_sessions_active")
        })
        .map(|s| {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            (format!("{}{{{}}}", s.name, labels.join(",")), s.value)
        })
        .collect()
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || a == b
}

fn equal(a: &Windowed, b: &Windowed) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && same(*va, *vb))
}

/// One scrape of an instance that should reach the end of the stream: its metrics and
/// windowed series once it is at the final watermark (with `consumed` records consumed,
/// if given) and they did not change since the previous scrape (`previous`).
fn at_end(
    e: &mut Engaged,
    previous: &mut Option<Windowed>,
    consumed: Option<f64>,
) -> Result<(Metrics, Windowed), String> {
    let m = e.scrape()?;
    let now = windowed(&m);
    let stable = !now.is_empty() && previous.as_ref().is_some_and(|p| equal(p, &now));
    *previous = Some(now.clone());
    let watermark = m.get("engaged_watermark_timestamp_seconds", &[]);
    let got = m.sum("engaged_events_consumed_total");
    let state = format!(
        "watermark {watermark:?} (want {}), consumed {got}{}, {} series",
        final_watermark(),
        consumed.map(|c| format!(" of {c}")).unwrap_or_default(),
        now.len()
    );
    if watermark == Some(final_watermark()) && consumed.is_none_or(|c| c == got) && stable {
        Ok((m, now))
    } else {
        Err(state)
    }
}

/// The lines of the killed instance's log that tell the story of its restarts.
fn restart_history(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            [
                "===== e2e kill test",
                "subscribing",
                " assigned",
                "revoked",
                "tasks after assignment",
                "restored from checkpoints",
                "stopping",
                "WARN",
                "ERROR",
            ]
            .iter()
            .any(|p| l.contains(p))
        })
        .collect();
    lines[lines.len().saturating_sub(200)..].join("\n")
}

#[test]
fn killed_twelve_times_through_tansu_counts_every_event_exactly_once() {
    let started = Instant::now();
    let run = support::unique("e2e-kill");
    let inputs: Vec<String> = FAMILIES.iter().map(|f| format!("{run}-{f}")).collect();
    for t in &inputs {
        support::create_topic(t, PARTITIONS);
    }
    let (killed, reference) = (Group::new(&run, "killed"), Group::new(&run, "reference"));
    killed.create_topics();
    reference.create_topics();
    let (killed_toml, reference_toml) = (killed.toml(&inputs), reference.toml(&inputs));

    let records = stream(&run);
    let total = records.len();
    assert!(total > 5_000, "{total} records");
    let mut per_partition: BTreeMap<(String, i32), u64> = BTreeMap::new();
    for r in &records {
        *per_partition
            .entry((r.topic.clone(), r.partition))
            .or_default() += 1;
    }
    assert_eq!(
        per_partition.len(),
        inputs.len() * PARTITIONS as usize,
        "every input partition has records: {per_partition:?}"
    );
    eprintln!("e2e kill: {total} records, per partition {per_partition:?}");

    // The stream in batches, one per incarnation; each is killed while its batch is
    // being produced (and the next one starts once the batch is in).
    let seed = support::now_ms() as u64 | 1;
    let mut rng = Rng(seed);
    let mut delivered = vec![];
    let mut kills_after_assignment = 0;
    for (i, batch) in records.chunks(total.div_ceil(KILLS)).enumerate() {
        let n = i + 1;
        mark(&format!(
            "start #{n}: batch of {} records follows (kill seed {seed})",
            batch.len()
        ));
        let spawned = Instant::now();
        let mut e = Engaged::start(KILLED, &killed_toml, &[]);
        let until = spawned + MAX_LIFETIME - Duration::from_millis(MAX_KILL_DELAY_MS);
        let assigned = wait_assigned(&mut e, until);
        let delay = Duration::from_millis(rng.next() % MAX_KILL_DELAY_MS);
        let landed = std::thread::scope(|s| {
            let producing = s.spawn(|| support::produce(batch));
            std::thread::sleep(delay);
            e.proc.assert_running();
            let lived = spawned.elapsed();
            drop(e); // SIGKILL (the guard's drop), and wait for the exit.
            let when = match assigned {
                Some(at) => {
                    kills_after_assignment += 1;
                    format!(
                        "{delay:?} after its assignment (assigned {:?} after start)",
                        at - spawned
                    )
                }
                None => format!("before its assignment, {lived:?} after start"),
            };
            mark(&format!(
                "SIGKILL #{n} {when}, while producing, {lived:?} after start"
            ));
            producing.join().expect("the producer thread")
        });
        delivered.extend(landed);
        eprintln!("e2e kill: {:?}: batch #{n} produced", started.elapsed());
    }
    assert_eq!(delivered.len(), total);
    // Offsets per partition: 0, 1, 2, … in production order (nothing lost or repeated).
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (r, d) in records.iter().zip(&delivered) {
        let o = next.entry((r.topic.clone(), r.partition)).or_default();
        assert_eq!(
            d.offset, *o,
            "offset of a record in {}/{}",
            r.topic, r.partition
        );
        *o += 1;
    }

    // The rest of the stream: the last incarnation, and the reference from scratch.
    mark("start of the last incarnation (never killed)");
    let mut last = Engaged::start(KILLED, &killed_toml, &[]);
    let mut clean = Engaged::start(REFERENCE, &reference_toml, &[]);
    let (mut previous_clean, mut previous_last) = (None, None);
    let ((clean_metrics, want), (_, got)) = support::eventually(
        "the reference and the last incarnation to reach the final watermark and settle",
        SETTLE,
        || {
            std::thread::sleep(Duration::from_millis(700));
            let c = at_end(&mut clean, &mut previous_clean, Some(total as f64));
            let l = at_end(&mut last, &mut previous_last, None);
            match (c, l) {
                (Ok(c), Ok(l)) => Ok((c, l)),
                (c, l) => Err(format!(
                    "reference: {}; killed: {}",
                    c.err().unwrap_or_else(|| "settled".into()),
                    l.err().unwrap_or_else(|| "settled".into())
                )),
            }
        },
    );
    eprintln!("e2e kill: {:?}: both settled", started.elapsed());
    let log = std::fs::read_to_string(support::env().workdir.join(format!("{KILLED}.log")))
        .unwrap_or_default();

    // Every windowed series equal.
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter_map(|k| match (want.get(k), got.get(k)) {
            (Some(w), Some(g)) if same(*w, *g) => None,
            (Some(w), Some(g)) => Some(format!(
                "{k}: reference {w}, killed {g} (killed - reference = {})",
                g - w
            )),
            (Some(w), None) => Some(format!("{k}: reference {w}, absent after the kills")),
            (None, Some(g)) => Some(format!("{k}: killed {g}, absent in the reference")),
            (None, None) => None,
        })
        .collect();
    let hint = if differences
        .iter()
        .any(|d| d.starts_with("engaged_churn_risk_crossings"))
    {
        let fits = |log: &str| log.matches("churn model fitted").count();
        let clean_log = clean.proc.log();
        format!(
            "\nrisk crossings are counted at wall-clock sweeps of a fitted churn model: \
             \"churn model fitted\" {} time(s) in {KILLED}.log, {} in {REFERENCE}.log \
             (none is expected before an instance reaches the end)",
            fits(&log),
            fits(&clean_log)
        )
    } else {
        String::new()
    };
    assert!(
        differences.is_empty(),
        "{} of {} series differ after {KILLS} kills:\n{}{hint}\n\nrestarts in {}:\n{}",
        differences.len(),
        want.len(),
        differences.join("\n"),
        support::env().workdir.display(),
        restart_history(&log)
    );
    assert!(want.len() > 100, "compared only {} series", want.len());

    // The reference, one uninterrupted process, accounts for every record once.
    let consumed = clean_metrics.sum("engaged_events_consumed_total");
    let accepted = clean_metrics.sum("engaged_events_accepted_total");
    let rejected = clean_metrics.sum("engaged_events_rejected_total");
    assert_eq!(
        consumed, total as f64,
        "the reference consumed every record"
    );
    assert_eq!(
        consumed,
        accepted + rejected,
        "reference: consumed {consumed} = accepted {accepted} + rejected {rejected}"
    );

    // Restarts that got their partitions restored their tasks from checkpoints.
    let restores = support::checkpoint_restores(&log).len();
    assert!(
        restores >= 3,
        "only {restores} restores from a checkpoint:\n{}",
        restart_history(&log)
    );
    last.proc.assert_running();
    clean.proc.assert_running();
    eprintln!(
        "e2e kill: {} series equal after {KILLS} kills ({kills_after_assignment} after the \
         assignment), {restores} restores from checkpoints; reference consumed {consumed} = \
         accepted {accepted} + rejected {rejected}; {:?} in all",
        want.len(),
        started.elapsed()
    );
}
