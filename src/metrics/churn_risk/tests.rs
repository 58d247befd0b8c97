use super::*;

#[test]
fn an_exact_sum_does_not_depend_on_the_order_of_its_terms() {
    // Terms whose f64 sum depends on the order: 1e16 + 1 + 1 - 1e16.
    let terms = [1e16, 1.0, 1.0, -1e16, 0.1, 123_456.789, 1e-9];
    let (mut forward, mut backward) = (ExactSum::default(), ExactSum::default());
    terms.iter().for_each(|t| forward.add(*t));
    terms.iter().rev().for_each(|t| backward.add(*t));
    assert_eq!(forward, backward);
    assert!(
        (forward.get() - 123_458.889).abs() < 1e-6,
        "{}",
        forward.get()
    );
    let naive: f64 = terms.iter().sum();
    let naive_back: f64 = terms.iter().rev().sum();
    assert_ne!(naive, naive_back, "the terms do show the problem");
}

fn model() -> RiskModel {
    cdnow_like_model()
}

#[test]
fn histories_are_a_function_of_the_set_of_orders() {
    let mut a = RiskState::new(&[]);
    let mut b = RiskState::new(&[]);
    let mut ids = crate::metrics::CustomerIds::default();
    let c = ids.get("c");
    let orders = [(10 * 86_400_000, 500), (0, 300), (30 * 86_400_000, 700)];
    for (t, v) in orders {
        a.on_order(c, t, v);
    }
    for (t, v) in orders.iter().rev() {
        b.on_order(c, *t, *v);
    }
    let (ha, hb) = (a.customers.get(&c).unwrap(), b.customers.get(&c).unwrap());
    assert_eq!(
        (ha.first, ha.first_amount, ha.last, ha.orders),
        (0, 300, 30 * 86_400_000, 3)
    );
    assert_eq!(
        (hb.first, hb.first_amount, hb.last, hb.orders),
        (ha.first, ha.first_amount, ha.last, ha.orders)
    );
    assert_eq!(ha.rfm(40 * 86_400_000), (2, 30.0, 40.0));
    assert_eq!(ha.repeat_mean(), Some(600.0));
}

#[test]
fn risk_grows_with_silence_and_crossings_are_counted_once() {
    let spec = [WindowSpec::with_default_buckets("30d", 30 * 86_400_000)];
    let mut st = RiskState::new(&spec);
    let mut ids = crate::metrics::CustomerIds::default();
    let c = ids.get("c");
    for day in [0, 7, 14, 21] {
        st.on_order(c, day * 86_400_000, 1000);
    }
    let m = model();
    let early = st.rescore(&ids, 22 * 86_400_000, &m, 0.7, 0.1, true);
    assert_eq!(
        (early.at_risk, early.crossings, early.changed.len()),
        (0, 0, 1)
    );
    // A year of silence after weekly orders: very likely gone.
    let late = st.rescore(&ids, 400 * 86_400_000, &m, 0.7, 0.1, true);
    assert_eq!((late.at_risk, late.crossings), (1, 1));
    assert!(late.changed[0].churn_risk > 0.7 && late.changed[0].at_risk);
    let again = st.rescore(&ids, 401 * 86_400_000, &m, 0.7, 0.1, true);
    assert_eq!(
        (again.at_risk, again.crossings, again.changed.len()),
        (1, 0, 0)
    );
    assert_eq!(st.collect(0, 371 * 86_400_000, 401 * 86_400_000), 1);
}

#[test]
fn a_refits_first_sweep_counts_what_time_did_not_what_the_refit_did() {
    let spec = [WindowSpec::with_default_buckets("30d", 30 * 86_400_000)];
    let mut st = RiskState::new(&spec);
    let mut ids = crate::metrics::CustomerIds::default();
    let (steady, gone) = (ids.get("steady"), ids.get("gone"));
    for day in [0, 7, 14, 21] {
        st.on_order(steady, day * 86_400_000, 1000);
        st.on_order(gone, (day - 400) * 86_400_000, 1000);
    }
    let (old, new) = (model(), {
        // A refit that rates everybody as far riskier (most drop out after a purchase).
        let params = Params {
            r: 0.525,
            alpha: 6.18 * 7.0,
            a: 50.0,
            b: 0.5,
        };
        RiskModel::new(Model::MbgNbd, params, 0.0, 0, true, None)
    });
    let sweep = |st: &mut RiskState, day: i64, m: &RiskModel, prev: Option<&RiskModel>| {
        let r = Rescore {
            at: day * 86_400_000,
            model: m,
            threshold: 0.7,
            delta: 0.1,
            count_crossings: prev.is_none(),
            previous: prev,
            ttl_ms: None,
            records: true,
        };
        st.rescore_range(&ids, 0..2, &r)
    };
    let risk = |m: &RiskModel, x: u32, t_x: f64, age: f64| {
        1.0 - m.scorer.score(x, t_x, age, HORIZON_DAYS).p_alive
    };
    // The premises: `steady` is below under the old model and above under the
    // new one; `gone` (silent for 400 days) is above under the old one.
    assert!(risk(&old, 3, 21.0, 22.0) < 0.7);
    assert!(
        risk(&new, 3, 21.0, 23.0) >= 0.7,
        "the refit moves `steady` above"
    );
    assert!(
        risk(&old, 3, 21.0, 423.0) >= 0.7,
        "time alone moved `gone` above"
    );
    st.customers.get_mut(&gone).unwrap().above = false;
    let first = sweep(&mut st, 22, &old, None);
    assert_eq!(
        (first.crossings, first.at_risk),
        (1, 1),
        "`gone` crosses on a regular sweep"
    );
    st.customers.get_mut(&gone).unwrap().above = false;
    // The refit's first sweep: both are above under the new model; only `gone`,
    // whom the old model also puts above, is a crossing.
    let refit = sweep(&mut st, 23, &new, Some(&old));
    assert_eq!((refit.at_risk, refit.crossings), (2, 1));
    assert_eq!(st.collect(0, 0, 24 * 86_400_000), 2);
    // Without a previous model (the first sweep ever), none counts.
    let mut fresh = RiskState::new(&spec);
    for day in [0, 7, 14, 21] {
        fresh.on_order(gone, (day - 400) * 86_400_000, 1000);
    }
    let r = Rescore {
        at: 23 * 86_400_000,
        model: &old,
        threshold: 0.7,
        delta: 0.1,
        count_crossings: false,
        previous: None,
        ttl_ms: None,
        records: true,
    };
    let s = fresh.rescore_range(&ids, 0..2, &r);
    assert_eq!((s.at_risk, s.crossings), (1, 0));
}

#[test]
fn a_sweep_in_chunks_equals_one_sweep_over_everybody() {
    let spec = [WindowSpec::with_default_buckets("30d", 30 * 86_400_000)];
    let mut ids = crate::metrics::CustomerIds::default();
    let mut whole = RiskState::new(&spec);
    // 300 customers, every third without an ORDER (numbers the sweep skips).
    for i in 0..300i64 {
        let c = ids.get(&format!("c{i}"));
        if i % 3 == 2 {
            continue;
        }
        for k in 0..(1 + i % 5) {
            whole.on_order(c, (i + 11 * k) * 86_400_000, 100 + i);
        }
    }
    let mut chunked = whole.clone();
    let m = model();
    for at_day in [100, 250, 400] {
        let at = at_day * 86_400_000;
        let one = whole.rescore(&ids, at, &m, 0.5, 0.05, true);
        let r = Rescore {
            at,
            model: &m,
            threshold: 0.5,
            delta: 0.05,
            count_crossings: true,
            previous: None,
            ttl_ms: None,
            records: true,
        };
        let mut parts = Sweep::default();
        let mut from = 0;
        for to in [1, 7, 64, 65, 200, 300] {
            parts.merge(chunked.rescore_range(&ids, from..to, &r));
            from = to;
        }
        assert_eq!(parts, one, "at day {at_day}");
        assert!(one.at_risk > 0, "{one:?}");
        // Customers whose first ORDER is after the sweep's watermark are not scored.
        let expected = (0..300)
            .filter(|i| i % 3 != 2 && i * 86_400_000 <= at)
            .count();
        assert_eq!(one.customers, expected as u64);
    }
    let window = (371 * 86_400_000, 401 * 86_400_000);
    assert_eq!(
        chunked.collect(0, window.0, window.1),
        whole.collect(0, window.0, window.1)
    );
}

#[test]
fn samples_are_uniform_and_deterministic() {
    assert_eq!(sample_threshold(10, 5), None);
    let k = sample_threshold(1_000, 10_000).unwrap();
    let kept = (0..10_000)
        .filter(|i| sample_hash(&format!("c{i}")) < k)
        .count();
    assert!((800..1200).contains(&kept), "{kept}");
}
