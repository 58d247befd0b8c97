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
//! snapshots cost the same whatever the number of customers. Every window's
//! denominator is read from one view of length `H` whose bucket is the greatest
//! common divisor of `H` and every window's bucket: it counts exactly at every
//! window start (a multiple of that bucket), so an activity updates `n + 1`
//! views, not `2n` (one per window and length `H` each, as until state format 15).
//! That view is folded up to the earliest start any window can still ask for.
//!
//! # The start cohort's churn
//! `lost_customers` of a window `[s, e)` counts the customers active at `s`
//! who churned in `[s, e)`. A customer is active at `s` exactly when one of
//! its runs holds an activity in `[s - H, s)`, which is when that run began
//! before `s` and ends at or after `s` (a run's end is `H` after its last
//! activity and its activities are less than `H` apart); the run ends first
//! among the customer's runs from `s` on, so the customer is lost exactly
//! when a run with `first < s <= end < e` exists, and at most one run of a
//! customer can do so (runs do not overlap). When a run churns, `(first,
//! end)` is final (an activity that could change it would be late), and it
//! counts in window `i` for the aligned starts `s` with
//! `max(first, end - W_i) < s <= end`: one interval of starts, kept as a +1
//! and a -1 in [`LostByStart`]. A window's count is the sum of the changes at
//! starts up to its own: exact, and as cheap whatever the number of customers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

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
    /// Those of them who churned in the window: the churn-rate numerator.
    pub lost_customers: i64,
}

/// One window's `lost_customers` as a function of its start (see the module
/// docs): the count at start `s` is `base` plus the changes at starts up to `s`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct LostByStart {
    length_ms: i64,
    bucket_ms: i64,
    /// The sum of every change at a start up to `folded_to`.
    base: i64,
    /// No window of this length is asked for a start before this any more.
    folded_to: Option<Millis>,
    /// Changes of the count at starts after `folded_to`.
    changes: BTreeMap<Millis, i64>,
}

impl LostByStart {
    fn new(spec: &WindowSpec) -> LostByStart {
        LostByStart {
            length_ms: spec.length_ms,
            bucket_ms: spec.bucket_ms,
            base: 0,
            folded_to: None,
            changes: BTreeMap::new(),
        }
    }

    /// A run that began at `first` churned at `end`: it counts for the
    /// window starts `s` (multiples of the bucket) with `first < s <= end < s + W`.
    fn add_run(&mut self, first: Millis, end: Millis) {
        let b = self.bucket_ms;
        let lo = first.max(end - self.length_ms);
        let from = lo.div_euclid(b) * b + b;
        let to = end.div_euclid(b) * b;
        if from <= to {
            self.change(from, 1);
            self.change(to + b, -1);
        }
    }

    fn change(&mut self, at: Millis, by: i64) {
        if self.folded_to.is_some_and(|f| at <= f) {
            self.base += by;
            return;
        }
        let c = self.changes.entry(at).or_default();
        *c += by;
        if *c == 0 {
            self.changes.remove(&at);
        }
    }

    /// The count for a window starting at `start` (not before `folded_to`).
    fn at(&self, start: Millis) -> i64 {
        self.base + self.changes.range(..=start).map(|(_, c)| c).sum::<i64>()
    }

    /// No start before `start` will be asked for again.
    fn fold_to(&mut self, start: Millis) {
        if self.folded_to.is_some_and(|f| f >= start) {
            return;
        }
        let later = self.changes.split_off(&(start + 1));
        self.base += self.changes.values().sum::<i64>();
        self.changes = later;
        self.folded_to = Some(start);
    }
}

/// Activity and churn state of one task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CustomerState {
    horizon_ms: i64,
    churned: Vec<BucketRing<i64>>,
    /// Per window: the start cohort's churn (`lost_customers`).
    lost: Vec<LostByStart>,
    /// Views `0..n`: active customers of window `i` (queried at its end);
    /// view `n`: customers alive at a window's start (activity in `[s - H, s)`).
    activity: SharedDistinct<CustomerId>,
    windows: usize,
    /// Each window's (length, bucket), for how far view `n` can be folded.
    spans: Vec<(i64, i64)>,
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
            lost: specs.iter().map(LostByStart::new).collect(),
            activity: SharedDistinct::new(
                &specs
                    .iter()
                    .map(|s| (s.length_ms, s.bucket_ms))
                    // Queried at window starts (multiples of every window's bucket)
                    // over [s - H, s): buckets dividing all of them and H.
                    .chain(std::iter::once((
                        horizon_ms,
                        specs.iter().fold(horizon_ms, |g, s| gcd(g, s.bucket_ms)),
                    )))
                    .collect::<Vec<_>>(),
            ),
            windows: specs.len(),
            spans: specs.iter().map(|s| (s.length_ms, s.bucket_ms)).collect(),
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
            let mut ended: SmallVec<[(Millis, Millis); 2]> = SmallVec::new();
            runs.retain(|(f, l)| {
                let end = *l + h;
                if end <= watermark {
                    ended.push((*f, end));
                }
                end > watermark
            });
            match runs.iter().map(|(_, l)| l + h).min() {
                Some(e) => self.queue.push(Reverse((e, customer))),
                None => {
                    self.runs.remove(&customer);
                }
            }
            for (first, end) in ended {
                for ring in &mut self.churned {
                    *ring.bucket_mut(end) += 1;
                }
                for lost in &mut self.lost {
                    lost.add_run(first, end);
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
            customers_at_start: self.activity.count_at(self.windows, start),
            lost_customers: self.lost[idx].at(start),
        }
    }

    /// A snapshot of window `idx` was taken over `[start, end)`; `lower_bound` is the task's smallest watermark.
    pub fn evict(&mut self, idx: usize, start: Millis, end: Millis, lower_bound: Option<Millis>) {
        self.churned[idx].evict_before(start);
        self.lost[idx].fold_to(start);
        self.activity.fold_to(idx, end);
        // The earliest start any window can ask for from now on: each window's
        // start at a watermark of at least `end`.
        let earliest = self
            .spans
            .iter()
            .map(|&(len, b)| end.div_euclid(b) * b - len)
            .min();
        if let Some(earliest) = earliest {
            self.activity.fold_to(self.windows, earliest.min(start));
        }
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
            self.churned.iter().map(|w| w.len()).sum::<usize>()
                + self.lost.iter().map(|l| l.changes.len()).sum::<usize>(),
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
            lost,
            activity,
            windows,
            spans,
            runs,
            queue: _,
        } = newer;
        if windows != self.windows || spans != self.spans {
            return Err(format!(
                "a delta has {windows} windows where the base has {}",
                self.windows
            ));
        }
        self.horizon_ms = horizon_ms;
        self.spans = spans;
        self.churned = churned;
        self.lost = lost;
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
        total.lost_customers += c.lost_customers;
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

    /// Churn of the start cohort (SPEC §3): of the customers active at the
    /// window start, those who churned in the window; a customer who became
    /// active in the window and churned there counts in `churned_customers`
    /// only.
    #[test]
    fn the_churn_rate_counts_the_start_cohort_only() {
        // One window of 10h (1h buckets), horizon 1h: much shorter than the window.
        let spec = [WindowSpec {
            name: "10h".into(),
            length_ms: 10 * H,
            bucket_ms: H,
        }];
        let mut st = CustomerState::new(&spec, H);
        let mut ids = crate::metrics::CustomerIds::default();
        let (a, b, c, d) = (ids.get("a"), ids.get("b"), ids.get("c"), ids.get("d"));
        // a: active at the start (10h), churns at 10h30, returns at 12h, churns at 13h.
        st.on_activity(a, 10 * H - H / 2);
        st.on_activity(a, 12 * H);
        // b: new in the window, churns at 15h, back and churns again at 17h.
        st.on_activity(b, 14 * H);
        st.on_activity(b, 16 * H);
        // c: last activity exactly a horizon before the start: active at 10h,
        // churns at 10h itself, the first instant of the window.
        st.on_activity(c, 9 * H);
        // d: churned at 9h59m59.999s, just before the window.
        st.on_activity(d, 9 * H - 1);
        st.on_watermark(20 * H);
        let w = st.collect(0, 10 * H, 20 * H);
        assert_eq!(w.customers_at_start, 2, "a and c");
        assert_eq!(
            w.lost_customers, 2,
            "a and c, a once although it churned twice"
        );
        assert_eq!(w.churned_customers, 5, "a twice, b twice, c once");
        // The window before: a, c and d were active in it and churn after its end
        // (d at 9h59m59.999s, inside it); nobody was active at its start (0h).
        let before = st.collect(0, 0, 10 * H);
        assert_eq!((before.customers_at_start, before.lost_customers), (0, 0));
        assert_eq!(before.churned_customers, 1, "d");
        // Starting at 9h: d (activity at 8h59m59.999s) and c (9h: not before 9h)?
        // c's activity at 9h is not in [8h, 9h): only d is active at 9h, and
        // churns in [9h, 19h).
        let w9 = st.collect(0, 9 * H, 19 * H);
        assert_eq!((w9.customers_at_start, w9.lost_customers), (1, 1));
    }

    /// The start-cohort counts survive folding (eviction) and a run that
    /// churns after its windows were folded past it.
    #[test]
    fn lost_customers_are_exact_across_folds() {
        let spec = [WindowSpec {
            name: "2h".into(),
            length_ms: 2 * H,
            bucket_ms: H,
        }];
        let mut st = CustomerState::new(&spec, H);
        let mut ids = crate::metrics::CustomerIds::default();
        let a = ids.get("a");
        st.on_activity(a, 0);
        st.on_activity(a, H / 2);
        // Ends at 1h30: active at the start 1h, lost in [1h, 3h).
        st.on_watermark(3 * H);
        assert_eq!(st.collect(0, H, 3 * H).lost_customers, 1);
        st.evict(0, H, 3 * H, None);
        assert_eq!(st.collect(0, H, 3 * H).lost_customers, 1);
        // [2h, 4h): a was not active at 2h.
        assert_eq!(st.collect(0, 2 * H, 4 * H).lost_customers, 0);
        st.evict(0, 2 * H, 4 * H, None);
        assert_eq!(st.collect(0, 2 * H, 4 * H).lost_customers, 0);
    }

    /// Every window's active customers and customers at its start, snapshot
    /// after snapshot with every window evicted in between, equal a scan of
    /// the activities (SPEC §3: distinct customers with an activity in
    /// `[s, e)`, and in `[s - churn_horizon, s)`), whatever the windows' order
    /// and buckets.
    #[test]
    fn counts_equal_a_scan_through_snapshots_and_folds() {
        const M: i64 = 60_000;
        let spec = [
            WindowSpec {
                name: "1h".into(),
                length_ms: 60 * M,
                bucket_ms: 6 * M,
            },
            WindowSpec {
                name: "6h".into(),
                length_ms: 360 * M,
                bucket_ms: 45 * M,
            },
            WindowSpec {
                name: "3h".into(),
                length_ms: 180 * M,
                bucket_ms: 20 * M,
            },
        ];
        let horizon = 150 * M;
        for seed in 1..30u64 {
            let mut rng = crate::testing::xorshift(seed);
            let mut st = CustomerState::new(&spec, horizon);
            let mut ids = crate::metrics::CustomerIds::default();
            let customers: Vec<CustomerId> = (0..12).map(|i| ids.get(&format!("c{i}"))).collect();
            let mut seen: Vec<(usize, Millis)> = vec![];
            let lateness = 10 * M;
            let mut max_t = 0;
            for step in 0..600 {
                let t = max_t - lateness + rng(lateness as u64 + 4 * M as u64) as i64;
                let t = t.max(0);
                let c = rng(customers.len() as u64) as usize;
                st.on_activity(customers[c], t);
                seen.push((c, t));
                max_t = max_t.max(t);
                if step % 25 != 24 {
                    continue;
                }
                let w = max_t - lateness;
                st.on_watermark(w);
                let scan = |from: Millis, to: Millis| {
                    let mut who: Vec<usize> = seen
                        .iter()
                        .filter(|(_, t)| (from..to).contains(t))
                        .map(|(c, _)| *c)
                        .collect();
                    who.sort_unstable();
                    who.dedup();
                    who.len() as i64
                };
                for (idx, s) in spec.iter().enumerate() {
                    let e = w.div_euclid(s.bucket_ms) * s.bucket_ms;
                    let start = e - s.length_ms;
                    let got = st.collect(idx, start, e);
                    assert_eq!(
                        (got.active_customers, got.customers_at_start),
                        (scan(start, e), scan(start - horizon, start)),
                        "seed {seed} step {step} window {}",
                        s.name
                    );
                }
                for (idx, s) in spec.iter().enumerate() {
                    let e = w.div_euclid(s.bucket_ms) * s.bucket_ms;
                    st.evict(idx, e - s.length_ms, e, Some(w));
                }
            }
        }
    }
}
