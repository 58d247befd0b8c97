use super::*;
use std::collections::{BTreeSet, HashMap, HashSet};

fn generate(cfg: GeneratorConfig, hours: i64) -> Vec<Event> {
    let start = cfg.start;
    Generator::new(cfg).advance_to(start + hours * HOUR)
}

fn is_activity(e: &Event) -> bool {
    match e {
        Event::Email(m) => !matches!(
            m.kind,
            EmailEventType::Sent | EmailEventType::Delivered | EmailEventType::Bounced
        ),
        _ => true,
    }
}

fn customer_of(e: &Event) -> Option<&str> {
    match e {
        Event::PageView(v) => v.customer_id.as_deref(),
        Event::Email(m) => Some(&m.customer_id),
        Event::Purchase(p) => Some(&p.customer_id),
        Event::Survey(s) => s.customer_id.as_deref(),
    }
}

#[test]
fn same_seed_same_events_other_seed_other_events() {
    let a = generate(GeneratorConfig::default(), 24);
    let b = generate(GeneratorConfig::default(), 24);
    assert!(a.len() > 1_000, "{} events", a.len());
    assert_eq!(a, b);
    let c = generate(
        GeneratorConfig {
            seed: 7,
            ..GeneratorConfig::default()
        },
        24,
    );
    assert_ne!(a, c);
}

#[test]
fn chunked_output_equals_single_call_and_stays_in_bounds() {
    let cfg = GeneratorConfig::default();
    let start = cfg.start;
    let end = start + 2 * DAY;
    let whole = Generator::new(cfg.clone()).advance_to(end);
    assert!(
        whole
            .windows(2)
            .all(|w| w[0].event_time() <= w[1].event_time())
    );
    assert!(whole.iter().all(|e| (start..end).contains(&e.event_time())));

    let mut plan_rng = StdRng::seed_from_u64(99);
    let plans: Vec<Vec<Millis>> = vec![
        (1..=48).map(|h| start + h * HOUR).collect(),
        (1..=2 * 24 * 60).map(|m| start + m * MIN).collect(),
        {
            // Irregular steps, including empty and repeated ones.
            let mut t = start;
            let mut v = Vec::new();
            while t < end {
                t = (t + plan_rng.random_range(0..3 * HOUR)).min(end);
                v.push(t);
                if plan_rng.random_bool(0.1) {
                    v.push(t);
                }
            }
            v
        },
    ];
    for plan in plans {
        let mut g = Generator::new(cfg.clone());
        let mut all = Vec::new();
        let mut prev = start;
        for until in plan {
            let chunk = g.advance_to(until);
            for e in &chunk {
                assert!(
                    (prev..until).contains(&e.event_time()),
                    "{} not in [{prev}, {until})",
                    e.event_time()
                );
            }
            assert!(
                chunk
                    .windows(2)
                    .all(|w| w[0].event_time() <= w[1].event_time())
            );
            all.extend(chunk);
            prev = until;
        }
        assert_eq!(all, whole);
    }
}

#[test]
fn every_event_validates_and_event_ids_are_unique() {
    let events = generate(GeneratorConfig::default(), 72);
    let mut ids = HashSet::new();
    let mut messages = HashSet::new();
    let mut orders = HashSet::new();
    for e in &events {
        e.validate().unwrap_or_else(|err| panic!("{err}: {e:?}"));
        assert!(ids.insert(e.event_id().to_string()), "dup {}", e.event_id());
        match e {
            Event::Email(m) if m.kind == EmailEventType::Sent => {
                assert!(messages.insert(m.message_id.clone()));
            }
            Event::Purchase(p) if p.kind == PurchaseType::Order => {
                assert!(orders.insert(p.order_id.clone()));
                assert!((500..=50_000).contains(&p.amount_minor));
                assert!((1..=5).contains(&p.items));
                if let Some(c) = p.cost_minor {
                    assert!(c * 10 >= p.amount_minor * 4 - 10 && c * 10 <= p.amount_minor * 7 + 10);
                }
                assert_eq!(p.currency, "EUR");
            }
            _ => {}
        }
        assert!(!partition_key(e).is_empty());
    }
}

#[test]
fn every_family_appears_within_six_hours() {
    let events = generate(GeneratorConfig::default(), 6);
    let kinds: BTreeSet<_> = events.iter().map(Event::kind).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    let topics: BTreeSet<_> = events.iter().map(topic_of).collect();
    assert_eq!(
        topics,
        BTreeSet::from(["emails", "pageviews", "purchases", "surveys"])
    );
}

#[test]
fn checkout_ces_answers_come_within_hours_and_move_nothing_else() {
    let events = generate(GeneratorConfig::default(), 6);
    let mut orders: HashMap<&str, Vec<Millis>> = HashMap::new();
    let mut answers = 0;
    for e in &events {
        match e {
            Event::Purchase(p) if p.kind == PurchaseType::Order => {
                orders.entry(&p.customer_id).or_default().push(p.event_time);
            }
            Event::Survey(s) if s.survey_id == "ces-checkout" => {
                e.validate().unwrap_or_else(|err| panic!("{err}: {e:?}"));
                assert_eq!(s.kind, SurveyKind::Ces);
                assert!((1..=7).contains(&s.score), "{s:?}");
                let c = s.customer_id.as_deref().expect("a known customer");
                assert!(
                    orders.get(c).is_some_and(|o| o
                        .iter()
                        .any(|&t| (t + MIN..t + 10 * MIN).contains(&s.event_time))),
                    "no ORDER 1..10 minutes before {s:?}"
                );
                answers += 1;
            }
            _ => {}
        }
    }
    assert!(answers > 0, "no CES answer in the first 6 hours");

    // Without them, every other event (ids included) is the same.
    let spike = DEFAULT_START + 2 * DAY;
    let cfg = GeneratorConfig {
        churn_spike_at: Some(spike),
        regulars: Some(Regulars {
            customers: 50,
            every: 3 * HOUR,
            silent_from: spike,
        }),
        ..GeneratorConfig::default()
    };
    let until = cfg.start + 4 * DAY;
    let with = Generator::new(cfg.clone()).advance_to(until);
    let mut g = Generator::new(cfg);
    g.ces_per_order = 0.0;
    let without = g.advance_to(until);
    let checkout = |e: &Event| matches!(e, Event::Survey(s) if s.survey_id == "ces-checkout");
    assert!(with.iter().filter(|e| checkout(e)).count() > 10);
    assert!(!without.iter().any(checkout));
    let rest: Vec<Event> = with.into_iter().filter(|e| !checkout(e)).collect();
    assert_eq!(rest, without);
}

#[test]
fn every_type_and_shape_appears_within_eight_days() {
    let cfg = GeneratorConfig {
        customers: 20_000,
        visitors_per_hour: 100.0,
        ..GeneratorConfig::default()
    };
    let events = generate(cfg, 8 * 24);
    let mut email_kinds = HashSet::new();
    let mut purchase_kinds = HashSet::new();
    let mut survey_kinds = HashSet::new();
    let mut channels = HashSet::new();
    let mut campaigns = HashSet::new();
    let (mut anon_survey, mut anon_view, mut known_view, mut attributed) =
        (false, false, false, false);
    let mut comments = 0;
    for e in &events {
        match e {
            Event::PageView(v) => {
                channels.insert(v.channel.clone());
                anon_view |= v.customer_id.is_none();
                known_view |= v.customer_id.is_some();
            }
            Event::Email(m) => {
                email_kinds.insert(m.kind);
                campaigns.insert(m.campaign_id.clone());
                assert_eq!(m.url.is_some(), m.kind == EmailEventType::Clicked);
            }
            Event::Purchase(p) => {
                purchase_kinds.insert(p.kind);
                attributed |= p.campaign_id.is_some();
            }
            Event::Survey(s) => {
                survey_kinds.insert(s.kind);
                anon_survey |= s.customer_id.is_none();
                comments += usize::from(s.comment.is_some());
            }
        }
    }
    assert_eq!(email_kinds.len(), 7, "{email_kinds:?}");
    assert_eq!(purchase_kinds.len(), 4, "{purchase_kinds:?}");
    assert_eq!(survey_kinds.len(), 3, "{survey_kinds:?}");
    assert_eq!(channels.len(), 6, "{channels:?}");
    assert!(channels.contains(&None) && channels.contains(&Some("email".to_string())));
    assert!(anon_survey && anon_view && known_view && attributed && comments > 0);
    for c in [
        "wk-2026-47-newsletter",
        "wk-2026-48-newsletter",
        "wk-2026-47-promo",
        "trg-cart-abandon",
    ] {
        assert!(campaigns.contains(c), "{c} missing from {campaigns:?}");
    }
}

#[test]
fn email_and_order_lifecycles_are_causal() {
    let events = generate(GeneratorConfig::default(), 10 * 24);
    let mut sent = HashSet::new();
    let mut delivered = HashSet::new();
    let mut opened = HashSet::new();
    let mut orders: HashMap<String, i64> = HashMap::new();
    let mut counts: HashMap<EmailEventType, usize> = HashMap::new();
    let mut refunds = 0;
    for e in &events {
        match e {
            Event::Email(m) => {
                *counts.entry(m.kind).or_default() += 1;
                let id = m.message_id.clone();
                match m.kind {
                    EmailEventType::Sent => assert!(sent.insert(id)),
                    EmailEventType::Delivered => {
                        assert!(sent.contains(&id));
                        assert!(delivered.insert(id));
                    }
                    EmailEventType::Bounced => {
                        assert!(sent.contains(&id) && !delivered.contains(&id));
                    }
                    EmailEventType::Opened => {
                        assert!(delivered.contains(&id));
                        opened.insert(id);
                    }
                    EmailEventType::Clicked | EmailEventType::Unsubscribed => {
                        assert!(opened.contains(&id), "{m:?}");
                    }
                    EmailEventType::Complained => assert!(delivered.contains(&id)),
                }
            }
            Event::Purchase(p) if p.kind == PurchaseType::Order => {
                orders.insert(p.order_id.clone(), p.amount_minor);
            }
            Event::Purchase(p) if p.kind == PurchaseType::Refund => {
                let amount = orders.get(&p.order_id).expect("refund of a known order");
                assert!(p.amount_minor <= *amount);
                refunds += 1;
            }
            _ => {}
        }
    }
    assert!(refunds > 0);
    let d = counts[&EmailEventType::Delivered] as f64;
    let bounce = counts[&EmailEventType::Bounced] as f64 / counts[&EmailEventType::Sent] as f64;
    let open = opened.len() as f64 / d;
    assert!((0.01..0.06).contains(&bounce), "bounce {bounce}");
    assert!((0.15..0.35).contains(&open), "open rate {open}");
    assert!(
        counts[&EmailEventType::Opened] > opened.len(),
        "re-opens exist"
    );
}

#[test]
fn bounce_share_is_realistic_and_long_gaps_split_sessions() {
    let events = generate(GeneratorConfig::default(), 24);
    let mut by_visitor: HashMap<&str, Vec<Millis>> = HashMap::new();
    for e in &events {
        if let Event::PageView(v) = e {
            by_visitor
                .entry(&v.visitor_id)
                .or_default()
                .push(v.event_time);
        }
    }
    let (mut sessions, mut bounced, mut near_below, mut near_above) = (0u32, 0u32, 0, 0);
    for times in by_visitor.values() {
        let mut len = 1;
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            if (25 * MIN..SESSION_TIMEOUT).contains(&gap) {
                near_below += 1;
            }
            if (SESSION_TIMEOUT..35 * MIN).contains(&gap) {
                near_above += 1;
            }
            if gap >= SESSION_TIMEOUT {
                sessions += 1;
                bounced += u32::from(len == 1);
                len = 1;
            } else {
                len += 1;
            }
        }
        sessions += 1;
        bounced += u32::from(len == 1);
    }
    let share = f64::from(bounced) / f64::from(sessions);
    assert!(sessions > 5_000, "{sessions} sessions");
    assert!((0.25..=0.60).contains(&share), "bounce share {share}");
    assert!(near_below > 0 && near_above > 0);
}

#[test]
fn churn_cohort_goes_silent_after_the_spike() {
    let spike = DEFAULT_START + 2 * DAY;
    let cfg = GeneratorConfig {
        churn_spike_at: Some(spike),
        ..GeneratorConfig::default()
    };
    let mut g = Generator::new(cfg.clone());
    let events = g.advance_to(cfg.start + 5 * DAY);
    let cohort: HashSet<&str> = g
        .customers
        .iter()
        .filter(|c| c.cohort)
        .map(|c| c.id.as_str())
        .collect();
    let share = cohort.len() as f64 / f64::from(cfg.customers);
    assert!((0.15..=0.25).contains(&share), "cohort share {share}");
    let (mut cohort_before, mut others_after, mut cohort_mail_after) = (0, 0, 0);
    for e in &events {
        let Some(c) = customer_of(e) else { continue };
        let in_cohort = cohort.contains(c);
        let after = e.event_time() >= spike;
        if in_cohort && after {
            assert!(!is_activity(e), "cohort activity after the spike: {e:?}");
            cohort_mail_after += 1;
        }
        cohort_before += usize::from(in_cohort && !after && is_activity(e));
        others_after += usize::from(!in_cohort && after && is_activity(e));
    }
    assert!(cohort_before > 100 && others_after > 100);
    assert!(cohort_mail_after > 0, "the shop keeps mailing the cohort");

    // Before the spike, nothing differs from a run without one.
    let plain = generate(GeneratorConfig::default(), 5 * 24);
    let before = |v: &[Event]| -> Vec<Event> {
        v.iter()
            .filter(|e| e.event_time() < spike)
            .cloned()
            .collect()
    };
    assert_eq!(before(&events), before(&plain));
}

#[test]
fn regulars_order_on_their_rhythm_until_silent_and_change_nobody_else() {
    let silent = DEFAULT_START + 3 * DAY;
    let regulars = Regulars {
        customers: 50,
        every: 3 * HOUR,
        silent_from: silent,
    };
    let with = generate(
        GeneratorConfig {
            regulars: Some(regulars),
            ..GeneratorConfig::default()
        },
        5 * 24,
    );
    let mut orders: HashMap<&str, Vec<Millis>> = HashMap::new();
    for e in &with {
        e.validate().unwrap_or_else(|err| panic!("{err}: {e:?}"));
        if let Event::Purchase(p) = e
            && p.customer_id.starts_with("r-")
        {
            assert_eq!(p.kind, PurchaseType::Order);
            assert!(p.event_time < silent, "{p:?}");
            orders.entry(&p.customer_id).or_default().push(p.event_time);
        }
        if let Some(c) = customer_of(e) {
            assert!(
                !c.starts_with("r-") || matches!(e, Event::Purchase(_)),
                "regulars only order: {e:?}"
            );
        }
    }
    assert_eq!(orders.len(), 50);
    for times in orders.values() {
        assert!(times.len() >= 3 * 8 - 2, "{} orders", times.len());
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                (27 * HOUR / 10..=33 * HOUR / 10).contains(&gap),
                "gap {gap}"
            );
        }
        assert!(*times.last().unwrap() >= silent - 33 * HOUR / 10);
    }
    // Everyone else does exactly the same, ids aside (numbered in order).
    let others = |v: &[Event]| -> Vec<Event> {
        v.iter()
            .filter(|e| !customer_of(e).is_some_and(|c| c.starts_with("r-")))
            .map(|e| match e.clone() {
                Event::PageView(v) => Event::PageView(PageView {
                    event_id: String::new(),
                    ..v
                }),
                Event::Email(m) => Event::Email(EmailEvent {
                    event_id: String::new(),
                    ..m
                }),
                Event::Purchase(p) => Event::Purchase(Purchase {
                    event_id: String::new(),
                    order_id: String::new(),
                    ..p
                }),
                Event::Survey(s) => Event::Survey(SurveyResponse {
                    event_id: String::new(),
                    ..s
                }),
            })
            .collect()
    };
    let without = generate(GeneratorConfig::default(), 5 * 24);
    assert_eq!(others(&with), others(&without));
}

#[test]
fn degenerate_configs_still_emit_valid_events() {
    let cfg = GeneratorConfig {
        customers: 0,
        sites: vec![String::new()],
        ..GeneratorConfig::default()
    };
    let events = generate(cfg, 24);
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e.validate().is_ok()));
    assert!(events.iter().all(|e| matches!(e, Event::PageView(v)
        if v.customer_id.is_none() && v.site.ends_with(".example"))
        || matches!(e, Event::Survey(s) if s.customer_id.is_none())));
    let quiet = GeneratorConfig {
        visitors_per_hour: 0.0,
        customers: 50,
        ..GeneratorConfig::default()
    };
    let events = generate(quiet, 24 * 10);
    assert!(events.iter().all(|e| e.validate().is_ok()));
    assert!(events.iter().any(|e| matches!(e, Event::Email(_))));
    // Page views come only from shopping and email-click sessions.
    assert!(
        events
            .iter()
            .all(|e| customer_of(e).is_some() || matches!(e, Event::Survey(_)))
    );
}

#[test]
fn partition_keys_and_topics() {
    let events = generate(GeneratorConfig::default(), 6);
    for e in &events {
        let key = partition_key(e);
        match e {
            Event::PageView(v) => {
                assert_eq!(key, v.customer_id.as_deref().unwrap_or(&v.visitor_id));
                assert_eq!(topic_of(e), "pageviews");
            }
            Event::Survey(s) if s.customer_id.is_none() => assert_eq!(key, s.event_id),
            _ => assert_eq!(Some(key), customer_of(e)),
        }
    }
}
