//! The interface every metric family implements, and the registry of families the engine drives.
//!
//! A task's state is its inputs' clocks, its customer ids and one value of each
//! family. The engine never names a family for the record path and the
//! lifecycle: it hands every accepted event to every family
//! ([`Family::on_event`]), tells them when the task's closing watermark moves
//! ([`Family::on_watermark`]), lets each add its part of a window's aggregates
//! ([`Family::collect`]), drop what no window can show again ([`Family::evict`])
//! and account for its memory ([`Family::account`]), much as Arroyo drives its
//! operators (`process_batch`, `handle_watermark`, `handle_checkpoint`).
//! Checkpoints go through serde and [`Merge`] (bases and deltas).
//!
//! Adding a family: its folder or file under `metrics/`, an `impl Family`, a
//! field in [`Families`] (the order of the fields is the saved layout: append,
//! and bump the state format) and its counts in [`WindowAggregates`], which the
//! snapshot reads.

use std::collections::HashMap;
use std::sync::Arc;

use super::churn_risk::RiskState;
use super::commerce::{CommerceCounts, CommerceState};
use super::customers::{CustomerCounts, CustomerState};
use super::email::{EmailCounts, EmailState};
use super::survey::{SurveyCounts, SurveyState};
use super::web::{WebCounts, WebState};
use super::{CustomerId, Dim};
use crate::checkpoint::delta::Merge;
use crate::event::{Event, Millis};
use crate::state::memory::StateSize;
use crate::window::WindowSpec;

/// One metric family's state in a task.
pub(crate) trait Family {
    /// An accepted event; every family sees every event and takes what it
    /// counts. `customer` is the number of the event's customer when the event
    /// is customer activity (SPEC §3 Customers) or a Purchase.
    fn on_event(&mut self, event: &Event, customer: Option<CustomerId>);

    /// The task's closing watermark moved to `w` (no accepted event is older):
    /// close what is due (sessions, churn runs) and forget what no event can change.
    fn on_watermark(&mut self, _w: Millis) {}

    /// Adds this task's part of window `idx` over `[start, end)` to `into`.
    fn collect(&mut self, idx: usize, start: Millis, end: Millis, into: &mut WindowAggregates);

    /// Drops what window `idx` cannot show again once it reads `[start, end)`;
    /// `lower_bound` is the task's closing watermark.
    fn evict(&mut self, idx: usize, start: Millis, end: Millis, lower_bound: Option<Millis>);

    /// Adds this family's entries to the memory accounting.
    fn account(&self, size: &mut StateSize);

    /// Rough entry count, for the state-size gauge.
    fn size(&self) -> usize;

    /// Rebuilds what is derived from the saved state, after a restore.
    fn restored(&mut self) {}

    /// Whether the family holds any state for customer `c`.
    fn holds(&self, _c: CustomerId) -> bool {
        false
    }

    /// Forgets customer `c`'s lifetime state (`state_ttl`).
    fn forget(&mut self, _c: CustomerId) {}
}

/// Window aggregates of the whole instance for one window: each family adds its part.
#[derive(Debug, Clone, Default)]
pub(crate) struct WindowAggregates {
    /// Web, per dimension (`all`, sites, channels).
    pub web: HashMap<Dim, WebCounts>,
    pub email: EmailCounts,
    pub email_by_campaign: HashMap<Arc<str>, EmailCounts>,
    pub commerce: CommerceCounts,
    pub purchasing_customers: i64,
    pub survey: SurveyCounts,
    pub customers: CustomerCounts,
    /// Customers whose churn risk crossed `risk_threshold` upward in the window.
    pub risk_crossings: i64,
}

/// Every family of a task: the registry. The field order is the saved layout.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Families {
    pub web: WebState,
    pub email: EmailState,
    pub commerce: CommerceState,
    pub survey: SurveyState,
    pub customers: CustomerState,
    pub risk: RiskState,
}

/// The settings the families are built from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FamilyConfig<'a> {
    pub windows: &'a [WindowSpec],
    pub session_timeout_ms: i64,
    pub email_dedup_ttl_ms: i64,
    pub attribution_window_ms: i64,
    pub churn_horizon_ms: i64,
    /// Values named per kind of label and task (`max_label_values`).
    pub max_label_values: usize,
}

impl Families {
    pub fn new(cfg: FamilyConfig<'_>) -> Families {
        let w = cfg.windows;
        Families {
            web: WebState::new(w, cfg.session_timeout_ms, cfg.max_label_values),
            email: EmailState::new(
                w,
                cfg.email_dedup_ttl_ms,
                cfg.attribution_window_ms,
                cfg.max_label_values,
            ),
            commerce: CommerceState::new(w),
            survey: SurveyState::new(w),
            customers: CustomerState::new(w, cfg.churn_horizon_ms),
            risk: RiskState::new(w),
        }
    }

    /// Every family, to drive uniformly.
    pub(crate) fn all_mut(&mut self) -> [&mut dyn Family; 6] {
        [
            &mut self.web,
            &mut self.email,
            &mut self.commerce,
            &mut self.survey,
            &mut self.customers,
            &mut self.risk,
        ]
    }

    /// Every family, to read uniformly.
    pub fn all(&self) -> [&dyn Family; 6] {
        [
            &self.web,
            &self.email,
            &self.commerce,
            &self.survey,
            &self.customers,
            &self.risk,
        ]
    }
}

impl Merge for Families {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        let Families {
            web,
            email,
            commerce,
            survey,
            customers,
            risk,
        } = newer;
        // Web and survey state is saved whole in every delta.
        (self.web, self.survey) = (web, survey);
        self.email.merge(email)?;
        self.commerce.merge(commerce)?;
        self.customers.merge(customers)?;
        self.risk.merge(risk)
    }

    fn saved(&mut self) {
        self.email.saved();
        self.commerce.saved();
        self.customers.saved();
        self.risk.saved();
    }
}
