//! `engaged demo`: an in-process Kafka (librdkafka mock cluster), the traffic generator and the full sidecar.
//!
//! Event time runs `speed` times faster than the wall clock, starting two days
//! in the past, and never passes the wall clock, so windows fill within
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
    while !stop.load(Ordering::Relaxed) {
        let simulated = start + (wall_start.elapsed().as_secs_f64() * speed * 1000.0) as Millis;
        let until = simulated.min(now_ms());
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
        std::thread::sleep(Duration::from_millis(50));
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
        "{:>6} {:>10} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8}\n",
        "window", "page_views", "sessions", "active", "bounce", "avg_dur", "p50", "p90"
    ));
    for s in p.snapshots.iter().filter(|s| s.dimension == "all") {
        out.push_str(&format!(
            "{:>6} {:>10} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8}\n",
            s.window,
            s.page_views,
            s.sessions,
            s.sessions_active,
            fmt_opt(s.bounce_rate, 100.0, "%"),
            fmt_opt(s.avg_session_duration_seconds, 1.0, "s"),
            fmt_opt(s.session_duration_p50_seconds, 1.0, "s"),
            fmt_opt(s.session_duration_p90_seconds, 1.0, "s"),
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
        for t in ["engagement.snapshots", "engagement.dlq"] {
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
        ..RawConfig::default()
    };
    let config = raw.validate()?;
    let sidecar = Sidecar::start(config, &demo_decoder_config()).await?;
    println!(
        "engaged demo: in-process Kafka at {}, metrics at http://{}/metrics — Ctrl-C to stop",
        raw.bootstrap_servers, sidecar.http.addr
    );

    let start = now_ms() - 2 * 24 * 3600 * 1000;
    let generator = Generator::new(GeneratorConfig {
        seed: opts.seed,
        start,
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
