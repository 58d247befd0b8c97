//! Generator of large Avro object container files for `engaged replay`
//! benchmarks (`scripts/replay_bench.sh` runs it and measures the replay).
//!
//!     cargo bench --bench replay_files -- mixed     OUT.avro [--events N] [--visitors-per-hour X]
//!                                                   [--customers N] [--seed S] [--codec null|deflate]
//!     cargo bench --bench replay_files -- customers OUT.avro [--customers N] [--days D]
//!                                                   [--seed S] [--codec null|deflate]
//!
//! The writer schema is the union of the four SPEC records, read from
//! `schemas/{PageView,EmailEvent,Purchase,SurveyResponse}.avsc` in that order
//! (as `tests/fixtures/make_fixtures.py` writes `mixed_events.avro`); every
//! record is the branch of its kind. Records are streamed into the Avro
//! `Writer` (one block per ~16 kB), so memory stays flat whatever the size.
//!
//! - `mixed`: the first `--events` (default 550,000) events of the demo
//!   generator (`visitors_per_hour` 20,000, 20,000 customers, seed 42, as
//!   `benches/engine.rs` uses it), generated an hour at a time, in event-time order.
//! - `customers`: `--customers` (default 1,000,000) customers spread evenly over
//!   `--days` (default 7) days. Each has two PageViews (one session, with its
//!   customer_id), one ORDER in EUR and, for 70% of them, one EmailEvent before
//!   the views (50% OPENED, 20% CLICKED; clickers' views and order carry the
//!   campaign): ~3.7 M events with unique event_ids, written in non-decreasing
//!   event-time order, so a replay accepts every one of them.
//!
//! Run without a kind (as `cargo bench`, `cargo test --all-targets` do, with
//! `--bench` or a filter) it does nothing and exits 0.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use apache_avro::types::Value;
use apache_avro::{Codec, DeflateSettings, Schema, Writer};
use engaged::demo::generator::{DEFAULT_START, Generator, GeneratorConfig};
use engaged::event::{
    EmailEvent, EmailEventType, Event, EventKind, Millis, PageView, Purchase, PurchaseType,
    SurveyKind, SurveyResponse,
};

const SEC: Millis = 1_000;
const HOUR: Millis = 3_600 * SEC;
const DAY: Millis = 24 * HOUR;

const USAGE: &str = "usage: cargo bench --bench replay_files -- (mixed|customers) OUT.avro \
[--events N] [--visitors-per-hour X] [--customers N] [--days D] [--seed S] [--codec null|deflate]";

struct Options {
    kind: String,
    out: PathBuf,
    events: u64,
    visitors_per_hour: f64,
    customers: Option<u32>,
    days: u32,
    seed: u64,
    codec: Codec,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut it = args.iter();
    let kind = it.next().cloned().unwrap_or_default();
    let out = it.next().ok_or("missing OUT.avro")?.into();
    let mut o = Options {
        kind,
        out,
        events: 550_000,
        visitors_per_hour: 20_000.0,
        customers: None,
        days: 7,
        seed: 42,
        codec: Codec::Null,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let bad = |v: &str| format!("{flag}: bad value {v:?}");
        match flag.as_str() {
            "--events" => {
                let v = value()?;
                o.events = v.parse().map_err(|_| bad(v))?;
            }
            "--visitors-per-hour" => {
                let v = value()?;
                o.visitors_per_hour = v.parse().map_err(|_| bad(v))?;
            }
            "--customers" => {
                let v = value()?;
                o.customers = Some(v.parse().map_err(|_| bad(v))?);
            }
            "--days" => {
                let v = value()?;
                o.days = v.parse().ok().filter(|d| *d > 0).ok_or_else(|| bad(v))?;
            }
            "--seed" => {
                let v = value()?;
                o.seed = v.parse().map_err(|_| bad(v))?;
            }
            "--codec" => {
                let v = value()?;
                o.codec = match v.as_str() {
                    "null" => Codec::Null,
                    "deflate" => Codec::Deflate(DeflateSettings::default()),
                    _ => return Err(bad(v)),
                };
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; drop it wherever it is.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if !matches!(
        args.first().map(String::as_str),
        Some("mixed" | "customers")
    ) {
        // Run by `cargo bench`/`cargo test` with no arguments or another bench's filter.
        eprintln!("replay_files: nothing to do ({USAGE})");
        return ExitCode::SUCCESS;
    }
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("replay_files: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay_files: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The union of the four SPEC records, in `EventKind::ALL` order, from `schemas/`.
fn union_schema() -> Result<Schema, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut parts = vec![];
    for k in EventKind::ALL {
        let name = k.full_name().rsplit('.').next().unwrap_or_default();
        let path = dir.join(format!("{name}.avsc"));
        parts.push(std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Schema::parse_str(&format!("[{}]", parts.join(","))).map_err(|e| e.to_string())
}

/// Events by family, in `EventKind::ALL` order, and event-time range.
#[derive(Default)]
struct Counts {
    by_kind: [u64; 4],
    first: Option<Millis>,
    last: Option<Millis>,
    out_of_order: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.by_kind.iter().sum()
    }
}

struct Out<'a> {
    w: Writer<'a, BufWriter<File>>,
    counts: Counts,
}

impl Out<'_> {
    fn write(&mut self, e: &Event) -> Result<(), String> {
        let branch = EventKind::ALL
            .iter()
            .position(|k| *k == e.kind())
            .expect("every kind is in ALL");
        let v = Value::Union(branch as u32, Box::new(record(e)));
        self.w.append_value_ref(&v).map_err(|e| e.to_string())?;
        let t = e.event_time();
        let c = &mut self.counts;
        c.by_kind[branch] += 1;
        if c.last.is_some_and(|l| t < l) {
            c.out_of_order += 1;
        }
        c.first = Some(c.first.map_or(t, |f| f.min(t)));
        c.last = Some(c.last.map_or(t, |l| l.max(t)));
        Ok(())
    }
}

fn run(o: &Options) -> Result<(), String> {
    let schema = union_schema()?;
    if let Some(dir) = o.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // Written under a temporary name and renamed at the end: an interrupted run
    // leaves no truncated file that looks complete.
    let tmp = o.out.with_extension("avro.partial");
    let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let w = Writer::with_codec(&schema, BufWriter::with_capacity(1 << 20, file), o.codec)
        .map_err(|e| e.to_string())?;
    let mut out = Out {
        w,
        counts: Counts::default(),
    };
    let started = Instant::now();
    match o.kind.as_str() {
        "mixed" => mixed(o, &mut out)?,
        _ => customers(o, &mut out)?,
    }
    out.w.flush().map_err(|e| e.to_string())?;
    let counts = std::mem::take(&mut out.counts);
    drop(out.w.into_inner().map_err(|e| e.to_string())?);
    std::fs::rename(&tmp, &o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let bytes = std::fs::metadata(&o.out).map_or(0, |m| m.len());
    let [pv, email, purchase, survey] = counts.by_kind;
    let iso = |t: Option<Millis>| {
        t.and_then(chrono::DateTime::from_timestamp_millis)
            .map_or("-".into(), |d| d.to_rfc3339())
    };
    println!(
        "{}: {} events (PageView {pv}, EmailEvent {email}, Purchase {purchase}, \
         SurveyResponse {survey}), {bytes} bytes, codec {}, event time {} .. {}, \
         {} out of order, written in {:.1} s",
        o.out.display(),
        counts.total(),
        <&str>::from(o.codec),
        iso(counts.first),
        iso(counts.last),
        counts.out_of_order,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The demo generator's traffic, an hour at a time, cut at `--events`.
fn mixed(o: &Options, out: &mut Out<'_>) -> Result<(), String> {
    let mut g = Generator::new(GeneratorConfig {
        seed: o.seed,
        visitors_per_hour: o.visitors_per_hour,
        customers: o.customers.unwrap_or(20_000),
        ..GeneratorConfig::default()
    });
    let mut until = DEFAULT_START;
    let mut empty_hours = 0;
    while out.counts.total() < o.events {
        until += HOUR;
        let events = g.advance_to(until);
        empty_hours = if events.is_empty() {
            empty_hours + 1
        } else {
            0
        };
        if empty_hours > 24 * 365 {
            return Err("the generator produces no more events".into());
        }
        for e in &events {
            if out.counts.total() >= o.events {
                break;
            }
            out.write(e)?;
        }
    }
    Ok(())
}

/// splitmix64: a tiny deterministic RNG, enough for jitter and amounts.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }
}

/// Pending events by (time, sequence): released once no later customer can
/// produce an earlier one, so the output is in non-decreasing event time.
struct Pending {
    heap: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    slots: Vec<Option<Event>>,
    free: Vec<usize>,
    seq: u64,
}

impl Pending {
    fn push(&mut self, e: Event) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(e);
                s
            }
            None => {
                self.slots.push(Some(e));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        let t = self.slots[slot].as_ref().map_or(0, Event::event_time);
        self.heap.push(Reverse((t, self.seq, slot)));
    }

    /// Writes every pending event at or before `until`.
    fn release(&mut self, until: Millis, out: &mut Out<'_>) -> Result<(), String> {
        while let Some(Reverse((t, _, slot))) = self.heap.peek().copied() {
            if t > until {
                break;
            }
            self.heap.pop();
            let e = self.slots[slot].take().expect("queued slot holds an event");
            self.free.push(slot);
            out.write(&e)?;
        }
        Ok(())
    }
}

/// N customers with two views, one ORDER and (70%) one email event each.
fn customers(o: &Options, out: &mut Out<'_>) -> Result<(), String> {
    let n = i64::from(o.customers.unwrap_or(1_000_000).max(1));
    let span = i64::from(o.days) * DAY;
    let start = DEFAULT_START;
    let campaign = "wk-2026-47-newsletter".to_string();
    let mut rng = Mix(o.seed);
    let mut pending = Pending {
        heap: BinaryHeap::new(),
        slots: vec![],
        free: vec![],
        seq: 0,
    };
    for i in 0..n {
        let base = start + i * span / n;
        let customer_id = format!("cust-{i:07}");
        let visitor_id = format!("v-{i:07}");
        let roll = rng.next() % 10;
        let clicked = roll < 2;
        let product = rng.range(1, 201);
        let product_url = format!("https://shop.example/products/p-{product:03}");
        if roll < 7 {
            pending.push(Event::Email(EmailEvent {
                event_id: format!("em-{i:07}"),
                event_time: base,
                customer_id: customer_id.clone(),
                campaign_id: campaign.clone(),
                message_id: format!("msg-{i:07}"),
                kind: if clicked {
                    EmailEventType::Clicked
                } else {
                    EmailEventType::Opened
                },
                url: clicked.then(|| product_url.clone()),
            }));
        }
        let (channel, referrer) = if clicked {
            (Some("email".to_string()), None)
        } else {
            match rng.next() % 3 {
                0 => (
                    Some("organic".to_string()),
                    Some("https://www.google.com/".to_string()),
                ),
                1 => (Some("social".to_string()), None),
                _ => (None, None),
            }
        };
        let first_view = base + rng.range(5 * SEC, 60 * SEC);
        let second_view = first_view + rng.range(10 * SEC, 180 * SEC);
        let order_time = second_view + rng.range(10 * SEC, 90 * SEC);
        pending.push(Event::PageView(PageView {
            event_id: format!("pv-{i:07}-1"),
            event_time: first_view,
            visitor_id: visitor_id.clone(),
            customer_id: Some(customer_id.clone()),
            site: "shop.example".into(),
            page: format!("/products/p-{product:03}"),
            referrer,
            channel: channel.clone(),
        }));
        pending.push(Event::PageView(PageView {
            event_id: format!("pv-{i:07}-2"),
            event_time: second_view,
            visitor_id,
            customer_id: Some(customer_id.clone()),
            site: "shop.example".into(),
            page: "/checkout".into(),
            referrer: Some(product_url),
            channel,
        }));
        let amount = rng.range(500, 20_000);
        pending.push(Event::Purchase(Purchase {
            event_id: format!("ord-{i:07}"),
            event_time: order_time,
            customer_id,
            order_id: format!("o-{i:07}"),
            kind: PurchaseType::Order,
            amount_minor: amount,
            currency: "EUR".into(),
            cost_minor: (!rng.next().is_multiple_of(5)).then(|| amount * rng.range(40, 71) / 100),
            items: rng.range(1, 6) as i32,
            campaign_id: clicked.then(|| campaign.clone()),
        }));
        // Every later customer's events are at or after its base time.
        pending.release(base, out)?;
    }
    pending.release(Millis::MAX, out)
}

// ------------------------------------------------------------ Avro values

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

/// `["null", "string"]`.
fn opt_string(s: &Option<String>) -> Value {
    match s {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(string(s))),
    }
}

fn enum_value(index: usize, symbols: &[&str]) -> Value {
    Value::Enum(index as u32, symbols[index].to_string())
}

fn fields(fs: Vec<(&str, Value)>) -> Value {
    Value::Record(fs.into_iter().map(|(n, v)| (n.to_string(), v)).collect())
}

/// The record of `e` with its kind's schema (`schemas/<Kind>.avsc`).
fn record(e: &Event) -> Value {
    match e {
        Event::PageView(PageView {
            event_id,
            event_time,
            visitor_id,
            customer_id,
            site,
            page,
            referrer,
            channel,
        }) => fields(vec![
            ("event_id", string(event_id)),
            ("event_time", Value::TimestampMillis(*event_time)),
            ("visitor_id", string(visitor_id)),
            ("customer_id", opt_string(customer_id)),
            ("site", string(site)),
            ("page", string(page)),
            ("referrer", opt_string(referrer)),
            ("channel", opt_string(channel)),
        ]),
        Event::Email(EmailEvent {
            event_id,
            event_time,
            customer_id,
            campaign_id,
            message_id,
            kind,
            url,
        }) => fields(vec![
            ("event_id", string(event_id)),
            ("event_time", Value::TimestampMillis(*event_time)),
            ("customer_id", string(customer_id)),
            ("campaign_id", string(campaign_id)),
            ("message_id", string(message_id)),
            (
                "type",
                enum_value(
                    *kind as usize,
                    &[
                        "SENT",
                        "DELIVERED",
                        "BOUNCED",
                        "OPENED",
                        "CLICKED",
                        "UNSUBSCRIBED",
                        "COMPLAINED",
                    ],
                ),
            ),
            ("url", opt_string(url)),
        ]),
        Event::Purchase(Purchase {
            event_id,
            event_time,
            customer_id,
            order_id,
            kind,
            amount_minor,
            currency,
            cost_minor,
            items,
            campaign_id,
        }) => fields(vec![
            ("event_id", string(event_id)),
            ("event_time", Value::TimestampMillis(*event_time)),
            ("customer_id", string(customer_id)),
            ("order_id", string(order_id)),
            (
                "type",
                enum_value(
                    *kind as usize,
                    &["ORDER", "REFUND", "RENEWAL", "CANCELLATION"],
                ),
            ),
            ("amount_minor", Value::Long(*amount_minor)),
            ("currency", string(currency)),
            (
                "cost_minor",
                match cost_minor {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(c) => Value::Union(1, Box::new(Value::Long(*c))),
                },
            ),
            ("items", Value::Int(*items)),
            ("campaign_id", opt_string(campaign_id)),
        ]),
        Event::Survey(SurveyResponse {
            event_id,
            event_time,
            customer_id,
            survey_id,
            kind,
            score,
            comment,
        }) => fields(vec![
            ("event_id", string(event_id)),
            ("event_time", Value::TimestampMillis(*event_time)),
            ("customer_id", opt_string(customer_id)),
            ("survey_id", string(survey_id)),
            (
                "kind",
                enum_value(
                    match kind {
                        SurveyKind::Nps => 0,
                        SurveyKind::Csat => 1,
                        SurveyKind::Ces => 2,
                    },
                    &["NPS", "CSAT", "CES"],
                ),
            ),
            ("score", Value::Int(*score)),
            ("comment", opt_string(comment)),
        ]),
    }
}
