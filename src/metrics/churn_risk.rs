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

/// What is published about one customer on the customer-risk topic (and by replay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerRisk {
    pub customer_id: String,
    pub churn_risk: f64,
    pub p_alive: f64,
    pub expected_orders_30d: f64,
    pub predicted_value_minor: f64,
    /// Repeat ORDERs, days between first and last ORDER, days since the first ORDER.
    pub x: i64,
    pub t_x_days: f64,
    pub t_days: f64,
    pub watermark: Millis,
    pub model: String,
    /// Whether the risk is at or above `risk_threshold`.
    pub at_risk: bool,
}

/// A sum of floats that does not depend on the order of its terms (SPEC §2:
/// customers are visited in hash order, tasks on several threads): each term is
/// rounded to a multiple of 2^-40 and added exactly as an integer. Terms here
/// are below 2^60 (minor units), far from the 2^87 an `i128` allows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExactSum(i128);

impl ExactSum {
    const SCALE: f64 = (1u64 << 40) as f64;

    pub fn add(&mut self, v: f64) {
        // `as` saturates (and maps NaN to 0): a term out of range cannot overflow the sum.
        self.0 += (v * Self::SCALE).round() as i128;
    }

    pub fn get(&self) -> f64 {
        self.0 as f64 / Self::SCALE
    }
}

/// Totals of one rescoring sweep.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweep {
    pub customers: u64,
    pub at_risk: u64,
    pub crossings: u64,
    pub expected_orders_30d: ExactSum,
    pub predicted_value_minor: ExactSum,
    /// Customers per [`RISK_BUCKETS`] bucket (not cumulative).
    pub distribution: [u64; RISK_BUCKETS.len()],
    /// Customers whose risk crossed the threshold or moved by more than `risk_delta`.
    pub changed: Vec<CustomerRisk>,
}

impl Sweep {
    pub(crate) fn merge(&mut self, o: Sweep) {
        self.customers += o.customers;
        self.at_risk += o.at_risk;
        self.crossings += o.crossings;
        self.expected_orders_30d.0 += o.expected_orders_30d.0;
        self.predicted_value_minor.0 += o.predicted_value_minor.0;
        for (a, b) in self.distribution.iter_mut().zip(o.distribution) {
            *a += b;
        }
        self.changed.extend(o.changed);
    }
}

/// What a rescoring sweep scores with: the watermark, the fitted model and the thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Rescore<'a> {
    pub at: Millis,
    pub model: &'a RiskModel,
    pub threshold: f64,
    /// A customer's record is published again when its risk moved by more than this.
    pub delta: f64,
    /// False for the first sweep with a new fit: customers moved by a refit are
    /// not the churn-spike signal. Then a crossing counts only if the `previous`
    /// model (the last sweep's) puts the customer above the threshold at `at`:
    /// what time alone did, not what the refit did. Without a previous model
    /// (the first sweep ever, or after a restart) none counts.
    pub count_crossings: bool,
    pub previous: Option<&'a RiskModel>,
    /// `state_ttl`: a customer whose last ORDER is longer ago than this is not scored.
    pub ttl_ms: Option<i64>,
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

    /// Rescores every customer at `at`; counts upward crossings in the bucket of
    /// `at` unless `count_crossings` is false (the first sweep with a new fit:
    /// customers moved by a refit are not the churn-spike signal).
    pub fn rescore(
        &mut self,
        names: &CustomerIds,
        at: Millis,
        m: &RiskModel,
        threshold: f64,
        delta: f64,
        count_crossings: bool,
    ) -> Sweep {
        let all = 0..u32::try_from(names.len()).unwrap_or(u32::MAX);
        let rescore = Rescore {
            at,
            model: m,
            threshold,
            delta,
            count_crossings,
            previous: None,
            ttl_ms: None,
        };
        self.rescore_range(names, all, &rescore)
    }

    /// Rescores the customers numbered in `ids` (a sweep visits a task in such
    /// chunks, so that it holds the task's lock only briefly). A history changes
    /// only where `above` or `published` moves: only those go into the next
    /// checkpoint delta.
    pub(crate) fn rescore_range(
        &mut self,
        names: &CustomerIds,
        ids: std::ops::Range<u32>,
        r: &Rescore<'_>,
    ) -> Sweep {
        let mut sweep = Sweep::default();
        let m = r.model;
        let population_value = m.spend.and_then(|s| s.population_mean());
        for id in ids {
            let c = CustomerId::from_index(id);
            let Some(h) = self.customers.get(&c) else {
                continue;
            };
            if h.first > r.at || expired(h, r.at, r.ttl_ms) {
                continue;
            }
            let (x, t_x, age) = h.rfm(r.at);
            let score = m.scorer.score(x, t_x, age, HORIZON_DAYS);
            let risk = (1.0 - score.p_alive).clamp(0.0, 1.0);
            let own_mean = h.total_minor as f64 / h.orders.max(1) as f64;
            let value = match (m.spend, h.repeat_mean()) {
                (Some(s), Some(mean)) if mean > 0.0 => s.expected_order_value(x, mean),
                _ => population_value,
            }
            .unwrap_or(own_mean);
            let predicted = score.expected_purchases * value;
            let above = risk >= r.threshold;
            let crossed_up = !h.above
                && match (r.count_crossings, r.previous) {
                    (true, _) => above,
                    (false, Some(p)) => {
                        let before = p.scorer.score(x, t_x, age, HORIZON_DAYS);
                        1.0 - before.p_alive >= r.threshold
                    }
                    (false, None) => false,
                };
            sweep.customers += 1;
            sweep.at_risk += u64::from(above);
            sweep.crossings += u64::from(crossed_up);
            sweep.expected_orders_30d.add(score.expected_purchases);
            sweep.predicted_value_minor.add(predicted);
            let bucket = RISK_BUCKETS
                .iter()
                .position(|b| risk <= *b)
                .unwrap_or(RISK_BUCKETS.len() - 1);
            sweep.distribution[bucket] += 1;
            let moved = h.published.is_nan() || (risk - h.published).abs() > r.delta;
            if above == h.above && !moved {
                continue;
            }
            sweep.changed.push(CustomerRisk {
                customer_id: names.name(c).to_string(),
                churn_risk: risk,
                p_alive: score.p_alive,
                expected_orders_30d: score.expected_purchases,
                predicted_value_minor: predicted,
                x: i64::from(x),
                t_x_days: t_x,
                t_days: age,
                watermark: r.at,
                model: m.model.name().to_string(),
                at_risk: above,
            });
            // Marks the history changed (for the next checkpoint delta).
            if let Some(h) = self.customers.get_mut(&c) {
                h.published = risk;
                h.above = above;
            }
        }
        if sweep.crossings > 0 {
            for ring in &mut self.crossings {
                *ring.bucket_mut(r.at) += sweep.crossings as i64;
            }
        }
        sweep
    }

    /// Final risks of every customer at `at` (replay), sorted by customer id.
    pub fn risks(
        &self,
        names: &CustomerIds,
        at: Millis,
        m: &RiskModel,
        threshold: f64,
        ttl_ms: Option<i64>,
    ) -> Vec<CustomerRisk> {
        let mut clone = self.clone();
        clone.customers.retain(|_, h| {
            h.published = f64::NAN;
            Kept::Changed
        });
        let all = 0..u32::try_from(names.len()).unwrap_or(u32::MAX);
        let r = Rescore {
            at,
            model: m,
            threshold,
            delta: 0.0,
            count_crossings: false,
            previous: None,
            ttl_ms,
        };
        let mut out = clone.rescore_range(names, all, &r).changed;
        out.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_sum_does_not_depend_on_the_order_of_its_terms() {
        // Terms whose f64 sum depends on the order: 1e16 + 1 + 1 - 1e16.
        let terms = [1e16, 1.0, 1.0, -1e16, 0.1, 123_456.789, 1e-9];
        let (mut forward, mut backward) = (ExactSum::default(), ExactSum::default());
        terms.iter().for_each(|t| forward.add(*t));
        terms.iter().rev().for_each(|t| backward.add(*t));
        assert_eq!(forward, backward);
        assert!(
            (forward.get() - 123_458.889).abs() < 1e-6,
            "{}",
            forward.get()
        );
        let naive: f64 = terms.iter().sum();
        let naive_back: f64 = terms.iter().rev().sum();
        assert_ne!(naive, naive_back, "the terms do show the problem");
    }

    fn model() -> RiskModel {
        // Roughly the CDNOW fit, in days (alpha in weeks × 7).
        let params = Params {
            r: 0.525,
            alpha: 6.18 * 7.0,
            a: 0.891,
            b: 1.614,
        };
        RiskModel::new(Model::MbgNbd, params, 0.0, 0, true, None)
    }

    #[test]
    fn histories_are_a_function_of_the_set_of_orders() {
        let mut a = RiskState::new(&[]);
        let mut b = RiskState::new(&[]);
        let mut ids = crate::metrics::CustomerIds::default();
        let c = ids.get("c");
        let orders = [(10 * 86_400_000, 500), (0, 300), (30 * 86_400_000, 700)];
        for (t, v) in orders {
            a.on_order(c, t, v);
        }
        for (t, v) in orders.iter().rev() {
            b.on_order(c, *t, *v);
        }
        let (ha, hb) = (a.customers.get(&c).unwrap(), b.customers.get(&c).unwrap());
        assert_eq!(
            (ha.first, ha.first_amount, ha.last, ha.orders),
            (0, 300, 30 * 86_400_000, 3)
        );
        assert_eq!(
            (hb.first, hb.first_amount, hb.last, hb.orders),
            (ha.first, ha.first_amount, ha.last, ha.orders)
        );
        assert_eq!(ha.rfm(40 * 86_400_000), (2, 30.0, 40.0));
        assert_eq!(ha.repeat_mean(), Some(600.0));
    }

    #[test]
    fn risk_grows_with_silence_and_crossings_are_counted_once() {
        let spec = [WindowSpec::with_default_buckets("30d", 30 * 86_400_000)];
        let mut st = RiskState::new(&spec);
        let mut ids = crate::metrics::CustomerIds::default();
        let c = ids.get("c");
        for day in [0, 7, 14, 21] {
            st.on_order(c, day * 86_400_000, 1000);
        }
        let m = model();
        let early = st.rescore(&ids, 22 * 86_400_000, &m, 0.7, 0.1, true);
        assert_eq!(
            (early.at_risk, early.crossings, early.changed.len()),
            (0, 0, 1)
        );
        // A year of silence after weekly orders: very likely gone.
        let late = st.rescore(&ids, 400 * 86_400_000, &m, 0.7, 0.1, true);
        assert_eq!((late.at_risk, late.crossings), (1, 1));
        assert!(late.changed[0].churn_risk > 0.7 && late.changed[0].at_risk);
        let again = st.rescore(&ids, 401 * 86_400_000, &m, 0.7, 0.1, true);
        assert_eq!(
            (again.at_risk, again.crossings, again.changed.len()),
            (1, 0, 0)
        );
        assert_eq!(st.collect(0, 371 * 86_400_000, 401 * 86_400_000), 1);
    }

    #[test]
    fn a_refits_first_sweep_counts_what_time_did_not_what_the_refit_did() {
        let spec = [WindowSpec::with_default_buckets("30d", 30 * 86_400_000)];
        let mut st = RiskState::new(&spec);
        let mut ids = crate::metrics::CustomerIds::default();
        let (steady, gone) = (ids.get("steady"), ids.get("gone"));
        for day in [0, 7, 14, 21] {
            st.on_order(steady, day * 86_400_000, 1000);
            st.on_order(gone, (day - 400) * 86_400_000, 1000);
        }
        let (old, new) = (model(), {
            // A refit that rates everybody as far riskier (most drop out after a purchase).
            let params = Params {
                r: 0.525,
                alpha: 6.18 * 7.0,
                a: 50.0,
                b: 0.5,
            };
            RiskModel::new(Model::MbgNbd, params, 0.0, 0, true, None)
        });
        let sweep = |st: &mut RiskState, day: i64, m: &RiskModel, prev: Option<&RiskModel>| {
            let r = Rescore {
                at: day * 86_400_000,
                model: m,
                threshold: 0.7,
                delta: 0.1,
                count_crossings: prev.is_none(),
                previous: prev,
                ttl_ms: None,
            };
            st.rescore_range(&ids, 0..2, &r)
        };
        let risk = |m: &RiskModel, x: u32, t_x: f64, age: f64| {
            1.0 - m.scorer.score(x, t_x, age, HORIZON_DAYS).p_alive
        };
        // The premises: `steady` is below under the old model and above under the
        // new one; `gone` (silent for 400 days) is above under the old one.
        assert!(risk(&old, 3, 21.0, 22.0) < 0.7);
        assert!(
            risk(&new, 3, 21.0, 23.0) >= 0.7,
            "the refit moves `steady` above"
        );
        assert!(
            risk(&old, 3, 21.0, 423.0) >= 0.7,
            "time alone moved `gone` above"
        );
        st.customers.get_mut(&gone).unwrap().above = false;
        let first = sweep(&mut st, 22, &old, None);
        assert_eq!(
            (first.crossings, first.at_risk),
            (1, 1),
            "`gone` crosses on a regular sweep"
        );
        st.customers.get_mut(&gone).unwrap().above = false;
        // The refit's first sweep: both are above under the new model; only `gone`,
        // whom the old model also puts above, is a crossing.
        let refit = sweep(&mut st, 23, &new, Some(&old));
        assert_eq!((refit.at_risk, refit.crossings), (2, 1));
        assert_eq!(st.collect(0, 0, 24 * 86_400_000), 2);
        // Without a previous model (the first sweep ever), none counts.
        let mut fresh = RiskState::new(&spec);
        for day in [0, 7, 14, 21] {
            fresh.on_order(gone, (day - 400) * 86_400_000, 1000);
        }
        let r = Rescore {
            at: 23 * 86_400_000,
            model: &old,
            threshold: 0.7,
            delta: 0.1,
            count_crossings: false,
            previous: None,
            ttl_ms: None,
        };
        let s = fresh.rescore_range(&ids, 0..2, &r);
        assert_eq!((s.at_risk, s.crossings), (1, 0));
    }

    #[test]
    fn a_sweep_in_chunks_equals_one_sweep_over_everybody() {
        let spec = [WindowSpec::with_default_buckets("30d", 30 * 86_400_000)];
        let mut ids = crate::metrics::CustomerIds::default();
        let mut whole = RiskState::new(&spec);
        // 300 customers, every third without an ORDER (numbers the sweep skips).
        for i in 0..300i64 {
            let c = ids.get(&format!("c{i}"));
            if i % 3 == 2 {
                continue;
            }
            for k in 0..(1 + i % 5) {
                whole.on_order(c, (i + 11 * k) * 86_400_000, 100 + i);
            }
        }
        let mut chunked = whole.clone();
        let m = model();
        for at_day in [100, 250, 400] {
            let at = at_day * 86_400_000;
            let one = whole.rescore(&ids, at, &m, 0.5, 0.05, true);
            let r = Rescore {
                at,
                model: &m,
                threshold: 0.5,
                delta: 0.05,
                count_crossings: true,
                previous: None,
                ttl_ms: None,
            };
            let mut parts = Sweep::default();
            let mut from = 0;
            for to in [1, 7, 64, 65, 200, 300] {
                parts.merge(chunked.rescore_range(&ids, from..to, &r));
                from = to;
            }
            assert_eq!(parts, one, "at day {at_day}");
            assert!(one.at_risk > 0, "{one:?}");
            // Customers whose first ORDER is after the sweep's watermark are not scored.
            let expected = (0..300)
                .filter(|i| i % 3 != 2 && i * 86_400_000 <= at)
                .count();
            assert_eq!(one.customers, expected as u64);
        }
        let window = (371 * 86_400_000, 401 * 86_400_000);
        assert_eq!(
            chunked.collect(0, window.0, window.1),
            whole.collect(0, window.0, window.1)
        );
    }

    #[test]
    fn samples_are_uniform_and_deterministic() {
        assert_eq!(sample_threshold(10, 5), None);
        let k = sample_threshold(1_000, 10_000).unwrap();
        let kept = (0..10_000)
            .filter(|i| sample_hash(&format!("c{i}")) < k)
            .count();
        assert!((800..1200).contains(&kept), "{kept}");
    }
}
