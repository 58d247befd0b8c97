use super::*;
use crate::model::History;
use crate::model::simulate::simulate;
use rand::SeedableRng;
use rand::rngs::StdRng;

const CDNOW_BG: Params = Params {
    r: 0.242_593,
    alpha: 4.413_532,
    a: 0.792_886,
    b: 2.425_752,
};
const CDNOW_MBG: Params = Params {
    r: 0.524_838,
    alpha: 6.182_988,
    a: 0.891_356,
    b: 1.614_000,
};

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn sample(model: Model, p: &Params, n: usize, seed: u64) -> FitData {
    let mut rng = StdRng::seed_from_u64(seed);
    let ages: Vec<f64> = (0..n)
        .map(|i| 20.0 + 30.0 * (i as f64 / n as f64))
        .collect();
    FitData::new(simulate(model, p, &ages, &mut rng)).unwrap()
}

#[test]
fn data_likelihood_is_the_sum_of_customer_likelihoods() {
    let rows = [
        History::new(0, 0.0, 30.0),
        History::new(0, 0.0, 30.0),
        History::new(1, 2.5, 30.0),
        History::new(7, 28.0, 35.0),
        History::new(3, 0.5, 12.0),
    ];
    let data = FitData::new(rows).unwrap();
    for model in [Model::BgNbd, Model::MbgNbd] {
        let p = CDNOW_MBG;
        let want: f64 = rows
            .iter()
            .map(|h| model.customer_log_likelihood(&p, h.x, h.t_x, h.age))
            .sum();
        let got = model.log_likelihood(&p, &data);
        assert!(rel(got, want) < 1e-13, "{model}: {got} vs {want}");
    }
}

#[test]
fn analytic_gradient_matches_finite_differences() {
    let data = sample(Model::MbgNbd, &CDNOW_MBG, 500, 7);
    for model in [Model::BgNbd, Model::MbgNbd] {
        let p = Params {
            r: 0.7,
            alpha: 9.0,
            a: 1.3,
            b: 0.8,
        };
        let (_, grad) = evaluate::<true>(model, &p, &data);
        let theta = to_theta(&p);
        for i in 0..4 {
            let h = 1e-6;
            let (mut up, mut down) = (theta, theta);
            up[i] += h;
            down[i] -= h;
            let numeric = (model.log_likelihood(&from_theta(&up), &data)
                - model.log_likelihood(&from_theta(&down), &data))
                / (2.0 * h);
            let natural = [p.r, p.alpha, p.a, p.b][i];
            let analytic = grad[i] * natural;
            assert!(
                (analytic - numeric).abs() < 1e-5 * numeric.abs().max(1.0),
                "{model} param {i}: {analytic} vs {numeric}"
            );
        }
    }
}

#[test]
fn fit_recovers_simulated_parameters() {
    let truth = Params {
        r: 0.8,
        alpha: 6.0,
        a: 0.9,
        b: 2.5,
    };
    for model in [Model::BgNbd, Model::MbgNbd] {
        let data = sample(model, &truth, 20_000, 11);
        let fit = model.fit(&data, None, &FitOptions::default()).unwrap();
        assert!(fit.converged, "{model}: {fit:?}");
        let p = fit.params;
        // Standard errors at n = 20k are ~5-10% for a and b.
        assert!(rel(p.r, truth.r) < 0.1, "{model}: {p:?}");
        assert!(rel(p.alpha, truth.alpha) < 0.15, "{model}: {p:?}");
        assert!(rel(p.a, truth.a) < 0.3, "{model}: {p:?}");
        assert!(rel(p.b, truth.b) < 0.3, "{model}: {p:?}");
        let at_truth = model.log_likelihood(&truth, &data);
        assert!(fit.log_likelihood >= at_truth, "{model}");
    }
}

#[test]
fn warm_start_converges_in_fewer_iterations() {
    let data = sample(Model::MbgNbd, &CDNOW_MBG, 5_000, 3);
    let opts = FitOptions::default();
    let cold = Model::MbgNbd.fit(&data, None, &opts).unwrap();
    let nudged = Params {
        r: cold.params.r * 1.05,
        alpha: cold.params.alpha * 0.95,
        a: cold.params.a * 1.05,
        b: cold.params.b * 0.95,
    };
    let warm = Model::MbgNbd.fit(&data, Some(nudged), &opts).unwrap();
    assert!(cold.converged && warm.converged);
    assert!(
        warm.iterations < cold.iterations,
        "{} vs {}",
        warm.iterations,
        cold.iterations
    );
    assert!(rel(warm.log_likelihood, cold.log_likelihood) < 1e-10);
    // An invalid warm start falls back to the cold start.
    let bad = Params { r: -1.0, ..nudged };
    let fallback = Model::MbgNbd.fit(&data, Some(bad), &opts).unwrap();
    assert_eq!(fallback.iterations, cold.iterations);
}

#[test]
fn degenerate_data_does_not_claim_convergence() {
    // Nobody ever buys again: the BG/NBD likelihood's supremum is at r -> 0.
    let rows: Vec<History> = (0..200)
        .map(|i| History::new(0, 0.0, 10.0 + i as f64))
        .collect();
    let data = FitData::new(rows).unwrap();
    let fit = Model::BgNbd
        .fit(&data, None, &FitOptions::default())
        .unwrap();
    assert!(!fit.converged, "{fit:?}");
    assert!(fit.log_likelihood.is_finite());
}

#[test]
fn p_alive_boundaries() {
    for model in [Model::BgNbd, Model::MbgNbd] {
        let s = Scorer::new(model, CDNOW_MBG);
        // Bought just now: the odds of being dead are a/(b+x-1+s).
        let (a, b) = (CDNOW_MBG.a, CDNOW_MBG.b);
        let shift = model.shift();
        for x in [1u32, 2, 10] {
            let want = 1.0 / (1.0 + a / (b + f64::from(x) - 1.0 + shift));
            assert!(rel(s.p_alive(x, 30.0, 30.0), want) < 1e-14);
        }
        // Long silence: P(alive) -> 0 for repeat buyers.
        assert!(s.p_alive(3, 1.0, 1e6) < 1e-6);
        // Monotone in the silence.
        assert!(s.p_alive(3, 20.0, 30.0) > s.p_alive(3, 10.0, 30.0));
    }
    // BG/NBD: one-time buyers are certainly alive; MBG/NBD: they age out.
    let bg = Scorer::new(Model::BgNbd, CDNOW_BG);
    assert_eq!(bg.p_alive(0, 0.0, 1e6), 1.0);
    let mbg = Scorer::new(Model::MbgNbd, CDNOW_MBG);
    let fresh = mbg.p_alive(0, 0.0, 0.0);
    assert!(rel(fresh, CDNOW_MBG.b / (CDNOW_MBG.a + CDNOW_MBG.b)) < 1e-14);
    assert!(mbg.p_alive(0, 0.0, 39.0) < fresh);
    // Clamping: t_x beyond T is T, t_x of a zero-repeat customer is 0.
    assert_eq!(mbg.p_alive(2, 50.0, 30.0), mbg.p_alive(2, 30.0, 30.0));
    assert_eq!(mbg.p_alive(0, 5.0, 30.0), mbg.p_alive(0, 0.0, 30.0));
}

#[test]
fn expected_purchases_matches_the_original_form() {
    // lifetimes' formula with a direct 2F1, on moderate inputs.
    for model in [Model::BgNbd, Model::MbgNbd] {
        let p = CDNOW_MBG;
        let s = model.shift();
        for &(x, t_x, age, t) in &[
            (0u32, 0.0, 30.0, 10.0),
            (2, 20.0, 38.0, 39.0),
            (5, 10.0, 30.0, 1.0),
            (15, 37.0, 38.0, 100.0),
        ] {
            let xf = f64::from(x);
            let z = t / (p.alpha + age + t);
            let f =
                crate::model::special::hyp2f1(p.r + xf, p.b + xf + s, p.a + p.b + xf - 1.0 + s, z);
            let num = (p.a + p.b + xf - 1.0 + s) / (p.a - 1.0)
                * (1.0 - f * ((p.alpha + age) / (p.alpha + age + t)).powf(p.r + xf));
            let den = if x == 0 && model == Model::BgNbd {
                1.0
            } else {
                1.0 + p.a / (p.b + xf - 1.0 + s)
                    * ((p.alpha + age) / (p.alpha + t_x)).powf(p.r + xf)
            };
            let got = model.expected_purchases(&p, x, t_x, age, t);
            assert!(
                rel(got, num / den) < 1e-10,
                "{model} {x} {t_x} {age} {t}: {got} vs {}",
                num / den
            );
        }
    }
}

#[test]
fn expected_purchases_is_continuous_across_branches() {
    // z = 0.5 splits the series from the 2F1 path; a = 1 is the 0/0 point.
    for model in [Model::BgNbd, Model::MbgNbd] {
        for a in [0.5, 1.0 - 1e-7, 1.0, 1.0 + 3e-6, 2.5] {
            let p = Params { a, ..CDNOW_MBG };
            let s = Scorer::new(model, p);
            let age = 10.0;
            let t_half = p.alpha + age; // z = 0.5 exactly
            let below = s.expected_purchases(3, 5.0, age, t_half * (1.0 - 1e-9));
            let above = s.expected_purchases(3, 5.0, age, t_half * (1.0 + 1e-9));
            assert!(
                below.is_finite() && rel(below, above) < 1e-7,
                "{model} a={a}: {below} {above}"
            );
            // Continuous in a around 1.
            let near = Scorer::new(model, Params { a: 1.0 + 1e-4, ..p });
            let e1 = s.expected_purchases(3, 5.0, age, 30.0);
            let e2 = near.expected_purchases(3, 5.0, age, 30.0);
            if (a - 1.0).abs() < 1e-5 {
                assert!(rel(e1, e2) < 1e-3, "{model} a={a}: {e1} {e2}");
            }
            let far = s.expected_purchases(3, 5.0, 0.0, 1e4);
            let near_far = near.expected_purchases(3, 5.0, 0.0, 1e4);
            if (a - 1.0).abs() < 1e-5 {
                assert!(rel(far, near_far) < 1e-3, "{model} a={a}: {far} {near_far}");
            }
        }
    }
}

#[test]
fn expected_purchases_grows_with_the_horizon() {
    for model in [Model::BgNbd, Model::MbgNbd] {
        let s = Scorer::new(model, CDNOW_MBG);
        let mut last = 0.0;
        for t in [0.1, 1.0, 5.0, 10.0, 30.0, 100.0, 1e3, 1e4, 1e6] {
            let e = s.expected_purchases(4, 30.0, 35.0, t);
            assert!(e > last, "{model} t={t}: {e} <= {last}");
            last = e;
        }
        assert_eq!(s.expected_purchases(4, 30.0, 35.0, 0.0), 0.0);
        assert_eq!(s.expected_purchases(4, 30.0, 35.0, -1.0), 0.0);
    }
}

#[test]
fn extreme_inputs_stay_finite() {
    let params = [
        CDNOW_BG,
        CDNOW_MBG,
        Params {
            r: 60.0,
            alpha: 2.0,
            a: 0.3,
            b: 0.4,
        },
        Params {
            r: 1e-3,
            alpha: 1e-3,
            a: 50.0,
            b: 1e3,
        },
        Params {
            r: 2.0,
            alpha: 1e4,
            a: 1.0,
            b: 0.2,
        },
    ];
    let histories = [
        (0u32, 0.0, 0.0),
        (0, 0.0, 1e12),
        (0, 0.0, 1e-300),
        (1, 0.0, 0.0),
        (1, 0.0, 1e9),
        (5, 0.0, 100.0),
        (5, 100.0, 100.0),
        (100_000, 50.0, 100.0),
        (u32::MAX, 1.0, 1.0),
    ];
    for model in [Model::BgNbd, Model::MbgNbd] {
        for p in &params {
            let s = Scorer::new(model, *p);
            for &(x, t_x, age) in &histories {
                for t in [1e-9, 1.0, 30.0, 1e5, 1e12] {
                    let sc = s.score(x, t_x, age, t);
                    assert!(
                        sc.p_alive.is_finite() && (0.0..=1.0).contains(&sc.p_alive),
                        "{model} {p:?} {x} {t_x} {age}: p_alive {}",
                        sc.p_alive
                    );
                    assert!(
                        sc.expected_purchases.is_finite() && sc.expected_purchases >= 0.0,
                        "{model} {p:?} x={x} t_x={t_x} T={age} t={t}: E {}",
                        sc.expected_purchases
                    );
                }
                let ll = model.customer_log_likelihood(p, x.min(1_000_000), t_x, age.max(1e-300));
                assert!(!ll.is_nan(), "{model} {p:?} {x} {t_x} {age}: ll {ll}");
            }
        }
    }
}
