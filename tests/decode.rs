//! Interop: messages written by fastavro (tests/fixtures/make_fixtures.py), in
//! every wire format and with evolved and union writer schemas, decode with
//! our `Decoder` to exactly what fastavro itself reads back.

use engaged::decode::container::{Blocks, Header};
use engaged::decode::encode::long;
use engaged::decode::{DecodeError, Decoder, DecoderConfig, WireFormat};
use engaged::event::{Event, EventKind};
use serde_json::Value as Json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Remembers the largest single allocation of each thread, for the tests that
/// hostile input allocates only what it carries (what the fuzz targets check
/// with libFuzzer's `-malloc_limit_mb`).
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// The one way to see allocation sizes: wrap the system allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

/// `f`'s result and the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_json(name: &str) -> Json {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn config() -> DecoderConfig {
    let j = read_json("writer_schemas.json");
    let mut cfg = DecoderConfig::default();
    for (id, text) in j["schema_ids"].as_object().unwrap() {
        cfg.schema_ids
            .insert(id.parse().unwrap(), text.as_str().unwrap().to_string());
    }
    for (topic, text) in j["topic_schemas"].as_object().unwrap() {
        cfg.topic_schemas
            .insert(topic.clone(), text.as_str().unwrap().to_string());
    }
    cfg
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// (name, topic, payload) per line of a `.hex` fixture.
fn messages(format: &str) -> Vec<(String, String, Vec<u8>)> {
    std::fs::read_to_string(fixture(&format!("{format}.hex")))
        .unwrap()
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let name = parts.next().unwrap().to_string();
            let topic = parts.next().unwrap().to_string();
            let payload = hex(parts.next().unwrap());
            assert!(parts.next().is_none(), "{line}");
            (name, topic, payload)
        })
        .collect()
}

/// Our event as JSON with Avro field names (the structs' serde names are the
/// Avro names), plus its kind's name.
fn as_json(e: &Event) -> (String, Json) {
    let v = match e {
        Event::PageView(x) => serde_json::to_value(x),
        Event::Email(x) => serde_json::to_value(x),
        Event::Purchase(x) => serde_json::to_value(x),
        Event::Survey(x) => serde_json::to_value(x),
    }
    .unwrap();
    let kind = e.kind().full_name().rsplit('.').next().unwrap().to_string();
    (kind, v)
}

fn check_format(format: &str, wire: WireFormat) -> usize {
    let d = Decoder::new(&config()).unwrap();
    let expected = read_json("expected.json");
    let msgs = messages(format);
    assert!(msgs.len() >= 20, "{format}: only {} messages", msgs.len());
    let mut failures = Vec::new();
    for (name, topic, payload) in &msgs {
        let key = format!("{format}/{name}");
        let want = &expected[&key];
        assert!(!want.is_null(), "no expectation for {key}");
        // Plain union datums of branch 0 look Confluent-framed: the point.
        if !(format == "plain" && payload[0] == 0) {
            assert_eq!(Decoder::wire_format(payload), wire, "{key}");
        }
        let fast = d.decode(topic, payload);
        let slow = d.decode_generic(topic, payload);
        match (&want["error"], &fast) {
            (Json::String(_), Err(e)) => {
                // fastavro refused it too (an enum symbol unknown to the reader).
                assert!(
                    matches!(e, DecodeError::UnknownEnumSymbol { field: "type", symbol } if symbol == "GIFT"),
                    "{key}: {e}"
                );
                assert!(slow.is_err(), "{key}: generic path accepted it");
            }
            (Json::String(why), Ok(ev)) => {
                failures.push(format!("{key}: decoded {ev:?}, fastavro: {why}"))
            }
            (_, Err(e)) => failures.push(format!("{key}: {e}")),
            (_, Ok(ev)) => {
                let (kind, got) = as_json(ev);
                if want["kind"] != Json::String(kind.clone()) || want["event"] != got {
                    failures.push(format!(
                        "{key}: got {kind} {got}, fastavro read {} {}",
                        want["kind"], want["event"]
                    ));
                }
                assert_eq!(slow.as_ref().ok(), Some(ev), "{key}: generic path differs");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    msgs.len()
}

#[test]
fn plain_fixtures_decode_as_fastavro_reads_them() {
    check_format("plain", WireFormat::Plain);
}

#[test]
fn confluent_fixtures_decode_as_fastavro_reads_them() {
    check_format("confluent", WireFormat::Confluent);
}

#[test]
fn single_object_fixtures_decode_as_fastavro_reads_them() {
    // fastavro's fingerprints of our reader schemas, the evolved and the union
    // schemas are all found.
    check_format("single_object", WireFormat::SingleObject);
}

#[test]
fn fixtures_cover_every_kind_and_writer() {
    let expected = read_json("expected.json");
    let mut kinds = BTreeSet::new();
    let mut errors = 0;
    for (key, v) in expected.as_object().unwrap() {
        match v["kind"].as_str() {
            Some(k) => {
                kinds.insert(k.to_string());
            }
            None => {
                errors += 1;
                assert!(key.contains("pu-legacy"), "{key}");
            }
        }
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(errors, 3);
    let names: Vec<String> = messages("plain").into_iter().map(|m| m.0).collect();
    for prefix in [
        "union-PageView",
        "pv-v2",
        "pu-legacy",
        "em-v2",
        "SurveyResponse",
    ] {
        assert!(names.iter().any(|n| n.starts_with(prefix)), "{prefix}");
    }
}

#[test]
fn every_strict_prefix_of_a_fixture_is_an_error() {
    let d = Decoder::new(&config()).unwrap();
    for format in ["plain", "confluent", "single_object"] {
        for (name, topic, payload) in messages(format) {
            for n in 0..payload.len() {
                assert!(
                    d.decode(&topic, &payload[..n]).is_err(),
                    "{format}/{name}: prefix of {n} bytes decoded"
                );
            }
        }
    }
}

#[test]
fn plain_datums_need_their_topic_schema() {
    let d = Decoder::new(&config()).unwrap();
    let (_, _, payload) = messages("plain").into_iter().next().unwrap();
    assert_eq!(
        d.decode("unknown-topic", &payload),
        Err(DecodeError::NoSchemaForTopic("unknown-topic".into()))
    );
}

/// The container file: every record, re-encoded as a plain datum of the
/// file's (union) writer schema, decodes to what apache-avro reads; counts
/// match what the generator computed independently.
#[test]
fn mixed_events_container_decodes_and_matches_its_summary() {
    // `Decoder::new` bounds apache-avro's allocations, a process-wide setting
    // its first use fixes: before reading the file with apache-avro, as
    // `engaged replay` does (and as the `fuzz_` test of that bound needs).
    Decoder::new(&config()).unwrap();
    let bytes = std::fs::read(fixture("mixed_events.avro")).unwrap();
    let reader = apache_avro::Reader::new(&bytes[..]).unwrap();
    let writer_schema = reader.writer_schema().clone();
    let mut cfg = config();
    cfg.topic_schemas.insert(
        "replay".into(),
        serde_json::to_string(&writer_schema).unwrap(),
    );
    let d = Decoder::new(&cfg).unwrap();
    let summary = read_json("mixed_events.summary.json");

    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_time = i64::MIN;
    let mut revenue = 0i64;
    let mut n = 0u64;
    for value in reader {
        let value = value.unwrap();
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&writer_schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        let event = d.decode("replay", &datum).unwrap();
        assert_eq!(d.decode_generic("replay", &datum).unwrap(), event);
        assert!(event.validate().is_ok(), "{event:?}");
        assert!(event.event_time() >= last_time, "not sorted by event time");
        last_time = event.event_time();
        if let Event::Purchase(p) = &event
            && matches!(
                p.kind,
                engaged::event::PurchaseType::Order | engaged::event::PurchaseType::Renewal
            )
        {
            revenue += p.amount_minor;
        }
        let (kind, _) = as_json(&event);
        *by_kind.entry(kind).or_default() += 1;
        n += 1;
    }
    assert_eq!(n, summary["events"].as_u64().unwrap());
    assert!((1_500..=3_000).contains(&n), "{n} events");
    for kind in EventKind::ALL {
        let name = kind.full_name().rsplit('.').next().unwrap();
        assert_eq!(
            by_kind.get(name).copied().unwrap_or(0),
            summary["by_kind"][name].as_u64().unwrap(),
            "{name}"
        );
    }
    assert_eq!(revenue, summary["revenue_minor"].as_i64().unwrap());
    assert_eq!(last_time, summary["last_event_time"].as_i64().unwrap());
}

/// A container header with `schema` (its declared length may exceed the bytes
/// that follow) and the null codec.
fn container_header(schema_len: i64, schema: &[u8], sync: &[u8; 16]) -> Vec<u8> {
    let mut out = b"Obj\x01".to_vec();
    long(&mut out, 1);
    long(&mut out, 11);
    out.extend_from_slice(b"avro.schema");
    long(&mut out, schema_len);
    out.extend_from_slice(schema);
    long(&mut out, 0);
    out.extend_from_slice(sync);
    out
}

/// Found by the `container` fuzz target: a block (or a header value) declaring
/// up to 1 GiB (16 MiB) allocated it all before reading a byte of it, however
/// short the file was.
#[test]
fn fuzz_container_declared_block_size_is_not_allocated_upfront() {
    let sync = *b"0123456789abcdef";
    let schema = EventKind::Purchase.schema_json().as_bytes();
    let mut file = container_header(schema.len() as i64, schema, &sync);
    long(&mut file, 1); // one record
    long(&mut file, 1 << 30); // in a block of 1 GiB
    file.extend_from_slice(b"only this");
    let (block, largest) = largest_allocation(|| {
        let mut input = &file[..];
        let header = Header::read(&mut input).unwrap();
        Blocks::new(input, header).unwrap().next_block()
    });
    assert!(block.is_err(), "{block:?}");
    assert!(largest < 1 << 20, "{largest} bytes allocated at once");

    let file = container_header(16 << 20, b"{}", &sync);
    let (header, largest) = largest_allocation(|| Header::read(&mut &file[..]));
    assert!(header.is_err());
    assert!(largest < 1 << 20, "{largest} bytes allocated at once");
}

/// Found by the `container` fuzz target: a writer schema with a field carrying
/// `"fields": null` (any attribute apache-avro 0.22 keeps and then cannot put
/// in canonical form) made `Decoder::new`, and so `engaged replay` of such a
/// file, panic inside apache-avro's `canonical_form`. It is now a schema error.
#[test]
fn fuzz_writer_schema_apache_avro_cannot_canonicalize_is_not_a_panic() {
    let mut json: Json = serde_json::from_str(EventKind::PageView.schema_json()).unwrap();
    json["fields"][6]["fields"] = Json::Null;
    let mut cfg = DecoderConfig::default();
    cfg.topic_schemas.insert("t".into(), json.to_string());
    let e = Decoder::new(&cfg).unwrap_err();
    assert!(e.to_string().contains("not a valid Avro schema"), "{e}");
    // A fixed size beyond i64 and a size attribute that is not a number.
    json["fields"][6] =
        serde_json::json!({"name": "f", "type": {"type": "fixed", "name": "F", "size": u64::MAX}});
    let huge = json.to_string();
    json["fields"][6] = serde_json::json!({"name": "f", "type": "int", "size": true});
    let odd_size = json.to_string();
    for text in [huge, odd_size] {
        cfg.topic_schemas.insert("t".into(), text);
        assert!(Decoder::new(&cfg).is_err());
    }
}

/// Found by the `writer_schema` fuzz target (twice): apache-avro 0.22 panicked
/// inside `Schema::parse_str` (checking a field's default, it puts the field's
/// type in canonical form) when that type is a `fixed` whose size does not fit
/// in i64, also in a record whose name was already defined.
#[test]
fn fuzz_writer_schema_default_on_a_huge_fixed_is_an_error_not_a_panic() {
    let mut json: Json = serde_json::from_str(EventKind::PageView.schema_json()).unwrap();
    let fields = json["fields"].as_array_mut().unwrap();
    fields.push(serde_json::json!({
        "name": "x",
        "type": {"type": "fixed", "name": "F", "size": u64::MAX},
        "default": null,
    }));
    let mut cfg = DecoderConfig::default();
    cfg.schema_ids.insert(7, json.to_string());
    let e = Decoder::new(&cfg).unwrap_err();
    assert!(e.to_string().contains("not a valid Avro schema"), "{e}");
    // The same record after another of the same name, in a union.
    let first: Json = serde_json::from_str(EventKind::PageView.schema_json()).unwrap();
    cfg.schema_ids
        .insert(7, Json::Array(vec![first, json]).to_string());
    let e = Decoder::new(&cfg).unwrap_err();
    assert!(e.to_string().contains("not a valid Avro schema"), "{e}");
}

/// Found by the `writer_schema` fuzz target: a writer schema nested deeper than
/// the fast decoder follows goes through apache-avro's generic path, which
/// reserved room for an array's declared item count before reading an item
/// (up to 512 MB by its default limit) from a record of a few bytes. The bound
/// is process-wide: every test here calls `Decoder::new` before apache-avro
/// reads anything.
#[test]
fn fuzz_writer_schema_generic_path_huge_array_count_allocation_is_bounded() {
    let mut json: Json = serde_json::from_str(EventKind::PageView.schema_json()).unwrap();
    let deep = (0..70).fold(
        serde_json::json!("int"),
        |t, _| serde_json::json!({"type": "array", "items": t}),
    );
    let fields = json["fields"].as_array_mut().unwrap();
    fields.push(serde_json::json!({"name": "x", "type": deep}));
    let mut cfg = DecoderConfig::default();
    cfg.topic_schemas.insert("t".into(), json.to_string());
    let d = Decoder::new(&cfg).unwrap();
    let (_, _, mut datum) = messages("plain")
        .into_iter()
        .find(|m| m.0 == "PageView-1")
        .unwrap();
    long(&mut datum, 4_000_000); // items declared, none there
    let (decoded, largest) = largest_allocation(|| d.decode("t", &datum));
    assert!(decoded.is_err());
    assert!(largest <= 16 << 20, "{largest} bytes allocated at once");
}
