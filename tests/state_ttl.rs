//! `state_ttl` (SPEC §5): a customer whose last ORDER is longer ago than the TTL
//! is forgotten — its next ORDER is a first ORDER (a new customer, a fresh
//! repeat-purchase history), it is no longer scored or fitted, and its state is
//! freed — while `off` (the default) keeps every number as it was.
//!
//! Expected values are counted by hand from the SPEC's definitions, with "first
//! ORDER ever" read as "first ORDER after a gap of more than `state_ttl`".

use engaged::checkpoint::delta::Form;
use engaged::event::{Event, Millis, Purchase, PurchaseType};
use engaged::snapshot::{self, WindowSnapshot};
use engaged::state::memory::StateKind;
use engaged::state::{CoreConfig, Engine, TopicPartition};
use engaged::window::WindowSpec;

const DAY: Millis = 86_400_000;
const T0: Millis = 1_700_000_000_000 / DAY * DAY;
const TTL: Millis = 20 * DAY;

fn config(ttl: Option<Millis>) -> CoreConfig {
    CoreConfig {
        windows: vec![WindowSpec::with_default_buckets("1d", DAY)],
        churn_horizon_ms: 10 * DAY,
        state_ttl_ms: ttl,
        ..CoreConfig::default()
    }
}

fn order(n: u32, customer: &str, t: Millis) -> Event {
    Event::Purchase(Purchase {
        event_id: format!("o{n}"),
        event_time: t,
        customer_id: customer.into(),
        order_id: format!("order-{n}"),
        kind: PurchaseType::Order,
        amount_minor: 1000,
        currency: "EUR".into(),
        cost_minor: None,
        items: 1,
        campaign_id: None,
    })
}

fn tp() -> TopicPartition {
    TopicPartition::new("purchases", 0)
}

/// `a` orders on days 0 and 1, then more than the TTL after day 1; `b` on day 0
/// and exactly the TTL later. Both last order on the day of `last_day()`.
fn orders() -> Vec<Event> {
    vec![
        order(1, "a", T0),
        order(2, "b", T0 + DAY),
        order(3, "a", T0 + DAY),
        order(4, "b", T0 + DAY + TTL),
        order(5, "a", T0 + DAY + TTL + 1),
    ]
}

/// The `1d` window holding the last two ORDERs.
fn last_day(engine: &Engine) -> WindowSnapshot {
    let w = T0 + 2 * DAY + TTL;
    engine.advance(&tp(), w);
    let snaps = snapshot::build(engine, w, &[tp()]);
    snaps
        .into_iter()
        .find(|s| s.dimension == "all")
        .expect("an `all` row")
}

fn run(ttl: Option<Millis>) -> Engine {
    let engine = Engine::new(config(ttl));
    for e in orders() {
        engine.apply(&tp(), &e).expect("accepted");
    }
    engine
}

#[test]
fn an_order_more_than_the_ttl_after_the_last_one_is_a_first_order_again() {
    let s = last_day(&run(Some(TTL)));
    assert_eq!(s.purchasing_customers, Some(2));
    // `a`: 20 days and 1 ms after its last ORDER: new. `b`: exactly 20 days: returning.
    assert_eq!(s.new_customers, Some(1));
    assert_eq!(s.returning_customers, Some(1));

    // Off: both had ordered before the window.
    let s = last_day(&run(None));
    assert_eq!(s.new_customers, Some(0));
    assert_eq!(s.returning_customers, Some(2));
}

/// `(x, t_x, T)` of the histories the model would fit at `at`, sorted.
fn histories(engine: &Engine, at: Millis) -> Vec<String> {
    let mut h: Vec<String> = engine
        .risk_histories(at, 0)
        .0
        .iter()
        .map(|h| format!("{h:?}"))
        .collect();
    h.sort();
    h
}

#[test]
fn a_forgotten_customer_starts_a_new_history_and_silent_ones_are_not_fitted() {
    let with = run(Some(TTL));
    let at = T0 + 2 * DAY + TTL;
    let without = run(None);
    // With the TTL, `a` restarted (one ORDER, no repeat): x = 0 for `a`; `b` kept
    // both ORDERs (x = 1). Without it, `a` has three ORDERs (x = 2).
    let xs = |e: &Engine| {
        let mut x: Vec<u32> = e.risk_histories(at, 0).0.iter().map(|h| h.x).collect();
        x.sort();
        x
    };
    assert_eq!(xs(&with), vec![0, 1]);
    assert_eq!(xs(&without), vec![1, 2]);
    // More than the TTL after both last ORDERs, nobody is fitted with the TTL.
    let later = T0 + 2 * DAY + 2 * TTL;
    assert!(histories(&with, later).is_empty());
    assert_eq!(histories(&without, later).len(), 2);
}

#[test]
fn the_memory_pass_frees_forgotten_customers_and_a_restore_agrees() {
    let engine = run(Some(TTL));
    let base = engine.save_task(0, Form::Base).unwrap().unwrap();
    let customers = |e: &Engine| e.state_size().entries(StateKind::Customer);
    assert_eq!(customers(&engine), 2);
    // The lower bound passes both last ORDERs + TTL: the pass frees them.
    let far = T0 + 2 * DAY + 2 * TTL;
    engine.advance(&tp(), far);
    engine.evict(far);
    assert_eq!(customers(&engine), 0);
    // A base before and a delta after the pass restore the same state.
    let delta = engine.save_task(0, Form::Delta).unwrap().unwrap();
    let restored = Engine::new(config(Some(TTL)));
    restored
        .restore_tasks(
            &[engaged::state::SavedTask {
                partition: 0,
                base: &base,
                deltas: vec![&delta],
            }],
            1,
        )
        .unwrap();
    assert_eq!(customers(&restored), 0);
    // `a` orders again: a new customer in both.
    for e in [&engine, &restored] {
        e.apply(&tp(), &order(9, "a", far + DAY)).unwrap();
    }
    let day = |e: &Engine| {
        let w = far + 2 * DAY;
        e.advance(&tp(), w);
        snapshot::build(e, w, &[tp()])
            .into_iter()
            .find(|s| s.dimension == "all")
            .unwrap()
    };
    let (a, b) = (day(&engine), day(&restored));
    assert_eq!(a.new_customers, Some(1));
    assert_eq!(a, b);
}
