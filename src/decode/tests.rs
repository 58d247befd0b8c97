//! Unit tests of the decoder: wire formats, hostile input, schema resolution,
//! and the fast path checked against apache-avro's generic path.

use super::schema::{Named, Parsed, WType};
use super::*;
use crate::event::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------- strategies

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/._-]{0,16}",
        ".{0,8}", // any Unicode
    ]
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

fn page_view() -> impl Strategy<Value = PageView> {
    (
        text(),
        any::<i64>(),
        text(),
        opt_text(),
        text(),
        text(),
        opt_text(),
        opt_text(),
    )
        .prop_map(
            |(event_id, event_time, visitor_id, customer_id, site, page, referrer, channel)| {
                PageView {
                    event_id,
                    event_time,
                    visitor_id,
                    customer_id,
                    site,
                    page,
                    referrer,
                    channel,
                }
            },
        )
}

fn email() -> impl Strategy<Value = EmailEvent> {
    (
        text(),
        any::<i64>(),
        text(),
        text(),
        text(),
        0usize..7,
        opt_text(),
    )
        .prop_map(
            |(event_id, event_time, customer_id, campaign_id, message_id, k, url)| EmailEvent {
                event_id,
                event_time,
                customer_id,
                campaign_id,
                message_id,
                kind: [
                    EmailEventType::Sent,
                    EmailEventType::Delivered,
                    EmailEventType::Bounced,
                    EmailEventType::Opened,
                    EmailEventType::Clicked,
                    EmailEventType::Unsubscribed,
                    EmailEventType::Complained,
                ][k],
                url,
            },
        )
}

fn purchase() -> impl Strategy<Value = Purchase> {
    (
        (text(), any::<i64>(), text(), text(), 0usize..4),
        (
            any::<i64>(),
            text(),
            proptest::option::of(any::<i64>()),
            any::<i32>(),
            opt_text(),
        ),
    )
        .prop_map(
            |(
                (event_id, event_time, customer_id, order_id, k),
                (amount_minor, currency, cost_minor, items, campaign_id),
            )| Purchase {
                event_id,
                event_time,
                customer_id,
                order_id,
                kind: [
                    PurchaseType::Order,
                    PurchaseType::Refund,
                    PurchaseType::Renewal,
                    PurchaseType::Cancellation,
                ][k],
                amount_minor,
                currency,
                cost_minor,
                items,
                campaign_id,
            },
        )
}

fn survey() -> impl Strategy<Value = SurveyResponse> {
    (
        text(),
        any::<i64>(),
        opt_text(),
        text(),
        0usize..3,
        any::<i32>(),
        opt_text(),
    )
        .prop_map(
            |(event_id, event_time, customer_id, survey_id, k, score, comment)| SurveyResponse {
                event_id,
                event_time,
                customer_id,
                survey_id,
                kind: [SurveyKind::Nps, SurveyKind::Csat, SurveyKind::Ces][k],
                score,
                comment,
            },
        )
}

pub(crate) fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        page_view().prop_map(Event::PageView),
        email().prop_map(Event::Email),
        purchase().prop_map(Event::Purchase),
        survey().prop_map(Event::Survey),
    ]
}

fn sample_events() -> Vec<Event> {
    vec![
        Event::PageView(PageView {
            event_id: "pv-1".into(),
            event_time: 1_700_000_000_000,
            visitor_id: "v-1".into(),
            customer_id: Some("c-1".into()),
            site: "shop.example".into(),
            page: "/p/1".into(),
            referrer: None,
            channel: Some("email".into()),
        }),
        Event::Email(EmailEvent {
            event_id: "em-1".into(),
            event_time: 1_700_000_000_001,
            customer_id: "c-1".into(),
            campaign_id: "spring".into(),
            message_id: "m-1".into(),
            kind: EmailEventType::Clicked,
            url: Some("https://shop.example/p/1".into()),
        }),
        Event::Purchase(Purchase {
            event_id: "pu-1".into(),
            event_time: 1_700_000_000_002,
            customer_id: "c-1".into(),
            order_id: "o-1".into(),
            kind: PurchaseType::Renewal,
            amount_minor: 4999,
            currency: "EUR".into(),
            cost_minor: Some(2000),
            items: 2,
            campaign_id: None,
        }),
        Event::Survey(SurveyResponse {
            event_id: "sv-1".into(),
            event_time: 1_700_000_000_003,
            customer_id: None,
            survey_id: "nps-q1".into(),
            kind: SurveyKind::Nps,
            score: 9,
            comment: Some("très bien".into()),
        }),
    ]
}

// ---------------------------------------------------------------- schemas

const EVOLVED_PAGE_VIEW: &str = r#"{
  "type": "record", "name": "PageView", "namespace": "producer.v2",
  "fields": [
    {"name": "event_id", "type": "string"},
    {"name": "flag", "type": "boolean", "default": false},
    {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "visitor_id", "type": "string"},
    {"name": "ratio", "type": "float", "default": 0.0},
    {"name": "score", "type": "double", "default": 0.0},
    {"name": "customer_id", "type": ["null", "string"], "default": null},
    {"name": "site", "type": "string"},
    {"name": "blob", "type": "bytes", "default": ""},
    {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
    {"name": "counters", "type": {"type": "map", "values": "long"}, "default": {}},
    {"name": "geo", "type": ["null", {"type": "record", "name": "Geo", "fields": [
        {"name": "lat", "type": "double"}, {"name": "lon", "type": "double"},
        {"name": "country", "type": {"type": "fixed", "name": "Country", "size": 2}},
        {"name": "device", "type": {"type": "enum", "name": "Device", "symbols": ["DESKTOP", "MOBILE"]}}
    ]}], "default": null},
    {"name": "page", "type": "string"},
    {"name": "history", "type": {"type": "array", "items": "Geo"}, "default": []},
    {"name": "referrer", "type": ["null", "string"], "default": null}
  ]
}"#;

/// Drops `channel`; promotions; reordered fields and enum symbols; an extra
/// symbol the reader lacks; writer unions where the reader has none and back.
const EVOLVED_PURCHASE: &str = r#"{
  "type": "record", "name": "Purchase", "namespace": "engaged.v1",
  "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "event_id", "type": "bytes"},
    {"name": "event_time", "type": "int"},
    {"name": "customer_id", "type": ["null", "string"]},
    {"name": "type", "type": {"type": "enum", "name": "PurchaseType",
        "symbols": ["REFUND", "ORDER", "GIFT", "CANCELLATION", "RENEWAL"]}},
    {"name": "amount_minor", "type": "int"},
    {"name": "currency", "type": "bytes"},
    {"name": "cost_minor", "type": "long"},
    {"name": "items", "type": "int"}
  ]
}"#;

const EVOLVED_SURVEY: &str = r#"{
  "type": "record", "name": "SurveyResponse",
  "fields": [
    {"name": "event_id", "type": "string"},
    {"name": "event_time", "type": "long"},
    {"name": "survey_id", "type": "string"},
    {"name": "kind", "type": {"type": "enum", "name": "SurveyKind", "symbols": ["CES", "NPS", "CSAT"]}},
    {"name": "score", "type": "int"},
    {"name": "comment", "type": ["string", "null"]},
    {"name": "weight", "type": ["null", "double", "string"], "default": null}
  ]
}"#;

fn union_schema() -> String {
    encode::union_schema_json()
}

fn config() -> DecoderConfig {
    let mut cfg = DecoderConfig::default();
    for (i, k) in EventKind::ALL.iter().enumerate() {
        cfg.schema_ids
            .insert(i as u32 + 1, k.schema_json().to_string());
    }
    cfg.schema_ids.insert(10, EVOLVED_PAGE_VIEW.into());
    cfg.schema_ids.insert(11, EVOLVED_PURCHASE.into());
    cfg.schema_ids.insert(12, EVOLVED_SURVEY.into());
    cfg.schema_ids.insert(20, union_schema());
    cfg.topic_schemas.insert(
        "page-views".into(),
        EventKind::PageView.schema_json().into(),
    );
    cfg.topic_schemas.insert("mixed".into(), union_schema());
    cfg.topic_schemas
        .insert("purchases-v2".into(), EVOLVED_PURCHASE.into());
    cfg
}

fn decoder() -> Decoder {
    Decoder::new(&config()).unwrap()
}

fn schema_id(kind: EventKind) -> u32 {
    EventKind::ALL.iter().position(|k| *k == kind).unwrap() as u32 + 1
}

// ---------------------------------------------------------------- wire formats

#[test]
fn decoder_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Decoder>();
}

#[test]
fn wire_format_detection_uses_magic_bytes() {
    assert_eq!(
        Decoder::wire_format(&[0, 0, 0, 0, 1, 2]),
        WireFormat::Confluent
    );
    assert_eq!(Decoder::wire_format(&[0]), WireFormat::Confluent);
    assert_eq!(
        Decoder::wire_format(&[0xC3, 0x01, 1]),
        WireFormat::SingleObject
    );
    assert_eq!(Decoder::wire_format(&[0xC3]), WireFormat::Plain);
    assert_eq!(Decoder::wire_format(&[0xC3, 0x02]), WireFormat::Plain);
    assert_eq!(Decoder::wire_format(&[8, b'p']), WireFormat::Plain);
    assert_eq!(Decoder::wire_format(&[]), WireFormat::Plain);
}

#[test]
fn every_wire_format_decodes() {
    let d = decoder();
    for e in sample_events() {
        let k = e.kind();
        assert_eq!(
            d.decode("any", &encode::confluent(schema_id(k), &e))
                .unwrap(),
            e
        );
        assert_eq!(d.decode("any", &encode::single_object(&e)).unwrap(), e);
        assert_eq!(d.decode("mixed", &encode::union_datum(&e)).unwrap(), e);
        let mut framed = vec![0, 0, 0, 0, 20];
        framed.extend(encode::union_datum(&e));
        assert_eq!(d.decode("any", &framed).unwrap(), e);
    }
    let pv = &sample_events()[0];
    assert_eq!(d.decode("page-views", &encode::datum(pv)).unwrap(), *pv);
    assert_eq!(
        d.decode("nope", &encode::datum(pv)),
        Err(DecodeError::NoSchemaForTopic("nope".into()))
    );
}

#[test]
fn single_object_finds_configured_writer_fingerprints() {
    let d = decoder();
    // A union datum framed with the union schema's fingerprint (configured
    // under id 20 and topic "mixed"): found among the configured schemas.
    let json: serde_json::Value = serde_json::from_str(&union_schema()).unwrap();
    let fp = schema::rabin(schema::canonical_form(&json).unwrap().as_bytes());
    for e in sample_events() {
        let mut m = vec![0xC3, 0x01];
        m.extend(fp.to_le_bytes());
        m.extend(encode::union_datum(&e));
        assert_eq!(d.decode("any", &m).unwrap(), e);
    }
    // The spec's fingerprint (as fastavro computes it) ...
    assert_eq!(
        reader_fingerprint(EventKind::PageView).to_le_bytes(),
        [0x0b, 0x9f, 0xe2, 0x83, 0xfd, 0xb3, 0x29, 0x4b]
    );
    // ... and apache-avro's (which keeps logical types in the canonical form)
    // both select the reader schema.
    for e in sample_events() {
        let s = apache_avro::Schema::parse_str(e.kind().schema_json()).unwrap();
        let theirs = s.fingerprint::<apache_avro::rabin::Rabin>().bytes;
        assert_ne!(reader_fingerprint(e.kind()).to_le_bytes().to_vec(), theirs);
        let mut m = vec![0xC3, 0x01];
        m.extend(theirs);
        m.extend(encode::datum(&e));
        assert_eq!(d.decode("any", &m).unwrap(), e);
    }
}

#[test]
fn unknown_schema_id_and_fingerprint_are_reported() {
    let d = decoder();
    let e = &sample_events()[0];
    assert_eq!(
        d.decode("any", &encode::confluent(999, e)),
        Err(DecodeError::UnknownSchemaId(999))
    );
    let mut m = vec![0xC3, 0x01];
    m.extend(0x0123_4567_89ab_cdefu64.to_le_bytes());
    m.extend(encode::datum(e));
    let err = d.decode("any", &m).unwrap_err();
    assert_eq!(err, DecodeError::UnknownFingerprint(0x0123_4567_89ab_cdef));
    assert_eq!(
        err.to_string(),
        "unknown writer schema fingerprint 0x0123456789abcdef in a single-object encoded payload"
    );
}

#[test]
fn plain_union_datums_that_look_framed_fall_back_to_plain() {
    let d = decoder();
    let pv = sample_events()[0].clone();
    let plain = encode::union_datum(&pv);
    // Branch 0 is the byte 0x00: detected as Confluent, and the framed decode
    // fails (schema id 0x10_70_76_2d is unknown).
    assert_eq!(Decoder::wire_format(&plain), WireFormat::Confluent);
    assert!(matches!(
        d.decode("any", &plain),
        Err(DecodeError::UnknownSchemaId(_))
    ));
    assert_eq!(d.decode("mixed", &plain).unwrap(), pv);
    assert_eq!(d.decode_generic("mixed", &plain).unwrap(), pv);
    // Genuinely framed messages on that topic still decode as framed.
    let framed = encode::confluent(1, &pv);
    assert_eq!(d.decode("mixed", &framed).unwrap(), pv);
    // When both fail, the framed error is reported.
    let mut bad = encode::confluent(999, &pv);
    bad.push(7);
    assert_eq!(
        d.decode("mixed", &bad),
        Err(DecodeError::UnknownSchemaId(999))
    );
}

#[test]
fn empty_trailing_and_truncated_headers() {
    let d = decoder();
    assert_eq!(d.decode("page-views", &[]), Err(DecodeError::Empty));
    let mut m = encode::confluent(1, &sample_events()[0]);
    m.push(0);
    assert_eq!(d.decode("any", &m), Err(DecodeError::TrailingBytes(1)));
    assert_eq!(
        d.decode_generic("any", &m),
        Err(DecodeError::TrailingBytes(1))
    );
    assert_eq!(
        d.decode("any", &[0, 0, 1]),
        Err(DecodeError::Truncated {
            offset: 3,
            needed: 2
        })
    );
    assert_eq!(
        d.decode("any", &[0xC3, 0x01, 1, 2, 3]),
        Err(DecodeError::Truncated {
            offset: 5,
            needed: 5
        })
    );
}

#[test]
fn varint_overflow_in_a_payload_is_an_error() {
    let d = decoder();
    // event_id length as an 11-byte varint.
    let mut m = vec![0, 0, 0, 0, 1];
    m.extend([0xff; 11]);
    assert_eq!(
        d.decode("any", &m),
        Err(DecodeError::VarintOverflow { offset: 5 })
    );
    let mut m = vec![0xff; 10];
    m.push(0x7f);
    assert!(matches!(
        d.decode("page-views", &m),
        Err(DecodeError::VarintOverflow { offset: 0 })
    ));
}

#[test]
fn every_strict_prefix_of_a_valid_message_is_an_error() {
    let d = decoder();
    for e in sample_events() {
        let k = e.kind();
        let messages = [
            encode::confluent(schema_id(k), &e),
            encode::single_object(&e),
            encode::union_datum(&e),
        ];
        for m in &messages {
            for n in 0..m.len() {
                for topic in ["any", "mixed", "page-views"] {
                    assert!(
                        d.decode(topic, &m[..n]).is_err(),
                        "{k:?} prefix {n} of {} on {topic}",
                        m.len()
                    );
                }
            }
        }
        let plain = encode::datum(&e);
        if k == EventKind::PageView {
            for n in 0..plain.len() {
                let err = d.decode("page-views", &plain[..n]).unwrap_err();
                assert!(
                    matches!(err, DecodeError::Truncated { .. } | DecodeError::Empty),
                    "prefix {n}: {err}"
                );
            }
        }
    }
}

#[test]
fn union_of_records_writer_reads_every_branch() {
    let d = decoder();
    for e in sample_events() {
        let mut m = vec![0, 0, 0, 0, 20];
        m.extend(encode::union_datum(&e));
        assert_eq!(d.decode("any", &m).unwrap(), e);
        assert_eq!(d.decode_generic("any", &m).unwrap(), e);
    }
    // A branch index beyond the union.
    let mut m = vec![0, 0, 0, 0, 20];
    m.push(8); // zig-zag 4
    assert!(matches!(
        d.decode("any", &m),
        Err(DecodeError::BadUnionIndex {
            index: 4,
            branches: 4,
            ..
        })
    ));
}

// ---------------------------------------------------------------- resolution

/// Writes Avro values by hand, for writer schemas that are not ours.
struct W(Vec<u8>);
impl W {
    fn new() -> W {
        W(Vec::new())
    }
    fn long(mut self, v: i64) -> W {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
        self
    }
    fn str(self, s: &str) -> W {
        let mut w = self.long(s.len() as i64);
        w.0.extend_from_slice(s.as_bytes());
        w
    }
    fn raw(mut self, b: &[u8]) -> W {
        self.0.extend_from_slice(b);
        self
    }
    fn framed(self, id: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend(id.to_be_bytes());
        m.extend(self.0);
        m
    }
}

fn evolved_purchase(symbol: i64, customer_branch: i64) -> W {
    let w = W::new()
        .str("o-9")
        .str("pu-9")
        .long(1_234_567)
        .long(customer_branch);
    let w = if customer_branch == 1 {
        w.str("c-9")
    } else {
        w
    };
    w.long(symbol).long(1500).str("USD").long(700).long(3)
}

#[test]
fn evolved_purchase_resolves_promotions_symbols_and_defaults() {
    let d = decoder();
    let m = evolved_purchase(0, 1).framed(11);
    let expected = Event::Purchase(Purchase {
        event_id: "pu-9".into(),
        event_time: 1_234_567,
        customer_id: "c-9".into(),
        order_id: "o-9".into(),
        kind: PurchaseType::Refund,
        amount_minor: 1500,
        currency: "USD".into(),
        cost_minor: Some(700),
        items: 3,
        campaign_id: None,
    });
    assert_eq!(d.decode("any", &m).unwrap(), expected);
    assert_eq!(d.decode_generic("any", &m).unwrap(), expected);
    // Symbols are matched by name, not index.
    let Event::Purchase(p) = d.decode("any", &evolved_purchase(4, 1).framed(11)).unwrap() else {
        panic!()
    };
    assert_eq!(p.kind, PurchaseType::Renewal);
    // A symbol the reader does not know.
    let err = d
        .decode("any", &evolved_purchase(2, 1).framed(11))
        .unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownEnumSymbol {
            field: "type",
            symbol: "GIFT".into()
        }
    );
    assert!(
        d.decode_generic("any", &evolved_purchase(2, 1).framed(11))
            .is_err()
    );
    // The writer's null branch for a required reader field.
    let err = d
        .decode("any", &evolved_purchase(0, 0).framed(11))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            DecodeError::UnreadableBranch {
                field: "customer_id",
                branch: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        d.decode_generic("any", &evolved_purchase(0, 0).framed(11))
            .is_err()
    );
    // Plain on a topic with that writer.
    assert_eq!(
        d.decode("purchases-v2", &evolved_purchase(0, 1).0).unwrap(),
        expected
    );
}

#[test]
fn evolved_page_view_skips_every_writer_only_type() {
    let d = decoder();
    let geo = |w: W| {
        w.raw(&1.5f64.to_le_bytes())
            .raw(&(-2.5f64).to_le_bytes())
            .raw(b"FR")
            .long(1)
    };
    let w = W::new()
        .str("pv-7")
        .raw(&[1]) // flag
        .long(1_700_000_000_000)
        .str("v-7")
        .raw(&0.5f32.to_le_bytes())
        .raw(&0.25f64.to_le_bytes())
        .long(1)
        .str("c-7")
        .str("shop")
        .str("\u{0}\u{1}") // blob
        .long(2)
        .str("a")
        .str("b")
        .long(0) // tags
        .long(-1)
        .long(3)
        .str("k")
        .long(-5)
        .long(0); // counters, one block with a byte size
    let w = geo(w.long(1)); // geo present
    let w = w.str("/home");
    let w = geo(geo(w.long(2))).long(0); // history
    let m = w.long(0).framed(10); // referrer null
    let expected = Event::PageView(PageView {
        event_id: "pv-7".into(),
        event_time: 1_700_000_000_000,
        visitor_id: "v-7".into(),
        customer_id: Some("c-7".into()),
        site: "shop".into(),
        page: "/home".into(),
        referrer: None,
        channel: None,
    });
    assert_eq!(d.decode("any", &m).unwrap(), expected);
    assert_eq!(d.decode_generic("any", &m).unwrap(), expected);
}

#[test]
fn schema_errors_name_their_origin() {
    let mut cfg = DecoderConfig::default();
    cfg.schema_ids.insert(7, "{not json".into());
    let err = Decoder::new(&cfg).unwrap_err();
    assert!(matches!(
        &err,
        SchemaError::Parse {
            origin: SchemaOrigin::SchemaId(7),
            ..
        }
    ));
    assert!(
        err.to_string()
            .starts_with("writer schema for schema id 7: not a valid Avro schema")
    );

    let mut cfg = DecoderConfig::default();
    cfg.topic_schemas.insert("t".into(), r#""string""#.into());
    let err = Decoder::new(&cfg).unwrap_err();
    assert!(
        matches!(&err, SchemaError::NotAnEvent { origin: SchemaOrigin::Topic(t), .. } if t == "t")
    );

    let mut cfg = DecoderConfig::default();
    cfg.topic_schemas.insert(
        "t".into(),
        r#"["null", {"type":"record","name":"PageView","fields":[]}]"#.into(),
    );
    assert!(matches!(
        Decoder::new(&cfg),
        Err(SchemaError::NotAnEvent { .. })
    ));

    let mut cfg = DecoderConfig::default();
    cfg.schema_ids.insert(
        3,
        r#"{"type":"record","name":"PageView","fields":[{"name":"event_id","type":"string"}]}"#
            .into(),
    );
    let err = Decoder::new(&cfg).unwrap_err();
    assert!(matches!(&err, SchemaError::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("event_time"), "{err}");

    let mut cfg = DecoderConfig::default();
    cfg.schema_ids.insert(
        3,
        EventKind::PageView.schema_json().replace(
            r#""name": "page", "type": "string""#,
            r#""name": "page", "type": "int""#,
        ),
    );
    let err = Decoder::new(&cfg).unwrap_err();
    assert!(err.to_string().contains("field `page`"), "{err}");
}

// ---------------------------------------------------------------- hostile input

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_round_trips(e in event()) {
        let d = decoder();
        prop_assert_eq!(d.decode("any", &encode::confluent(schema_id(e.kind()), &e)).unwrap(), e.clone());
        prop_assert_eq!(d.decode("any", &encode::single_object(&e)).unwrap(), e.clone());
        prop_assert_eq!(d.decode("mixed", &encode::union_datum(&e)).unwrap(), e);
    }

    #[test]
    fn decoding_into_a_reused_event_equals_decoding_afresh(
        events in proptest::collection::vec(event(), 1..12),
        garbage in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let d = decoder();
        // One buffer for every record, whatever their kinds and string lengths,
        // with an undecodable record in the middle.
        let mut buf = Event::empty(EventKind::SurveyResponse);
        for (i, e) in events.iter().enumerate() {
            if i == events.len() / 2 {
                let mut bad = encode::single_object(e);
                bad.truncate(bad.len() / 2);
                bad.extend_from_slice(&garbage);
                let _ = d.decode_into("any", &bad, &mut buf);
            }
            d.decode_into("any", &encode::single_object(e), &mut buf).unwrap();
            prop_assert_eq!(&buf, e);
        }
    }

    /// Our own records skip the plan's slots ([`plan::direct_into`]): same
    /// events, same errors and same bytes consumed as through the slots, on
    /// valid and on corrupted or cut datums.
    #[test]
    fn direct_decoding_equals_decoding_through_slots(
        e in event(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        cut in any::<usize>(),
    ) {
        let readers: Vec<plan::ReaderRecord> = EventKind::ALL
            .into_iter()
            .map(|k| plan::ReaderRecord::new(k).unwrap())
            .collect();
        let json: serde_json::Value = serde_json::from_str(e.kind().schema_json()).unwrap();
        let plan = plan::WriterPlan::compile(&Parsed::parse(&json).unwrap(), &readers).unwrap();
        let mut m = encode::datum(&e);
        for (at, x) in &flips {
            let i = at % m.len();
            m[i] ^= x;
        }
        // Whole most of the time, else cut anywhere.
        let n = if cut % 2 == 0 { m.len() } else { cut % (m.len() + 1) };
        let whole = n == m.len();
        let m = &m[..n];
        let (mut direct, mut slots) = (Event::empty(EventKind::SurveyResponse), Event::empty(e.kind()));
        let (mut r1, mut r2) = (reader::Reader::new(m, 0), reader::Reader::new(m, 0));
        let a = plan.decode_into(&mut r1, &mut direct).map_err(|e| e.to_string());
        let b = plan.decode_into_by_slots(&mut r2, &mut slots).map_err(|e| e.to_string());
        prop_assert_eq!(&a, &b);
        if a.is_ok() {
            prop_assert_eq!(&direct, &slots);
            prop_assert_eq!(r1.remaining(), r2.remaining());
            if flips.is_empty() && whole {
                prop_assert_eq!(&direct, &e);
            }
        }
    }

    #[test]
    fn fast_path_equals_generic_path(e in event()) {
        let d = decoder();
        for m in [encode::confluent(schema_id(e.kind()), &e), encode::single_object(&e), encode::union_datum(&e)] {
            let fast = d.decode("mixed", &m);
            let slow = d.decode_generic("mixed", &m);
            prop_assert_eq!(fast.as_ref().ok(), Some(&e));
            prop_assert_eq!(slow.as_ref().ok(), Some(&e));
        }
    }

    #[test]
    fn our_encoder_matches_apache_avro(e in event()) {
        let schema = apache_avro::Schema::parse_str(e.kind().schema_json()).unwrap();
        let value = match &e {
            Event::PageView(x) => apache_avro::to_value(x),
            Event::Email(x) => apache_avro::to_value(x),
            Event::Purchase(x) => apache_avro::to_value(x),
            Event::Survey(x) => apache_avro::to_value(x),
        }.unwrap().resolve(&schema).unwrap();
        let theirs = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        prop_assert_eq!(encode::datum(&e), theirs);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), prefix in 0usize..4) {
        let d = decoder();
        let mut m = match prefix {
            0 => vec![0, 0, 0, 0, 20],
            1 => { let mut v = vec![0xC3, 0x01]; v.extend(reader_fingerprint(EventKind::Purchase).to_le_bytes()); v }
            2 => vec![0, 0, 0, 0, 10],
            _ => vec![],
        };
        m.extend(bytes);
        for topic in ["mixed", "page-views", "purchases-v2", "any"] {
            let _ = d.decode(topic, &m);
        }
    }

    #[test]
    fn corrupted_messages_never_panic(e in event(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
        let d = decoder();
        for mut m in [encode::confluent(schema_id(e.kind()), &e), encode::single_object(&e), encode::union_datum(&e)] {
            for (at, x) in &flips {
                let i = at % m.len();
                m[i] ^= x;
            }
            let fast = d.decode("mixed", &m);
            let slow = d.decode_generic("mixed", &m);
            // Both paths agree on any payload they both accept.
            if let (Ok(a), Ok(b)) = (&fast, &slow) {
                prop_assert_eq!(a, b);
            }
            let n = cut % (m.len() + 1);
            let _ = d.decode("mixed", &m[..n]);
        }
    }

    /// Random datums of every configured writer schema (evolved ones too):
    /// the fast path and apache-avro agree, value for value.
    #[test]
    fn fast_path_equals_generic_path_on_random_writer_datums(seed in any::<u64>()) {
        let d = decoder();
        let mut rng = StdRng::seed_from_u64(seed);
        for (id, text) in &config().schema_ids {
            let json: serde_json::Value = serde_json::from_str(text).unwrap();
            let p = Parsed::parse(&json).unwrap();
            let mut datum = Vec::new();
            gen_value(&p, &p.root, &mut rng, &mut datum, 0);
            let m = W(datum).framed(*id);
            let fast = d.decode("any", &m);
            let slow = d.decode_generic("any", &m);
            match (&fast, &slow) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "schema id {}: fast {:?} vs generic {:?}", id, fast, slow),
            }
        }
    }
}

/// Writes a random, well-formed value of writer type `t`.
fn gen_value(p: &Parsed, t: &WType, rng: &mut StdRng, out: &mut Vec<u8>, depth: usize) {
    let long = |out: &mut Vec<u8>, v: i64| {
        let w = W(std::mem::take(out)).long(v);
        *out = w.0;
    };
    let small_long = |rng: &mut StdRng| -> i64 {
        match rng.random_range(0..4) {
            0 => rng.random_range(-3..3),
            1 => rng.random::<i32>() as i64,
            _ => rng.random(),
        }
    };
    let text = |rng: &mut StdRng| -> Vec<u8> {
        let n = rng.random_range(0..6);
        let s: String = (0..n)
            .map(|_| {
                if rng.random_bool(0.2) {
                    'é'
                } else {
                    rng.random_range('a'..='z')
                }
            })
            .collect();
        let mut b = s.into_bytes();
        if rng.random_bool(0.02) {
            b.push(0xff); // invalid UTF-8 for bytes promoted to string
        }
        b
    };
    match t {
        WType::Null => {}
        WType::Boolean => out.push(rng.random_range(0..2)),
        WType::Int => long(out, rng.random::<i32>() as i64),
        WType::Long => long(out, small_long(rng)),
        WType::Float => out.extend(rng.random::<f32>().to_le_bytes()),
        WType::Double => out.extend(rng.random::<f64>().to_le_bytes()),
        WType::String => {
            let s: String = String::from_utf8_lossy(&text(rng)).into_owned();
            long(out, s.len() as i64);
            out.extend(s.as_bytes());
        }
        WType::Bytes => {
            let b = text(rng);
            long(out, b.len() as i64);
            out.extend(b);
        }
        WType::Array(item) | WType::Map(item) => {
            let is_map = matches!(t, WType::Map(_));
            let blocks = if depth > 3 { 0 } else { rng.random_range(0..3) };
            for _ in 0..blocks {
                let n = rng.random_range(1..3);
                let mut block = Vec::new();
                for _ in 0..n {
                    if is_map {
                        let k = text(rng);
                        let k = String::from_utf8_lossy(&k).into_owned();
                        long(&mut block, k.len() as i64);
                        block.extend(k.as_bytes());
                    }
                    gen_value(p, item, rng, &mut block, depth + 1);
                }
                if rng.random_bool(0.5) {
                    long(out, n);
                } else {
                    long(out, -n);
                    long(out, block.len() as i64);
                }
                out.extend(block);
            }
            long(out, 0);
        }
        WType::Union(b) => {
            let i = rng.random_range(0..b.len());
            long(out, i as i64);
            gen_value(p, &b[i], rng, out, depth + 1);
        }
        WType::Ref(i) => match &p.named[*i] {
            Named::Record { fields, .. } => {
                for f in fields {
                    gen_value(p, &f.ty, rng, out, depth + 1);
                }
            }
            Named::Enum { symbols, .. } => long(out, rng.random_range(0..symbols.len()) as i64),
            Named::Fixed { size, .. } => out.extend((0..*size).map(|_| rng.random::<u8>())),
        },
    }
}

#[test]
fn writers_without_a_plan_use_the_generic_path() {
    let readers = ReaderSchemas::new().unwrap();
    let avro = apache_avro::Schema::parse_str(EVOLVED_PURCHASE).unwrap();
    let generic = GenericPlan::new(avro).unwrap();
    generic.check_compatible(&readers).unwrap();
    let mut d = decoder();
    d.by_id.insert(
        99,
        Arc::new(Writer {
            fast: None,
            generic,
            fingerprints: vec![],
        }),
    );
    let m = evolved_purchase(0, 1).framed(99);
    let Event::Purchase(p) = d.decode("any", &m).unwrap() else {
        panic!()
    };
    assert_eq!(
        (p.kind, p.amount_minor, p.cost_minor),
        (PurchaseType::Refund, 1500, Some(700))
    );
    // apache-avro's own compatibility check guards that path at start-up.
    let bad = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"Purchase","fields":[{"name":"event_id","type":"string"}]}"#,
    )
    .unwrap();
    assert!(
        GenericPlan::new(bad)
            .unwrap()
            .check_compatible(&readers)
            .is_err()
    );
    let not_ours = apache_avro::Schema::parse_str(r#"["null","string"]"#).unwrap();
    assert!(GenericPlan::new(not_ours).is_err());
}
