//! Core throughput (events/s): generated traffic through `Pipeline::handle_record`
//! (decode + validate + late/duplicate checks + windows + sessions), compared in
//! the same run with decode alone, and the cost of one snapshot round.
//!
//!     cargo bench --bench engine -- --warm-up-time 1 --measurement-time 5

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engaged::decode::{Decoder, encode};
use engaged::demo::generator::{DEFAULT_START, Generator, GeneratorConfig};
use engaged::demo::runner::demo_decoder_config;
use engaged::event::Event;
use engaged::pipeline::Pipeline;
use engaged::state::{CoreConfig, Engine, TopicPartition};
use engaged::telemetry::Telemetry;

const PARTITIONS: i32 = 4;

fn traffic() -> Vec<(TopicPartition, Vec<u8>, i64)> {
    let mut g = Generator::new(GeneratorConfig {
        visitors_per_hour: 20_000.0,
        customers: 20_000,
        ..GeneratorConfig::default()
    });
    let events = g.advance_to(DEFAULT_START + 6 * 3_600_000);
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

fn bench(c: &mut Criterion) {
    let records = traffic();
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
    g.finish();

    let p = pipeline();
    let mut last = 0;
    for (tp, payload, t) in &records {
        let _ = p.handle_record(tp, Some(payload), *t);
        last = last.max(*t);
    }
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.bench_function("all_windows", |b| {
        b.iter(|| {
            black_box(engaged::snapshot::build(
                p.engine(),
                last - 300_000,
                &p.assigned(),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
