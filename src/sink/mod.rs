//! Output records: the Avro `EngagementSnapshot` and dead-letter records (headers of SPEC §1).
//!
//! Encoding is pure; [`kafka`] sends the encoded records, [`output`] keeps
//! snapshots and customer risks within the bound on output in flight
//! ([`in_flight`]), customer risks waiting latest-per-customer ([`pending`]). Snapshots
//! use Avro single-object encoding (`C3 01` + CRC-64-AVRO fingerprint + datum),
//! so a consumer can tell the writer schema without a registry.

pub mod in_flight;
pub mod kafka;
pub mod output;
pub mod pending;

use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;

use crate::metrics::churn_risk::CustomerRisk;
use crate::snapshot::WindowSnapshot;
use crate::state::{Rejection, TopicPartition};

/// `schemas/EngagementSnapshot.avsc`, compiled in.
pub const SNAPSHOT_SCHEMA_JSON: &str = include_str!("../../schemas/EngagementSnapshot.avsc");

static SNAPSHOT_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(SNAPSHOT_SCHEMA_JSON)
        .expect("schemas/EngagementSnapshot.avsc is valid (tested)")
});

static SNAPSHOT_WRITER: LazyLock<SingleObjectWriter> =
    LazyLock::new(|| SingleObjectWriter::new(&SNAPSHOT_SCHEMA));

#[derive(Debug, thiserror::Error)]
#[error("cannot encode snapshot as EngagementSnapshot: {0}")]
pub struct EncodeError(String);

pub fn snapshot_schema() -> &'static Schema {
    &SNAPSHOT_SCHEMA
}

/// Writes records of one schema: the datum serialised straight from the Rust value by
/// the schema (no intermediate `Value` tree, no resolution), after the single-object
/// header computed once. A round of a few thousand snapshot rows built a `Value` per
/// row, resolved it, set up a writer and fingerprinted the schema again for each:
/// in a debug build over a second per round on the consumer loop.
struct SingleObjectWriter {
    writer: GenericDatumWriter<'static>,
    /// `C3 01` + the schema's CRC-64-AVRO (Rabin) fingerprint.
    header: [u8; 10],
}

impl SingleObjectWriter {
    fn new(schema: &'static Schema) -> SingleObjectWriter {
        let mut header = [0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        header[2..].copy_from_slice(&schema.fingerprint::<Rabin>().bytes);
        SingleObjectWriter {
            writer: GenericDatumWriter::builder(schema)
                .build()
                .expect("a compiled-in schema resolves (tested)"),
            header,
        }
    }

    fn datum<T: Serialize>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.writer
            .write_ser(out, value)
            .map(drop)
            .map_err(|e| EncodeError(e.to_string()))
    }

    fn record<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.header);
        self.datum(value, &mut out)?;
        Ok(out)
    }
}

/// The plain Avro datum of a snapshot.
pub fn snapshot_datum(s: &WindowSnapshot) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    SNAPSHOT_WRITER.datum(s, &mut out)?;
    Ok(out)
}

/// Single-object encoding of a snapshot.
pub fn snapshot_record(s: &WindowSnapshot) -> Result<Vec<u8>, EncodeError> {
    SNAPSHOT_WRITER.record(s)
}

/// Decodes a single-object encoded snapshot (for tests and downstream tools).
pub fn decode_snapshot_record(bytes: &[u8]) -> Result<WindowSnapshot, EncodeError> {
    if bytes.len() < 10 || bytes[..2] != [0xC3, 0x01] {
        return Err(EncodeError("not single-object encoded".into()));
    }
    let mut rest = &bytes[10..];
    let value = apache_avro::reader::datum::GenericDatumReader::builder(&SNAPSHOT_SCHEMA)
        .build()
        .and_then(|r| r.read_value(&mut rest))
        .map_err(|e| EncodeError(e.to_string()))?;
    apache_avro::from_value(&value).map_err(|e| EncodeError(e.to_string()))
}

/// `schemas/CustomerRisk.avsc`, compiled in.
pub const CUSTOMER_RISK_SCHEMA_JSON: &str = include_str!("../../schemas/CustomerRisk.avsc");

static CUSTOMER_RISK_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(CUSTOMER_RISK_SCHEMA_JSON)
        .expect("schemas/CustomerRisk.avsc is valid (tested)")
});

static CUSTOMER_RISK_WRITER: LazyLock<SingleObjectWriter> =
    LazyLock::new(|| SingleObjectWriter::new(&CUSTOMER_RISK_SCHEMA));

/// Single-object encoding of a customer-risk record.
pub fn customer_risk_record(r: &CustomerRisk) -> Result<Vec<u8>, EncodeError> {
    CUSTOMER_RISK_WRITER.record(r)
}

/// Decodes a single-object encoded customer-risk record.
pub fn decode_customer_risk_record(bytes: &[u8]) -> Result<CustomerRisk, EncodeError> {
    if bytes.len() < 10 || bytes[..2] != [0xC3, 0x01] {
        return Err(EncodeError("not single-object encoded".into()));
    }
    let mut rest = &bytes[10..];
    let value = apache_avro::reader::datum::GenericDatumReader::builder(&CUSTOMER_RISK_SCHEMA)
        .build()
        .and_then(|r| r.read_value(&mut rest))
        .map_err(|e| EncodeError(e.to_string()))?;
    apache_avro::from_value(&value).map_err(|e| EncodeError(e.to_string()))
}

/// Message key of a snapshot: `window/dimension[/value]`, so a compacted topic keeps the latest.
pub fn snapshot_key(s: &WindowSnapshot) -> String {
    match &s.dimension_value {
        Some(v) => format!("{}/{}/{}", s.window, s.dimension, v),
        None => format!("{}/{}", s.window, s.dimension),
    }
}

/// The headers a dead-letter record carries besides the original ones (SPEC §1).
pub fn dead_letter_headers(
    tp: &TopicPartition,
    offset: i64,
    rejection: &Rejection,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "engaged.error",
            format!("{}: {}", rejection.reason.as_str(), rejection.message),
        ),
        (
            "engaged.error.reason",
            rejection.reason.as_str().to_string(),
        ),
        ("engaged.source.topic", tp.topic.to_string()),
        ("engaged.source.partition", tp.partition.to_string()),
        ("engaged.source.offset", offset.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SourcePartition;

    fn sample(rate: Option<f64>) -> WindowSnapshot {
        WindowSnapshot {
            window: "5m".into(),
            window_start: 1_000,
            window_end: 301_000,
            watermark: 302_000,
            dimension: "site".into(),
            dimension_value: Some("shop".into()),
            partitions: vec![SourcePartition {
                topic: "pageviews".into(),
                partition: 3,
            }],
            page_views: 10,
            sessions: 4,
            sessions_active: 2,
            bounced_sessions: 1,
            bounce_rate: rate,
            session_duration_sum_seconds: 12.5,
            avg_session_duration_seconds: None,
            session_duration_p50_seconds: Some(1.0),
            session_duration_p90_seconds: Some(9.0),
            emails_sent: Some(3),
            open_rate: Some(0.5),
            nps: Some(-12.5),
            ..Default::default()
        }
    }

    #[test]
    fn snapshots_round_trip_through_the_avro_schema() {
        for rate in [None, Some(0.25)] {
            let s = sample(rate);
            let bytes = snapshot_record(&s).unwrap();
            assert_eq!(&bytes[..2], &[0xC3, 0x01]);
            assert_eq!(decode_snapshot_record(&bytes).unwrap(), s);
        }
        assert_eq!(snapshot_key(&sample(None)), "5m/site/shop");
    }

    #[test]
    fn customer_risks_round_trip_through_the_avro_schema() {
        let r = CustomerRisk {
            customer_id: "c-1".into(),
            churn_risk: 0.75,
            p_alive: 0.25,
            expected_orders_30d: 0.1,
            predicted_value_minor: 123.5,
            x: 3,
            t_x_days: 20.5,
            t_days: 200.0,
            watermark: 1_700_000_000_000,
            model: "mbg_nbd".into(),
            at_risk: true,
        };
        assert_eq!(
            decode_customer_risk_record(&customer_risk_record(&r).unwrap()).unwrap(),
            r
        );
    }

    /// The record as apache-avro writes it from a resolved `Value` (the former path):
    /// the reference the direct serialisation must equal byte for byte.
    fn through_values<T: Serialize>(schema: &Schema, value: &T) -> Vec<u8> {
        let value = apache_avro::to_value(value)
            .unwrap()
            .resolve(schema)
            .unwrap();
        let datum = GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        let mut out = vec![0xC3, 0x01];
        out.extend_from_slice(&schema.fingerprint::<Rabin>().bytes);
        out.extend(datum);
        out
    }

    #[test]
    fn records_are_byte_for_byte_what_apache_avro_writes_from_values() {
        let mut all = vec![WindowSnapshot::default()];
        for rate in [None, Some(0.25), Some(f64::NAN)] {
            let mut s = sample(rate);
            all.push(s.clone());
            // Every optional field present, negative and large values, several partitions.
            s.dimension_value = None;
            s.partitions.push(SourcePartition {
                topic: "emails".into(),
                partition: i32::MAX,
            });
            s.page_views = i64::MAX;
            s.window_start = -1;
            s.exits = Some(-64);
            s.exit_rate = Some(1e300);
            s.churned_customers = Some(i64::MIN);
            s.predicted_value_30d_minor = Some(-0.0);
            all.push(s);
        }
        for s in &all {
            let got = snapshot_record(s).unwrap();
            let want = through_values(&SNAPSHOT_SCHEMA, s);
            assert_eq!(got, want, "{s:?}");
            assert_eq!(snapshot_datum(s).unwrap(), want[10..]);
        }
        let risk = CustomerRisk {
            customer_id: "c-ü".into(),
            churn_risk: 1.0,
            p_alive: 0.0,
            expected_orders_30d: f64::MIN_POSITIVE,
            predicted_value_minor: -3.5,
            x: 0,
            t_x_days: 0.0,
            t_days: 1e6,
            watermark: -5,
            model: "pareto_nbd".into(),
            at_risk: false,
        };
        assert_eq!(
            customer_risk_record(&risk).unwrap(),
            through_values(&CUSTOMER_RISK_SCHEMA, &risk)
        );
    }

    #[test]
    fn garbage_is_not_a_snapshot() {
        assert!(decode_snapshot_record(&[1, 2, 3]).is_err());
        assert!(decode_snapshot_record(&[0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF]).is_err());
    }
}
