//! The fuzz targets' bodies, one function per target (the files in
//! `fuzz_targets/` are one line each), and the generator of hostile writer
//! schemas. Run them with `fuzz/run.sh` (docs/operations.md, "Fuzzing").
//!
//! What every target checks, besides "no panic": no single allocation above
//! [`ALLOC_LIMIT`] ([`Guard`], the same bound as libFuzzer's
//! `-malloc_limit_mb=64`, which only works under a sanitizer), so a length or
//! count the input declares but does not carry shows up as a crash; and a
//! stack overflow is a crash anyway (libFuzzer's main thread, 8 MiB).

use arbitrary::Unstructured;
use engaged::decode::container::{Blocks, Datums, Header};
use engaged::decode::{Decoder, DecoderConfig};
use engaged::event::{Event, EventKind};
use serde_json::{Value as Json, json};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::LazyLock;

pub mod schema_gen;

/// Largest single allocation a target may make (bytes).
pub const ALLOC_LIMIT: usize = 64 << 20;

/// The system allocator, aborting on any allocation above [`ALLOC_LIMIT`]:
/// libFuzzer reports the abort as a crash and keeps the input.
pub struct Guard;

fn check(size: usize) {
    if size > ALLOC_LIMIT {
        // No allocation here: a static message, then abort.
        let _ = std::io::stderr()
            .write_all(b"engaged-fuzz: an allocation above ALLOC_LIMIT (64 MiB)\n");
        std::process::abort();
    }
}

// SAFETY: forwards every call to `System` unchanged after a size check.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

/// The interop fixtures' writer schemas: our reader schemas under several ids
/// and topics, evolved schemas (fields to skip of every type, promotions,
/// reordered and unknown enum symbols, dropped fields) and a union of all four.
pub fn config() -> DecoderConfig {
    let j: Json = serde_json::from_str(include_str!("../../tests/fixtures/writer_schemas.json"))
        .expect("fixture JSON");
    let mut cfg = DecoderConfig::default();
    for (id, text) in j["schema_ids"].as_object().expect("schema_ids") {
        let text = text.as_str().expect("schema text").to_string();
        cfg.schema_ids.insert(id.parse().expect("id"), text);
    }
    for (topic, text) in j["topic_schemas"].as_object().expect("topic_schemas") {
        let text = text.as_str().expect("schema text").to_string();
        cfg.topic_schemas.insert(topic.clone(), text);
    }
    cfg
}

static DECODER: LazyLock<Decoder> =
    LazyLock::new(|| Decoder::new(&config()).expect("the fixture schemas compile"));

/// The topics a payload may come from: one without a plain writer schema, then
/// the configured ones. The wire-format targets' first byte picks one.
pub fn topics() -> Vec<String> {
    let mut t = vec!["no-schema".to_string()];
    t.extend(config().topic_schemas.into_keys());
    t
}

static TOPICS: LazyLock<Vec<String>> = LazyLock::new(topics);

thread_local! {
    /// The event `decode_into` reuses, as the source stage does.
    static REUSED: RefCell<Event> = RefCell::new(Event::empty(EventKind::PageView));
}

/// `payload` from the topic `data[0]` picks, decoded the two public ways; they
/// must agree.
fn decode(topic: u8, payload: &[u8]) {
    let topic = &TOPICS[usize::from(topic) % TOPICS.len()];
    let fresh = DECODER.decode(topic, payload);
    REUSED.with_borrow_mut(|event| {
        let reused = DECODER.decode_into(topic, payload, event);
        match (&fresh, reused) {
            (Ok(a), Ok(())) => assert_eq!(a, event, "decode and decode_into differ"),
            (Err(a), Err(b)) => assert_eq!(a, &b, "decode and decode_into differ"),
            (a, b) => panic!("decode gave {a:?}, decode_into {b:?}"),
        }
    });
}

/// Target `decode_confluent`: `data[0]` picks the topic, the rest follows the
/// Confluent magic byte `0x00` (schema id, datum).
pub fn decode_confluent(data: &[u8]) {
    if let Some((&topic, rest)) = data.split_first() {
        let mut payload = Vec::with_capacity(rest.len() + 1);
        payload.push(0x00);
        payload.extend_from_slice(rest);
        decode(topic, &payload);
    }
}

/// Target `decode_single_object`: `data[0]` picks the topic, the rest follows
/// the single-object magic `C3 01` (fingerprint, datum).
pub fn decode_single_object(data: &[u8]) {
    if let Some((&topic, rest)) = data.split_first() {
        let mut payload = Vec::with_capacity(rest.len() + 2);
        payload.extend_from_slice(&[0xC3, 0x01]);
        payload.extend_from_slice(rest);
        decode(topic, &payload);
    }
}

/// Target `decode_datum`: `data[0]` picks the topic, the rest is the whole
/// payload (usually a plain datum; any framing is detected as in production).
pub fn decode_datum(data: &[u8]) {
    if let Some((&topic, payload)) = data.split_first() {
        decode(topic, payload);
    }
}

thread_local! {
    /// The last container schema and its fast decoder: compiling a schema costs
    /// more than reading a small file, and most inputs keep their seed's schema.
    static DATUMS: RefCell<Option<(String, Option<Datums>)>> = const { RefCell::new(None) };
}

/// Target `container`: `data` as an Avro object container file, read the way
/// `engaged replay` reads one (header, then block after block; a datum that
/// does not decode loses the rest of its block).
pub fn container(data: &[u8]) {
    let mut input = data;
    let Ok(header) = Header::read(&mut input) else {
        return;
    };
    DATUMS.with_borrow_mut(|cache| {
        if cache.as_ref().is_none_or(|(s, _)| *s != header.schema) {
            let datums = Datums::new(&DECODER, &header.schema, "fuzz").ok().flatten();
            *cache = Some((header.schema.clone(), datums));
        }
        let Some((_, Some(datums))) = cache.as_ref() else {
            return;
        };
        let Some(mut blocks) = Blocks::new(input, header) else {
            return;
        };
        let mut event = Event::empty(EventKind::PageView);
        while let Ok(Some(block)) = blocks.next_block() {
            let mut at = 0;
            for _ in 0..block.count {
                match datums.decode_at_into(&block.data, at, &mut event) {
                    Ok(next) => {
                        assert!(next > at && next <= block.data.len(), "datum end {next}");
                        at = next;
                    }
                    Err(_) => break,
                }
            }
        }
    });
}

/// Target `writer_schema`: a writer schema built from `data` by
/// [`schema_gen`] (deep nesting, huge fixed sizes, recursive named types,
/// unions of unions, evolved event records), compiled against our reader
/// schemas as `Decoder::new` compiles a configured one, then a datum decoded
/// with it: the fast plan when the schema compiles to one, else the generic
/// fallback through a `Decoder` configured with the schema.
pub fn writer_schema(data: &[u8]) {
    let (schema, datum) = schema_gen::split(data);
    let text = schema.to_string();
    let datums = match Datums::new(&DECODER, &text, "fuzz") {
        Ok(d) => d,
        Err(_) => return,
    };
    match datums {
        Some(d) => {
            if let Ok((_, next)) = d.decode_at(datum, 0) {
                assert!(next <= datum.len(), "datum end {next}");
            }
        }
        None => {
            let cfg = DecoderConfig {
                schema_ids: BTreeMap::from([(7, text.clone())]),
                topic_schemas: BTreeMap::from([("t".to_string(), text)]),
            };
            if let Ok(decoder) = Decoder::new(&cfg) {
                let _ = decoder.decode("t", datum);
            }
        }
    }
}

/// A JSON object of `pairs`, moving the values in (`json!` would serialize a
/// copy of every nested value, quadratic in the nesting depth).
fn obj<const N: usize>(pairs: [(&str, Json); N]) -> Json {
    Json::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A JSON value nested `levels` deep around `inner`, for generators.
fn nest(levels: usize, inner: Json) -> Json {
    (0..levels).fold(inner, |t, _| obj([("type", json!("array")), ("items", t)]))
}

/// Used by [`schema_gen`]: arbitrary-crate helpers that never fail (an
/// exhausted input reads as zeros, which the generator maps to "unchanged").
fn pick(u: &mut Unstructured<'_>, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    u.int_in_range(0..=n - 1).unwrap_or(0)
}
