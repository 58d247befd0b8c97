//! Interop: messages written by fastavro (tests/fixtures/make_fixtures.py), in
//! every wire format and with evolved and union writer schemas, decode with
//! our `Decoder` to exactly what fastavro itself reads back.

use engaged::decode::{DecodeError, Decoder, DecoderConfig, WireFormat};
use engaged::event::{Event, EventKind};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

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
