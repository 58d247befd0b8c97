//! The Euler-transformed series of `E[X(t) | alive]`, with its term ratios computed once per fit and `x`.
//!
//! For `z = t / (α+T+t) <= 1/2`, [`Scorer`](super::Scorer) evaluates
//!
//! ```text
//! C [(1-(1-z)^B)/B - S (1-z)^B],   C·S = Σ_{n≥1} v_n,   v_1 = A z,   v_{n+1} = v_n q_n z,
//! q_n = (A+n)(B+n) / ((C+n)(n+1)),   A = a+b-1+s-r,   B = a-1,   C = a+b-1+s+x
//! ```
//!
//! (`C` cancels from the first term, so `C -> 0` is harmless too). The ratios
//! `q_n` depend on the fit and on `x`, not on the customer's age `T`: a
//! rescoring sweep scores millions of customers with a few dozen distinct `x`,
//! so the first [`TERMS`] ratios of each `x` below [`CACHED_X`] are computed
//! once, on first use, and shared by the sweep's threads (at most 256 KiB per
//! fit). A term then costs two multiplications and two additions, and the
//! convergence test runs once per eight terms, where the direct form needs four
//! more additions, two more multiplications and a division per term, and tested
//! after each: the bench files' sweeps (~60 terms per customer) went from 2,950
//! to 960 instructions per customer (docs/performance.md). Later terms, and
//! larger `x`, compute `q_n z` directly and are tested one by one.
//!
//! A cached term is `round(round(q_n) z)` where the direct form rounds
//! `((A+n)(B+n) z) / ((C+n)(n+1))`: both are within a few units in the last
//! place of the exact ratio, and the sum of ~60 such terms agrees with the
//! direct one to ~1e-14 relative (tested below on the fits seen in practice
//! and at the parameter extremes).

use std::sync::OnceLock;

/// Values of `x` (repeat ORDERs) whose ratios are cached.
const CACHED_X: usize = 64;
/// Ratios cached per `x`: `q_1 ..= q_TERMS` (4 KiB).
const TERMS: usize = 512;
/// Terms summed at most before the series counts as not converged.
const MAX_TERMS: usize = 10_000;

/// The series of one fit: `A`, `B`, `C - x` and the ratios per `x`.
pub(super) struct EulerSeries {
    big_a: f64,
    big_b: f64,
    c0: f64,
    ratios: Box<[OnceLock<Box<[f64]>>]>,
}

impl std::fmt::Debug for EulerSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EulerSeries")
            .field("big_a", &self.big_a)
            .field("big_b", &self.big_b)
            .field("c0", &self.c0)
            .field(
                "cached_x",
                &self.ratios.iter().filter(|r| r.get().is_some()).count(),
            )
            .finish()
    }
}

impl EulerSeries {
    pub(super) fn new(big_a: f64, big_b: f64, c0: f64) -> EulerSeries {
        EulerSeries {
            big_a,
            big_b,
            c0,
            ratios: (0..CACHED_X).map(|_| OnceLock::new()).collect(),
        }
    }

    /// `q_1 ..= q_TERMS` of `x`, computed on first use; none for `x >= CACHED_X`.
    fn ratios(&self, x: u32) -> &[f64] {
        let Some(cell) = usize::try_from(x).ok().and_then(|x| self.ratios.get(x)) else {
            return &[];
        };
        cell.get_or_init(|| {
            let (a, b, c) = (self.big_a, self.big_b, self.c0 + f64::from(x));
            (1..=TERMS)
                .map(|n| {
                    let n = n as f64;
                    (a + n) * (b + n) / ((c + n) * (n + 1.0))
                })
                .collect()
        })
    }

    /// `C [(1-(1-z)^B)/B - S (1-z)^B]` for `x` at `z` (`ln_w = ln(1-z)`). `None`
    /// when more than 6 of the 16 digits cancelled, or (absurd parameters, `a` ~
    /// 1e4) the series did not converge in 10^4 terms: then the caller uses the
    /// original form.
    pub(super) fn sum(&self, x: u32, z: f64, ln_w: f64) -> Option<f64> {
        self.sum_with(self.ratios(x), x, z, ln_w)
    }

    /// [`EulerSeries::sum`] with `ratios` as the cached ones (`&[]`: every ratio computed).
    fn sum_with(&self, ratios: &[f64], x: u32, z: f64, ln_w: f64) -> Option<f64> {
        let (result, scale, converged) = self.evaluate(ratios, x, z, ln_w);
        if converged && result.is_finite() && scale <= 1e6 * result.abs() {
            Some(result)
        } else {
            None
        }
    }

    /// The series' value, the larger magnitude of the two terms it is the
    /// difference of (the scale of its rounding error), and whether it converged.
    fn evaluate(&self, ratios: &[f64], x: u32, z: f64, ln_w: f64) -> (f64, f64, bool) {
        let (big_a, big_b) = (self.big_a, self.big_b);
        let c = self.c0 + f64::from(x);
        let bl = big_b * ln_w;
        let wb = bl.exp();
        let first = if big_b != 0.0 {
            -bl.exp_m1() / big_b
        } else {
            -ln_w
        };
        // `v_{n+1} / v_n`: cached, or past the cache computed.
        let ratio = |n: usize| match ratios.get(n - 1) {
            Some(q) => q * z,
            None => {
                let n = n as f64;
                (big_a + n) * (big_b + n) * z / ((c + n) * (n + 1.0))
            }
        };
        // Up to term `settle` the ratios may still grow (a negative `A`, `B` or
        // `C` + n): the tail bound below holds from the next term on.
        let settle = (-big_a).max(-big_b).max(-c).max(0.0);
        let settle = if settle < MAX_TERMS as f64 {
            settle as usize
        } else {
            MAX_TERMS
        };
        let mut v = big_a * z;
        let mut sum = v;
        let mut sum_abs = v.abs();
        // The term `v` is the `n`th.
        let mut n = 1;
        // The tail after term `n` is at most `|v| rho / (1 - rho)`, rho the
        // largest ratio still to come: `|q_n z|`, falling towards `z`.
        let small_tail = |v: f64, n: usize, sum: f64| {
            let next = ratio(n).abs();
            let rho = if next > z { next } else { z };
            n > settle && v.abs() * rho <= (1.0 - rho) * (0.5 * f64::EPSILON) * sum.abs()
        };
        let mut converged = false;
        // The cached ratios eight terms at a time, one convergence test per
        // eight (the terms past the test's are below its bound: summing them
        // costs less than testing after each).
        let (octets, _) = ratios.as_chunks::<8>();
        for octet in octets {
            if v == 0.0 || small_tail(v, n, sum) {
                converged = true;
                break;
            }
            for q in octet {
                v *= q * z;
                sum += v;
                sum_abs += v.abs();
            }
            n += 8;
        }
        while !converged && n < MAX_TERMS {
            if v == 0.0 || small_tail(v, n, sum) {
                converged = true;
                break;
            }
            v *= ratio(n);
            sum += v;
            sum_abs += v.abs();
            n += 1;
        }
        let result = c * first - wb * sum;
        let scale = (c * first).abs().max(wb * sum_abs);
        (result, scale, converged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(A, B, C - x)` of fits: CDNOW's BG/NBD and MBG/NBD, the bench files'
    /// degenerate MBG/NBD fits (`a` ≈ 110; `r`, `b` ≈ 3.4e6), a negative `A`
    /// (alternating terms), `a` < 1 and `a` = 1 (`B` = 0).
    const FITS: [(f64, f64, f64); 7] = [
        (2.969_045, -0.207_114, 3.211_638),
        (1.5, 0.5, 3.5),
        (110.679_158, 109.677_147, 110.686_182),
        (3_333_163.758, -0.363_484, 3_400_963.673),
        (-40.3, 0.7, 2.1),
        (-0.2, -0.6, 0.15),
        (0.4, 0.0, 1.2),
    ];

    #[test]
    fn cached_ratios_sum_to_the_directly_computed_series() {
        let mut compared = 0;
        for &(a, b, c0) in &FITS {
            let series = EulerSeries::new(a, b, c0);
            for x in [0u32, 1, 2, 5, 17, 63, 64, 200] {
                for i in 1..=100 {
                    let z = 0.5 * f64::from(i) / 100.0;
                    let ln_w = (-z).ln_1p();
                    let cached = series.sum(x, z, ln_w);
                    let direct = series.sum_with(&[], x, z, ln_w);
                    match (cached, direct) {
                        (Some(g), Some(d)) => {
                            // Relative to the terms it is the difference of: up to
                            // 6 of their digits may cancel, in both forms alike.
                            let (_, scale, _) = series.evaluate(&[], x, z, ln_w);
                            let rel = (g - d).abs() / scale;
                            assert!(rel < 1e-14, "A={a} B={b} x={x} z={z}: {g} vs {d}");
                            compared += 1;
                        }
                        // Either both converge or neither; the caller's fallback
                        // then runs for both.
                        (g, d) => assert_eq!(g.is_some(), d.is_some(), "A={a} x={x} z={z}"),
                    }
                }
            }
        }
        assert!(compared > 5_000, "only {compared} sums compared");
    }

    #[test]
    fn ratios_are_cached_below_cached_x_only() {
        let series = EulerSeries::new(2.0, 0.5, 3.0);
        assert_eq!(series.ratios(0).len(), TERMS);
        assert_eq!(series.ratios(CACHED_X as u32 - 1).len(), TERMS);
        assert!(series.ratios(CACHED_X as u32).is_empty());
        // q_1 = (A+1)(B+1) / ((C+1)·2) for x = 0.
        assert_eq!(series.ratios(0)[0], 3.0 * 1.5 / (4.0 * 2.0));
        assert!(format!("{series:?}").contains("cached_x: 2"));
    }
}
