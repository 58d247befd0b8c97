//! Writes the seed corpora under `fuzz/corpus/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds`.
//!
//! Seeds are valid inputs of each target, mostly the fastavro-written interop
//! fixtures (`tests/fixtures/*.hex`: every kind, union writers, evolved
//! writers), so that fuzzing starts from records that decode.

use engaged::decode::Decoder;
use engaged::decode::encode::long;
use engaged::event::EventKind;
use engaged_fuzz::{config, schema_gen, topics};
use std::path::{Path, PathBuf};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// (name, topic, payload) of the fixture lines whose names end with `-2`
/// (one message per kind and per writer schema), plus `extra` names.
fn fixtures(format: &str, extra: &[&str]) -> Vec<(String, String, Vec<u8>)> {
    let path = root().join(format!("tests/fixtures/{format}.hex"));
    std::fs::read_to_string(path)
        .expect("fixture")
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let (name, topic, payload) = (parts.next()?, parts.next()?, parts.next()?);
            (name.ends_with("-2") || extra.contains(&name))
                .then(|| (name.to_string(), topic.to_string(), hex(payload)))
        })
        .collect()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn topic_byte(topic: &str) -> u8 {
    topics().iter().position(|t| t == topic).unwrap_or(0) as u8
}

fn with_len(out: &mut Vec<u8>, b: &[u8]) {
    long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// A container file: `schema`, `codec`, the datums in blocks of two.
fn container(schema: &str, codec: &str, datums: &[Vec<u8>]) -> Vec<u8> {
    let sync = *b"fuzz-sync-marker";
    let mut out = b"Obj\x01".to_vec();
    long(&mut out, 2);
    with_len(&mut out, b"avro.schema");
    with_len(&mut out, schema.as_bytes());
    with_len(&mut out, b"avro.codec");
    with_len(&mut out, codec.as_bytes());
    long(&mut out, 0);
    out.extend_from_slice(&sync);
    for block in datums.chunks(2) {
        let data = block.concat();
        let data = match codec {
            "deflate" => miniz_oxide::deflate::compress_to_vec(&data, 6),
            _ => data,
        };
        long(&mut out, block.len() as i64);
        with_len(&mut out, &data);
        out.extend_from_slice(&sync);
    }
    out
}

fn main() {
    let cfg = config();
    let decoder = Decoder::new(&cfg).expect("fixture schemas");

    for (name, _, payload) in fixtures("confluent", &[]) {
        assert!(decoder.decode("no-schema", &payload).is_ok(), "{name}");
        write(
            "decode_confluent",
            &name,
            &[&[0][..], &payload[1..]].concat(),
        );
    }
    for (name, _, payload) in fixtures("single_object", &[]) {
        assert!(decoder.decode("no-schema", &payload).is_ok(), "{name}");
        write(
            "decode_single_object",
            &name,
            &[&[0][..], &payload[2..]].concat(),
        );
    }
    // union-PageView-1 starts with branch 0, the byte 0x00: a plain datum that
    // looks Confluent-framed (the decoder's fallback).
    let plain = fixtures("plain", &["union-PageView-1"]);
    for (name, topic, payload) in &plain {
        assert!(decoder.decode(topic, payload).is_ok(), "{name}");
        write(
            "decode_datum",
            name,
            &[&[topic_byte(topic)][..], payload].concat(),
        );
    }

    // Containers: the plain datums of a topic, under its writer schema.
    let all = engaged_fuzz::config().topic_schemas;
    let datums = |topic: &str| -> Vec<Vec<u8>> {
        let path = root().join("tests/fixtures/plain.hex");
        std::fs::read_to_string(path)
            .expect("fixture")
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(topic))
            .filter_map(|l| l.split(' ').nth(2).map(hex))
            .collect()
    };
    for (topic, codec) in [
        ("purchases", "null"),
        ("pageviews", "deflate"),
        ("events.mixed", "null"),
        ("pageviews.v2", "deflate"),
        ("purchases.v2", "null"),
    ] {
        let file = container(&all[topic], codec, &datums(topic));
        write("container", &format!("{topic}-{codec}.avro"), &file);
    }

    // writer_schema: generator bytes for "our reader record of kind k,
    // unchanged" are [0 (a record), k, one 0 per field, 0, 0, 0].
    let fields = |k: EventKind| {
        let json: serde_json::Value = serde_json::from_str(k.schema_json()).expect("schema");
        json["fields"].as_array().map_or(0, Vec::len)
    };
    let unchanged = |i: usize| -> Vec<u8> {
        let mut g = vec![i as u8];
        g.extend(std::iter::repeat_n(0, fields(EventKind::ALL[i]) + 3));
        g
    };
    let topic_of = ["pageviews", "emails", "purchases", "surveys"];
    for (i, kind) in EventKind::ALL.into_iter().enumerate() {
        let gen_bytes = [&[0u8][..], &unchanged(i)].concat();
        let expected: serde_json::Value = serde_json::from_str(kind.schema_json()).expect("schema");
        let datum = datums(topic_of[i]).remove(1);
        let seed = schema_gen::input(&gen_bytes, &datum);
        assert_eq!(schema_gen::split(&seed), (expected, &datum[..]), "{kind:?}");
        write("writer_schema", &format!("{kind:?}"), &seed);
    }
    // The union of all four, and a union datum.
    let mut gen_bytes = vec![1u8, 3];
    (0..4).for_each(|i| gen_bytes.extend(unchanged(i)));
    let datum = datums("events.mixed").remove(3);
    let seed = schema_gen::input(&gen_bytes, &datum);
    let (schema, _) = schema_gen::split(&seed);
    assert_eq!(schema.as_array().map(Vec::len), Some(4));
    write("writer_schema", "union", &seed);
    // Hostile starts: every field's type regenerated or nested deep, extra
    // fields, unions of unions, a bare type.
    for (name, gen_bytes) in [
        (
            "retyped",
            vec![0u8, 0, 2, 17, 8, 2, 13, 10, 2, 11, 1, 17, 8, 4, 15, 3, 0],
        ),
        (
            "deep",
            vec![0u8, 2, 8, 5, 8, 3, 0, 7, 1, 8, 4, 2, 15, 7, 0, 7],
        ),
        (
            "union-of-unions",
            vec![2u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2],
        ),
        ("fixed", vec![3u8, 13, 0, 10]),
    ] {
        let seed = schema_gen::input(&gen_bytes, &datums("emails")[0]);
        println!("{name}: {}", schema_gen::split(&seed).0);
        write("writer_schema", name, &seed);
    }
}
