//! `engaged demo`: an in-process Kafka (librdkafka mock cluster), the traffic generator and the full sidecar.
//!
//! Event time starts four days in the past; the first three days are produced
//! at once (history for repeat buyers and churn), then event time runs `speed`
//! times faster than the wall clock and never passes it, so windows fill within
//! seconds and the clock-skew check stays on. The four families use the three
//! wire formats (page views and surveys single-object, emails Confluent-framed
//! with schema id 1, purchases plain datums), and a garbage record now and then
//! shows the dead-letter path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::generator::{Generator, GeneratorConfig, partition_key, topic_of};
use crate::app::{AppError, Sidecar};
use crate::config::RawConfig;
use crate::decode::{DecoderConfig, encode};
use crate::event::{Event, EventKind, Millis};
use crate::telemetry::{CollectTotal, Telemetry};

/// Demo settings (flags of `engaged demo`).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    /// Event-time seconds per wall-clock second.
    pub speed: f64,
    pub partitions: i32,
    /// Print the live table this often (`None`: never).
    pub table_every: Option<Duration>,
    /// Stop after this long (`None`: until Ctrl-C).
    pub duration: Option<Duration>,
    pub seed: u64,
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

/// Event time produced at once when the demo starts, so that repeat buyers,
/// refunds and churn have some history to show within the first minute.
const WARMUP_MS: Millis = 3 * 24 * 3600 * 1000;

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
    out
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

    let raw = RawConfig {
        bootstrap_servers: bootstrap,
        group_id: "engaged-demo".into(),
        listen: opts.listen.to_string(),
        snapshot_interval: "2s".into(),
        idle_timeout: "10s".into(),
        // The demo covers two days of event time: a one-day horizon makes churn visible.
        churn_horizon: "1d".into(),
        // Refit the churn model often, so the spike below shows within minutes.
        model_refit_interval: "20s".into(),
        ..RawConfig::default()
    };
    let config = raw.validate()?;
    let sidecar = Sidecar::start(config, &demo_decoder_config()).await?;
    let start = now_ms() - 4 * 24 * 3600 * 1000;
    // The churn-spike scenario: half a day of event time after the warm-up (about
    // a minute into the demo at the default speed), a fifth of the customers stop
    // buying and engaging; at_risk_customers and risk_crossings climb after it.
    let spike = start + WARMUP_MS + 12 * 3_600_000;
    let addr = sidecar.http.addr;
    println!(
        "engaged demo: live page at http://{addr}/ and metrics at http://{addr}/metrics — Ctrl-C to stop\n\
         in-process Kafka at {}\n\
         three days of history are produced at once, then event time runs {}x the wall clock\n\
         (never past now); churn_horizon is 1d in the demo; a churn spike starts at {}",
        raw.bootstrap_servers,
        opts.speed,
        chrono::DateTime::from_timestamp_millis(spike)
            .map_or("-".into(), |d| d.format("%Y-%m-%d %H:%M UTC").to_string())
    );

    let generator = Generator::new(GeneratorConfig {
        seed: opts.seed,
        start,
        churn_spike_at: Some(spike),
        ..GeneratorConfig::default()
    });
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
