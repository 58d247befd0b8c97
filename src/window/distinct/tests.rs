//! Brute-force checks of [`SharedDistinct`]: every count equals a scan of the events.

use super::*;
use crate::checkpoint::delta::{Form, in_form};
use proptest::prelude::*;

/// Distinct keys with an event in `[end - len, end)`, by scanning every event.
fn brute(events: &[(u8, i64)], len: i64, end: i64) -> i64 {
    let mut keys: Vec<u8> = events
        .iter()
        .filter(|(_, t)| *t >= end - len && *t < end)
        .map(|(k, _)| *k)
        .collect();
    keys.sort();
    keys.dedup();
    keys.len() as i64
}

#[test]
fn counts_a_key_once_per_window() {
    let mut d = SharedDistinct::new(&[(60, 10)]);
    d.insert(&1u8, 5);
    d.insert(&1u8, 15);
    d.insert(&2u8, 15);
    assert_eq!(d.count_at(0, 10), 1); // [-50, 10): a@5
    assert_eq!(d.count_at(0, 20), 2); // a, b
    assert_eq!(d.count_at(0, 70), 2); // [10, 70): a@15, b@15
    assert_eq!(d.count_at(0, 80), 0); // [20, 80)
}

#[test]
fn views_of_different_buckets_share_one_key_list() {
    // Buckets of 10 and 15: the grain is 5.
    let mut d = SharedDistinct::new(&[(60, 10), (90, 15), (30, 30)]);
    assert_eq!(d.grain_ms, 5);
    let events = [(1u8, 3), (1, 12), (2, 14), (1, 100), (3, 44), (2, 95)];
    for (k, t) in events {
        d.insert(&k, t);
    }
    assert_eq!(d.keys(), 3);
    for (view, len, b) in [(0, 60, 10), (1, 90, 15), (2, 30, 30)] {
        for end in (0..=300).step_by(b as usize) {
            assert_eq!(
                d.count_at(view, end),
                brute(&events, len, end),
                "view {view} end {end}"
            );
        }
    }
}

#[test]
fn a_far_future_event_does_not_allocate_the_positions_up_to_it() {
    let mut d = SharedDistinct::new(&[(60_000, 1_000)]);
    d.insert(&1u32, 0);
    d.insert(&2u32, 1_000_000_000_000); // 30 years ahead, a billion buckets
    assert!(d.positions() < 10 * PAGE, "{} positions", d.positions());
    assert_eq!(d.count_at(0, 1_000), 1);
    assert_eq!(d.count_at(0, 1_000_000_001_000), 1);
    assert_eq!(d.count_at(0, 1_000_000_061_000), 0);
    d.fold_to(0, 500_000_000_000);
    assert_eq!(d.count_at(0, 1_000_000_001_000), 1);
}

fn encode(d: &SharedDistinct<u32>, form: Form) -> Vec<u8> {
    in_form(form, || postcard::to_allocvec(d)).expect("encodes")
}

fn decode(bytes: &[u8], form: Form) -> Result<SharedDistinct<u32>, postcard::Error> {
    in_form(form, || postcard::from_bytes(bytes))
}

#[test]
fn corrupt_saved_buckets_are_an_error_not_a_panic() {
    let mut d = SharedDistinct::new(&[(60, 10), (120, 20)]);
    d.insert(&1u32, 5);
    d.insert(&1u32, 25);
    d.insert(&2u32, 45);
    let good = encode(&d, Form::Base);
    // Every single-byte change decodes to some counter or fails cleanly.
    for i in 0..good.len() {
        for v in [0u8, 0x7f, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] = v;
            let _ = decode(&bad, Form::Base);
        }
    }
    // A bucket number whose time does not fit is refused.
    let mut huge: Dense<u32, Buckets> = Dense::default();
    huge.insert(1, SmallVec::from_slice(&[i64::MAX / 2]));
    let saved = Saved {
        grain_ms: 10,
        origin: 0,
        keys: huge,
        views: vec![SavedRing::from(&DiffRing::new(60, 10))],
        trim_below: None::<Millis>,
        drop_below: None::<Millis>,
        swept_at: None::<Millis>,
    };
    let bytes = in_form(Form::Base, || postcard::to_allocvec(&saved)).expect("encodes");
    assert!(decode(&bytes, Form::Base).is_err());
    // Buckets out of order (a zero step) are refused.
    let mut twice = d.clone();
    twice.keys.insert(3, SmallVec::from_slice(&[10, 10]));
    assert!(decode(&encode(&twice, Form::Base), Form::Base).is_err());
    // A grain that does not fit the views is refused.
    let mut odd = d.clone();
    odd.grain_ms = 7;
    assert!(decode(&encode(&odd, Form::Base), Form::Base).is_err());
}

#[test]
fn saved_buckets_are_small_numbers_and_come_back_as_times() {
    // Real epoch times, a day-long window of 24-minute buckets, as by default.
    let (b, len) = (24 * 60_000, 24 * 3_600_000);
    let t0 = 1_700_000_000_000;
    let mut d = SharedDistinct::new(&[(len, b)]);
    for k in 0..1_000u32 {
        d.insert(&k, t0 + i64::from(k) * 1_000);
        d.insert(&k, t0 + 3 * b + i64::from(k) * 1_000);
    }
    let first_end = (t0 + 2 * b).div_euclid(b) * b;
    d.fold_to(0, first_end);
    d.forget_before(t0);
    let bytes = encode(&d, Form::Base);
    // Per key: the key, a length and two one-byte bucket numbers (absolute times
    // would take six bytes each).
    assert!(bytes.len() < 1_000 * 7, "{} bytes", bytes.len());
    let back = decode(&bytes, Form::Base).expect("decodes");
    for end in (0..=40).map(|i| first_end + i * b) {
        assert_eq!(back.count_at(0, end), d.count_at(0, end), "end {end}");
    }
    assert_eq!(back.keys.get(&7), d.keys.get(&7));
}

/// Views with buckets of 10 or 20 and lengths of 1–6 buckets: a grain of 10.
fn views(lens: &[i64]) -> Vec<(i64, i64)> {
    lens.iter()
        .enumerate()
        .map(|(i, l)| {
            let b = if i % 2 == 0 { 10 } else { 20 };
            (l * b, b)
        })
        .collect()
}

proptest! {
    #[test]
    fn equals_brute_force_in_any_order(
        mut events in proptest::collection::vec((0u8..6, 0i64..400), 0..80),
        shuffle in any::<u64>(),
        lens in proptest::collection::vec(1i64..7, 1..4),
    ) {
        let views = views(&lens);
        let mut d = SharedDistinct::new(&views);
        // Any arrival order gives the same answers.
        let n = events.len();
        if n > 1 {
            for i in 0..n {
                let j = (shuffle.wrapping_mul(i as u64 + 7) % n as u64) as usize;
                events.swap(i, j);
            }
        }
        for (k, t) in &events {
            d.insert(k, *t);
        }
        for (v, (len, b)) in views.iter().enumerate() {
            for end in (0..=600).step_by(*b as usize) {
                prop_assert_eq!(d.count_at(v, end), brute(&events, *len, end), "view {} end {}", v, end);
            }
        }
    }

    #[test]
    fn a_base_and_a_delta_restore_the_counts(
        events in proptest::collection::vec((0u32..8, -400i64..400), 0..60),
        cut in 0usize..60,
        fold in -20i64..20,
        lens in proptest::collection::vec(1i64..7, 1..4),
    ) {
        // Times on both sides of the origin, so that saved bucket numbers are
        // negative and positive.
        let views = views(&lens);
        let mut d = SharedDistinct::new(&views);
        let cut = cut.min(events.len());
        for (k, t) in &events[..cut] {
            d.insert(k, *t);
        }
        for v in 0..views.len() {
            d.fold_to(v, fold * 20 - 400);
        }
        let base = encode(&d, Form::Base);
        d.saved();
        for (k, t) in &events[cut..] {
            d.insert(k, *t);
        }
        d.forget_before(fold * 20);
        let delta = encode(&d, Form::Delta);
        let mut back = decode(&base, Form::Base).expect("decodes");
        back.merge(decode(&delta, Form::Delta).expect("decodes")).expect("merges");
        for v in 0..views.len() {
            for end in (-30..=60).map(|i| i * 20).filter(|e| *e >= fold * 20 - 400) {
                prop_assert_eq!(back.count_at(v, end), d.count_at(v, end), "view {} end {}", v, end);
            }
        }
        let mut keys: Vec<_> = back.keys.iter().map(|(k, v)| (k, v.clone())).collect();
        let mut want: Vec<_> = d.keys.iter().map(|(k, v)| (k, v.clone())).collect();
        keys.sort();
        want.sort();
        prop_assert_eq!(keys, want);
    }

    #[test]
    fn folding_and_forgetting_follow_a_moving_watermark(
        events in proptest::collection::vec((0u8..6, 0i64..60, -30i64..0), 0..150),
        lens in proptest::collection::vec(1i64..7, 1..4),
        behind in 0i64..20,
    ) {
        // Events arrive roughly in time order with bounded disorder (a lateness
        // of 30); queries happen at the watermark behind them, as the engine does,
        // and the lower bound given to forget lags it by `behind`.
        let views = views(&lens);
        let mut d = SharedDistinct::new(&views);
        let mut seen = vec![];
        let mut max_t = 0i64;
        for (i, (k, step, jitter)) in events.iter().enumerate() {
            let t = (i as i64 * 5 + step + jitter).max(0);
            let watermark = max_t - 30;
            if t < watermark {
                continue; // late: rejected before it reaches the structure
            }
            d.insert(k, t);
            seen.push((*k, t));
            max_t = max_t.max(t);
            let w = max_t - 30;
            for (v, (len, b)) in views.iter().enumerate() {
                let end = w.div_euclid(*b) * b;
                prop_assert_eq!(d.count_at(v, end), brute(&seen, *len, end));
                d.fold_to(v, end);
            }
            d.forget_before(w - behind);
            for (v, (len, b)) in views.iter().enumerate() {
                let end = w.div_euclid(*b) * b;
                for ahead in 0..8 {
                    let e = end + ahead * b;
                    prop_assert_eq!(d.count_at(v, e), brute(&seen, *len, e), "view {} end {}", v, e);
                }
            }
        }
    }

    #[test]
    fn events_up_to_the_tolerance_behind_the_lower_bound_stay_exact(
        events in proptest::collection::vec((0u8..4, 0i64..300), 0..60),
        late in proptest::collection::vec((0u8..4, 0i64..1000), 0..20),
        lens in proptest::collection::vec(1i64..7, 1..4),
    ) {
        // An input woken from idleness delivers events behind the task's lower
        // bound, but no further behind than the shortest view's length + bucket.
        let views = views(&lens);
        let tolerance = views.iter().map(|(l, b)| l + b).min().expect("a view");
        let mut d = SharedDistinct::new(&views);
        let mut seen: Vec<(u8, i64)> = vec![];
        for (k, t) in &events {
            d.insert(k, *t);
            seen.push((*k, *t));
        }
        let lower = 300;
        d.forget_before(lower);
        for (k, t) in &late {
            let t = lower - tolerance + t % (tolerance + 200);
            d.insert(k, t);
            seen.push((*k, t));
        }
        for (v, (len, b)) in views.iter().enumerate() {
            for end in (0..=900).step_by(*b as usize) {
                prop_assert_eq!(d.count_at(v, end), brute(&seen, *len, end), "view {} end {}", v, end);
            }
        }
    }
}
