//! Resolution plans: a writer schema compiled, once, against our reader schemas
//! into a flat list of "read this into field N" / "skip this" steps, so that the
//! hot path decodes straight into the structs of `crate::event` with no
//! intermediate `Value` tree.
//!
//! The rules are the Avro specification's schema resolution: reader fields are
//! matched by name (or by a reader alias), writer-only fields are skipped,
//! reader-only fields take the reader's default, enum symbols are matched by
//! name, `int` promotes to `long`, `bytes` and `string` are interchangeable, and
//! unions on either side are resolved branch by branch.

use std::borrow::Cow;

use super::DecodeError;
use super::reader::{Reader, Skip};
use super::schema::{Named, Parsed, WType};
use crate::event::{EmailEventType, Event, EventKind, PurchaseType, SurveyKind};
use serde_json::Value as Json;

/// Most fields of any of our records (Purchase has 10).
const MAX_FIELDS: usize = 10;

/// What the Rust struct expects in a field, checked against the reader schema
/// once, so that the builders below can trust the slot types.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Str,
    OptStr,
    Long,
    OptLong,
    Int,
    Enum(&'static [&'static str]),
}

const EMAIL_TYPES: [EmailEventType; 7] = [
    EmailEventType::Sent,
    EmailEventType::Delivered,
    EmailEventType::Bounced,
    EmailEventType::Opened,
    EmailEventType::Clicked,
    EmailEventType::Unsubscribed,
    EmailEventType::Complained,
];
const EMAIL_SYMBOLS: &[&str] = &[
    "SENT",
    "DELIVERED",
    "BOUNCED",
    "OPENED",
    "CLICKED",
    "UNSUBSCRIBED",
    "COMPLAINED",
];
const PURCHASE_TYPES: [PurchaseType; 4] = [
    PurchaseType::Order,
    PurchaseType::Refund,
    PurchaseType::Renewal,
    PurchaseType::Cancellation,
];
const PURCHASE_SYMBOLS: &[&str] = &["ORDER", "REFUND", "RENEWAL", "CANCELLATION"];
const SURVEY_KINDS: [SurveyKind; 3] = [SurveyKind::Nps, SurveyKind::Csat, SurveyKind::Ces];
const SURVEY_SYMBOLS: &[&str] = &["NPS", "CSAT", "CES"];

/// The fields of each struct in `crate::event`, in struct order; a field's
/// position here is its slot number, used by [`build`].
fn shape(kind: EventKind) -> &'static [(&'static str, Expect)] {
    use Expect::*;
    match kind {
        EventKind::PageView => &[
            ("event_id", Str),
            ("event_time", Long),
            ("visitor_id", Str),
            ("customer_id", OptStr),
            ("site", Str),
            ("page", Str),
            ("referrer", OptStr),
            ("channel", OptStr),
        ],
        EventKind::EmailEvent => &[
            ("event_id", Str),
            ("event_time", Long),
            ("customer_id", Str),
            ("campaign_id", Str),
            ("message_id", Str),
            ("type", Enum(EMAIL_SYMBOLS)),
            ("url", OptStr),
        ],
        EventKind::Purchase => &[
            ("event_id", Str),
            ("event_time", Long),
            ("customer_id", Str),
            ("order_id", Str),
            ("type", Enum(PURCHASE_SYMBOLS)),
            ("amount_minor", Long),
            ("currency", Str),
            ("cost_minor", OptLong),
            ("items", Int),
            ("campaign_id", OptStr),
        ],
        EventKind::SurveyResponse => &[
            ("event_id", Str),
            ("event_time", Long),
            ("customer_id", OptStr),
            ("survey_id", Str),
            ("kind", Enum(SURVEY_SYMBOLS)),
            ("score", Int),
            ("comment", OptStr),
        ],
    }
}

/// A decoded field value, typed by the reader schema. Strings borrow the datum
/// (or the plan, for defaults): an event's strings are copied once, into the
/// event ([`build`]) or into the buffers of a reused one ([`build_into`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum Val<'a> {
    #[default]
    Absent,
    Null,
    Int(i32),
    Long(i64),
    Str(Cow<'a, str>),
    /// Index into the reader's symbols.
    Enum(u32),
}

impl Val<'_> {
    /// The same value, borrowing its string from `self`.
    fn borrowed(&self) -> Val<'_> {
        match self {
            Val::Str(s) => Val::Str(Cow::Borrowed(s)),
            Val::Absent => Val::Absent,
            Val::Null => Val::Null,
            Val::Int(n) => Val::Int(*n),
            Val::Long(n) => Val::Long(*n),
            Val::Enum(i) => Val::Enum(*i),
        }
    }
}

/// Reader-side types: only what our reader schemas use.
#[derive(Debug, Clone, PartialEq)]
enum RType {
    Null,
    Int,
    Long,
    String,
    Enum { name: String, symbols: Vec<String> },
    Union(Vec<RType>),
}

impl RType {
    fn describe(&self) -> String {
        match self {
            RType::Null => "null".into(),
            RType::Int => "int".into(),
            RType::Long => "long".into(),
            RType::String => "string".into(),
            RType::Enum { name, .. } => format!("enum {name}"),
            RType::Union(b) => {
                let parts: Vec<String> = b.iter().map(RType::describe).collect();
                format!("[{}]", parts.join(", "))
            }
        }
    }

    fn matches(&self, e: Expect) -> bool {
        let opt = |t: RType| *self == RType::Union(vec![RType::Null, t]);
        match e {
            Expect::Str => *self == RType::String,
            Expect::OptStr => opt(RType::String),
            Expect::Long => *self == RType::Long,
            Expect::OptLong => opt(RType::Long),
            Expect::Int => *self == RType::Int,
            Expect::Enum(syms) => {
                matches!(self, RType::Enum { symbols, .. } if symbols.iter().map(String::as_str).eq(syms.iter().copied()))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct ReaderField {
    slot: usize,
    name: &'static str,
    aliases: Vec<String>,
    ty: RType,
    default: Option<Val<'static>>,
}

/// One of our reader schemas, checked against the Rust struct.
#[derive(Debug, Clone)]
pub(crate) struct ReaderRecord {
    kind: EventKind,
    fields: Vec<ReaderField>,
}

fn unqualified(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn rtype(p: &Parsed, t: &WType) -> Result<RType, String> {
    Ok(match t {
        WType::Null => RType::Null,
        WType::Int => RType::Int,
        WType::Long => RType::Long,
        WType::String => RType::String,
        WType::Union(b) => RType::Union(b.iter().map(|t| rtype(p, t)).collect::<Result<_, _>>()?),
        WType::Ref(i) => match p.named.get(*i) {
            Some(Named::Enum { name, symbols }) => RType::Enum {
                name: name.clone(),
                symbols: symbols.clone(),
            },
            _ => return Err(format!("unsupported reader type {}", p.describe(t))),
        },
        other => return Err(format!("unsupported reader type {}", p.describe(other))),
    })
}

/// A reader default (JSON) as a value of the reader type; a union's default
/// belongs to its first branch.
fn default_val(t: &RType, d: &Json) -> Result<Val<'static>, String> {
    match (t, d) {
        (RType::Union(b), d) => match b.first() {
            Some(first) => default_val(first, d),
            None => Err("empty union".into()),
        },
        (RType::Null, Json::Null) => Ok(Val::Null),
        (RType::String, Json::String(s)) => Ok(Val::Str(Cow::Owned(s.clone()))),
        (RType::Long, Json::Number(n)) => {
            n.as_i64().map(Val::Long).ok_or("bad long default".into())
        }
        (RType::Int, Json::Number(n)) => n
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .map(Val::Int)
            .ok_or("bad int default".into()),
        (RType::Enum { symbols, .. }, Json::String(s)) => symbols
            .iter()
            .position(|x| x == s)
            .and_then(|i| u32::try_from(i).ok())
            .map(Val::Enum)
            .ok_or(format!("default `{s}` is not a symbol")),
        (t, d) => Err(format!("default {d} does not fit {}", t.describe())),
    }
}

impl ReaderRecord {
    /// Builds the reader record of `kind` from its `.avsc`, checking that it
    /// has exactly the fields (and field types) of the Rust struct.
    pub fn new(kind: EventKind) -> Result<ReaderRecord, String> {
        let json: Json = serde_json::from_str(kind.schema_json()).map_err(|e| e.to_string())?;
        let p = Parsed::parse(&json)?;
        let Some(Named::Record { name, fields, .. }) = (match p.root {
            WType::Ref(i) => p.named.get(i),
            _ => None,
        }) else {
            return Err("not a record".into());
        };
        if name != kind.full_name() {
            return Err(format!(
                "record is named {name}, expected {}",
                kind.full_name()
            ));
        }
        let expected = shape(kind);
        if fields.len() != expected.len() {
            return Err(format!(
                "{} fields in the schema, {} in the struct",
                fields.len(),
                expected.len()
            ));
        }
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let Some(slot) = expected.iter().position(|(n, _)| *n == f.name) else {
                return Err(format!("field `{}` is not in the struct", f.name));
            };
            let (name, expect) = expected[slot];
            let ty = rtype(&p, &f.ty).map_err(|e| format!("field `{name}`: {e}"))?;
            if !ty.matches(expect) {
                return Err(format!(
                    "field `{name}` is {} in the schema, the struct expects {expect:?}",
                    ty.describe()
                ));
            }
            let default = match &f.default {
                Some(d) => Some(default_val(&ty, d).map_err(|e| format!("field `{name}`: {e}"))?),
                None => None,
            };
            out.push(ReaderField {
                slot,
                name,
                aliases: f.aliases.clone(),
                ty,
                default,
            });
        }
        Ok(ReaderRecord { kind, fields: out })
    }
}

/// How to read one writer value into a reader-typed [`Val`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Read {
    Null,
    Int,
    IntToLong,
    Long,
    /// A writer `string` or `bytes` read as a reader `string` (UTF-8 checked).
    Str,
    /// Writer symbol index -> reader symbol index (None: unknown to the reader).
    Enum {
        map: Box<[Option<u32>]>,
        writer_symbols: Box<[String]>,
    },
    /// A writer union: per branch, how to read it, or why the reader cannot.
    Union(Box<[Result<Read, String>]>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Skip(Skip),
    Read {
        slot: usize,
        field: &'static str,
        read: Read,
    },
}

/// The plan for one writer record read as one of our kinds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordPlan {
    kind: EventKind,
    ops: Vec<Op>,
    /// Reader fields the writer lacks, with the reader's default.
    defaults: Vec<(usize, Val<'static>)>,
    /// The writer record is our reader record (every field read, in struct
    /// order, with its own type): decoded by [`direct_into`], without slots.
    direct: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Top {
    Record(RecordPlan),
    /// A union of records: the datum starts with the branch index.
    Union(Vec<RecordPlan>),
}

/// A whole writer schema compiled against the reader schemas.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WriterPlan {
    top: Top,
    /// Skip plans of the writer's named types, for recursive skipping.
    table: Box<[Skip]>,
}

/// Why a writer schema has no plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CompileError {
    /// The writer is not a record (or union of records) of one of our kinds.
    NotAnEvent(String),
    /// The writer cannot be read as our reader schema.
    Incompatible(String),
}

fn skip_of(p: &Parsed, t: &WType) -> Skip {
    match t {
        WType::Null => Skip::Nothing,
        WType::Boolean => Skip::Fixed(1),
        WType::Int | WType::Long => Skip::Varint,
        WType::Float => Skip::Fixed(4),
        WType::Double => Skip::Fixed(8),
        WType::Bytes | WType::String => Skip::Bytes,
        WType::Array(i) => Skip::Array(Box::new(skip_of(p, i))),
        WType::Map(v) => Skip::Map(Box::new(skip_of(p, v))),
        WType::Union(b) => Skip::Union(b.iter().map(|t| skip_of(p, t)).collect()),
        WType::Ref(i) => match p.named.get(*i) {
            Some(Named::Enum { .. }) => Skip::Varint,
            Some(Named::Fixed { size: 0, .. }) => Skip::Nothing,
            Some(Named::Fixed { size, .. }) => Skip::Fixed(*size),
            _ => Skip::Ref(*i),
        },
    }
}

fn resolve(p: &Parsed, w: &WType, r: &RType) -> Result<Read, String> {
    if let WType::Union(branches) = w {
        let reads: Box<[Result<Read, String>]> =
            branches.iter().map(|b| resolve(p, b, r)).collect();
        if reads.iter().all(Result::is_err) {
            return Err(format!(
                "writer {} has no branch readable as {}",
                p.describe(w),
                r.describe()
            ));
        }
        return Ok(Read::Union(reads));
    }
    if let RType::Union(branches) = r {
        // The first reader branch the writer type resolves to.
        return branches
            .iter()
            .find_map(|b| resolve(p, w, b).ok())
            .ok_or_else(|| {
                format!(
                    "writer {} is not readable as {}",
                    p.describe(w),
                    r.describe()
                )
            });
    }
    match (w, r) {
        (WType::Null, RType::Null) => Ok(Read::Null),
        (WType::Int, RType::Int) => Ok(Read::Int),
        (WType::Int, RType::Long) => Ok(Read::IntToLong),
        (WType::Long, RType::Long) => Ok(Read::Long),
        (WType::String | WType::Bytes, RType::String) => Ok(Read::Str),
        (WType::Ref(i), RType::Enum { name, symbols }) => match p.named.get(*i) {
            Some(Named::Enum {
                name: wname,
                symbols: wsyms,
            }) if unqualified(wname) == unqualified(name) => {
                let map = wsyms
                    .iter()
                    .map(|s| {
                        symbols
                            .iter()
                            .position(|x| x == s)
                            .and_then(|i| u32::try_from(i).ok())
                    })
                    .collect();
                Ok(Read::Enum {
                    map,
                    writer_symbols: wsyms.clone().into_boxed_slice(),
                })
            }
            _ => Err(format!(
                "writer {} is not readable as {}",
                p.describe(w),
                r.describe()
            )),
        },
        _ => Err(format!(
            "writer {} is not readable as {}",
            p.describe(w),
            r.describe()
        )),
    }
}

fn compile_record(
    p: &Parsed,
    writer_fields: &[super::schema::Field],
    reader: &ReaderRecord,
) -> Result<RecordPlan, String> {
    let mut ops = Vec::with_capacity(writer_fields.len());
    let mut seen = [false; MAX_FIELDS];
    for wf in writer_fields {
        let rf = reader
            .fields
            .iter()
            .find(|rf| rf.name == wf.name || rf.aliases.contains(&wf.name));
        match rf {
            Some(rf) => {
                if std::mem::replace(&mut seen[rf.slot], true) {
                    return Err(format!(
                        "two writer fields map to reader field `{}`",
                        rf.name
                    ));
                }
                let read =
                    resolve(p, &wf.ty, &rf.ty).map_err(|e| format!("field `{}`: {e}", wf.name))?;
                ops.push(Op::Read {
                    slot: rf.slot,
                    field: rf.name,
                    read,
                });
            }
            None => ops.push(Op::Skip(skip_of(p, &wf.ty))),
        }
    }
    let mut defaults = Vec::new();
    for rf in &reader.fields {
        if seen[rf.slot] {
            continue;
        }
        match &rf.default {
            Some(d) => defaults.push((rf.slot, d.clone())),
            None => {
                return Err(format!(
                    "reader field `{}` has no default and the writer lacks it",
                    rf.name
                ));
            }
        }
    }
    let direct = is_identity(reader.kind, &ops) && defaults.is_empty();
    Ok(RecordPlan {
        kind: reader.kind,
        ops,
        defaults,
        direct,
    })
}

/// Whether `ops` read every field of `kind`'s struct in order, each with the
/// read our own reader schema compiles to: what [`direct_into`] does by hand.
fn is_identity(kind: EventKind, ops: &[Op]) -> bool {
    let own = |e: Expect| -> Read {
        let opt = |t: Read| Read::Union(Box::new([Ok(Read::Null), Ok(t)]));
        match e {
            Expect::Str => Read::Str,
            Expect::OptStr => opt(Read::Str),
            Expect::Long => Read::Long,
            Expect::OptLong => opt(Read::Long),
            Expect::Int => Read::Int,
            Expect::Enum(symbols) => Read::Enum {
                map: (0..symbols.len() as u32).map(Some).collect(),
                writer_symbols: symbols.iter().map(|s| s.to_string()).collect(),
            },
        }
    };
    let shape = shape(kind);
    ops.len() == shape.len()
        && ops.iter().zip(shape).enumerate().all(|(i, (op, (_, e)))| {
            matches!(op, Op::Read { slot, read, .. } if *slot == i && *read == own(*e))
        })
}

impl WriterPlan {
    /// Compiles a parsed writer schema against the reader records (indexed in
    /// `EventKind::ALL` order).
    pub fn compile(p: &Parsed, readers: &[ReaderRecord]) -> Result<WriterPlan, CompileError> {
        let record = |t: &WType| -> Result<RecordPlan, CompileError> {
            let named = match t {
                WType::Ref(i) => p.named.get(*i),
                _ => None,
            };
            let Some(Named::Record { name, fields, .. }) = named else {
                return Err(CompileError::NotAnEvent(p.describe(t)));
            };
            let kind = EventKind::from_name(name)
                .ok_or_else(|| CompileError::NotAnEvent(format!("record {name}")))?;
            let reader = readers
                .iter()
                .find(|r| r.kind == kind)
                .ok_or_else(|| CompileError::Incompatible(format!("no reader for {kind:?}")))?;
            compile_record(p, fields, reader)
                .map_err(|e| CompileError::Incompatible(format!("record {name}: {e}")))
        };
        let top = match &p.root {
            WType::Union(branches) if !branches.is_empty() => {
                Top::Union(branches.iter().map(record).collect::<Result<_, _>>()?)
            }
            other => Top::Record(record(other)?),
        };
        let table = p
            .named
            .iter()
            .enumerate()
            .map(|(i, n)| match n {
                Named::Record { fields, .. } => {
                    Skip::Record(fields.iter().map(|f| skip_of(p, &f.ty)).collect())
                }
                _ => skip_of(p, &WType::Ref(i)),
            })
            .collect();
        Ok(WriterPlan { top, table })
    }

    /// Decodes one datum into `event` (the caller checks for trailing bytes),
    /// reusing its strings' buffers when it is
    /// of the datum's kind (no allocation per string once they are large
    /// enough). On an error `event` is left as it was or with some fields
    /// overwritten: a caller reads it only after `Ok`.
    pub fn decode_into(&self, r: &mut Reader<'_>, event: &mut Event) -> Result<(), DecodeError> {
        let plan = self.record(r)?;
        if plan.direct {
            return direct_into(plan.kind, r, event);
        }
        build_into(plan.kind, plan.run(r, &self.table)?, event)
    }

    /// [`WriterPlan::decode_into`] through the slots, also where the record
    /// is ours: the reference [`direct_into`] is tested against.
    #[cfg(test)]
    pub(crate) fn decode_into_by_slots(
        &self,
        r: &mut Reader<'_>,
        event: &mut Event,
    ) -> Result<(), DecodeError> {
        let plan = self.record(r)?;
        build_into(plan.kind, plan.run(r, &self.table)?, event)
    }

    /// The kind of event the datum at `r` holds (read without moving `r`),
    /// or `None` where its union branch does not read.
    pub fn kind_at(&self, r: &Reader<'_>) -> Option<EventKind> {
        let mut peek = r.clone();
        self.record(&mut peek).ok().map(|p| p.kind)
    }

    #[inline]
    fn record(&self, r: &mut Reader<'_>) -> Result<&RecordPlan, DecodeError> {
        Ok(match &self.top {
            Top::Record(p) => p,
            Top::Union(ps) => &ps[r.branch(ps.len())?],
        })
    }
}

mod exec;

use exec::*;

#[cfg(test)]
mod tests;
