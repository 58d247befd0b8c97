//! Survey metrics (SPEC §3 Survey): NPS, CSAT and CES with their response counts.
//!
//! Scores outside a kind's range never get here: they are rejected as `invalid`.

use crate::event::{Millis, SurveyKind, SurveyResponse};
use crate::window::WindowSpec;
use crate::window::rolled::{Absorb, RolledRings};

/// Additive survey aggregates of one bucket or window.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SurveyCounts {
    pub nps_responses: i64,
    /// Scores 9–10.
    pub nps_promoters: i64,
    /// Scores 0–6.
    pub nps_detractors: i64,
    pub csat_responses: i64,
    /// Scores 4–5.
    pub csat_satisfied: i64,
    pub ces_responses: i64,
    pub ces_sum: i64,
}

impl SurveyCounts {
    pub(crate) fn merge(&mut self, o: &SurveyCounts) {
        self.nps_responses += o.nps_responses;
        self.nps_promoters += o.nps_promoters;
        self.nps_detractors += o.nps_detractors;
        self.csat_responses += o.csat_responses;
        self.csat_satisfied += o.csat_satisfied;
        self.ces_responses += o.ces_responses;
        self.ces_sum += o.ces_sum;
    }

    /// `100 * (promoters - detractors) / responses`.
    pub fn nps(&self) -> Option<f64> {
        (self.nps_responses > 0).then(|| {
            100.0 * (self.nps_promoters - self.nps_detractors) as f64 / self.nps_responses as f64
        })
    }

    /// `100 * satisfied / responses`.
    pub fn csat(&self) -> Option<f64> {
        (self.csat_responses > 0)
            .then(|| 100.0 * self.csat_satisfied as f64 / self.csat_responses as f64)
    }

    /// Mean CES score.
    pub fn ces(&self) -> Option<f64> {
        (self.ces_responses > 0).then(|| self.ces_sum as f64 / self.ces_responses as f64)
    }
}

impl Absorb for SurveyCounts {
    fn absorb(&mut self, other: &SurveyCounts) {
        self.merge(other);
    }

    fn clear(&mut self) {
        *self = SurveyCounts::default();
    }
}

/// Survey state of one task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SurveyState {
    windows: RolledRings<SurveyCounts>,
}

impl SurveyState {
    pub fn new(specs: &[WindowSpec]) -> SurveyState {
        SurveyState {
            windows: RolledRings::new(specs),
        }
    }

    pub(crate) fn on_event(&mut self, s: &SurveyResponse) {
        self.windows.update(s.event_time, |c| match s.kind {
            SurveyKind::Nps => {
                c.nps_responses += 1;
                c.nps_promoters += i64::from(s.score >= 9);
                c.nps_detractors += i64::from(s.score <= 6);
            }
            SurveyKind::Csat => {
                c.csat_responses += 1;
                c.csat_satisfied += i64::from(s.score >= 4);
            }
            SurveyKind::Ces => {
                c.ces_responses += 1;
                c.ces_sum += i64::from(s.score);
            }
        });
    }

    pub fn collect(&self, idx: usize, start: Millis, end: Millis, into: &mut SurveyCounts) {
        for b in self.windows.range(idx, start, end) {
            into.merge(b);
        }
    }

    pub fn evict(&mut self, idx: usize, before: Millis) {
        self.windows.evict_before(idx, before);
    }

    pub fn buckets(&self) -> usize {
        self.windows.len()
    }

    pub fn size(&self) -> usize {
        self.windows.len()
    }
}

/// The survey family: SurveyResponse events.
impl super::family::Family for SurveyState {
    fn on_event(&mut self, event: &crate::event::Event, _customer: Option<super::CustomerId>) {
        if let crate::event::Event::Survey(s) = event {
            SurveyState::on_event(self, s);
        }
    }

    fn on_watermark(&mut self, w: Millis) {
        self.windows.roll_to(w);
    }

    fn collect(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
        into: &mut super::family::WindowAggregates,
    ) {
        SurveyState::collect(self, idx, start, end, &mut into.survey);
    }

    fn evict(&mut self, idx: usize, start: Millis, _end: Millis, _lower_bound: Option<Millis>) {
        SurveyState::evict(self, idx, start);
    }

    fn account(&self, size: &mut crate::state::memory::StateSize) {
        size.add(
            crate::state::memory::StateKind::WindowBucket,
            self.buckets(),
        );
    }

    fn size(&self) -> usize {
        SurveyState::size(self)
    }
}
