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

/// Session timeout of SPEC §3, used to keep a customer's random visits apart.
const SESSION_TIMEOUT: Millis = 30 * MIN;
/// Share of sessions started by known customers.
const KNOWN_VISITOR_SHARE: f64 = 0.30;
/// Share of browsing sessions with exactly one view.
const BOUNCE_SHARE: f64 = 0.40;
/// Peak of the day/night factor (its mean over a day is 1).
const DIURNAL_PEAK: f64 = 1.6;
const DIURNAL_AMPLITUDE: f64 = 0.6;
const DIURNAL_PEAK_HOUR: f64 = 16.0;
/// Share of inter-view gaps that are long (25..35 minutes).
const LONG_GAP_SHARE: f64 = 0.05;

const BOUNCE_RATE_EMAIL: f64 = 0.03;
const REOPEN_SHARE: f64 = 0.18;
const CLICK_PER_OPEN: f64 = 0.14;
const UNSUBSCRIBE_PER_OPEN: f64 = 0.012;
const COMPLAINT_PER_DELIVERED: f64 = 0.0005;
const CLICK_SESSION_SHARE: f64 = 0.65;
const CLICK_ORDER_SHARE: f64 = 0.10;
const CART_ABANDON_EMAIL_SHARE: f64 = 0.5;
const PROMO_AUDIENCE_SHARE: f64 = 0.4;

const REFUND_SHARE: f64 = 0.05;
const COST_PRESENT_SHARE: f64 = 0.8;
const NEW_SUBSCRIPTION_SHARE: f64 = 0.03;
const INITIAL_SUBSCRIBER_SHARE: f64 = 0.12;
const SUBSCRIPTION_CANCEL_SHARE: f64 = 0.05;
const SUBSCRIPTION_PRICES: [i64; 3] = [999, 1_499, 2_499];

const CSAT_PER_ORDER: f64 = 0.22;
const NPS_PER_CSAT: f64 = 0.35;
const ANONYMOUS_CSAT_SHARE: f64 = 0.05;
const WEB_SURVEY_PER_SESSION: f64 = 0.01;
const CES_PER_REFUND: f64 = 0.30;
const CES_PER_ORDER: f64 = 0.10;
const COMMENT_SHARE: f64 = 0.15;

const CHURN_COHORT_SHARE: f64 = 0.20;

const N_PRODUCTS: f64 = 200.0;
const CATEGORIES: [&str; 8] = [
    "shoes",
    "jackets",
    "bags",
    "accessories",
    "kids",
    "outdoor",
    "sale",
    "new-in",
];
const BLOG_POSTS: [&str; 12] = [
    "how-to-choose-running-shoes",
    "autumn-lookbook",
    "care-guide-leather",
    "behind-the-seams",
    "sustainability-report",
    "packing-list-city-trip",
    "size-guide",
    "gift-ideas",
    "meet-the-makers",
    "winter-layering",
    "repair-dont-replace",
    "store-opening",
];
const POSITIVE_COMMENTS: [&str; 5] = [
    "Fast delivery, great quality.",
    "Exactly as described, will order again.",
    "Friendly support, thanks!",
    "Love the packaging.",
    "Easy checkout.",
];
const NEUTRAL_COMMENTS: [&str; 4] = [
    "OK, but delivery took a while.",
    "Product fine, website a bit slow.",
    "Sizes run small.",
    "Decent, prices could be lower.",
];
const NEGATIVE_COMMENTS: [&str; 5] = [
    "Item arrived damaged.",
    "Still waiting for my refund.",
    "Too many emails.",
    "Checkout kept failing.",
    "Customer service never answered.",
];

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
enum Channel {
    Organic,
    PaidSearch,
    Email,
    Social,
    Direct,
    Referral,
}

impl Channel {
    const ALL: [Channel; 6] = [
        Channel::Organic,
        Channel::PaidSearch,
        Channel::Email,
        Channel::Social,
        Channel::Direct,
        Channel::Referral,
    ];
    /// Weights of random web sessions, in the order of `ALL`.
    const VISIT_WEIGHTS: [u32; 6] = [34, 14, 4, 12, 26, 10];
    /// Weights of the sessions that end in an order.
    const SHOP_WEIGHTS: [u32; 6] = [25, 15, 5, 5, 40, 10];

    fn name(self) -> Option<&'static str> {
        match self {
            Channel::Organic => Some("organic"),
            Channel::PaidSearch => Some("paid_search"),
            Channel::Email => Some("email"),
            Channel::Social => Some("social"),
            Channel::Direct => None,
            Channel::Referral => Some("referral"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Home,
    Category(u8),
    Product(u16),
    Search,
    Cart,
    Checkout,
    Blog(u8),
    About,
}

impl Page {
    fn path(self) -> String {
        match self {
            Page::Home => "/".to_string(),
            Page::Category(i) => format!("/category/{}", CATEGORIES[i as usize]),
            Page::Product(i) => format!("/products/p-{i:03}"),
            Page::Search => "/search".to_string(),
            Page::Cart => "/cart".to_string(),
            Page::Checkout => "/checkout".to_string(),
            Page::Blog(i) => format!("/blog/{}", BLOG_POSTS[i as usize]),
            Page::About => "/about".to_string(),
        }
    }
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

    // ---------------------------------------------------------------- web

    fn arrival(&mut self, t: Millis) {
        let mean_gap = HOUR as f64 / (self.visitors_per_hour * DIURNAL_PEAK);
        let gap = exp_ms(&mut self.rng, mean_gap).max(1);
        self.schedule(t.saturating_add(gap), Action::Arrival);
        // Thinning: accept a candidate with probability rate(t) / peak rate.
        if !self.rng.random_bool(diurnal(t) / DIURNAL_PEAK) {
            return;
        }
        let visitor = if !self.customers.is_empty() && self.rng.random_bool(KNOWN_VISITOR_SHARE) {
            let c = self.rng.random_range(0..self.customers.len() as u32);
            if self.suppressed(c, t) || self.customers[c as usize].web_busy_until > t {
                return;
            }
            Visitor::Customer(c)
        } else {
            Visitor::Anonymous(self.rng.random_range(0..self.anonymous_visitors))
        };
        let site = if self.sites.len() == 1 || self.rng.random_bool(0.7) {
            0
        } else {
            self.rng.random_range(1..self.sites.len()) as u16
        };
        let channel = Channel::ALL[pick(&mut self.rng, &Channel::VISIT_WEIGHTS)];
        let landing = self.landing(site, channel);
        let views = self.browse_views(BOUNCE_SHARE);
        let session = Session::new(visitor, site, channel, landing, Plan::Browse, views);
        self.start_session(t, session);
    }

    /// Views of a browsing session: 1 with probability `bounce`, else 2..=12.
    fn browse_views(&mut self, bounce: f64) -> u8 {
        if self.rng.random_bool(bounce) {
            1
        } else {
            2 + geometric(&mut self.rng, 0.28, 10)
        }
    }

    fn start_session(&mut self, t: Millis, session: Session) {
        self.schedule(t, Action::View(Box::new(session)));
    }

    fn landing(&mut self, site: u16, channel: Channel) -> Page {
        let rng = &mut self.rng;
        if site != 0 {
            return match channel {
                Channel::Direct => match pick(rng, &[70, 30]) {
                    0 => Page::Home,
                    _ => blog(rng),
                },
                _ => match pick(rng, &[20, 75, 5]) {
                    0 => Page::Home,
                    1 => blog(rng),
                    _ => Page::About,
                },
            };
        }
        match channel {
            Channel::Organic => match pick(rng, &[30, 25, 45]) {
                0 => Page::Home,
                1 => category(rng),
                _ => product(rng),
            },
            Channel::PaidSearch => match pick(rng, &[30, 70]) {
                0 => category(rng),
                _ => product(rng),
            },
            Channel::Email | Channel::Social => match pick(rng, &[40, 60]) {
                0 => Page::Home,
                _ => product(rng),
            },
            Channel::Direct => match pick(rng, &[80, 10, 10]) {
                0 => Page::Home,
                1 => Page::Cart,
                _ => product(rng),
            },
            Channel::Referral => match pick(rng, &[50, 50]) {
                0 => Page::Home,
                _ => product(rng),
            },
        }
    }

    fn channel_referrer(&mut self, channel: Channel) -> Option<String> {
        let rng = &mut self.rng;
        let r = match channel {
            Channel::Organic => [
                "https://www.google.com/",
                "https://www.bing.com/",
                "https://duckduckgo.com/",
            ][pick(rng, &[80, 12, 8])],
            Channel::PaidSearch => {
                ["https://www.google.com/", "https://www.bing.com/"][pick(rng, &[85, 15])]
            }
            Channel::Email => {
                if rng.random_bool(0.3) {
                    "https://mail.google.com/"
                } else {
                    return None;
                }
            }
            Channel::Social => [
                "https://www.facebook.com/",
                "https://www.instagram.com/",
                "https://www.linkedin.com/",
                "https://t.co/",
                "https://www.reddit.com/",
            ][pick(rng, &[35, 30, 10, 10, 15])],
            Channel::Direct => return None,
            Channel::Referral => [
                "https://news.example/",
                "https://forum.example/",
                "https://partner.example/",
                "https://compare.example/",
            ][pick(rng, &[30, 25, 25, 20])],
        };
        Some(r.to_string())
    }

    fn view(&mut self, t: Millis, mut s: Box<Session>, out: &mut Vec<Event>) {
        let (visitor_id, customer_id) = match s.visitor {
            Visitor::Customer(c) => {
                if self.suppressed(c, t) {
                    return;
                }
                let customer = &mut self.customers[c as usize];
                customer.web_busy_until = t + SESSION_TIMEOUT;
                (customer.visitor_id.clone(), Some(customer.id.clone()))
            }
            Visitor::Anonymous(n) => (format!("v-a{n:07}"), None),
        };
        let referrer = match s.prev {
            None => self.channel_referrer(s.channel),
            Some(prev) => Some(format!(
                "https://{}{}",
                self.sites[s.site as usize],
                prev.path()
            )),
        };
        let event_id = self.event_id();
        out.push(Event::PageView(PageView {
            event_id,
            event_time: t,
            visitor_id,
            customer_id,
            site: self.sites[s.site as usize].clone(),
            page: s.page.path(),
            referrer,
            channel: s.channel.name().map(str::to_string),
        }));
        if s.page == Page::Cart {
            s.saw_cart = true;
        }
        s.remaining -= 1;
        if s.remaining == 0 {
            self.end_session(t, &s);
            return;
        }
        let next = self.next_page(&s);
        let gap = self.view_gap();
        s.prev = Some(s.page);
        s.page = next;
        self.schedule(t + gap, Action::View(s));
    }

    fn view_gap(&mut self) -> Millis {
        if self.rng.random_bool(LONG_GAP_SHARE) {
            self.rng.random_range(25 * MIN..35 * MIN)
        } else {
            // Log-uniform between 10 s and 5 min.
            let (lo, hi) = ((10.0f64).ln(), (300.0f64).ln());
            let secs = (lo + self.rng.random::<f64>() * (hi - lo)).exp();
            (secs * 1_000.0) as Millis
        }
    }

    fn next_page(&mut self, s: &Session) -> Page {
        if let Plan::Shop { .. } = s.plan {
            match s.remaining {
                2 => return Page::Cart,
                1 => return Page::Checkout,
                _ => {}
            }
        }
        let rng = &mut self.rng;
        let next = if s.site != 0 {
            match s.page {
                Page::Home => match pick(rng, &[85, 15]) {
                    0 => blog(rng),
                    _ => Page::About,
                },
                Page::About => match pick(rng, &[50, 50]) {
                    0 => Page::Home,
                    _ => blog(rng),
                },
                _ => match pick(rng, &[65, 25, 10]) {
                    0 => blog(rng),
                    1 => Page::Home,
                    _ => Page::About,
                },
            }
        } else {
            match s.page {
                Page::Home | Page::Blog(_) | Page::About => match pick(rng, &[40, 40, 15, 5]) {
                    0 => category(rng),
                    1 => product(rng),
                    2 => Page::Search,
                    _ => Page::Cart,
                },
                Page::Category(_) => match pick(rng, &[70, 15, 10, 5]) {
                    0 => product(rng),
                    1 => category(rng),
                    2 => Page::Home,
                    _ => Page::Search,
                },
                Page::Product(_) => match pick(rng, &[40, 20, 18, 12, 10]) {
                    0 => product(rng),
                    1 => category(rng),
                    2 => Page::Cart,
                    3 => Page::Home,
                    _ => Page::Search,
                },
                Page::Search => match pick(rng, &[80, 15, 5]) {
                    0 => product(rng),
                    1 => Page::Search,
                    _ => Page::Home,
                },
                Page::Cart => match pick(rng, &[25, 50, 25]) {
                    0 => Page::Checkout,
                    1 => product(rng),
                    _ => Page::Home,
                },
                Page::Checkout => match pick(rng, &[40, 30, 30]) {
                    0 => Page::Cart,
                    1 => Page::Home,
                    _ => product(rng),
                },
            }
        };
        match (s.plan, next) {
            (Plan::Shop { .. }, Page::Cart | Page::Checkout) => product(rng),
            _ => next,
        }
    }

    fn end_session(&mut self, t: Millis, s: &Session) {
        let customer = match s.visitor {
            Visitor::Customer(c) => Some(c),
            Visitor::Anonymous(_) => None,
        };
        match (s.plan, customer) {
            (Plan::Shop { campaign, natural }, Some(c)) => {
                let at = t + self.rng.random_range(20 * SEC..180 * SEC);
                self.schedule(
                    at,
                    Action::Order {
                        customer: c,
                        campaign,
                        natural,
                    },
                );
            }
            (Plan::Browse, Some(c)) if s.saw_cart && s.page != Page::Checkout => {
                let cust = &self.customers[c as usize];
                let mailable = cust.opted_in && !cust.unsubscribed;
                if mailable && self.rng.random_bool(CART_ABANDON_EMAIL_SHARE) {
                    let at = t + HOUR + self.rng.random_range(0..15 * MIN);
                    let campaign = self.cart_abandon_campaign;
                    self.schedule(
                        at,
                        Action::Send {
                            customer: c,
                            campaign,
                        },
                    );
                }
            }
            _ => {}
        }
        if self.rng.random_bool(WEB_SURVEY_PER_SESSION) {
            let at = t + self.rng.random_range(5 * SEC..120 * SEC);
            self.schedule(
                at,
                Action::Survey {
                    customer,
                    topic: SurveyTopic::WebNps,
                },
            );
        }
    }

    // -------------------------------------------------------------- email

    fn campaign(&mut self, t: Millis, kind: CampaignKind) {
        self.schedule(t + 7 * DAY, Action::Campaign(kind));
        let week = DateTime::from_timestamp_millis(t)
            .unwrap_or_default()
            .iso_week();
        let name = match kind {
            CampaignKind::Newsletter => "newsletter",
            CampaignKind::Promo => "promo",
        };
        let campaign = self.campaigns.len() as u32;
        self.campaigns
            .push(format!("wk-{}-{:02}-{name}", week.year(), week.week()));
        for c in 0..self.customers.len() as u32 {
            let cust = &self.customers[c as usize];
            if !cust.opted_in || cust.unsubscribed {
                continue;
            }
            if kind == CampaignKind::Promo && !self.rng.random_bool(PROMO_AUDIENCE_SHARE) {
                continue;
            }
            // Sends go out over 90 minutes.
            let at = t + self.rng.random_range(0..90 * MIN);
            self.schedule(
                at,
                Action::Send {
                    customer: c,
                    campaign,
                },
            );
        }
    }

    fn email(
        &mut self,
        t: Millis,
        msg: Msg,
        kind: EmailEventType,
        url: Option<String>,
        out: &mut Vec<Event>,
    ) {
        let event_id = self.event_id();
        out.push(Event::Email(EmailEvent {
            event_id,
            event_time: t,
            customer_id: self.customers[msg.customer as usize].id.clone(),
            campaign_id: self.campaigns[msg.campaign as usize].clone(),
            message_id: format!("msg-{:07}", msg.id),
            kind,
            url,
        }));
    }

    fn send(&mut self, t: Millis, customer: u32, campaign: u32, out: &mut Vec<Event>) {
        if self.customers[customer as usize].unsubscribed {
            return;
        }
        self.next_message += 1;
        let msg = Msg {
            customer,
            campaign,
            id: self.next_message,
        };
        self.email(t, msg, EmailEventType::Sent, None, out);
        if self.rng.random_bool(BOUNCE_RATE_EMAIL) {
            let at = t + self.rng.random_range(SEC..5 * MIN);
            self.schedule(at, Action::Bounced(msg));
        } else {
            let at = t + self.rng.random_range(200..90 * SEC);
            self.schedule(at, Action::Delivered(msg));
        }
    }

    /// Delay from delivery to open: mostly within hours, some after days.
    fn open_delay(&mut self) -> Millis {
        let d = match pick(&mut self.rng, &[60, 30, 10]) {
            0 => exp_ms(&mut self.rng, HOUR as f64),
            1 => exp_ms(&mut self.rng, 8.0 * HOUR as f64),
            _ => self.rng.random_range(DAY..4 * DAY),
        };
        d.max(5 * SEC)
    }

    fn delivered(&mut self, t: Millis, msg: Msg, out: &mut Vec<Event>) {
        self.email(t, msg, EmailEventType::Delivered, None, out);
        let open_p = self.customers[msg.customer as usize].open_p;
        if self.rng.random_bool(open_p) {
            let at = t + self.open_delay();
            self.schedule(at, Action::Opened { msg, first: true });
        }
        if self.rng.random_bool(COMPLAINT_PER_DELIVERED) {
            let at = t + self.open_delay();
            self.schedule(at, Action::Complained(msg));
        }
    }

    fn opened(&mut self, t: Millis, msg: Msg, first: bool, out: &mut Vec<Event>) {
        if self.suppressed(msg.customer, t) {
            return;
        }
        self.email(t, msg, EmailEventType::Opened, None, out);
        if !first {
            return;
        }
        if self.rng.random_bool(REOPEN_SHARE) {
            let at = t + MIN + exp_ms(&mut self.rng, 6.0 * HOUR as f64);
            self.schedule(at, Action::Opened { msg, first: false });
        }
        if self.rng.random_bool(CLICK_PER_OPEN) {
            let at = t + 3 * SEC + exp_ms(&mut self.rng, 45.0 * SEC as f64);
            self.schedule(at, Action::Clicked(msg));
        }
        if self.rng.random_bool(UNSUBSCRIBE_PER_OPEN) {
            let at = t + self.rng.random_range(10 * SEC..5 * MIN);
            self.schedule(at, Action::Unsubscribed(msg));
        }
    }

    fn clicked(&mut self, t: Millis, msg: Msg, out: &mut Vec<Event>) {
        if self.suppressed(msg.customer, t) {
            return;
        }
        let landing = product(&mut self.rng);
        let url = format!(
            "https://{}{}?utm_source=engaged&utm_medium=email&utm_campaign={}",
            self.sites[0],
            landing.path(),
            self.campaigns[msg.campaign as usize]
        );
        self.email(t, msg, EmailEventType::Clicked, Some(url), out);
        if self.rng.random_bool(CLICK_SESSION_SHARE) {
            let at = t + self.rng.random_range(2 * SEC..20 * SEC);
            let views = self.browse_views(0.35);
            let visitor = Visitor::Customer(msg.customer);
            let session = Session::new(visitor, 0, Channel::Email, landing, Plan::Browse, views);
            self.start_session(at, session);
        }
        if self.rng.random_bool(CLICK_ORDER_SHARE) {
            let delay = (20 * MIN + exp_ms(&mut self.rng, 1.5 * DAY as f64)).min(6 * DAY);
            self.schedule(
                t + delay,
                Action::Shop {
                    customer: msg.customer,
                    campaign: Some(msg.campaign),
                    natural: false,
                },
            );
        }
    }

    fn unsubscribed(&mut self, t: Millis, msg: Msg, kind: EmailEventType, out: &mut Vec<Event>) {
        if self.suppressed(msg.customer, t) {
            return;
        }
        self.email(t, msg, kind, None, out);
        self.customers[msg.customer as usize].unsubscribed = true;
    }

    // ---------------------------------------------------------- purchases

    fn shop(&mut self, t: Millis, customer: u32, campaign: Option<u32>, natural: bool) {
        // A churned cohort member's purchase process ends here for good.
        if self.suppressed(customer, t) {
            return;
        }
        let channel = if campaign.is_some() {
            Channel::Email
        } else {
            Channel::ALL[pick(&mut self.rng, &Channel::SHOP_WEIGHTS)]
        };
        let browse = 1 + geometric(&mut self.rng, 0.4, 5);
        let landing = if campaign.is_some() || self.rng.random_bool(0.5) {
            product(&mut self.rng)
        } else {
            Page::Home
        };
        let plan = Plan::Shop { campaign, natural };
        let visitor = Visitor::Customer(customer);
        let session = Session::new(visitor, 0, channel, landing, plan, browse + 2);
        self.start_session(t, session);
    }

    fn purchase(
        &mut self,
        t: Millis,
        customer: u32,
        kind: PurchaseType,
        order_id: String,
    ) -> Purchase {
        Purchase {
            event_id: self.event_id(),
            event_time: t,
            customer_id: self.customers[customer as usize].id.clone(),
            order_id,
            kind,
            amount_minor: 0,
            currency: self.currency.clone(),
            cost_minor: None,
            items: 1,
            campaign_id: None,
        }
    }

    fn order(
        &mut self,
        t: Millis,
        customer: u32,
        campaign: Option<u32>,
        natural: bool,
        out: &mut Vec<Event>,
    ) {
        if self.suppressed(customer, t) {
            return;
        }
        self.next_order += 1;
        let order = self.next_order;
        let items = 1 + pick(&mut self.rng, &[45, 25, 15, 10, 5]) as i32;
        let mean_spend = self.customers[customer as usize].mean_spend;
        let noise = (0.45 * normal(&mut self.rng)).exp();
        let amount = (mean_spend * noise * (1.0 + 0.25 * f64::from(items - 1))).round() as i64;
        let amount = amount.clamp(500, 50_000);
        let cost = if self.rng.random_bool(COST_PRESENT_SHARE) {
            Some((amount as f64 * self.rng.random_range(0.40..0.70)).round() as i64)
        } else {
            None
        };
        let p = Purchase {
            amount_minor: amount,
            cost_minor: cost,
            items,
            campaign_id: campaign.map(|c| self.campaigns[c as usize].clone()),
            ..self.purchase(t, customer, PurchaseType::Order, format!("o-{order:07}"))
        };
        out.push(Event::Purchase(p));
        if self.ces_rng.random_bool(self.ces_per_order) {
            let at = t + self.ces_rng.random_range(MIN..10 * MIN);
            self.schedule(
                at,
                Action::Survey {
                    customer: Some(customer),
                    topic: SurveyTopic::CheckoutCes,
                },
            );
        }

        if self.rng.random_bool(REFUND_SHARE) {
            let at = t + self.rng.random_range(2 * DAY..21 * DAY);
            let (amount, items) = if self.rng.random_bool(0.65) {
                (amount, items)
            } else {
                let part = self.rng.random_range(0.2..0.8);
                ((amount as f64 * part).round() as i64, 1)
            };
            self.schedule(
                at,
                Action::Refund {
                    customer,
                    order,
                    amount,
                    items,
                },
            );
        }
        if self.rng.random_bool(CSAT_PER_ORDER) {
            let delay = if self.rng.random_bool(0.4) {
                self.rng.random_range(30 * MIN..6 * HOUR)
            } else {
                self.rng.random_range(6 * HOUR..3 * DAY)
            };
            let who = (!self.rng.random_bool(ANONYMOUS_CSAT_SHARE)).then_some(customer);
            self.schedule(
                t + delay,
                Action::Survey {
                    customer: who,
                    topic: SurveyTopic::PostOrderCsat,
                },
            );
            if self.rng.random_bool(NPS_PER_CSAT) {
                let at = t + delay + self.rng.random_range(10 * SEC..90 * SEC);
                self.schedule(
                    at,
                    Action::Survey {
                        customer: who,
                        topic: SurveyTopic::PostOrderNps,
                    },
                );
            }
        }
        if self.customers[customer as usize].subscription.is_none()
            && self.rng.random_bool(NEW_SUBSCRIPTION_SHARE)
        {
            self.next_subscription += 1;
            let sub = Subscription {
                id: self.next_subscription,
                price: SUBSCRIPTION_PRICES[self.rng.random_range(0..SUBSCRIPTION_PRICES.len())],
            };
            self.customers[customer as usize].subscription = Some(sub);
            self.schedule(
                add_month(t),
                Action::Renewal {
                    customer,
                    subscription: sub.id,
                    n: 1,
                },
            );
        }
        if natural {
            let cust = &self.customers[customer as usize];
            let (dropout, rate) = (cust.dropout, cust.orders_per_day);
            // BG/NBD: after each purchase the customer becomes inactive with
            // probability p, else buys again after an Exp(λ) wait.
            if !self.rng.random_bool(dropout) {
                let wait = exp_ms(&mut self.rng, DAY as f64 / rate).max(HOUR);
                self.schedule(
                    t.saturating_add(wait),
                    Action::Shop {
                        customer,
                        campaign: None,
                        natural: true,
                    },
                );
            }
        }
    }

    fn refund(
        &mut self,
        t: Millis,
        customer: u32,
        order: u64,
        amount: i64,
        items: i32,
        out: &mut Vec<Event>,
    ) {
        if self.suppressed(customer, t) {
            return;
        }
        let p = Purchase {
            amount_minor: amount,
            items,
            ..self.purchase(t, customer, PurchaseType::Refund, format!("o-{order:07}"))
        };
        out.push(Event::Purchase(p));
        if self.rng.random_bool(CES_PER_REFUND) {
            let at = t + self.rng.random_range(HOUR..2 * DAY);
            self.schedule(
                at,
                Action::Survey {
                    customer: Some(customer),
                    topic: SurveyTopic::RefundCes,
                },
            );
        }
    }

    fn renewal(
        &mut self,
        t: Millis,
        customer: u32,
        subscription: u64,
        n: u32,
        out: &mut Vec<Event>,
    ) {
        let Some(sub) = self.customers[customer as usize].subscription else {
            return;
        };
        if sub.id != subscription || self.suppressed(customer, t) {
            return;
        }
        let p = Purchase {
            amount_minor: sub.price,
            cost_minor: Some(sub.price * 45 / 100),
            ..self.purchase(
                t,
                customer,
                PurchaseType::Renewal,
                format!("sub-{:05}-{n:03}", sub.id),
            )
        };
        out.push(Event::Purchase(p));
        let next = add_month(t);
        if self.rng.random_bool(SUBSCRIPTION_CANCEL_SHARE) {
            let at = self.rng.random_range(t + DAY..next - DAY);
            self.schedule(
                at,
                Action::Cancellation {
                    customer,
                    subscription,
                },
            );
        } else {
            self.schedule(
                next,
                Action::Renewal {
                    customer,
                    subscription,
                    n: n + 1,
                },
            );
        }
    }

    fn cancellation(&mut self, t: Millis, customer: u32, subscription: u64, out: &mut Vec<Event>) {
        let Some(sub) = self.customers[customer as usize].subscription else {
            return;
        };
        if sub.id != subscription || self.suppressed(customer, t) {
            return;
        }
        let p = Purchase {
            amount_minor: sub.price,
            ..self.purchase(
                t,
                customer,
                PurchaseType::Cancellation,
                format!("sub-{:05}", sub.id),
            )
        };
        out.push(Event::Purchase(p));
        self.customers[customer as usize].subscription = None;
    }

    /// A regular's ORDER, and the next one about `every` later, until `silent_from`.
    fn regular_order(&mut self, t: Millis, regular: u32, out: &mut Vec<Event>) {
        let Some(r) = self.regulars else {
            return;
        };
        if t >= r.silent_from {
            return;
        }
        self.next_order += 1;
        let noise = self.regulars_rng.random_range(0.8..1.25);
        let amount = (self.regular_spend[regular as usize] as f64 * noise).round() as i64;
        out.push(Event::Purchase(Purchase {
            event_id: self.event_id(),
            event_time: t,
            customer_id: format!("r-{regular:06}"),
            order_id: format!("o-{:07}", self.next_order),
            kind: PurchaseType::Order,
            amount_minor: amount,
            currency: self.currency.clone(),
            cost_minor: Some(amount / 2),
            items: 1,
            campaign_id: None,
        }));
        let gap = (r.every as f64 * self.regulars_rng.random_range(0.9..1.1)) as Millis;
        self.schedule(t + gap.max(1), Action::RegularOrder { regular });
    }

    // ------------------------------------------------------------ surveys

    fn survey(
        &mut self,
        t: Millis,
        customer: Option<u32>,
        topic: SurveyTopic,
        out: &mut Vec<Event>,
    ) {
        if customer.is_some_and(|c| self.suppressed(c, t)) {
            return;
        }
        let unhappy = customer.is_some_and(|c| self.customers[c as usize].cohort);
        let (survey_id, kind) = topic.id_and_kind();
        let weights: &[u32] = match (kind, unhappy) {
            (SurveyKind::Csat, false) => &[4, 4, 8, 30, 54],
            (SurveyKind::Csat, true) => &[12, 14, 20, 30, 24],
            (SurveyKind::Nps, false) => &[3, 1, 2, 2, 3, 6, 5, 12, 20, 22, 24],
            (SurveyKind::Nps, true) => &[8, 4, 6, 7, 8, 12, 10, 14, 13, 10, 8],
            (SurveyKind::Ces, false) => &[3, 4, 7, 12, 20, 30, 24],
            (SurveyKind::Ces, true) => &[10, 12, 16, 18, 18, 16, 10],
        };
        let checkout = topic == SurveyTopic::CheckoutCes;
        let rng = if checkout {
            &mut self.ces_rng
        } else {
            &mut self.rng
        };
        let range = kind.score_range();
        let score = *range.start() + pick(rng, weights) as i32;
        let comment = if rng.random_bool(COMMENT_SHARE) {
            let position =
                f64::from(score - *range.start()) / f64::from(*range.end() - *range.start());
            let pool: &[&str] = if position >= 0.75 {
                &POSITIVE_COMMENTS
            } else if position >= 0.5 {
                &NEUTRAL_COMMENTS
            } else {
                &NEGATIVE_COMMENTS
            };
            Some(pool[rng.random_range(0..pool.len())].to_string())
        } else {
            None
        };
        let event_id = if checkout {
            self.next_ces += 1;
            format!("{}ces{}", self.event_prefix, self.next_ces)
        } else {
            self.event_id()
        };
        out.push(Event::Survey(SurveyResponse {
            event_id,
            event_time: t,
            customer_id: customer.map(|c| self.customers[c as usize].id.clone()),
            survey_id: survey_id.to_string(),
            kind,
            score,
            comment,
        }));
    }
}

// ---------------------------------------------------------------- sampling

/// Day/night factor of the visit rate, mean 1 over a day, in
/// `[2 - DIURNAL_PEAK, DIURNAL_PEAK]`, peak at `DIURNAL_PEAK_HOUR` UTC.
fn diurnal(t: Millis) -> f64 {
    let hour = t.rem_euclid(DAY) as f64 / HOUR as f64;
    1.0 + DIURNAL_AMPLITUDE * (TAU * (hour - DIURNAL_PEAK_HOUR) / 24.0).cos()
}

/// One month later on the calendar (same day of month where it exists).
fn add_month(t: Millis) -> Millis {
    DateTime::from_timestamp_millis(t)
        .and_then(|d| d.checked_add_months(Months::new(1)))
        .map_or(t + 30 * DAY, |d| d.timestamp_millis())
}

/// Index drawn with the given (non-zero total) weights.
fn pick(rng: &mut StdRng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut r = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if r < w {
            return i;
        }
        r -= w;
    }
    weights.len() - 1
}

/// Failures before the first success with probability `p`, at most `max`.
fn geometric(rng: &mut StdRng, p: f64, max: u8) -> u8 {
    let mut k = 0;
    while k < max && !rng.random_bool(p) {
        k += 1;
    }
    k
}

/// Exponentially distributed duration with the given mean, in ms.
fn exp_ms(rng: &mut StdRng, mean: f64) -> Millis {
    let u = 1.0 - rng.random::<f64>(); // (0, 1]
    (-u.ln() * mean) as Millis
}

/// Standard normal (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
}

/// Gamma(shape, scale) by Marsaglia & Tsang (2000).
fn gamma(rng: &mut StdRng, shape: f64, scale: f64) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.random::<f64>();
        return gamma(rng, shape + 1.0, scale) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = 1.0 - rng.random::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v * scale;
        }
    }
}

/// Beta(a, b) from two Gamma draws.
fn beta(rng: &mut StdRng, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a, 1.0);
    let y = gamma(rng, b, 1.0);
    (x / (x + y)).clamp(0.0, 1.0)
}

fn product(rng: &mut StdRng) -> Page {
    // Popularity skew: low numbers are the best sellers.
    let u = rng.random::<f64>();
    Page::Product((N_PRODUCTS * u * u) as u16)
}

fn category(rng: &mut StdRng) -> Page {
    Page::Category(rng.random_range(0..CATEGORIES.len()) as u8)
}

fn blog(rng: &mut StdRng) -> Page {
    Page::Blog(rng.random_range(0..BLOG_POSTS.len()) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap, HashSet};

    fn generate(cfg: GeneratorConfig, hours: i64) -> Vec<Event> {
        let start = cfg.start;
        Generator::new(cfg).advance_to(start + hours * HOUR)
    }

    fn is_activity(e: &Event) -> bool {
        match e {
            Event::Email(m) => !matches!(
                m.kind,
                EmailEventType::Sent | EmailEventType::Delivered | EmailEventType::Bounced
            ),
            _ => true,
        }
    }

    fn customer_of(e: &Event) -> Option<&str> {
        match e {
            Event::PageView(v) => v.customer_id.as_deref(),
            Event::Email(m) => Some(&m.customer_id),
            Event::Purchase(p) => Some(&p.customer_id),
            Event::Survey(s) => s.customer_id.as_deref(),
        }
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a = generate(GeneratorConfig::default(), 24);
        let b = generate(GeneratorConfig::default(), 24);
        assert!(a.len() > 1_000, "{} events", a.len());
        assert_eq!(a, b);
        let c = generate(
            GeneratorConfig {
                seed: 7,
                ..GeneratorConfig::default()
            },
            24,
        );
        assert_ne!(a, c);
    }

    #[test]
    fn chunked_output_equals_single_call_and_stays_in_bounds() {
        let cfg = GeneratorConfig::default();
        let start = cfg.start;
        let end = start + 2 * DAY;
        let whole = Generator::new(cfg.clone()).advance_to(end);
        assert!(
            whole
                .windows(2)
                .all(|w| w[0].event_time() <= w[1].event_time())
        );
        assert!(whole.iter().all(|e| (start..end).contains(&e.event_time())));

        let mut plan_rng = StdRng::seed_from_u64(99);
        let plans: Vec<Vec<Millis>> = vec![
            (1..=48).map(|h| start + h * HOUR).collect(),
            (1..=2 * 24 * 60).map(|m| start + m * MIN).collect(),
            {
                // Irregular steps, including empty and repeated ones.
                let mut t = start;
                let mut v = Vec::new();
                while t < end {
                    t = (t + plan_rng.random_range(0..3 * HOUR)).min(end);
                    v.push(t);
                    if plan_rng.random_bool(0.1) {
                        v.push(t);
                    }
                }
                v
            },
        ];
        for plan in plans {
            let mut g = Generator::new(cfg.clone());
            let mut all = Vec::new();
            let mut prev = start;
            for until in plan {
                let chunk = g.advance_to(until);
                for e in &chunk {
                    assert!(
                        (prev..until).contains(&e.event_time()),
                        "{} not in [{prev}, {until})",
                        e.event_time()
                    );
                }
                assert!(
                    chunk
                        .windows(2)
                        .all(|w| w[0].event_time() <= w[1].event_time())
                );
                all.extend(chunk);
                prev = until;
            }
            assert_eq!(all, whole);
        }
    }

    #[test]
    fn every_event_validates_and_event_ids_are_unique() {
        let events = generate(GeneratorConfig::default(), 72);
        let mut ids = HashSet::new();
        let mut messages = HashSet::new();
        let mut orders = HashSet::new();
        for e in &events {
            e.validate().unwrap_or_else(|err| panic!("{err}: {e:?}"));
            assert!(ids.insert(e.event_id().to_string()), "dup {}", e.event_id());
            match e {
                Event::Email(m) if m.kind == EmailEventType::Sent => {
                    assert!(messages.insert(m.message_id.clone()));
                }
                Event::Purchase(p) if p.kind == PurchaseType::Order => {
                    assert!(orders.insert(p.order_id.clone()));
                    assert!((500..=50_000).contains(&p.amount_minor));
                    assert!((1..=5).contains(&p.items));
                    if let Some(c) = p.cost_minor {
                        assert!(
                            c * 10 >= p.amount_minor * 4 - 10 && c * 10 <= p.amount_minor * 7 + 10
                        );
                    }
                    assert_eq!(p.currency, "EUR");
                }
                _ => {}
            }
            assert!(!partition_key(e).is_empty());
        }
    }

    #[test]
    fn every_family_appears_within_six_hours() {
        let events = generate(GeneratorConfig::default(), 6);
        let kinds: BTreeSet<_> = events.iter().map(Event::kind).collect();
        assert_eq!(kinds.len(), 4, "{kinds:?}");
        let topics: BTreeSet<_> = events.iter().map(topic_of).collect();
        assert_eq!(
            topics,
            BTreeSet::from(["emails", "pageviews", "purchases", "surveys"])
        );
    }

    #[test]
    fn checkout_ces_answers_come_within_hours_and_move_nothing_else() {
        let events = generate(GeneratorConfig::default(), 6);
        let mut orders: HashMap<&str, Vec<Millis>> = HashMap::new();
        let mut answers = 0;
        for e in &events {
            match e {
                Event::Purchase(p) if p.kind == PurchaseType::Order => {
                    orders.entry(&p.customer_id).or_default().push(p.event_time);
                }
                Event::Survey(s) if s.survey_id == "ces-checkout" => {
                    e.validate().unwrap_or_else(|err| panic!("{err}: {e:?}"));
                    assert_eq!(s.kind, SurveyKind::Ces);
                    assert!((1..=7).contains(&s.score), "{s:?}");
                    let c = s.customer_id.as_deref().expect("a known customer");
                    assert!(
                        orders.get(c).is_some_and(|o| o
                            .iter()
                            .any(|&t| (t + MIN..t + 10 * MIN).contains(&s.event_time))),
                        "no ORDER 1..10 minutes before {s:?}"
                    );
                    answers += 1;
                }
                _ => {}
            }
        }
        assert!(answers > 0, "no CES answer in the first 6 hours");

        // Without them, every other event (ids included) is the same.
        let spike = DEFAULT_START + 2 * DAY;
        let cfg = GeneratorConfig {
            churn_spike_at: Some(spike),
            regulars: Some(Regulars {
                customers: 50,
                every: 3 * HOUR,
                silent_from: spike,
            }),
            ..GeneratorConfig::default()
        };
        let until = cfg.start + 4 * DAY;
        let with = Generator::new(cfg.clone()).advance_to(until);
        let mut g = Generator::new(cfg);
        g.ces_per_order = 0.0;
        let without = g.advance_to(until);
        let checkout = |e: &Event| matches!(e, Event::Survey(s) if s.survey_id == "ces-checkout");
        assert!(with.iter().filter(|e| checkout(e)).count() > 10);
        assert!(!without.iter().any(checkout));
        let rest: Vec<Event> = with.into_iter().filter(|e| !checkout(e)).collect();
        assert_eq!(rest, without);
    }

    #[test]
    fn every_type_and_shape_appears_within_eight_days() {
        let cfg = GeneratorConfig {
            customers: 20_000,
            visitors_per_hour: 100.0,
            ..GeneratorConfig::default()
        };
        let events = generate(cfg, 8 * 24);
        let mut email_kinds = HashSet::new();
        let mut purchase_kinds = HashSet::new();
        let mut survey_kinds = HashSet::new();
        let mut channels = HashSet::new();
        let mut campaigns = HashSet::new();
        let (mut anon_survey, mut anon_view, mut known_view, mut attributed) =
            (false, false, false, false);
        let mut comments = 0;
        for e in &events {
            match e {
                Event::PageView(v) => {
                    channels.insert(v.channel.clone());
                    anon_view |= v.customer_id.is_none();
                    known_view |= v.customer_id.is_some();
                }
                Event::Email(m) => {
                    email_kinds.insert(m.kind);
                    campaigns.insert(m.campaign_id.clone());
                    assert_eq!(m.url.is_some(), m.kind == EmailEventType::Clicked);
                }
                Event::Purchase(p) => {
                    purchase_kinds.insert(p.kind);
                    attributed |= p.campaign_id.is_some();
                }
                Event::Survey(s) => {
                    survey_kinds.insert(s.kind);
                    anon_survey |= s.customer_id.is_none();
                    comments += usize::from(s.comment.is_some());
                }
            }
        }
        assert_eq!(email_kinds.len(), 7, "{email_kinds:?}");
        assert_eq!(purchase_kinds.len(), 4, "{purchase_kinds:?}");
        assert_eq!(survey_kinds.len(), 3, "{survey_kinds:?}");
        assert_eq!(channels.len(), 6, "{channels:?}");
        assert!(channels.contains(&None) && channels.contains(&Some("email".to_string())));
        assert!(anon_survey && anon_view && known_view && attributed && comments > 0);
        for c in [
            "wk-2026-47-newsletter",
            "wk-2026-48-newsletter",
            "wk-2026-47-promo",
            "trg-cart-abandon",
        ] {
            assert!(campaigns.contains(c), "{c} missing from {campaigns:?}");
        }
    }

    #[test]
    fn email_and_order_lifecycles_are_causal() {
        let events = generate(GeneratorConfig::default(), 10 * 24);
        let mut sent = HashSet::new();
        let mut delivered = HashSet::new();
        let mut opened = HashSet::new();
        let mut orders: HashMap<String, i64> = HashMap::new();
        let mut counts: HashMap<EmailEventType, usize> = HashMap::new();
        let mut refunds = 0;
        for e in &events {
            match e {
                Event::Email(m) => {
                    *counts.entry(m.kind).or_default() += 1;
                    let id = m.message_id.clone();
                    match m.kind {
                        EmailEventType::Sent => assert!(sent.insert(id)),
                        EmailEventType::Delivered => {
                            assert!(sent.contains(&id));
                            assert!(delivered.insert(id));
                        }
                        EmailEventType::Bounced => {
                            assert!(sent.contains(&id) && !delivered.contains(&id));
                        }
                        EmailEventType::Opened => {
                            assert!(delivered.contains(&id));
                            opened.insert(id);
                        }
                        EmailEventType::Clicked | EmailEventType::Unsubscribed => {
                            assert!(opened.contains(&id), "{m:?}");
                        }
                        EmailEventType::Complained => assert!(delivered.contains(&id)),
                    }
                }
                Event::Purchase(p) if p.kind == PurchaseType::Order => {
                    orders.insert(p.order_id.clone(), p.amount_minor);
                }
                Event::Purchase(p) if p.kind == PurchaseType::Refund => {
                    let amount = orders.get(&p.order_id).expect("refund of a known order");
                    assert!(p.amount_minor <= *amount);
                    refunds += 1;
                }
                _ => {}
            }
        }
        assert!(refunds > 0);
        let d = counts[&EmailEventType::Delivered] as f64;
        let bounce = counts[&EmailEventType::Bounced] as f64 / counts[&EmailEventType::Sent] as f64;
        let open = opened.len() as f64 / d;
        assert!((0.01..0.06).contains(&bounce), "bounce {bounce}");
        assert!((0.15..0.35).contains(&open), "open rate {open}");
        assert!(
            counts[&EmailEventType::Opened] > opened.len(),
            "re-opens exist"
        );
    }

    #[test]
    fn bounce_share_is_realistic_and_long_gaps_split_sessions() {
        let events = generate(GeneratorConfig::default(), 24);
        let mut by_visitor: HashMap<&str, Vec<Millis>> = HashMap::new();
        for e in &events {
            if let Event::PageView(v) = e {
                by_visitor
                    .entry(&v.visitor_id)
                    .or_default()
                    .push(v.event_time);
            }
        }
        let (mut sessions, mut bounced, mut near_below, mut near_above) = (0u32, 0u32, 0, 0);
        for times in by_visitor.values() {
            let mut len = 1;
            for w in times.windows(2) {
                let gap = w[1] - w[0];
                if (25 * MIN..SESSION_TIMEOUT).contains(&gap) {
                    near_below += 1;
                }
                if (SESSION_TIMEOUT..35 * MIN).contains(&gap) {
                    near_above += 1;
                }
                if gap >= SESSION_TIMEOUT {
                    sessions += 1;
                    bounced += u32::from(len == 1);
                    len = 1;
                } else {
                    len += 1;
                }
            }
            sessions += 1;
            bounced += u32::from(len == 1);
        }
        let share = f64::from(bounced) / f64::from(sessions);
        assert!(sessions > 5_000, "{sessions} sessions");
        assert!((0.25..=0.60).contains(&share), "bounce share {share}");
        assert!(near_below > 0 && near_above > 0);
    }

    #[test]
    fn churn_cohort_goes_silent_after_the_spike() {
        let spike = DEFAULT_START + 2 * DAY;
        let cfg = GeneratorConfig {
            churn_spike_at: Some(spike),
            ..GeneratorConfig::default()
        };
        let mut g = Generator::new(cfg.clone());
        let events = g.advance_to(cfg.start + 5 * DAY);
        let cohort: HashSet<&str> = g
            .customers
            .iter()
            .filter(|c| c.cohort)
            .map(|c| c.id.as_str())
            .collect();
        let share = cohort.len() as f64 / f64::from(cfg.customers);
        assert!((0.15..=0.25).contains(&share), "cohort share {share}");
        let (mut cohort_before, mut others_after, mut cohort_mail_after) = (0, 0, 0);
        for e in &events {
            let Some(c) = customer_of(e) else { continue };
            let in_cohort = cohort.contains(c);
            let after = e.event_time() >= spike;
            if in_cohort && after {
                assert!(!is_activity(e), "cohort activity after the spike: {e:?}");
                cohort_mail_after += 1;
            }
            cohort_before += usize::from(in_cohort && !after && is_activity(e));
            others_after += usize::from(!in_cohort && after && is_activity(e));
        }
        assert!(cohort_before > 100 && others_after > 100);
        assert!(cohort_mail_after > 0, "the shop keeps mailing the cohort");

        // Before the spike, nothing differs from a run without one.
        let plain = generate(GeneratorConfig::default(), 5 * 24);
        let before = |v: &[Event]| -> Vec<Event> {
            v.iter()
                .filter(|e| e.event_time() < spike)
                .cloned()
                .collect()
        };
        assert_eq!(before(&events), before(&plain));
    }

    #[test]
    fn regulars_order_on_their_rhythm_until_silent_and_change_nobody_else() {
        let silent = DEFAULT_START + 3 * DAY;
        let regulars = Regulars {
            customers: 50,
            every: 3 * HOUR,
            silent_from: silent,
        };
        let with = generate(
            GeneratorConfig {
                regulars: Some(regulars),
                ..GeneratorConfig::default()
            },
            5 * 24,
        );
        let mut orders: HashMap<&str, Vec<Millis>> = HashMap::new();
        for e in &with {
            e.validate().unwrap_or_else(|err| panic!("{err}: {e:?}"));
            if let Event::Purchase(p) = e
                && p.customer_id.starts_with("r-")
            {
                assert_eq!(p.kind, PurchaseType::Order);
                assert!(p.event_time < silent, "{p:?}");
                orders.entry(&p.customer_id).or_default().push(p.event_time);
            }
            if let Some(c) = customer_of(e) {
                assert!(
                    !c.starts_with("r-") || matches!(e, Event::Purchase(_)),
                    "regulars only order: {e:?}"
                );
            }
        }
        assert_eq!(orders.len(), 50);
        for times in orders.values() {
            assert!(times.len() >= 3 * 8 - 2, "{} orders", times.len());
            for w in times.windows(2) {
                let gap = w[1] - w[0];
                assert!(
                    (27 * HOUR / 10..=33 * HOUR / 10).contains(&gap),
                    "gap {gap}"
                );
            }
            assert!(*times.last().unwrap() >= silent - 33 * HOUR / 10);
        }
        // Everyone else does exactly the same, ids aside (numbered in order).
        let others = |v: &[Event]| -> Vec<Event> {
            v.iter()
                .filter(|e| !customer_of(e).is_some_and(|c| c.starts_with("r-")))
                .map(|e| match e.clone() {
                    Event::PageView(v) => Event::PageView(PageView {
                        event_id: String::new(),
                        ..v
                    }),
                    Event::Email(m) => Event::Email(EmailEvent {
                        event_id: String::new(),
                        ..m
                    }),
                    Event::Purchase(p) => Event::Purchase(Purchase {
                        event_id: String::new(),
                        order_id: String::new(),
                        ..p
                    }),
                    Event::Survey(s) => Event::Survey(SurveyResponse {
                        event_id: String::new(),
                        ..s
                    }),
                })
                .collect()
        };
        let without = generate(GeneratorConfig::default(), 5 * 24);
        assert_eq!(others(&with), others(&without));
    }

    #[test]
    fn degenerate_configs_still_emit_valid_events() {
        let cfg = GeneratorConfig {
            customers: 0,
            sites: vec![String::new()],
            ..GeneratorConfig::default()
        };
        let events = generate(cfg, 24);
        assert!(!events.is_empty());
        assert!(events.iter().all(|e| e.validate().is_ok()));
        assert!(events.iter().all(|e| matches!(e, Event::PageView(v)
            if v.customer_id.is_none() && v.site.ends_with(".example"))
            || matches!(e, Event::Survey(s) if s.customer_id.is_none())));
        let quiet = GeneratorConfig {
            visitors_per_hour: 0.0,
            customers: 50,
            ..GeneratorConfig::default()
        };
        let events = generate(quiet, 24 * 10);
        assert!(events.iter().all(|e| e.validate().is_ok()));
        assert!(events.iter().any(|e| matches!(e, Event::Email(_))));
        // Page views come only from shopping and email-click sessions.
        assert!(
            events
                .iter()
                .all(|e| customer_of(e).is_some() || matches!(e, Event::Survey(_)))
        );
    }

    #[test]
    fn partition_keys_and_topics() {
        let events = generate(GeneratorConfig::default(), 6);
        for e in &events {
            let key = partition_key(e);
            match e {
                Event::PageView(v) => {
                    assert_eq!(key, v.customer_id.as_deref().unwrap_or(&v.visitor_id));
                    assert_eq!(topic_of(e), "pageviews");
                }
                Event::Survey(s) if s.customer_id.is_none() => assert_eq!(key, s.event_id),
                _ => assert_eq!(Some(key), customer_of(e)),
            }
        }
    }
}
