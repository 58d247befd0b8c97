//! Survey answers: CSAT, NPS and CES after orders, sessions and refunds.

use super::*;

impl Generator {
    pub(super) fn survey(
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
