//! The simulation's rates, shares and names: the numbers behind the model in the module docs.

use super::*;

/// Session timeout of SPEC §3, used to keep a customer's random visits apart.
pub(super) const SESSION_TIMEOUT: Millis = 30 * MIN;
/// Share of sessions started by known customers.
pub(super) const KNOWN_VISITOR_SHARE: f64 = 0.30;
/// Share of browsing sessions with exactly one view.
pub(super) const BOUNCE_SHARE: f64 = 0.40;
/// Peak of the day/night factor (its mean over a day is 1).
pub(super) const DIURNAL_PEAK: f64 = 1.6;
pub(super) const DIURNAL_AMPLITUDE: f64 = 0.6;
pub(super) const DIURNAL_PEAK_HOUR: f64 = 16.0;
/// Share of inter-view gaps that are long (25..35 minutes).
pub(super) const LONG_GAP_SHARE: f64 = 0.05;

pub(super) const BOUNCE_RATE_EMAIL: f64 = 0.03;
pub(super) const REOPEN_SHARE: f64 = 0.18;
pub(super) const CLICK_PER_OPEN: f64 = 0.14;
pub(super) const UNSUBSCRIBE_PER_OPEN: f64 = 0.012;
pub(super) const COMPLAINT_PER_DELIVERED: f64 = 0.0005;
pub(super) const CLICK_SESSION_SHARE: f64 = 0.65;
pub(super) const CLICK_ORDER_SHARE: f64 = 0.10;
pub(super) const CART_ABANDON_EMAIL_SHARE: f64 = 0.5;
pub(super) const PROMO_AUDIENCE_SHARE: f64 = 0.4;

pub(super) const REFUND_SHARE: f64 = 0.05;
pub(super) const COST_PRESENT_SHARE: f64 = 0.8;
pub(super) const NEW_SUBSCRIPTION_SHARE: f64 = 0.03;
pub(super) const INITIAL_SUBSCRIBER_SHARE: f64 = 0.12;
pub(super) const SUBSCRIPTION_CANCEL_SHARE: f64 = 0.05;
pub(super) const SUBSCRIPTION_PRICES: [i64; 3] = [999, 1_499, 2_499];

pub(super) const CSAT_PER_ORDER: f64 = 0.22;
pub(super) const NPS_PER_CSAT: f64 = 0.35;
pub(super) const ANONYMOUS_CSAT_SHARE: f64 = 0.05;
pub(super) const WEB_SURVEY_PER_SESSION: f64 = 0.01;
pub(super) const CES_PER_REFUND: f64 = 0.30;
pub(super) const CES_PER_ORDER: f64 = 0.10;
pub(super) const COMMENT_SHARE: f64 = 0.15;

pub(super) const CHURN_COHORT_SHARE: f64 = 0.20;

pub(super) const N_PRODUCTS: f64 = 200.0;
pub(super) const CATEGORIES: [&str; 8] = [
    "shoes",
    "jackets",
    "bags",
    "accessories",
    "kids",
    "outdoor",
    "sale",
    "new-in",
];
pub(super) const BLOG_POSTS: [&str; 12] = [
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
pub(super) const POSITIVE_COMMENTS: [&str; 5] = [
    "Fast delivery, great quality.",
    "Exactly as described, will order again.",
    "Friendly support, thanks!",
    "Love the packaging.",
    "Easy checkout.",
];
pub(super) const NEUTRAL_COMMENTS: [&str; 4] = [
    "OK, but delivery took a while.",
    "Product fine, website a bit slow.",
    "Sizes run small.",
    "Decent, prices could be lower.",
];
pub(super) const NEGATIVE_COMMENTS: [&str; 5] = [
    "Item arrived damaged.",
    "Still waiting for my refund.",
    "Too many emails.",
    "Checkout kept failing.",
    "Customer service never answered.",
];
