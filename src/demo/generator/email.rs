//! Email: weekly campaigns, triggered mails and each message's sends, opens, clicks and unsubscribes.

use super::*;

impl Generator {
    pub(super) fn campaign(&mut self, t: Millis, kind: CampaignKind) {
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

    pub(super) fn email(
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

    pub(super) fn send(&mut self, t: Millis, customer: u32, campaign: u32, out: &mut Vec<Event>) {
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
    pub(super) fn open_delay(&mut self) -> Millis {
        let d = match pick(&mut self.rng, &[60, 30, 10]) {
            0 => exp_ms(&mut self.rng, HOUR as f64),
            1 => exp_ms(&mut self.rng, 8.0 * HOUR as f64),
            _ => self.rng.random_range(DAY..4 * DAY),
        };
        d.max(5 * SEC)
    }

    pub(super) fn delivered(&mut self, t: Millis, msg: Msg, out: &mut Vec<Event>) {
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

    pub(super) fn opened(&mut self, t: Millis, msg: Msg, first: bool, out: &mut Vec<Event>) {
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

    pub(super) fn clicked(&mut self, t: Millis, msg: Msg, out: &mut Vec<Event>) {
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

    pub(super) fn unsubscribed(
        &mut self,
        t: Millis,
        msg: Msg,
        kind: EmailEventType,
        out: &mut Vec<Event>,
    ) {
        if self.suppressed(msg.customer, t) {
            return;
        }
        self.email(t, msg, kind, None, out);
        self.customers[msg.customer as usize].unsubscribed = true;
    }
}
