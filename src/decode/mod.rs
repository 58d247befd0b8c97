//! Turns one Kafka record value into a typed [`Event`], or a typed [`DecodeError`].
//!
//! Sans-I/O: a pure function of the payload bytes, the topic name and the
//! writer schemas handed over in [`DecoderConfig`] or, for Confluent ids, later
//! through [`Decoder::add_schema_id`]. No registry calls, no clock, no logging
//! on the hot path; the edge does the I/O (`crate::registry` fetches the
//! schemas of unknown ids and adds them to a copy of the decoder) and sends
//! every error to the dead-letter topic (SPEC §1). Nothing here panics on any
//! input: every length is checked before slicing, recursion is bounded, and
//! block counts cannot make it spin.
//!
//! # Wire formats, detected per message
//!
//! 1. **Confluent**: first byte `0x00`, then a 4-byte big-endian schema id, then
//!    the datum. The id is looked up in [`DecoderConfig::schema_ids`], then
//!    among the ids added by [`Decoder::add_schema_id`] (configured ids win).
//! 2. **Single-object encoding**: `0xC3 0x01`, then the 8-byte little-endian
//!    CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form,
//!    then the datum. The fingerprint is looked up among our four reader
//!    schemas (`schemas/*.avsc`), every schema in `schema_ids` and every schema
//!    in `topic_schemas`. Each schema answers to the spec's fingerprint (what
//!    Java, Python and fastavro compute) and, where it differs, to the one
//!    apache-avro 0.22 computes (it keeps `{"type":"long"}` for logical types).
//! 3. **Plain**: anything else is a bare datum, decoded with the writer schema
//!    configured for the topic in [`DecoderConfig::topic_schemas`].
//!
//! Detection looks at the magic bytes only, as Confluent's and Avro's own
//! deserializers do, so a plain datum can be mistaken for a framed one: a plain
//! datum written with a union writer schema starts with its branch index, and
//! branch 0 is the byte `0x00`. (`0xC3 0x01` cannot start a plain datum of our
//! records: as a string length or union index it is the varint -98.) Hence the
//! rule: **when a framed decode fails and the topic has a plain writer schema,
//! the whole payload is decoded as a plain datum**; if that fails too, the
//! framed error is returned. Every decode must also consume the payload
//! exactly ([`DecodeError::TrailingBytes`]), which makes an accidental framed
//! match that decodes cleanly very unlikely.
//!
//! # Fast path and generic path
//!
//! [`Decoder::new`] parses every schema once and compiles, per writer schema,
//! a resolution plan against our reader schemas (module `plan`), following
//! the Avro specification's resolution rules. [`Decoder::decode`] then reads
//! the binary datum straight into the structs of [`crate::event`]. The generic
//! apache-avro path (`from_avro_datum` → `Value` → `from_value`) stays as the
//! reference the fast path is tested and benchmarked against
//! ([`Decoder::decode_generic`]) and as a fallback for a writer schema that
//! apache-avro accepts but the plan compiler's own schema walker cannot read.
//!
//! Writer schemas must be a record named like one of the four kinds
//! (`PageView`, `EmailEvent`, `Purchase`, `SurveyResponse`; namespace free) or
//! a union of such records; anything else is a [`SchemaError`] at start-up, as
//! is a writer that cannot be resolved against our reader schema.

pub mod container;
pub mod encode;
mod generic;
mod plan;
mod reader;
mod schema;
#[cfg(test)]
mod tests;

use crate::event::{Event, EventKind};
use generic::{GenericPlan, ReaderSchemas};
use plan::{CompileError, ReaderRecord, WriterPlan};
use reader::Reader;
use std::collections::{BTreeMap, HashMap};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The writer schemas the decoder knows, as built by the config layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Confluent schema id -> writer schema JSON text (local id->schema map; no registry yet).
    pub schema_ids: BTreeMap<u32, String>,
    /// topic -> writer schema JSON text, for plain (unframed) Avro datums on that topic.
    pub topic_schemas: BTreeMap<String, String>,
}

/// How a payload is framed, from its first bytes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// `0x00`, 4-byte big-endian schema id, datum.
    Confluent,
    /// `0xC3 0x01`, 8-byte little-endian CRC-64-AVRO fingerprint, datum.
    SingleObject,
    /// A bare datum; the writer schema comes from the topic.
    Plain,
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireFormat::Confluent => "confluent",
            WireFormat::SingleObject => "single-object",
            WireFormat::Plain => "plain",
        })
    }
}

/// Where a schema came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaOrigin {
    /// `DecoderConfig::schema_ids[id]`.
    SchemaId(u32),
    /// `DecoderConfig::topic_schemas[topic]`.
    Topic(String),
    /// Our own reader schema, `schemas/<kind>.avsc`.
    Reader(EventKind),
}

impl fmt::Display for SchemaOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaOrigin::SchemaId(id) => write!(f, "writer schema for schema id {id}"),
            SchemaOrigin::Topic(t) => write!(f, "writer schema for topic `{t}`"),
            SchemaOrigin::Reader(k) => write!(f, "reader schema {}", k.full_name()),
        }
    }
}

/// A configured (or built-in) schema is unusable: fix the config and restart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("{origin}: not a valid Avro schema: {reason}")]
    Parse {
        origin: SchemaOrigin,
        reason: String,
    },
    #[error(
        "{origin}: is {found}; expected a record named PageView, EmailEvent, Purchase or \
         SurveyResponse, or a union of such records"
    )]
    NotAnEvent { origin: SchemaOrigin, found: String },
    #[error("{origin}: cannot be read with our reader schema: {reason}")]
    Incompatible {
        origin: SchemaOrigin,
        reason: String,
    },
}

/// A record value that cannot be decoded: it goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload truncated at byte {offset}: {needed} more byte(s) needed")]
    Truncated { offset: usize, needed: usize },
    #[error("unknown Confluent schema id {0} (not in the configured schema ids)")]
    UnknownSchemaId(u32),
    #[error("unknown writer schema fingerprint {0:#018x} in a single-object encoded payload")]
    UnknownFingerprint(u64),
    #[error("plain Avro datum on topic `{0}`, which has no configured writer schema")]
    NoSchemaForTopic(String),
    #[error("malformed Avro data: {0}")]
    Malformed(String),
    #[error("varint at byte {offset} does not fit in 64 bits")]
    VarintOverflow { offset: usize },
    #[error(
        "union branch index {index} at byte {offset} is not below the writer's {branches} branches"
    )]
    BadUnionIndex {
        index: i64,
        branches: usize,
        offset: usize,
    },
    #[error("field `{field}`: writer enum symbol `{symbol}` is unknown to our reader schema")]
    UnknownEnumSymbol { field: &'static str, symbol: String },
    #[error("field `{field}`: writer union branch {branch} cannot be read: {reason}")]
    UnreadableBranch {
        field: &'static str,
        branch: usize,
        reason: String,
    },
    #[error("{0} trailing byte(s) after the Avro datum")]
    TrailingBytes(usize),
    #[error(
        "data nested more than {} levels deep at byte {offset}",
        reader::MAX_DEPTH
    )]
    TooDeep { offset: usize },
}

/// One writer schema, ready to decode.
struct Writer {
    /// None when the plan compiler could not read the schema (generic fallback).
    fast: Option<WriterPlan>,
    generic: GenericPlan,
    /// Single-object fingerprints that select this schema.
    fingerprints: Vec<u64>,
}

impl Writer {
    fn build(
        origin: SchemaOrigin,
        text: &str,
        readers: &ReaderSchemas,
        records: &[ReaderRecord],
    ) -> Result<Writer, SchemaError> {
        let parse_err = |reason: String| SchemaError::Parse {
            origin: origin.clone(),
            reason,
        };
        let json = serde_json::from_str::<serde_json::Value>(text);
        // apache-avro 0.22 panics parsing some schemas (it puts a field's type
        // in canonical form to check its default): refuse what that would trip
        // on before handing it the text (found by the `writer_schema` fuzz target).
        if let Ok(json) = &json
            && !schema::apache_canonical_form_ok(json, None)
        {
            return Err(parse_err(
                "a `size`, `precision` or `scale` that is not a 64-bit integer, or a \
                 non-schema value where a schema belongs"
                    .into(),
            ));
        }
        let avro = apache_avro::Schema::parse_str(text).map_err(|e| parse_err(e.to_string()))?;
        let json = json.map_err(|e| parse_err(e.to_string()))?;
        // The spec's fingerprint (Java, Python, fastavro) and apache-avro's,
        // which differs for schemas with logical types (avro-rs issue 61): a
        // producer using either finds its schema.
        // apache-avro panics computing the canonical form of some schemas it
        // accepts (see `schema::apache_canonical_form_ok`): no producer can have
        // used that fingerprint, so such a schema answers to the spec's only.
        let avro_fingerprint = serde_json::to_value(&avro)
            .ok()
            .filter(|j| schema::apache_canonical_form_ok(j, Some(&mut Default::default())))
            .map(|_| schema::rabin(avro.canonical_form().as_bytes()));
        let mut fingerprints: Vec<u64> = avro_fingerprint.into_iter().collect();
        if let Ok(pcf) = schema::canonical_form(&json) {
            let spec_fingerprint = schema::rabin(pcf.as_bytes());
            if Some(spec_fingerprint) != avro_fingerprint {
                fingerprints.insert(0, spec_fingerprint);
            }
        }
        let fast = match schema::Parsed::parse(&json) {
            Ok(parsed) => match WriterPlan::compile(&parsed, records) {
                Ok(plan) => Some(plan),
                Err(CompileError::NotAnEvent(found)) => {
                    return Err(SchemaError::NotAnEvent { origin, found });
                }
                Err(CompileError::Incompatible(reason)) => {
                    return Err(SchemaError::Incompatible { origin, reason });
                }
            },
            Err(why) => {
                tracing::warn!(
                    "{origin}: the fast decoder cannot read this schema ({why}); \
                     using the slower generic apache-avro path"
                );
                None
            }
        };
        let generic = GenericPlan::new(avro).map_err(|found| SchemaError::NotAnEvent {
            origin: origin.clone(),
            found,
        })?;
        if fast.is_none() {
            generic
                .check_compatible(readers)
                .map_err(|reason| SchemaError::Incompatible {
                    origin: origin.clone(),
                    reason,
                })?;
        }
        Ok(Writer {
            fast,
            generic,
            fingerprints,
        })
    }

    /// Decodes the datum at `start` into `out` (see [`WriterPlan::decode_into`]).
    fn decode_into(
        &self,
        payload: &[u8],
        start: usize,
        force_generic: bool,
        readers: &ReaderSchemas,
        out: &mut Event,
    ) -> Result<(), DecodeError> {
        match &self.fast {
            Some(plan) if !force_generic => {
                let mut r = Reader::new(payload, start);
                plan.decode_into(&mut r, out)?;
                match r.remaining() {
                    0 => Ok(()),
                    n => Err(DecodeError::TrailingBytes(n)),
                }
            }
            _ => {
                *out = self.generic.decode(payload, start, readers)?;
                Ok(())
            }
        }
    }
}

/// The most apache-avro allocates at once for one value on the generic path
/// (see [`Decoder::new`]): far above any sane string, and 16 times Kafka's
/// default record size limit.
const GENERIC_MAX_ALLOCATION: usize = 16 << 20;

/// Decodes record values of every configured wire format and writer schema.
/// `Send + Sync`, share it with an `Arc`; to learn a schema id at run time, the
/// edge clones it (cheap: the compiled writers are shared), adds the id and swaps
/// the `Arc` ([`crate::pipeline::Pipeline::learn_schema_id`]).
#[derive(Clone)]
pub struct Decoder {
    // Looked up once per record: foldhash, not SipHash (the keys are schema ids,
    // fingerprints and topic names from the configuration, not from the input).
    by_id: FastMap<u32, Arc<Writer>>,
    by_fingerprint: FastMap<u64, Arc<Writer>>,
    by_topic: FastMap<String, Arc<Writer>>,
    readers: Arc<ReaderSchemas>,
    /// Our reader records, to compile the writers added later against.
    records: Arc<[ReaderRecord]>,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.by_id.keys().collect();
        ids.sort();
        let mut topics: Vec<_> = self.by_topic.keys().collect();
        topics.sort();
        f.debug_struct("Decoder")
            .field("schema_ids", &ids)
            .field("topics", &topics)
            .field("fingerprints", &self.by_fingerprint.len())
            .finish()
    }
}

/// Our reader records, one per kind, for compiling writer plans against.
fn reader_records() -> Result<Vec<ReaderRecord>, SchemaError> {
    EventKind::ALL
        .into_iter()
        .map(|k| ReaderRecord::new(k).map_err(|e| reader_error(k, e)))
        .collect()
}

fn reader_error(kind: EventKind, reason: String) -> SchemaError {
    SchemaError::Incompatible {
        origin: SchemaOrigin::Reader(kind),
        reason: format!("does not match src/event.rs: {reason}"),
    }
}

impl Decoder {
    /// Parses and compiles every schema up front; any unusable schema is an error
    /// naming its schema id or topic.
    pub fn new(cfg: &DecoderConfig) -> Result<Decoder, SchemaError> {
        // apache-avro reserves room for a declared array, map, bytes or string
        // length before reading it, up to this process-wide bound (512 MiB by
        // default; the first setting wins): on the generic path a record of a
        // few bytes could allocate that much (found by the `writer_schema`
        // fuzz target).
        apache_avro::util::max_allocation_bytes(GENERIC_MAX_ALLOCATION);
        let readers = ReaderSchemas::new().map_err(|(kind, reason)| SchemaError::Parse {
            origin: SchemaOrigin::Reader(kind),
            reason,
        })?;
        let records: Arc<[ReaderRecord]> = reader_records()?.into();
        let mut d = Decoder {
            by_id: FastMap::default(),
            by_fingerprint: FastMap::default(),
            by_topic: FastMap::default(),
            readers: Arc::new(readers),
            records: records.clone(),
        };
        for kind in EventKind::ALL {
            let w = Writer::build(
                SchemaOrigin::Reader(kind),
                kind.schema_json(),
                &d.readers,
                &records,
            )?;
            d.add_fingerprints(&Arc::new(w));
        }
        for (id, text) in &cfg.schema_ids {
            let w = Arc::new(Writer::build(
                SchemaOrigin::SchemaId(*id),
                text,
                &d.readers,
                &records,
            )?);
            d.add_fingerprints(&w);
            d.by_id.insert(*id, w);
        }
        for (topic, text) in &cfg.topic_schemas {
            let w = Arc::new(Writer::build(
                SchemaOrigin::Topic(topic.clone()),
                text,
                &d.readers,
                &records,
            )?);
            d.add_fingerprints(&w);
            d.by_topic.insert(topic.clone(), w);
        }
        Ok(d)
    }

    /// Adds the writer schema `text` of Confluent schema id `id`, compiled as
    /// [`Decoder::new`] compiles a configured `schema_ids` entry, so that
    /// records framed with `id` decode from now on. An id the decoder already
    /// knows keeps its schema (a configured id overrides the registry), and the
    /// call is a no-op. Unlike a configured id, the schema does not join the
    /// single-object fingerprints: which fingerprints decode stays a function of
    /// the configuration, not of which ids happened to be seen first.
    pub fn add_schema_id(&mut self, id: u32, text: &str) -> Result<(), SchemaError> {
        if self.by_id.contains_key(&id) {
            return Ok(());
        }
        let w = Writer::build(
            SchemaOrigin::SchemaId(id),
            text,
            &self.readers,
            &self.records,
        )?;
        self.by_id.insert(id, Arc::new(w));
        Ok(())
    }

    /// Whether records framed with Confluent schema id `id` have a writer schema.
    pub fn knows_schema_id(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Whether plain datums on `topic` have a writer schema (`topic_schemas`).
    pub fn has_topic_schema(&self, topic: &str) -> bool {
        self.by_topic.contains_key(topic)
    }

    /// The schema id of a Confluent-framed payload (`0x00`, 4-byte big-endian
    /// id, at least the id present), from its first bytes alone.
    pub fn confluent_schema_id(payload: &[u8]) -> Option<u32> {
        match payload {
            [0x00, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }

    /// First come, first served: identical canonical forms decode alike.
    fn add_fingerprints(&mut self, w: &Arc<Writer>) {
        for fp in &w.fingerprints {
            self.by_fingerprint.entry(*fp).or_insert_with(|| w.clone());
        }
    }

    /// Decodes one record value read from `topic` (the fast path).
    pub fn decode(&self, topic: &str, payload: &[u8]) -> Result<Event, DecodeError> {
        let mut event = Event::empty(EventKind::PageView);
        self.decode_with(topic, payload, false, &mut event)?;
        Ok(event)
    }

    /// Like [`Decoder::decode`], into `out`: a record path that decodes into the
    /// same event again and again reuses its strings' buffers instead of
    /// allocating every string of every record. After an error `out` holds
    /// anything of the right types: read it only after `Ok`.
    pub fn decode_into(
        &self,
        topic: &str,
        payload: &[u8],
        out: &mut Event,
    ) -> Result<(), DecodeError> {
        self.decode_with(topic, payload, false, out)
    }

    /// Like [`Decoder::decode`], but always through apache-avro's generic
    /// `Value` path: the reference implementation, for tests and benchmarks.
    pub fn decode_generic(&self, topic: &str, payload: &[u8]) -> Result<Event, DecodeError> {
        let mut event = Event::empty(EventKind::PageView);
        self.decode_with(topic, payload, true, &mut event)?;
        Ok(event)
    }

    /// The framing of `payload`, from its magic bytes alone (see the module docs).
    pub fn wire_format(payload: &[u8]) -> WireFormat {
        match payload {
            [0x00, ..] => WireFormat::Confluent,
            [0xC3, 0x01, ..] => WireFormat::SingleObject,
            _ => WireFormat::Plain,
        }
    }

    fn decode_with(
        &self,
        topic: &str,
        payload: &[u8],
        generic: bool,
        out: &mut Event,
    ) -> Result<(), DecodeError> {
        if payload.is_empty() {
            return Err(DecodeError::Empty);
        }
        let framed = match Self::wire_format(payload) {
            WireFormat::Plain => {
                return match self.by_topic.get(topic) {
                    Some(w) => w.decode_into(payload, 0, generic, &self.readers, out),
                    None => Err(DecodeError::NoSchemaForTopic(topic.to_string())),
                };
            }
            WireFormat::Confluent => self.decode_confluent(payload, generic, out),
            WireFormat::SingleObject => self.decode_single_object(payload, generic, out),
        };
        match (framed, self.by_topic.get(topic)) {
            (Ok(()), _) => Ok(()),
            // The payload may be a plain datum that merely looks framed.
            (Err(e), Some(w)) => w
                .decode_into(payload, 0, generic, &self.readers, out)
                .map_err(|_| e),
            (Err(e), None) => Err(e),
        }
    }

    fn decode_confluent(
        &self,
        payload: &[u8],
        generic: bool,
        out: &mut Event,
    ) -> Result<(), DecodeError> {
        let id = header::<4>(payload, 1)?;
        let id = u32::from_be_bytes(id);
        let w = self
            .by_id
            .get(&id)
            .ok_or(DecodeError::UnknownSchemaId(id))?;
        w.decode_into(payload, 5, generic, &self.readers, out)
    }

    fn decode_single_object(
        &self,
        payload: &[u8],
        generic: bool,
        out: &mut Event,
    ) -> Result<(), DecodeError> {
        let fp = u64::from_le_bytes(header::<8>(payload, 2)?);
        let w = self
            .by_fingerprint
            .get(&fp)
            .ok_or(DecodeError::UnknownFingerprint(fp))?;
        w.decode_into(payload, 10, generic, &self.readers, out)
    }
}

/// `N` header bytes at `at`, or how many are missing.
fn header<const N: usize>(payload: &[u8], at: usize) -> Result<[u8; N], DecodeError> {
    payload
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(DecodeError::Truncated {
            offset: payload.len(),
            needed: (at + N).saturating_sub(payload.len()),
        })
}

/// The CRC-64-AVRO fingerprint of our reader schema for `kind`: what a producer
/// using single-object encoding with `schemas/<kind>.avsc` puts in the header.
pub fn reader_fingerprint(kind: EventKind) -> u64 {
    static CACHE: OnceLock<[u64; 4]> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        EventKind::ALL.map(|k| {
            serde_json::from_str(k.schema_json())
                .map_err(|e| e.to_string())
                .and_then(|json| schema::canonical_form(&json))
                .map(|pcf| schema::rabin(pcf.as_bytes()))
                .unwrap_or_default()
        })
    });
    let i = EventKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default();
    all[i]
}
