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
mod tests;
