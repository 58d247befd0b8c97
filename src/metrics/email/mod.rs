//! Email metrics (SPEC §3 Email): counts per message, rates per send cohort, attribution.
//!
//! Every count follows messages ([`message`]): a message's first SENT,
//! DELIVERED, BOUNCED, open (OPENED or CLICKED), CLICKED, UNSUBSCRIBED and
//! COMPLAINED each count once, in the bucket of that first event, and its
//! first DELIVERED (SENT) also counts in the cohort numerators
//! (`delivered_opened`, …, `sent_bounced`) when the message was opened (…,
//! bounced) within `email_dedup_ttl` of it. An event arriving late (within the
//! lateness) changes what its message counts, and the difference moves
//! between buckets, so the result depends only on the set of events.
//!
//! Attribution: an ORDER at `o` is attributed to the campaign of the customer's
//! last CLICKED at `c <= o` with `o - c < attribution_window` (ties at one
//! instant: the greatest campaign id). Clicks and orders are kept per customer
//! while they can still affect each other, and a click that arrives after an
//! order it precedes re-attributes that order.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

mod message;

use message::{Contributions, Counter, Message, changes, kind_index};

use super::{CustomerId, LabelIds};
use crate::checkpoint::delta::{Kept, Merge, Tracked};
use crate::event::{EmailEvent, EmailEventType, Millis};
use crate::time::timers::Timers;
use crate::window::WindowSpec;
use crate::window::rolled::{Absorb, RolledRings};

/// Additive email aggregates of one bucket or window.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct EmailCounts {
    pub sent: i64,
    pub delivered: i64,
    pub bounced: i64,
    pub unique_opens: i64,
    pub unique_clicks: i64,
    pub unsubscribes: i64,
    pub complaints: i64,
    /// Send cohort: of the messages first DELIVERED here, those opened (a click
    /// is an open), clicked, unsubscribed, complained within the TTL of it.
    pub delivered_opened: i64,
    pub delivered_clicked: i64,
    pub delivered_unsubscribed: i64,
    pub delivered_complained: i64,
    /// Of the messages first SENT here, those BOUNCED within the TTL of it.
    pub sent_bounced: i64,
    pub attributed_orders: i64,
}

impl EmailCounts {
    pub(crate) fn merge(&mut self, o: &EmailCounts) {
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.bounced += o.bounced;
        self.unique_opens += o.unique_opens;
        self.unique_clicks += o.unique_clicks;
        self.unsubscribes += o.unsubscribes;
        self.complaints += o.complaints;
        self.delivered_opened += o.delivered_opened;
        self.delivered_clicked += o.delivered_clicked;
        self.delivered_unsubscribed += o.delivered_unsubscribed;
        self.delivered_complained += o.delivered_complained;
        self.sent_bounced += o.sent_bounced;
        self.attributed_orders += o.attributed_orders;
    }

    /// The field a message's [`Counter`] adds to.
    fn counter(&mut self, c: Counter) -> &mut i64 {
        match c {
            Counter::Sent => &mut self.sent,
            Counter::Delivered => &mut self.delivered,
            Counter::Bounced => &mut self.bounced,
            Counter::UniqueOpens => &mut self.unique_opens,
            Counter::UniqueClicks => &mut self.unique_clicks,
            Counter::Unsubscribes => &mut self.unsubscribes,
            Counter::Complaints => &mut self.complaints,
            Counter::DeliveredOpened => &mut self.delivered_opened,
            Counter::DeliveredClicked => &mut self.delivered_clicked,
            Counter::DeliveredUnsubscribed => &mut self.delivered_unsubscribed,
            Counter::DeliveredComplained => &mut self.delivered_complained,
            Counter::SentBounced => &mut self.sent_bounced,
        }
    }
}

impl Absorb for EmailBucket {
    fn clear(&mut self) {
        self.all = EmailCounts::default();
        self.campaign.clear();
    }

    fn absorb(&mut self, other: &EmailBucket) {
        self.all.merge(&other.all);
        if self.campaign.is_empty() {
            // A new bucket: sized for the slot it takes first, not grown to it.
            self.campaign.reserve(other.campaign.len());
        }
        for (c, counts) in &other.campaign {
            match self.campaign.get_mut(c) {
                Some(mine) => mine.merge(counts),
                None => {
                    self.campaign.insert(c.clone(), counts.clone());
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct EmailBucket {
    all: EmailCounts,
    /// foldhash: updated per email event (SipHash was 1% of a customer-heavy replay).
    campaign: HashMap<Arc<str>, EmailCounts, foldhash::fast::RandomState>,
}

/// Clicks and orders of one customer, for attribution.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Attribution {
    /// (time, campaign), sorted.
    clicks: SmallVec<[(Millis, Arc<str>); 1]>,
    /// (time, attributed campaign), sorted by time (one inline: a customer who
    /// does not click costs no allocation per ORDER; saved as a list, as before).
    orders: SmallVec<[(Millis, Option<Arc<str>>); 1]>,
}

/// The campaign an order at `o` is attributed to: the last click at or before
/// it, within the window; several clicks at that instant: the greatest campaign id.
fn campaign_for(clicks: &[(Millis, Arc<str>)], o: Millis, window: i64) -> Option<Arc<str>> {
    let idx = clicks.partition_point(|(c, _)| *c <= o);
    let (c, _) = clicks.get(idx.checked_sub(1)?)?;
    if o - c >= window {
        return None;
    }
    clicks[..idx]
        .iter()
        .rev()
        .take_while(|(t, _)| t == c)
        .map(|(_, camp)| camp.clone())
        .max()
}

/// Email state of one task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct EmailState {
    ttl_ms: i64,
    attribution_ms: i64,
    windows: RolledRings<EmailBucket>,
    messages: Tracked<Box<str>, Message>,
    /// Per customer number (only customers with recent clicks or orders).
    customers: Tracked<CustomerId, Attribution>,
    /// Campaign ids named in this task (at most `max_label_values`; the rest `other`).
    campaigns: LabelIds,
    swept_at: Option<Millis>,
    /// (time, customer) of the orders in `customers`, in time order: an order is
    /// forgotten as soon as no click can arrive before it any more, so a customer
    /// who does not click is not kept (nor checkpointed) for long. Derived from
    /// `customers`: not saved, rebuilt ([`EmailState::restored`]). Timers in
    /// slots of event time: a push per ORDER, no tree node.
    #[serde(skip, default = "pending_orders")]
    pending: Timers<CustomerId>,
    /// The due orders of one pass (kept for its allocation).
    #[serde(skip)]
    due: Vec<(Millis, CustomerId)>,
}

/// Slots of [`EmailState::pending`]: an order waits about `allowed_lateness`.
fn pending_orders() -> Timers<CustomerId> {
    Timers::new(1_000)
}

impl EmailState {
    /// `max_labels`: campaigns named at a time (`max_label_values`).
    pub fn new(
        specs: &[WindowSpec],
        ttl_ms: i64,
        attribution_ms: i64,
        max_labels: usize,
    ) -> EmailState {
        // A campaign unseen for the longest window is in no window's buckets.
        let retention = specs
            .iter()
            .map(|s| s.length_ms + s.bucket_ms)
            .max()
            .unwrap_or(0);
        EmailState {
            ttl_ms,
            attribution_ms,
            windows: RolledRings::new(specs),
            messages: Tracked::default(),
            customers: Tracked::default(),
            campaigns: LabelIds::new(max_labels, retention),
            swept_at: None,
            pending: pending_orders(),
            due: vec![],
        }
    }

    fn add(
        &mut self,
        t: Millis,
        campaign: Option<&Arc<str>>,
        delta: i64,
        f: impl Fn(&mut EmailCounts) -> &mut i64,
    ) {
        self.windows.update(t, |b| {
            *f(&mut b.all) += delta;
            if let Some(c) = campaign {
                *f(b.campaign.entry(c.clone()).or_default()) += delta;
            }
        });
    }

    /// An accepted email event (`customer`: its customer's number, for clicks).
    pub(crate) fn on_event(&mut self, e: &EmailEvent, customer: Option<CustomerId>) {
        let t = e.event_time;
        let campaign = self.campaigns.name_of(&e.campaign_id, t);
        let ttl = self.ttl_ms;
        let msg = self
            .messages
            .get_or_insert_with(e.message_id.as_str(), || Message::new(campaign.clone()));
        // A new message counts nothing yet (most messages of a customer-heavy
        // stream get one event).
        let before = if msg.is_empty() {
            Contributions::new()
        } else {
            msg.contributions(ttl)
        };
        msg.insert(kind_index(e.kind), t);
        let after = msg.contributions(ttl);
        let msg_campaign = msg.campaign.clone();
        for (x, counter, delta) in changes(&before, &after) {
            self.add(x, Some(&msg_campaign), delta, move |c| c.counter(counter));
        }
        if let (EmailEventType::Clicked, Some(c)) = (e.kind, customer) {
            self.on_click(c, t, campaign);
        }
    }

    fn on_click(&mut self, customer: CustomerId, c: Millis, campaign: Arc<str>) {
        let window = self.attribution_ms;
        let Some(a) = self.customers.get_mut(&customer) else {
            self.customers.insert(
                customer,
                Attribution {
                    clicks: smallvec::smallvec![(c, campaign)],
                    orders: SmallVec::new(),
                },
            );
            return;
        };
        let pos = a.clicks.partition_point(|(t, _)| *t <= c);
        a.clicks.insert(pos, (c, campaign));
        // Orders this click can precede within the window may change campaign.
        let mut changes = vec![];
        for (o, attributed) in a.orders.iter_mut() {
            if *o < c || *o - c >= window {
                continue;
            }
            let now = campaign_for(&a.clicks, *o, window);
            if now != *attributed {
                changes.push((*o, attributed.clone(), now.clone()));
                *attributed = now;
            }
        }
        for (o, old, new) in changes {
            if let Some(old) = old {
                self.add(o, Some(&old), -1, |c| &mut c.attributed_orders);
            }
            if let Some(new) = new {
                self.add(o, Some(&new), 1, |c| &mut c.attributed_orders);
            }
        }
    }

    /// An accepted ORDER of `customer` at `o`.
    pub fn on_order(&mut self, customer: CustomerId, o: Millis) {
        let window = self.attribution_ms;
        self.pending.push(o, customer);
        let a = self.customers.get_or_insert(customer, Default::default);
        let campaign = campaign_for(&a.clicks, o, window);
        let pos = a.orders.partition_point(|(t, _)| *t <= o);
        a.orders.insert(pos, (o, campaign.clone()));
        if let Some(c) = campaign {
            self.add(o, Some(&c), 1, |c| &mut c.attributed_orders);
        }
    }

    /// Frees what no future event can change: messages past their TTL, and clicks
    /// and orders older than the attribution window before `lower_bound` (the
    /// smallest watermark of the task's inputs).
    pub(crate) fn forget_before(&mut self, lower_bound: Millis) {
        self.forget_orders_before(lower_bound);
        let due = self
            .swept_at
            .is_none_or(|s| lower_bound - s >= (self.attribution_ms / 4).max(1));
        if !due {
            return;
        }
        self.swept_at = Some(lower_bound);
        let (ttl, window) = (self.ttl_ms, self.attribution_ms);
        // Future events are at or after `lower_bound`: a message whose latest event
        // is a TTL behind it can no longer change what it counts (module `message`).
        self.messages.retain(|_, m| match m.last_event() {
            Some(last) if last + ttl > lower_bound => Kept::Unchanged,
            _ => Kept::Removed,
        });
        self.customers.retain(|_, a| {
            let before = (a.clicks.len(), a.orders.len());
            // Future orders are at or after `lower_bound`: they need clicks within the
            // window before it; future clicks can only re-attribute orders after them.
            a.clicks.retain(|(c, _)| *c + window > lower_bound);
            a.orders.retain(|(o, _)| *o >= lower_bound);
            match (a.clicks.len(), a.orders.len()) {
                (0, 0) => Kept::Removed,
                after if after == before => Kept::Unchanged,
                _ => Kept::Changed,
            }
        });
    }

    /// Forgets the orders before `lower_bound`: a future click is at or after it, so
    /// it cannot precede them. A customer left without clicks or orders is dropped.
    fn forget_orders_before(&mut self, lower_bound: Millis) {
        let mut due = std::mem::take(&mut self.due);
        self.pending.pop_due(lower_bound - 1, &mut due);
        for (_, customer) in due.drain(..) {
            // Orders are sorted: is the first one due? (The sweep may have been first.)
            let due = |a: &Attribution| a.orders.first().is_some_and(|(o, _)| *o < lower_bound);
            if !self.customers.get(&customer).is_some_and(due) {
                continue;
            }
            if let Some(a) = self.customers.get_mut(&customer) {
                a.orders.retain(|(o, _)| *o >= lower_bound);
                if a.orders.is_empty() && a.clicks.is_empty() {
                    self.customers.remove(&customer);
                }
            }
        }
        self.due = due;
    }

    /// Rebuilds what is derived from the saved state (after a restore).
    pub fn restored(&mut self) {
        self.pending = pending_orders();
        for (c, a) in self.customers.iter() {
            for (o, _) in &a.orders {
                self.pending.push(*o, *c);
            }
        }
    }

    /// Adds window `idx`'s buckets in `[start, end)`: the whole stream and per campaign.
    pub fn collect(
        &self,
        idx: usize,
        start: Millis,
        end: Millis,
        all: &mut EmailCounts,
        by_campaign: &mut HashMap<Arc<str>, EmailCounts>,
    ) {
        for b in self.windows.range(idx, start, end) {
            all.merge(&b.all);
            for (c, v) in &b.campaign {
                by_campaign.entry(c.clone()).or_default().merge(v);
            }
        }
    }

    pub fn evict(&mut self, idx: usize, before: Millis) {
        self.windows.evict_before(idx, before);
        // State holds campaigns by name, not number: released names need not be kept.
        self.campaigns.forget_before(Millis::MAX);
    }

    /// Adds this task's entries to the memory accounting (attribution entries
    /// are part of a customer's cost).
    pub(crate) fn account(&self, size: &mut crate::state::memory::StateSize) {
        use crate::state::memory::StateKind;
        size.add(StateKind::Message, self.messages.len());
        size.add(StateKind::WindowBucket, self.windows.len());
        let breakdowns: usize = self.windows.iter().map(|b| b.campaign.len()).sum();
        size.add(StateKind::LabelValue, breakdowns + self.campaigns.held());
    }

    pub fn size(&self) -> usize {
        self.messages.len() + self.customers.len() + self.windows.len()
    }
}

impl Merge for EmailState {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        let EmailState {
            ttl_ms,
            attribution_ms,
            windows,
            messages,
            customers,
            campaigns,
            swept_at,
            pending: _,
            due: _,
        } = newer;
        (self.ttl_ms, self.attribution_ms, self.windows) = (ttl_ms, attribution_ms, windows);
        (self.campaigns, self.swept_at) = (campaigns, swept_at);
        self.messages.merge(messages)?;
        self.customers.merge(customers)
    }

    fn saved(&mut self) {
        self.messages.saved();
        self.customers.saved();
    }
}

/// The email family: message events, and ORDERs for attribution.
impl super::family::Family for EmailState {
    fn on_event(&mut self, event: &crate::event::Event, customer: Option<CustomerId>) {
        match (event, customer) {
            (crate::event::Event::Email(e), _) => EmailState::on_event(self, e, customer),
            (crate::event::Event::Purchase(p), Some(c))
                if p.kind == crate::event::PurchaseType::Order =>
            {
                self.on_order(c, p.event_time);
            }
            _ => {}
        }
    }

    /// Attribution state is kept by customer number: the number stays while it is held.
    fn holds(&self, c: CustomerId) -> bool {
        self.customers.get(&c).is_some()
    }

    fn on_watermark(&mut self, w: Millis) {
        self.forget_before(w);
        self.windows.roll_to(w);
    }

    fn collect(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
        into: &mut super::family::WindowAggregates,
    ) {
        EmailState::collect(
            self,
            idx,
            start,
            end,
            &mut into.email,
            &mut into.email_by_campaign,
        );
    }

    fn evict(&mut self, idx: usize, start: Millis, _end: Millis, _lower_bound: Option<Millis>) {
        EmailState::evict(self, idx, start);
    }

    fn account(&self, size: &mut crate::state::memory::StateSize) {
        EmailState::account(self, size);
    }

    fn size(&self) -> usize {
        EmailState::size(self)
    }

    fn restored(&mut self) {
        EmailState::restored(self);
    }
}

#[cfg(test)]
mod tests;
