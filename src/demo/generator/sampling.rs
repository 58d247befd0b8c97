//! Random draws the simulation is made of (gamma, beta, geometric, exponential gaps, pages) and the day/night curve.

use super::*;

/// Day/night factor of the visit rate, mean 1 over a day, in
/// `[2 - DIURNAL_PEAK, DIURNAL_PEAK]`, peak at `DIURNAL_PEAK_HOUR` UTC.
pub(super) fn diurnal(t: Millis) -> f64 {
    let hour = t.rem_euclid(DAY) as f64 / HOUR as f64;
    1.0 + DIURNAL_AMPLITUDE * (TAU * (hour - DIURNAL_PEAK_HOUR) / 24.0).cos()
}

/// One month later on the calendar (same day of month where it exists).
pub(super) fn add_month(t: Millis) -> Millis {
    DateTime::from_timestamp_millis(t)
        .and_then(|d| d.checked_add_months(Months::new(1)))
        .map_or(t + 30 * DAY, |d| d.timestamp_millis())
}

/// Index drawn with the given (non-zero total) weights.
pub(super) fn pick(rng: &mut StdRng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut r = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if r < w {
            return i;
        }
        r -= w;
    }
    weights.len() - 1
}

/// Failures before the first success with probability `p`, at most `max`.
pub(super) fn geometric(rng: &mut StdRng, p: f64, max: u8) -> u8 {
    let mut k = 0;
    while k < max && !rng.random_bool(p) {
        k += 1;
    }
    k
}

/// Exponentially distributed duration with the given mean, in ms.
pub(super) fn exp_ms(rng: &mut StdRng, mean: f64) -> Millis {
    let u = 1.0 - rng.random::<f64>(); // (0, 1]
    (-u.ln() * mean) as Millis
}

/// Standard normal (Box–Muller).
pub(super) fn normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
}

/// Gamma(shape, scale) by Marsaglia & Tsang (2000).
pub(super) fn gamma(rng: &mut StdRng, shape: f64, scale: f64) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.random::<f64>();
        return gamma(rng, shape + 1.0, scale) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = 1.0 - rng.random::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v * scale;
        }
    }
}

/// Beta(a, b) from two Gamma draws.
pub(super) fn beta(rng: &mut StdRng, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a, 1.0);
    let y = gamma(rng, b, 1.0);
    (x / (x + y)).clamp(0.0, 1.0)
}

pub(super) fn product(rng: &mut StdRng) -> Page {
    // Popularity skew: low numbers are the best sellers.
    let u = rng.random::<f64>();
    Page::Product((N_PRODUCTS * u * u) as u16)
}

pub(super) fn category(rng: &mut StdRng) -> Page {
    Page::Category(rng.random_range(0..CATEGORIES.len()) as u8)
}

pub(super) fn blog(rng: &mut StdRng) -> Page {
    Page::Blog(rng.random_range(0..BLOG_POSTS.len()) as u8)
}
