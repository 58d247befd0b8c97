//! Hostile writer schemas from fuzzer bytes, for the `writer_schema` target.
//!
//! Input layout: a 2-byte little-endian length `L`, then `L` generator bytes,
//! then the datum. The generator reads its choices from the generator bytes
//! (an exhausted input reads as zeros), and zero always means "as our reader
//! schema has it": an input with `L = 0` is the reader schema of `PageView`
//! and a `PageView` datum, so seeds are easy to write and every mutation is a
//! small schema evolution. Choices cover what the issue asks for: nesting
//! beyond the decoder's depth limits, `fixed` sizes up to `u64::MAX`, recursive
//! named types (including our event records themselves), unions of unions,
//! big enums, logical types, and fields dropped, retyped, renamed, wrapped in
//! unions or given junk defaults.

use super::{nest, obj, pick};
use arbitrary::Unstructured;
use engaged::event::EventKind;
use serde_json::{Value as Json, json};

/// Deepest nesting the generator builds (serde_json refuses more than 128
/// levels of JSON anyway; beyond it the text is rejected before any walk).
const MAX_GEN_DEPTH: usize = 160;

/// The schema and the datum of an input (see the module docs).
pub fn split(data: &[u8]) -> (Json, &[u8]) {
    let len = match data {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
        _ => 0,
    };
    let rest = data.get(2..).unwrap_or_default();
    let (gen_bytes, datum) = rest.split_at(len.min(rest.len()));
    let mut g = Gen {
        u: Unstructured::new(gen_bytes),
        names: 0,
    };
    (g.top(), datum)
}

/// Generator bytes choosing `top` = `choice` and then `rest`, for seed files.
pub fn input(generator: &[u8], datum: &[u8]) -> Vec<u8> {
    let mut out = (generator.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(generator);
    out.extend_from_slice(datum);
    out
}

struct Gen<'a> {
    u: Unstructured<'a>,
    /// Named types defined so far (for fresh names).
    names: usize,
}

const KINDS: [EventKind; 4] = EventKind::ALL;

/// Names a reference may use: some the generator defines, and our records'.
const REF_NAMES: &[&str] = &[
    "N0",
    "N1",
    "N2",
    "PageView",
    "engaged.v1.PageView",
    "EmailEvent",
    "engaged.v1.Purchase",
    "SurveyResponse",
    "engaged.v1.SurveyKind",
    "PurchaseType",
    "string",
    "record",
];

const FIXED_SIZES: &[u64] = &[
    0,
    1,
    8,
    255,
    1 << 20,
    (1 << 31) - 1,
    1 << 31,
    1 << 40,
    1 << 53,
    i64::MAX as u64,
    u64::MAX,
];

const ENUM_SIZES: &[usize] = &[0, 1, 2, 7, 300];

const DEEP: &[usize] = &[8, 63, 64, 65, 100, 126, 127, 140];

impl Gen<'_> {
    fn pick(&mut self, n: usize) -> usize {
        pick(&mut self.u, n)
    }

    fn fresh(&mut self) -> String {
        let choice = self.pick(4);
        self.names += 1;
        match choice {
            // Mostly the referable names, so that references and recursion meet.
            0..=2 => format!("N{choice}"),
            _ => format!("G{}", self.names),
        }
    }

    fn top(&mut self) -> Json {
        match self.pick(5) {
            0 => self.record(),
            1 => {
                let n = 1 + self.pick(5);
                Json::Array((0..n).map(|_| self.record()).collect())
            }
            // A union of unions: [record, [record, ...]] and friends.
            2 => {
                let a = self.record();
                let b = self.record();
                let null = || json!("null");
                match self.pick(3) {
                    0 => Json::Array(vec![a, Json::Array(vec![b])]),
                    1 => Json::Array(vec![Json::Array(vec![a]), null(), b]),
                    _ => Json::Array(vec![a, Json::Array(vec![null(), b, json!(["string"])])]),
                }
            }
            3 => self.ty(0),
            _ => {
                let r = self.record();
                obj([("type", r)])
            }
        }
    }

    /// One of our event records, evolved.
    fn record(&mut self) -> Json {
        let kind = KINDS[self.pick(KINDS.len())];
        let mut schema: Json = serde_json::from_str(kind.schema_json()).expect("reader schema");
        let fields: Vec<Json> = schema["fields"].as_array().cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(fields.len() + 2);
        for mut f in fields {
            match self.pick(9) {
                0 => {}
                1 => continue,
                2 => f["type"] = self.ty(0),
                3 => f["type"] = Json::Array(vec![json!("null"), f["type"].take()]),
                4 => f["type"] = Json::Array(vec![f["type"].take(), json!("null")]),
                5 => {
                    let name = format!("{}_x", f["name"].as_str().unwrap_or_default());
                    f["name"] = json!(name);
                }
                6 => f["default"] = self.junk(),
                7 => {
                    let t = f["type"].take();
                    f["type"] = Json::Array(vec![t, self.ty(0)]);
                }
                _ => {
                    let t = f["type"].take();
                    f["type"] = nest(DEEP[self.pick(DEEP.len())], t);
                }
            }
            out.push(f);
        }
        for i in 0..self.pick(6) {
            let t = self.ty(0);
            let mut f = obj([("name", json!(format!("x{i}"))), ("type", t)]);
            if self.pick(3) == 1 {
                f["default"] = self.junk();
            }
            out.push(f);
        }
        if self.pick(2) == 1 {
            out.reverse();
        }
        schema["fields"] = Json::Array(out);
        match self.pick(5) {
            1 => schema["namespace"] = json!("other.ns"),
            2 => {
                schema.as_object_mut().map(|o| o.remove("namespace"));
            }
            3 => schema["type"] = json!("error"),
            4 => schema["name"] = json!(format!("x.{}", kind.full_name())),
            _ => {}
        }
        schema
    }

    fn junk(&mut self) -> Json {
        match self.pick(6) {
            0 => Json::Null,
            1 => json!(0),
            2 => json!("x"),
            3 => json!(u64::MAX),
            4 => json!([1, 2]),
            _ => json!({"a": 1}),
        }
    }

    fn ty(&mut self, depth: usize) -> Json {
        if depth >= MAX_GEN_DEPTH {
            return json!("null");
        }
        let d = depth + 1;
        match self.pick(18) {
            0 => json!("null"),
            1 => json!("boolean"),
            2 => json!("int"),
            3 => json!("long"),
            4 => json!("float"),
            5 => json!("double"),
            6 => json!("bytes"),
            7 => json!("string"),
            8 => obj([("type", json!("array")), ("items", self.ty(d))]),
            9 => obj([("type", json!("map")), ("values", self.ty(d))]),
            10 => {
                let n = self.pick(5);
                Json::Array((0..n).map(|_| self.ty(d)).collect())
            }
            11 => {
                let name = self.fresh();
                let n = self.pick(4);
                let fields: Vec<Json> = (0..n)
                    .map(|i| obj([("name", json!(format!("f{i}"))), ("type", self.ty(d))]))
                    .collect();
                obj([
                    ("type", json!("record")),
                    ("name", json!(name)),
                    ("fields", Json::Array(fields)),
                ])
            }
            12 => {
                let name = self.fresh();
                let n = ENUM_SIZES[self.pick(ENUM_SIZES.len())];
                let symbols: Vec<String> = (0..n).map(|i| format!("S{i}")).collect();
                json!({"type": "enum", "name": name, "symbols": symbols})
            }
            13 => {
                let name = self.fresh();
                let size = FIXED_SIZES[self.pick(FIXED_SIZES.len())];
                json!({"type": "fixed", "name": name, "size": size})
            }
            14 => json!(REF_NAMES[self.pick(REF_NAMES.len())]),
            15 => {
                let levels = DEEP[self.pick(DEEP.len())];
                let inner = self.ty(d);
                match self.pick(4) {
                    0 => nest(levels, inner),
                    1 => {
                        (0..levels).fold(inner, |t, _| obj([("type", json!("map")), ("values", t)]))
                    }
                    2 => (0..levels).fold(inner, |t, _| Json::Array(vec![json!("null"), t])),
                    _ => (0..levels).fold(inner, |t, i| {
                        let field = obj([("name", json!("f")), ("type", t)]);
                        obj([
                            ("type", json!("record")),
                            ("name", json!(format!("D{}_{i}", self.names))),
                            ("fields", Json::Array(vec![field])),
                        ])
                    }),
                }
            }
            16 => match self.pick(4) {
                0 => json!({"type": "long", "logicalType": "timestamp-millis"}),
                1 => json!({"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}),
                2 => json!({"type": "string", "logicalType": "uuid"}),
                _ => json!({"type": {"type": "int", "logicalType": "date"}}),
            },
            // A record that refers to itself: a linked list of any depth.
            _ => {
                let name = self.fresh();
                let item = self.ty(d);
                let fields = vec![
                    obj([("name", json!("item")), ("type", item)]),
                    json!({"name": "next", "type": ["null", name]}),
                    json!({"name": "kids", "type": {"type": "array", "items": name}}),
                ];
                obj([
                    ("type", json!("record")),
                    ("name", json!(name)),
                    ("fields", Json::Array(fields)),
                ])
            }
        }
    }
}
