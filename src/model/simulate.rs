//! Synthetic customers drawn from the models, for tests, benches and demos.
//! Deterministic given the caller's seeded RNG; no global state.

use rand::Rng;

use super::{GammaGammaParams, History, Model, Params};

/// One `(x, t_x, T)` history per entry of `ages` (each customer's `T`):
/// λ ~ Gamma(r, rate α), p ~ Beta(a, b), purchases at Poisson(λ) times, and
/// after each purchase — for MBG/NBD also at time 0 — dropout with
/// probability p. Repeat purchases are capped at 10^7 per customer.
pub fn simulate<R: Rng + ?Sized>(
    model: Model,
    params: &Params,
    ages: &[f64],
    rng: &mut R,
) -> Vec<History> {
    ages.iter()
        .map(|&age| simulate_one(model, params, age, rng))
        .collect()
}

fn simulate_one<R: Rng + ?Sized>(model: Model, p: &Params, age: f64, rng: &mut R) -> History {
    let lambda = standard_gamma(rng, p.r) / p.alpha;
    let g1 = standard_gamma(rng, p.a);
    let g2 = standard_gamma(rng, p.b);
    let dropout = if g1 + g2 > 0.0 {
        g1 / (g1 + g2)
    } else {
        p.a / (p.a + p.b)
    };
    let mut h = History::new(0, 0.0, age);
    if model == Model::MbgNbd && open_unit(rng) <= dropout {
        return h;
    }
    let mut t = 0.0;
    while h.x < 10_000_000 {
        t += -open_unit(rng).ln() / lambda;
        if t.is_nan() || t > age {
            break;
        }
        h.x += 1;
        h.t_x = t;
        if open_unit(rng) <= dropout {
            break;
        }
    }
    h
}

/// The mean of `x` order values drawn for one customer of a Gamma-Gamma
/// population: ν ~ Gamma(q, rate v), the sum of `x` orders ~ Gamma(p x, rate ν).
pub fn simulate_mean_value<R: Rng + ?Sized>(params: &GammaGammaParams, x: u32, rng: &mut R) -> f64 {
    let nu = standard_gamma(rng, params.q) / params.v;
    let total = standard_gamma(rng, params.p * f64::from(x.max(1))) / nu;
    total / f64::from(x.max(1))
}

/// Uniform on (0, 1].
fn open_unit<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    1.0 - rng.random::<f64>()
}

fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let (u1, u2) = (open_unit(rng), rng.random::<f64>());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Gamma(shape, scale 1) by Marsaglia & Tsang (2000), boosted for shape < 1.
pub(crate) fn standard_gamma<R: Rng + ?Sized>(rng: &mut R, shape: f64) -> f64 {
    if shape < 1.0 {
        return standard_gamma(rng, shape + 1.0) * open_unit(rng).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = open_unit(rng);
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn gamma_moments() {
        let mut rng = StdRng::seed_from_u64(1);
        for shape in [0.25, 1.0, 3.7] {
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| standard_gamma(&mut rng, shape)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            assert!((mean / shape - 1.0).abs() < 0.02, "{shape}: {mean}");
            assert!((var / shape - 1.0).abs() < 0.05, "{shape}: {var}");
        }
    }

    #[test]
    fn histories_are_valid_and_mbg_has_more_zeros() {
        let p = Params {
            r: 1.2,
            alpha: 25.0,
            a: 0.7,
            b: 3.5,
        };
        let ages: Vec<f64> = (0..5_000).map(|i| f64::from(i % 365)).collect();
        let mut rng = StdRng::seed_from_u64(2);
        let bg = simulate(Model::BgNbd, &p, &ages, &mut rng);
        let mbg = simulate(Model::MbgNbd, &p, &ages, &mut rng);
        for h in bg.iter().chain(&mbg) {
            assert!(h.problem().is_none(), "{h:?}");
        }
        let zeros = |v: &[History]| v.iter().filter(|h| h.x == 0).count();
        assert!(zeros(&mbg) > zeros(&bg));
    }
}
