//! Writer-schema model for the plan compiler: a walk over the schema's JSON that
//! keeps only what decides the binary encoding, plus the Parsing Canonical Form
//! and its CRC-64-AVRO (Rabin) fingerprint.
//!
//! Why not walk `apache_avro::Schema`? Its tree models logical types as separate
//! variants whose encodings must each be remembered; the JSON says the encoding
//! directly (`logicalType` never changes it). apache-avro still parses every
//! schema first, so a schema it rejects never gets this far.

use serde_json::{Map, Value as Json};
use std::collections::{HashMap, HashSet};

/// A type as it appears in a writer (or reader) schema, encoding-wise.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WType {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(Box<WType>),
    Map(Box<WType>),
    Union(Vec<WType>),
    /// A named type (record, enum, fixed): index into [`Parsed::named`].
    Ref(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    pub name: String,
    pub aliases: Vec<String>,
    pub ty: WType,
    pub default: Option<Json>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Named {
    Record {
        name: String,
        aliases: Vec<String>,
        fields: Vec<Field>,
    },
    Enum {
        name: String,
        symbols: Vec<String>,
    },
    Fixed {
        name: String,
        size: usize,
    },
}

/// A whole schema: its root type and the table of named types it defines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub root: WType,
    pub named: Vec<Named>,
}

impl Parsed {
    pub fn parse(json: &Json) -> Result<Parsed, String> {
        let mut p = Walker {
            named: Vec::new(),
            by_name: HashMap::new(),
            depth: 0,
        };
        let root = p.walk(json, None)?;
        Ok(Parsed {
            root,
            named: p.named,
        })
    }

    /// Short human description of a type, for error messages.
    pub fn describe(&self, t: &WType) -> String {
        match t {
            WType::Null => "null".into(),
            WType::Boolean => "boolean".into(),
            WType::Int => "int".into(),
            WType::Long => "long".into(),
            WType::Float => "float".into(),
            WType::Double => "double".into(),
            WType::Bytes => "bytes".into(),
            WType::String => "string".into(),
            WType::Array(i) => format!("array<{}>", self.describe(i)),
            WType::Map(v) => format!("map<{}>", self.describe(v)),
            WType::Union(b) => {
                let parts: Vec<String> = b.iter().map(|t| self.describe(t)).collect();
                format!("[{}]", parts.join(", "))
            }
            WType::Ref(i) => match self.named.get(*i) {
                Some(Named::Record { name, .. }) => format!("record {name}"),
                Some(Named::Enum { name, .. }) => format!("enum {name}"),
                Some(Named::Fixed { name, .. }) => format!("fixed {name}"),
                None => "?".into(),
            },
        }
    }
}

/// Deepest nesting of schema JSON we follow (a schema is config, not data, but
/// a runaway one must still not overflow the stack).
const MAX_SCHEMA_DEPTH: usize = 64;

struct Walker {
    named: Vec<Named>,
    by_name: HashMap<String, usize>,
    depth: usize,
}

fn primitive(name: &str) -> Option<WType> {
    Some(match name {
        "null" => WType::Null,
        "boolean" => WType::Boolean,
        "int" => WType::Int,
        "long" => WType::Long,
        "float" => WType::Float,
        "double" => WType::Double,
        "bytes" => WType::Bytes,
        "string" => WType::String,
        _ => return None,
    })
}

/// Full name of a named type per the Avro spec: a dotted name is already full;
/// otherwise the explicit `namespace`, else the enclosing one.
fn full_name(name: &str, namespace: Option<&str>, enclosing: Option<&str>) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match namespace.or(enclosing) {
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

fn namespace_of(full: &str) -> Option<&str> {
    full.rsplit_once('.').map(|(ns, _)| ns)
}

fn strings(obj: &Map<String, Json>, key: &str) -> Result<Vec<String>, String> {
    match obj.get(key) {
        None => Ok(Vec::new()),
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("`{key}` must hold strings"))
            })
            .collect(),
        Some(_) => Err(format!("`{key}` must be an array")),
    }
}

impl Walker {
    fn walk(&mut self, json: &Json, ns: Option<&str>) -> Result<WType, String> {
        self.depth += 1;
        if self.depth > MAX_SCHEMA_DEPTH {
            return Err("schema nested too deeply".into());
        }
        let r = self.walk_inner(json, ns);
        self.depth -= 1;
        r
    }

    fn lookup(&self, name: &str, ns: Option<&str>) -> Result<WType, String> {
        let full = full_name(name, None, ns);
        self.by_name
            .get(&full)
            .or_else(|| self.by_name.get(name))
            .map(|&i| WType::Ref(i))
            .ok_or_else(|| format!("unknown type `{name}`"))
    }

    fn define(&mut self, full: &str, n: Named) -> Result<usize, String> {
        if self.by_name.contains_key(full) {
            return Err(format!("type `{full}` defined twice"));
        }
        let i = self.named.len();
        self.named.push(n);
        self.by_name.insert(full.to_string(), i);
        Ok(i)
    }

    fn walk_inner(&mut self, json: &Json, ns: Option<&str>) -> Result<WType, String> {
        match json {
            Json::String(s) => match primitive(s) {
                Some(p) => Ok(p),
                None => self.lookup(s, ns),
            },
            Json::Array(branches) => branches
                .iter()
                .map(|b| self.walk(b, ns))
                .collect::<Result<Vec<_>, _>>()
                .map(WType::Union),
            Json::Object(obj) => self.walk_object(obj, ns),
            other => Err(format!("not a schema: {other}")),
        }
    }

    fn walk_object(&mut self, obj: &Map<String, Json>, ns: Option<&str>) -> Result<WType, String> {
        let ty = match obj.get("type") {
            Some(Json::String(t)) => t.as_str(),
            // `{"type": {...}}` or `{"type": [...]}`: the type is the inner schema.
            Some(inner @ (Json::Object(_) | Json::Array(_))) => return self.walk(inner, ns),
            _ => return Err("object schema without a string `type`".into()),
        };
        if let Some(p) = primitive(ty) {
            // Logical types (timestamp-millis, decimal on bytes, uuid, ...) keep
            // their underlying encoding.
            return Ok(p);
        }
        match ty {
            "array" => {
                let items = obj.get("items").ok_or("array without `items`")?;
                Ok(WType::Array(Box::new(self.walk(items, ns)?)))
            }
            "map" => {
                let values = obj.get("values").ok_or("map without `values`")?;
                Ok(WType::Map(Box::new(self.walk(values, ns)?)))
            }
            "record" | "error" | "enum" | "fixed" => {
                let name = obj
                    .get("name")
                    .and_then(Json::as_str)
                    .ok_or_else(|| format!("{ty} without a `name`"))?;
                let namespace = obj.get("namespace").and_then(Json::as_str);
                let full = full_name(name, namespace, ns);
                match ty {
                    "enum" => {
                        let symbols = strings(obj, "symbols")?;
                        let i = self.define(
                            &full,
                            Named::Enum {
                                name: full.clone(),
                                symbols,
                            },
                        )?;
                        Ok(WType::Ref(i))
                    }
                    "fixed" => {
                        let size = obj
                            .get("size")
                            .and_then(Json::as_u64)
                            .and_then(|s| usize::try_from(s).ok())
                            .ok_or("fixed without a valid `size`")?;
                        let i = self.define(
                            &full,
                            Named::Fixed {
                                name: full.clone(),
                                size,
                            },
                        )?;
                        Ok(WType::Ref(i))
                    }
                    _ => {
                        // Define first, so that fields may refer to the record itself.
                        let i = self.define(
                            &full,
                            Named::Record {
                                name: full.clone(),
                                aliases: strings(obj, "aliases")?,
                                fields: Vec::new(),
                            },
                        )?;
                        let inner_ns = namespace_of(&full).map(str::to_string);
                        let Some(Json::Array(jfields)) = obj.get("fields") else {
                            return Err(format!("record `{full}` without `fields`"));
                        };
                        let mut fields = Vec::with_capacity(jfields.len());
                        let mut seen = HashSet::new();
                        for f in jfields {
                            let fname = f
                                .get("name")
                                .and_then(Json::as_str)
                                .ok_or_else(|| format!("a field of `{full}` has no `name`"))?;
                            if !seen.insert(fname.to_string()) {
                                return Err(format!("field `{fname}` of `{full}` appears twice"));
                            }
                            let fty = f
                                .get("type")
                                .ok_or_else(|| format!("field `{fname}` has no `type`"))?;
                            let ty = self.walk(fty, inner_ns.as_deref())?;
                            let aliases = match f {
                                Json::Object(fo) => strings(fo, "aliases")?,
                                _ => Vec::new(),
                            };
                            fields.push(Field {
                                name: fname.to_string(),
                                aliases,
                                ty,
                                default: f.get("default").cloned(),
                            });
                        }
                        if let Some(Named::Record { fields: slot, .. }) = self.named.get_mut(i) {
                            *slot = fields;
                        }
                        Ok(WType::Ref(i))
                    }
                }
            }
            // A reference spelled as an object: `{"type": "engaged.v1.PageView"}`.
            other => self.lookup(other, ns),
        }
    }
}

/// The Avro Parsing Canonical Form of a schema given as JSON.
///
/// Follows the spec's transformations: primitives in simple form, full names,
/// only `name, type, fields, symbols, items, values, size` kept in that order,
/// no whitespace, and a named type spelled out only at its first occurrence.
pub(crate) fn canonical_form(json: &Json) -> Result<String, String> {
    let mut out = String::new();
    let mut defined = HashSet::new();
    pcf(json, None, &mut defined, &mut out, 0)?;
    Ok(out)
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json escapes only what JSON requires, so UTF-8 stays as UTF-8.
    out.push_str(&Json::String(s.to_string()).to_string());
}

fn pcf(
    json: &Json,
    ns: Option<&str>,
    defined: &mut HashSet<String>,
    out: &mut String,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err("schema nested too deeply".into());
    }
    match json {
        Json::String(s) => {
            if primitive(s).is_some() {
                push_json_str(out, s);
            } else {
                push_json_str(out, &full_name(s, None, ns));
            }
            Ok(())
        }
        Json::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pcf(b, ns, defined, out, depth + 1)?;
            }
            out.push(']');
            Ok(())
        }
        Json::Object(obj) => {
            let ty = match obj.get("type") {
                Some(Json::String(t)) => t.as_str(),
                Some(inner) => return pcf(inner, ns, defined, out, depth + 1),
                None => return Err("object schema without `type`".into()),
            };
            if primitive(ty).is_some() {
                push_json_str(out, ty);
                return Ok(());
            }
            match ty {
                "array" | "map" => {
                    let key = if ty == "array" { "items" } else { "values" };
                    let inner = obj
                        .get(key)
                        .ok_or_else(|| format!("{ty} without `{key}`"))?;
                    out.push_str(&format!("{{\"type\":\"{ty}\",\"{key}\":"));
                    pcf(inner, ns, defined, out, depth + 1)?;
                    out.push('}');
                    Ok(())
                }
                "record" | "error" | "enum" | "fixed" => {
                    let name = obj
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| format!("{ty} without a `name`"))?;
                    let full = full_name(name, obj.get("namespace").and_then(Json::as_str), ns);
                    if !defined.insert(full.clone()) {
                        push_json_str(out, &full);
                        return Ok(());
                    }
                    out.push_str("{\"name\":");
                    push_json_str(out, &full);
                    let canonical_ty = if ty == "error" { "record" } else { ty };
                    out.push_str(&format!(",\"type\":\"{canonical_ty}\""));
                    match ty {
                        "enum" => {
                            out.push_str(",\"symbols\":[");
                            for (i, s) in strings(obj, "symbols")?.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                push_json_str(out, s);
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            let size = obj
                                .get("size")
                                .and_then(Json::as_u64)
                                .ok_or("fixed without a valid `size`")?;
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            let inner_ns = namespace_of(&full).map(str::to_string);
                            let Some(Json::Array(fields)) = obj.get("fields") else {
                                return Err(format!("record `{full}` without `fields`"));
                            };
                            out.push_str(",\"fields\":[");
                            for (i, f) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname = f
                                    .get("name")
                                    .and_then(Json::as_str)
                                    .ok_or("field without `name`")?;
                                let fty = f.get("type").ok_or("field without `type`")?;
                                out.push_str("{\"name\":");
                                push_json_str(out, fname);
                                out.push_str(",\"type\":");
                                pcf(fty, inner_ns.as_deref(), defined, out, depth + 1)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                    Ok(())
                }
                other => {
                    push_json_str(out, &full_name(other, None, ns));
                    Ok(())
                }
            }
        }
        other => Err(format!("not a schema: {other}")),
    }
}

/// Whether apache-avro 0.22's `Schema::canonical_form` can run on the schema
/// `json` (a schema's text, or `serde_json::to_value(&schema)`): it walks the
/// JSON as below and panics on a value it cannot put in canonical form, such as
/// an attribute `"fields": null` kept on a field, or a `size` beyond `i64`, and
/// it does so while parsing too (for a field with a default). Mirrors its
/// traversal (`parsing_canonical_form`, `pcf_map`) without building anything;
/// with `defined` `None`, it also looks inside a named type met a second time
/// (parsing canonicalizes parts of a schema on their own). Found by the
/// `container` and `writer_schema` fuzz targets.
pub(crate) fn apache_canonical_form_ok(
    json: &Json,
    mut defined: Option<&mut HashSet<String>>,
) -> bool {
    let obj = match json {
        Json::String(_) => return true,
        Json::Array(a) => {
            return a
                .iter()
                .all(|v| apache_canonical_form_ok(v, defined.as_deref_mut()));
        }
        Json::Object(obj) => obj,
        _ => return false,
    };
    let ty = obj.get("type").and_then(Json::as_str);
    if let Some(defined) = defined.as_deref_mut()
        && matches!(ty, Some("record" | "enum" | "fixed" | "ref"))
    {
        let ns = obj.get("namespace").and_then(Json::as_str);
        let name = obj.get("name").and_then(Json::as_str).unwrap_or_default();
        let full = ns.map_or(name.to_string(), |ns| format!("{ns}.{name}"));
        if !defined.insert(full) {
            return true;
        }
    }
    for (k, v) in obj {
        if obj.len() == 1 && k == "type" && v.is_string() {
            return true;
        }
        match k.as_str() {
            "default" | "doc" | "aliases" | "logicalType" => {}
            "name" if ty.is_some_and(|t| matches!(t, "record" | "enum" | "fixed" | "ref")) => {}
            "size" | "precision" | "scale" => {
                let ok = match v {
                    Json::String(s) => s.parse::<i64>().is_ok(),
                    v => v.as_i64().is_some(),
                };
                if !ok {
                    return false;
                }
            }
            "name" | "type" | "fields" | "symbols" | "items" | "values" | "order"
                if !apache_canonical_form_ok(v, defined.as_deref_mut()) =>
            {
                return false;
            }
            _ => {}
        }
    }
    true
}

const RABIN_EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const RABIN_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (RABIN_EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// CRC-64-AVRO (Rabin) fingerprint of some bytes, as the Avro spec defines it.
pub(crate) fn rabin(bytes: &[u8]) -> u64 {
    let mut fp = RABIN_EMPTY;
    for &b in bytes {
        fp = (fp >> 8) ^ RABIN_TABLE[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

#[cfg(test)]
mod tests;
