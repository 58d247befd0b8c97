//! Buy-'Til-You-Die churn-risk models (BG/NBD, MBG/NBD) and the Gamma-Gamma spend model: fitting and per-customer scoring.
//!
//! SPEC §3 "Churn risk (model)". Pure and synchronous: no I/O, no clock, no
//! threads, no global state. The caller owns the schedule (it refits in the
//! background and swaps the parameters in) and the time unit: every time here
//! (`t_x`, `age`, horizons, `alpha`) is in the one unit the caller chose — the
//! sidecar uses days.
//!
//! * [`Model::fit`] — maximum likelihood for `(r, α, a, b)` on a [`FitData`]
//!   (identical `(x, t_x, T)` rows aggregated with weights), warm-startable.
//! * [`Scorer`] — P(alive) and the conditional expected number of purchases
//!   `E[X(t) | x, t_x, T]` with per-fit constants precomputed, for rescoring
//!   every customer after each refit.
//! * [`gamma_gamma`] — the spend model: fit `(p, q, v)` and the conditional
//!   expected average order value, shrunk toward the population mean.
//! * [`special`] — log-gamma, digamma and the Gauss hypergeometric 2F1.
//! * [`simulate`] — synthetic customers drawn from a model (tests, benches, demo).
//!
//! References: Fader, Hardie & Lee (2005a) "Counting Your Customers the Easy
//! Way" (BG/NBD); Batislam, Denizel & Filiztekin (2007) with Wagner & Hoppe's
//! (2008) erratum (MBG/NBD); Fader, Hardie & Lee (2005b) "RFM and CLV" and
//! Hardie's note 025 (Gamma-Gamma). Formulas follow `lifetimes` 0.11.3, which
//! the integration tests (`tests/model_lifetimes.rs`) compare against.

mod bgnbd;
mod data;
pub mod gamma_gamma;
mod optimize;
mod series;
pub mod simulate;
pub mod special;

pub use bgnbd::{Score, Scorer};
pub use data::{FitData, SpendData};
pub use gamma_gamma::GammaGammaParams;

/// Which Buy-'Til-You-Die model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Model {
    /// BG/NBD (Fader, Hardie & Lee 2005): a customer can only drop out right
    /// after a repeat purchase, so every customer with `x = 0` is rated
    /// certainly alive — which is why it is not the default.
    BgNbd,
    /// MBG/NBD (Batislam, Denizel & Filiztekin 2007): a customer can also drop
    /// out at time 0, right after the first purchase; one-time buyers age out.
    #[default]
    MbgNbd,
}

impl Model {
    /// The name used in labels and logs: `bg_nbd` or `mbg_nbd`.
    pub fn name(self) -> &'static str {
        match self {
            Model::BgNbd => "bg_nbd",
            Model::MbgNbd => "mbg_nbd",
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Population parameters of BG/NBD and MBG/NBD: purchase rates are
/// Gamma(`r`, rate `alpha`), dropout probabilities Beta(`a`, `b`). `alpha` is
/// in the caller's time unit; all four must be finite and positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

impl Params {
    /// All four finite and positive.
    pub fn is_valid(&self) -> bool {
        [self.r, self.alpha, self.a, self.b]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
    }
}

/// One customer's repeat-purchase history, measured at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct History {
    /// Repeat purchases: orders after the first one.
    pub x: u32,
    /// Time of the last purchase, measured from the first (`0` when `x = 0`).
    pub t_x: f64,
    /// The customer's age: time from the first purchase to now (`T` in the papers).
    pub age: f64,
}

impl History {
    pub fn new(x: u32, t_x: f64, age: f64) -> History {
        History { x, t_x, age }
    }

    /// Why this row cannot enter a fit, if it cannot.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if !(self.age.is_finite() && self.age >= 0.0) {
            Some("age (T) must be finite and >= 0")
        } else if !(self.t_x.is_finite() && self.t_x >= 0.0 && self.t_x <= self.age) {
            Some("t_x must be finite and within [0, T]")
        } else if self.x == 0 && self.t_x != 0.0 {
            Some("t_x must be 0 when x = 0")
        } else {
            None
        }
    }
}

/// Optimiser settings shared by every fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// Quasi-Newton iterations before giving up (`converged = false`).
    pub max_iterations: u32,
    /// Converged when every partial derivative of the mean negative
    /// log-likelihood with respect to the log-parameters is at most this.
    pub tolerance: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            max_iterations: 200,
            tolerance: 1e-8,
        }
    }
}

/// The outcome of a maximum-likelihood fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit<P> {
    pub params: P,
    /// Log-likelihood of the data at `params`: a weighted sum over customers,
    /// in the data's time unit (comparable across fits of the same data only).
    pub log_likelihood: f64,
    /// Quasi-Newton iterations taken.
    pub iterations: u32,
    /// Likelihood(+gradient) evaluations taken.
    pub evaluations: u32,
    /// False when the iteration limit was hit, the line search could make no
    /// progress before the gradient was small, or a parameter ran off towards
    /// 0 or infinity (degenerate data, e.g. no repeat purchases at all). The
    /// parameters are still the best found, but should not replace good ones.
    pub converged: bool,
}

/// Errors of this module: all are the caller's data or arguments.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("no customers to fit (empty data or zero total weight)")]
    EmptyData,
    #[error("row {index}: {reason}")]
    InvalidRow { index: usize, reason: &'static str },
    #[error("row {index}: weight must be finite and >= 0")]
    InvalidWeight { index: usize },
    #[error("the log-likelihood is not finite at the starting point")]
    NonFiniteStart,
}
