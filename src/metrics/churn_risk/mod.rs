//! Churn risk per customer (SPEC §3 "Churn risk (model)"): repeat-purchase histories and rescoring.
//!
//! Each task keeps, per customer with an ORDER, the history the Buy-'Til-You-Die
//! models need — first and last ORDER time, number of ORDERs, spend — updated
//! per event in O(1) and as a function of the set of ORDERs (first = earliest,
//! last = latest, whatever the arrival order). Fitting happens elsewhere, in the
//! background (`crate::model`); a *rescoring sweep* then evaluates every
//! customer at the watermark `w`: `x` = ORDERs − 1, `t_x` = last − first,
//! `T` = w − first, in days; `churn_risk = 1 − P(alive)`, the expected ORDERs in
//! the next 30 days, and a predicted value (expected ORDERs × the Gamma-Gamma
//! expected order value, which shrinks the customer's mean repeat order toward
//! the population mean). Crossing `risk_threshold` upward is counted in the
//! bucket of the sweep's watermark: the churn-spike signal.

use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};

use super::{CustomerId, CustomerIds};
use crate::checkpoint::delta::{Kept, Merge};
use crate::checkpoint::dense::Dense;
use crate::event::Millis;
use crate::model::{GammaGammaParams, Model, Params, Scorer};
use crate::window::{BucketRing, WindowSpec};

mod sweep;

pub use sweep::{CustomerRisk, ExactSum, Rescore, Sweep};

pub(crate) const DAY_MS: f64 = 86_400_000.0;
/// The horizon of `expected_orders_30d` and the predicted value, in days.
pub const HORIZON_DAYS: f64 = 30.0;
/// Upper bounds of the churn-risk distribution published on `/metrics`.
pub(crate) const RISK_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// The repeat-purchase history of one customer, and what was last published about them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct History {
    first: Millis,
    first_amount: i64,
    last: Millis,
    orders: u32,
    total_minor: i64,
    /// Whether the risk at the last sweep was at or above the threshold, and the
    /// risk last published on the customer-risk topic.
    above: bool,
    /// NaN: nothing published yet (saved as `Option<f64>`; 8 bytes less per
    /// customer than an `Option` in memory).
    #[serde(with = "nan_is_none")]
    published: f64,
}

/// A history slot no customer holds (the per-customer arrays need a default).
impl Default for History {
    fn default() -> History {
        History {
            first: 0,
            first_amount: 0,
            last: 0,
            orders: 0,
            total_minor: 0,
            above: false,
            published: f64::NAN,
        }
    }
}

/// `f64::NAN` in memory is `None` in the saved form, any other value `Some`.
mod nan_is_none {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        (!v.is_nan()).then_some(*v).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

impl History {
    /// `(x, t_x, T)` in days at watermark `at`.
    fn rfm(&self, at: Millis) -> (u32, f64, f64) {
        let x = self.orders.saturating_sub(1);
        let t_x = (self.last - self.first) as f64 / DAY_MS;
        let age = ((at - self.first) as f64 / DAY_MS).max(t_x);
        (x, t_x, age)
    }

    /// Mean value of the repeat ORDERs (all but the first), if any.
    fn repeat_mean(&self) -> Option<f64> {
        let x = self.orders.saturating_sub(1);
        (x > 0).then(|| (self.total_minor - self.first_amount) as f64 / x as f64)
    }
}

/// A fitted population: the scorer and, where enough repeat buyers exist, the spend model.
#[derive(Debug)]
pub struct RiskModel {
    pub model: Model,
    pub params: Params,
    pub log_likelihood: f64,
    pub customers: usize,
    pub converged: bool,
    pub spend: Option<GammaGammaParams>,
    scorer: Scorer,
}

impl RiskModel {
    pub fn new(
        model: Model,
        params: Params,
        log_likelihood: f64,
        customers: usize,
        converged: bool,
        spend: Option<GammaGammaParams>,
    ) -> RiskModel {
        RiskModel {
            model,
            params,
            log_likelihood,
            customers,
            converged,
            spend,
            scorer: Scorer::new(model, params),
        }
    }
}

/// Histories and risk crossings of one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RiskState {
    /// Per customer number: an array slot, no hashing on the ORDER path.
    customers: Dense<CustomerId, History>,
    crossings: Vec<BucketRing<i64>>,
}

impl Merge for RiskState {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        self.crossings = newer.crossings;
        self.customers.merge(newer.customers)
    }

    fn saved(&mut self) {
        self.customers.saved();
    }
}

/// Whether `state_ttl` forgot the customer at `at`: its last ORDER is more than `ttl` before.
fn expired(h: &History, at: Millis, ttl_ms: Option<i64>) -> bool {
    ttl_ms.is_some_and(|ttl| at - h.last > ttl)
}

/// A stable 64-bit hash of a customer id, for uniform, deterministic sampling.
fn sample_hash(customer: &str) -> u64 {
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(customer.as_bytes());
    h.finish()
}

impl RiskState {
    pub fn new(specs: &[WindowSpec]) -> RiskState {
        RiskState {
            customers: Dense::default(),
            crossings: specs.iter().map(|s| BucketRing::new(s.bucket_ms)).collect(),
        }
    }

    /// An accepted ORDER.
    pub fn on_order(&mut self, customer: CustomerId, t: Millis, amount_minor: i64) {
        match self.customers.get_mut(&customer) {
            None => {
                self.customers.insert(
                    customer,
                    History {
                        first: t,
                        first_amount: amount_minor,
                        last: t,
                        orders: 1,
                        total_minor: amount_minor,
                        above: false,
                        published: f64::NAN,
                    },
                );
            }
            Some(h) => {
                // The first ORDER is the earliest (ties: the smaller amount), whatever the arrival order.
                if (t, amount_minor) < (h.first, h.first_amount) {
                    h.first = t;
                    h.first_amount = amount_minor;
                }
                h.last = h.last.max(t);
                h.orders += 1;
                h.total_minor += amount_minor;
            }
        }
    }

    /// Adds this task's histories at `at` for fitting: `(x, t_x, T)` and, for
    /// repeat buyers, `(x, mean repeat value)`. With `keep_below`, only customers
    /// whose id hashes below it (a uniform sample).
    pub fn histories(
        &self,
        names: &CustomerIds,
        at: Millis,
        ttl_ms: Option<i64>,
        keep_below: Option<u64>,
        rfm: &mut Vec<crate::model::History>,
        spend: &mut Vec<(u32, f64)>,
    ) {
        for (c, h) in self.customers.iter() {
            if keep_below.is_some_and(|k| sample_hash(names.name(c)) >= k)
                || h.first > at
                || expired(h, at, ttl_ms)
            {
                continue;
            }
            let (x, t_x, age) = h.rfm(at);
            rfm.push(crate::model::History::new(x, t_x, age));
            if let Some(m) = h.repeat_mean().filter(|m| *m > 0.0) {
                spend.push((x, m));
            }
        }
    }

    pub fn buckets(&self) -> usize {
        self.crossings.iter().map(|w| w.len()).sum()
    }

    /// The time of the customer's last ORDER, if it has a history.
    pub(crate) fn last_order(&self, c: CustomerId) -> Option<Millis> {
        self.customers.get(&c).map(|h| h.last)
    }

    /// Whether customer `c` has a repeat-purchase history.
    pub fn holds(&self, c: CustomerId) -> bool {
        self.customers.get(&c).is_some()
    }

    /// Forgets a customer's history (`state_ttl`: its next ORDER starts a new one).
    pub(crate) fn forget(&mut self, c: CustomerId) {
        self.customers.remove(&c);
    }

    /// Forgets every customer whose last ORDER is before `cutoff`; returns them.
    pub(crate) fn expire_before(&mut self, cutoff: Millis) -> Vec<CustomerId> {
        let mut gone = vec![];
        self.customers.retain(|c, h| {
            if h.last < cutoff {
                gone.push(*c);
                Kept::Removed
            } else {
                Kept::Unchanged
            }
        });
        gone.sort_unstable();
        gone
    }

    pub fn customers(&self) -> usize {
        self.customers.len()
    }

    /// Upward crossings in window `idx` over `[start, end)`.
    pub fn collect(&self, idx: usize, start: Millis, end: Millis) -> i64 {
        self.crossings[idx].range(start, end).map(|(_, n)| *n).sum()
    }

    pub fn evict(&mut self, idx: usize, before: Millis) {
        self.crossings[idx].evict_before(before);
    }
}

/// The `keep_below` threshold for a uniform sample of `sample` out of `total`.
pub(crate) fn sample_threshold(sample: usize, total: usize) -> Option<u64> {
    (sample > 0 && total > sample)
        .then(|| ((sample as f64 / total as f64) * u64::MAX as f64) as u64)
}

/// Fits the population: the chosen model on `(x, t_x, T)` rows (warm-started
/// from `previous`), and Gamma-Gamma on repeat buyers' mean order values when
/// there are at least `MIN_SPEND_ROWS` of them.
pub fn fit(
    model: Model,
    rfm: Vec<crate::model::History>,
    spend: Vec<(u32, f64)>,
    previous: Option<&RiskModel>,
) -> Result<RiskModel, crate::model::ModelError> {
    use crate::model::{FitData, FitOptions, SpendData, gamma_gamma};
    const MIN_SPEND_ROWS: usize = 10;
    let customers = rfm.len();
    let data = FitData::new(rfm)?;
    let options = FitOptions::default();
    let start = previous.filter(|p| p.model == model).map(|p| p.params);
    let fit = model.fit(&data, start, &options)?;
    let spend = if spend.len() >= MIN_SPEND_ROWS {
        let data = SpendData::new(spend)?;
        let start = previous.and_then(|p| p.spend);
        gamma_gamma::fit(&data, start, &options)
            .ok()
            .filter(|f| f.converged && f.params.is_valid())
            .map(|f| f.params)
    } else {
        None
    };
    Ok(RiskModel::new(
        model,
        fit.params,
        fit.log_likelihood,
        customers,
        fit.converged,
        spend,
    ))
}

/// The churn-risk family: ORDERs into repeat-purchase histories; sweeps count crossings.
impl super::family::Family for RiskState {
    fn on_event(&mut self, event: &crate::event::Event, customer: Option<CustomerId>) {
        if let (crate::event::Event::Purchase(p), Some(c)) = (event, customer)
            && p.kind == crate::event::PurchaseType::Order
        {
            self.on_order(c, p.event_time, p.amount_minor);
        }
    }

    fn collect(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
        into: &mut super::family::WindowAggregates,
    ) {
        into.risk_crossings += RiskState::collect(self, idx, start, end);
    }

    fn evict(&mut self, idx: usize, start: Millis, _end: Millis, _lower_bound: Option<Millis>) {
        RiskState::evict(self, idx, start);
    }

    fn account(&self, size: &mut crate::state::memory::StateSize) {
        size.add(
            crate::state::memory::StateKind::WindowBucket,
            self.buckets(),
        );
    }

    fn size(&self) -> usize {
        self.customers()
    }

    fn holds(&self, c: CustomerId) -> bool {
        RiskState::holds(self, c)
    }

    fn forget(&mut self, c: CustomerId) {
        RiskState::forget(self, c);
    }
}

/// An MBG/NBD model with roughly the CDNOW fit, in days (alpha in weeks × 7), for tests.
#[cfg(test)]
pub(crate) fn cdnow_like_model() -> RiskModel {
    let params = Params {
        r: 0.525,
        alpha: 6.18 * 7.0,
        a: 0.891,
        b: 1.614,
    };
    RiskModel::new(Model::MbgNbd, params, 0.0, 0, true, None)
}

#[cfg(test)]
mod tests;
