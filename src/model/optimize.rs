//! A small BFGS minimiser for the fits (3 or 4 log-parameters).
//!
//! Why hand-written: the likelihoods here have cheap analytic gradients, so a
//! quasi-Newton method needs several times fewer likelihood evaluations than
//! Nelder–Mead (CDNOW: 30-35 from a cold start), and the whole thing is ~250
//! lines against a dependency tree (argmin + argmin-math) for a 2-core build.
//!
//! * The inverse Hessian is seeded from a forward-difference Hessian of the
//!   analytic gradient (N evaluations) when that is positive definite, which
//!   makes warm starts converge in a few Newton-like steps.
//! * Line search: weak Wolfe by bracketing/bisection (Lewis & Overton), steps
//!   capped in log-space so a parameter changes by at most a factor e^2 per
//!   iteration; points outside `|θ| <= 40` or with a non-finite value count
//!   as +inf.
//! * "Converged" means a small gradient *and* an identified optimum: the
//!   Hessian there is positive definite and not nearly flat, so an optimiser
//!   that ran off towards a boundary supremum does not claim success.

/// Largest change of any log-parameter in one iteration.
const MAX_STEP: f64 = 2.0;
/// Log-parameters beyond this are infeasible (`e^40 ≈ 2e17`).
const FEASIBLE: f64 = 40.0;
const ARMIJO: f64 = 1e-4;
const CURVATURE: f64 = 0.9;
const LINE_SEARCH_STEPS: u32 = 60;

/// How far (in log-space) from its natural scale a fitted parameter may end
/// and still count as converged: a factor 1e6. Beyond it the likelihood's
/// supremum lies on a boundary (e.g. `r -> 0` when nobody buys again, or
/// `r, α -> ∞` when every customer has the same rate) and the "optimum" is an
/// artefact of where the gradient became small.
const PLAUSIBLE: f64 = 13.815_510_557_964_274; // ln(1e6)

/// Whether every log-parameter is within [`PLAUSIBLE`] of its natural scale
/// (0 for dimensionless parameters, the log of the data's scale otherwise).
pub(crate) fn plausible<const N: usize>(theta: &[f64; N], scale: &[f64; N]) -> bool {
    theta
        .iter()
        .zip(scale)
        .all(|(t, s)| (t - s).abs() <= PLAUSIBLE)
}

/// Bound on the trace of the inverse Hessian (of the mean negative
/// log-likelihood in log-parameters) for a fit to count as converged: the
/// smallest curvature must be about 1e-6 or more, i.e. standard errors of the
/// log-parameters below ~1000/√n.
const MAX_INVERSE_CURVATURE: f64 = 1e6;

/// Forward-difference step in log-parameters for the Hessian.
const HESSIAN_STEP: f64 = 1e-5;

/// The inverse of a forward-difference Hessian (from the analytic gradient)
/// at `x`, if that Hessian is positive definite. Costs N evaluations.
#[allow(clippy::needless_range_loop)] // index loops read like the textbook algorithm
fn inverse_hessian<const N: usize>(
    eval: &mut impl FnMut(&[f64; N], &mut [f64; N]) -> f64,
    x: &[f64; N],
    g: &[f64; N],
) -> Option<[[f64; N]; N]> {
    let mut hess = [[0.0; N]; N];
    for i in 0..N {
        let mut xi = *x;
        xi[i] += HESSIAN_STEP;
        let mut gi = [0.0; N];
        if !eval(&xi, &mut gi).is_finite() {
            return None;
        }
        for j in 0..N {
            hess[i][j] = (gi[j] - g[j]) / HESSIAN_STEP;
        }
    }
    for i in 0..N {
        for j in 0..i {
            let m = 0.5 * (hess[i][j] + hess[j][i]);
            hess[i][j] = m;
            hess[j][i] = m;
        }
    }
    // Cholesky H = L Lᵀ, then H⁻¹ column by column.
    let mut l = [[0.0; N]; N];
    for i in 0..N {
        for j in 0..=i {
            let mut sum = hess[i][j];
            for k in 0..j {
                sum -= l[i][k] * l[j][k];
            }
            if i == j {
                if sum.is_nan() || sum <= 0.0 {
                    return None;
                }
                l[i][i] = sum.sqrt();
            } else {
                l[i][j] = sum / l[j][j];
            }
        }
    }
    let mut inv = [[0.0; N]; N];
    for col in 0..N {
        let mut y = [0.0; N];
        for i in 0..N {
            let mut sum = if i == col { 1.0 } else { 0.0 };
            for k in 0..i {
                sum -= l[i][k] * y[k];
            }
            y[i] = sum / l[i][i];
        }
        for i in (0..N).rev() {
            let mut sum = y[i];
            for k in i + 1..N {
                sum -= l[k][i] * inv[k][col];
            }
            inv[i][col] = sum / l[i][i];
        }
    }
    inv.iter().flatten().all(|v| v.is_finite()).then_some(inv)
}

pub(crate) struct Outcome<const N: usize> {
    pub x: [f64; N],
    pub f: f64,
    pub iterations: u32,
    pub evaluations: u32,
    pub converged: bool,
}

fn dot<const N: usize>(u: &[f64; N], v: &[f64; N]) -> f64 {
    u.iter().zip(v).map(|(a, b)| a * b).sum()
}

fn max_abs<const N: usize>(u: &[f64; N]) -> f64 {
    u.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn identity<const N: usize>(scale: f64) -> [[f64; N]; N] {
    let mut h = [[0.0; N]; N];
    for (i, row) in h.iter_mut().enumerate() {
        row[i] = scale;
    }
    h
}

/// Minimise from `warm` when given; when there is none, or it does not
/// converge (or its value is not finite), also from `cold`, and keep the
/// better outcome — converged first, then lower value. The counters add up
/// both runs. `None` only when no start has a finite value.
pub(crate) fn minimize_from<const N: usize>(
    mut objective: impl FnMut(&[f64; N], &mut [f64; N]) -> f64,
    warm: Option<[f64; N]>,
    cold: [f64; N],
    max_iterations: u32,
    tolerance: f64,
) -> Option<Outcome<N>> {
    let warm = warm.and_then(|x0| minimize(&mut objective, x0, max_iterations, tolerance));
    if warm.as_ref().is_some_and(|w| w.converged) {
        return warm;
    }
    let cold = minimize(&mut objective, cold, max_iterations, tolerance);
    match (warm, cold) {
        (Some(w), Some(c)) => {
            let (iterations, evaluations) =
                (w.iterations + c.iterations, w.evaluations + c.evaluations);
            let mut best = if c.converged || c.f < w.f { c } else { w };
            best.iterations = iterations;
            best.evaluations = evaluations;
            Some(best)
        }
        (w, c) => c.or(w),
    }
}

/// Minimise `objective` (value, and gradient written into its second
/// argument) from `x0`. `None` when the value at `x0` is not finite.
pub(crate) fn minimize<const N: usize>(
    mut objective: impl FnMut(&[f64; N], &mut [f64; N]) -> f64,
    x0: [f64; N],
    max_iterations: u32,
    tolerance: f64,
) -> Option<Outcome<N>> {
    let mut eval = |x: &[f64; N], g: &mut [f64; N]| -> f64 {
        if x.iter().any(|v| v.is_nan() || v.abs() > FEASIBLE) {
            return f64::INFINITY;
        }
        let f = objective(x, g);
        if f.is_finite() && g.iter().all(|v| v.is_finite()) {
            f
        } else {
            f64::INFINITY
        }
    };
    let mut x = x0;
    let mut g = [0.0; N];
    let mut f = eval(&x, &mut g);
    let mut evaluations = 1;
    if !f.is_finite() {
        return None;
    }
    // Seed the inverse Hessian with a finite-difference Hessian when it is
    // positive definite (always near a warm start): the likelihoods have
    // strongly correlated parameters, and an identity start costs BFGS ~N
    // iterations per ridge to learn what N gradient evaluations give here.
    let (mut h, mut fresh) = match inverse_hessian(&mut eval, &x, &g) {
        Some(inv) => (inv, false),
        None => (identity::<N>(1.0), true),
    };
    evaluations += N as u32;
    let mut iterations = 0;
    let mut converged = false;
    let mut stalled = false;
    while iterations < max_iterations {
        if max_abs(&g) <= tolerance {
            converged = true;
            break;
        }
        iterations += 1;
        let mut d = [0.0; N];
        for i in 0..N {
            d[i] = -dot(&h[i], &g);
        }
        let mut gd = dot(&g, &d);
        if gd.is_nan() || gd >= 0.0 {
            // Not a descent direction (H lost positive definiteness): restart.
            h = identity(1.0);
            fresh = true;
            d = g.map(|v| -v);
            gd = dot(&g, &d);
        }
        let s_max = MAX_STEP / max_abs(&d);
        let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
        let mut step = s_max.min(1.0);
        let mut best: Option<(f64, [f64; N], [f64; N])> = None;
        for _ in 0..LINE_SEARCH_STEPS {
            let mut xt = x;
            for i in 0..N {
                xt[i] += step * d[i];
            }
            let mut gt = [0.0; N];
            let ft = eval(&xt, &mut gt);
            evaluations += 1;
            if ft.is_nan() || ft > f + ARMIJO * step * gd {
                hi = step;
            } else {
                if best.as_ref().is_none_or(|(fb, _, _)| ft < *fb) {
                    best = Some((ft, xt, gt));
                }
                if dot(&gt, &d) >= CURVATURE * gd {
                    break; // weak Wolfe
                }
                lo = step;
                if hi.is_infinite() && step >= s_max {
                    break; // capped: take the longest allowed step
                }
            }
            step = if hi.is_infinite() {
                (2.0 * step).min(s_max)
            } else {
                0.5 * (lo + hi)
            };
            if hi.is_finite() && hi - lo <= 1e-14 * hi {
                break;
            }
        }
        let Some((ft, xt, gt)) = best else {
            stalled = true;
            break;
        };
        let mut s = [0.0; N];
        let mut y = [0.0; N];
        for i in 0..N {
            s[i] = xt[i] - x[i];
            y[i] = gt[i] - g[i];
        }
        let f_old = f;
        x = xt;
        g = gt;
        f = ft;
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&y, &y).sqrt() {
            if fresh {
                // Nocedal & Wright (6.20): scale the first inverse Hessian.
                h = identity(sy / dot(&y, &y));
                fresh = false;
            }
            let mut hy = [0.0; N];
            for i in 0..N {
                hy[i] = dot(&h[i], &y);
            }
            let yhy = dot(&y, &hy);
            let c = (sy + yhy) / (sy * sy);
            for i in 0..N {
                for j in 0..N {
                    h[i][j] += c * s[i] * s[j] - (hy[i] * s[j] + s[i] * hy[j]) / sy;
                }
            }
        }
        if f_old - f <= 4.0 * f64::EPSILON * f.abs() {
            // At the resolution of f: no further progress is possible.
            stalled = true;
            break;
        }
    }
    if !converged && max_abs(&g) <= tolerance {
        converged = true;
    }
    if stalled && max_abs(&g) <= 100.0 * tolerance {
        converged = true;
    }
    if converged {
        // Identified: the Hessian is positive definite and no direction is
        // nearly flat (trace of the inverse bounds 1/λ_min within a factor N).
        // A run-off to a boundary optimum has curvature ~ its gradient there.
        evaluations += N as u32;
        converged = inverse_hessian(&mut eval, &x, &g).is_some_and(|inv| {
            let trace: f64 = (0..N).map(|i| inv[i][i]).sum();
            trace <= MAX_INVERSE_CURVATURE
        });
    }
    Some(Outcome {
        x,
        f,
        iterations,
        evaluations,
        converged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosenbrock() {
        let out = minimize(
            |x: &[f64; 2], g: &mut [f64; 2]| {
                let (a, b) = (x[0], x[1]);
                g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
                g[1] = 200.0 * (b - a * a);
                (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
            },
            [-1.2, 1.0],
            500,
            1e-10,
        )
        .unwrap();
        assert!(out.converged);
        assert!((out.x[0] - 1.0).abs() < 1e-8 && (out.x[1] - 1.0).abs() < 1e-8);
        assert!(out.iterations < 100, "{}", out.iterations);
    }

    #[test]
    fn runaway_parameter_stays_finite() {
        // Infimum at x -> -inf (a boundary optimum): stop finite, without NaN.
        // Callers judge whether the parameters ran off (see `plausible`).
        let out = minimize(
            |x: &[f64; 1], g: &mut [f64; 1]| {
                g[0] = x[0].exp();
                x[0].exp()
            },
            [0.0],
            500,
            1e-8,
        )
        .unwrap();
        assert!(out.f.is_finite() && out.x[0].is_finite() && out.x[0] < -10.0);
    }

    #[test]
    fn linear_objective_hits_the_feasible_box() {
        let out = minimize(
            |x: &[f64; 1], g: &mut [f64; 1]| {
                g[0] = 1.0;
                x[0]
            },
            [0.0],
            500,
            1e-8,
        )
        .unwrap();
        assert!(!out.converged && out.x[0] >= -FEASIBLE);
    }

    #[test]
    fn a_failed_warm_start_falls_back_to_the_cold_start() {
        let bowl = |x: &[f64; 1], g: &mut [f64; 1]| {
            g[0] = 2.0 * (x[0] - 1.0);
            if x[0] < 5.0 {
                (x[0] - 1.0).powi(2)
            } else {
                f64::NAN
            }
        };
        let out = minimize_from(bowl, Some([10.0]), [0.0], 100, 1e-10).unwrap();
        assert!(out.converged && (out.x[0] - 1.0).abs() < 1e-9);
        // A warm start that cannot converge in the budget (none here): the
        // cold run is tried too and the better outcome kept, both counted.
        let warm = minimize(bowl, [4.9], 0, 1e-10).unwrap();
        assert!(!warm.converged);
        let both = minimize_from(bowl, Some([4.9]), [1.0 + 1e-12], 0, 1e-10).unwrap();
        assert!(both.converged && both.x[0] == 1.0 + 1e-12);
        assert!(both.evaluations > warm.evaluations);
    }

    #[test]
    fn non_finite_start_is_refused() {
        assert!(minimize(|_: &[f64; 1], _: &mut [f64; 1]| f64::NAN, [0.0], 10, 1e-8).is_none());
    }
}
