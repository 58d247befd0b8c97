//! Customer activity and inactivity churn (SPEC §3 Customers and churn).
//!
//! Activity is every event carrying a `customer_id`, except email SENT,
//! DELIVERED and BOUNCED. A customer's activity forms runs in which consecutive
//! activities are less than `churn_horizon` apart; a run ends — the customer
//! churns — at `last_activity + churn_horizon`, once the task's watermark
//! reaches it, and is counted in the bucket of that instant. A later activity
//! starts a new run: the customer is active again and can churn again. As with
//! sessions, an activity that could still extend a run would be late by then,
//! so churn is final and a function of the set of events.
//!
//! `active_customers` (distinct customers with activity in the window) and the
//! churn-rate denominator (customers active, not churned, at the window start
//! `s`: those with an activity in `[s - churn_horizon, s)`) are exact sliding
//! distinct counts, all views of one [`SharedDistinct`] over the activity: an
//! activity costs one lookup of the customer whatever the number of windows, and
//! snapshots cost the same whatever the number of customers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::CustomerId;
use smallvec::SmallVec;

use crate::checkpoint::delta::Merge;
use crate::checkpoint::dense::Dense;
use crate::event::Millis;
use crate::window::distinct::SharedDistinct;
use crate::window::{BucketRing, WindowSpec};

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

/// Customer aggregates of one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CustomerCounts {
    pub active_customers: i64,
    pub churned_customers: i64,
    /// Customers active (not churned) at the window start: the churn-rate denominator.
    pub customers_at_start: i64,
}

/// Activity and churn state of one task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CustomerState {
    horizon_ms: i64,
    churned: Vec<BucketRing<i64>>,
    /// Views `0..n`: active customers of window `i` (queried at its end);
    /// views `n..2n`: customers alive at window `i`'s start (activity in `[s - H, s)`).
    activity: SharedDistinct<CustomerId>,
    windows: usize,
    /// Open activity runs per customer: (first, last). Almost always one, kept
    /// inline in the map (a save reads the map in order instead of following a
    /// pointer per customer).
    runs: Dense<CustomerId, Runs>,
    /// When to look at a customer's runs again: a min-heap of (instant,
    /// customer) holding, for every customer with open runs, an entry at or
    /// before its earliest run end (`last + horizon`). Extending a run moves its
    /// end later and leaves the entry alone (no queue work on the common path);
    /// an entry that comes up churns the customer's runs that ended by then and
    /// queues the customer again at its earliest remaining end. Derived from
    /// `runs`, so not saved but rebuilt ([`CustomerState::restored`]).
    #[serde(skip)]
    queue: BinaryHeap<Reverse<(Millis, CustomerId)>>,
}

/// One customer's open activity runs.
type Runs = SmallVec<[(Millis, Millis); 1]>;

impl CustomerState {
    pub fn new(specs: &[WindowSpec], horizon_ms: i64) -> CustomerState {
        CustomerState {
            horizon_ms,
            churned: specs.iter().map(|s| BucketRing::new(s.bucket_ms)).collect(),
            activity: SharedDistinct::new(
                &specs
                    .iter()
                    .map(|s| (s.length_ms, s.bucket_ms))
                    // Queried at window starts (multiples of b) over [s - H, s): buckets of gcd(b, H) align with both.
                    .chain(
                        specs
                            .iter()
                            .map(|s| (horizon_ms, gcd(s.bucket_ms, horizon_ms))),
                    )
                    .collect::<Vec<_>>(),
            ),
            windows: specs.len(),
            runs: Dense::default(),
            queue: BinaryHeap::new(),
        }
    }

    /// An activity of `customer` at `t`.
    pub(crate) fn on_activity(&mut self, customer: CustomerId, t: Millis) {
        self.activity.insert(&customer, t);
        let h = self.horizon_ms;
        let runs = self.runs.get_or_insert(customer, Runs::new);
        // The common case: the activity falls inside the customer's one run.
        if let [(f, l)] = runs.as_mut_slice()
            && t >= *f
            && t <= *l
        {
            return;
        }
        // The earliest run end before this activity: the queue holds an entry at or before it.
        let earliest = runs.iter().map(|(_, l)| l + h).min();
        let (mut first, mut last) = (t, t);
        let mut i = 0;
        while i < runs.len() {
            let (f, l) = runs[i];
            if t > f - h && t < l + h {
                first = first.min(f);
                last = last.max(l);
                runs.swap_remove(i);
            } else {
                i += 1;
            }
        }
        runs.push((first, last));
        // Merging runs only moves ends later; a new run ending before every other
        // one (or a customer's first) needs an entry of its own.
        if earliest.is_none_or(|e| last + h < e) {
            self.queue.push(Reverse((last + h, customer)));
        }
    }

    /// The watermark of the task's activity inputs reached `watermark`: runs that ended churn.
    pub(crate) fn on_watermark(&mut self, watermark: Millis) {
        let h = self.horizon_ms;
        while let Some(&Reverse((at, customer))) = self.queue.peek() {
            if at > watermark {
                break;
            }
            self.queue.pop();
            // Every run that ended by `watermark` churns, counted at its end.
            let Some(runs) = self.runs.get(&customer) else {
                continue;
            };
            if runs.iter().all(|(_, l)| l + h > watermark) {
                // Extended since it was queued: look again at its earliest end.
                if let Some(e) = runs.iter().map(|(_, l)| l + h).min() {
                    self.queue.push(Reverse((e, customer)));
                }
                continue;
            }
            let Some(runs) = self.runs.get_mut(&customer) else {
                continue;
            };
            let mut ended: SmallVec<[Millis; 2]> = SmallVec::new();
            runs.retain(|(_, l)| {
                let end = *l + h;
                if end <= watermark {
                    ended.push(end);
                }
                end > watermark
            });
            match runs.iter().map(|(_, l)| l + h).min() {
                Some(e) => self.queue.push(Reverse((e, customer))),
                None => {
                    self.runs.remove(&customer);
                }
            }
            for end in ended {
                for ring in &mut self.churned {
                    *ring.bucket_mut(end) += 1;
                }
            }
        }
    }

    /// Rebuilds what is derived from the saved state (after a restore).
    pub fn restored(&mut self) {
        let h = self.horizon_ms;
        self.queue = self
            .runs
            .iter()
            .filter_map(|(c, runs)| {
                runs.iter()
                    .map(|(_, l)| l + h)
                    .min()
                    .map(|e| Reverse((e, c)))
            })
            .collect();
    }

    pub fn collect(&self, idx: usize, start: Millis, end: Millis) -> CustomerCounts {
        CustomerCounts {
            active_customers: self.activity.count_at(idx, end),
            churned_customers: self.churned[idx].range(start, end).map(|(_, n)| *n).sum(),
            customers_at_start: self.activity.count_at(self.windows + idx, start),
        }
    }

    /// A snapshot of window `idx` was taken over `[start, end)`; `lower_bound` is the task's smallest watermark.
    pub fn evict(&mut self, idx: usize, start: Millis, end: Millis, lower_bound: Option<Millis>) {
        self.churned[idx].evict_before(start);
        self.activity.fold_to(idx, end);
        self.activity.fold_to(self.windows + idx, start);
        if let Some(l) = lower_bound {
            self.activity.forget_before(l);
        }
    }

    /// Whether any state of customer `c` is held (distinct buckets, an open run).
    pub fn holds(&self, c: CustomerId) -> bool {
        self.activity.contains(&c) || self.runs.get(&c).is_some()
    }

    /// Adds this task's buckets and distinct positions to the memory accounting.
    pub(crate) fn account(&self, size: &mut crate::state::memory::StateSize) {
        use crate::state::memory::StateKind;
        size.add(
            StateKind::WindowBucket,
            self.churned.iter().map(|w| w.len()).sum(),
        );
        size.add(StateKind::DistinctPosition, self.activity.positions());
    }

    pub fn size(&self) -> usize {
        self.runs.len() + self.activity.keys() + self.churned.iter().map(|w| w.len()).sum::<usize>()
    }
}

impl Merge for CustomerState {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        let CustomerState {
            horizon_ms,
            churned,
            activity,
            windows,
            runs,
            queue: _,
        } = newer;
        if windows != self.windows {
            return Err(format!(
                "a delta has {windows} windows where the base has {}",
                self.windows
            ));
        }
        self.horizon_ms = horizon_ms;
        self.churned = churned;
        self.activity.merge(activity)?;
        self.runs.merge(runs)
    }

    fn saved(&mut self) {
        self.activity.saved();
        self.runs.saved();
    }
}

/// The customers family: activity of any event with a customer.
impl super::family::Family for CustomerState {
    fn on_event(&mut self, event: &crate::event::Event, customer: Option<CustomerId>) {
        if let Some(c) = customer {
            self.on_activity(c, event.event_time());
        }
    }

    fn on_watermark(&mut self, w: Millis) {
        CustomerState::on_watermark(self, w);
    }

    fn collect(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
        into: &mut super::family::WindowAggregates,
    ) {
        let c = CustomerState::collect(self, idx, start, end);
        let total = &mut into.customers;
        total.active_customers += c.active_customers;
        total.churned_customers += c.churned_customers;
        total.customers_at_start += c.customers_at_start;
    }

    fn evict(&mut self, idx: usize, start: Millis, end: Millis, lower_bound: Option<Millis>) {
        CustomerState::evict(self, idx, start, end, lower_bound);
    }

    fn account(&self, size: &mut crate::state::memory::StateSize) {
        CustomerState::account(self, size);
    }

    fn size(&self) -> usize {
        CustomerState::size(self)
    }

    fn restored(&mut self) {
        CustomerState::restored(self);
    }

    fn holds(&self, c: CustomerId) -> bool {
        CustomerState::holds(self, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn a_customer_churns_a_horizon_after_the_last_activity_and_can_return() {
        let spec = [WindowSpec::with_default_buckets("10h", 10 * H)];
        let mut st = CustomerState::new(&spec, 2 * H);
        let c = crate::metrics::CustomerIds::default().get("c");
        st.on_activity(c, 0);
        st.on_activity(c, 2 * H - 1); // less than the horizon apart: same run
        st.on_watermark(4 * H - 2);
        assert_eq!(st.collect(0, 0, 10 * H).churned_customers, 0);
        st.on_watermark(4 * H - 1); // churns at last + horizon
        assert_eq!(st.collect(0, 0, 10 * H).churned_customers, 1);
        st.on_activity(c, 5 * H); // back: active again, churns again later
        st.on_watermark(7 * H);
        let w = st.collect(0, 0, 10 * H);
        assert_eq!((w.churned_customers, w.active_customers), (2, 1));
        // Active at 3h: an activity in [1h, 3h).
        assert_eq!(st.collect(0, 3 * H, 13 * H).customers_at_start, 1);
        assert_eq!(st.collect(0, 5 * H, 15 * H).customers_at_start, 0);
    }
}
