//! Decode throughput (events/s): the fast plan-based path against apache-avro's
//! generic `Value` path, on realistic PageView and Purchase payloads, in each
//! wire format.
//!
//!     cargo bench --bench decode -- --warm-up-time 1 --measurement-time 3

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engaged::decode::{Decoder, DecoderConfig, encode};
use engaged::event::{Event, EventKind, PageView, Purchase, PurchaseType};
use std::hint::black_box;

const N: usize = 1_000;
const T0: i64 = 1_709_510_400_000;

/// A small deterministic generator, so that runs are comparable.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn uuid(&mut self) -> String {
        let a = self.next() << 32 | self.next();
        let b = self.next() << 32 | self.next();
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }
}

fn page_views(rng: &mut Lcg) -> Vec<Event> {
    let sites = ["shop.example.com", "blog.example.com"];
    let channels = ["organic", "email", "paid_social", "direct"];
    (0..N)
        .map(|i| {
            let customer = rng.below(2) == 0;
            Event::PageView(PageView {
                event_id: rng.uuid(),
                event_time: T0 + i as i64 * 937,
                visitor_id: format!("v-{:016x}", rng.next() << 20 | rng.next()),
                customer_id: customer.then(|| format!("cust-{:08}", rng.below(1_000_000))),
                site: sites[rng.below(2) as usize].into(),
                page: format!(
                    "/products/category-{}/item-{}",
                    rng.below(20),
                    rng.below(5000)
                ),
                referrer: (rng.below(3) == 0).then(|| "https://www.google.com/".to_string()),
                channel: (rng.below(4) != 0).then(|| channels[rng.below(4) as usize].to_string()),
            })
        })
        .collect()
}

fn purchases(rng: &mut Lcg) -> Vec<Event> {
    (0..N)
        .map(|i| {
            let amount = 500 + rng.below(30_000) as i64;
            Event::Purchase(Purchase {
                event_id: rng.uuid(),
                event_time: T0 + i as i64 * 4_001,
                customer_id: format!("cust-{:08}", rng.below(1_000_000)),
                order_id: format!("ord-{:010}", rng.below(10_000_000_000)),
                kind: [
                    PurchaseType::Order,
                    PurchaseType::Order,
                    PurchaseType::Refund,
                    PurchaseType::Renewal,
                ][rng.below(4) as usize],
                amount_minor: amount,
                currency: "EUR".into(),
                cost_minor: (rng.below(3) != 0).then_some(amount / 2),
                items: 1 + rng.below(5) as i32,
                campaign_id: (rng.below(4) == 0).then(|| "spring-sale".to_string()),
            })
        })
        .collect()
}

fn schema_id(kind: EventKind) -> u32 {
    match kind {
        EventKind::PageView => 1,
        EventKind::EmailEvent => 2,
        EventKind::Purchase => 3,
        EventKind::SurveyResponse => 4,
    }
}

fn bench(c: &mut Criterion) {
    let mut cfg = DecoderConfig::default();
    for k in EventKind::ALL {
        cfg.schema_ids.insert(schema_id(k), k.schema_json().into());
        cfg.topic_schemas
            .insert(format!("{k:?}"), k.schema_json().into());
    }
    let decoder = Decoder::new(&cfg).expect("reader schemas compile");
    let mut rng = Lcg(42);
    let sets = [
        ("PageView", page_views(&mut rng)),
        ("Purchase", purchases(&mut rng)),
    ];

    type Enc = fn(&Event) -> Vec<u8>;
    let formats: [(&str, Enc); 3] = [
        ("plain", encode::datum),
        ("confluent", |e| encode::confluent(schema_id(e.kind()), e)),
        ("single_object", encode::single_object),
    ];
    for (format, enc) in formats {
        let mut group = c.benchmark_group(format!("decode/{format}"));
        group.throughput(Throughput::Elements(N as u64));
        for (name, events) in &sets {
            let topic = format!("{:?}", events[0].kind());
            let payloads: Vec<Vec<u8>> = events.iter().map(enc).collect();
            // Both paths must agree before we time them.
            for (p, e) in payloads.iter().zip(events) {
                assert_eq!(decoder.decode(&topic, p).as_ref(), Ok(e));
                assert_eq!(decoder.decode_generic(&topic, p).as_ref(), Ok(e));
            }
            group.bench_with_input(BenchmarkId::new("fast", name), &payloads, |b, ps| {
                b.iter(|| {
                    for p in ps {
                        black_box(decoder.decode(&topic, black_box(p)).ok());
                    }
                })
            });
            group.bench_with_input(BenchmarkId::new("generic", name), &payloads, |b, ps| {
                b.iter(|| {
                    for p in ps {
                        black_box(decoder.decode_generic(&topic, black_box(p)).ok());
                    }
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
