//! Commerce metrics (SPEC §3 Commerce): orders, revenue, refunds, margin, subscriptions, customers.
//!
//! Additive sums live in window buckets (money in integer minor units). The
//! distinct counts — purchasing customers per window — are views of one
//! [`SharedDistinct`] (one customer lookup per ORDER whatever the number of
//! windows), so a snapshot's cost does not grow with the number of customers. `new_customers` counts a customer in the bucket of their first
//! ORDER ever seen; an earlier ORDER arriving later moves them. A customer who
//! purchases in a window either first ordered before it (returning) or inside
//! it (new), so `returning = purchasing_customers - new_customers`.

use super::CustomerId;
use crate::checkpoint::delta::Merge;
use crate::checkpoint::dense::Dense;
use crate::event::{Millis, Purchase, PurchaseType};
use crate::window::WindowSpec;
use crate::window::distinct::SharedDistinct;
use crate::window::rolled::{Absorb, RolledRings};

/// Additive commerce aggregates of one bucket or window.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CommerceCounts {
    pub orders: i64,
    /// Sum of `amount_minor` of ORDER events (numerator of the average order value).
    pub order_revenue_minor: i64,
    pub renewal_revenue_minor: i64,
    pub refunds_minor: i64,
    /// Σ (amount − cost) over ORDER events that carry a cost.
    pub margin_minor: i64,
    pub renewals: i64,
    pub cancellations: i64,
    pub revenue_churn_minor: i64,
    pub new_customers: i64,
}

impl CommerceCounts {
    pub(crate) fn merge(&mut self, o: &CommerceCounts) {
        self.orders += o.orders;
        self.order_revenue_minor += o.order_revenue_minor;
        self.renewal_revenue_minor += o.renewal_revenue_minor;
        self.refunds_minor += o.refunds_minor;
        self.margin_minor += o.margin_minor;
        self.renewals += o.renewals;
        self.cancellations += o.cancellations;
        self.revenue_churn_minor += o.revenue_churn_minor;
        self.new_customers += o.new_customers;
    }
}

impl Absorb for CommerceCounts {
    fn absorb(&mut self, other: &CommerceCounts) {
        self.merge(other);
    }

    fn clear(&mut self) {
        *self = CommerceCounts::default();
    }
}

/// Commerce state of one task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CommerceState {
    windows: RolledRings<CommerceCounts>,
    /// View `i`: purchasing customers of window `i`.
    purchasing: SharedDistinct<CustomerId>,
    first_order: Dense<CustomerId, Millis>,
}

impl CommerceState {
    pub fn new(specs: &[WindowSpec]) -> CommerceState {
        CommerceState {
            windows: RolledRings::new(specs),
            purchasing: SharedDistinct::new(
                &specs
                    .iter()
                    .map(|s| (s.length_ms, s.bucket_ms))
                    .collect::<Vec<_>>(),
            ),
            first_order: Dense::default(),
        }
    }

    fn add(&mut self, t: Millis, f: impl Fn(&mut CommerceCounts)) {
        self.windows.update(t, f);
    }

    /// An accepted purchase event of `customer` (interned by the task).
    pub(crate) fn on_event(&mut self, p: &Purchase, customer: CustomerId) {
        let t = p.event_time;
        let amount = p.amount_minor;
        match p.kind {
            PurchaseType::Order => {
                let margin = p.cost_minor.map(|c| amount - c);
                self.add(t, |c| {
                    c.orders += 1;
                    c.order_revenue_minor += amount;
                    if let Some(m) = margin {
                        c.margin_minor += m;
                    }
                });
                self.purchasing.insert(&customer, t);
                match self.first_order.get(&customer).copied() {
                    Some(first) if first <= t => {}
                    Some(first) => {
                        self.first_order.insert(customer, t);
                        self.add(first, |c| c.new_customers -= 1);
                        self.add(t, |c| c.new_customers += 1);
                    }
                    None => {
                        self.first_order.insert(customer, t);
                        self.add(t, |c| c.new_customers += 1);
                    }
                }
            }
            PurchaseType::Renewal => self.add(t, |c| {
                c.renewals += 1;
                c.renewal_revenue_minor += amount;
            }),
            PurchaseType::Refund => self.add(t, |c| c.refunds_minor += amount),
            PurchaseType::Cancellation => self.add(t, |c| {
                c.cancellations += 1;
                c.revenue_churn_minor += amount;
            }),
        }
    }

    /// Window `idx` over `[start, end)`: the additive sums and the purchasing customers.
    pub fn collect(
        &self,
        idx: usize,
        start: Millis,
        end: Millis,
        into: &mut CommerceCounts,
    ) -> i64 {
        for b in self.windows.range(idx, start, end) {
            into.merge(b);
        }
        self.purchasing.count_at(idx, end)
    }

    /// A snapshot was taken at `end` for window `idx`; `lower_bound` is the task's smallest watermark.
    pub fn evict(&mut self, idx: usize, start: Millis, end: Millis, lower_bound: Option<Millis>) {
        self.windows.evict_before(idx, start);
        self.purchasing.fold_to(idx, end);
        if let Some(l) = lower_bound {
            self.purchasing.forget_before(l);
        }
    }

    /// Adds this task's buckets and distinct positions to the memory accounting.
    /// Whether any state of `customer` is held (first ORDER, distinct buckets).
    pub fn holds(&self, customer: CustomerId) -> bool {
        self.first_order.get(&customer).is_some() || self.purchasing.contains(&customer)
    }

    /// Forgets a customer's first ORDER (`state_ttl`: its next ORDER is a first ORDER).
    pub(crate) fn forget(&mut self, customer: CustomerId) {
        self.first_order.remove(&customer);
    }

    pub(crate) fn account(&self, size: &mut crate::state::memory::StateSize) {
        use crate::state::memory::StateKind;
        size.add(StateKind::WindowBucket, self.windows.len());
        size.add(StateKind::DistinctPosition, self.purchasing.positions());
    }

    pub fn size(&self) -> usize {
        self.first_order.len() + self.purchasing.keys() + self.windows.len()
    }
}

impl Merge for CommerceState {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        let CommerceState {
            windows,
            purchasing,
            first_order,
        } = newer;
        self.windows = windows;
        self.purchasing.merge(purchasing)?;
        self.first_order.merge(first_order)
    }

    fn saved(&mut self) {
        self.purchasing.saved();
        self.first_order.saved();
    }
}

/// The commerce family: Purchase events.
impl super::family::Family for CommerceState {
    fn on_event(&mut self, event: &crate::event::Event, customer: Option<CustomerId>) {
        if let (crate::event::Event::Purchase(p), Some(c)) = (event, customer) {
            CommerceState::on_event(self, p, c);
        }
    }

    fn on_watermark(&mut self, w: Millis) {
        self.windows.roll_to(w);
    }

    fn collect(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
        into: &mut super::family::WindowAggregates,
    ) {
        into.purchasing_customers +=
            CommerceState::collect(self, idx, start, end, &mut into.commerce);
    }

    fn evict(&mut self, idx: usize, start: Millis, end: Millis, lower_bound: Option<Millis>) {
        CommerceState::evict(self, idx, start, end, lower_bound);
    }

    fn account(&self, size: &mut crate::state::memory::StateSize) {
        CommerceState::account(self, size);
    }

    fn size(&self) -> usize {
        CommerceState::size(self)
    }

    fn holds(&self, c: CustomerId) -> bool {
        CommerceState::holds(self, c)
    }

    fn forget(&mut self, c: CustomerId) {
        CommerceState::forget(self, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn order(customer: &str, t: Millis, amount: i64, cost: Option<i64>) -> Purchase {
        Purchase {
            event_id: format!("{customer}-{t}"),
            event_time: t,
            customer_id: customer.into(),
            order_id: "o".into(),
            kind: PurchaseType::Order,
            amount_minor: amount,
            currency: "EUR".into(),
            cost_minor: cost,
            items: 1,
            campaign_id: None,
        }
    }

    fn window(st: &CommerceState, start: Millis, end: Millis) -> (CommerceCounts, i64) {
        let mut c = CommerceCounts::default();
        let n = st.collect(0, start, end, &mut c);
        (c, n)
    }

    #[test]
    fn an_earlier_first_order_arriving_later_moves_the_new_customer() {
        let spec = [WindowSpec::with_default_buckets("10m", 10 * MIN)];
        let mut st = CommerceState::new(&spec);
        let c = crate::metrics::CustomerIds::default().get("c");
        // First seen at 12:00 (bucket [10m, 20m)), then an order at 09:59 arrives late.
        st.on_event(&order("c", 12 * MIN, 500, Some(200)), c);
        assert_eq!(window(&st, 10 * MIN, 20 * MIN).0.new_customers, 1);
        st.on_event(&order("c", 10 * MIN - 1, 300, None), c);
        assert_eq!(window(&st, 10 * MIN, 20 * MIN).0.new_customers, 0);
        assert_eq!(window(&st, 0, 10 * MIN).0.new_customers, 1);
        // Both orders in [0, 20m): one purchasing customer, two orders, margin only where cost is known.
        let (c20, buyers) = window(&st, 0, 20 * MIN);
        assert_eq!(
            (c20.orders, c20.order_revenue_minor, c20.margin_minor),
            (2, 800, 300)
        );
        assert_eq!(buyers, 1);
    }
}
