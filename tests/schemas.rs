//! `schemas/*.avsc` are the source of truth: every one parses, and every input
//! event type round-trips through its schema, with our codec and apache-avro's.

mod support;

use engaged::decode::{Decoder, DecoderConfig, encode};
use engaged::event::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

use support::{EMAIL_TYPES, PURCHASE_TYPES, SURVEY_KINDS};

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// Every `*.avsc` in schemas/, whatever other modules add (EngagementSnapshot,
/// CustomerRisk, ...), parses with apache-avro.
#[test]
fn every_avsc_file_parses() {
    let mut parsed = BTreeMap::new();
    for entry in std::fs::read_dir(schema_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("avsc") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let schema = apache_avro::Schema::parse_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        parsed.insert(stem, schema);
    }
    for kind in EventKind::ALL {
        let name = kind.full_name().rsplit('.').next().unwrap();
        let schema = parsed
            .get(name)
            .unwrap_or_else(|| panic!("schemas/{name}.avsc is missing"));
        // The compiled-in copy is the file.
        assert_eq!(
            schema,
            &apache_avro::Schema::parse_str(kind.schema_json()).unwrap()
        );
        let apache_avro::Schema::Record(r) = schema else {
            panic!("{name} is not a record")
        };
        assert_eq!(r.name.fullname(None), kind.full_name());
    }
}

/// Optional fields are unions with null first and default null (SPEC §1).
#[test]
fn optional_fields_are_null_first_with_null_default() {
    for kind in EventKind::ALL {
        let json: serde_json::Value = serde_json::from_str(kind.schema_json()).unwrap();
        for f in json["fields"].as_array().unwrap() {
            if let Some(branches) = f["type"].as_array() {
                assert_eq!(branches[0], "null", "{kind:?}.{}", f["name"]);
                assert!(
                    f.get("default").is_some_and(|d| d.is_null()),
                    "{kind:?}.{}",
                    f["name"]
                );
            }
        }
        let time = json["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "event_time")
            .unwrap();
        assert_eq!(time["type"]["logicalType"], "timestamp-millis", "{kind:?}");
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9:/._-]{0,20}", ".{0,6}"]
}

fn event() -> impl Strategy<Value = Event> {
    let o = || proptest::option::of(text());
    prop_oneof![
        (text(), any::<i64>(), text(), o(), text(), text(), o(), o()).prop_map(
            |(a, t, v, c, s, p, r, ch)| Event::PageView(PageView {
                event_id: a,
                event_time: t,
                visitor_id: v,
                customer_id: c,
                site: s,
                page: p,
                referrer: r,
                channel: ch,
            })
        ),
        (text(), any::<i64>(), text(), text(), text(), 0usize..7, o()).prop_map(
            |(a, t, c, camp, m, k, u)| Event::Email(EmailEvent {
                event_id: a,
                event_time: t,
                customer_id: c,
                campaign_id: camp,
                message_id: m,
                kind: EMAIL_TYPES[k],
                url: u,
            })
        ),
        (
            (text(), any::<i64>(), text(), text(), 0usize..4),
            (
                any::<i64>(),
                text(),
                proptest::option::of(any::<i64>()),
                any::<i32>(),
                o()
            )
        )
            .prop_map(|((a, t, c, ord, k), (amt, cur, cost, items, camp))| {
                Event::Purchase(Purchase {
                    event_id: a,
                    event_time: t,
                    customer_id: c,
                    order_id: ord,
                    kind: PURCHASE_TYPES[k],
                    amount_minor: amt,
                    currency: cur,
                    cost_minor: cost,
                    items,
                    campaign_id: camp,
                })
            }),
        (
            text(),
            any::<i64>(),
            o(),
            text(),
            0usize..3,
            any::<i32>(),
            o()
        )
            .prop_map(|(a, t, c, s, k, score, com)| Event::Survey(SurveyResponse {
                event_id: a,
                event_time: t,
                customer_id: c,
                survey_id: s,
                kind: SURVEY_KINDS[k],
                score,
                comment: com,
            })),
    ]
}

fn apache_value(e: &Event) -> apache_avro::types::Value {
    match e {
        Event::PageView(x) => apache_avro::to_value(x),
        Event::Email(x) => apache_avro::to_value(x),
        Event::Purchase(x) => apache_avro::to_value(x),
        Event::Survey(x) => apache_avro::to_value(x),
    }
    .unwrap()
}

fn plain_decoder() -> Decoder {
    let mut cfg = DecoderConfig::default();
    for k in EventKind::ALL {
        cfg.topic_schemas
            .insert(format!("{k:?}"), k.schema_json().to_string());
    }
    Decoder::new(&cfg).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Our encoder -> our decoder, in every wire format.
    #[test]
    fn every_kind_round_trips_through_our_codec(e in event()) {
        let d = plain_decoder();
        let topic = format!("{:?}", e.kind());
        prop_assert_eq!(d.decode(&topic, &encode::datum(&e)).unwrap(), e.clone());
        prop_assert_eq!(d.decode(&topic, &encode::single_object(&e)).unwrap(), e);
    }

    /// apache-avro's writer -> our decoder, and our encoder -> apache-avro's
    /// reader -> serde: the schema and the Rust type agree both ways.
    #[test]
    fn every_kind_round_trips_through_apache_avro(e in event()) {
        let schema = apache_avro::Schema::parse_str(e.kind().schema_json()).unwrap();
        let value = apache_value(&e).resolve(&schema).unwrap();
        let theirs = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        let d = plain_decoder();
        prop_assert_eq!(d.decode(&format!("{:?}", e.kind()), &theirs).unwrap(), e.clone());

        let ours = encode::datum(&e);
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut &ours[..])
            .unwrap();
        let decoded = match e.kind() {
            EventKind::PageView => Event::PageView(apache_avro::from_value(&back).unwrap()),
            EventKind::EmailEvent => Event::Email(apache_avro::from_value(&back).unwrap()),
            EventKind::Purchase => Event::Purchase(apache_avro::from_value(&back).unwrap()),
            EventKind::SurveyResponse => Event::Survey(apache_avro::from_value(&back).unwrap()),
        };
        prop_assert_eq!(decoded, e);
    }
}

/// The snapshot schema evolves compatibly: fields are only added, each with a
/// default. Checked against the first published schema (kept in
/// tests/fixtures/EngagementSnapshot.v1.avsc) in both directions: a consumer
/// still on v1 reads today's records, and today's reader reads v1's records
/// (the added fields read as null).
#[test]
fn the_snapshot_schema_stays_compatible_with_its_first_version() {
    use apache_avro::Schema;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;
    let read = |writer: &Schema, reader: &Schema, mut bytes: &[u8]| {
        GenericDatumReader::builder(writer)
            .reader_schema(reader)
            .build()
            .and_then(|r| r.read_value(&mut bytes))
            .unwrap()
    };
    let v1 = Schema::parse_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/EngagementSnapshot.v1.avsc"),
        )
        .unwrap(),
    )
    .unwrap();
    let now = engaged::sink::snapshot_schema();
    let snap = engaged::snapshot::WindowSnapshot {
        window: "1h".into(),
        dimension: "all".into(),
        customers_at_window_start: Some(40),
        lost_customers: Some(4),
        churned_customers: Some(5),
        churn_rate: Some(0.1),
        ..Default::default()
    };
    let datum = engaged::sink::snapshot_datum(&snap).unwrap();
    // v1 reads today's record.
    let old = read(now, &v1, &datum);
    let Value::Record(fields) = &old else {
        panic!("{old:?}")
    };
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("churned_customers"),
        Some(Value::Union(1, Box::new(Value::Long(5))))
    );
    assert_eq!(get("lost_customers"), None, "unknown to v1");
    // Today's reader reads v1's record: the added field is null.
    let v1_datum = GenericDatumWriter::builder(&v1)
        .build()
        .and_then(|w| w.write_value_to_vec(old))
        .unwrap();
    let new = read(&v1, now, &v1_datum);
    let back: engaged::snapshot::WindowSnapshot = apache_avro::from_value(&new).unwrap();
    assert_eq!(back.churned_customers, Some(5));
    assert_eq!(back.customers_at_window_start, Some(40));
    assert_eq!(back.lost_customers, None);
}
