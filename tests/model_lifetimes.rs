//! `engaged::model` against the literature and against `lifetimes` 0.11.3, on
//! the CDNOW calibration data (2,357 customers, 39 weeks). The references are
//! committed fixtures made by `tests/fixtures/lifetimes/make_fixtures.py`, so
//! this runs in plain `cargo test`, without Python.

use std::collections::HashMap;

use engaged::model::special::hyp2f1;
use engaged::model::{
    FitData, FitOptions, GammaGammaParams, History, Model, Params, Scorer, SpendData, gamma_gamma,
};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/lifetimes");

struct Customer {
    id: u32,
    x: u32,
    t_x: f64,
    age: f64,
    m: f64,
}

fn csv(name: &str) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(format!("{DIR}/{name}")).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_owned))
                .collect()
        })
        .collect()
}

fn num(row: &HashMap<String, String>, key: &str) -> f64 {
    row[key]
        .parse()
        .unwrap_or_else(|e| panic!("{key} = {:?}: {e}", row[key]))
}

fn cdnow() -> Vec<Customer> {
    csv("cdnow_summary.csv")
        .iter()
        .map(|r| Customer {
            id: num(r, "id") as u32,
            x: num(r, "x") as u32,
            t_x: num(r, "t_x"),
            age: num(r, "T"),
            m: num(r, "m"),
        })
        .collect()
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/reference.json")).unwrap())
        .unwrap()
}

fn ref_params(json: &serde_json::Value, key: &str) -> (Params, f64) {
    let m = &json[key];
    let f = |k: &str| m[k].as_f64().unwrap();
    (
        Params {
            r: f("r"),
            alpha: f("alpha"),
            a: f("a"),
            b: f("b"),
        },
        f("log_likelihood"),
    )
}

fn fit_data(customers: &[Customer]) -> FitData {
    FitData::new(customers.iter().map(|c| History::new(c.x, c.t_x, c.age))).unwrap()
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs()
}

fn assert_params_close(model: Model, got: &Params, want: &Params, tol: f64) {
    let pairs = [
        ("r", got.r, want.r),
        ("alpha", got.alpha, want.alpha),
        ("a", got.a, want.a),
        ("b", got.b, want.b),
    ];
    for (name, g, w) in pairs {
        assert!(
            rel(g, w) <= tol,
            "{model} {name}: got {g}, want {w} (rel {:e})",
            rel(g, w)
        );
    }
}

#[test]
fn cdnow_fixture_is_the_paper_data() {
    let customers = cdnow();
    assert_eq!(customers.len(), 2357);
    let repeat = customers.iter().filter(|c| c.x > 0).count();
    assert_eq!(repeat, 946);
    assert_eq!(customers.iter().map(|c| u64::from(c.x)).sum::<u64>(), 2_457);
    // Aggregation keeps the likelihood: repeated rows become weights.
    let data = fit_data(&customers);
    assert!(data.len() < customers.len());
    assert_eq!(data.total_weight(), 2357.0);
}

#[test]
fn bg_nbd_fit_reproduces_the_paper() {
    let data = fit_data(&cdnow());
    let fit = Model::BgNbd
        .fit(&data, None, &FitOptions::default())
        .unwrap();
    eprintln!("BG/NBD cold fit on CDNOW: {fit:?}");
    assert!(fit.converged);
    // Fader, Hardie & Lee (2005a), section 5.
    let paper = Params {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };
    assert_params_close(Model::BgNbd, &fit.params, &paper, 0.01);
    assert!(
        rel(fit.log_likelihood, -9582.4) < 0.01,
        "{}",
        fit.log_likelihood
    );
    assert!(
        (fit.log_likelihood - -9582.4).abs() < 0.05,
        "{}",
        fit.log_likelihood
    );
    // And lifetimes' BetaGeoFitter, much tighter.
    let (lt, lt_ll) = ref_params(&reference(), "bg_nbd");
    assert_params_close(Model::BgNbd, &fit.params, &lt, 1e-4);
    assert!(
        fit.log_likelihood >= lt_ll - 1e-6,
        "{} vs {lt_ll}",
        fit.log_likelihood
    );
    // Our likelihood at lifetimes' parameters is lifetimes' likelihood.
    assert!(rel(Model::BgNbd.log_likelihood(&lt, &data), lt_ll) < 1e-10);
}

#[test]
fn mbg_nbd_fit_matches_lifetimes() {
    let data = fit_data(&cdnow());
    let fit = Model::MbgNbd
        .fit(&data, None, &FitOptions::default())
        .unwrap();
    eprintln!("MBG/NBD cold fit on CDNOW: {fit:?}");
    assert!(fit.converged);
    let (lt, lt_ll) = ref_params(&reference(), "mbg_nbd");
    assert_params_close(Model::MbgNbd, &fit.params, &lt, 0.01);
    assert!(rel(fit.log_likelihood, lt_ll) < 0.01);
    assert!(
        fit.log_likelihood >= lt_ll - 1e-6,
        "{} vs {lt_ll}",
        fit.log_likelihood
    );
    assert!(rel(Model::MbgNbd.log_likelihood(&lt, &data), lt_ll) < 1e-10);
}

#[test]
fn warm_start_from_lifetimes_params_converges_fast() {
    let data = fit_data(&cdnow());
    let json = reference();
    for (model, key) in [(Model::BgNbd, "bg_nbd"), (Model::MbgNbd, "mbg_nbd")] {
        let (lt, _) = ref_params(&json, key);
        let cold = model.fit(&data, None, &FitOptions::default()).unwrap();
        let warm = model.fit(&data, Some(lt), &FitOptions::default()).unwrap();
        eprintln!(
            "{model}: cold {} iterations / {} evaluations, warm {} / {}",
            cold.iterations, cold.evaluations, warm.iterations, warm.evaluations
        );
        assert!(warm.converged && warm.iterations < cold.iterations);
        assert_params_close(model, &warm.params, &cold.params, 1e-5);
    }
}

/// Largest absolute differences (P(alive), E[X(10)], E[X(39)]) against the
/// lifetimes predictions in `predictions.csv`.
fn max_prediction_diffs(model: Model, params: Params, prefix: &str) -> [f64; 3] {
    let customers = cdnow();
    let preds = csv("predictions.csv");
    assert_eq!(preds.len(), customers.len());
    let scorer = Scorer::new(model, params);
    let mut worst = [0.0f64; 3];
    for (c, p) in customers.iter().zip(&preds) {
        assert_eq!(c.id, num(p, "id") as u32);
        let got = [
            scorer.p_alive(c.x, c.t_x, c.age),
            scorer.expected_purchases(c.x, c.t_x, c.age, 10.0),
            scorer.expected_purchases(c.x, c.t_x, c.age, 39.0),
        ];
        let want = [
            num(p, &format!("{prefix}_p_alive")),
            num(p, &format!("{prefix}_e10")),
            num(p, &format!("{prefix}_e39")),
        ];
        for i in 0..3 {
            let d = (got[i] - want[i]).abs();
            assert!(d.is_finite(), "customer {}: {got:?} vs {want:?}", c.id);
            worst[i] = worst[i].max(d);
        }
    }
    worst
}

#[test]
fn per_customer_predictions_match_lifetimes_with_its_params() {
    let json = reference();
    for (model, key, prefix) in [
        (Model::BgNbd, "bg_nbd", "bg"),
        (Model::MbgNbd, "mbg_nbd", "mbg"),
    ] {
        let (lt, _) = ref_params(&json, key);
        let worst = max_prediction_diffs(model, lt, prefix);
        eprintln!("{model} with lifetimes' params: max |diff| P(alive), E10, E39 = {worst:?}");
        // Same parameters, same formulas: agreement to rounding.
        assert!(worst.iter().all(|d| *d < 1e-8), "{model}: {worst:?}");
    }
}

#[test]
fn per_customer_predictions_match_lifetimes_with_our_params() {
    let data = fit_data(&cdnow());
    for (model, prefix) in [(Model::BgNbd, "bg"), (Model::MbgNbd, "mbg")] {
        let fit = model.fit(&data, None, &FitOptions::default()).unwrap();
        let worst = max_prediction_diffs(model, fit.params, prefix);
        eprintln!("{model} with our params: max |diff| P(alive), E10, E39 = {worst:?}");
        assert!(worst.iter().all(|d| *d < 0.005), "{model}: {worst:?}");
    }
}

#[test]
fn bg_nbd_rates_one_time_buyers_alive_and_mbg_nbd_does_not() {
    let json = reference();
    let (bg, _) = ref_params(&json, "bg_nbd");
    let (mbg, _) = ref_params(&json, "mbg_nbd");
    // Customer 3 of CDNOW: x = 0 at T = 38.86 weeks.
    assert_eq!(Model::BgNbd.p_alive(&bg, 0, 0.0, 38.86), 1.0);
    let p = Model::MbgNbd.p_alive(&mbg, 0, 0.0, 38.86);
    assert!(p < 0.5, "{p}");
    assert_eq!(Model::default(), Model::MbgNbd);
}

fn spend_data(customers: &[Customer]) -> SpendData {
    SpendData::new(customers.iter().map(|c| (c.x, c.m))).unwrap()
}

#[test]
fn gamma_gamma_matches_lifetimes() {
    let customers = cdnow();
    let data = spend_data(&customers);
    assert_eq!(data.total_weight(), 946.0);
    let json = reference();
    let g = &json["gamma_gamma"];
    let lt = GammaGammaParams {
        p: g["p"].as_f64().unwrap(),
        q: g["q"].as_f64().unwrap(),
        v: g["v"].as_f64().unwrap(),
    };
    let lt_ll = g["log_likelihood"].as_f64().unwrap();
    assert!(rel(gamma_gamma::log_likelihood(&lt, &data), lt_ll) < 1e-10);

    let fit = gamma_gamma::fit(&data, None, &FitOptions::default()).unwrap();
    eprintln!("Gamma-Gamma cold fit on CDNOW repeat customers: {fit:?}");
    assert!(fit.converged);
    for (name, got, want) in [
        ("p", fit.params.p, lt.p),
        ("q", fit.params.q, lt.q),
        ("v", fit.params.v, lt.v),
    ] {
        assert!(rel(got, want) < 0.01, "{name}: {got} vs {want}");
    }
    // Hardie's note 025 reports p = 6.25, q = 3.74, γ = 15.44.
    assert!(rel(fit.params.p, 6.25) < 0.01 && rel(fit.params.q, 3.74) < 0.01);
    assert!(rel(fit.params.v, 15.44) < 0.01);
    assert!(fit.log_likelihood >= lt_ll - 1e-6);

    let preds = csv("predictions.csv");
    let mut worst = [0.0f64; 2];
    for (c, p) in customers.iter().zip(&preds) {
        if c.x == 0 {
            assert_eq!(p["gg_profit"], "");
            continue;
        }
        let want = num(p, "gg_profit");
        for (i, params) in [lt, fit.params].iter().enumerate() {
            let got = params.expected_order_value(c.x, c.m).unwrap();
            worst[i] = worst[i].max(rel(got, want));
        }
    }
    eprintln!(
        "Gamma-Gamma expected order value: max rel diff with lifetimes' / our params = {worst:?}"
    );
    assert!(worst[0] < 1e-9, "{worst:?}");
    assert!(worst[1] < 0.01, "{worst:?}");
}

#[test]
fn hyp2f1_matches_mpmath() {
    let rows = csv("hyp2f1.csv");
    assert!(rows.len() > 200);
    let mut worst = 0.0f64;
    let mut bad = Vec::new();
    for r in &rows {
        let (a, b, c, z) = (num(r, "a"), num(r, "b"), num(r, "c"), num(r, "z"));
        let want = num(r, "mpmath");
        let got = hyp2f1(a, b, c, z);
        let err = (got - want).abs() / want.abs().max(1e-300);
        if err.is_nan() || err >= 1e-10 {
            bad.push(format!(
                "2F1({a}, {b}; {c}; {z}) = {got}, mpmath {want}, rel {err:e}"
            ));
        }
        worst = worst.max(err);
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    eprintln!(
        "hyp2f1: {} cases, max rel error vs mpmath {worst:e}",
        rows.len()
    );
}
