//! Special functions the models need: log-gamma, digamma and the Gauss
//! hypergeometric function 2F1 on real arguments.
//!
//! `ln_gamma` is musl's `lgamma` (through the `libm` crate, already in the
//! dependency tree): a well-tested port, and `std`'s `ln_gamma` is unstable.
//! `hyp2f1` follows the classic Cephes strategy (as scipy does): the power
//! series near 0 (up to `z = 0.9` when its terms do not cancel), Pfaff's
//! transformation for `z < 0`, Euler's and the `1 - z` transformation
//! (Abramowitz & Stegun 15.3.6) near 1. Where `c - a - b` is
//! (nearly) an integer, 15.3.6 degenerates; instead of the long digamma series
//! of A&S 15.3.10-12 we evaluate 15.3.6 at four points `c - a - b = m ± 1e-4,
//! m ± 2e-4` (moving `a`; 2F1 is entire in `a`) and interpolate with a cubic:
//! ~1e-11 relative, far below what the models need. Checked against mpmath at
//! 50 digits here and in `tests/model_lifetimes.rs` (fixture `hyp2f1.csv`).

/// `ln |Γ(x)|`.
#[inline]
pub fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// `(ln |Γ(x)|, sign of Γ(x))`.
#[inline]
fn ln_gamma_sign(x: f64) -> (f64, f64) {
    let (v, s) = libm::lgamma_r(x);
    (v, if s < 0 { -1.0 } else { 1.0 })
}

/// The digamma function `ψ(x) = d/dx ln Γ(x)`; NaN at the poles `0, -1, -2, …`.
pub fn digamma(x: f64) -> f64 {
    if x.is_nan() || x == f64::NEG_INFINITY {
        return f64::NAN;
    }
    if x == f64::INFINITY {
        return f64::INFINITY;
    }
    let mut x = x;
    let mut acc = 0.0;
    if x <= 0.0 {
        if x == x.floor() {
            return f64::NAN;
        }
        // Reflection: ψ(x) = ψ(1 - x) - π / tan(πx).
        acc -= std::f64::consts::PI / (std::f64::consts::PI * x).tan();
        x = 1.0 - x;
    }
    // Recurrence ψ(x) = ψ(x + 1) - 1/x up to where the asymptotic series is
    // accurate to ~1e-16 (next term 1/(12 x^14) < 1e-15 at x >= 10).
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    let tail = f
        * (1.0 / 12.0
            - f * (1.0 / 120.0
                - f * (1.0 / 252.0
                    - f * (1.0 / 240.0 - f * (1.0 / 132.0 - f * (691.0 / 32760.0))))));
    acc + x.ln() - 0.5 / x - tail
}

/// Gauss's hypergeometric function `2F1(a, b; c; z)` for real arguments and `z <= 1`.
///
/// Returns NaN for `z > 1` (the value is complex there), when `c` is a
/// non-positive integer (a pole, unless the series terminates first), and for
/// NaN inputs; `+inf` at `z = 1` when `c - a - b <= 0`.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    hyp2f1_w(a, b, c, z, 1.0 - z)
}

/// `2F1(a, b; c; z)` with `w = 1 - z` supplied by the caller, who can often
/// compute it without the cancellation of `1.0 - z` (e.g. `(α+T)/(α+T+t)`).
pub(crate) fn hyp2f1_w(a: f64, b: f64, c: f64, z: f64, w: f64) -> f64 {
    if a.is_nan() || b.is_nan() || c.is_nan() || z.is_nan() || w.is_nan() || w < 0.0 {
        return f64::NAN;
    }
    if z == 0.0 || a == 0.0 || b == 0.0 {
        return 1.0;
    }
    let poly = is_nonpositive_int(a) || is_nonpositive_int(b);
    if is_nonpositive_int(c) {
        // A pole, unless the series is a polynomial that ends before (c)_n hits 0.
        let deg = if poly {
            let da = if is_nonpositive_int(a) {
                -a
            } else {
                f64::INFINITY
            };
            let db = if is_nonpositive_int(b) {
                -b
            } else {
                f64::INFINITY
            };
            da.min(db)
        } else {
            f64::INFINITY
        };
        if deg >= -c + 1.0 || deg.is_infinite() {
            return f64::NAN;
        }
        return series(a, b, c, z);
    }
    if poly {
        // A polynomial: the series is exact (and finite) for every z.
        return series(a, b, c, z);
    }
    if w == 0.0 {
        // Gauss's theorem at z = 1.
        let d = c - a - b;
        if d <= 0.0 {
            return f64::INFINITY;
        }
        return gamma_ratio(&[c, d], &[c - a, c - b], 0.0);
    }
    if z < 0.0 {
        // Pfaff: 2F1(a,b;c;z) = (1-z)^(-a) 2F1(a, c-b; c; z/(z-1)), and
        // z/(z-1) is in (0, 1) with complement 1/(1-z) = 1/w.
        let zz = -z / w;
        let ww = 1.0 / w;
        let prefactor = (-a * w.ln()).exp();
        if is_nonpositive_int(c - b) {
            return prefactor * series(a, c - b, c, zz);
        }
        return prefactor * hyp2f1_unit(a, c - b, c, zz, ww);
    }
    hyp2f1_unit(a, b, c, z, w)
}

/// `0 < z < 1`, `c` not a pole, `a`, `b` not non-positive integers.
fn hyp2f1_unit(a: f64, b: f64, c: f64, z: f64, w: f64) -> f64 {
    if z <= 0.5 {
        return series(a, b, c, z);
    }
    if z <= 0.9 {
        // Still cheap (< ~400 terms), and exact when the terms do not cancel —
        // unlike 15.3.6, whose two terms can cancel to lose ~7 digits here.
        let (sum, magnitude) = series_with_magnitude(a, b, c, z);
        if magnitude <= 1e3 * sum.abs() {
            return sum;
        }
    }
    let d = c - a - b;
    if d < 0.0 {
        // Euler: 2F1(a,b;c;z) = (1-z)^(c-a-b) 2F1(c-a, c-b; c; z): the transformed
        // function is regular at z = 1, which suits 15.3.6.
        let (a2, b2) = (c - a, c - b);
        if is_nonpositive_int(a2) || is_nonpositive_int(b2) {
            return (d * w.ln()).exp() * series(a2, b2, c, z);
        }
        return (d * w.ln()).exp() * near_one(a2, b2, c, w);
    }
    near_one(a, b, c, w)
}

/// Half-width, in `c - a - b`, of the band around an integer where 15.3.6 is
/// replaced by interpolation (see [`near_one`]).
const INTEGER_BAND: f64 = 1e-4;

/// 15.3.6 — except within [`INTEGER_BAND`] of an integer `c - a - b = m`,
/// where its two terms have poles that cancel. There the value is the cubic
/// through `c - a - b = m ± h, m ± 2h` (`h` = the band), moving `a` (2F1 is
/// entire in `a`, so no pole is crossed): interpolation error ~0.4 h⁴ |∂⁴F/∂a⁴|
/// (∂/∂a brings factors ~ln(1-z)), cancellation error ~1e-15/h (each term
/// is ~1/h, exponentiated from log-gammas): ~1e-11 relative.
fn near_one(a: f64, b: f64, c: f64, w: f64) -> f64 {
    let d = c - a - b;
    let eps = d - d.round();
    if eps.abs() >= INTEGER_BAND {
        return one_minus_z(a, b, c, w);
    }
    const NODES: [f64; 4] = [-2.0, -1.0, 1.0, 2.0];
    let mut out = 0.0;
    for (k, &nk) in NODES.iter().enumerate() {
        // a' = a + eps - nk·h gives c - a' - b = m + nk·h.
        let fk = one_minus_z(a + eps - nk * INTEGER_BAND, b, c, w);
        let mut weight = 1.0;
        for (j, &nj) in NODES.iter().enumerate() {
            if j != k {
                weight *= (eps - nj * INTEGER_BAND) / ((nk - nj) * INTEGER_BAND);
            }
        }
        out += weight * fk;
    }
    out
}

/// A&S 15.3.6, valid when `c - a - b` is not an integer; `w = 1 - z` in (0, 1/2).
fn one_minus_z(a: f64, b: f64, c: f64, w: f64) -> f64 {
    let d = c - a - b;
    let first = gamma_ratio(&[c, d], &[c - a, c - b], 0.0);
    let second = gamma_ratio(&[c, -d], &[a, b], d * w.ln());
    let mut out = 0.0;
    if first != 0.0 {
        out += first * series(a, b, 1.0 - d, w);
    }
    if second != 0.0 {
        out += second * series(c - a, c - b, 1.0 + d, w);
    }
    out
}

/// `exp(extra) · Π Γ(num) / Π Γ(den)`, in log space; 0 when a denominator
/// argument is a pole (1/Γ = 0 there).
fn gamma_ratio(num: &[f64], den: &[f64], extra: f64) -> f64 {
    let mut log = extra;
    let mut sign = 1.0;
    for &x in den {
        if is_nonpositive_int(x) {
            return 0.0;
        }
        let (l, s) = ln_gamma_sign(x);
        log -= l;
        sign *= s;
    }
    for &x in num {
        let (l, s) = ln_gamma_sign(x);
        log += l;
        sign *= s;
    }
    sign * log.exp()
}

fn is_nonpositive_int(x: f64) -> bool {
    x <= 0.0 && x == x.floor()
}

/// Most terms any series here may take; only reached for `z` within ~1e-4 of
/// 1 on the direct path, which the transformations avoid.
const MAX_TERMS: u32 = 200_000;

/// The defining power series `Σ (a)_n (b)_n / ((c)_n n!) z^n`, `|z| < 1`.
///
/// Stops once the remaining tail is provably below half an ulp of the sum:
/// past every sign change of the Pochhammer factors the term ratio is
/// monotone in `n` and tends to `z`, so `|t_n| ρ / (1 - ρ)` with
/// `ρ = max(ratio_n, z)` bounds the tail.
pub(crate) fn series(a: f64, b: f64, c: f64, z: f64) -> f64 {
    series_with_magnitude(a, b, c, z).0
}

/// [`series`] and `Σ |t_n|`, whose ratio to the sum measures cancellation.
fn series_with_magnitude(a: f64, b: f64, c: f64, z: f64) -> (f64, f64) {
    let mut sum = 1.0;
    let mut magnitude = 1.0;
    let mut term = 1.0;
    let settle = (-a).max(-b).max(-c).max(0.0);
    let az = z.abs();
    for n in 0..MAX_TERMS {
        let nf = f64::from(n);
        let ratio = (a + nf) * (b + nf) / ((c + nf) * (nf + 1.0)) * z;
        term *= ratio;
        sum += term;
        magnitude += term.abs();
        if term == 0.0 {
            break;
        }
        if nf + 1.0 > settle {
            let next = ((a + nf + 1.0) * (b + nf + 1.0) / ((c + nf + 1.0) * (nf + 2.0)) * z).abs();
            let rho = next.max(az);
            if rho < 1.0 && term.abs() * rho <= (1.0 - rho) * 0.5 * f64::EPSILON * sum.abs() {
                break;
            }
        }
    }
    (sum, magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(1e-300)
    }

    #[test]
    fn ln_gamma_known_values() {
        assert!(close(ln_gamma(1.0), 0.0, 0.0) || ln_gamma(1.0).abs() < 1e-16);
        assert!(close(ln_gamma(0.5), 0.5 * std::f64::consts::PI.ln(), 1e-15));
        assert!(close(ln_gamma(10.0), (362_880.0f64).ln(), 1e-15));
        assert!(close(ln_gamma(171.5), 709.143_163_030_928_2, 1e-14));
    }

    #[test]
    fn digamma_known_values() {
        let euler = 0.577_215_664_901_532_9;
        assert!(close(digamma(1.0), -euler, 4e-15));
        assert!(close(digamma(0.5), -euler - 2.0 * 2f64.ln(), 4e-15));
        assert!(close(digamma(10.0), 2.251_752_589_066_721, 1e-15));
        assert!(close(digamma(1e-3), -1_000.575_571_931_810_3, 1e-14));
        assert!(close(digamma(123.456), 4.811_829_323_828_985, 1e-13));
        assert!(close(digamma(-0.5), 0.036_489_973_978_576_52, 1e-13));
        assert!(digamma(0.0).is_nan() && digamma(-3.0).is_nan());
    }

    #[test]
    fn digamma_is_the_derivative_of_ln_gamma() {
        for &x in &[0.07, 0.3, 1.7, 4.2, 9.9, 10.1, 55.0, 1e4] {
            let h = 1e-5 * x;
            let numeric = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!(close(digamma(x), numeric, 1e-7), "x = {x}");
        }
    }

    #[test]
    fn hyp2f1_closed_forms() {
        // 2F1(1,1;2;z) = -ln(1-z)/z
        for &z in &[
            -5.0f64, -0.9, -0.1, 1e-8, 0.2, 0.5, 0.51, 0.9, 0.99, 0.999_999,
        ] {
            let want = -(-z).ln_1p() / z;
            let got = hyp2f1(1.0, 1.0, 2.0, z);
            // c - a - b = 0: the interpolated branch for z > 1/2.
            assert!(close(got, want, 5e-11), "z = {z}: {got} vs {want}");
        }
        // 2F1(a,b;b;z) = (1-z)^-a
        for &(a, z) in &[
            (0.3, 0.7),
            (2.5, 0.95),
            (-1.3, 0.6),
            (4.0, -3.0),
            (0.7, 0.2),
        ] {
            let want = (1.0f64 - z).powf(-a);
            let got = hyp2f1(a, 1.7, 1.7, z);
            assert!(close(got, want, 1e-12), "a = {a}, z = {z}: {got} vs {want}");
        }
        // 2F1(1/2,1/2;3/2;z^2) = asin(z)/z
        for &s in &[0.1f64, 0.5, 0.8, 0.95, 0.9999] {
            let want = s.asin() / s;
            let got = hyp2f1(0.5, 0.5, 1.5, s * s);
            assert!(close(got, want, 1e-12), "s = {s}: {got} vs {want}");
        }
        // 2F1(1/2,1;3/2;-z^2) = atan(z)/z
        for &s in &[0.3f64, 1.0, 3.0, 30.0] {
            let want = s.atan() / s;
            let got = hyp2f1(0.5, 1.0, 1.5, -s * s);
            assert!(close(got, want, 1e-12), "s = {s}: {got} vs {want}");
        }
        // Polynomial: 2F1(-2, b; c; z) = 1 - 2bz/c + b(b+1)z^2/(c(c+1))
        let (b, c, z) = (1.5, 2.5, 0.8);
        let want = 1.0 - 2.0 * b * z / c + b * (b + 1.0) * z * z / (c * (c + 1.0));
        assert!(close(hyp2f1(-2.0, b, c, z), want, 1e-14));
        // Pfaff turns 2F1(1.3, 2; 1; -1/2) into (3/2)^-1.3 2F1(1.3, -1; 1; 1/3).
        let want = 1.5f64.powf(-1.3) * (1.0 - 1.3 / 3.0);
        assert!(close(hyp2f1(1.3, 2.0, 1.0, -0.5), want, 1e-14));
    }

    #[test]
    fn hyp2f1_at_one_is_gauss() {
        // 2F1(a,b;c;1) = Γ(c)Γ(c-a-b)/(Γ(c-a)Γ(c-b)), c - a - b > 0.
        let (a, b, c) = (0.3f64, 0.4f64, 2.2f64);
        let want = (ln_gamma(c) + ln_gamma(c - a - b) - ln_gamma(c - a) - ln_gamma(c - b)).exp();
        assert!(close(hyp2f1(a, b, c, 1.0), want, 1e-13));
        assert!(close(hyp2f1(a, b, c, 1.0 - 1e-12), want, 1e-6));
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.0), f64::INFINITY);
        assert!(hyp2f1(1.0, 1.0, 2.0, 1.5).is_nan());
        assert!(hyp2f1(1.0, 1.0, -2.0, 0.5).is_nan());
    }

    #[test]
    fn hyp2f1_mpmath_values() {
        // mpmath.hyp2f1 at 50 digits. Cases chosen to hit every branch:
        // c - a - b exactly/near integer near z = 1, negative parameters, large c.
        let cases: &[(f64, f64, f64, f64, f64)] = &[
            (1.5, 2.5, 4.0, 0.95, 7.824_226_341_235_016),
            (1.5, 2.5, 4.000_000_001, 0.95, 7.824_226_333_676_487),
            (1.5, 2.5, 4.00001, 0.95, 7.824_150_756_582_339),
            (0.25, 0.75, 2.0, 0.99, 1.190_335_714_645_442_5),
            (0.25, 0.75, 1.0, 0.99, 1.974_908_683_881_454_3),
            (-0.3, -0.7, 0.4, 0.8, 1.455_830_862_494_032_2),
            (2.2, -0.2, 0.9, 0.92, -2.162_582_021_948_522),
            (10.0, 12.0, 5.0, 0.8, 16_600_504_557_291.73),
            (0.4, 0.6, 1.9, -0.999, 0.906_270_504_278_278),
        ];
        for &(a, b, c, z, want) in cases {
            let got = hyp2f1(a, b, c, z);
            assert!(
                close(got, want, 1e-9),
                "2F1({a},{b};{c};{z}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn series_stops_on_polynomials_and_converges() {
        assert_eq!(series(-1.0, 2.0, 3.0, 0.5), 1.0 - 2.0 * 0.5 / 3.0);
        assert!(close(series(1.0, 1.0, 2.0, 0.5), 2.0 * 2f64.ln(), 1e-15));
    }
}
