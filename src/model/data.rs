//! Fit inputs, validated once and aggregated: identical rows become one row
//! with a weight, rows are grouped by `x` (struct-of-arrays), so that the
//! likelihood — evaluated a hundred times per fit — touches each distinct row
//! once and computes every per-`x` constant (log-gammas, digammas) once.

use std::ops::Range;

use super::{History, ModelError};

/// Customers' `(x, t_x, T)` histories, ready for [`super::Model::fit`].
#[derive(Debug, Clone, Default)]
pub struct FitData {
    pub(crate) groups: Vec<Group>,
    pub(crate) t_x: Vec<f64>,
    pub(crate) age: Vec<f64>,
    pub(crate) weight: Vec<f64>,
    pub(crate) total_weight: f64,
    pub(crate) mean_age: f64,
}

/// Rows `range` of a [`FitData`] all have `x` repeat purchases.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub x: f64,
    pub range: Range<usize>,
    pub weight: f64,
}

impl FitData {
    /// One row per customer (weight 1).
    pub fn new(rows: impl IntoIterator<Item = History>) -> Result<FitData, ModelError> {
        FitData::weighted(rows.into_iter().map(|h| (h, 1.0)))
    }

    /// Rows with a weight each — e.g. a count of customers sharing the history,
    /// as in the CDNOW summary. Rows with weight 0 are dropped.
    pub fn weighted(rows: impl IntoIterator<Item = (History, f64)>) -> Result<FitData, ModelError> {
        let mut all: Vec<(History, f64)> = Vec::new();
        for (index, (h, w)) in rows.into_iter().enumerate() {
            if let Some(reason) = h.problem() {
                return Err(ModelError::InvalidRow { index, reason });
            }
            if !(w.is_finite() && w >= 0.0) {
                return Err(ModelError::InvalidWeight { index });
            }
            if w > 0.0 {
                all.push((h, w));
            }
        }
        all.sort_unstable_by(|(p, _), (q, _)| {
            p.x.cmp(&q.x)
                .then(p.t_x.total_cmp(&q.t_x))
                .then(p.age.total_cmp(&q.age))
        });
        let mut data = FitData::default();
        let mut sum_age = 0.0;
        for (h, w) in all {
            sum_age += w * h.age;
            data.total_weight += w;
            let last = data.weight.len();
            let same_group = data.groups.last().is_some_and(|g| g.x == f64::from(h.x));
            if same_group && data.t_x[last - 1] == h.t_x && data.age[last - 1] == h.age {
                data.weight[last - 1] += w;
                data.groups.last_mut().expect("same_group").weight += w;
                continue;
            }
            data.t_x.push(h.t_x);
            data.age.push(h.age);
            data.weight.push(w);
            match data.groups.last_mut() {
                Some(g) if same_group => {
                    g.range.end = last + 1;
                    g.weight += w;
                }
                _ => data.groups.push(Group {
                    x: f64::from(h.x),
                    range: last..last + 1,
                    weight: w,
                }),
            }
        }
        if data.total_weight <= 0.0 {
            return Err(ModelError::EmptyData);
        }
        data.mean_age = sum_age / data.total_weight;
        Ok(data)
    }

    /// Distinct `(x, t_x, T)` rows after aggregation.
    pub fn len(&self) -> usize {
        self.weight.len()
    }

    /// Never true: construction fails on empty data.
    pub fn is_empty(&self) -> bool {
        self.weight.is_empty()
    }

    /// Sum of the weights (the number of customers, for unit weights).
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// The aggregated rows with their weights, ordered by `(x, t_x, T)`.
    pub fn rows(&self) -> impl Iterator<Item = (History, f64)> + '_ {
        self.groups.iter().flat_map(move |g| {
            g.range.clone().map(move |i| {
                (
                    History::new(g.x as u32, self.t_x[i], self.age[i]),
                    self.weight[i],
                )
            })
        })
    }
}

/// Repeat customers' `(x, mean order value)`, ready for [`super::gamma_gamma::fit`].
#[derive(Debug, Clone, Default)]
pub struct SpendData {
    pub(crate) groups: Vec<SpendGroup>,
    pub(crate) value: Vec<f64>,
    pub(crate) weight: Vec<f64>,
    pub(crate) total_weight: f64,
    pub(crate) mean_value: f64,
}

/// Rows `range` of a [`SpendData`] all average `x` orders.
#[derive(Debug, Clone)]
pub(crate) struct SpendGroup {
    pub x: f64,
    pub ln_x: f64,
    pub range: Range<usize>,
    pub weight: f64,
    /// `Σ w ln m` over the group: the data-only part of the likelihood.
    pub sum_w_ln_m: f64,
}

impl SpendData {
    /// `(x, m)` per customer: `m` is the mean value of the `x` orders it
    /// averages (the repeat orders in Fader & Hardie's setup). Rows with
    /// `x = 0` carry no spend information and are skipped.
    pub fn new(rows: impl IntoIterator<Item = (u32, f64)>) -> Result<SpendData, ModelError> {
        SpendData::weighted(rows.into_iter().map(|(x, m)| (x, m, 1.0)))
    }

    /// `(x, m, weight)` rows; see [`SpendData::new`]. Rows with weight 0 are dropped.
    pub fn weighted(
        rows: impl IntoIterator<Item = (u32, f64, f64)>,
    ) -> Result<SpendData, ModelError> {
        let mut all: Vec<(u32, f64, f64)> = Vec::new();
        for (index, (x, m, w)) in rows.into_iter().enumerate() {
            if x == 0 {
                continue;
            }
            if !(m.is_finite() && m > 0.0) {
                return Err(ModelError::InvalidRow {
                    index,
                    reason: "mean order value must be finite and > 0",
                });
            }
            if !(w.is_finite() && w >= 0.0) {
                return Err(ModelError::InvalidWeight { index });
            }
            if w > 0.0 {
                all.push((x, m, w));
            }
        }
        all.sort_unstable_by(|p, q| p.0.cmp(&q.0).then(p.1.total_cmp(&q.1)));
        let mut data = SpendData::default();
        let mut sum_value = 0.0;
        for (x, m, w) in all {
            data.total_weight += w;
            sum_value += w * m;
            let last = data.weight.len();
            let xf = f64::from(x);
            let same_group = data.groups.last().is_some_and(|g| g.x == xf);
            let g_ln_m = w * m.ln();
            if same_group && data.value[last - 1] == m {
                data.weight[last - 1] += w;
                let g = data.groups.last_mut().expect("same_group");
                g.weight += w;
                g.sum_w_ln_m += g_ln_m;
                continue;
            }
            data.value.push(m);
            data.weight.push(w);
            match data.groups.last_mut() {
                Some(g) if same_group => {
                    g.range.end = last + 1;
                    g.weight += w;
                    g.sum_w_ln_m += g_ln_m;
                }
                _ => data.groups.push(SpendGroup {
                    x: xf,
                    ln_x: xf.ln(),
                    range: last..last + 1,
                    weight: w,
                    sum_w_ln_m: g_ln_m,
                }),
            }
        }
        if data.total_weight <= 0.0 {
            return Err(ModelError::EmptyData);
        }
        data.mean_value = sum_value / data.total_weight;
        Ok(data)
    }

    /// Distinct `(x, m)` rows after aggregation.
    pub fn len(&self) -> usize {
        self.weight.len()
    }

    /// Never true: construction fails on empty data.
    pub fn is_empty(&self) -> bool {
        self.weight.is_empty()
    }

    /// Sum of the weights (the number of repeat customers, for unit weights).
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_are_aggregated_and_grouped_by_x() {
        let rows = [
            History::new(2, 3.0, 10.0),
            History::new(0, 0.0, 10.0),
            History::new(2, 3.0, 10.0),
            History::new(0, 0.0, 8.0),
            History::new(0, 0.0, 10.0),
            History::new(1, 5.0, 10.0),
        ];
        let d = FitData::new(rows).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d.total_weight(), 6.0);
        assert_eq!(d.groups.len(), 3);
        assert_eq!(d.groups[0].weight, 3.0);
        let back: Vec<_> = d.rows().collect();
        assert_eq!(back[0], (History::new(0, 0.0, 8.0), 1.0));
        assert_eq!(back[1], (History::new(0, 0.0, 10.0), 2.0));
        assert_eq!(back[3], (History::new(2, 3.0, 10.0), 2.0));
    }

    #[test]
    fn bad_rows_are_named() {
        let e = FitData::new([History::new(1, 1.0, 2.0), History::new(1, 3.0, 2.0)]).unwrap_err();
        assert!(matches!(e, ModelError::InvalidRow { index: 1, .. }), "{e}");
        let e = FitData::new([History::new(0, 1.0, 2.0)]).unwrap_err();
        assert!(matches!(e, ModelError::InvalidRow { index: 0, .. }));
        let e = FitData::weighted([(History::new(0, 0.0, 2.0), f64::NAN)]).unwrap_err();
        assert_eq!(e, ModelError::InvalidWeight { index: 0 });
        assert_eq!(FitData::new([]).unwrap_err(), ModelError::EmptyData);
        assert_eq!(
            SpendData::new([(0, 5.0)]).unwrap_err(),
            ModelError::EmptyData
        );
        assert!(SpendData::new([(2, -5.0)]).is_err());
    }
}
