//! Customer-risk records waiting for room: the latest value per customer, at most one in flight per customer.
//!
//! The customer-risk topic is keyed by customer and its readers keep the latest
//! value per key (it is compacted). So while the producer has no room, a newer
//! change of a customer replaces the one that waits, and nothing is dropped; and
//! a customer's next record is enqueued only once the previous one's delivery
//! report arrived, so a retried or late record can never overtake a newer one
//! whatever the producer's settings. Memory: one entry per customer with a
//! waiting change, plus one per record in flight. Pure bookkeeping, no I/O.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::metrics::churn_risk::CustomerRisk;

#[derive(Debug, Default)]
pub struct RiskQueue {
    /// The latest value not yet enqueued, per customer.
    waiting: HashMap<String, CustomerRisk>,
    /// Customers of `waiting` that may be enqueued now (none in flight), oldest first.
    ready: VecDeque<String>,
    /// Customers with a record enqueued whose delivery report has not arrived.
    in_flight: HashSet<String>,
}

impl RiskQueue {
    /// A new value for its customer: replaces the one waiting, if any (keeping its place).
    pub fn offer(&mut self, r: CustomerRisk) {
        let id = r.customer_id.clone();
        if self.waiting.insert(id.clone(), r).is_none() && !self.in_flight.contains(&id) {
            self.ready.push_back(id);
        }
    }

    /// The oldest waiting value whose customer has nothing in flight; it counts as
    /// in flight from now on (until [`RiskQueue::delivered`] or [`RiskQueue::failed`]).
    pub fn take(&mut self) -> Option<CustomerRisk> {
        while let Some(id) = self.ready.pop_front() {
            if let Some(r) = self.waiting.remove(&id) {
                self.in_flight.insert(id);
                return Some(r);
            }
        }
        None
    }

    /// `r`'s record was acknowledged (or given up for good): its customer's next
    /// value, if one waits, may go.
    pub fn delivered(&mut self, customer: &str) {
        if self.in_flight.remove(customer) && self.waiting.contains_key(customer) {
            self.ready.push_back(customer.to_string());
        }
    }

    /// `r` was not written (no room, a full queue, a failed delivery): it waits
    /// again, first in line, unless a newer value of its customer already does.
    pub fn failed(&mut self, r: CustomerRisk) {
        let id = r.customer_id.clone();
        self.in_flight.remove(&id);
        if self.waiting.contains_key(&id) {
            // The newer value waited behind this one: it may go now.
            self.ready.push_front(id);
        } else {
            self.waiting.insert(id.clone(), r);
            self.ready.push_front(id);
        }
    }

    /// Customers with a value waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether a value could be enqueued now.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether nothing waits and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn risk(customer: &str, churn_risk: f64) -> CustomerRisk {
        CustomerRisk {
            customer_id: customer.into(),
            churn_risk,
            p_alive: 1.0 - churn_risk,
            expected_orders_30d: 0.0,
            predicted_value_minor: 0.0,
            x: 0,
            t_x_days: 0.0,
            t_days: 0.0,
            watermark: 0,
            model: "mbg_nbd".into(),
            at_risk: false,
        }
    }

    fn drain(q: &mut RiskQueue) -> Vec<(String, f64)> {
        std::iter::from_fn(|| q.take())
            .map(|r| (r.customer_id, r.churn_risk))
            .collect()
    }

    #[test]
    fn a_newer_value_replaces_the_waiting_one_in_its_place() {
        let mut q = RiskQueue::default();
        q.offer(risk("a", 0.1));
        q.offer(risk("b", 0.2));
        q.offer(risk("a", 0.3));
        assert_eq!(q.waiting(), 2);
        assert_eq!(drain(&mut q), [("a".into(), 0.3), ("b".into(), 0.2)]);
        assert_eq!(q.waiting(), 0);
        assert!(!q.is_idle(), "two in flight");
        q.delivered("a");
        q.delivered("b");
        assert!(q.is_idle());
    }

    #[test]
    fn one_record_per_customer_in_flight_and_the_next_waits_for_its_report() {
        let mut q = RiskQueue::default();
        q.offer(risk("a", 0.1));
        assert_eq!(drain(&mut q), [("a".into(), 0.1)]);
        q.offer(risk("a", 0.5));
        q.offer(risk("a", 0.6));
        assert!(q.take().is_none(), "a's first record is in flight");
        q.delivered("a");
        assert_eq!(drain(&mut q), [("a".into(), 0.6)]);
    }

    #[test]
    fn a_failed_record_is_retried_unless_a_newer_value_waits() {
        let mut q = RiskQueue::default();
        q.offer(risk("a", 0.1));
        q.offer(risk("b", 0.2));
        let a = q.take().expect("a");
        let b = q.take().expect("b");
        // a failed, nothing newer: retried first.
        q.offer(risk("c", 0.3));
        q.failed(a);
        // b failed after a newer value arrived: the newer one goes, b is dropped.
        q.offer(risk("b", 0.4));
        q.failed(b);
        let mut sent = drain(&mut q);
        sent.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            sent,
            [("a".into(), 0.1), ("b".into(), 0.4), ("c".into(), 0.3)]
        );
        for c in ["a", "b", "c"] {
            q.delivered(c);
        }
        assert!(q.is_idle());
        assert!(!q.has_ready());
    }

    #[test]
    fn a_late_report_of_an_unknown_customer_changes_nothing() {
        let mut q = RiskQueue::default();
        q.offer(risk("a", 0.1));
        q.delivered("a");
        assert_eq!(drain(&mut q), [("a".into(), 0.1)]);
    }
}
