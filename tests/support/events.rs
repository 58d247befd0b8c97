//! Generated streams: co-partitioning, clock events and records to produce.

use engaged::decode::encode;
use engaged::demo::generator::partition_key;
use engaged::event::{
    EmailEvent, EmailEventType, Event, Millis, PageView, Purchase, PurchaseType, SurveyKind,
    SurveyResponse,
};

/// Every email event type, purchase type and survey kind, in schema order.
pub const EMAIL_TYPES: [EmailEventType; 7] = [
    EmailEventType::Sent,
    EmailEventType::Delivered,
    EmailEventType::Bounced,
    EmailEventType::Opened,
    EmailEventType::Clicked,
    EmailEventType::Unsubscribed,
    EmailEventType::Complained,
];
pub const PURCHASE_TYPES: [PurchaseType; 4] = [
    PurchaseType::Order,
    PurchaseType::Refund,
    PurchaseType::Renewal,
    PurchaseType::Cancellation,
];
pub const SURVEY_KINDS: [SurveyKind; 3] = [SurveyKind::Nps, SurveyKind::Csat, SurveyKind::Ces];

/// Wall-clock time, in milliseconds since the epoch.
pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Co-partitioning (SPEC §1): one hash (FNV-1a) of the customer (or visitor) key on every
/// topic, modulo `partitions`.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    (key.bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
        % partitions as u32) as i32
}

/// Every event with its partition ([`partition_of`] its key).
pub fn routed(events: Vec<Event>, partitions: i32) -> Vec<(i32, Event)> {
    events
        .into_iter()
        .map(|e| (partition_of(partition_key(&e), partitions), e))
        .collect()
}

/// One "clock" event at `t` in every partition of every input topic: afterwards every
/// partition (hence every instance) is at the watermark `t - allowed_lateness`. Customer
/// `clock-P` lives in partition P of every topic only, so co-partitioning holds for it
/// too; the purchase is a zero refund and the survey answer anonymous, so the clocks add
/// no ORDER history to the churn model. `tag` keeps event ids unique per phase.
pub fn clock_events(tag: &str, t: Millis, partitions: i32) -> Vec<(i32, Event)> {
    let mut out = vec![];
    for p in 0..partitions {
        let id = |family: &str| format!("clock-{tag}-{family}-{p}");
        let customer = format!("clock-{p}");
        out.push((
            p,
            Event::PageView(PageView {
                event_id: id("pv"),
                event_time: t,
                visitor_id: customer.clone(),
                customer_id: None,
                site: "shop.example".into(),
                page: "/".into(),
                referrer: None,
                channel: None,
            }),
        ));
        out.push((
            p,
            Event::Email(EmailEvent {
                event_id: id("email"),
                event_time: t,
                customer_id: customer.clone(),
                campaign_id: "clock".into(),
                message_id: id("msg"),
                kind: EmailEventType::Sent,
                url: None,
            }),
        ));
        out.push((
            p,
            Event::Purchase(Purchase {
                event_id: id("purchase"),
                event_time: t,
                customer_id: customer.clone(),
                order_id: id("order"),
                kind: PurchaseType::Refund,
                amount_minor: 0,
                currency: "EUR".into(),
                cost_minor: None,
                items: 0,
                campaign_id: None,
            }),
        ));
        out.push((
            p,
            Event::Survey(SurveyResponse {
                event_id: id("survey"),
                event_time: t,
                customer_id: None,
                survey_id: "clock".into(),
                kind: SurveyKind::Nps,
                score: 9,
                comment: None,
            }),
        ));
    }
    out
}

/// One record to produce: where, and what bytes.
#[derive(Debug, Clone)]
pub struct Rec {
    pub topic: String,
    pub partition: i32,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Rec {
    /// `e` as a single-object Avro record to `topic`/`partition`, keyed by its
    /// partition key, without headers.
    pub fn event(topic: impl Into<String>, partition: i32, e: &Event) -> Rec {
        Rec {
            topic: topic.into(),
            partition,
            key: partition_key(e).to_string(),
            payload: encode::single_object(e),
            headers: vec![],
        }
    }
}

/// A writer fingerprint that none of engaged's schemas has.
pub const UNKNOWN_FINGERPRINT: u64 = 0x0BAD_F00D_0BAD_F00D;

/// A single-object encoded payload (`C3 01`, 8-byte fingerprint, datum) whose writer
/// fingerprint is [`UNKNOWN_FINGERPRINT`]: what a producer with an unregistered schema
/// ships, rejected as `undecodable`. `n` makes the datum bytes differ.
pub fn unknown_fingerprint(n: u64) -> Vec<u8> {
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&UNKNOWN_FINGERPRINT.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out
}
