//! The generic path through apache-avro: datum -> `Value` tree -> schema
//! resolution -> serde into our structs. About an order of magnitude slower than
//! the plans of [`super::plan`]; kept as the reference the fast path is tested
//! against, and as a fallback for writer schemas the plan compiler's own schema
//! walker cannot read.

use super::DecodeError;
use crate::event::{Event, EventKind};
use apache_avro::{Schema, types::Value};

/// The reader schemas, parsed once.
pub(crate) struct ReaderSchemas([Schema; 4]);

impl ReaderSchemas {
    pub fn new() -> Result<ReaderSchemas, (EventKind, String)> {
        let parse =
            |k: EventKind| Schema::parse_str(k.schema_json()).map_err(|e| (k, e.to_string()));
        Ok(ReaderSchemas([
            parse(EventKind::PageView)?,
            parse(EventKind::EmailEvent)?,
            parse(EventKind::Purchase)?,
            parse(EventKind::SurveyResponse)?,
        ]))
    }

    pub fn get(&self, kind: EventKind) -> &Schema {
        let i = match kind {
            EventKind::PageView => 0,
            EventKind::EmailEvent => 1,
            EventKind::Purchase => 2,
            EventKind::SurveyResponse => 3,
        };
        &self.0[i]
    }
}

/// A writer schema for the generic path.
pub(crate) struct GenericPlan {
    writer: Schema,
    /// The kind of the record, or of each union branch.
    kinds: Vec<EventKind>,
    union: bool,
}

fn record_kind(s: &Schema) -> Result<EventKind, String> {
    match s {
        Schema::Record(r) => EventKind::from_name(r.name.name())
            .ok_or_else(|| format!("record {}", r.name.fullname(None))),
        other => Err(format!("{other:?}").chars().take(80).collect()),
    }
}

impl GenericPlan {
    /// Checks the writer's shape: a record, or a union of records, of our kinds.
    pub fn new(writer: Schema) -> Result<GenericPlan, String> {
        let (kinds, union) = match &writer {
            Schema::Union(u) => (
                u.variants()
                    .iter()
                    .map(record_kind)
                    .collect::<Result<Vec<_>, _>>()?,
                true,
            ),
            other => (vec![record_kind(other)?], false),
        };
        Ok(GenericPlan {
            writer,
            kinds,
            union,
        })
    }

    /// Whether apache-avro can resolve each writer record against its reader.
    pub fn check_compatible(&self, readers: &ReaderSchemas) -> Result<(), String> {
        let records: Vec<&Schema> = match &self.writer {
            Schema::Union(u) => u.variants().iter().collect(),
            other => vec![other],
        };
        for (w, k) in records.iter().zip(&self.kinds) {
            apache_avro::schema_compatibility::SchemaCompatibility::can_read(w, readers.get(*k))
                .map_err(|e| format!("record {k:?}: {e}"))?;
        }
        Ok(())
    }

    /// Decodes the datum `payload[start..]`.
    pub fn decode(
        &self,
        payload: &[u8],
        start: usize,
        readers: &ReaderSchemas,
    ) -> Result<Event, DecodeError> {
        let avro = |e: apache_avro::Error| DecodeError::Malformed(format!("apache-avro: {e}"));
        let mut rest = payload.get(start..).ok_or(DecodeError::Truncated {
            offset: payload.len(),
            needed: start.saturating_sub(payload.len()),
        })?;
        let value = apache_avro::reader::datum::GenericDatumReader::builder(&self.writer)
            .build()
            .and_then(|r| r.read_value(&mut rest))
            .map_err(avro)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        let (kind, record) = match (self.union, value) {
            (true, Value::Union(i, v)) => {
                let kind = usize::try_from(i)
                    .ok()
                    .and_then(|i| self.kinds.get(i))
                    .copied()
                    .ok_or_else(|| DecodeError::Malformed(format!("union branch {i}")))?;
                (kind, *v)
            }
            (false, v) => match self.kinds.first() {
                Some(k) => (*k, v),
                None => return Err(DecodeError::Malformed("internal: no kind".into())),
            },
            (true, _) => return Err(DecodeError::Malformed("expected a union value".into())),
        };
        let resolved = record.resolve(readers.get(kind)).map_err(avro)?;
        Ok(match kind {
            EventKind::PageView => {
                Event::PageView(apache_avro::from_value(&resolved).map_err(avro)?)
            }
            EventKind::EmailEvent => {
                Event::Email(apache_avro::from_value(&resolved).map_err(avro)?)
            }
            EventKind::Purchase => {
                Event::Purchase(apache_avro::from_value(&resolved).map_err(avro)?)
            }
            EventKind::SurveyResponse => {
                Event::Survey(apache_avro::from_value(&resolved).map_err(avro)?)
            }
        })
    }
}
