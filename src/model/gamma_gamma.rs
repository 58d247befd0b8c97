//! The Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV";
//! Hardie's note 025): a customer's order values are Gamma(`p`, rate `ν`) with
//! ν ~ Gamma(`q`, rate `v`) across customers, independent of the purchase
//! process. Given `x` orders averaging `m`, the expected value of the next order
//! is the customer's mean shrunk toward the population mean `p v / (q - 1)`.
//!
//! Fitted on repeat customers only, as in the paper and lifetimes'
//! `GammaGammaFitter`; monetary values are in the caller's unit (any scale).

use super::optimize::{minimize_from, plausible};
use super::special::{digamma, ln_gamma};
use super::{Fit, FitOptions, ModelError, SpendData};

/// Gamma-Gamma parameters; `v` is in the monetary unit, `p` and `q` are
/// dimensionless. All must be finite and positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGammaParams {
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

impl GammaGammaParams {
    /// All three finite and positive.
    pub fn is_valid(&self) -> bool {
        [self.p, self.q, self.v]
            .iter()
            .all(|x| x.is_finite() && *x > 0.0)
    }

    /// The population mean order value `p v / (q - 1)`; `None` when `q <= 1`
    /// (the mean is infinite).
    pub fn population_mean(&self) -> Option<f64> {
        (self.q > 1.0).then(|| self.p * self.v / (self.q - 1.0))
    }

    /// `E[Z | x, m] = p (v + x m) / (p x + q - 1)`: the conditional expected
    /// average order value of a customer whose `x` orders averaged `mean_value`
    /// — a weighted mean of the population mean and `mean_value` with weight
    /// `p x / (p x + q - 1)` on the customer (lifetimes'
    /// `conditional_expected_average_profit`). With `x = 0` it is the
    /// population mean. `None` when `p x + q <= 1` (no finite expectation).
    pub fn expected_order_value(&self, x: u32, mean_value: f64) -> Option<f64> {
        let px = self.p * f64::from(x);
        let den = px + self.q - 1.0;
        if den.is_nan() || den <= 0.0 {
            return None;
        }
        let m = if x == 0 { 0.0 } else { mean_value };
        Some(self.p * (self.v + f64::from(x) * m) / den)
    }

    /// Log-likelihood of one repeat customer's `x >= 1` orders averaging
    /// `mean_value` (density of the mean; Hardie's note 025 eq. 1a).
    pub fn customer_log_likelihood(&self, x: u32, mean_value: f64) -> f64 {
        let GammaGammaParams { p, q, v } = *self;
        let xf = f64::from(x);
        let px = p * xf;
        ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q)
            + q * v.ln()
            + (px - 1.0) * mean_value.ln()
            + px * xf.ln()
            - (px + q) * (xf * mean_value + v).ln()
    }
}

/// Log-likelihood of the data: the weighted sum over its rows.
pub fn log_likelihood(params: &GammaGammaParams, data: &SpendData) -> f64 {
    evaluate::<false>(params, data).0
}

/// Maximum-likelihood fit of `(p, q, v)` on repeat customers.
///
/// As [`super::Model::fit`]: log-parameters, BFGS on the analytic gradient,
/// warm start from `start` when valid, with the cold start `p = 1, q = 2,
/// v = mean m` (whose population mean is the sample mean) as the fallback.
pub fn fit(
    data: &SpendData,
    start: Option<GammaGammaParams>,
    options: &FitOptions,
) -> Result<Fit<GammaGammaParams>, ModelError> {
    let total = data.total_weight;
    let value_scale = data.mean_value.ln();
    let cold = [0.0, 2f64.ln(), value_scale];
    let objective = |theta: &[f64; 3], g: &mut [f64; 3]| {
        let prm = from_theta(theta);
        let (ll, grad) = evaluate::<true>(&prm, data);
        let natural = [prm.p, prm.q, prm.v];
        for i in 0..3 {
            g[i] = -grad[i] * natural[i] / total;
        }
        -ll / total
    };
    let warm = start
        .filter(GammaGammaParams::is_valid)
        .map(|s| [s.p.ln(), s.q.ln(), s.v.ln()]);
    let out = minimize_from(
        objective,
        warm,
        cold,
        options.max_iterations,
        options.tolerance,
    )
    .ok_or(ModelError::NonFiniteStart)?;
    Ok(Fit {
        params: from_theta(&out.x),
        log_likelihood: -out.f * total,
        iterations: out.iterations,
        evaluations: out.evaluations,
        converged: out.converged && plausible(&out.x, &[0.0, 0.0, value_scale]),
    })
}

fn from_theta(t: &[f64; 3]) -> GammaGammaParams {
    GammaGammaParams {
        p: t[0].exp(),
        q: t[1].exp(),
        v: t[2].exp(),
    }
}

/// Log-likelihood and (when `GRAD`) its gradient in `(p, q, v)`: per-`x`
/// constants once per group, one log (and one division) per row.
fn evaluate<const GRAD: bool>(prm: &GammaGammaParams, data: &SpendData) -> (f64, [f64; 3]) {
    let GammaGammaParams { p, q, v } = *prm;
    let ln_v = v.ln();
    let lg_q = ln_gamma(q);
    let dg_q = if GRAD { digamma(q) } else { 0.0 };
    let mut ll = 0.0;
    let (mut g_p, mut g_q, mut g_v) = (0.0, 0.0, 0.0);
    for group in &data.groups {
        let x = group.x;
        let gw = group.weight;
        let px = p * x;
        let rows = group.range.clone();
        let (m, w) = (&data.value[rows.clone()], &data.weight[rows]);
        let (mut s_ln, mut s_inv) = (0.0, 0.0);
        for i in 0..w.len() {
            let d = x * m[i] + v;
            s_ln += w[i] * d.ln();
            if GRAD {
                s_inv += w[i] / d;
            }
        }
        ll += gw * (ln_gamma(px + q) - ln_gamma(px) - lg_q + q * ln_v + px * group.ln_x)
            + (px - 1.0) * group.sum_w_ln_m
            - (px + q) * s_ln;
        if GRAD {
            let dg_pxq = digamma(px + q);
            g_p += x * (gw * (dg_pxq - digamma(px) + group.ln_x) + group.sum_w_ln_m - s_ln);
            g_q += gw * (dg_pxq - dg_q + ln_v) - s_ln;
            g_v += gw * q / v - (px + q) * s_inv;
        }
    }
    (ll, [g_p, g_q, g_v])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::simulate::simulate_mean_value;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const CDNOW: GammaGammaParams = GammaGammaParams {
        p: 6.25,
        q: 3.74,
        v: 15.44,
    };

    #[test]
    fn data_likelihood_is_the_sum_and_gradient_is_right() {
        let rows = [(1u32, 10.0), (1, 10.0), (2, 35.5), (7, 12.25), (3, 80.0)];
        let data = SpendData::new(rows).unwrap();
        let want: f64 = rows
            .iter()
            .map(|(x, m)| CDNOW.customer_log_likelihood(*x, *m))
            .sum();
        assert!((log_likelihood(&CDNOW, &data) - want).abs() < 1e-10 * want.abs());
        let (_, grad) = evaluate::<true>(&CDNOW, &data);
        let base = [CDNOW.p, CDNOW.q, CDNOW.v];
        for i in 0..3 {
            let h = 1e-6 * base[i];
            let (mut up, mut down) = (base, base);
            up[i] += h;
            down[i] -= h;
            let f = |b: [f64; 3]| {
                log_likelihood(
                    &GammaGammaParams {
                        p: b[0],
                        q: b[1],
                        v: b[2],
                    },
                    &data,
                )
            };
            let numeric = (f(up) - f(down)) / (2.0 * h);
            assert!(
                (grad[i] - numeric).abs() < 1e-6 * numeric.abs().max(1.0),
                "{i}"
            );
        }
    }

    #[test]
    fn fit_recovers_simulated_parameters_and_warm_start_is_faster() {
        let mut rng = StdRng::seed_from_u64(5);
        let rows: Vec<(u32, f64)> = (0..20_000u32)
            .map(|i| {
                let x = 1 + i % 8;
                (x, simulate_mean_value(&CDNOW, x, &mut rng))
            })
            .collect();
        let data = SpendData::new(rows).unwrap();
        let opts = FitOptions::default();
        let cold = fit(&data, None, &opts).unwrap();
        assert!(cold.converged, "{cold:?}");
        let got = cold.params;
        let mean = got.population_mean().unwrap();
        let true_mean = CDNOW.population_mean().unwrap();
        assert!((mean / true_mean - 1.0).abs() < 0.05, "{got:?}");
        assert!((got.p / CDNOW.p - 1.0).abs() < 0.1, "{got:?}");
        assert!((got.q / CDNOW.q - 1.0).abs() < 0.2, "{got:?}");
        let warm = fit(&data, Some(CDNOW), &opts).unwrap();
        assert!(warm.converged && warm.iterations < cold.iterations);
        assert!(
            (warm.log_likelihood - cold.log_likelihood).abs() < 1e-8 * cold.log_likelihood.abs()
        );
    }

    #[test]
    fn expected_order_value_shrinks_toward_the_population_mean() {
        let pop = CDNOW.population_mean().unwrap();
        assert_eq!(CDNOW.expected_order_value(0, 999.0), Some(pop));
        let one = CDNOW.expected_order_value(1, 100.0).unwrap();
        let many = CDNOW.expected_order_value(50, 100.0).unwrap();
        assert!(pop < one && one < many && many < 100.0);
        let heavy_tail = GammaGammaParams { q: 0.5, ..CDNOW };
        assert_eq!(heavy_tail.population_mean(), None);
        assert_eq!(heavy_tail.expected_order_value(0, 10.0), None);
        assert!(heavy_tail.expected_order_value(1, 10.0).is_some());
    }
}
