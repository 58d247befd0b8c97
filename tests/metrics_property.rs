//! Property tests for the email, commerce, survey and customer metrics: random
//! mixed streams (all four families, disorder, duplicates, late and invalid
//! records) through the engine; every metric of every window equals a
//! brute-force recomputation, written here from SPEC §3 alone, over the
//! accepted events; and the interleaving of partitions and topics does not
//! change any number.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use engaged::checkpoint::delta::Form;
use engaged::event::{
    EmailEvent, EmailEventType, Event, Millis, PageView, Purchase, PurchaseType, SurveyKind,
    SurveyResponse,
};
use engaged::snapshot::{self, WindowSnapshot};
use engaged::state::{CoreConfig, Engine, SavedTask, TopicPartition};
use engaged::window::WindowSpec;
use proptest::prelude::*;

use support::{EMAIL_TYPES, PURCHASE_TYPES, SURVEY_KINDS};

const MIN: i64 = 60_000;
const LATENESS: i64 = 5 * MIN;
const DEDUP: i64 = 10 * MIN;
const TTL: i64 = 120 * MIN;
const ATTRIBUTION: i64 = 90 * MIN;
const HORIZON: i64 = 120 * MIN;
const PARTITIONS: u32 = 2;
const T0: i64 = 1_700_000_000_000;

fn config() -> CoreConfig {
    CoreConfig {
        windows: vec![
            WindowSpec::with_default_buckets("1h", 60 * MIN),
            WindowSpec {
                name: "6h".into(),
                length_ms: 360 * MIN,
                bucket_ms: 30 * MIN,
            },
        ],
        allowed_lateness_ms: LATENESS,
        session_timeout_ms: 30 * MIN,
        dedup_window_ms: DEDUP,
        max_dimension_values: 100,
        email_dedup_ttl_ms: TTL,
        attribution_window_ms: ATTRIBUTION,
        churn_horizon_ms: HORIZON,
        currency: "EUR".into(),
        input_topics: ["emails", "purchases", "surveys", "pageviews"]
            .map(String::from)
            .to_vec(),
        ..CoreConfig::default()
    }
}

#[derive(Debug, Clone)]
struct Rec {
    tp: (String, i32),
    event: Event,
}

fn customer_partition(c: u32) -> i32 {
    (c % PARTITIONS) as i32
}

fn stream() -> impl Strategy<Value = Vec<Rec>> {
    let step = (
        (0u32..5, 0u8..4, 0usize..7, 0u32..4), // customer, family, type/kind, message/variant
        (0i64..(12 * MIN), -(9 * MIN)..(2 * MIN), 0u8..3), // advance, jitter, snap (none, 1 min, 10 min)
        (0u32..100, 0u32..100, 1i64..1000, -1i32..12), // duplicate dice, invalid dice, amount, score
    );
    proptest::collection::vec(step, 1..300).prop_map(|steps| {
        let mut cursor = T0;
        let mut out: Vec<Rec> = vec![];
        for (n, ((c, family, kind, variant), (adv, jitter, snap), (dup, bad, amount, score))) in
            steps.into_iter().enumerate()
        {
            let p = customer_partition(c);
            if dup < 8
                && let Some(prev) = out.iter().rev().find(|r| r.tp.1 == p).cloned()
            {
                out.push(prev);
                continue;
            }
            cursor += adv / 3;
            let mut t = cursor + jitter;
            // Coarse grids make exact boundaries (gaps of exactly the TTL,
            // attribution window or churn horizon) and ties frequent.
            match snap {
                1 => t = t.div_euclid(MIN) * MIN,
                2 => t = t.div_euclid(10 * MIN) * 10 * MIN,
                _ => {}
            }
            let customer = format!("c{c}");
            let event_id = format!("e{n}");
            let (topic, event) = match family {
                0 => {
                    let message = format!("m{c}-{variant}");
                    let campaign = format!("camp{}", (c + variant) % 3);
                    (
                        "emails",
                        Event::Email(EmailEvent {
                            event_id,
                            event_time: t,
                            customer_id: customer,
                            campaign_id: campaign,
                            message_id: message,
                            kind: EMAIL_TYPES[kind],
                            url: None,
                        }),
                    )
                }
                1 => (
                    "purchases",
                    Event::Purchase(Purchase {
                        event_id,
                        event_time: t,
                        customer_id: customer,
                        order_id: format!("o{n}"),
                        // ORDER most often: it feeds attribution and customer counts.
                        kind: PURCHASE_TYPES[kind.saturating_sub(3)],
                        amount_minor: if bad < 3 { -amount } else { amount },
                        currency: if bad > 96 { "USD".into() } else { "EUR".into() },
                        cost_minor: (variant > 0).then_some(amount / 2),
                        items: 1,
                        campaign_id: None,
                    }),
                ),
                2 => {
                    let k = SURVEY_KINDS[kind % 3];
                    let r = k.score_range();
                    // Mostly in range; sometimes one outside it (invalid).
                    let s = if bad < 5 {
                        score.clamp(-1, 11)
                    } else {
                        score.clamp(*r.start(), *r.end())
                    };
                    (
                        "surveys",
                        Event::Survey(SurveyResponse {
                            event_id,
                            event_time: t,
                            customer_id: (variant > 0).then(|| customer.clone()),
                            survey_id: "s".into(),
                            kind: k,
                            score: s,
                            comment: None,
                        }),
                    )
                }
                _ => (
                    "pageviews",
                    Event::PageView(PageView {
                        event_id,
                        event_time: t,
                        visitor_id: format!("v{c}"),
                        customer_id: (variant > 0).then(|| customer.clone()),
                        site: "shop".into(),
                        page: "/".into(),
                        referrer: None,
                        channel: None,
                    }),
                ),
            };
            out.push(Rec {
                tp: (topic.into(), p),
                event,
            });
        }
        out
    })
}

fn run(engine: &Engine, recs: &[Rec]) -> Vec<bool> {
    recs.iter()
        .map(|r| {
            engine
                .apply(&TopicPartition::new(&r.tp.0, r.tp.1), &r.event)
                .is_ok()
        })
        .collect()
}

// ------------- reference, from SPEC §1–§3 -------------

fn valid(e: &Event) -> bool {
    match e {
        Event::Purchase(p) => p.amount_minor >= 0 && p.currency == "EUR",
        Event::Survey(s) => s.kind.score_range().contains(&s.score),
        _ => true,
    }
}

/// Acceptance per topic-partition, and the final watermark of each.
fn reference_accepts(recs: &[Rec]) -> (Vec<bool>, HashMap<(String, i32), Millis>) {
    let mut max: HashMap<(String, i32), Millis> = HashMap::new();
    let mut seen: HashMap<((String, i32), String), Millis> = HashMap::new();
    let accepted = recs
        .iter()
        .map(|r| {
            if !valid(&r.event) {
                return false;
            }
            let t = r.event.event_time();
            let wm = max.get(&r.tp).map(|m| m - LATENESS);
            if wm.is_some_and(|w| t < w) {
                return false;
            }
            let key = (r.tp.clone(), r.event.event_id().to_string());
            if let Some(&old) = seen.get(&key)
                && wm.is_none_or(|w| old + DEDUP > w)
            {
                return false;
            }
            seen.insert(key, t);
            let m = max.entry(r.tp.clone()).or_insert(t);
            *m = (*m).max(t);
            true
        })
        .collect();
    let wms = max.into_iter().map(|(k, m)| (k, m - LATENESS)).collect();
    (accepted, wms)
}

fn chain(mut times: Vec<Millis>) -> Vec<Millis> {
    times.sort();
    let mut out: Vec<Millis> = vec![];
    for t in times {
        if out.last().is_none_or(|f| t - f >= TTL) {
            out.push(t);
        }
    }
    out
}

type Row = BTreeMap<&'static str, Option<f64>>;

fn ratio(n: i64, d: i64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

fn activity(e: &Event) -> Option<&str> {
    match e {
        Event::PageView(p) => p.customer_id.as_deref(),
        Event::Email(m) => match m.kind {
            EmailEventType::Sent | EmailEventType::Delivered | EmailEventType::Bounced => None,
            _ => Some(&m.customer_id),
        },
        Event::Purchase(p) => Some(&p.customer_id),
        Event::Survey(s) => s.customer_id.as_deref(),
    }
}

/// Expected rows: (window, campaign or None for `all`) -> metric -> value.
fn reference(
    cfg: &CoreConfig,
    recs: &[Rec],
    accepted: &[bool],
    wms: &HashMap<(String, i32), Millis>,
    w: Millis,
) -> BTreeMap<(String, Option<String>), Row> {
    let events: Vec<(&Rec, &Event)> = recs
        .iter()
        .zip(accepted)
        .filter(|(_, a)| **a)
        .map(|(r, _)| (r, &r.event))
        .collect();
    let emails: Vec<&EmailEvent> = events
        .iter()
        .filter_map(|(_, e)| {
            if let Event::Email(m) = e {
                Some(m)
            } else {
                None
            }
        })
        .collect();
    let purchases: Vec<&Purchase> = events
        .iter()
        .filter_map(|(_, e)| {
            if let Event::Purchase(p) = e {
                Some(p)
            } else {
                None
            }
        })
        .collect();
    let surveys: Vec<&SurveyResponse> = events
        .iter()
        .filter_map(|(_, e)| {
            if let Event::Survey(s) = e {
                Some(s)
            } else {
                None
            }
        })
        .collect();

    // SPEC §3 Email: counts follow messages. Per message, the events of each
    // kind (an open is an OPENED or a CLICKED); each kind's first event counts
    // once (remembered for the TTL: the chain of firsts), at its own time.
    // Send cohort: a counted DELIVERED at d counts in delivered_opened
    // (_clicked, _unsubscribed, _complained) at d when the message has such an
    // event within the TTL of d (docs/metrics.md: also one recorded before the
    // delivery); a counted SENT at s in sent_bounced when a BOUNCED is.
    let mut by_msg: BTreeMap<String, (String, HashMap<EmailEventType, Vec<Millis>>)> =
        BTreeMap::new();
    for m in &emails {
        by_msg
            .entry(m.message_id.clone())
            .or_insert_with(|| (m.campaign_id.clone(), HashMap::new()))
            .1
            .entry(m.kind)
            .or_default()
            .push(m.event_time);
    }
    // (time, campaign, counter name)
    let mut counted: Vec<(Millis, String, &'static str)> = vec![];
    for (campaign, kinds) in by_msg.values() {
        let of = |ks: &[EmailEventType]| -> Vec<Millis> {
            ks.iter()
                .flat_map(|k| kinds.get(k).cloned().unwrap_or_default())
                .collect()
        };
        let near = |times: &[Millis], at: Millis| times.iter().any(|t| (t - at).abs() < TTL);
        use EmailEventType::*;
        for (ks, name) in [
            (&[Sent][..], "emails_sent"),
            (&[Delivered], "emails_delivered"),
            (&[Bounced], "emails_bounced"),
            (&[Opened, Clicked], "unique_opens"),
            (&[Clicked], "unique_clicks"),
            (&[Unsubscribed], "unsubscribes"),
            (&[Complained], "complaints"),
        ] {
            for t in chain(of(ks)) {
                counted.push((t, campaign.clone(), name));
            }
        }
        for d in chain(of(&[Delivered])) {
            for (ks, name) in [
                (&[Opened, Clicked][..], "delivered_opened"),
                (&[Clicked], "delivered_clicked"),
                (&[Unsubscribed], "delivered_unsubscribed"),
                (&[Complained], "delivered_complained"),
            ] {
                if near(&of(ks), d) {
                    counted.push((d, campaign.clone(), name));
                }
            }
        }
        for sent in chain(of(&[Sent])) {
            if near(&of(&[Bounced]), sent) {
                counted.push((sent, campaign.clone(), "sent_bounced"));
            }
        }
    }
    // Attribution of each ORDER.
    let mut attributed: Vec<(Millis, String)> = vec![];
    for o in purchases.iter().filter(|p| p.kind == PurchaseType::Order) {
        let clicks: Vec<&&EmailEvent> = emails
            .iter()
            .filter(|m| m.kind == EmailEventType::Clicked && m.customer_id == o.customer_id)
            .filter(|m| m.event_time <= o.event_time && o.event_time - m.event_time < ATTRIBUTION)
            .collect();
        if let Some(last) = clicks.iter().map(|m| m.event_time).max() {
            let campaign = clicks
                .iter()
                .filter(|m| m.event_time == last)
                .map(|m| m.campaign_id.clone())
                .max()
                .unwrap();
            attributed.push((o.event_time, campaign));
        }
    }
    // Activity per customer, and churn instants (runs split at gaps >= horizon).
    let mut acts: BTreeMap<String, (i32, Vec<Millis>)> = BTreeMap::new();
    for (r, e) in &events {
        if let Some(c) = activity(e) {
            acts.entry(c.to_string())
                .or_insert((r.tp.1, vec![]))
                .1
                .push(e.event_time());
        }
    }
    // A task closes churn runs at the smallest watermark of all its input topics.
    let activity_wm = |p: i32| -> Option<Millis> {
        ["emails", "purchases", "surveys", "pageviews"]
            .iter()
            .map(|t| wms.get(&(t.to_string(), p)).copied())
            .min()
            .flatten()
    };
    // Churn instants, with the customer who churned.
    let mut churns: Vec<(&str, Millis)> = vec![];
    for (customer, (p, times)) in &acts {
        let mut ts = times.clone();
        ts.sort();
        let closed_by = activity_wm(*p);
        for (i, t) in ts.iter().enumerate() {
            let next = ts.get(i + 1);
            if next.is_none_or(|n| n - t >= HORIZON) && closed_by.is_some_and(|w| t + HORIZON <= w)
            {
                churns.push((customer, t + HORIZON));
            }
        }
    }

    let mut out = BTreeMap::new();
    for spec in &cfg.windows {
        let e = w.div_euclid(spec.bucket_ms) * spec.bucket_ms;
        let s = e - spec.length_ms;
        let inw = |t: Millis| t >= s && t < e;
        let campaigns: BTreeSet<String> = emails.iter().map(|m| m.campaign_id.clone()).collect();
        let mut keys: Vec<Option<String>> = vec![None];
        keys.extend(campaigns.into_iter().map(Some));
        for key in keys {
            let mine = |c: &str| key.as_deref().is_none_or(|k| k == c);
            let n = |name: &str| {
                counted
                    .iter()
                    .filter(|(t, c, k)| *k == name && mine(c) && inw(*t))
                    .count() as i64
            };
            let (sent, delivered, bounced) =
                (n("emails_sent"), n("emails_delivered"), n("emails_bounced"));
            let (opens, clicks, unsubs, complaints) = (
                n("unique_opens"),
                n("unique_clicks"),
                n("unsubscribes"),
                n("complaints"),
            );
            let (d_opened, d_clicked, d_unsub, d_complained, s_bounced) = (
                n("delivered_opened"),
                n("delivered_clicked"),
                n("delivered_unsubscribed"),
                n("delivered_complained"),
                n("sent_bounced"),
            );
            let attributed_n = attributed
                .iter()
                .filter(|(t, c)| mine(c) && inw(*t))
                .count() as i64;
            if key.is_some()
                && sent + delivered + bounced + opens + clicks + unsubs + complaints + attributed_n
                    == 0
            {
                continue;
            }
            let mut row: Row = BTreeMap::new();
            let f = |v: i64| Some(v as f64);
            row.insert("emails_sent", f(sent));
            row.insert("emails_delivered", f(delivered));
            row.insert("emails_bounced", f(bounced));
            row.insert("unique_opens", f(opens));
            row.insert("unique_clicks", f(clicks));
            row.insert("unsubscribes", f(unsubs));
            row.insert("complaints", f(complaints));
            row.insert("delivered_opened", f(d_opened));
            row.insert("delivered_clicked", f(d_clicked));
            row.insert("delivered_unsubscribed", f(d_unsub));
            row.insert("delivered_complained", f(d_complained));
            row.insert("sent_bounced", f(s_bounced));
            row.insert("open_rate", ratio(d_opened, delivered));
            row.insert("click_through_rate", ratio(d_clicked, delivered));
            row.insert("click_to_open_rate", ratio(d_clicked, d_opened));
            row.insert("unsubscribe_rate", ratio(d_unsub, delivered));
            row.insert("complaint_rate", ratio(d_complained, delivered));
            row.insert("email_bounce_rate", ratio(s_bounced, sent));
            row.insert("attributed_orders", f(attributed_n));
            row.insert("email_conversion_rate", ratio(attributed_n, clicks));
            if key.is_none() {
                let sum = |ty: PurchaseType, amount: bool| {
                    purchases
                        .iter()
                        .filter(|p| p.kind == ty && inw(p.event_time))
                        .map(|p| if amount { p.amount_minor } else { 1 })
                        .sum::<i64>()
                };
                let orders = sum(PurchaseType::Order, false);
                let order_revenue = sum(PurchaseType::Order, true);
                let revenue = order_revenue + sum(PurchaseType::Renewal, true);
                let refunds = sum(PurchaseType::Refund, true);
                let buyers: BTreeSet<&str> = purchases
                    .iter()
                    .filter(|p| p.kind == PurchaseType::Order && inw(p.event_time))
                    .map(|p| p.customer_id.as_str())
                    .collect();
                let mut first_order: BTreeMap<&str, Millis> = BTreeMap::new();
                for p in purchases.iter().filter(|p| p.kind == PurchaseType::Order) {
                    let e = first_order.entry(&p.customer_id).or_insert(p.event_time);
                    *e = (*e).min(p.event_time);
                }
                let new = first_order.values().filter(|t| inw(**t)).count() as i64;
                let returning = buyers.iter().filter(|c| first_order[*c] < s).count() as i64;
                let margin: i64 = purchases
                    .iter()
                    .filter(|p| p.kind == PurchaseType::Order && inw(p.event_time))
                    .filter_map(|p| p.cost_minor.map(|c| p.amount_minor - c))
                    .sum();
                let n = buyers.len() as i64;
                row.insert("orders", f(orders));
                row.insert("order_revenue_minor", f(order_revenue));
                row.insert("revenue_minor", f(revenue));
                row.insert("refunds_minor", f(refunds));
                row.insert("net_revenue_minor", f(revenue - refunds));
                row.insert("purchasing_customers", f(n));
                row.insert("average_order_value", ratio(order_revenue, orders));
                row.insert("orders_per_customer", ratio(orders, n));
                row.insert("returning_customers", f(returning));
                row.insert("returning_customer_rate", ratio(returning, n));
                row.insert("new_customers", f(new));
                row.insert("margin_minor", f(margin));
                row.insert("profit_per_customer", ratio(margin, n));
                row.insert("renewals", f(sum(PurchaseType::Renewal, false)));
                row.insert("cancellations", f(sum(PurchaseType::Cancellation, false)));
                row.insert(
                    "revenue_churn_minor",
                    f(sum(PurchaseType::Cancellation, true)),
                );

                let of = |k: SurveyKind| {
                    surveys
                        .iter()
                        .filter(move |x| x.kind == k && inw(x.event_time))
                };
                let nps_n = of(SurveyKind::Nps).count() as i64;
                let prom = of(SurveyKind::Nps).filter(|x| x.score >= 9).count() as i64;
                let det = of(SurveyKind::Nps).filter(|x| x.score <= 6).count() as i64;
                let csat_n = of(SurveyKind::Csat).count() as i64;
                let sat = of(SurveyKind::Csat).filter(|x| x.score >= 4).count() as i64;
                let ces_n = of(SurveyKind::Ces).count() as i64;
                let ces_sum: i64 = of(SurveyKind::Ces).map(|x| x.score as i64).sum();
                row.insert("nps", ratio(100 * (prom - det), nps_n));
                row.insert("nps_responses", f(nps_n));
                row.insert("nps_promoters", f(prom));
                row.insert("nps_detractors", f(det));
                row.insert("csat", ratio(100 * sat, csat_n));
                row.insert("csat_responses", f(csat_n));
                row.insert("csat_satisfied", f(sat));
                row.insert("ces", ratio(ces_sum, ces_n));
                row.insert("ces_responses", f(ces_n));
                row.insert("ces_sum", f(ces_sum));

                let active = acts
                    .values()
                    .filter(|(_, ts)| ts.iter().any(|t| inw(*t)))
                    .count() as i64;
                // SPEC: customers active (not churned) at the window start, and
                // of them, those who churned during the window.
                let start_cohort: BTreeSet<&str> = acts
                    .iter()
                    .filter(|(_, (_, ts))| ts.iter().any(|t| *t >= s - HORIZON && *t < s))
                    .map(|(c, _)| c.as_str())
                    .collect();
                let at_start = start_cohort.len() as i64;
                let churned = churns.iter().filter(|(_, t)| inw(*t)).count() as i64;
                let lost = churns
                    .iter()
                    .filter(|(c, t)| inw(*t) && start_cohort.contains(c))
                    .map(|(c, _)| *c)
                    .collect::<BTreeSet<&str>>()
                    .len() as i64;
                row.insert("active_customers", f(active));
                row.insert("churned_customers", f(churned));
                row.insert("customers_at_window_start", f(at_start));
                row.insert("lost_customers", f(lost));
                row.insert("churn_rate", ratio(lost, at_start));
                row.insert("retention_rate", ratio(lost, at_start).map(|r| 1.0 - r));
            }
            out.insert((spec.name.clone(), key), row);
        }
    }
    out
}

fn observed(snaps: &[WindowSnapshot]) -> BTreeMap<(String, Option<String>), Row> {
    let mut out = BTreeMap::new();
    for s in snaps {
        let key = match (s.dimension.as_str(), &s.dimension_value) {
            ("all", _) => None,
            ("campaign", Some(v)) => Some(v.clone()),
            _ => continue,
        };
        let mut row: Row = BTreeMap::new();
        let l = |v: Option<i64>| v.map(|v| v as f64);
        row.insert("emails_sent", l(s.emails_sent));
        row.insert("emails_delivered", l(s.emails_delivered));
        row.insert("emails_bounced", l(s.emails_bounced));
        row.insert("unique_opens", l(s.unique_opens));
        row.insert("unique_clicks", l(s.unique_clicks));
        row.insert("unsubscribes", l(s.unsubscribes));
        row.insert("complaints", l(s.complaints));
        row.insert("delivered_opened", l(s.delivered_opened));
        row.insert("delivered_clicked", l(s.delivered_clicked));
        row.insert("delivered_unsubscribed", l(s.delivered_unsubscribed));
        row.insert("delivered_complained", l(s.delivered_complained));
        row.insert("sent_bounced", l(s.sent_bounced));
        row.insert("open_rate", s.open_rate);
        row.insert("click_through_rate", s.click_through_rate);
        row.insert("click_to_open_rate", s.click_to_open_rate);
        row.insert("unsubscribe_rate", s.unsubscribe_rate);
        row.insert("complaint_rate", s.complaint_rate);
        row.insert("email_bounce_rate", s.email_bounce_rate);
        row.insert("attributed_orders", l(s.attributed_orders));
        row.insert("email_conversion_rate", s.email_conversion_rate);
        if key.is_none() {
            row.insert("orders", l(s.orders));
            row.insert("order_revenue_minor", l(s.order_revenue_minor));
            row.insert("revenue_minor", l(s.revenue_minor));
            row.insert("refunds_minor", l(s.refunds_minor));
            row.insert("net_revenue_minor", l(s.net_revenue_minor));
            row.insert("purchasing_customers", l(s.purchasing_customers));
            row.insert("average_order_value", s.average_order_value);
            row.insert("orders_per_customer", s.orders_per_customer);
            row.insert("returning_customers", l(s.returning_customers));
            row.insert("returning_customer_rate", s.returning_customer_rate);
            row.insert("new_customers", l(s.new_customers));
            row.insert("margin_minor", l(s.margin_minor));
            row.insert("profit_per_customer", s.profit_per_customer);
            row.insert("renewals", l(s.renewals));
            row.insert("cancellations", l(s.cancellations));
            row.insert("revenue_churn_minor", l(s.revenue_churn_minor));
            row.insert("nps", s.nps);
            row.insert("nps_responses", l(s.nps_responses));
            row.insert("nps_promoters", l(s.nps_promoters));
            row.insert("nps_detractors", l(s.nps_detractors));
            row.insert("csat", s.csat);
            row.insert("csat_responses", l(s.csat_responses));
            row.insert("csat_satisfied", l(s.csat_satisfied));
            row.insert("ces", s.ces);
            row.insert("ces_responses", l(s.ces_responses));
            row.insert("ces_sum", l(s.ces_sum));
            row.insert("active_customers", l(s.active_customers));
            row.insert("churned_customers", l(s.churned_customers));
            row.insert("customers_at_window_start", l(s.customers_at_window_start));
            row.insert("lost_customers", l(s.lost_customers));
            row.insert("churn_rate", s.churn_rate);
            row.insert("retention_rate", s.retention_rate);
        }
        out.insert((s.window.clone(), key), row);
    }
    out
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        (None, None) => true,
        _ => false,
    }
}

fn instance_watermark(engine: &Engine) -> Option<Millis> {
    engine
        .watermarks()
        .into_iter()
        .map(|(_, w)| w)
        .min()
        .flatten()
}

fn partitions(engine: &Engine) -> Vec<TopicPartition> {
    engine.watermarks().into_iter().map(|(tp, _)| tp).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_metric_equals_brute_force(recs in stream(), probe in 0i64..(120 * MIN)) {
        let cfg = config();
        let engine = Engine::new(cfg.clone());
        let accepted = run(&engine, &recs);
        let (want_accepted, wms) = reference_accepts(&recs);
        prop_assert_eq!(&accepted, &want_accepted);
        let Some(w) = instance_watermark(&engine) else { return Ok(()) };
        for w in [w, w - probe] {
            let got = observed(&snapshot::build(&engine, w, &partitions(&engine)));
            let want = reference(&cfg, &recs, &accepted, &wms, w);
            prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
            for (k, row) in &want {
                for (metric, v) in row {
                    let g = got[k][metric];
                    prop_assert!(close(g, *v), "{} {:?} at {}: got {:?}, want {:?}", metric, k, w, g, v);
                }
            }
        }
    }

    #[test]
    fn interleaving_of_partitions_and_topics_does_not_matter(recs in stream(), seed in any::<u64>()) {
        // Keep each topic-partition's order, interleave them differently.
        let mut queues: BTreeMap<(String, i32), Vec<Rec>> = BTreeMap::new();
        for r in &recs {
            queues.entry(r.tp.clone()).or_default().push(r.clone());
        }
        let mut queues: Vec<Vec<Rec>> = queues.into_values().collect();
        let mut shuffled = vec![];
        let mut x = seed | 1;
        while queues.iter().any(|q| !q.is_empty()) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            let i = (x % queues.len() as u64) as usize;
            if !queues[i].is_empty() {
                shuffled.push(queues[i].remove(0));
            }
        }
        let (a, b) = (Engine::new(config()), Engine::new(config()));
        run(&a, &recs);
        run(&b, &shuffled);
        let Some(w) = instance_watermark(&a) else { return Ok(()) };
        prop_assert_eq!(Some(w), instance_watermark(&b));
        let (sa, sb) = (
            snapshot::build(&a, w, &partitions(&a)),
            snapshot::build(&b, w, &partitions(&b)),
        );
        prop_assert_eq!(sa.len(), sb.len());
        for (x, y) in sa.iter().zip(&sb) {
            let (jx, jy) = (serde_json::to_value(x).unwrap(), serde_json::to_value(y).unwrap());
            let diff: Vec<String> = jx
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, v)| jy[k.as_str()] != **v)
                .map(|(k, v)| format!("{k}: {v} vs {}", jy[k.as_str()]))
                .collect();
            prop_assert!(diff.is_empty(), "{} {} {:?}: {:?}", x.window, x.dimension, x.dimension_value, diff);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// A task saved mid-stream and restored into a fresh engine continues exactly
    /// like the engine that never stopped.
    #[test]
    fn saved_and_restored_state_continues_exactly(recs in stream(), cut in 0usize..300) {
        let cut = cut.min(recs.len());
        let whole = Engine::new(config());
        let first = Engine::new(config());
        let whole_accepted = run(&whole, &recs);
        let mut accepted = run(&first, &recs[..cut]);
        let second = Engine::new(config());
        for p in first.tasks() {
            let bytes = first.save_task(p, Form::Base).unwrap().unwrap();
            second.restore_task(p, &bytes).unwrap();
        }
        accepted.extend(run(&second, &recs[cut..]));
        prop_assert_eq!(accepted, whole_accepted);
        prop_assert_eq!(whole.watermarks(), second.watermarks());
        let Some(w) = instance_watermark(&whole) else { return Ok(()) };
        prop_assert_eq!(
            snapshot::build(&whole, w, &partitions(&whole)),
            snapshot::build(&second, w, &partitions(&second))
        );
    }
}

/// The histories the churn model would fit on, in a comparable order.
fn histories(engine: &Engine, at: Millis) -> Vec<String> {
    let (rfm, spend) = engine.risk_histories(at, 0);
    let mut out: Vec<String> = rfm.iter().map(|h| format!("{h:?}")).collect();
    out.extend(spend.iter().map(|s| format!("{s:?}")));
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Saved at several points — a base, then deltas, sometimes a new base — and
    /// restored from the last base and the deltas after it, sometimes in the middle
    /// (the restored engine goes on saving deltas on the same chain), a task
    /// continues exactly like the engine that never stopped.
    #[test]
    fn a_base_and_its_deltas_restore_the_state_exactly(
        recs in stream(),
        // (position, 0: delta, 1: new base, 2: delta then restart from the chain)
        cuts in proptest::collection::vec((0usize..300, 0u8..3), 1..6),
    ) {
        // Positions spread over the stream, whatever its length.
        let mut cuts: Vec<(usize, u8)> = cuts.into_iter().map(|(c, b)| (c * recs.len() / 300, b)).collect();
        cuts.sort();
        if let Some(last) = cuts.last_mut() {
            last.1 = 2;
        }
        // A short churn horizon, so that runs opened before a save churn after it.
        let config = || CoreConfig { churn_horizon_ms: 20 * MIN, ..config() };
        let whole = Engine::new(config());
        let whole_accepted = run(&whole, &recs);
        let mut engine = Engine::new(config());
        let mut accepted = vec![];
        // Per task: its last base and the deltas saved after it.
        let mut chains: BTreeMap<i32, (Vec<u8>, Vec<Vec<u8>>)> = BTreeMap::new();
        let mut at = 0;
        for (cut, action) in cuts {
            accepted.extend(run(&engine, &recs[at..cut]));
            at = cut;
            for p in engine.tasks() {
                let form = match chains.get(&p) {
                    Some(_) if action != 1 => Form::Delta,
                    _ => Form::Base,
                };
                let bytes = engine.save_task(p, form).unwrap().unwrap();
                match form {
                    Form::Base => {
                        chains.insert(p, (bytes, vec![]));
                    }
                    Form::Delta => chains.get_mut(&p).unwrap().1.push(bytes),
                }
            }
            if action == 2 {
                let restarted = Engine::new(config());
                let saved: Vec<SavedTask<'_>> = chains
                    .iter()
                    .map(|(p, (base, deltas))| SavedTask {
                        partition: *p,
                        base,
                        deltas: deltas.iter().map(Vec::as_slice).collect(),
                    })
                    .collect();
                restarted.restore_tasks(&saved, 2).unwrap();
                prop_assert_eq!(restarted.state_entries(), engine.state_entries());
                engine = restarted;
            }
        }
        let second = engine;
        accepted.extend(run(&second, &recs[at..]));
        prop_assert_eq!(accepted, whole_accepted);
        prop_assert_eq!(whole.watermarks(), second.watermarks());
        prop_assert_eq!(whole.state_entries(), second.state_entries());
        let Some(w) = instance_watermark(&whole) else { return Ok(()) };
        prop_assert_eq!(histories(&whole, w), histories(&second, w));
        prop_assert_eq!(
            snapshot::build(&whole, w, &partitions(&whole)),
            snapshot::build(&second, w, &partitions(&second))
        );
    }
}
