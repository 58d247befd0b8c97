//! Saved forms of task state: refusing other formats, base + delta chains, customer ids; closing what is due before a read.

use super::task::BASE_FORMAT;
use super::*;
use crate::checkpoint::delta::{self, Form, Merge};
use crate::event::{Event, Millis};
use crate::metrics::Dim;

fn saved<'a>(partition: i32, base: &'a [u8], deltas: &[&'a [u8]]) -> SavedTask<'a> {
    SavedTask {
        partition,
        base,
        deltas: deltas.to_vec(),
    }
}

#[test]
fn a_state_of_another_format_is_refused_not_misread() {
    let e = Engine::new(CoreConfig::default());
    let err = e.restore_task(0, b"\x00\x01\x02 older layout").unwrap_err();
    assert!(err.to_string().contains("engaged-task-state/16"), "{err}");
    assert!(e.tasks().is_empty());
    // The previous formats (15: window buckets each rolled from every staging
    // slot; 14: an activity view per window and per churn start; 13: label tables without a cap; 12: email counts per event; 11: sessions without exit pages; 10: churn without
    // the start cohort; 9: event ids in a map; 8: open sessions by session id,
    // labels as strings) too.
    for old in [
        &b"engaged-task-state/15\n\x00"[..],
        b"engaged-task-state/14\n\x00",
        b"engaged-task-state/13\n\x00",
        b"engaged-task-state/12\n\x00",
        b"engaged-task-state/11\n\x00",
        b"engaged-task-state/10\n\x00",
        b"engaged-task-state/9\n\x00",
        b"engaged-task-state/8\n\x00",
    ] {
        let err = e.restore_task(0, old).unwrap_err();
        assert!(err.to_string().contains("engaged-task-state/16"), "{err}");
    }
    assert!(e.tasks().is_empty());
    // A header with a truncated body is refused too, and nothing is installed.
    let mut bytes = BASE_FORMAT.to_vec();
    bytes.push(0xff);
    assert!(matches!(
        e.restore_tasks(&[saved(0, b"", &[])], 1),
        Err(StateError::Decode(_))
    ));
    assert!(matches!(
        e.restore_tasks(&[saved(1, &bytes, &[])], 2),
        Err(StateError::Decode(_))
    ));
    // A base where a delta belongs, and the other way round, are refused.
    let t = TopicPartition::new("purchases", 2);
    e.advance(&t, 1_000);
    let base = e.save_task(2, Form::Base).unwrap().unwrap();
    let delta = e.save_task(2, Form::Delta).unwrap().unwrap();
    e.drop_task(2);
    assert!(e.restore_tasks(&[saved(2, &delta, &[])], 1).is_err());
    assert!(e.restore_tasks(&[saved(2, &base, &[&base])], 1).is_err());
    assert!(e.tasks().is_empty());
    e.restore_tasks(&[saved(2, &base, &[&delta])], 1).unwrap();
    assert_eq!(e.tasks(), vec![2]);
}

#[test]
fn a_restored_chain_goes_on_with_deltas() {
    use crate::event::{Event, Purchase, PurchaseType};
    let order = |e: &Engine, n: usize, customer: &str| {
        let p = Event::Purchase(Purchase {
            event_id: format!("e{n}"),
            event_time: 1_700_000_000_000 + n as i64 * 1000,
            customer_id: customer.into(),
            order_id: format!("o{n}"),
            kind: PurchaseType::Order,
            amount_minor: 100,
            currency: "EUR".into(),
            cost_minor: None,
            items: 1,
            campaign_id: None,
        });
        e.apply(&TopicPartition::new("purchases", 0), &p).unwrap();
    };
    let first = Engine::new(CoreConfig::default());
    order(&first, 0, "a");
    let base = first.save_task(0, Form::Base).unwrap().unwrap();
    order(&first, 1, "b");
    let d1 = first.save_task(0, Form::Delta).unwrap().unwrap();
    // Restored from base + d1, the next delta adds only what came after d1.
    let second = Engine::new(CoreConfig::default());
    second.restore_tasks(&[saved(0, &base, &[&d1])], 1).unwrap();
    order(&second, 2, "c");
    let d2 = second.save_task(0, Form::Delta).unwrap().unwrap();
    let third = Engine::new(CoreConfig::default());
    third
        .restore_tasks(&[saved(0, &base, &[&d1, &d2])], 1)
        .unwrap();
    assert_eq!(third.state_entries(), second.state_entries());
    let ids = |e: &Engine| e.state_size().entries(memory::StateKind::Customer);
    assert_eq!(ids(&third), 3);
}

#[test]
fn customer_ids_survive_a_save_and_restore() {
    let mut ids = crate::metrics::CustomerIds::default();
    let (a, b) = (ids.get("alice"), ids.get("bob"));
    assert_eq!(ids.get("alice"), a);
    let bytes = postcard::to_stdvec(&ids).unwrap();
    let mut back: crate::metrics::CustomerIds = postcard::from_bytes(&bytes).unwrap();
    assert_eq!((back.name(a), back.name(b)), ("alice", "bob"));
    assert_eq!(back.get("bob"), b);
    assert_eq!(back.len(), 2);
    // A list naming a customer twice is corrupt.
    let twice = postcard::to_stdvec(&["x", "x"]).unwrap();
    assert!(postcard::from_bytes::<crate::metrics::CustomerIds>(&twice).is_err());
}

#[test]
fn released_customer_numbers_are_given_again_through_compaction_bases_and_deltas() {
    use crate::metrics::{CustomerId, CustomerIds};
    let enc = |ids: &CustomerIds, form| delta::in_form(form, || postcard::to_stdvec(ids).unwrap());
    let dec = |b: &[u8], form| -> CustomerIds {
        delta::in_form(form, || postcard::from_bytes(b).unwrap())
    };
    let same = |a: &CustomerIds, b: &CustomerIds| {
        assert_eq!((a.len(), a.live()), (b.len(), b.live()));
        for i in 0..a.len() as u32 {
            let c = CustomerId::from_index(i);
            assert_eq!(a.name(c), b.name(c), "number {i}");
        }
    };
    let mut ids = CustomerIds::default();
    let names: Vec<String> = (0..3000).map(|i| format!("customer-{i:05}")).collect();
    let numbers: Vec<CustomerId> = names.iter().map(|n| ids.get(n)).collect();
    let base = enc(&ids, Form::Base);
    ids.saved();
    // Release two thirds (the arena compacts on the way); new customers take the
    // lowest released numbers, 1, 2, 4, 5, 7; one of them is released again.
    for (i, c) in numbers.iter().enumerate() {
        if i % 3 != 0 {
            ids.release(*c);
        }
    }
    let late: Vec<CustomerId> = (0..5).map(|i| ids.get(&format!("late-{i}"))).collect();
    assert_eq!(late, [1, 2, 4, 5, 7].map(CustomerId::from_index));
    ids.release(late[0]);
    assert_eq!(
        ids.len(),
        3000,
        "no new number while released ones are free"
    );
    assert_eq!(ids.live(), 1000 + 4);
    for (i, c) in numbers.iter().enumerate() {
        let want = match i {
            1 => "",
            2 | 4 | 5 | 7 => "late-",
            _ if i % 3 == 0 => names[i].as_str(),
            _ => "",
        };
        assert!(
            ids.name(*c).starts_with(want) && (want.is_empty() == ids.name(*c).is_empty()),
            "number {i}"
        );
    }
    assert_eq!(
        ids.get(&names[3]),
        numbers[3],
        "a kept customer keeps its number"
    );
    let d1 = enc(&ids, Form::Delta);
    ids.saved();
    // Next period: a number released and given again within it.
    ids.release(late[1]);
    assert_eq!(ids.get("again-1"), CustomerId::from_index(1));
    assert_eq!(ids.get("again-2"), CustomerId::from_index(2));
    assert_eq!(ids.get("again-3"), CustomerId::from_index(8));
    let d2 = enc(&ids, Form::Delta);

    // A base now, and the old base plus both deltas, read the same as the live ids.
    same(&dec(&enc(&ids, Form::Base), Form::Base), &ids);
    let mut chained = dec(&base, Form::Base);
    chained.merge(dec(&d1, Form::Delta)).unwrap();
    chained.saved();
    chained.merge(dec(&d2, Form::Delta)).unwrap();
    same(&chained, &ids);
    // And they go on alike: a returning released customer is a new one, under the lowest free number.
    assert_eq!(chained.get(&names[1]), ids.get(&names[1]));
    assert_eq!(ids.get(&names[1]), CustomerId::from_index(10));
    // A delta that re-gives a number the state holds is corrupt.
    let mut wrong = dec(&base, Form::Base);
    assert!(wrong.merge(dec(&d2, Form::Delta)).is_err());
}

/// `apply` closes what is due once per second of the closing watermark's
/// progress; every read closes the rest first. Here the last event moves the
/// closing watermark 600 ms past the previous close and past the end of the
/// first visitor's session: a snapshot, the histogram and a checkpoint must
/// not see that session open.
#[test]
fn reads_close_what_apply_let_wait() {
    const MIN: i64 = 60_000;
    let t0 = 1_700_000_000_000;
    let view = |id: &str, visitor: &str, t: Millis| {
        Event::PageView(crate::event::PageView {
            event_id: id.into(),
            event_time: t,
            visitor_id: visitor.into(),
            customer_id: None,
            site: "shop".into(),
            page: "/".into(),
            referrer: None,
            channel: None,
        })
    };
    let tp = TopicPartition::new("pageviews", 0);
    let e = Engine::new(CoreConfig::default());
    e.apply(&tp, &view("a", "v", t0)).unwrap();
    // Closing watermark t0 + 30m - 500ms: closed up to there, v's session (ends at
    // t0 + 30m) still open.
    e.apply(&tp, &view("b", "x", t0 + 35 * MIN - 500)).unwrap();
    // Closing watermark t0 + 30m + 100ms: v's session is due, 600 ms after the last close.
    e.apply(&tp, &view("c", "x", t0 + 35 * MIN + 100)).unwrap();
    assert_eq!(e.open_sessions().get(&Dim::All), Some(&1));
    assert_eq!(e.duration_histogram().count, 1);
    let saved = e.save_task(0, Form::Base).unwrap().unwrap();
    let restored = Engine::new(CoreConfig::default());
    restored.restore_task(0, &saved).unwrap();
    assert_eq!(restored.open_sessions().get(&Dim::All), Some(&1));
}

#[test]
fn a_sweep_scored_on_several_threads_equals_one_scored_on_one() {
    use crate::event::{Event, Purchase, PurchaseType};
    use crate::metrics::churn_risk::{Rescore, Sweep};
    const DAY: i64 = 86_400_000;
    // 9,000 customers on two tasks (more than one lock chunk each), 1 to 4 ORDERs
    // each, in time order.
    let mut orders: Vec<(i64, i64, i64)> = (0..9_000i64)
        .flat_map(|n| (0..=n % 4).map(move |k| (n % 97 + k * (n % 31), n, k)))
        .collect();
    orders.sort_unstable();
    let fill = |e: &Engine| {
        for &(day, n, k) in &orders {
            let p = Event::Purchase(Purchase {
                event_id: format!("e{n}-{k}"),
                event_time: 1_700_000_000_000 + day * DAY,
                customer_id: format!("c{n}"),
                order_id: format!("o{n}-{k}"),
                kind: PurchaseType::Order,
                amount_minor: 100 + n % 13,
                currency: "EUR".into(),
                cost_minor: None,
                items: 1,
                campaign_id: None,
            });
            let tp = TopicPartition::new("purchases", (n % 2) as i32);
            e.apply(&tp, &p).unwrap();
        }
    };
    let m = crate::metrics::churn_risk::cdnow_like_model();
    let rescore = |records| Rescore {
        at: 1_700_000_000_000 + 200 * DAY,
        model: &m,
        threshold: 0.5,
        delta: 0.05,
        count_crossings: true,
        previous: None,
        ttl_ms: None,
        records,
    };
    let sweep = |threads, records| {
        let e = Engine::new(CoreConfig::default());
        fill(&e);
        let first = e.rescore(&rescore(records), threads);
        (first, e.rescore(&rescore(true), threads))
    };
    let (one, one_again) = sweep(1, true);
    assert_eq!(one.customers, 9_000);
    assert!(0 < one.at_risk && one.at_risk < 9_000, "{}", one.at_risk);
    assert_eq!(
        one.changed.len(),
        9_000,
        "every risk is published the first time"
    );
    let (four, four_again) = sweep(4, true);
    // (Compared whole, printed short: a sweep holds 9,000 records.)
    let short = |s: &Sweep| (s.customers, s.at_risk, s.crossings, s.changed.len());
    assert!(four == one, "{:?} != {:?}", short(&four), short(&one));
    assert!(four_again == one_again);
    assert!(one_again.changed.is_empty(), "nothing moved since");
    // Without records: the same totals, and the histories still note what was published.
    let (totals, totals_again) = sweep(2, false);
    let expected = Sweep {
        changed: vec![],
        ..one.clone()
    };
    assert!(totals == expected, "{:?}", short(&totals));
    assert!(totals_again == one_again, "{:?}", short(&totals_again));
}

#[test]
fn a_configured_topics_partitions_share_its_name() {
    let cfg = CoreConfig {
        input_topics: vec!["pageviews".into(), "purchases".into()],
        ..CoreConfig::default()
    };
    let e = Engine::new(cfg);
    let (a, b) = (
        e.topic_partition("purchases", 0),
        e.topic_partition("purchases", 3),
    );
    assert!(Arc::ptr_eq(&a.topic, &b.topic));
    assert_eq!((&*a.topic, a.partition, b.partition), ("purchases", 0, 3));
    let other = e.topic_partition("elsewhere", 1);
    assert_eq!(other, TopicPartition::new("elsewhere", 1));
    assert!(!Arc::ptr_eq(&other.topic, &a.topic));
}
