//! Typed input events of SPEC §1, mirroring `schemas/*.avsc` field for field.
//!
//! The schemas are the source of truth: field names, order and optionality here
//! follow them, and `tests/schemas.rs` proves every schema round-trips through
//! these types. Validation rules (score ranges, amounts, keys) live here too, as
//! pure functions, so that every edge (Kafka, replay) rejects the same records.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC (Avro `timestamp-millis`).
pub type Millis = i64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageView {
    pub event_id: String,
    pub event_time: Millis,
    pub visitor_id: String,
    pub customer_id: Option<String>,
    pub site: String,
    pub page: String,
    pub referrer: Option<String>,
    pub channel: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EmailEventType {
    Sent,
    Delivered,
    Bounced,
    Opened,
    Clicked,
    Unsubscribed,
    Complained,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailEvent {
    pub event_id: String,
    pub event_time: Millis,
    pub customer_id: String,
    pub campaign_id: String,
    pub message_id: String,
    #[serde(rename = "type")]
    pub kind: EmailEventType,
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PurchaseType {
    Order,
    Refund,
    Renewal,
    Cancellation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub event_id: String,
    pub event_time: Millis,
    pub customer_id: String,
    pub order_id: String,
    #[serde(rename = "type")]
    pub kind: PurchaseType,
    pub amount_minor: i64,
    pub currency: String,
    pub cost_minor: Option<i64>,
    pub items: i32,
    pub campaign_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SurveyKind {
    Nps,
    Csat,
    Ces,
}

impl SurveyKind {
    /// The inclusive score range of SPEC §3 Survey.
    pub fn score_range(self) -> std::ops::RangeInclusive<i32> {
        match self {
            SurveyKind::Nps => 0..=10,
            SurveyKind::Csat => 1..=5,
            SurveyKind::Ces => 1..=7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurveyResponse {
    pub event_id: String,
    pub event_time: Millis,
    pub customer_id: Option<String>,
    pub survey_id: String,
    pub kind: SurveyKind,
    pub score: i32,
    pub comment: Option<String>,
}

/// One decoded input event of any of the four families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PageView(PageView),
    Email(EmailEvent),
    Purchase(Purchase),
    Survey(SurveyResponse),
}

/// The four record kinds, named as in the schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    PageView,
    EmailEvent,
    Purchase,
    SurveyResponse,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::PageView,
        EventKind::EmailEvent,
        EventKind::Purchase,
        EventKind::SurveyResponse,
    ];

    /// Avro full name of the record, e.g. `engaged.v1.PageView`.
    pub fn full_name(self) -> &'static str {
        match self {
            EventKind::PageView => "engaged.v1.PageView",
            EventKind::EmailEvent => "engaged.v1.EmailEvent",
            EventKind::Purchase => "engaged.v1.Purchase",
            EventKind::SurveyResponse => "engaged.v1.SurveyResponse",
        }
    }

    /// The reader schema (`schemas/<Name>.avsc`), compiled into the binary.
    pub fn schema_json(self) -> &'static str {
        match self {
            EventKind::PageView => include_str!("../schemas/PageView.avsc"),
            EventKind::EmailEvent => include_str!("../schemas/EmailEvent.avsc"),
            EventKind::Purchase => include_str!("../schemas/Purchase.avsc"),
            EventKind::SurveyResponse => include_str!("../schemas/SurveyResponse.avsc"),
        }
    }

    /// Finds the kind whose record has this name (full `engaged.v1.X` or bare `X`).
    pub fn from_name(name: &str) -> Option<EventKind> {
        let bare = name.rsplit('.').next().unwrap_or(name);
        EventKind::ALL
            .into_iter()
            .find(|k| k.full_name().rsplit('.').next() == Some(bare))
    }
}

/// Why a decoded event is not acceptable (dead-letter reason `invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("field `{0}` is empty")]
    EmptyField(&'static str),
    #[error("amount_minor {0} is negative")]
    NegativeAmount(i64),
    #[error("cost_minor {0} is negative")]
    NegativeCost(i64),
    #[error("{kind:?} score {score} is outside {min}..={max}")]
    ScoreOutOfRange {
        kind: SurveyKind,
        score: i32,
        min: i32,
        max: i32,
    },
    #[error("event_time {event_time} is more than {skew_ms} ms ahead of the wall clock {now}")]
    FromTheFuture {
        event_time: Millis,
        now: Millis,
        skew_ms: i64,
    },
}

fn non_empty(field: &'static str, v: &str) -> Result<(), InvalidEvent> {
    if v.is_empty() {
        Err(InvalidEvent::EmptyField(field))
    } else {
        Ok(())
    }
}

impl Event {
    /// An event of `kind` with empty strings and zeros: a buffer a decoder
    /// fills in ([`crate::decode::Decoder::decode_into`]), never an input.
    pub fn empty(kind: EventKind) -> Event {
        match kind {
            EventKind::PageView => Event::PageView(PageView {
                event_id: String::new(),
                event_time: 0,
                visitor_id: String::new(),
                customer_id: None,
                site: String::new(),
                page: String::new(),
                referrer: None,
                channel: None,
            }),
            EventKind::EmailEvent => Event::Email(EmailEvent {
                event_id: String::new(),
                event_time: 0,
                customer_id: String::new(),
                campaign_id: String::new(),
                message_id: String::new(),
                kind: EmailEventType::Sent,
                url: None,
            }),
            EventKind::Purchase => Event::Purchase(Purchase {
                event_id: String::new(),
                event_time: 0,
                customer_id: String::new(),
                order_id: String::new(),
                kind: PurchaseType::Order,
                amount_minor: 0,
                currency: String::new(),
                cost_minor: None,
                items: 0,
                campaign_id: None,
            }),
            EventKind::SurveyResponse => Event::Survey(SurveyResponse {
                event_id: String::new(),
                event_time: 0,
                customer_id: None,
                survey_id: String::new(),
                kind: SurveyKind::Nps,
                score: 0,
                comment: None,
            }),
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Event::PageView(_) => EventKind::PageView,
            Event::Email(_) => EventKind::EmailEvent,
            Event::Purchase(_) => EventKind::Purchase,
            Event::Survey(_) => EventKind::SurveyResponse,
        }
    }

    pub fn event_id(&self) -> &str {
        match self {
            Event::PageView(e) => &e.event_id,
            Event::Email(e) => &e.event_id,
            Event::Purchase(e) => &e.event_id,
            Event::Survey(e) => &e.event_id,
        }
    }

    pub fn event_time(&self) -> Millis {
        match self {
            Event::PageView(e) => e.event_time,
            Event::Email(e) => e.event_time,
            Event::Purchase(e) => e.event_time,
            Event::Survey(e) => e.event_time,
        }
    }

    /// Asks the CPU to fetch the bytes of the strings applying this event reads
    /// first (ids and keys), ahead of use: a replay's events were decoded on
    /// another core, so their strings are in that core's cache.
    #[inline]
    pub fn prefetch(&self) {
        let (a, b, c) = match self {
            Event::PageView(e) => (
                &e.event_id,
                e.customer_id.as_ref().unwrap_or(&e.visitor_id),
                &e.page,
            ),
            Event::Email(e) => (&e.event_id, &e.customer_id, &e.message_id),
            Event::Purchase(e) => (&e.event_id, &e.customer_id, &e.order_id),
            Event::Survey(e) => (
                &e.event_id,
                e.customer_id.as_ref().unwrap_or(&e.survey_id),
                &e.survey_id,
            ),
        };
        for s in [a, b, c] {
            prefetch_bytes(s.as_bytes());
        }
    }

    /// SPEC §1 validation: keys present, amounts non-negative, scores in range.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        non_empty("event_id", self.event_id())?;
        match self {
            Event::PageView(e) => {
                non_empty("visitor_id", &e.visitor_id)?;
                non_empty("site", &e.site)
            }
            Event::Email(e) => {
                non_empty("customer_id", &e.customer_id)?;
                non_empty("campaign_id", &e.campaign_id)?;
                non_empty("message_id", &e.message_id)
            }
            Event::Purchase(e) => {
                non_empty("customer_id", &e.customer_id)?;
                non_empty("order_id", &e.order_id)?;
                if e.amount_minor < 0 {
                    return Err(InvalidEvent::NegativeAmount(e.amount_minor));
                }
                match e.cost_minor {
                    Some(c) if c < 0 => Err(InvalidEvent::NegativeCost(c)),
                    _ => Ok(()),
                }
            }
            Event::Survey(e) => {
                non_empty("survey_id", &e.survey_id)?;
                let range = e.kind.score_range();
                if range.contains(&e.score) {
                    Ok(())
                } else {
                    Err(InvalidEvent::ScoreOutOfRange {
                        kind: e.kind,
                        score: e.score,
                        min: *range.start(),
                        max: *range.end(),
                    })
                }
            }
        }
    }

    /// SPEC §2 `max_clock_skew`: an event stamped too far ahead of `now` is invalid.
    pub fn check_clock_skew(&self, now: Millis, skew_ms: i64) -> Result<(), InvalidEvent> {
        let event_time = self.event_time();
        if event_time > now.saturating_add(skew_ms) {
            Err(InvalidEvent::FromTheFuture {
                event_time,
                now,
                skew_ms,
            })
        } else {
            Ok(())
        }
    }
}

/// Prefetches the cache line of `bytes`' first byte (a no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch_bytes(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of x86-64; a prefetch is a hint that reads no memory
        // architecturally and cannot fault, whatever the address.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().cast())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_any_event_is_harmless() {
        // Empty strings point at no allocation (a dangling, aligned pointer):
        // a prefetch of such an address must not fault either.
        for kind in EventKind::ALL {
            let e = Event::empty(kind);
            e.prefetch();
            assert_eq!(e, Event::empty(kind));
        }
        prefetch_bytes(&[]);
    }

    fn survey(kind: SurveyKind, score: i32) -> Event {
        Event::Survey(SurveyResponse {
            event_id: "e".into(),
            event_time: 0,
            customer_id: None,
            survey_id: "s".into(),
            kind,
            score,
            comment: None,
        })
    }

    #[test]
    fn survey_scores_are_checked_against_their_kind() {
        assert!(survey(SurveyKind::Nps, 0).validate().is_ok());
        assert!(survey(SurveyKind::Nps, 10).validate().is_ok());
        assert!(survey(SurveyKind::Nps, 11).validate().is_err());
        assert!(survey(SurveyKind::Csat, 0).validate().is_err());
        assert!(survey(SurveyKind::Csat, 5).validate().is_ok());
        assert!(survey(SurveyKind::Ces, 7).validate().is_ok());
        assert!(survey(SurveyKind::Ces, 8).validate().is_err());
    }

    #[test]
    fn clock_skew_rejects_only_beyond_the_bound() {
        let e = survey(SurveyKind::Nps, 5);
        assert!(e.check_clock_skew(-1000, 1000).is_ok());
        assert!(e.check_clock_skew(-1001, 1000).is_err());
    }

    #[test]
    fn kinds_are_found_by_bare_and_full_name() {
        assert_eq!(EventKind::from_name("Purchase"), Some(EventKind::Purchase));
        assert_eq!(
            EventKind::from_name("engaged.v1.PageView"),
            Some(EventKind::PageView)
        );
        assert_eq!(EventKind::from_name("Nope"), None);
    }
}
