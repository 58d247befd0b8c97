//! Core throughput (events/s): generated traffic through `Pipeline::handle_record`
//! (decode + validate + late/duplicate checks + windows + sessions), and through
//! `Pipeline::handle_records` in batches as `engaged run` applies them, compared in
//! the same run with decode alone, and the cost of one snapshot round.
//!
//!     cargo bench --bench engine -- --warm-up-time 1 --measurement-time 5

/// The allocator the `engaged` binary runs with (src/main.rs), so the figures are its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engaged::checkpoint::delta::Form;
use engaged::decode::{Decoder, encode};
use engaged::demo::generator::{DEFAULT_START, Generator, GeneratorConfig};
use engaged::demo::runner::demo_decoder_config;
use engaged::event::Event;
use engaged::pipeline::Pipeline;
use engaged::state::{CoreConfig, Engine, SavedTask, TopicPartition};
use engaged::telemetry::Telemetry;

const PARTITIONS: i32 = 4;

fn traffic(hours: i64) -> Vec<(TopicPartition, Vec<u8>, i64)> {
    let mut g = Generator::new(GeneratorConfig {
        visitors_per_hour: 20_000.0,
        customers: 20_000,
        ..GeneratorConfig::default()
    });
    let events = g.advance_to(DEFAULT_START + hours * 3_600_000);
    events
        .iter()
        .map(|e| {
            let key = engaged::demo::generator::partition_key(e);
            let p = (key.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32;
            let payload = match e {
                Event::PageView(_) | Event::Survey(_) => encode::single_object(e),
                Event::Email(_) => encode::confluent(1, e),
                Event::Purchase(_) => encode::datum(e),
            };
            let topic = engaged::demo::generator::topic_of(e);
            (TopicPartition::new(topic, p), payload, e.event_time())
        })
        .collect()
}

fn pipeline() -> Pipeline {
    Pipeline::new(
        Decoder::new(&demo_decoder_config()).unwrap(),
        Engine::new(CoreConfig::default()),
        Arc::new(Telemetry::new()),
        None,
        60_000,
    )
}

/// One topic-partition's records of a batch, and the wall time they are applied at.
type Run<'a> = (&'a TopicPartition, Vec<&'a [u8]>, i64);

fn bench(c: &mut Criterion) {
    let records = traffic(6);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.sample_size(10);
    let decoder = Decoder::new(&demo_decoder_config()).unwrap();
    g.bench_function("decode_only", |b| {
        b.iter(|| {
            for (tp, payload, _) in &records {
                black_box(decoder.decode(&tp.topic, payload).ok());
            }
        })
    });
    g.bench_function("decode_and_apply", |b| {
        b.iter_with_setup(pipeline, |p| {
            for (tp, payload, t) in &records {
                black_box(p.handle_record(tp, Some(payload), *t).ok());
            }
            p
        })
    });
    // As `engaged run` applies what it takes from librdkafka: batches of up to
    // 32,768 records, each topic-partition's records of a batch in one
    // `handle_records` call (one task lock, one event decoded into again and again).
    let batches: Vec<Vec<Run<'_>>> = records
        .chunks(32_768)
        .map(|chunk| {
            let mut runs: Vec<Run<'_>> = vec![];
            for (tp, payload, t) in chunk {
                // `now`: the run's newest event time (no record is from the future).
                match runs.iter_mut().find(|(r, _, _)| *r == tp) {
                    Some((_, payloads, now)) => {
                        payloads.push(payload.as_slice());
                        *now = (*now).max(*t);
                    }
                    None => runs.push((tp, vec![payload.as_slice()], *t)),
                }
            }
            runs
        })
        .collect();
    // Both ways apply the same records: the same ones accepted.
    let one_by_one = pipeline();
    let accepted_one = records
        .iter()
        .filter(|(tp, payload, t)| one_by_one.handle_record(tp, Some(payload), *t).is_ok())
        .count();
    let batched = pipeline();
    let accepted_batched: usize = batches
        .iter()
        .flatten()
        .map(|(tp, payloads, now)| {
            batched
                .handle_records(tp, payloads.iter().map(|x| Some(*x)), *now)
                .iter()
                .filter(|r| r.is_ok())
                .count()
        })
        .sum();
    assert_eq!(
        accepted_one, accepted_batched,
        "one by one and in batches accept the same records"
    );
    g.bench_function("decode_and_apply_batches", |b| {
        b.iter_with_setup(pipeline, |p| {
            for runs in &batches {
                for (tp, payloads, now) in runs {
                    let results = p.handle_records(tp, payloads.iter().map(|x| Some(*x)), *now);
                    black_box(results);
                }
            }
            p
        })
    });
    g.finish();

    // A snapshot round over `ENGAGED_BENCH_SNAPSHOT_HOURS` of traffic (default 6; 24 for
    // "a day of sessions").
    let hours = std::env::var("ENGAGED_BENCH_SNAPSHOT_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(6);
    let records = if hours == 6 { records } else { traffic(hours) };
    // `ENGAGED_BENCH_SNAPSHOT_CUSTOMERS` (default 1,000,000) more customers with an
    // ORDER each, spread over the traffic's span and merged into it in time order
    // (an ORDER behind its partition's watermark would be rejected as late).
    let customers: i64 = std::env::var("ENGAGED_BENCH_SNAPSHOT_CUSTOMERS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(1_000_000);
    let first = records.iter().map(|r| r.2).min().unwrap_or(DEFAULT_START);
    let span = records.iter().map(|r| r.2).max().unwrap_or(first) - first;
    let order = |i: i64| {
        let t = first + span * i / customers.max(1);
        let e = Event::Purchase(engaged::event::Purchase {
            event_id: format!("bench-order-{i}"),
            event_time: t,
            customer_id: format!("bench-customer-{i:08}"),
            order_id: format!("bench-order-{i}"),
            kind: engaged::event::PurchaseType::Order,
            amount_minor: 1000,
            currency: "EUR".into(),
            cost_minor: None,
            items: 1,
            campaign_id: None,
        });
        (
            TopicPartition::new("purchases", (i % i64::from(PARTITIONS)) as i32),
            e,
            t,
        )
    };
    let p = pipeline();
    let mut last = 0;
    let (mut next, mut accepted) = (0i64, 0i64);
    for (tp, payload, t) in &records {
        while next < customers && first + span * next / customers.max(1) <= *t {
            let (otp, e, _) = order(next);
            accepted += i64::from(p.engine().apply(&otp, &e).is_ok());
            next += 1;
        }
        let _ = p.handle_record(tp, Some(payload), *t);
        last = last.max(*t);
    }
    assert!(
        accepted >= customers * 99 / 100,
        "only {accepted} of {customers} bench ORDERs accepted"
    );
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.bench_function(format!("all_windows_{hours}h"), |b| {
        b.iter(|| {
            black_box(engaged::snapshot::build(
                p.engine(),
                last - 300_000,
                &p.assigned(),
            ))
        })
    });

    // A whole snapshot round (`Pipeline::snapshot_at`: windows, eviction, memory
    // accounting, telemetry) in steady state, with the customers above.
    let w = last - 300_000;
    p.snapshot_at(w, None);
    g.bench_function(format!("round_{hours}h_{customers}_customers"), |b| {
        b.iter(|| black_box(p.snapshot_at(w, None)))
    });
    // Encoding a round's rows for the snapshot topic (on the consumer loop too).
    let rows = p.snapshot_at(w, None);
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function(format!("encode_{}_rows", rows.len()), |b| {
        b.iter(|| {
            for s in &rows {
                black_box(engaged::sink::snapshot_record(s).expect("encodes"));
            }
        })
    });
    g.finish();
}

/// Event-path cost of the churn state: one ORDER into the per-customer histories.
fn orders(c: &mut Criterion) {
    use engaged::metrics::churn_risk::RiskState;
    let mut ids = engaged::metrics::CustomerIds::default();
    let customers: Vec<engaged::metrics::CustomerId> = (0..100_000)
        .map(|i| ids.get(&format!("customer-{i:06}")))
        .collect();
    let n = 1_000_000usize;
    let mut g = c.benchmark_group("churn_state");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function("on_order_1m_over_100k_customers", |b| {
        b.iter_with_setup(
            || {
                // Every customer already known: the steady state of a running sidecar.
                let mut st = RiskState::new(&[]);
                for c in &customers {
                    st.on_order(*c, 0, 1_000);
                }
                st
            },
            |mut st| {
                let mut x = 0x2545F4914F6CDD1Du64;
                for i in 0..n {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let c = &customers[(x % customers.len() as u64) as usize];
                    st.on_order(*c, i as i64 * 1_000, 1_000 + (x % 10_000) as i64);
                }
                st
            },
        )
    });
    g.finish();
}

/// Checkpoint and restore cost of a large state: one ORDER each for
/// `ENGAGED_BENCH_STATE_CUSTOMERS` (default 1,000,000) customers over 4 tasks,
/// saved (`Engine::save_tasks`) and restored (`Engine::restore_tasks`) on one thread
/// per core, as a checkpoint round and a restore do.
fn state(c: &mut Criterion) {
    use engaged::event::{Purchase, PurchaseType};
    let customers: usize = std::env::var("ENGAGED_BENCH_STATE_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let engine = Engine::new(CoreConfig::default());
    let start = DEFAULT_START;
    let order = |i: usize, n: usize| {
        let customer_id = format!("cust-{i:07}");
        let p = (customer_id.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32;
        let e = Event::Purchase(Purchase {
            event_id: format!("ord-evt-{n:08}"),
            event_time: start + n as i64 * 20,
            customer_id,
            order_id: format!("ord-{n:08}"),
            kind: PurchaseType::Order,
            amount_minor: 1_000 + (i % 20_000) as i64,
            currency: "EUR".into(),
            cost_minor: Some(600),
            items: 1 + (i % 3) as i32,
            campaign_id: None,
        });
        (TopicPartition::new("purchases", p), e)
    };
    for i in 0..customers {
        let (tp, e) = order(i, i);
        engine.apply(&tp, &e).expect("valid order");
    }
    let tasks = engine.tasks();
    let bases: Vec<(i32, Form)> = tasks.iter().map(|t| (*t, Form::Base)).collect();
    let deltas: Vec<(i32, Form)> = tasks.iter().map(|t| (*t, Form::Delta)).collect();
    let threads = engaged::pipeline::state_threads();
    let saved: Vec<(i32, Vec<u8>)> = engine
        .save_tasks(&bases, threads)
        .into_iter()
        .map(|(t, r)| (t, r.expect("saves")))
        .collect();
    let bytes: usize = saved.iter().map(|(_, s)| s.len()).sum();
    eprintln!(
        "state: {customers} customers, {} tasks, {bytes} bytes saved ({} B/customer), {threads} threads",
        tasks.len(),
        bytes / customers.max(1)
    );
    let mut g = c.benchmark_group("state");
    g.throughput(Throughput::Elements(customers as u64));
    g.sample_size(10);
    g.bench_function("save_all_tasks", |b| {
        b.iter(|| black_box(engine.save_tasks(&bases, threads)))
    });
    // A delta after a tenth of the customers ordered again (the next tenth each time).
    let tenth = customers / 10;
    let mut n = customers;
    let mut delta_bytes = 0;
    g.bench_function("save_delta_after_a_tenth_changed", |b| {
        b.iter_batched(
            || {
                for _ in 0..tenth {
                    let (tp, e) = order(n % customers, n);
                    engine.apply(&tp, &e).expect("valid order");
                    n += 1;
                }
            },
            |()| {
                let d = engine.save_tasks(&deltas, threads);
                delta_bytes = d.iter().map(|(_, r)| r.as_ref().map_or(0, Vec::len)).sum();
                d
            },
            criterion::BatchSize::PerIteration,
        )
    });
    eprintln!("state: a delta after {tenth} customers changed: {delta_bytes} bytes");
    let views: Vec<SavedTask<'_>> = saved
        .iter()
        .map(|(t, s)| SavedTask {
            partition: *t,
            base: s,
            deltas: vec![],
        })
        .collect();
    g.bench_function("restore_all_tasks", |b| {
        b.iter_with_large_drop(|| {
            let fresh = Engine::new(CoreConfig::default());
            fresh.restore_tasks(&views, threads).expect("restores");
            fresh
        })
    });
    g.finish();
}

criterion_group!(benches, bench, orders, state);
criterion_main!(benches);
