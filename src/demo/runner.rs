//! `engaged demo`: an in-process Kafka (librdkafka mock cluster), the traffic generator and the full sidecar.
//!
//! Event time starts in the past; the first three days are produced at once
//! (history for repeat buyers and churn), then event time runs `speed` (the time
//! scale) times faster than the wall clock and never passes it, so windows fill
//! within seconds and the clock-skew check stays on. The four families use the
//! three wire formats (page views and surveys single-object, emails
//! Confluent-framed with schema id 1, purchases plain datums), and a garbage
//! record now and then shows the dead-letter path.
//!
//! Scenarios ([`Scenario`], [`plan`]): `steady` starts four days in the past and
//! has no event of note. In `churn-spike`, `spike_after` (wall time) after the
//! start a cohort stops all activity at once: about a fifth of the customers, and
//! [`REGULARS`] regular buyers (an ORDER every [`REGULAR_EVERY_MS`]) whose silence
//! becomes unusual about a day of event time later, so that their churn risk
//! crosses `risk_threshold` together and `engaged_churn_risk_crossings` jumps far
//! above its baseline (a few minutes of wall time after the spike at the default
//! time scale). Event time starts far enough in the past to run at the time scale
//! through all of it, and the churn model is fitted once before the spike and not
//! again until the scenario is over ([`Plan::refit_interval`]): crossings on a new
//! model's first sweep are not counted (they are the refit's doing, not the
//! customers'), and a refit while the cohort falls silent would move the regulars
//! across the threshold in such a sweep, uncounted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::generator::{Generator, GeneratorConfig, Regulars, partition_key, topic_of};
use crate::app::{AppError, Sidecar};
use crate::config::RawConfig;
use crate::decode::{DecoderConfig, encode};
use crate::event::{Event, EventKind, Millis};
use crate::telemetry::{CollectTotal, Telemetry};

/// What the demo's traffic does (`engaged demo --scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scenario {
    /// Customers come and go at their own pace.
    #[default]
    Steady,
    /// `spike_after` into the demo, a cohort stops all activity at once; their churn
    /// risk crosses the threshold together within about a day of event time.
    ChurnSpike,
}

impl Scenario {
    pub const ALL: [Scenario; 2] = [Scenario::Steady, Scenario::ChurnSpike];

    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::ChurnSpike => "churn-spike",
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown scenario {s:?}: `steady` or `churn-spike`"))
    }
}

/// Demo settings (flags of `engaged demo`).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    /// Event-time seconds per wall-clock second (the time scale).
    pub speed: f64,
    pub partitions: i32,
    /// Print the live table this often (`None`: never).
    pub table_every: Option<Duration>,
    /// Stop after this long (`None`: until Ctrl-C).
    pub duration: Option<Duration>,
    pub seed: u64,
    pub scenario: Scenario,
    /// Wall time from the start to the churn spike (`churn-spike`).
    pub spike_after: Duration,
}

pub const DEMO_TOPICS: [&str; 4] = ["pageviews", "emails", "purchases", "surveys"];

fn encode_for_topic(e: &Event) -> Vec<u8> {
    match e {
        Event::PageView(_) | Event::Survey(_) => encode::single_object(e),
        Event::Email(_) => encode::confluent(1, e),
        Event::Purchase(_) => encode::datum(e),
    }
}

/// The decoder settings matching [`encode_for_topic`].
pub fn demo_decoder_config() -> DecoderConfig {
    let mut d = DecoderConfig::default();
    d.schema_ids
        .insert(1, EventKind::EmailEvent.schema_json().to_string());
    d.topic_schemas.insert(
        "purchases".into(),
        EventKind::Purchase.schema_json().to_string(),
    );
    d
}

#[allow(unsafe_code)]
fn no_initial_rebalance_delay(producer: &ThreadedProducer<DefaultProducerContext>) {
    // SAFETY: the pointer comes from a live client that owns the mock cluster
    // (`test.mock.num.brokers`); the call only sets a mock-cluster option. The
    // Rust wrapper does not expose it, and without it every group join waits 3 s.
    unsafe {
        let mc = rdkafka_sys::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
        if !mc.is_null() {
            rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, 0);
        }
    }
}

fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

const HOUR_MS: Millis = 3_600_000;
const DAY_MS: Millis = 24 * HOUR_MS;

/// Event time produced at once when the demo starts, so that repeat buyers,
/// refunds and churn have some history to show within the first minute.
pub const WARMUP_MS: Millis = 3 * DAY_MS;

/// Regular buyers of the `churn-spike` scenario, who all stop at the spike.
pub const REGULARS: u32 = 400;
/// Mean time between two ORDERs of a regular (event time).
pub const REGULAR_EVERY_MS: Millis = 3 * HOUR_MS;
/// Event time after the spike that the `churn-spike` scenario plays out in: the
/// regulars cross about a day after it, and the 24h window shows them for a day.
pub const SPIKE_EVENT_SPAN_MS: Millis = 2 * DAY_MS;
/// The least wall time the `churn-spike` scenario's event time runs at the time
/// scale before it reaches now (afterwards it follows the wall clock).
pub const SCENARIO_WALL: Duration = Duration::from_secs(20 * 60);
/// How often the `steady` demo refits the churn model.
pub const STEADY_REFIT: Duration = Duration::from_secs(20);
/// The least `spike_after`: the first churn model is fitted this long after the
/// start (`model_refit_interval`, at most 30 s), before the spike.
pub const MIN_SPIKE_AFTER: Duration = Duration::from_secs(30);

/// The demo's event-time plan: the generator (its `start` included), the spike and
/// the refits.
#[derive(Debug, Clone)]
pub struct Plan {
    pub generator: GeneratorConfig,
    /// When the cohort of the `churn-spike` scenario goes silent.
    pub spike_at: Option<Millis>,
    /// `model_refit_interval` of the demo (wall time; the first fit comes after at
    /// most 30 s). In `churn-spike`, the scenario's whole wall time.
    pub refit_interval: Duration,
}

/// Where event time starts and what happens when, for wall-clock time `now` and the
/// time scale `speed`. Event time reaches `start + WARMUP_MS + elapsed × speed` after
/// `elapsed` of wall time (and never passes now).
pub fn plan(scenario: Scenario, speed: f64, spike_after: Duration, seed: u64, now: Millis) -> Plan {
    let scaled = |d: Duration| (d.as_secs_f64() * speed * 1000.0) as Millis;
    match scenario {
        Scenario::Steady => Plan {
            generator: GeneratorConfig {
                seed,
                start: now - WARMUP_MS - DAY_MS,
                ..GeneratorConfig::default()
            },
            spike_at: None,
            refit_interval: STEADY_REFIT,
        },
        Scenario::ChurnSpike => {
            let speed = speed.max(f64::MIN_POSITIVE);
            let played = spike_after.as_secs_f64() + SPIKE_EVENT_SPAN_MS as f64 / 1000.0 / speed;
            let span_wall = SCENARIO_WALL.max(Duration::from_secs(played.ceil() as u64));
            let start = now - WARMUP_MS - scaled(span_wall).max(DAY_MS);
            let spike = start + WARMUP_MS + scaled(spike_after);
            Plan {
                refit_interval: span_wall,
                generator: GeneratorConfig {
                    seed,
                    start,
                    churn_spike_at: Some(spike),
                    regulars: Some(Regulars {
                        customers: REGULARS,
                        every: REGULAR_EVERY_MS,
                        silent_from: spike,
                    }),
                    ..GeneratorConfig::default()
                },
                spike_at: Some(spike),
            }
        }
    }
}

/// The sidecar's configuration in the demo (`refit_interval`: [`Plan::refit_interval`]).
pub fn demo_config(
    bootstrap_servers: String,
    listen: SocketAddr,
    refit_interval: Duration,
) -> RawConfig {
    RawConfig {
        bootstrap_servers,
        group_id: "engaged-demo".into(),
        listen: listen.to_string(),
        snapshot_interval: "2s".into(),
        idle_timeout: "10s".into(),
        // The demo covers days of event time: a one-day horizon makes churn visible.
        churn_horizon: "1d".into(),
        model_refit_interval: humantime::format_duration(refit_interval).to_string(),
        ..RawConfig::default()
    }
}

/// Produces generated traffic until `stop` is set.
fn produce_loop(
    producer: Arc<ThreadedProducer<DefaultProducerContext>>,
    mut generator: Generator,
    start: Millis,
    speed: f64,
    stop: Arc<AtomicBool>,
) {
    let wall_start = Instant::now();
    let mut last_garbage = Instant::now();
    let mut produced_to = start;
    while !stop.load(Ordering::Relaxed) {
        let simulated =
            start + WARMUP_MS + (wall_start.elapsed().as_secs_f64() * speed * 1000.0) as Millis;
        // The warm-up days go out as fast as possible, an hour of event time at a time.
        let until = simulated.min(now_ms()).min(produced_to + 3_600_000);
        produced_to = produced_to.max(until);
        for e in generator.advance_to(until) {
            let payload = encode_for_topic(&e);
            let mut record = BaseRecord::to(topic_of(&e))
                .key(partition_key(&e))
                .payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        if last_garbage.elapsed() > Duration::from_secs(20) {
            let garbage = b"demo: this is not Avro".to_vec();
            let _ = producer.send(BaseRecord::to("pageviews").key("garbage").payload(&garbage));
            last_garbage = Instant::now();
        }
        if produced_to >= simulated.min(now_ms()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = producer.flush(Duration::from_secs(2));
}

fn fmt_opt(v: Option<f64>, scale: f64, suffix: &str) -> String {
    v.map_or("-".into(), |v| format!("{:.1}{suffix}", v * scale))
}

/// The compact live table of the key metrics.
pub fn table(t: &Telemetry) -> String {
    let p = t.latest();
    let mut out = String::new();
    let wm = p.snapshots.first().map(|s| s.watermark);
    let wm = wm
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or("-".into(), |d| d.format("%Y-%m-%d %H:%M:%S").to_string());
    let consumed: u64 = t.consumed.collect_total();
    out.push_str(&format!(
        "watermark {wm} UTC | consumed {consumed} | rejected {}\n",
        crate::state::RejectReason::ALL
            .iter()
            .map(|r| format!(
                "{}={}",
                r.as_str(),
                t.rejected.with_label_values(&[r.as_str()]).get()
            ))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    out.push_str(&format!(
        "{:>4} {:>7} {:>6} {:>6} {:>7} | {:>6} {:>5} {:>5} {:>6} | {:>6} {:>8} {:>5} | {:>5} {:>5} | {:>6} {:>6}\n",
        "win", "views", "sess", "bounce", "avg_dur", "sent", "open", "ctr", "unsub", "orders", "aov",
        "ret", "nps", "csat", "active", "churn"
    ));
    let count = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    for s in p.snapshots.iter().filter(|s| s.dimension == "all") {
        out.push_str(&format!(
            "{:>4} {:>7} {:>6} {:>6} {:>7} | {:>6} {:>5} {:>5} {:>6} | {:>6} {:>8} {:>5} | {:>5} {:>5} | {:>6} {:>6}\n",
            s.window,
            s.page_views,
            s.sessions,
            fmt_opt(s.bounce_rate, 100.0, "%"),
            fmt_opt(s.avg_session_duration_seconds, 1.0, "s"),
            count(s.emails_sent),
            fmt_opt(s.open_rate, 100.0, "%"),
            fmt_opt(s.click_through_rate, 100.0, "%"),
            fmt_opt(s.unsubscribe_rate, 100.0, "%"),
            count(s.orders),
            fmt_opt(s.average_order_value, 0.01, ""),
            fmt_opt(s.returning_customer_rate, 100.0, "%"),
            fmt_opt(s.nps, 1.0, ""),
            fmt_opt(s.csat, 1.0, ""),
            count(s.active_customers),
            fmt_opt(s.churn_rate, 100.0, "%"),
        ));
    }
    let by = |w: &str| {
        p.snapshots
            .iter()
            .find(|s| s.dimension == "all" && s.window == w)
    };
    if let Some(s) = by("24h").or_else(|| p.snapshots.iter().find(|s| s.dimension == "all")) {
        out.push_str(&format!(
            "churn model: at_risk_customers {} | risk_crossings({}) {} | expected orders 30d {} | predicted value 30d {}\n",
            count(s.at_risk_customers),
            s.window,
            count(s.risk_crossings),
            fmt_opt(s.expected_orders_30d, 1.0, ""),
            fmt_opt(s.predicted_value_30d_minor, 0.01, ""),
        ));
    }
    out.push_str(&exit_pages(&p.snapshots, 5));
    out
}

/// A line with the `n` most viewed pages of the first window that has page
/// rows, with their exit rates (`other` left out).
fn exit_pages(snapshots: &[crate::snapshot::WindowSnapshot], n: usize) -> String {
    let Some(window) = snapshots
        .iter()
        .find(|s| s.dimension == "page" && s.page_views > 0)
        .map(|s| s.window.clone())
    else {
        return String::new();
    };
    let mut pages: Vec<_> = snapshots
        .iter()
        .filter(|s| s.window == window && s.dimension == "page")
        .filter(|s| s.dimension_value.as_deref() != Some(crate::metrics::OTHER))
        .collect();
    pages.sort_by(|a, b| {
        b.page_views
            .cmp(&a.page_views)
            .then(a.dimension_value.cmp(&b.dimension_value))
    });
    let shown: Vec<String> = pages
        .iter()
        .take(n)
        .map(|s| {
            format!(
                "{} {} ({}/{})",
                s.dimension_value.as_deref().unwrap_or("-"),
                fmt_opt(s.exit_rate, 100.0, "%"),
                s.exits.unwrap_or(0),
                s.page_views
            )
        })
        .collect();
    format!("exit rate by page ({window}): {}\n", shown.join(" | "))
}

/// Runs the demo until Ctrl-C (or `duration`).
pub async fn run(
    opts: DemoOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("test.mock.num.brokers", "1")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(|e| AppError::Source(e.into()))?;
    let producer = Arc::new(producer);
    let bootstrap = {
        let mock = producer
            .client()
            .mock_cluster()
            .expect("test.mock.num.brokers creates a mock cluster");
        for t in DEMO_TOPICS {
            mock.create_topic(t, opts.partitions, 1)
                .map_err(|e| AppError::Source(e.into()))?;
        }
        for t in [
            "engagement.snapshots",
            "engagement.dlq",
            "engagement.checkpoints",
        ] {
            mock.create_topic(t, 1, 1)
                .map_err(|e| AppError::Source(e.into()))?;
        }
        mock.bootstrap_servers()
    };
    no_initial_rebalance_delay(&producer);

    let plan = plan(
        opts.scenario,
        opts.speed,
        opts.spike_after,
        opts.seed,
        now_ms(),
    );
    let raw = demo_config(bootstrap, opts.listen, plan.refit_interval);
    let config = raw.validate()?;
    let sidecar = Sidecar::start(config, &demo_decoder_config()).await?;
    let start = plan.generator.start;
    let addr = sidecar.http.addr;
    let utc = |t: Millis| {
        chrono::DateTime::from_timestamp_millis(t)
            .map_or("-".into(), |d| d.format("%Y-%m-%d %H:%M UTC").to_string())
    };
    println!(
        "engaged demo: live page at http://{addr}/ and metrics at http://{addr}/metrics — Ctrl-C to stop\n\
         in-process Kafka at {}; scenario {}\n\
         three days of history from {} are produced at once, then event time runs {}x the wall\n\
         clock (--time-scale), never past now; churn_horizon is 1d in the demo",
        raw.bootstrap_servers,
        opts.scenario,
        utc(start),
        opts.speed,
    );
    if let Some(spike) = plan.spike_at {
        println!(
            "churn spike: at {} of event time ({} after the start), a fifth of the customers and\n\
             {REGULARS} regulars (an ORDER every {}h) stop all activity; the regulars' churn risk\n\
             crosses risk_threshold together about a day of event time later (about {} at this\n\
             time scale): watch engaged_churn_risk_crossings{{window=\"1h\"}} and {{window=\"24h\"}};\n\
             the churn model is refitted every {}",
            utc(spike),
            humantime::format_duration(opts.spike_after),
            REGULAR_EVERY_MS / HOUR_MS,
            humantime::format_duration(Duration::from_secs(
                (opts.spike_after.as_secs_f64() + 86_400.0 / opts.speed) as u64
            )),
            humantime::format_duration(plan.refit_interval),
        );
    }

    let generator = Generator::new(plan.generator);
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let (p, s) = (producer.clone(), stop.clone());
        let speed = opts.speed;
        std::thread::spawn(move || produce_loop(p, generator, start, speed, s))
    };
    let table_task = opts.table_every.map(|every| {
        let t = sidecar.pipeline.telemetry().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                println!("{}", table(&t));
            }
        })
    });
    let duration = opts.duration;
    let stop_after = async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown => {}
                }
            }
            None => shutdown.await,
        }
    };
    let result = sidecar.run(stop_after).await;
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = table_task {
        t.abort();
    }
    let _ = tokio::task::spawn_blocking(move || producing.join()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_and_plan_their_spike() {
        assert_eq!("churn-spike".parse(), Ok(Scenario::ChurnSpike));
        assert_eq!("steady".parse(), Ok(Scenario::Steady));
        assert!(
            "spike"
                .parse::<Scenario>()
                .unwrap_err()
                .contains("churn-spike")
        );
        let now = 1_800_000_000_000;
        let steady = plan(Scenario::Steady, 600.0, Duration::from_secs(60), 1, now);
        assert_eq!(steady.generator.start, now - WARMUP_MS - DAY_MS);
        assert_eq!(
            (steady.spike_at, steady.refit_interval),
            (None, STEADY_REFIT)
        );

        let p = plan(Scenario::ChurnSpike, 600.0, Duration::from_secs(60), 1, now);
        let start = p.generator.start;
        // 60 s of wall time after the warm-up at 600x: ten hours of event time.
        assert_eq!(p.spike_at, Some(start + WARMUP_MS + 10 * HOUR_MS));
        let r = p.generator.regulars.unwrap();
        assert_eq!((r.customers, r.every), (REGULARS, REGULAR_EVERY_MS));
        assert_eq!(Some(r.silent_from), p.spike_at);
        assert_eq!(p.generator.churn_spike_at, p.spike_at);
        // Event time runs at the time scale through the scenario, refits after it.
        assert_eq!(p.refit_interval, SCENARIO_WALL);
        assert!(now - start >= WARMUP_MS + 1_200 * 600_000);
        // Slower: the scenario (and the model) waits for two days of event time.
        let slow = plan(Scenario::ChurnSpike, 60.0, Duration::from_secs(60), 1, now);
        assert_eq!(
            slow.refit_interval,
            Duration::from_secs(60 + 2 * 86_400 / 60)
        );
    }

    #[test]
    fn the_exit_pages_line_shows_the_most_viewed_pages_of_the_first_window() {
        use crate::snapshot::WindowSnapshot;
        let page = |window: &str, page: &str, views: i64, exits: i64| WindowSnapshot {
            window: window.into(),
            dimension: "page".into(),
            dimension_value: Some(page.into()),
            page_views: views,
            exits: Some(exits),
            exit_rate: Some(exits as f64 / views as f64),
            ..WindowSnapshot::default()
        };
        let snaps = [
            page("5m", "/", 40, 10),
            page("5m", "/cart", 10, 8),
            page("5m", "other", 99, 1),
            page("5m", "/search", 40, 2),
            page("1h", "/", 400, 100),
        ];
        assert_eq!(
            exit_pages(&snaps, 2),
            "exit rate by page (5m): / 25.0% (10/40) | /search 5.0% (2/40)\n"
        );
        assert_eq!(exit_pages(&[], 2), "");
    }
}
