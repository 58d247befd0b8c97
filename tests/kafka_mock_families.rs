//! Email, commerce, survey and customer metrics through Kafka (librdkafka's in-process
//! mock cluster): one hand-designed scenario over the four input topics, checked on
//! `/metrics` and in the snapshot topic against numbers worked out by hand below, at
//! two watermarks: T (every designed record) and T+60 (a second round of clock events
//! produced while the sidecar runs, or after restarting it from its checkpoint).
//!
//! The helpers (mock cluster, sidecar guard, `/metrics` parser) are in `tests/support/`,
//! shared with `tests/kafka_mock.rs`.
//!
//! `RUST_LOG=engaged=debug cargo test --test kafka_mock_families -- --nocapture` shows
//! the sidecar's logs.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use engaged::config::RawConfig;
use engaged::decode::{DecoderConfig, encode};
use engaged::event::{
    EmailEvent, EmailEventType, Event, Millis, PageView, Purchase, PurchaseType, SurveyKind,
    SurveyResponse,
};
use engaged::snapshot::WindowSnapshot;
use rdkafka::message::{Message, OwnedMessage};

use support::{Cluster, Metrics, Running, close, init_tracing, now_ms, read_topic, settle};

const MIN: Millis = 60_000;
const HOUR: Millis = 60 * MIN;
/// Default `allowed_lateness` (SPEC §2).
const LATENESS: Millis = 5 * MIN;

// ---------------------------------------------------------------------------
// The scenario

const PV: &str = "pageviews";
const EMAILS: &str = "emails";
const PURCHASES: &str = "purchases";
const SURVEYS: &str = "surveys";
const INPUTS: [&str; 4] = [PV, EMAILS, PURCHASES, SURVEYS];
const SNAPSHOTS: &str = "engagement.snapshots";
const DLQ: &str = "engagement.dlq";
const PARTITIONS: i32 = 2;

/// One record to produce, in order, and whether (and why) engaged must reject it.
struct Rec {
    topic: &'static str,
    partition: i32,
    key: String,
    event: Event,
    reject: Option<&'static str>,
}

fn page_view(id: &str, t: Millis, visitor: &str, customer: Option<&str>) -> Event {
    Event::PageView(PageView {
        event_id: id.into(),
        event_time: t,
        visitor_id: visitor.into(),
        customer_id: customer.map(String::from),
        site: "shop".into(),
        page: "/".into(),
        referrer: None,
        channel: None,
    })
}

/// An email event of `customer`'s message in `campaign` (one message per campaign and customer).
fn email(id: &str, t: Millis, customer: &str, campaign: &str, kind: EmailEventType) -> Event {
    Event::Email(EmailEvent {
        event_id: id.into(),
        event_time: t,
        customer_id: customer.into(),
        campaign_id: campaign.into(),
        message_id: format!("{campaign}-{customer}"),
        kind,
        url: None,
    })
}

#[allow(clippy::too_many_arguments)]
fn purchase(
    id: &str,
    t: Millis,
    customer: &str,
    kind: PurchaseType,
    amount: i64,
    currency: &str,
    cost: Option<i64>,
) -> Event {
    Event::Purchase(Purchase {
        event_id: id.into(),
        event_time: t,
        customer_id: customer.into(),
        order_id: format!("order-{id}"),
        kind,
        amount_minor: amount,
        currency: currency.into(),
        cost_minor: cost,
        items: 1,
        campaign_id: None,
    })
}

fn survey(id: &str, t: Millis, customer: Option<&str>, kind: SurveyKind, score: i32) -> Event {
    Event::Survey(SurveyResponse {
        event_id: id.into(),
        event_time: t,
        customer_id: customer.map(String::from),
        survey_id: "q1".into(),
        kind,
        score,
        comment: None,
    })
}

/// The hand-designed input. Times are minutes relative to `T`, the final watermark: a
/// whole hour 70–130 min before the wall clock (so that the second phase, at T+65, is
/// in the past too). Configuration: windows `1h` (buckets of
/// 1 min) and `24h/1h`, so at watermark `T` the windows are exactly `1h` = [T−60, T)
/// and `24h` = [T−1440, T); `churn_horizon` 2 h, `attribution_window` 1 h, currency
/// EUR, everything else default (`allowed_lateness` 5 min, `email_dedup_ttl` 30 d,
/// `max_clock_skew` 1 h).
///
/// Customers are co-partitioned: alice, bob, carol, hank (and zed) on partition 0 of
/// every topic; dave, erin, frank, gina, ivy on partition 1. Records are produced in the
/// order below, per topic-partition in event-time order except where noted.
///
/// ```text
/// emails/0    −300 SENT spring→alice, →bob  −299 DELIVERED alice, BOUNCED bob
///             −230 OPENED spring-alice  −220 OPENED again (same message)  −210 CLICKED
///             −55 SENT summer→alice, →carol  −54 DELIVERED alice, carol
///             −40 OPENED summer-alice  −35 CLICKED summer-alice
///             −20 COMPLAINED summer-carol
/// emails/1    −300 SENT spring→dave, →erin  −299 DELIVERED dave, erin
///             −240 COMPLAINED spring-erin
///             −58 OPENED spring-dave, then −62 OPENED spring-dave (earlier, arrives
///                 later; partition watermark −63: accepted; the unique open is at −62,
///                 outside 1h)
///             −55 SENT summer→dave, →frank  −54 DELIVERED dave, BOUNCED frank
///             −50 UNSUBSCRIBED spring-dave  −48 CLICKED spring-dave
///             −44 CLICKED spring-erin (one minute after her order)
///             −30 OPENED summer-dave  −29 CLICKED summer-dave
/// purchases/0 −1490 hank ORDER 5000 (cost 4500)
///             −180 alice ORDER 4000 (cost 2500): 30 min after her click at −210 → spring
///             −140 alice ORDER 2000 (no cost): 70 min after it (> 1 h) → not attributed
///             −135 bob REFUND 1500
///             −90  bob ORDER 1000 USD → rejected `invalid`
///             −30 carol RENEWAL 999  −25 carol CANCELLATION 999
///             −10 alice ORDER 3000 (cost 1000): 25 min after her click at −35 → summer
///             −10 the same record again (producer retry) → rejected `duplicate`
/// purchases/1 −1800 gina ORDER 2500 (cost 2000)
///             −58 ivy ORDER 1200 (cost 200), then −62 ivy ORDER 800 (no cost; earlier,
///                 arrives later: ivy's first order is at −62, outside 1h)
///             −45 erin ORDER 6000 (cost 5000): her only click is at −44, after it → none
///             −40 gina ORDER 1500 (no cost)
///             −15 dave ORDER 2500 (cost 1500): last click −29 summer (not −48 spring)
/// surveys/0   −195 alice NPS 10  −190 bob CSAT 2  −170 alice CES 3  −25 carol NPS 9
///             −24 carol CSAT 4
/// surveys/1   −90 erin NPS 6  −45 dave NPS 7  −35 dave CSAT 5  −30 gina CES 6
///             −20 frank NPS 11 → rejected `invalid`
///             −10 anonymous NPS 10 (no customer_id)
///             −120 erin CSAT 1 (partition watermark −15) → rejected `late`
/// pageviews/0 −160 carol (logged in: customer_id carol)
///             now + 2 h: zed → rejected `invalid` (clock skew)
/// pageviews/1 −100 an anonymous visitor (no customer_id: no customer activity)
/// ```
///
/// Then, last in every partition of every topic, a clock event at T+5 (anonymous page
/// view, SENT of campaign `clock`, RENEWAL of customer `clock-P`, anonymous CSAT 5), so
/// that every partition watermark, every task's closing watermark and the instance
/// watermark are T+5 − 5 = T. None of the clock events is inside a window.
///
/// Records: pageviews 3+2, emails 15+17, purchases 10+7, surveys 6+8 = 68; rejected:
/// invalid 3, duplicate 1, late 1.
struct Scenario {
    /// The watermark after the first phase, a whole hour.
    t: Millis,
    records: Vec<Rec>,
    /// The second phase: clock events at T+65 (watermark T+60).
    phase2: Vec<Rec>,
}

/// A clock event at `t` in every partition of every input topic: an anonymous page
/// view, a SENT of campaign `clock` to customer `clock-P`, a RENEWAL of 100 by customer
/// `clock-P` and an anonymous CSAT 5.
fn clock_records(t: Millis, tag: &str) -> Vec<Rec> {
    let mut out = vec![];
    for p in 0..PARTITIONS {
        let who = format!("clock-{p}");
        let id = |topic: &str| format!("{tag}-{topic}-{p}");
        let rec = |topic, event| Rec {
            topic,
            partition: p,
            key: who.clone(),
            event,
            reject: None,
        };
        out.push(rec(PV, page_view(&id(PV), t, &who, None)));
        out.push(rec(
            EMAILS,
            email(&id(EMAILS), t, &who, "clock", EmailEventType::Sent),
        ));
        out.push(rec(
            PURCHASES,
            purchase(
                &id(PURCHASES),
                t,
                &who,
                PurchaseType::Renewal,
                100,
                "EUR",
                None,
            ),
        ));
        out.push(rec(
            SURVEYS,
            survey(&id(SURVEYS), t, None, SurveyKind::Csat, 5),
        ));
    }
    out
}

impl Scenario {
    fn design() -> Scenario {
        let t = (now_ms() - 70 * MIN).div_euclid(HOUR) * HOUR;
        let at = |m: i64| t + m * MIN;
        let mut records = vec![];
        let mut push = |topic, partition, key: &str, event, reject| {
            records.push(Rec {
                topic,
                partition,
                key: key.to_string(),
                event,
                reject,
            })
        };
        use EmailEventType::*;
        use PurchaseType::*;
        use SurveyKind::*;
        // emails/0
        for (id, m, who, campaign, kind) in [
            ("e0-1", -300, "alice", "spring", Sent),
            ("e0-2", -300, "bob", "spring", Sent),
            ("e0-3", -299, "alice", "spring", Delivered),
            ("e0-4", -299, "bob", "spring", Bounced),
            ("e0-5", -230, "alice", "spring", Opened),
            ("e0-6", -220, "alice", "spring", Opened),
            ("e0-7", -210, "alice", "spring", Clicked),
            ("e0-8", -55, "alice", "summer", Sent),
            ("e0-9", -55, "carol", "summer", Sent),
            ("e0-10", -54, "alice", "summer", Delivered),
            ("e0-11", -54, "carol", "summer", Delivered),
            ("e0-12", -40, "alice", "summer", Opened),
            ("e0-13", -35, "alice", "summer", Clicked),
            ("e0-14", -20, "carol", "summer", Complained),
        ] {
            push(EMAILS, 0, who, email(id, at(m), who, campaign, kind), None);
        }
        // emails/1
        for (id, m, who, campaign, kind) in [
            ("e1-1", -300, "dave", "spring", Sent),
            ("e1-2", -300, "erin", "spring", Sent),
            ("e1-3", -299, "dave", "spring", Delivered),
            ("e1-4", -299, "erin", "spring", Delivered),
            ("e1-5", -240, "erin", "spring", Complained),
            ("e1-6", -58, "dave", "spring", Opened),
            ("e1-7", -62, "dave", "spring", Opened),
            ("e1-8", -55, "dave", "summer", Sent),
            ("e1-9", -55, "frank", "summer", Sent),
            ("e1-10", -54, "dave", "summer", Delivered),
            ("e1-11", -54, "frank", "summer", Bounced),
            ("e1-12", -50, "dave", "spring", Unsubscribed),
            ("e1-13", -48, "dave", "spring", Clicked),
            // One minute *after* her order at −45: does not attribute it.
            ("e1-16", -44, "erin", "spring", Clicked),
            ("e1-14", -30, "dave", "summer", Opened),
            ("e1-15", -29, "dave", "summer", Clicked),
        ] {
            push(EMAILS, 1, who, email(id, at(m), who, campaign, kind), None);
        }
        // purchases/0
        for (id, m, who, kind, amount, currency, cost, reject) in [
            ("p0-1", -1490, "hank", Order, 5000, "EUR", Some(4500), None),
            ("p0-2", -180, "alice", Order, 4000, "EUR", Some(2500), None),
            ("p0-3", -140, "alice", Order, 2000, "EUR", None, None),
            ("p0-4", -135, "bob", Refund, 1500, "EUR", None, None),
            (
                "p0-5",
                -90,
                "bob",
                Order,
                1000,
                "USD",
                None,
                Some("invalid"),
            ),
            ("p0-6", -30, "carol", Renewal, 999, "EUR", None, None),
            ("p0-7", -25, "carol", Cancellation, 999, "EUR", None, None),
            ("p0-8", -10, "alice", Order, 3000, "EUR", Some(1000), None),
            // The producer retries: same event_id.
            (
                "p0-8",
                -10,
                "alice",
                Order,
                3000,
                "EUR",
                Some(1000),
                Some("duplicate"),
            ),
        ] {
            let e = purchase(id, at(m), who, kind, amount, currency, cost);
            push(PURCHASES, 0, who, e, reject);
        }
        // purchases/1
        for (id, m, who, amount, cost) in [
            ("p1-1", -1800, "gina", 2500, Some(2000)),
            ("p1-5", -58, "ivy", 1200, Some(200)),
            // Earlier than the order before it, within the lateness: ivy's first order.
            ("p1-6", -62, "ivy", 800, None),
            ("p1-2", -45, "erin", 6000, Some(5000)),
            ("p1-3", -40, "gina", 1500, None),
            ("p1-4", -15, "dave", 2500, Some(1500)),
        ] {
            let e = purchase(id, at(m), who, Order, amount, "EUR", cost);
            push(PURCHASES, 1, who, e, None);
        }
        // surveys/0 and surveys/1
        for (p, id, m, who, kind, score, reject) in [
            (0, "s0-1", -195, "alice", Nps, 10, None),
            (0, "s0-3", -190, "bob", Csat, 2, None),
            (0, "s0-2", -170, "alice", Ces, 3, None),
            (0, "s0-4", -25, "carol", Nps, 9, None),
            (0, "s0-5", -24, "carol", Csat, 4, None),
            (1, "s1-1", -90, "erin", Nps, 6, None),
            (1, "s1-2", -45, "dave", Nps, 7, None),
            (1, "s1-3", -35, "dave", Csat, 5, None),
            (1, "s1-4", -30, "gina", Ces, 6, None),
            (1, "s1-5", -20, "frank", Nps, 11, Some("invalid")),
            // Anonymous: counts in NPS, is no customer's activity.
            (1, "s1-7", -10, "", Nps, 10, None),
            (1, "s1-6", -120, "erin", Csat, 1, Some("late")),
        ] {
            let customer = (!who.is_empty()).then_some(who);
            let e = survey(id, at(m), customer, kind, score);
            push(SURVEYS, p, who, e, reject);
        }
        // pageviews
        push(
            PV,
            0,
            "carol",
            page_view("v0-1", at(-160), "carol-browser", Some("carol")),
            None,
        );
        // Stamped 2 h ahead of the wall clock (max_clock_skew 1 h).
        push(
            PV,
            0,
            "zed",
            page_view("v0-2", now_ms() + 2 * HOUR, "zed-browser", Some("zed")),
            Some("invalid"),
        );
        push(
            PV,
            1,
            "anon",
            page_view("v1-1", at(-100), "anon", None),
            None,
        );
        // The clock, last in every partition of every input topic.
        records.extend(clock_records(at(5), "clock"));
        let s = Scenario {
            t,
            records,
            phase2: clock_records(at(65), "clock2"),
        };
        s.check_design();
        s
    }

    /// The design's timing assumptions, checked with the SPEC §2 rules (not engaged's code):
    /// per topic-partition, a record is late iff older than the largest accepted event
    /// time so far minus the allowed lateness; nothing is from the future.
    fn check_design(&self) {
        let now = now_ms();
        let mut max: BTreeMap<(&str, i32), Millis> = BTreeMap::new();
        let check_end = |max: &BTreeMap<(&str, i32), Millis>, end: Millis| {
            for topic in INPUTS {
                for p in 0..PARTITIONS {
                    assert_eq!(
                        max.get(&(topic, p)),
                        Some(&end),
                        "{topic}/{p} ends at a clock"
                    );
                }
            }
        };
        for (i, r) in self.records.iter().chain(&self.phase2).enumerate() {
            if i == self.records.len() {
                check_end(&max, self.t + 5 * MIN);
            }
            let t = r.event.event_time();
            assert!(
                t <= now || r.reject == Some("invalid"),
                "no event from the future"
            );
            let late = max
                .get(&(r.topic, r.partition))
                .is_some_and(|m| t < m - LATENESS);
            assert_eq!(
                late,
                r.reject == Some("late"),
                "{:?} on {}/{}: late by design or not at all",
                r.event.event_id(),
                r.topic,
                r.partition
            );
            if r.reject.is_none() {
                let m = max.entry((r.topic, r.partition)).or_insert(t);
                *m = (*m).max(t);
            }
        }
        check_end(&max, self.t + 65 * MIN);
    }

    fn rejected(&self, reason: &str) -> usize {
        self.records
            .iter()
            .filter(|r| r.reject == Some(reason))
            .count()
    }

    fn accepted(&self, topic: &str) -> usize {
        self.records
            .iter()
            .filter(|r| r.topic == topic && r.reject.is_none())
            .count()
    }
}

// ---------------------------------------------------------------------------
// Expected values, worked out by hand from the table above.
//
// Windows at watermark T: 1h = [−60, 0), 24h = [−1440, 0).
//
// Email (SPEC §3: every kind counts a message once, at its first such event; a click
// is an open; the rates are the send cohort's: of the messages first DELIVERED in the
// window, those opened/clicked/unsubscribed/complained within email_dedup_ttl, 30 d,
// of it; of those first SENT, those BOUNCED):
//   sent       spring alice bob dave erin (−300), summer alice carol dave frank (−55):
//              24h 8, 1h 4
//   delivered  spring alice dave erin (−299), summer alice carol dave (−54): 24h 6, 1h 3
//   bounced    spring bob (−299), summer frank (−54): 24h 2, 1h 1
//   opens      spring-alice −230 (the second open at −220 is not unique), spring-dave
//              −62 (not −58: outside 1h), spring-erin −44 (her click: a click without an
//              open is an open), summer-alice −40, summer-dave −30: 24h 5, 1h 3
//   clicks     spring-alice −210, spring-dave −48, spring-erin −44, summer-alice −35,
//              summer-dave −29: 24h 5, 1h 4
//   unsubs     spring-dave −50: 24h 1, 1h 1
//   complaints spring-erin −240, summer-carol −20: 24h 2, 1h 1
//   cohort 24h (delivered: spring alice dave erin, summer alice carol dave = 6):
//              opened alice dave erin + alice dave = 5, clicked 5, unsubscribed 1
//              (spring-dave), complained 2 (spring-erin, summer-carol); sent 8, bounced 2
//   cohort 1h  (delivered at −54: summer alice carol dave = 3): opened alice dave = 2,
//              clicked 2, unsubscribed 0 (dave's unsubscribe is of his spring message,
//              delivered before the window), complained 1 (carol); sent 4, bounced 1
//   attributed alice −180 → spring, alice −10 → summer, dave −15 → summer; alice −140
//              (70 min after her last click), erin −45 (her click is later), ivy, gina:
//              none → 24h 3, 1h 2
//   ratios 24h: open 5/6, CTR 5/6, CTOR 5/5, unsub 1/6, complaint 2/6, bounce 2/8,
//               conversion 3/5 (attributed / unique clicks)
//   ratios 1h:  open 2/3, CTR 2/3, CTOR 2/2, unsub 0/3, complaint 1/3, bounce 1/4,
//               conversion 2/4 (the old per-event ratios were CTR 4/3 and CTOR 2: clicks
//               of messages delivered before the window over deliveries in it)
//   by campaign:
//     spring 24h: sent 4, delivered 3, bounced 1, opens 3, clicks 3, unsubs 1,
//                 complaints 1, attributed 1; cohort opened 3, clicked 3, unsubscribed 1,
//                 complained 1, sent bounced 1 → open 1, CTR 1, CTOR 1, unsub 1/3,
//                 complaint 1/3, bounce 1/4, conversion 1/3
//     spring 1h:  erin's open (her click at −44), dave's and erin's clicks (−48, −44) and
//                 dave's unsubscribe (−50): opens 1, clicks 2, unsubs 1, everything else
//                 0 → every cohort ratio absent (zero denominators), conversion 0/2 = 0
//     summer (all at −55 or later, so 24h = 1h): sent 4, delivered 3, bounced 1,
//                 opens 2, clicks 2, unsubs 0, complaints 1, attributed 2; cohort opened
//                 2, clicked 2, unsubscribed 0, complained 1, sent bounced 1 → open 2/3,
//                 CTR 2/3, CTOR 1, unsub 0, complaint 1/3, bounce 1/4, conversion 1
//
// Commerce (the USD order and the duplicate are rejected; hank −1490 and gina −1800
// are before both windows):
//   24h orders alice −180 4000, alice −140 2000, ivy −62 800, ivy −58 1200, erin −45
//       6000, gina −40 1500, dave −15 2500, alice −10 3000 → 8 orders, order revenue
//       21000; renewal carol 999 → revenue 21999; refund bob 1500 → net 20499
//       purchasing alice ivy erin gina dave = 5; AOV 21000/8 = 2625; 8/5 per customer
//       first orders ever: alice −180, ivy −62, erin −45, dave −15 (new: 4); gina −1800
//       (returning: 1) → returning ratio 1/5
//       margin 1500 (alice −180) + 1000 (ivy −58) + 1000 (erin) + 1000 (dave) + 2000
//       (alice −10) = 6500 (alice −140, ivy −62, gina −40 have no cost) → 1300 per
//       customer; renewals 1, cancellations 1, revenue churn 999
//   1h  orders ivy −58 1200, erin 6000, gina 1500, dave 2500, alice −10 3000 → 5,
//       order revenue 14200; renewal 999 → revenue 15199; no refund → net 15199
//       purchasing 5; AOV 2840; 1 order per customer
//       new erin, dave = 2; returning ivy (first −62), gina (first −1800), alice (first
//       −180) = 3 → 3/5
//       margin 1000 + 1000 + 1000 + 2000 = 5000 → 1000 per customer
//       renewals 1, cancellations 1, revenue churn 999
//
// Survey (frank's NPS 11 invalid, erin's late CSAT 1 rejected; the anonymous NPS counts):
//   24h NPS 10, 6, 7, 9, 10: 5 responses, promoters 3, detractors 1 (6) → 100·2/5 = 40
//       CSAT 2, 4, 5: 3 responses, satisfied 2 → 200/3; CES 3, 6 → 9/2 = 4.5
//   1h  NPS 7, 9, 10: 3 responses, 2 promoters, 0 detractors → 200/3
//       CSAT 4, 5 → 100; CES 6 → 6
//
// Customers (activity: every accepted event with a customer_id except SENT, DELIVERED,
// BOUNCED; churn_horizon 2 h = 120 min; a run churns at its last activity + 120):
//   alice −230 … −10 (gaps ≤ 100 min): one run, churns at +110 → not yet
//   bob   −190, −135 (his SENT/BOUNCED are no activity, his USD order was rejected)
//         → churns at −15 (were the REFUND no activity, at −70: outside 1h)
//   carol −160 (page view) | −30 … −20 (gap 130 ≥ 120): churns at −40, back at −30
//   hank  −1490 → churns at −1370
//   dave  −62 … −15: one run, not churned
//   erin  −240 | −90 … −44 (gap 150): churns at −120, back at −90
//   frank no activity (only SENT/BOUNCED and a rejected survey); zed: rejected
//   gina  −1800 | −40, −30: churned at −1680 (before both windows), back at −40
//   ivy   −62, −58: not churned
//   active 1h:  alice carol dave erin gina ivy = 6;  24h: + bob = 7
//   churned 1h: bob (−15), carol (−40) = 2;  24h: + erin (−120), hank (−1370) = 4
//   active at window start s (an activity in [s − 120, s)), and lost: those of them
//   who churned in the window (SPEC §3: the start cohort's churn):
//     1h  (s = −60, [−180, −60)): alice, bob (−135), carol (−160), dave (−62),
//         erin (−90), ivy (−62) = 6; lost bob, carol = 2 → churn ratio 2/6, retention 4/6
//     24h (s = −1440, [−1560, −1440)): hank (−1490) = 1; lost hank = 1 → churn ratio
//         1/1, retention 0 (bob, carol and erin churned too, but became active inside
//         the window: they count in `churned` only, so the ratio never exceeds 1)
//
// Web: page views 24h 2 (carol −160, anonymous −100), 1h 0.
// ---------------------------------------------------------------------------

/// An expected value on `/metrics`: `None` means the series must be absent.
type Expect = (&'static str, Option<f64>);

fn email_all_24h() -> Vec<Expect> {
    vec![
        ("engaged_email_sent", Some(8.0)),
        ("engaged_email_delivered", Some(6.0)),
        ("engaged_email_bounced", Some(2.0)),
        ("engaged_email_unique_opens", Some(5.0)),
        ("engaged_email_unique_clicks", Some(5.0)),
        ("engaged_email_unsubscribes", Some(1.0)),
        ("engaged_email_complaints", Some(2.0)),
        ("engaged_email_attributed_orders", Some(3.0)),
        ("engaged_email_delivered_opened", Some(5.0)),
        ("engaged_email_delivered_clicked", Some(5.0)),
        ("engaged_email_delivered_unsubscribed", Some(1.0)),
        ("engaged_email_delivered_complained", Some(2.0)),
        ("engaged_email_sent_bounced", Some(2.0)),
        ("engaged_email_open_ratio", Some(5.0 / 6.0)),
        ("engaged_email_click_through_ratio", Some(5.0 / 6.0)),
        ("engaged_email_click_to_open_ratio", Some(1.0)),
        ("engaged_email_unsubscribe_ratio", Some(1.0 / 6.0)),
        ("engaged_email_complaint_ratio", Some(2.0 / 6.0)),
        ("engaged_email_bounce_ratio", Some(0.25)),
        ("engaged_email_conversion_ratio", Some(0.6)),
    ]
}

fn email_all_1h() -> Vec<Expect> {
    vec![
        ("engaged_email_sent", Some(4.0)),
        ("engaged_email_delivered", Some(3.0)),
        ("engaged_email_bounced", Some(1.0)),
        ("engaged_email_unique_opens", Some(3.0)),
        ("engaged_email_unique_clicks", Some(4.0)),
        ("engaged_email_unsubscribes", Some(1.0)),
        ("engaged_email_complaints", Some(1.0)),
        ("engaged_email_attributed_orders", Some(2.0)),
        ("engaged_email_delivered_opened", Some(2.0)),
        ("engaged_email_delivered_clicked", Some(2.0)),
        ("engaged_email_delivered_unsubscribed", Some(0.0)),
        ("engaged_email_delivered_complained", Some(1.0)),
        ("engaged_email_sent_bounced", Some(1.0)),
        ("engaged_email_open_ratio", Some(2.0 / 3.0)),
        ("engaged_email_click_through_ratio", Some(2.0 / 3.0)),
        ("engaged_email_click_to_open_ratio", Some(1.0)),
        ("engaged_email_unsubscribe_ratio", Some(0.0)),
        ("engaged_email_complaint_ratio", Some(1.0 / 3.0)),
        ("engaged_email_bounce_ratio", Some(0.25)),
        ("engaged_email_conversion_ratio", Some(0.5)),
    ]
}

fn email_spring_24h() -> Vec<Expect> {
    vec![
        ("engaged_email_sent", Some(4.0)),
        ("engaged_email_delivered", Some(3.0)),
        ("engaged_email_bounced", Some(1.0)),
        ("engaged_email_unique_opens", Some(3.0)),
        ("engaged_email_unique_clicks", Some(3.0)),
        ("engaged_email_unsubscribes", Some(1.0)),
        ("engaged_email_complaints", Some(1.0)),
        ("engaged_email_attributed_orders", Some(1.0)),
        ("engaged_email_delivered_opened", Some(3.0)),
        ("engaged_email_delivered_clicked", Some(3.0)),
        ("engaged_email_delivered_unsubscribed", Some(1.0)),
        ("engaged_email_delivered_complained", Some(1.0)),
        ("engaged_email_sent_bounced", Some(1.0)),
        ("engaged_email_open_ratio", Some(1.0)),
        ("engaged_email_click_through_ratio", Some(1.0)),
        ("engaged_email_click_to_open_ratio", Some(1.0)),
        ("engaged_email_unsubscribe_ratio", Some(1.0 / 3.0)),
        ("engaged_email_complaint_ratio", Some(1.0 / 3.0)),
        ("engaged_email_bounce_ratio", Some(0.25)),
        ("engaged_email_conversion_ratio", Some(1.0 / 3.0)),
    ]
}

fn email_spring_1h() -> Vec<Expect> {
    vec![
        ("engaged_email_sent", Some(0.0)),
        ("engaged_email_delivered", Some(0.0)),
        ("engaged_email_bounced", Some(0.0)),
        ("engaged_email_unique_opens", Some(1.0)),
        ("engaged_email_unique_clicks", Some(2.0)),
        ("engaged_email_unsubscribes", Some(1.0)),
        ("engaged_email_complaints", Some(0.0)),
        ("engaged_email_attributed_orders", Some(0.0)),
        ("engaged_email_delivered_opened", Some(0.0)),
        ("engaged_email_delivered_clicked", Some(0.0)),
        ("engaged_email_delivered_unsubscribed", Some(0.0)),
        ("engaged_email_delivered_complained", Some(0.0)),
        ("engaged_email_sent_bounced", Some(0.0)),
        ("engaged_email_open_ratio", None),
        ("engaged_email_click_through_ratio", None),
        ("engaged_email_click_to_open_ratio", None),
        ("engaged_email_unsubscribe_ratio", None),
        ("engaged_email_complaint_ratio", None),
        ("engaged_email_bounce_ratio", None),
        ("engaged_email_conversion_ratio", Some(0.0)),
    ]
}

/// Summer: every event is in the last hour, so 24h and 1h agree.
fn email_summer() -> Vec<Expect> {
    vec![
        ("engaged_email_sent", Some(4.0)),
        ("engaged_email_delivered", Some(3.0)),
        ("engaged_email_bounced", Some(1.0)),
        ("engaged_email_unique_opens", Some(2.0)),
        ("engaged_email_unique_clicks", Some(2.0)),
        ("engaged_email_unsubscribes", Some(0.0)),
        ("engaged_email_complaints", Some(1.0)),
        ("engaged_email_attributed_orders", Some(2.0)),
        ("engaged_email_delivered_opened", Some(2.0)),
        ("engaged_email_delivered_clicked", Some(2.0)),
        ("engaged_email_delivered_unsubscribed", Some(0.0)),
        ("engaged_email_delivered_complained", Some(1.0)),
        ("engaged_email_sent_bounced", Some(1.0)),
        ("engaged_email_open_ratio", Some(2.0 / 3.0)),
        ("engaged_email_click_through_ratio", Some(2.0 / 3.0)),
        ("engaged_email_click_to_open_ratio", Some(1.0)),
        ("engaged_email_unsubscribe_ratio", Some(0.0)),
        ("engaged_email_complaint_ratio", Some(1.0 / 3.0)),
        ("engaged_email_bounce_ratio", Some(0.25)),
        ("engaged_email_conversion_ratio", Some(1.0)),
    ]
}

fn others_24h() -> Vec<Expect> {
    vec![
        ("engaged_commerce_orders", Some(8.0)),
        ("engaged_commerce_order_revenue_minor", Some(21000.0)),
        ("engaged_commerce_revenue_minor", Some(21999.0)),
        ("engaged_commerce_refunds_minor", Some(1500.0)),
        ("engaged_commerce_net_revenue_minor", Some(20499.0)),
        ("engaged_commerce_purchasing_customers", Some(5.0)),
        ("engaged_commerce_average_order_value_minor", Some(2625.0)),
        ("engaged_commerce_orders_per_customer", Some(1.6)),
        ("engaged_commerce_returning_customers", Some(1.0)),
        ("engaged_commerce_returning_customer_ratio", Some(0.2)),
        ("engaged_commerce_new_customers", Some(4.0)),
        ("engaged_commerce_margin_minor", Some(6500.0)),
        ("engaged_commerce_profit_per_customer_minor", Some(1300.0)),
        ("engaged_commerce_renewals", Some(1.0)),
        ("engaged_commerce_cancellations", Some(1.0)),
        ("engaged_commerce_revenue_churn_minor", Some(999.0)),
        ("engaged_survey_nps", Some(40.0)),
        ("engaged_survey_nps_responses", Some(5.0)),
        ("engaged_survey_nps_promoters", Some(3.0)),
        ("engaged_survey_nps_detractors", Some(1.0)),
        ("engaged_survey_csat", Some(200.0 / 3.0)),
        ("engaged_survey_csat_responses", Some(3.0)),
        ("engaged_survey_csat_satisfied", Some(2.0)),
        ("engaged_survey_ces", Some(4.5)),
        ("engaged_survey_ces_responses", Some(2.0)),
        ("engaged_survey_ces_points", Some(9.0)),
        ("engaged_customers_active", Some(7.0)),
        ("engaged_customers_churned", Some(4.0)),
        ("engaged_customers_active_at_window_start", Some(1.0)),
        ("engaged_customers_lost", Some(1.0)),
        ("engaged_customers_churn_ratio", Some(1.0)),
        ("engaged_customers_retention_ratio", Some(0.0)),
        ("engaged_web_page_views", Some(2.0)),
    ]
}

fn others_1h() -> Vec<Expect> {
    vec![
        ("engaged_commerce_orders", Some(5.0)),
        ("engaged_commerce_order_revenue_minor", Some(14200.0)),
        ("engaged_commerce_revenue_minor", Some(15199.0)),
        ("engaged_commerce_refunds_minor", Some(0.0)),
        ("engaged_commerce_net_revenue_minor", Some(15199.0)),
        ("engaged_commerce_purchasing_customers", Some(5.0)),
        ("engaged_commerce_average_order_value_minor", Some(2840.0)),
        ("engaged_commerce_orders_per_customer", Some(1.0)),
        ("engaged_commerce_returning_customers", Some(3.0)),
        ("engaged_commerce_returning_customer_ratio", Some(0.6)),
        ("engaged_commerce_new_customers", Some(2.0)),
        ("engaged_commerce_margin_minor", Some(5000.0)),
        ("engaged_commerce_profit_per_customer_minor", Some(1000.0)),
        ("engaged_commerce_renewals", Some(1.0)),
        ("engaged_commerce_cancellations", Some(1.0)),
        ("engaged_commerce_revenue_churn_minor", Some(999.0)),
        ("engaged_survey_nps", Some(200.0 / 3.0)),
        ("engaged_survey_nps_responses", Some(3.0)),
        ("engaged_survey_nps_promoters", Some(2.0)),
        ("engaged_survey_nps_detractors", Some(0.0)),
        ("engaged_survey_csat", Some(100.0)),
        ("engaged_survey_csat_responses", Some(2.0)),
        ("engaged_survey_csat_satisfied", Some(2.0)),
        ("engaged_survey_ces", Some(6.0)),
        ("engaged_survey_ces_responses", Some(1.0)),
        ("engaged_survey_ces_points", Some(6.0)),
        ("engaged_customers_active", Some(6.0)),
        ("engaged_customers_churned", Some(2.0)),
        ("engaged_customers_active_at_window_start", Some(6.0)),
        ("engaged_customers_lost", Some(2.0)),
        ("engaged_customers_churn_ratio", Some(1.0 / 3.0)),
        ("engaged_customers_retention_ratio", Some(2.0 / 3.0)),
        ("engaged_web_page_views", Some(0.0)),
    ]
}

/// Checks `expected` on `/metrics` for one window (and campaign); collects mismatches.
fn check_metrics(
    m: &Metrics,
    window: &str,
    campaign: Option<&str>,
    expected: &[Expect],
    errors: &mut Vec<String>,
) {
    for (name, want) in expected {
        let (name, labels) = match campaign {
            Some(c) => (
                format!("{name}_by_campaign"),
                vec![("campaign", c), ("window", window)],
            ),
            None => (name.to_string(), vec![("window", window)]),
        };
        let got = m.get(&name, &labels);
        let ok = match (got, want) {
            (Some(g), Some(w)) => close(g, *w),
            (None, None) => true,
            _ => false,
        };
        if !ok {
            errors.push(format!("{name}{labels:?}: got {got:?}, want {want:?}"));
        }
    }
}

/// The value of a `/metrics` family in a snapshot row (the same mapping as the
/// Prometheus names above; SPEC §3 names in the snapshot).
fn snapshot_value(s: &WindowSnapshot, family: &str) -> Option<f64> {
    let i = |v: Option<i64>| v.map(|v| v as f64);
    match family {
        "engaged_email_sent" => i(s.emails_sent),
        "engaged_email_delivered" => i(s.emails_delivered),
        "engaged_email_bounced" => i(s.emails_bounced),
        "engaged_email_unique_opens" => i(s.unique_opens),
        "engaged_email_unique_clicks" => i(s.unique_clicks),
        "engaged_email_unsubscribes" => i(s.unsubscribes),
        "engaged_email_complaints" => i(s.complaints),
        "engaged_email_attributed_orders" => i(s.attributed_orders),
        "engaged_email_delivered_opened" => i(s.delivered_opened),
        "engaged_email_delivered_clicked" => i(s.delivered_clicked),
        "engaged_email_delivered_unsubscribed" => i(s.delivered_unsubscribed),
        "engaged_email_delivered_complained" => i(s.delivered_complained),
        "engaged_email_sent_bounced" => i(s.sent_bounced),
        "engaged_email_open_ratio" => s.open_rate,
        "engaged_email_click_through_ratio" => s.click_through_rate,
        "engaged_email_click_to_open_ratio" => s.click_to_open_rate,
        "engaged_email_unsubscribe_ratio" => s.unsubscribe_rate,
        "engaged_email_complaint_ratio" => s.complaint_rate,
        "engaged_email_bounce_ratio" => s.email_bounce_rate,
        "engaged_email_conversion_ratio" => s.email_conversion_rate,
        "engaged_commerce_orders" => i(s.orders),
        "engaged_commerce_order_revenue_minor" => i(s.order_revenue_minor),
        "engaged_commerce_revenue_minor" => i(s.revenue_minor),
        "engaged_commerce_refunds_minor" => i(s.refunds_minor),
        "engaged_commerce_net_revenue_minor" => i(s.net_revenue_minor),
        "engaged_commerce_purchasing_customers" => i(s.purchasing_customers),
        "engaged_commerce_average_order_value_minor" => s.average_order_value,
        "engaged_commerce_orders_per_customer" => s.orders_per_customer,
        "engaged_commerce_returning_customers" => i(s.returning_customers),
        "engaged_commerce_returning_customer_ratio" => s.returning_customer_rate,
        "engaged_commerce_new_customers" => i(s.new_customers),
        "engaged_commerce_margin_minor" => i(s.margin_minor),
        "engaged_commerce_profit_per_customer_minor" => s.profit_per_customer,
        "engaged_commerce_renewals" => i(s.renewals),
        "engaged_commerce_cancellations" => i(s.cancellations),
        "engaged_commerce_revenue_churn_minor" => i(s.revenue_churn_minor),
        "engaged_survey_nps" => s.nps,
        "engaged_survey_nps_responses" => i(s.nps_responses),
        "engaged_survey_nps_promoters" => i(s.nps_promoters),
        "engaged_survey_nps_detractors" => i(s.nps_detractors),
        "engaged_survey_csat" => s.csat,
        "engaged_survey_csat_responses" => i(s.csat_responses),
        "engaged_survey_csat_satisfied" => i(s.csat_satisfied),
        "engaged_survey_ces" => s.ces,
        "engaged_survey_ces_responses" => i(s.ces_responses),
        "engaged_survey_ces_points" => i(s.ces_sum),
        "engaged_customers_active" => i(s.active_customers),
        "engaged_customers_churned" => i(s.churned_customers),
        "engaged_customers_active_at_window_start" => i(s.customers_at_window_start),
        "engaged_customers_lost" => i(s.lost_customers),
        "engaged_customers_churn_ratio" => s.churn_rate,
        "engaged_customers_retention_ratio" => s.retention_rate,
        "engaged_web_page_views" => Some(s.page_views as f64),
        other => panic!("no snapshot field for {other}"),
    }
}

fn check_snapshot(s: &WindowSnapshot, expected: &[Expect], errors: &mut Vec<String>) {
    let key = engaged::sink::snapshot_key(s);
    for (family, want) in expected {
        let got = snapshot_value(s, family);
        let ok = match (got, want) {
            (Some(g), Some(w)) => close(g, *w),
            (None, None) => true,
            _ => false,
        };
        if !ok {
            errors.push(format!(
                "snapshot {key}: {family}: got {got:?}, want {want:?}"
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Second phase, worked out by hand: the clock events at T+65 move every watermark to
// W2 = T+60, so the windows become 1h = [0, 60) and 24h = [−1380, 60). The only events
// in [0, 60) are the first clock round at +5 (per partition: an anonymous page view,
// a SENT of campaign `clock` to clock-P, a RENEWAL of 100 by clock-P, an anonymous
// CSAT 5). No run churns in (0, 60]: the next churn is ivy's at +62.
//
//   1h  email: sent 2 (campaign `clock`), everything else 0 → open, CTR, CTOR, unsub,
//           conversion ratios absent; bounce 0/2 = 0; campaign rows: `clock` only
//       commerce: no orders (AOV, orders per customer, returning ratio, profit per
//           customer absent), renewals 2, revenue 200 = net
//       survey: NPS and CES absent, CSAT 2 responses, 2 satisfied → 100
//       customers: active clock-0, clock-1 = 2; churned 0; active at the start (an
//           activity in [−120, 0)): alice carol dave erin gina ivy = 6 (bob's last is
//           −135) → churn ratio 0, retention 1
//       page views 2
//   24h everything of the first phase is still inside (hank's order −1490 still before
//       it, his churn at −1370 still in it), plus the first clock round:
//       email: sent 10, bounce ratio 2/10, the rest as at T; campaign `clock` sent 2
//       commerce: renewals 3, revenue 21999 + 200 = 22199, net 20699, the rest as at T
//       survey: CSAT 2, 4, 5, 5, 5 → 5 responses, 4 satisfied → 80; NPS, CES as at T
//       customers: active + clock-0, clock-1 = 9; churned 4 (hank, erin, carol, bob);
//           active at the start ([−1500, −1380)): hank (−1490) = 1, lost hank
//           (−1370) = 1 → churn ratio 1, retention 0
//       page views 4
// ---------------------------------------------------------------------------

/// `base` with the values of `changes` replaced.
fn with(base: Vec<Expect>, changes: &[Expect]) -> Vec<Expect> {
    let mut out = base;
    for (name, v) in changes {
        let e = out
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not in the base list"));
        e.1 = *v;
    }
    out
}

fn phase2_24h() -> Vec<Expect> {
    let mut out = with(
        email_all_24h(),
        &[
            ("engaged_email_sent", Some(10.0)),
            ("engaged_email_bounce_ratio", Some(0.2)),
        ],
    );
    out.extend(with(
        others_24h(),
        &[
            ("engaged_commerce_renewals", Some(3.0)),
            ("engaged_commerce_revenue_minor", Some(22199.0)),
            ("engaged_commerce_net_revenue_minor", Some(20699.0)),
            ("engaged_survey_csat", Some(80.0)),
            ("engaged_survey_csat_responses", Some(5.0)),
            ("engaged_survey_csat_satisfied", Some(4.0)),
            ("engaged_customers_active", Some(9.0)),
            ("engaged_web_page_views", Some(4.0)),
        ],
    ));
    out
}

fn phase2_1h_email() -> Vec<Expect> {
    vec![
        ("engaged_email_sent", Some(2.0)),
        ("engaged_email_delivered", Some(0.0)),
        ("engaged_email_bounced", Some(0.0)),
        ("engaged_email_unique_opens", Some(0.0)),
        ("engaged_email_unique_clicks", Some(0.0)),
        ("engaged_email_unsubscribes", Some(0.0)),
        ("engaged_email_complaints", Some(0.0)),
        ("engaged_email_attributed_orders", Some(0.0)),
        ("engaged_email_delivered_opened", Some(0.0)),
        ("engaged_email_delivered_clicked", Some(0.0)),
        ("engaged_email_delivered_unsubscribed", Some(0.0)),
        ("engaged_email_delivered_complained", Some(0.0)),
        ("engaged_email_sent_bounced", Some(0.0)),
        ("engaged_email_open_ratio", None),
        ("engaged_email_click_through_ratio", None),
        ("engaged_email_click_to_open_ratio", None),
        ("engaged_email_unsubscribe_ratio", None),
        ("engaged_email_complaint_ratio", None),
        ("engaged_email_bounce_ratio", Some(0.0)),
        ("engaged_email_conversion_ratio", None),
    ]
}

fn phase2_1h_others() -> Vec<Expect> {
    vec![
        ("engaged_commerce_orders", Some(0.0)),
        ("engaged_commerce_order_revenue_minor", Some(0.0)),
        ("engaged_commerce_revenue_minor", Some(200.0)),
        ("engaged_commerce_refunds_minor", Some(0.0)),
        ("engaged_commerce_net_revenue_minor", Some(200.0)),
        ("engaged_commerce_purchasing_customers", Some(0.0)),
        ("engaged_commerce_average_order_value_minor", None),
        ("engaged_commerce_orders_per_customer", None),
        ("engaged_commerce_returning_customers", Some(0.0)),
        ("engaged_commerce_returning_customer_ratio", None),
        ("engaged_commerce_new_customers", Some(0.0)),
        ("engaged_commerce_margin_minor", Some(0.0)),
        ("engaged_commerce_profit_per_customer_minor", None),
        ("engaged_commerce_renewals", Some(2.0)),
        ("engaged_commerce_cancellations", Some(0.0)),
        ("engaged_commerce_revenue_churn_minor", Some(0.0)),
        ("engaged_survey_nps", None),
        ("engaged_survey_nps_responses", Some(0.0)),
        ("engaged_survey_csat", Some(100.0)),
        ("engaged_survey_csat_responses", Some(2.0)),
        ("engaged_survey_ces", None),
        ("engaged_survey_ces_responses", Some(0.0)),
        ("engaged_customers_active", Some(2.0)),
        ("engaged_customers_churned", Some(0.0)),
        ("engaged_customers_active_at_window_start", Some(6.0)),
        ("engaged_customers_lost", Some(0.0)),
        ("engaged_customers_churn_ratio", Some(0.0)),
        ("engaged_customers_retention_ratio", Some(1.0)),
        ("engaged_web_page_views", Some(2.0)),
    ]
}

/// The campaigns with a row on `/metrics` for `window`.
fn campaign_rows(m: &Metrics, window: &str) -> BTreeSet<String> {
    m.samples
        .iter()
        .filter(|x| x.name == "engaged_email_sent_by_campaign")
        .filter(|x| x.labels.get("window").map(String::as_str) == Some(window))
        .filter_map(|x| x.labels.get("campaign").cloned())
        .collect()
}

fn assert_no_errors(errors: &[String], what: &str, m: &Metrics) {
    assert!(
        errors.is_empty(),
        "{what} differs from the hand-computed values:\n  {}\n--- relevant /metrics:\n{}",
        errors.join("\n  "),
        [
            "engaged_email",
            "engaged_commerce",
            "engaged_survey",
            "engaged_customers",
            "engaged_events",
            "engaged_watermark"
        ]
        .map(|p| m.relevant(p))
        .join("\n")
    );
}

/// The latest snapshot record of every key at `watermark`.
fn snapshots_at(records: &[OwnedMessage], watermark: Millis) -> BTreeMap<String, WindowSnapshot> {
    let mut latest = BTreeMap::new();
    for r in records {
        let snap = engaged::sink::decode_snapshot_record(r.payload().expect("payload"))
            .expect("EngagementSnapshot");
        let key = String::from_utf8(r.key().expect("snapshot key").to_vec()).unwrap();
        assert_eq!(key, engaged::sink::snapshot_key(&snap), "snapshot key");
        if snap.watermark == watermark {
            latest.insert(key, snap);
        }
    }
    latest
}

fn snapshot<'a>(latest: &'a BTreeMap<String, WindowSnapshot>, key: &str) -> &'a WindowSnapshot {
    latest.get(key).unwrap_or_else(|| {
        panic!(
            "no snapshot {key}; keys at this watermark: {:?}",
            latest.keys().collect::<Vec<_>>()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_commerce_survey_and_churn_metrics_match_hand_computed_values() {
    run_scenario(false).await;
}

/// The same scenario, with the sidecar stopped after the first phase and a new one
/// (same group) started before the second: it restores the checkpointed state of
/// every family (SPEC §5), so the second phase gives the same numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_state_survives_a_restart_between_the_phases() {
    run_scenario(true).await;
}

async fn run_scenario(restart: bool) {
    init_tracing();
    let mut topics: Vec<(&str, i32)> = INPUTS.iter().map(|t| (*t, PARTITIONS)).collect();
    // The checkpoint topic (default name) has the input topics' partition count.
    topics.extend([
        (SNAPSHOTS, 1),
        (DLQ, 1),
        ("engagement.checkpoints", PARTITIONS),
    ]);
    let cluster = Cluster::new(&topics);
    let s = Scenario::design();
    for r in &s.records {
        let payload = encode::single_object(&r.event);
        cluster.send(r.topic, r.partition, &r.key, &payload).await;
    }
    let total = s.records.len() as f64;
    assert_eq!(total, 68.0, "records of the design");

    let raw = RawConfig {
        bootstrap_servers: cluster.bootstrap.clone(),
        group_id: "families".into(),
        listen: "127.0.0.1:0".into(),
        snapshot_interval: "200ms".into(),
        windows: vec!["1h".into(), "24h/1h".into()],
        churn_horizon: "2h".into(),
        attribution_window: "1h".into(),
        currency: "EUR".into(),
        shutdown_timeout: "10s".into(),
        statistics_interval: "1s".into(),
        kafka: BTreeMap::from([("session.timeout.ms".into(), "6000".into())]),
        ..RawConfig::default()
    };
    assert_eq!(raw.input_topics, INPUTS.map(String::from).to_vec());
    let mut sidecar = Running::start(raw.clone(), &DecoderConfig::default()).await;

    // Phase 1: every record, watermark T.
    let wm_seconds = s.t as f64 / 1000.0;
    let m = settle(sidecar.addr, "every record and the watermark T", |m| {
        m.sum("engaged_events_consumed_total") == total
            && m.get("engaged_watermark_timestamp_seconds", &[])
                .is_some_and(|w| close(w, wm_seconds))
    })
    .await;

    // Accounting: consumed = accepted + rejected, by topic and by reason.
    let mut errors = vec![];
    for reason in ["invalid", "duplicate", "late", "undecodable"] {
        let got = m.get("engaged_events_rejected_total", &[("reason", reason)]);
        let want = s.rejected(reason) as f64;
        if got != Some(want) {
            errors.push(format!("rejected {reason}: got {got:?}, want {want}"));
        }
    }
    // By hand: invalid 3 (USD order, NPS 11, clock skew), duplicate 1, late 1.
    assert_eq!(
        (
            s.rejected("invalid"),
            s.rejected("duplicate"),
            s.rejected("late")
        ),
        (3, 1, 1)
    );
    for topic in INPUTS {
        let got = m.get("engaged_events_accepted_total", &[("topic", topic)]);
        let want = s.accepted(topic) as f64;
        if got != Some(want) {
            errors.push(format!("accepted on {topic}: got {got:?}, want {want}"));
        }
    }
    if m.sum("engaged_events_accepted_total") + m.sum("engaged_events_rejected_total") != total {
        errors.push("consumed != accepted + rejected".into());
    }

    // Windowed families.
    check_metrics(&m, "24h", None, &email_all_24h(), &mut errors);
    check_metrics(&m, "1h", None, &email_all_1h(), &mut errors);
    check_metrics(&m, "24h", None, &others_24h(), &mut errors);
    check_metrics(&m, "1h", None, &others_1h(), &mut errors);
    check_metrics(&m, "24h", Some("spring"), &email_spring_24h(), &mut errors);
    check_metrics(&m, "1h", Some("spring"), &email_spring_1h(), &mut errors);
    check_metrics(&m, "24h", Some("summer"), &email_summer(), &mut errors);
    check_metrics(&m, "1h", Some("summer"), &email_summer(), &mut errors);
    // The clock campaign's only SENT is after the window end: no row for it.
    let both = BTreeSet::from(["spring".to_string(), "summer".to_string()]);
    for window in ["1h", "24h"] {
        let rows = campaign_rows(&m, window);
        if rows != both {
            errors.push(format!("campaign rows of {window}: {rows:?}"));
        }
    }
    // Commerce, survey and customer families have `all` rows only.
    for name in [
        "engaged_commerce_orders_by_campaign",
        "engaged_survey_nps_by_campaign",
        "engaged_customers_active_by_campaign",
    ] {
        if m.text.contains(name) {
            errors.push(format!("{name} must not exist"));
        }
    }
    assert_no_errors(&errors, "/metrics at watermark T", &m);

    // Phase 2: the second clock round moves the watermark to T+60 while the sidecar
    // runs (after snapshots, and evictions, at T), or after a restart.
    let mut total2 = total + s.phase2.len() as f64;
    if restart {
        if let Err(e) = sidecar.stop().await {
            panic!("Sidecar::run returns Ok after shutdown, not: {e}");
        }
        sidecar = Running::start(raw, &DecoderConfig::default()).await;
        // The new member consumes only the second phase.
        total2 = s.phase2.len() as f64;
    }
    for r in &s.phase2 {
        let payload = encode::single_object(&r.event);
        cluster.send(r.topic, r.partition, &r.key, &payload).await;
    }
    let w2 = s.t + HOUR;
    let w2_seconds = w2 as f64 / 1000.0;
    let m = settle(sidecar.addr, "the second clock round and T+60", |m| {
        m.sum("engaged_events_consumed_total") == total2
            && m.get("engaged_watermark_timestamp_seconds", &[])
                .is_some_and(|w| close(w, w2_seconds))
    })
    .await;
    let mut errors = vec![];
    check_metrics(&m, "24h", None, &phase2_24h(), &mut errors);
    check_metrics(&m, "1h", None, &phase2_1h_email(), &mut errors);
    check_metrics(&m, "1h", None, &phase2_1h_others(), &mut errors);
    check_metrics(&m, "24h", Some("spring"), &email_spring_24h(), &mut errors);
    check_metrics(&m, "24h", Some("summer"), &email_summer(), &mut errors);
    check_metrics(&m, "1h", Some("clock"), &phase2_1h_email(), &mut errors);
    let rows = campaign_rows(&m, "1h");
    if rows != BTreeSet::from(["clock".to_string()]) {
        errors.push(format!("campaign rows of 1h at T+60: {rows:?}"));
    }
    let rows = campaign_rows(&m, "24h");
    if rows != BTreeSet::from(["clock", "spring", "summer"].map(String::from)) {
        errors.push(format!("campaign rows of 24h at T+60: {rows:?}"));
    }
    assert_no_errors(&errors, "/metrics at watermark T+60", &m);

    if let Err(e) = sidecar.stop().await {
        panic!("Sidecar::run returns Ok after shutdown, not: {e}");
    }

    // The snapshot topic: the latest record of each key at each watermark.
    let records = read_topic(&cluster.bootstrap, SNAPSHOTS).await;
    let mut errors = vec![];
    let at_t = snapshots_at(&records, s.t);
    let day = snapshot(&at_t, "24h/all");
    assert_eq!(
        (day.window_start, day.window_end),
        (s.t - 24 * HOUR, s.t),
        "24h bounds"
    );
    assert_eq!(
        (day.dimension.as_str(), day.dimension_value.as_deref()),
        ("all", None)
    );
    check_snapshot(day, &email_all_24h(), &mut errors);
    check_snapshot(day, &others_24h(), &mut errors);
    let hour = snapshot(&at_t, "1h/all");
    assert_eq!((hour.window_start, hour.window_end), (s.t - HOUR, s.t));
    check_snapshot(hour, &email_all_1h(), &mut errors);
    check_snapshot(hour, &others_1h(), &mut errors);
    let spring_day = snapshot(&at_t, "24h/campaign/spring");
    assert_eq!(
        (
            spring_day.dimension.as_str(),
            spring_day.dimension_value.as_deref()
        ),
        ("campaign", Some("spring"))
    );
    check_snapshot(spring_day, &email_spring_24h(), &mut errors);
    check_snapshot(
        snapshot(&at_t, "1h/campaign/spring"),
        &email_spring_1h(),
        &mut errors,
    );
    let summer_hour = snapshot(&at_t, "1h/campaign/summer");
    check_snapshot(summer_hour, &email_summer(), &mut errors);
    // Campaign rows carry email metrics only: commerce, survey and customers are null.
    for family in [
        "engaged_commerce_orders",
        "engaged_survey_nps_responses",
        "engaged_customers_active",
    ] {
        if snapshot_value(summer_hour, family).is_some() {
            errors.push(format!(
                "snapshot 1h/campaign/summer: {family} must be null"
            ));
        }
    }
    let at_w2 = snapshots_at(&records, w2);
    let day = snapshot(&at_w2, "24h/all");
    assert_eq!((day.window_start, day.window_end), (w2 - 24 * HOUR, w2));
    check_snapshot(day, &phase2_24h(), &mut errors);
    let hour = snapshot(&at_w2, "1h/all");
    check_snapshot(hour, &phase2_1h_email(), &mut errors);
    check_snapshot(hour, &phase2_1h_others(), &mut errors);
    check_snapshot(
        snapshot(&at_w2, "1h/campaign/clock"),
        &phase2_1h_email(),
        &mut errors,
    );
    assert!(
        errors.is_empty(),
        "snapshots differ from the hand-computed values:\n  {}",
        errors.join("\n  ")
    );

    // Every rejected record was dead-lettered.
    let dlq = read_topic(&cluster.bootstrap, DLQ).await;
    assert_eq!(dlq.len(), 5, "five dead letters");
}
