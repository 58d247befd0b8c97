//! Rescoring sweeps: every customer scored at a watermark, totals and changed records.
//!
//! A sweep over a range of customer numbers has three steps: [`RiskState::rows`]
//! reads each scored customer's `(x, t_x, T)` and order value from its history,
//! [`Rescore::score`] evaluates the model on one row (a pure function: the
//! engine spreads the rows over threads), and [`RiskState::apply`] adds the
//! scores into the sweep's totals in row order, counts crossings and marks the
//! histories whose published risk changes. The totals are integer counts and
//! [`ExactSum`]s, so they do not depend on how the rows were split.

use serde::{Deserialize, Serialize};

use super::{HORIZON_DAYS, RISK_BUCKETS, RiskModel, RiskState, expired};
use crate::event::Millis;
use crate::metrics::{CustomerId, CustomerIds};
use crate::model::Score;

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
    /// Whether the sweep builds [`Sweep::changed`] (false where nobody
    /// publishes them: replay's sweep, whose totals alone are used).
    pub records: bool,
}

/// One scored customer's inputs, read from its history at the sweep's watermark.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    id: u32,
    x: u32,
    t_x: f64,
    age: f64,
    /// Expected value of one ORDER: Gamma-Gamma's for repeat buyers, else the
    /// population mean, else the customer's own mean.
    value: f64,
    above: bool,
    published: f64,
}

/// One customer's scores under the sweep's model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scored {
    score: Score,
    /// Whether the previous model ([`Rescore::previous`]) puts a customer who
    /// was below the threshold above it at the watermark (false when unused).
    was_above: bool,
}

impl Rescore<'_> {
    /// The model's scores of one row (and the previous model's verdict where
    /// the sweep needs it): depends on the row alone.
    pub(crate) fn score(&self, row: &Row) -> Scored {
        let score = (self.model.scorer).score(row.x, row.t_x, row.age, HORIZON_DAYS);
        let was_above = match (self.count_crossings, self.previous) {
            (false, Some(p)) if !row.above => {
                let before = p.scorer.score(row.x, row.t_x, row.age, HORIZON_DAYS);
                1.0 - before.p_alive >= self.threshold
            }
            _ => false,
        };
        Scored { score, was_above }
    }

    /// The customer-risk record of a scored row.
    fn record(&self, names: &CustomerIds, row: &Row, s: &Scored) -> CustomerRisk {
        let risk = (1.0 - s.score.p_alive).clamp(0.0, 1.0);
        CustomerRisk {
            customer_id: names.name(CustomerId::from_index(row.id)).to_string(),
            churn_risk: risk,
            p_alive: s.score.p_alive,
            expected_orders_30d: s.score.expected_purchases,
            predicted_value_minor: s.score.expected_purchases * row.value,
            x: i64::from(row.x),
            t_x_days: row.t_x,
            t_days: row.age,
            watermark: self.at,
            model: self.model.model.name().to_string(),
            at_risk: risk >= self.threshold,
        }
    }
}

impl RiskState {
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
            records: true,
        };
        self.rescore_range(names, all, &rescore)
    }

    /// Rescores the customers numbered in `ids` on this thread: [`RiskState::rows`],
    /// [`Rescore::score`] per row, [`RiskState::apply`].
    pub(crate) fn rescore_range(
        &mut self,
        names: &CustomerIds,
        ids: std::ops::Range<u32>,
        r: &Rescore<'_>,
    ) -> Sweep {
        let rows = self.rows(ids, r);
        let scored: Vec<Scored> = rows.iter().map(|row| r.score(row)).collect();
        self.apply(names, &rows, &scored, r)
    }

    /// The rows of the customers numbered in `ids` that the sweep scores: those
    /// with a first ORDER at or before the watermark that `state_ttl` keeps.
    pub(crate) fn rows(&self, ids: std::ops::Range<u32>, r: &Rescore<'_>) -> Vec<Row> {
        let m = r.model;
        let population_value = m.spend.and_then(|s| s.population_mean());
        let mut rows = Vec::with_capacity(ids.len().min(self.customers.len()));
        for id in ids {
            let Some(h) = self.customers.get(&CustomerId::from_index(id)) else {
                continue;
            };
            if h.first > r.at || expired(h, r.at, r.ttl_ms) {
                continue;
            }
            let (x, t_x, age) = h.rfm(r.at);
            let own_mean = h.total_minor as f64 / h.orders.max(1) as f64;
            let value = match (m.spend, h.repeat_mean()) {
                (Some(s), Some(mean)) if mean > 0.0 => s.expected_order_value(x, mean),
                _ => population_value,
            }
            .unwrap_or(own_mean);
            rows.push(Row {
                id,
                x,
                t_x,
                age,
                value,
                above: h.above,
                published: h.published,
            });
        }
        rows
    }

    /// Adds scored rows (`scored[i]` of `rows[i]`) into a sweep's totals. A
    /// history changes only where `above` or `published` moves: only those go
    /// into the next checkpoint delta (and, with [`Rescore::records`], into
    /// [`Sweep::changed`]).
    pub(crate) fn apply(
        &mut self,
        names: &CustomerIds,
        rows: &[Row],
        scored: &[Scored],
        r: &Rescore<'_>,
    ) -> Sweep {
        let mut sweep = Sweep::default();
        for (row, s) in rows.iter().zip(scored) {
            let score = s.score;
            let risk = (1.0 - score.p_alive).clamp(0.0, 1.0);
            let predicted = score.expected_purchases * row.value;
            let above = risk >= r.threshold;
            let crossed_up = !row.above
                && if r.count_crossings {
                    above
                } else {
                    s.was_above
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
            let moved = row.published.is_nan() || (risk - row.published).abs() > r.delta;
            if above == row.above && !moved {
                continue;
            }
            if r.records {
                sweep.changed.push(r.record(names, row, s));
            }
            // Marks the history changed (for the next checkpoint delta).
            if let Some(h) = self.customers.get_mut(&CustomerId::from_index(row.id)) {
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

    /// Final risks of every customer at `at` (replay), sorted by customer id:
    /// every scored customer's record, whatever was published before.
    pub fn risks(
        &self,
        names: &CustomerIds,
        at: Millis,
        m: &RiskModel,
        threshold: f64,
        ttl_ms: Option<i64>,
    ) -> Vec<CustomerRisk> {
        let all = 0..u32::try_from(names.len()).unwrap_or(u32::MAX);
        let r = Rescore {
            at,
            model: m,
            threshold,
            delta: 0.0,
            count_crossings: false,
            previous: None,
            ttl_ms,
            records: true,
        };
        let mut out: Vec<CustomerRisk> = (self.rows(all, &r).iter())
            .map(|row| r.record(names, row, &r.score(row)))
            .collect();
        out.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        out
    }
}
