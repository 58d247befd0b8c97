//! A deterministic generator of realistic customer-engagement traffic.
//!
//! Used by `engaged demo` (which produces the events into an in-process Kafka)
//! and by tests and benchmarks. The generator is pure and synchronous: no wall
//! clock, no I/O, no threads. All randomness comes from `StdRng`s seeded with
//! [`GeneratorConfig::seed`] (one main stream, and a few of their own for additions
//! that must not move it: regulars, checkout CES), so one configuration always
//! yields the same events, however [`Generator::advance_to`] calls chunk the time
//! line.
//!
//! # Model
//!
//! A discrete-event simulation: a priority queue of *actions* ordered by
//! `(time, sequence number)`. Running an action emits zero or more events
//! stamped with the action's time and schedules follow-up actions at that time
//! or later. Because actions run in queue order whatever `until` is, chunked and
//! single-call output are identical.
//!
//! - **Web**: visitors start sessions as a non-homogeneous Poisson process
//!   (`visitors_per_hour` on average, peak 16:00 UTC, trough 04:00 UTC); ~30%
//!   are known customers (`customer_id` set on every view; one `visitor_id` per
//!   customer, so co-partitioning holds). ~40% of sessions bounce; the others
//!   walk a page graph (`/`, `/category/…`, `/products/p-NNN`, `/search`,
//!   `/cart`, `/checkout` on the first site, `/blog/…`, `/about` on the
//!   others) with gaps of 10 s..5 min, and occasionally 25..35 min (so some
//!   sessions split at the 30-minute timeout). Channels: organic, paid_search,
//!   email, social, referral and direct (`channel` = `None`), with referrers to
//!   match; later views of a session have the previous page as referrer.
//! - **Email**: a weekly newsletter to all opted-in customers
//!   (`wk-YYYY-WW-newsletter`, first one 30 minutes after `start`), a weekly
//!   promo to ~40% of them (`wk-YYYY-WW-promo`, from day 3), and a triggered
//!   `trg-cart-abandon` mail after some customer sessions that reached the cart
//!   without checking out. Per message: SENT, then DELIVERED (97%) or BOUNCED;
//!   customers have individual open propensities (Beta, mean 25%); 18% of
//!   openers open again (same `message_id`, new `event_id`); 14% of opens click
//!   (≈3.5% of delivered); 1.2% of opens unsubscribe (≈0.3% of delivered);
//!   0.05% of delivered complain. A click is usually followed by a web session
//!   with channel `email`, and in 10% of cases by an order within days carrying
//!   the `campaign_id`.
//! - **Purchases**: each customer follows the BG/NBD story: a Gamma-distributed
//!   order rate (mean ≈ 1 order per 21 days) and a Beta-distributed dropout
//!   probability applied after every order. An order is preceded by a shopping
//!   session ending in `/cart`, `/checkout`. Amounts are log-normal around a
//!   per-customer mean spend, clamped to 500..=50 000 minor units, 1..=5 items,
//!   `cost_minor` 40–70% of the amount on 80% of orders. 5% of orders are
//!   refunded 2..21 days later (full or partial, same `order_id`). 12% of
//!   customers start with a monthly subscription (RENEWAL on the same day each
//!   month, 5% cancel before the next renewal: CANCELLATION with the monthly
//!   price); 3% of orders start a new one.
//! - **Surveys**: 22% of orders get a post-order CSAT (5% of them anonymous),
//!   35% of those also an NPS; 1% of web sessions answer an on-site NPS
//!   (anonymous for anonymous visitors); 30% of refunds get a CES. 15% of
//!   answers carry a comment. The churn cohort is less satisfied.
//! - **Checkout CES**: 10% of ORDERs get a `ces-checkout` answer 1..10 minutes
//!   later (regulars' ORDERs aside), so that CES has data within minutes of a
//!   start, not only days after refunds. It was added after everything else and
//!   draws from its own RNG, with event ids of its own (`…-ces<n>`): all other
//!   events are exactly those of a run without it.
//! - **Churn spike**: a cohort of ~20% of customers is drawn at start. From
//!   `churn_spike_at` on, they have no activity at all in the sense of SPEC §3
//!   (no views, orders, renewals, refunds, survey answers, opens, clicks,
//!   unsubscribes or complaints). The shop keeps mailing them, so SENT,
//!   DELIVERED and BOUNCED (the sender's doing, not activity) continue — which
//!   is what makes open rates drop in the demo. Before the spike the output is
//!   identical to a run without spike.
//! - **Regulars** (optional, [`Regulars`]): extra customers `r-NNNNNN` who only
//!   place ORDERs, one about every `every` (±10%) from `start` on, until they all
//!   stop at `silent_from`. Their own rhythm makes their silence unusual soon and
//!   at about the same time, so their churn risk crosses the threshold in a burst:
//!   the `churn-spike` scenario of `engaged demo`. They draw from their own RNG, so
//!   the other customers' events are the same with or without them (event ids and
//!   order ids aside, which are numbered in order).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::f64::consts::TAU;

use chrono::{DateTime, Datelike, Months};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::event::{
    EmailEvent, EmailEventType, Event, Millis, PageView, Purchase, PurchaseType, SurveyKind,
    SurveyResponse,
};

const SEC: Millis = 1_000;
const MIN: Millis = 60 * SEC;
const HOUR: Millis = 60 * MIN;
const DAY: Millis = 24 * HOUR;

/// 2026-11-16T00:00:00Z, a Monday (ISO week 2026-47): the default simulated start.
pub const DEFAULT_START: Millis = 1_794_787_200_000;

/// Configuration of a [`Generator`].
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Seed of the RNG; the same config always yields the same events.
    pub seed: u64,
    /// Simulated start (event time of the first possible event).
    pub start: Millis,
    /// Number of known customers.
    pub customers: u32,
    /// Mean rate of new web sessions (modulated by a day/night cycle).
    pub visitors_per_hour: f64,
    /// Sites; the first is the shop (products, cart, checkout), the others are
    /// content sites (blog). Empty names are ignored; no names means the defaults.
    pub sites: Vec<String>,
    /// ISO 4217 currency of all purchases.
    pub currency: String,
    /// From this time on a cohort (~20%) of customers stops all activity.
    pub churn_spike_at: Option<Millis>,
    /// Regular buyers who all stop at one time (see [`Regulars`]).
    pub regulars: Option<Regulars>,
}

/// A cohort of regular buyers who stop together: the churn-spike scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regulars {
    /// How many (customer ids `r-000000`, `r-000001`, …).
    pub customers: u32,
    /// Mean time between two ORDERs of one regular (each gap varies by ±10%; the
    /// first ORDER falls anywhere in the first gap).
    pub every: Millis,
    /// From this time on, none of them orders again.
    pub silent_from: Millis,
}

/// Seeds the regulars' RNG apart from the main one (`seed` xor this).
const REGULARS_SEED: u64 = 0x7265_6775_6c61_7273;
/// Seeds the checkout CES RNG apart from the main one (`seed` xor this).
const CHECKOUT_CES_SEED: u64 = 0x6365_732d_6368_6b6f;

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            start: DEFAULT_START,
            customers: 2_000,
            visitors_per_hour: 600.0,
            sites: vec!["shop.example".to_string(), "blog.example".to_string()],
            currency: "EUR".to_string(),
            churn_spike_at: None,
            regulars: None,
        }
    }
}

/// Partition key of an event per SPEC §1 co-partitioning: `customer_id`, else
/// `visitor_id` (page views), else `event_id` (anonymous survey answers).
pub fn partition_key(event: &Event) -> &str {
    match event {
        Event::PageView(e) => e.customer_id.as_deref().unwrap_or(&e.visitor_id),
        Event::Email(e) => &e.customer_id,
        Event::Purchase(e) => &e.customer_id,
        Event::Survey(e) => e.customer_id.as_deref().unwrap_or(&e.event_id),
    }
}

/// The input topic of each event family in the demo.
pub fn topic_of(event: &Event) -> &'static str {
    match event {
        Event::PageView(_) => "pageviews",
        Event::Email(_) => "emails",
        Event::Purchase(_) => "purchases",
        Event::Survey(_) => "surveys",
    }
}

struct Customer {
    id: String,
    visitor_id: String,
    /// BG/NBD λ: orders per day while alive.
    orders_per_day: f64,
    /// BG/NBD p: probability of dropping out after each order.
    dropout: f64,
    /// Mean order value in minor units (Gamma-Gamma spirit).
    mean_spend: f64,
    /// Probability of opening a delivered email.
    open_p: f64,
    opted_in: bool,
    unsubscribed: bool,
    /// Member of the churn-spike cohort.
    cohort: bool,
    subscription: Option<Subscription>,
    /// No random visit starts before this time (keeps sessions apart).
    web_busy_until: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subscription {
    id: u64,
    price: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visitor {
    Customer(u32),
    Anonymous(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Browse,
    /// A session that ends in `/cart`, `/checkout` and an order.
    Shop {
        campaign: Option<u32>,
        natural: bool,
    },
}

#[derive(Debug, Clone)]
struct Session {
    visitor: Visitor,
    site: u16,
    channel: Channel,
    /// The page of the next view.
    page: Page,
    prev: Option<Page>,
    /// Views still to emit, including `page`.
    remaining: u8,
    plan: Plan,
    saw_cart: bool,
}

impl Session {
    fn new(
        visitor: Visitor,
        site: u16,
        channel: Channel,
        landing: Page,
        plan: Plan,
        views: u8,
    ) -> Session {
        Session {
            visitor,
            site,
            channel,
            page: landing,
            prev: None,
            remaining: views.max(1),
            plan,
            saw_cart: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Msg {
    customer: u32,
    campaign: u32,
    id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CampaignKind {
    Newsletter,
    Promo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SurveyTopic {
    PostOrderCsat,
    PostOrderNps,
    WebNps,
    RefundCes,
    CheckoutCes,
}

impl SurveyTopic {
    fn id_and_kind(self) -> (&'static str, SurveyKind) {
        match self {
            SurveyTopic::PostOrderCsat => ("csat-post-order", SurveyKind::Csat),
            SurveyTopic::PostOrderNps => ("nps-post-order", SurveyKind::Nps),
            SurveyTopic::WebNps => ("nps-web-intercept", SurveyKind::Nps),
            SurveyTopic::RefundCes => ("ces-refund", SurveyKind::Ces),
            SurveyTopic::CheckoutCes => ("ces-checkout", SurveyKind::Ces),
        }
    }
}

#[derive(Debug)]
enum Action {
    Arrival,
    View(Box<Session>),
    Campaign(CampaignKind),
    Send {
        customer: u32,
        campaign: u32,
    },
    Delivered(Msg),
    Bounced(Msg),
    Opened {
        msg: Msg,
        first: bool,
    },
    Clicked(Msg),
    Unsubscribed(Msg),
    Complained(Msg),
    /// Start a shopping session that ends in an order.
    Shop {
        customer: u32,
        campaign: Option<u32>,
        natural: bool,
    },
    Order {
        customer: u32,
        campaign: Option<u32>,
        /// Part of the customer's BG/NBD purchase process (not email-driven).
        natural: bool,
    },
    Refund {
        customer: u32,
        order: u64,
        amount: i64,
        items: i32,
    },
    Renewal {
        customer: u32,
        subscription: u64,
        n: u32,
    },
    Cancellation {
        customer: u32,
        subscription: u64,
    },
    Survey {
        customer: Option<u32>,
        topic: SurveyTopic,
    },
    /// The next ORDER of a regular (see [`Regulars`]).
    RegularOrder {
        regular: u32,
    },
}

struct Scheduled {
    time: Millis,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` pops the earliest `(time, seq)` first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// The traffic generator; see the module documentation.
pub struct Generator {
    rng: StdRng,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    /// `until` of the last `advance_to` (initially `start`).
    now: Millis,
    sites: Vec<String>,
    currency: String,
    churn_spike_at: Option<Millis>,
    regulars: Option<Regulars>,
    /// The regulars' own RNG and mean order values.
    regulars_rng: StdRng,
    regular_spend: Vec<i64>,
    /// Checkout CES (whether, when, score, comment) draws from its own RNG and
    /// numbers its event ids apart, so that the main RNG and the other events'
    /// ids are those of a run without it. Share of ORDERs: [`CES_PER_ORDER`] (a
    /// field, so that a test can compare with a run without them).
    ces_rng: StdRng,
    ces_per_order: f64,
    next_ces: u64,
    visitors_per_hour: f64,
    event_prefix: String,
    next_event: u64,
    next_message: u64,
    next_order: u64,
    next_subscription: u64,
    customers: Vec<Customer>,
    anonymous_visitors: u32,
    campaigns: Vec<String>,
    cart_abandon_campaign: u32,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("now", &self.now)
            .field("queued", &self.queue.len())
            .field("events", &self.next_event)
            .field("customers", &self.customers.len())
            .finish_non_exhaustive()
    }
}

impl Generator {
    pub fn new(cfg: GeneratorConfig) -> Generator {
        let mut sites: Vec<String> = cfg.sites.into_iter().filter(|s| !s.is_empty()).collect();
        if sites.is_empty() {
            sites = GeneratorConfig::default().sites;
        }
        let mut g = Generator {
            rng: StdRng::seed_from_u64(cfg.seed),
            queue: BinaryHeap::new(),
            seq: 0,
            now: cfg.start,
            sites,
            currency: cfg.currency,
            churn_spike_at: cfg.churn_spike_at,
            regulars: None,
            regulars_rng: StdRng::seed_from_u64(cfg.seed ^ REGULARS_SEED),
            regular_spend: vec![],
            ces_rng: StdRng::seed_from_u64(cfg.seed ^ CHECKOUT_CES_SEED),
            ces_per_order: CES_PER_ORDER,
            next_ces: 0,
            visitors_per_hour: cfg.visitors_per_hour,
            event_prefix: format!("{:x}-", cfg.seed),
            next_event: 0,
            next_message: 0,
            next_order: 0,
            next_subscription: 0,
            customers: Vec::with_capacity(cfg.customers as usize),
            anonymous_visitors: cfg.customers.saturating_mul(20).max(1_000),
            campaigns: vec!["trg-cart-abandon".to_string()],
            cart_abandon_campaign: 0,
        };
        let start = cfg.start;
        if g.visitors_per_hour.is_finite() && g.visitors_per_hour > 0.0 {
            g.schedule(start, Action::Arrival);
        }
        g.schedule(start + 30 * MIN, Action::Campaign(CampaignKind::Newsletter));
        g.schedule(
            start + 3 * DAY + 10 * HOUR,
            Action::Campaign(CampaignKind::Promo),
        );
        if let Some(r) = cfg.regulars.filter(|r| r.customers > 0 && r.every > 0) {
            for i in 0..r.customers {
                let first = g.regulars_rng.random_range(0..r.every);
                let spend = g.regulars_rng.random_range(1_500..4_000);
                g.regular_spend.push(spend);
                g.schedule(start + first, Action::RegularOrder { regular: i });
            }
            g.regulars = Some(r);
        }
        for i in 0..cfg.customers {
            let customer = g.random_customer(i);
            let first_order = exp_ms(&mut g.rng, DAY as f64 / customer.orders_per_day);
            let subscription = customer.subscription;
            g.customers.push(customer);
            g.schedule(
                start.saturating_add(first_order),
                Action::Shop {
                    customer: i,
                    campaign: None,
                    natural: true,
                },
            );
            if let Some(sub) = subscription {
                let at = start + g.rng.random_range(0..30 * DAY);
                let n = g.rng.random_range(2..=12);
                g.schedule(
                    at,
                    Action::Renewal {
                        customer: i,
                        subscription: sub.id,
                        n,
                    },
                );
            }
        }
        g
    }

    /// All events with `event_time` in `[previous until, until)` (the first call
    /// starts at `start`), in event-time order, ties in a fixed order. Calls must
    /// use non-decreasing `until`; an `until` not after the previous one yields
    /// nothing. Follow-ups that fall after `until` stay queued for later calls.
    pub fn advance_to(&mut self, until: Millis) -> Vec<Event> {
        let mut out = Vec::new();
        if until <= self.now {
            return out;
        }
        while self.queue.peek().is_some_and(|s| s.time < until) {
            let Some(s) = self.queue.pop() else { break };
            self.run(s.time, s.action, &mut out);
        }
        self.now = until;
        out
    }

    fn random_customer(&mut self, i: u32) -> Customer {
        let rng = &mut self.rng;
        let subscription = if rng.random_bool(INITIAL_SUBSCRIBER_SHARE) {
            self.next_subscription += 1;
            Some(Subscription {
                id: self.next_subscription,
                price: SUBSCRIPTION_PRICES[rng.random_range(0..SUBSCRIPTION_PRICES.len())],
            })
        } else {
            None
        };
        Customer {
            id: format!("c-{i:06}"),
            visitor_id: format!("v-c{i:06}"),
            // Gamma(r = 1.2, α = 25 days): mean 0.048 orders per day.
            orders_per_day: gamma(rng, 1.2, 1.0 / 25.0).max(1e-4),
            // Beta(0.7, 3.5): mean dropout 0.17 per order.
            dropout: beta(rng, 0.7, 3.5),
            // Gamma(3, 1500): mean spend 45.00.
            mean_spend: gamma(rng, 3.0, 1_500.0),
            // Beta(1.2, 3.6): mean open propensity 0.25.
            open_p: beta(rng, 1.2, 3.6),
            opted_in: rng.random_bool(0.8),
            unsubscribed: false,
            cohort: rng.random_bool(CHURN_COHORT_SHARE),
            subscription,
            web_busy_until: Millis::MIN,
        }
    }

    fn schedule(&mut self, time: Millis, action: Action) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time,
            seq: self.seq,
            action,
        });
    }

    /// Whether `customer` belongs to the churned cohort at `t`.
    fn suppressed(&self, customer: u32, t: Millis) -> bool {
        self.customers[customer as usize].cohort && self.churn_spike_at.is_some_and(|s| t >= s)
    }

    fn event_id(&mut self) -> String {
        self.next_event += 1;
        format!("{}{}", self.event_prefix, self.next_event)
    }

    fn run(&mut self, t: Millis, action: Action, out: &mut Vec<Event>) {
        match action {
            Action::Arrival => self.arrival(t),
            Action::View(session) => self.view(t, session, out),
            Action::Campaign(kind) => self.campaign(t, kind),
            Action::Send { customer, campaign } => self.send(t, customer, campaign, out),
            Action::Delivered(msg) => self.delivered(t, msg, out),
            Action::Bounced(msg) => self.email(t, msg, EmailEventType::Bounced, None, out),
            Action::Opened { msg, first } => self.opened(t, msg, first, out),
            Action::Clicked(msg) => self.clicked(t, msg, out),
            Action::Unsubscribed(msg) => {
                self.unsubscribed(t, msg, EmailEventType::Unsubscribed, out)
            }
            Action::Complained(msg) => self.unsubscribed(t, msg, EmailEventType::Complained, out),
            Action::Shop {
                customer,
                campaign,
                natural,
            } => self.shop(t, customer, campaign, natural),
            Action::Order {
                customer,
                campaign,
                natural,
            } => self.order(t, customer, campaign, natural, out),
            Action::Refund {
                customer,
                order,
                amount,
                items,
            } => self.refund(t, customer, order, amount, items, out),
            Action::Renewal {
                customer,
                subscription,
                n,
            } => self.renewal(t, customer, subscription, n, out),
            Action::Cancellation {
                customer,
                subscription,
            } => self.cancellation(t, customer, subscription, out),
            Action::Survey { customer, topic } => self.survey(t, customer, topic, out),
            Action::RegularOrder { regular } => self.regular_order(t, regular, out),
        }
    }
}

mod email;
mod purchases;
mod rates;
mod sampling;
mod surveys;
mod web;

use rates::*;
use sampling::*;
use web::{Channel, Page};

#[cfg(test)]
mod tests;
