//! BG/NBD and MBG/NBD: likelihood (with its analytic gradient), maximum
//! likelihood fit, P(alive) and the conditional expected number of purchases.
//!
//! The two models differ only in whether a customer can drop out at time 0
//! (MBG/NBD) — in the formulas, by one `shift` (0 or 1) in the Beta terms and
//! by the `x = 0` customers having a dropout term in MBG/NBD:
//!
//! ```text
//! ln L = ln Γ(r+x) - ln Γ(r) + r ln α
//!      + ln Γ(a+b) + ln Γ(b+x+s) - ln Γ(b) - ln Γ(a+b+x+s)
//!      + ln( (α+T)^-(r+x) + [x>0 or MBG] a/(b+x-1+s) (α+t_x)^-(r+x) )
//! ```
//!
//! with `s = 0` (BG/NBD, Fader, Hardie & Lee 2005, eq. 6) or `s = 1`
//! (MBG/NBD, Batislam et al. 2007), exactly as lifetimes' `BetaGeoFitter` and
//! `ModifiedBetaGeoFitter` compute it.

use super::optimize::{minimize_from, plausible};
use super::series::EulerSeries;
use super::special::{digamma, hyp2f1_w, ln_gamma};
use super::{Fit, FitData, FitOptions, Model, ModelError, Params};

impl Model {
    /// 0 for BG/NBD, 1 for MBG/NBD (one more dropout opportunity, at time 0).
    fn shift(self) -> f64 {
        match self {
            Model::BgNbd => 0.0,
            Model::MbgNbd => 1.0,
        }
    }

    /// Whether customers with `x = 0` have a dropout term (MBG/NBD only).
    fn zero_can_die(self) -> bool {
        self == Model::MbgNbd
    }

    /// Log-likelihood of one customer's `(x, t_x, T)`.
    pub fn customer_log_likelihood(self, params: &Params, x: u32, t_x: f64, age: f64) -> f64 {
        let Params { r, alpha, a, b } = *params;
        let xf = f64::from(x);
        let s = self.shift();
        let a1 = ln_gamma(r + xf) - ln_gamma(r) + r * alpha.ln();
        let a2 = ln_gamma(a + b) + ln_gamma(b + xf + s) - ln_gamma(b) - ln_gamma(a + b + xf + s);
        let a3 = -(r + xf) * (alpha + age).ln();
        if x == 0 && !self.zero_can_die() {
            return a1 + a2 + a3;
        }
        let a4 = a.ln() - (b + xf - 1.0 + s).ln() - (r + xf) * (alpha + t_x).ln();
        let hi = a3.max(a4);
        a1 + a2 + hi + (-(a3 - a4).abs()).exp().ln_1p()
    }

    /// Log-likelihood of the whole data set: the weighted sum over its rows.
    pub fn log_likelihood(self, params: &Params, data: &FitData) -> f64 {
        evaluate::<false>(self, params, data).0
    }

    /// Maximum-likelihood fit of `(r, α, a, b)`.
    ///
    /// Optimises the log-parameters (so they stay positive) with BFGS on the
    /// analytic gradient. `start`, typically the previous fit's parameters, is
    /// the warm start; without one, or if it is invalid or does not converge,
    /// the fit (also) runs from the cold start `r = a = b = 1`, `α = mean T`
    /// and keeps the better result. Errors only when no start has a finite
    /// likelihood; a fit that did not converge is returned with
    /// `converged = false` (see [`Fit::converged`]).
    pub fn fit(
        self,
        data: &FitData,
        start: Option<Params>,
        options: &FitOptions,
    ) -> Result<Fit<Params>, ModelError> {
        let time_scale = if data.mean_age > 0.0 {
            data.mean_age
        } else {
            1.0
        };
        // The cold start, and each parameter's natural scale.
        let scale = [0.0, time_scale.ln(), 0.0, 0.0];
        let total = data.total_weight;
        let objective = |theta: &[f64; 4], g: &mut [f64; 4]| {
            let p = from_theta(theta);
            let (ll, grad) = evaluate::<true>(self, &p, data);
            let natural = [p.r, p.alpha, p.a, p.b];
            for i in 0..4 {
                g[i] = -grad[i] * natural[i] / total;
            }
            -ll / total
        };
        let warm = start.filter(Params::is_valid).map(|p| to_theta(&p));
        let out = minimize_from(
            objective,
            warm,
            scale,
            options.max_iterations,
            options.tolerance,
        )
        .ok_or(ModelError::NonFiniteStart)?;
        Ok(Fit {
            params: from_theta(&out.x),
            log_likelihood: -out.f * total,
            iterations: out.iterations,
            evaluations: out.evaluations,
            converged: out.converged && plausible(&out.x, &scale),
        })
    }

    /// P(alive | x, t_x, T). See [`Scorer::p_alive`].
    pub fn p_alive(self, params: &Params, x: u32, t_x: f64, age: f64) -> f64 {
        Scorer::new(self, *params).p_alive(x, t_x, age)
    }

    /// `E[X(t) | x, t_x, T]`. See [`Scorer::expected_purchases`].
    pub fn expected_purchases(self, params: &Params, x: u32, t_x: f64, age: f64, t: f64) -> f64 {
        Scorer::new(self, *params).expected_purchases(x, t_x, age, t)
    }
}

fn to_theta(p: &Params) -> [f64; 4] {
    [p.r.ln(), p.alpha.ln(), p.a.ln(), p.b.ln()]
}

fn from_theta(t: &[f64; 4]) -> Params {
    Params {
        r: t[0].exp(),
        alpha: t[1].exp(),
        a: t[2].exp(),
        b: t[3].exp(),
    }
}

/// The data's log-likelihood and (when `GRAD`) its gradient in `(r, α, a, b)`.
///
/// Per-`x` constants (log-gammas, digammas) once per group; per row two logs,
/// one exp and one log1p (BG/NBD `x = 0` rows: one log).
fn evaluate<const GRAD: bool>(model: Model, p: &Params, data: &FitData) -> (f64, [f64; 4]) {
    let Params { r, alpha, a, b } = *p;
    let s = model.shift();
    let ln_alpha = alpha.ln();
    let ln_a = a.ln();
    let base = -ln_gamma(r) + ln_gamma(a + b) - ln_gamma(b);
    let (dg_r, dg_ab, dg_b) = if GRAD {
        (digamma(r), digamma(a + b), digamma(b))
    } else {
        (0.0, 0.0, 0.0)
    };
    let mut ll = 0.0;
    let (mut g_r, mut g_alpha, mut g_a, mut g_b) = (0.0, 0.0, 0.0, 0.0);
    for group in &data.groups {
        let x = group.x;
        let gw = group.weight;
        let k = r + x;
        ll += gw
            * (base + ln_gamma(k) + r * ln_alpha + ln_gamma(b + x + s) - ln_gamma(a + b + x + s));
        if GRAD {
            let dg_abx = digamma(a + b + x + s);
            g_r += gw * (digamma(k) - dg_r + ln_alpha);
            g_alpha += gw * r / alpha;
            g_a += gw * (dg_ab - dg_abx);
            g_b += gw * (dg_ab + digamma(b + x + s) - dg_b - dg_abx);
        }
        let rows = group.range.clone();
        let (t_x, age, w) = (
            &data.t_x[rows.clone()],
            &data.age[rows.clone()],
            &data.weight[rows],
        );
        if x == 0.0 && !model.zero_can_die() {
            // Only (α+T)^-r: certainly alive, no dropout term.
            let (mut s_ln, mut s_inv) = (0.0, 0.0);
            for i in 0..w.len() {
                let ea = alpha + age[i];
                s_ln += w[i] * ea.ln();
                if GRAD {
                    s_inv += w[i] / ea;
                }
            }
            ll -= k * s_ln;
            g_r -= s_ln;
            g_alpha -= k * s_inv;
            continue;
        }
        let ln_bx = (b + x - 1.0 + s).ln();
        let c4 = ln_a - ln_bx;
        // MBG/NBD x = 0 rows have t_x = 0: ln(α + t_x) is ln α, no log needed.
        let zero = x == 0.0;
        let (mut s_lse, mut s_pi4, mut s_ln, mut s_inv) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..w.len() {
            let ea = alpha + age[i];
            let l_age = ea.ln();
            let (et, l_tx) = if zero {
                (alpha, ln_alpha)
            } else {
                let et = alpha + t_x[i];
                (et, et.ln())
            };
            let a3 = -k * l_age;
            let a4 = c4 - k * l_tx;
            let diff = a3 - a4;
            let e = (-diff.abs()).exp();
            s_lse += w[i] * (a3.max(a4) + e.ln_1p());
            if GRAD {
                let p_hi = 1.0 / (1.0 + e);
                let p_lo = e * p_hi;
                let (p3, p4) = if diff >= 0.0 {
                    (p_hi, p_lo)
                } else {
                    (p_lo, p_hi)
                };
                s_pi4 += w[i] * p4;
                s_ln += w[i] * (p3 * l_age + p4 * l_tx);
                s_inv += w[i] * (p3 / ea + p4 / et);
            }
        }
        ll += s_lse;
        g_r -= s_ln;
        g_alpha -= k * s_inv;
        g_a += s_pi4 / a;
        g_b -= s_pi4 / (b + x - 1.0 + s);
    }
    (ll, [g_r, g_alpha, g_a, g_b])
}

/// P(alive) and expected purchases for one customer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub p_alive: f64,
    pub expected_purchases: f64,
}

/// Scores customers under fixed parameters, with the per-fit constants
/// precomputed: build one per refit, then call it for every customer.
///
/// Inputs are taken as the caller measured them and clamped, not rejected:
/// negative `T` counts as 0, `t_x` is clamped into `[0, T]`, and `t_x = 0`
/// when `x = 0`. NaN inputs give NaN. Parameters must be valid
/// ([`Params::is_valid`]), else results are NaN.
#[derive(Debug)]
pub struct Scorer {
    model: Model,
    params: Params,
    shift: f64,
    ln_a: f64,
    series: EulerSeries,
}

impl Scorer {
    pub fn new(model: Model, params: Params) -> Scorer {
        let Params { r, a, b, .. } = params;
        let shift = model.shift();
        Scorer {
            model,
            params,
            shift,
            ln_a: a.ln(),
            series: EulerSeries::new(a + b - 1.0 + shift - r, a - 1.0, a + b - 1.0 + shift),
        }
    }

    pub fn model(&self) -> Model {
        self.model
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// P(alive | x, t_x, T) — `1 / (1 + a/(b+x-1+s) ((α+T)/(α+t_x))^(r+x))`,
    /// and exactly 1 for BG/NBD customers with `x = 0` (the flaw that makes
    /// MBG/NBD the default). Churn risk is `1 - p_alive`.
    pub fn p_alive(&self, x: u32, t_x: f64, age: f64) -> f64 {
        let (t_x, age) = clamp(x, t_x, age);
        self.p_alive_clamped(x, t_x, age)
    }

    fn p_alive_clamped(&self, x: u32, t_x: f64, age: f64) -> f64 {
        if x == 0 && !self.model.zero_can_die() {
            return 1.0;
        }
        let Params { r, alpha, b, .. } = self.params;
        let xf = f64::from(x);
        let odds_dead = (r + xf) * ((alpha + age) / (alpha + t_x)).ln() + self.ln_a
            - (b + xf - 1.0 + self.shift).ln();
        1.0 / (1.0 + odds_dead.exp())
    }

    /// The conditional expected number of purchases in the next `t` time
    /// units, `E[X(t) | x, t_x, T]` (BG/NBD: Fader, Hardie & Lee 2005, eq. 10;
    /// MBG/NBD: Wagner & Hoppe 2008). 0 for `t <= 0`.
    pub fn expected_purchases(&self, x: u32, t_x: f64, age: f64, t: f64) -> f64 {
        self.score(x, t_x, age, t).expected_purchases
    }

    /// Both numbers at once (they share P(alive)).
    pub fn score(&self, x: u32, t_x: f64, age: f64, t: f64) -> Score {
        let (t_x, age) = clamp(x, t_x, age);
        let p_alive = self.p_alive_clamped(x, t_x, age);
        let expected_purchases = if t.is_nan() {
            f64::NAN
        } else if t <= 0.0 {
            0.0
        } else {
            p_alive * self.alive_purchases(x, age, t)
        };
        Score {
            p_alive,
            expected_purchases,
        }
    }

    /// `E[X(t) | alive at T, x]`: lifetimes' formula without its denominator
    /// (which is 1 / P(alive)), in the Euler-transformed form ([`EulerSeries`])
    ///
    /// ```text
    /// C/B [1 - (1-z)^B 2F1(A, B; C; z)],  z = t/(α+T+t),
    /// A = a+b-1+s-r,  B = a-1,  C = a+b+x-1+s
    /// ```
    ///
    /// which equals `C/B [1 - (1-z)^(r+x) 2F1(r+x, b+x+s; C; z)]` but whose
    /// 2F1 parameters do not grow with `x`. Writing `2F1 = 1 + B·S` removes
    /// the 0/0 at `a = 1`: the bracket over `B` is `(1-(1-z)^B)/B - S(1-z)^B`.
    fn alive_purchases(&self, x: u32, age: f64, t: f64) -> f64 {
        let base = self.params.alpha + age;
        let u = t / base;
        let z = t / (base + t);
        let w = base / (base + t);
        let ln_w = -u.ln_1p();
        let xf = f64::from(x);
        if z <= 0.5
            && let Some(v) = self.series.sum(x, z, ln_w)
        {
            return v;
        }
        let Params { r, a, b, .. } = self.params;
        // Near z = 1 the transformations of `hyp2f1`; where the Euler series
        // cancels (r ≫ a + b), the original form, whose terms are all positive.
        alive_purchases_general(r, a, b, self.shift, xf, z, w, z <= 0.5, 0)
    }
}

fn clamp(x: u32, t_x: f64, age: f64) -> (f64, f64) {
    let age = if age < 0.0 { 0.0 } else { age };
    let t_x = if x == 0 || t_x < 0.0 {
        0.0
    } else if t_x > age {
        age
    } else {
        t_x
    };
    (t_x, age)
}

/// Band around `a = 1` (where `B = 0`) and `C = 0` in which the general path
/// interpolates linearly between the band's edges instead of dividing by ~0.
const BAND: f64 = 1e-5;

/// `C/B [1 - (1-z)^B 2F1(A,B;C;z)]` through [`hyp2f1_w`] — or, with
/// `original` (forced when the Euler series cancelled), the equal
/// `C/B [1 - (1-z)^(r+x) 2F1(r+x, b+x+s; C; z)]`, whose terms share one sign.
#[allow(clippy::too_many_arguments)]
fn alive_purchases_general(
    r: f64,
    a: f64,
    b: f64,
    s: f64,
    x: f64,
    z: f64,
    w: f64,
    original: bool,
    depth: u32,
) -> f64 {
    let big_b = a - 1.0;
    let c = a + b - 1.0 + s + x;
    if depth < 3 && big_b.abs() < BAND {
        let lo = alive_purchases_general(r, 1.0 - BAND, b, s, x, z, w, original, depth + 1);
        let hi = alive_purchases_general(r, 1.0 + BAND, b, s, x, z, w, original, depth + 1);
        return lo + (hi - lo) * (big_b + BAND) / (2.0 * BAND);
    }
    if depth < 3 && c.abs() < BAND {
        let (b_lo, b_hi) = (b - c - BAND, b - c + BAND);
        let lo = alive_purchases_general(r, a, b_lo, s, x, z, w, original, depth + 1);
        let hi = alive_purchases_general(r, a, b_hi, s, x, z, w, original, depth + 1);
        return lo + (hi - lo) * (b - b_lo) / (2.0 * BAND);
    }
    // Either form; pick the one whose 2F1 has c - a - b >= 0 (here
    // `x + r - a + 1` for the Euler form, its negative for the original), so
    // that near z = 1 `hyp2f1` needs no Euler prefactor (1-z)^(c-a-b), which
    // can overflow while (1-z)^power underflows. w^power F in log space.
    let use_original = original || x + r - a + 1.0 < 0.0;
    let (p1, p2, power) = if use_original {
        (r + x, b + x + s, r + x)
    } else {
        (a + b - 1.0 + s - r, big_b, big_b)
    };
    let f = hyp2f1_w(p1, p2, c, z, w);
    let log_scaled = power * w.ln() + f.abs().ln();
    let bracket = if f > 0.0 {
        -log_scaled.exp_m1()
    } else if f < 0.0 {
        1.0 + log_scaled.exp()
    } else {
        1.0
    };
    c * bracket / big_b
}

#[cfg(test)]
mod tests {
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
                let f = crate::model::special::hyp2f1(
                    p.r + xf,
                    p.b + xf + s,
                    p.a + p.b + xf - 1.0 + s,
                    z,
                );
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
                    let ll =
                        model.customer_log_likelihood(p, x.min(1_000_000), t_x, age.max(1e-300));
                    assert!(!ll.is_nan(), "{model} {p:?} {x} {t_x} {age}: ll {ll}");
                }
            }
        }
    }
}
