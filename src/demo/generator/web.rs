//! Web traffic: arrivals, sessions walking the page graph, their views and ends.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Channel {
    Organic,
    PaidSearch,
    Email,
    Social,
    Direct,
    Referral,
}

impl Channel {
    pub(super) const ALL: [Channel; 6] = [
        Channel::Organic,
        Channel::PaidSearch,
        Channel::Email,
        Channel::Social,
        Channel::Direct,
        Channel::Referral,
    ];
    /// Weights of random web sessions, in the order of `ALL`.
    pub(super) const VISIT_WEIGHTS: [u32; 6] = [34, 14, 4, 12, 26, 10];
    /// Weights of the sessions that end in an order.
    pub(super) const SHOP_WEIGHTS: [u32; 6] = [25, 15, 5, 5, 40, 10];

    pub(super) fn name(self) -> Option<&'static str> {
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
pub(super) enum Page {
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
    pub(super) fn path(self) -> String {
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

impl Generator {
    pub(super) fn arrival(&mut self, t: Millis) {
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
    pub(super) fn browse_views(&mut self, bounce: f64) -> u8 {
        if self.rng.random_bool(bounce) {
            1
        } else {
            2 + geometric(&mut self.rng, 0.28, 10)
        }
    }

    pub(super) fn start_session(&mut self, t: Millis, session: Session) {
        self.schedule(t, Action::View(Box::new(session)));
    }

    pub(super) fn landing(&mut self, site: u16, channel: Channel) -> Page {
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

    pub(super) fn channel_referrer(&mut self, channel: Channel) -> Option<String> {
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

    pub(super) fn view(&mut self, t: Millis, mut s: Box<Session>, out: &mut Vec<Event>) {
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

    pub(super) fn view_gap(&mut self) -> Millis {
        if self.rng.random_bool(LONG_GAP_SHARE) {
            self.rng.random_range(25 * MIN..35 * MIN)
        } else {
            // Log-uniform between 10 s and 5 min.
            let (lo, hi) = ((10.0f64).ln(), (300.0f64).ln());
            let secs = (lo + self.rng.random::<f64>() * (hi - lo)).exp();
            (secs * 1_000.0) as Millis
        }
    }

    pub(super) fn next_page(&mut self, s: &Session) -> Page {
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

    pub(super) fn end_session(&mut self, t: Millis, s: &Session) {
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
}
