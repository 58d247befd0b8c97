//! Back-pressure on output (issue 12, item 5), against librdkafka's mock cluster with
//! fault injection. The input topics and the group live on broker 1, the output
//! topics (snapshots, customer risks, dead letters) on broker 2. After a warm-up (the
//! churn model fitted), while input keeps arriving, broker 2 answers slowly
//! (`broker_round_trip_time`), then goes down (`broker_down`), then Produce requests
//! fail (`request_errors`). With a small bound on output in flight and a churn model
//! that republishes every customer whose risk moved (`risk_delta = 0`), output is at
//! its bound most of the time.
//!
//! Asserted: output in flight never exceeded the bound (and reached it); consumption
//! paused while records waited in the input topics; snapshot rounds were skipped
//! (counted); and after recovery every input record was applied exactly once (the
//! final snapshot's counts equal those of what the test produced, and no earlier
//! snapshot exceeded them), every rejected record is in the dead-letter topic exactly
//! once, and the latest customer-risk record of every customer is its final state
//! (its repeat orders, recency and age at the final watermark, computed here from what
//! was produced), with no customer's records out of order.
//!
//! `RUST_LOG=engaged=debug cargo test --test back_pressure -- --nocapture` shows the
//! sidecar's logs.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engaged::config::RawConfig;
use engaged::decode::DecoderConfig;
use engaged::demo::generator::topic_of;
use engaged::event::{Event, Millis, PageView, Purchase, PurchaseType};
use engaged::metrics::churn_risk::CustomerRisk;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use support::{
    Cluster, Metrics, Rec, Running, clock_events, dead_letter_source, init_tracing, now_ms,
    read_topic, routed, scrape, settle_within,
};

const PURCHASES: &str = "purchases";
const PAGEVIEWS: &str = "pageviews";
const SNAPSHOTS: &str = "engagement.snapshots";
const DLQ: &str = "engagement.dlq";
const RISKS: &str = "engagement.customer-risk";
const CHECKPOINTS: &str = "engagement.checkpoints";
const PARTITIONS: i32 = 2;
const GROUP: &str = "back-pressure";
const INPUT_BROKER: i32 = 1;
const OUTPUT_BROKER: i32 = 2;
/// `max_output_in_flight`: fewer than the customers a sweep republishes.
const BOUND: usize = 40;
const MIN: Millis = 60_000;
const DAY: Millis = 24 * 60 * MIN;
/// Default `allowed_lateness` (SPEC §2).
const LATENESS: Millis = 5 * MIN;
/// The one window, and its bucket (the window / 60).
const WINDOW: Millis = 90 * DAY;
const BUCKET: Millis = WINDOW / 60;
/// Liveness bounds: how long the test waits at most, never a measure of speed.
const PATIENCE: Duration = Duration::from_secs(120);

fn order(customer: &str, n: usize, t: Millis) -> Event {
    Event::Purchase(Purchase {
        event_id: format!("{customer}-order-{n}"),
        event_time: t,
        customer_id: customer.into(),
        order_id: format!("{customer}-{n}"),
        kind: PurchaseType::Order,
        amount_minor: 1_500 + (n as i64 % 4) * 250,
        currency: "EUR".into(),
        cost_minor: None,
        items: 1,
        campaign_id: None,
    })
}

fn view(j: i64, t: Millis) -> Event {
    Event::PageView(PageView {
        event_id: format!("view-{j}"),
        event_time: t,
        visitor_id: format!("v{}", j % 200),
        customer_id: None,
        site: "shop".into(),
        page: format!("/p{}", j % 5),
        referrer: None,
        channel: None,
    })
}

/// What the test produced and what it must find afterwards.
struct Stream {
    /// The records in event-time order, duplicates and undecodable ones included.
    records: Vec<Rec>,
    /// Where the warm-up ends and the trouble's records (none rejected) end.
    warm_up: usize,
    troubled: usize,
    /// Indices of `records` that engaged must reject (dead-letter).
    rejected: BTreeSet<usize>,
    /// Accepted ORDER times per customer.
    orders: BTreeMap<String, Vec<Millis>>,
    /// Accepted events, for the expected snapshot counts.
    events: Vec<Event>,
    /// The clock events that end the stream (every partition at `end`).
    clocks: Vec<Rec>,
    end: Millis,
}

/// Sixty days of orders by 90 customers (Poisson purchases at a rate of their own
/// until a dropout of their own, as the BTYD models assume) and page views, as
/// single-object Avro. Outside the middle third, a copy of every 45th record (a
/// producer retry, rejected as `duplicate`) and an undecodable record after every
/// 60th; the middle third, produced while the output broker is slow or down, has
/// none (see the note on `broker_down` in the test).
fn stream() -> Stream {
    let end = (now_ms() - 60 * MIN).div_euclid(MIN) * MIN;
    let start = end - 60 * DAY;
    let last_order = end - 3 * DAY;
    let mut rng = StdRng::seed_from_u64(12);
    let mut events = vec![];
    for i in 0..90 {
        let customer = format!("customer-{i:02}");
        let rate = rng.random_range(0.05..0.5); // orders per day
        let mut t = start + rng.random_range(0..30 * DAY);
        let until = (t + rng.random_range(3 * DAY..90 * DAY)).min(last_order);
        let mut n = 0;
        while t <= until {
            events.push(order(&customer, n, t));
            n += 1;
            let gap_days = -(1.0 - rng.random::<f64>()).ln() / rate;
            t += (gap_days * DAY as f64) as Millis + 1;
        }
    }
    for j in 0..1_500 {
        events.push(view(j, start + j * 55 * MIN));
    }
    events.sort_by(|a, b| (a.event_time(), a.event_id()).cmp(&(b.event_time(), b.event_id())));
    let mut orders: BTreeMap<String, Vec<Millis>> = BTreeMap::new();
    for e in &events {
        if let Event::Purchase(p) = e {
            orders
                .entry(p.customer_id.clone())
                .or_default()
                .push(p.event_time);
        }
    }
    let third = events.len() / 3;
    let (mut warm_up, mut troubled) = (0, 0);
    let mut records = vec![];
    let mut rejected = BTreeSet::new();
    for (n, (p, e)) in routed(events.clone(), PARTITIONS).iter().enumerate() {
        if n == third {
            warm_up = records.len();
        }
        if n == 2 * third {
            troubled = records.len();
        }
        let r = Rec::event(topic_of(e), *p, e);
        records.push(r.clone());
        if (third..2 * third).contains(&n) {
            continue;
        }
        if n % 45 == 44 {
            rejected.insert(records.len());
            records.push(r.clone());
        }
        if n % 60 == 59 {
            rejected.insert(records.len());
            records.push(Rec {
                key: format!("bad-{n}"),
                payload: b"\x00\x00\x00\x00\x07not avro".to_vec(),
                ..r
            });
        }
    }
    let clocks = clock_events("end", end, PARTITIONS)
        .iter()
        .filter(|(_, e)| [PURCHASES, PAGEVIEWS].contains(&topic_of(e)))
        .map(|(p, e)| Rec::event(topic_of(e), *p, e))
        .collect();
    Stream {
        records,
        warm_up,
        troubled,
        rejected,
        orders,
        events,
        clocks,
        end,
    }
}

/// The mock broker deduplicates a retried Produce request only for transactional
/// producers: a request it appended whose answer is lost (the broker goes down, or
/// a request after it on the connection fails and librdkafka sends both again) is
/// written twice, where a real broker drops an idempotent producer's retry. So both
/// the test's producer and engaged's send one request at a time, and no record is
/// rejected while the output broker goes down (see the test).
const ONE_REQUEST_AT_A_TIME: (&str, &str) = ("max.in.flight.requests.per.connection", "1");

/// A two-broker mock cluster: input topics, checkpoints and the groups on broker 1,
/// output topics on broker 2. Its producer (the test's input) is idempotent and
/// sends one request at a time, so retries through the injected errors neither
/// duplicate nor reorder input.
fn cluster() -> Cluster {
    let inputs = [
        (PURCHASES, PARTITIONS),
        (PAGEVIEWS, PARTITIONS),
        (CHECKPOINTS, PARTITIONS),
    ];
    let outputs = [(SNAPSHOTS, 1), (DLQ, 1), (RISKS, 1)];
    let topics: Vec<(&str, i32)> = inputs.iter().chain(&outputs).copied().collect();
    let c = Cluster::with_brokers(
        2,
        &[
            ("linger.ms", "5"),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "120000"),
            ONE_REQUEST_AT_A_TIME,
        ],
        &topics,
    );
    for (t, n) in inputs {
        c.lead(t, n, INPUT_BROKER);
    }
    for (t, n) in outputs {
        c.lead(t, n, OUTPUT_BROKER);
    }
    for g in [GROUP.to_string(), format!("{GROUP}-restore")] {
        c.coordinate(&g, INPUT_BROKER);
    }
    c
}

fn config(bootstrap: &str) -> RawConfig {
    let table = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    RawConfig {
        bootstrap_servers: bootstrap.into(),
        group_id: GROUP.into(),
        input_topics: vec![PURCHASES.into(), PAGEVIEWS.into()],
        listen: "127.0.0.1:0".into(),
        windows: vec!["90d".into()],
        snapshot_interval: "200ms".into(),
        checkpoint_interval: "500ms".into(),
        // Longer than any injected trouble: a partition that waits while consumption
        // is paused is not idle.
        idle_timeout: "30s".into(),
        statistics_interval: "1s".into(),
        shutdown_timeout: "20s".into(),
        model_refit_interval: "1s".into(),
        // Every customer whose risk moved at all is published again at each sweep.
        risk_delta: 0.0,
        max_output_in_flight: BOUND,
        kafka: table(&[("reconnect.backoff.max.ms", "1000")]),
        kafka_producer: table(&[ONE_REQUEST_AT_A_TIME]),
        kafka_consumer: table(&[
            ("session.timeout.ms", "30000"),
            ("heartbeat.interval.ms", "500"),
        ]),
        ..RawConfig::default()
    }
}

/// One scrape of `/metrics` during the trouble.
#[derive(Debug, Clone, Copy)]
struct Seen {
    in_flight: f64,
    paused: f64,
    consumed: f64,
    /// Records the test had produced (acknowledged) before the scrape.
    produced: usize,
}

fn seen(m: &Metrics, produced: usize) -> Seen {
    Seen {
        in_flight: m.sum("engaged_output_in_flight_records"),
        paused: m.sum("engaged_consumption_paused"),
        consumed: m.sum("engaged_events_consumed_total"),
        produced,
    }
}

/// The customer-risk records of `messages` per customer, in offset order.
fn decoded_risks(messages: &[OwnedMessage]) -> BTreeMap<String, Vec<CustomerRisk>> {
    let mut out: BTreeMap<String, Vec<CustomerRisk>> = BTreeMap::new();
    let mut sorted: Vec<&OwnedMessage> = messages.iter().collect();
    sorted.sort_by_key(|m| (m.partition(), m.offset()));
    for m in sorted {
        let r = engaged::sink::decode_customer_risk_record(m.payload().expect("a value"))
            .expect("a CustomerRisk record");
        assert_eq!(
            m.key(),
            Some(r.customer_id.as_bytes()),
            "keyed by customer_id"
        );
        out.entry(r.customer_id.clone()).or_default().push(r);
    }
    out
}

/// Customers whose latest customer-risk record is not their final state at
/// `watermark`: repeat orders, days from first to last order, days from first order
/// to the watermark (as SPEC §3 defines them), computed from what was produced. With
/// `risk_delta = 0` a record is published whenever the risk moves at all, so only a
/// risk pinned at exactly 0 or 1 may keep an earlier watermark's record.
fn not_final(
    risks: &BTreeMap<String, Vec<CustomerRisk>>,
    orders: &BTreeMap<String, Vec<Millis>>,
    watermark: Millis,
) -> Vec<String> {
    let days = |ms: Millis| ms as f64 / DAY as f64;
    orders
        .iter()
        .filter_map(|(c, times)| {
            let (first, last) = (times[0], times[times.len() - 1]);
            let (x, t_x, t) = (
                times.len() as i64 - 1,
                days(last - first),
                days(watermark - first),
            );
            let latest = risks.get(c).and_then(|rs| rs.last());
            let ok = latest.is_some_and(|r| {
                let history = r.x == x && (r.t_x_days - t_x).abs() < 1e-9;
                let now = r.watermark == watermark && (r.t_days - t).abs() < 1e-9;
                let pinned = r.watermark <= watermark && [0.0, 1.0].contains(&r.churn_risk);
                history && (now || pinned)
            });
            (!ok).then(|| {
                format!(
                    "{c}: latest {:?}, final (x {x}, t_x {t_x}, T {t}, watermark {watermark})",
                    latest.map(|r| (r.x, r.t_x_days, r.t_days, r.watermark, r.churn_risk))
                )
            })
        })
        .collect()
}

/// Produces `records` in `chunks` chunks, 300 ms apart, counting them in `produced`
/// once acknowledged; returns where each was written (partition, offset).
async fn feed(
    cluster: &Cluster,
    records: &[Rec],
    chunks: usize,
    produced: &AtomicUsize,
) -> Vec<(i32, i64)> {
    let mut written = Vec::with_capacity(records.len());
    for chunk in records.chunks(records.len().div_ceil(chunks).max(1)) {
        written.extend(cluster.produce_at(chunk).await);
        produced.fetch_add(chunk.len(), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_and_failing_output_pauses_consumption_and_loses_nothing() {
    init_tracing();
    let started = Instant::now();
    let s = stream();
    let final_watermark = s.end - LATENESS;
    let cluster = Arc::new(cluster());
    let sidecar = Running::start(config(&cluster.bootstrap), &DecoderConfig::default()).await;
    let addr = sidecar.addr;

    // Scrape /metrics every 50 ms until told to stop.
    let produced = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (produced, stop) = (produced.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = vec![];
            while !stop.load(Ordering::Relaxed) {
                let before = produced.load(Ordering::SeqCst);
                samples.push(seen(&scrape(addr).await, before));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };

    // Warm-up, no trouble: the churn model is fitted and customer-risk records flow.
    let mut written = feed(&cluster, &s.records[..s.warm_up], 4, &produced).await;
    let warm_rejected = s.rejected.range(..s.warm_up).count();
    settle_within(
        addr,
        "the warm-up consumed and the churn model fitted",
        PATIENCE,
        |m| {
            m.sum("engaged_events_consumed_total") >= s.warm_up as f64
                && m.get("engaged_dead_letter_records_total", &[]) >= Some(warm_rejected as f64)
                && m.sum("engaged_churn_model_fitted_customers") > 0.0
        },
    )
    .await;
    eprintln!("{:?}: warmed up", started.elapsed());

    // Input keeps arriving while the output broker answers slowly, then is down.
    // The mock broker appends a Produce request before it delays the answer, so one
    // whose answer is lost when the broker goes down is written twice (see
    // `ONE_REQUEST_AT_A_TIME`). So no record of this stretch is rejected, and every
    // dead letter before it was acknowledged (the warm-up settled on it): the
    // dead-letter topic's exactly-once check below stays meaningful. Snapshot and
    // customer-risk rows written twice are harmless (latest per key) and checked too.
    let trouble = async {
        eprintln!("{:?}: output broker slow", started.elapsed());
        cluster.round_trip_time(OUTPUT_BROKER, Duration::from_millis(700));
        tokio::time::sleep(Duration::from_millis(2_400)).await;
        eprintln!("{:?}: output broker down", started.elapsed());
        cluster.round_trip_time(OUTPUT_BROKER, Duration::ZERO);
        cluster.one_broker_down(OUTPUT_BROKER, true);
        tokio::time::sleep(Duration::from_millis(2_400)).await;
    };
    let troubled = &s.records[s.warm_up..s.troubled];
    let (more, ()) = tokio::join!(feed(&cluster, troubled, 16, &produced), trouble);
    written.extend(more);
    cluster.one_broker_down(OUTPUT_BROKER, false);

    // Then Produce requests fail (engaged's and the test's), while the rest arrives;
    // the broker answers them with errors and writes nothing.
    eprintln!(
        "{:?}: output broker up; Produce requests fail",
        started.elapsed()
    );
    use RDKafkaRespErr::*;
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
    ];
    cluster.request_errors(RDKafkaApiKey::Produce, &errors.repeat(6));
    written.extend(feed(&cluster, &s.records[s.troubled..], 8, &produced).await);
    cluster.produce(&s.clocks).await;
    let total = s.records.len() + s.clocks.len();
    produced.store(total, Ordering::SeqCst);
    eprintln!("{:?}: {total} records produced", started.elapsed());

    // Recovery: everything consumed, every rejected record dead-lettered, the final
    // watermark reached.
    let m = settle_within(
        addr,
        "every record consumed after the trouble",
        PATIENCE,
        |m| {
            m.sum("engaged_events_consumed_total") >= total as f64
                && m.get("engaged_dead_letter_records_total", &[]) >= Some(s.rejected.len() as f64)
                && m.get("engaged_watermark_timestamp_seconds", &[])
                    == Some(final_watermark as f64 / 1000.0)
        },
    )
    .await;
    assert_eq!(
        m.sum("engaged_events_consumed_total"),
        total as f64,
        "consumed once each"
    );
    assert_eq!(
        m.sum("engaged_events_rejected_total"),
        s.rejected.len() as f64,
        "{}",
        m.relevant("engaged_events_rejected_total")
    );
    // The customer-risk topic reaches every customer's final state.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let risks = decoded_risks(&read_topic(&cluster.bootstrap, RISKS).await);
        let behind = not_final(&risks, &s.orders, final_watermark);
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} customers' latest risk record is not their final state, e.g. {:#?}",
            behind.len(),
            &behind[..behind.len().min(5)]
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("{:?}: recovered", started.elapsed());
    let m = scrape(addr).await;
    stop.store(true, Ordering::Relaxed);
    let samples = scraper.await.expect("scraper");
    if let Err(e) = sidecar.stop().await {
        panic!("Sidecar::run returns Ok, not: {e}");
    }

    // (1) Output in flight stayed within its bound, and reached it.
    let bound = BOUND as f64;
    assert_eq!(m.val("engaged_output_in_flight_limit_records", &[]), bound);
    let peak = m.val("engaged_output_in_flight_peak_records", &[]);
    assert_eq!(peak, bound, "the most records in flight at once");
    let over: Vec<&Seen> = samples.iter().filter(|x| x.in_flight > bound).collect();
    assert!(over.is_empty(), "in flight above the bound: {over:?}");
    // (2) Consumption paused while records waited in the input topics.
    let paused_behind = samples
        .iter()
        .filter(|x| x.paused == 1.0 && x.consumed < x.produced as f64)
        .count();
    assert!(
        paused_behind > 0,
        "never seen paused with records waiting in {} scrapes",
        samples.len()
    );
    assert!(m.val("engaged_consumption_paused_seconds_total", &[]) > 0.0);
    // Skipped snapshot rounds are counted.
    assert!(m.val("engaged_snapshot_rounds_skipped_total", &[]) > 0.0);
    eprintln!(
        "{} scrapes, {paused_behind} paused with records waiting; paused {:.1} s; {} rounds skipped",
        samples.len(),
        m.val("engaged_consumption_paused_seconds_total", &[]),
        m.val("engaged_snapshot_rounds_skipped_total", &[])
    );

    // (3) Every input record applied exactly once: the final snapshot's counts are
    // those of the accepted events in the window, and no snapshot ever exceeded them.
    let e = final_watermark.div_euclid(BUCKET) * BUCKET;
    let in_window: Vec<&Event> = s
        .events
        .iter()
        .filter(|ev| (e - WINDOW..e).contains(&ev.event_time()))
        .collect();
    assert_eq!(
        in_window.len(),
        s.events.len(),
        "the window covers the stream"
    );
    let views = in_window
        .iter()
        .filter(|ev| matches!(ev, Event::PageView(_)))
        .count() as i64;
    let (orders, revenue) = in_window.iter().fold((0, 0), |(n, sum), ev| match ev {
        Event::Purchase(p) => (n + 1, sum + p.amount_minor),
        _ => (n, sum),
    });
    let mut rows: Vec<OwnedMessage> = read_topic(&cluster.bootstrap, SNAPSHOTS).await;
    rows.retain(|r| r.key() == Some(&b"90d/all"[..]));
    rows.sort_by_key(|r| r.offset());
    let rows: Vec<_> = rows
        .iter()
        .map(|r| engaged::sink::decode_snapshot_record(r.payload().expect("a value")).unwrap())
        .collect();
    let last = rows.last().expect("snapshot rows");
    assert_eq!(
        last.watermark, final_watermark,
        "the final round is the last row"
    );
    assert_eq!(
        (last.page_views, last.orders, last.revenue_minor),
        (views, Some(orders), Some(revenue)),
        "final snapshot"
    );
    for r in &rows {
        assert!(
            r.page_views <= views && r.orders.unwrap_or(0) <= orders,
            "a snapshot counted more than was produced: {r:?}"
        );
    }
    // Every rejected record dead-lettered exactly once.
    let want: BTreeSet<(String, i32, i64)> = s
        .rejected
        .iter()
        .map(|&i| (s.records[i].topic.clone(), written[i].0, written[i].1))
        .collect();
    let mut got: HashMap<(String, i32, i64), usize> = HashMap::new();
    for r in read_topic(&cluster.bootstrap, DLQ).await {
        let source = dead_letter_source(&r).expect("a dead letter names its source");
        *got.entry(source).or_default() += 1;
    }
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "dead-lettered more than once: {twice:?}");
    let missing: Vec<_> = want.iter().filter(|k| !got.contains_key(*k)).collect();
    assert!(missing.is_empty(), "not dead-lettered: {missing:?}");
    let extra: Vec<_> = got.keys().filter(|k| !want.contains(*k)).collect();
    assert!(
        extra.is_empty(),
        "dead letters of accepted records: {extra:?}"
    );
    // The latest customer-risk record per customer is its final state, and no
    // customer's record overtook a newer one (watermarks never go back per customer).
    let risks = decoded_risks(&read_topic(&cluster.bootstrap, RISKS).await);
    let behind = not_final(&risks, &s.orders, final_watermark);
    assert!(behind.is_empty(), "after shutdown: {behind:#?}");
    assert_eq!(
        risks.len(),
        s.orders.len(),
        "a record for every customer with an ORDER"
    );
    for (c, rs) in &risks {
        assert!(
            rs.windows(2).all(|w| w[0].watermark <= w[1].watermark),
            "{c}: records out of order: {:?}",
            rs.iter().map(|r| r.watermark).collect::<Vec<_>>()
        );
    }
    eprintln!(
        "{} risk records for {} customers; done in {:?}",
        risks.values().map(Vec::len).sum::<usize>(),
        risks.len(),
        started.elapsed()
    );
}
