//! The memory model (`state::memory`, docs/operations.md) against a counting allocator.
//!
//! Each scenario fills an engine with many entries of mostly one kind, measures
//! the heap it holds, and checks the model's estimate for what the engine
//! reports (entries per kind × bytes per entry) bounds the measurement from above
//! without being more than three times it: the model is a sizing rule an operator
//! can rely on, not a guess.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use engaged::event::{
    EmailEvent, EmailEventType, Event, PageView, Purchase, PurchaseType, SurveyKind, SurveyResponse,
};
use engaged::snapshot;
use engaged::state::memory::{StateKind, StateSize};
use engaged::state::{CoreConfig, Engine, TopicPartition};
use engaged::telemetry::{Published, Telemetry};

/// Counts the bytes this process holds on the heap.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// The one way to count a process's heap: wrap the system allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is process-wide: scenarios run one at a time (the lock is taken
/// before a test builds anything), whatever `--test-threads` says.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const T0: i64 = 1_790_000_000_000;
const MIN: i64 = 60_000;

/// The heap an engine holds after `fill` (events built outside the measurement), and its accounting.
fn measure(events: Vec<(TopicPartition, Event)>, advance: Option<i64>) -> (i64, StateSize) {
    let engine = Engine::new(CoreConfig::default());
    let before = LIVE.load(Ordering::Relaxed);
    for (tp, e) in &events {
        engine.apply(tp, e).expect("accepted");
    }
    if let Some(w) = advance {
        for (tp, _) in events.iter().take(1) {
            engine.advance(tp, w);
        }
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    let size = engine.state_size();
    drop(engine);
    (held, size)
}

fn check(scenario: &str, held: i64, size: &StateSize, kind: StateKind, n: u64) {
    let model = size.total_bytes() as i64;
    let per = held as f64 / n as f64;
    eprintln!(
        "{scenario}: {held} B held for {n} {} ({per:.0} B each, model {} B each); model total {model} B; {size:?}",
        kind.as_str(),
        kind.bytes_per_entry()
    );
    assert_eq!(size.entries(kind), n, "{scenario}: entries of {kind:?}");
    assert!(
        held <= model,
        "{scenario}: {held} B held, the model says at most {model} B"
    );
    assert!(
        held * 3 >= model,
        "{scenario}: {held} B held, the model's {model} B is more than three times that"
    );
}

fn order(i: u64) -> (TopicPartition, Event) {
    let e = Event::Purchase(Purchase {
        event_id: format!("order-{i:08}"),
        event_time: T0 + i as i64 * 50,
        customer_id: format!("customer-{i:08}"),
        order_id: format!("o-{i:08}"),
        kind: PurchaseType::Order,
        amount_minor: 1_000 + i as i64 % 5_000,
        currency: "EUR".into(),
        cost_minor: None,
        items: 1,
        campaign_id: None,
    });
    (TopicPartition::new("purchases", 0), e)
}

fn view(i: u64) -> (TopicPartition, Event) {
    let e = Event::PageView(PageView {
        event_id: format!("view-{i:08}"),
        event_time: T0 + i as i64 * 10,
        visitor_id: format!("visitor-{i:08}"),
        customer_id: None,
        site: ["shop", "blog"][i as usize % 2].into(),
        page: "/".into(),
        referrer: None,
        channel: Some(["organic", "email", "paid"][i as usize % 3].into()),
    });
    (TopicPartition::new("pageviews", 0), e)
}

#[test]
fn a_customer_with_one_order_costs_what_the_model_says() {
    let _one_at_a_time = serial();
    let n = 40_000;
    let events: Vec<_> = (0..n).map(order).collect();
    // The watermark passes every order: attribution forgets them, as in steady state.
    let (held, size) = measure(events, Some(T0 + n as i64 * 50 + 10 * MIN));
    check("one-order customers", held, &size, StateKind::Customer, n);
}

#[test]
fn an_open_session_costs_what_the_model_says() {
    let _one_at_a_time = serial();
    let n = 40_000;
    let events: Vec<_> = (0..n).map(view).collect();
    let (held, size) = measure(events, None);
    check("open sessions", held, &size, StateKind::OpenSession, n);
}

#[test]
fn closed_sessions_cost_what_the_model_says() {
    let _one_at_a_time = serial();
    let n = 40_000;
    let events: Vec<_> = (0..n).map(view).collect();
    // Every session closes (30 minutes after its view); the event ids expire.
    let (held, size) = measure(events, Some(T0 + n as i64 * 10 + 60 * MIN));
    // One duration per window (5) and dimension (all, site, channel).
    check(
        "closed sessions",
        held,
        &size,
        StateKind::SessionDuration,
        n * 5 * 3,
    );
}

#[test]
fn a_remembered_message_costs_what_the_model_says() {
    let _one_at_a_time = serial();
    let n = 40_000;
    let events: Vec<_> = (0..n)
        .map(|i| {
            let e = Event::Email(EmailEvent {
                event_id: format!("email-{i:08}"),
                event_time: T0 + i as i64 * 10,
                customer_id: format!("customer-{i:08}"),
                campaign_id: format!("campaign-{}", i % 10),
                message_id: format!("message-{i:08}"),
                kind: EmailEventType::Opened,
                url: None,
            });
            (TopicPartition::new("emails", 0), e)
        })
        .collect();
    // The event ids expire; the messages (and the openers, who are customers) stay.
    let (held, size) = measure(events, Some(T0 + n as i64 * 10 + 20 * MIN));
    assert_eq!(size.entries(StateKind::Customer), n);
    check("opened messages", held, &size, StateKind::Message, n);
}

#[test]
fn a_remembered_event_id_costs_what_the_model_says() {
    let _one_at_a_time = serial();
    let n = 40_000;
    let events: Vec<_> = (0..n)
        .map(|i| {
            let e = Event::Survey(SurveyResponse {
                event_id: format!("survey-response-{i:08}"),
                event_time: T0 + i as i64 * 10,
                customer_id: None,
                survey_id: "s".into(),
                kind: SurveyKind::Nps,
                score: (i % 11) as i32,
                comment: None,
            });
            (TopicPartition::new("surveys", 0), e)
        })
        .collect();
    let (held, size) = measure(events, None);
    check("event ids", held, &size, StateKind::EventId, n);
}

/// `state_ttl` frees what a forgotten customer held: a second wave of as many new
/// customers, after the first is forgotten, reuses its memory (the released
/// customer numbers and their array slots are given to the newcomers) instead of
/// adding to it — also when a few customers of the first wave stay.
#[test]
fn customers_forgotten_by_state_ttl_give_their_memory_to_new_ones() {
    let _one_at_a_time = serial();
    const DAY: i64 = 86_400_000;
    // At least the churn horizon (90 days) plus the longest window, as the configuration demands.
    let ttl = 130 * DAY;
    let cfg = CoreConfig {
        state_ttl_ms: Some(ttl),
        ..CoreConfig::default()
    };
    let n = 20_000u64;
    // Customer `c` ordering as the `i`-th ORDER of wave `w`: waves are a TTL apart.
    let at = |w: u64, i: u64, c: u64| {
        let (tp, mut e) = order(c);
        if let Event::Purchase(p) = &mut e {
            p.event_time = T0 + w as i64 * ttl + i as i64 * 1_000;
            p.event_id = format!("wave-{w}-{i}");
        }
        (tp, e)
    };
    // Wave 0: customers 0..n. Wave 1 (a TTL later, within it): one in a hundred
    // of them again, so every block of numbers keeps someone. Wave 2 (a TTL after
    // that): those again, and n new customers.
    let waves: [Vec<(TopicPartition, Event)>; 3] = [
        (0..n).map(|c| at(0, c, c)).collect(),
        (0..n).step_by(100).map(|c| at(1, c, c)).collect(),
        (0..n)
            .step_by(100)
            .chain(n..2 * n)
            .enumerate()
            .map(|(i, c)| at(2, i as u64, c))
            .collect(),
    ];
    let engine = Engine::new(cfg);
    let before = LIVE.load(Ordering::Relaxed);
    let mut held = vec![];
    for events in &waves {
        for (tp, e) in events {
            engine.apply(tp, e).expect("accepted");
        }
        // The watermark passes the wave by an hour (its attribution and event ids
        // go), and a snapshot round's memory pass runs.
        let end = events
            .iter()
            .map(|(_, e)| e.event_time())
            .max()
            .unwrap_or(T0)
            + 3_600_000;
        let (tp, _) = &events[0];
        engine.advance(tp, end);
        engine.evict(end);
        held.push(LIVE.load(Ordering::Relaxed) - before);
    }
    // Wave 2 came more than a TTL after the last ORDER of all but the loyal hundredth.
    assert_eq!(
        engine.state_size().entries(StateKind::Customer),
        n + n / 100
    );
    eprintln!("state_ttl waves: {held:?} B held after each");
    assert!(
        held[2] * 10 < held[0] * 12,
        "the new customers added to the forgotten ones' memory: {held:?} B"
    );
    drop(engine);
}

/// A page view and an email event of step `i`: label values from `value(i)`.
fn labelled(i: u64, value: &dyn Fn(u64) -> u64) -> [(TopicPartition, Event); 2] {
    let v = value(i);
    let t = T0 + i as i64 * 10;
    let view = Event::PageView(PageView {
        event_id: format!("view-{i:08}"),
        event_time: t,
        visitor_id: format!("visitor-{i}"),
        customer_id: None,
        site: format!("site-{v}"),
        page: format!("/page/{v}"),
        referrer: None,
        channel: Some(format!("channel-{v}")),
    });
    let email = Event::Email(EmailEvent {
        event_id: format!("email-{i:08}"),
        event_time: t,
        customer_id: format!("customer-{}", i % 100),
        campaign_id: format!("campaign-{v}"),
        message_id: format!("message-{i:08}"),
        kind: EmailEventType::Sent,
        url: None,
    });
    [
        (TopicPartition::new("pageviews", 0), view),
        (TopicPartition::new("emails", 0), email),
    ]
}

/// Applies `n` steps of [`labelled`] events (a snapshot round's eviction every
/// 10,000); the heap held, the accounting and /metrics.
fn flood(n: u64, value: &dyn Fn(u64) -> u64) -> (i64, StateSize, String) {
    // One window and messages forgotten after 10 minutes: the flood is about
    // labels, not about what sessions and messages cost (the same with ten values).
    let cfg = CoreConfig {
        windows: vec![engaged::window::WindowSpec::with_default_buckets(
            "1h",
            60 * MIN,
        )],
        email_dedup_ttl_ms: 10 * MIN,
        attribution_window_ms: 10 * MIN,
        ..CoreConfig::default()
    };
    let engine = Engine::new(cfg);
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        for (tp, e) in labelled(i, value) {
            engine.apply(&tp, &e).expect("accepted");
        }
        if i % 10_000 == 0 {
            engine.evict(T0 + i as i64 * 10 - 5 * MIN);
        }
    }
    let w = T0 + n as i64 * 10;
    for tp in ["pageviews", "emails"] {
        engine.advance(&TopicPartition::new(tp, 0), w);
    }
    engine.evict(w);
    let held = LIVE.load(Ordering::Relaxed) - before;
    let size = engine.state_size();
    let telemetry = Telemetry::new();
    let partitions = [
        TopicPartition::new("pageviews", 0),
        TopicPartition::new("emails", 0),
    ];
    telemetry.publish(Published {
        snapshots: snapshot::build(&engine, w, &partitions),
        durations: Default::default(),
        risk_distribution: None,
    });
    (held, size, telemetry.render())
}

/// The distinct values of label `name` on `/metrics`.
fn label_values<'a>(metrics: &'a str, name: &str) -> std::collections::BTreeSet<&'a str> {
    let key = format!("{name}=\"");
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(key.as_str()).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once('"').map(|(v, _)| v))
        .collect()
}

/// A million distinct sites, channels, pages and campaigns (issue 12, bounded
/// label cardinality) cost the state what ten values do plus at most
/// `max_label_values` named values per label (released an hour and a half of
/// event time after their last use, so later values are named too), and
/// `/metrics` shows the top `max_dimension_values` of each plus `other`; the
/// `all` rows count everything.
#[test]
fn a_million_distinct_values_per_label_keep_memory_and_series_bounded() {
    let _one_at_a_time = serial();
    let n = 1_000_000;
    let (control_held, control_size, control_metrics) = flood(n, &|i| i % 10);
    let (held, size, metrics) = flood(n, &|i| i);
    let labels = size.entries(StateKind::LabelValue);
    eprintln!(
        "ten values: {control_held} B held, {} label entries; {n} values: {held} B held, \
         {labels} label entries",
        control_size.entries(StateKind::LabelValue)
    );
    // Without the cap each distinct value costs a table entry and bucket entries:
    // 4 M values would be well over 400 MB. With it, at most 1,000 named values
    // per label in a few buckets each.
    let cap = CoreConfig::default().max_label_values as u64;
    assert!(labels <= 4 * cap * 4, "{labels} label entries");
    // What the flood holds beyond ten values is within what the model says
    // its named values cost (the breakdown maps' spare capacity included).
    let extra = held - control_held;
    assert!(
        extra <= (labels * StateKind::LabelValue.bytes_per_entry()) as i64,
        "{extra} B more than with ten values, the model says at most {} B for {labels} entries",
        labels * StateKind::LabelValue.bytes_per_entry()
    );
    let top = CoreConfig::default().max_dimension_values;
    for label in ["site", "channel", "page", "campaign"] {
        let values = label_values(&metrics, label);
        // `other` holds most of the volume: it is one of the top N or the rest.
        assert!(
            (top..=top + 1).contains(&values.len()),
            "{label}: {values:?}"
        );
        assert!(values.contains("other"), "{label}: {values:?}");
        assert_eq!(label_values(&control_metrics, label).len(), 10, "{label}");
    }
    // The `all` rows do not depend on the labels.
    let all = |m: &str, family: &str| -> Vec<String> {
        m.lines()
            .filter(|l| {
                l.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .map(str::to_string)
            .collect()
    };
    for family in [
        "engaged_web_page_views",
        "engaged_web_sessions_active",
        "engaged_email_sent",
    ] {
        assert_eq!(
            all(&metrics, family),
            all(&control_metrics, family),
            "{family}"
        );
        assert!(!all(&metrics, family).is_empty(), "{family} on /metrics");
    }
}
