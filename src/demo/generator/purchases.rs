//! Purchases: shopping sessions, orders, refunds, subscription renewals and cancellations, regulars.

use super::*;

impl Generator {
    pub(super) fn shop(&mut self, t: Millis, customer: u32, campaign: Option<u32>, natural: bool) {
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

    pub(super) fn purchase(
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

    pub(super) fn order(
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

    pub(super) fn refund(
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

    pub(super) fn renewal(
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

    pub(super) fn cancellation(
        &mut self,
        t: Millis,
        customer: u32,
        subscription: u64,
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
    pub(super) fn regular_order(&mut self, t: Millis, regular: u32, out: &mut Vec<Event>) {
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
}
