//! The state of one task (one partition number across the input topics): inputs, families, customer ids, and its saved form.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::dedup::Dedup;
use super::{CoreConfig, RejectReason, Rejection, StateError};
use crate::checkpoint::delta::{self, Form, Merge};
use crate::event::{EmailEventType, Event, Millis, PurchaseType};
use crate::metrics::family::{Families, FamilyConfig};
use crate::metrics::{CustomerId, CustomerIds};
use crate::time::PartitionClock;

/// Event clock and duplicate memory of one topic-partition.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct InputState {
    pub(super) clock: PartitionClock,
    pub(super) dedup: Dedup,
    /// Marked idle by the edge (no records for `idle_timeout`): it does not hold the task back.
    pub(super) idle: bool,
}

impl InputState {
    pub(super) fn new(cfg: &CoreConfig) -> InputState {
        InputState {
            clock: PartitionClock::new(),
            dedup: Dedup::new(cfg.dedup_window_ms),
            idle: false,
        }
    }
}

impl Merge for InputState {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        (self.clock, self.idle) = (newer.clock, newer.idle);
        self.dedup.merge(newer.dedup)
    }

    fn saved(&mut self) {
        self.dedup.saved();
    }
}

/// The state of one task (one partition number across the input topics).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct TaskState {
    pub(super) inputs: BTreeMap<Arc<str>, InputState>,
    /// The instance watermark this task's windows were last evicted at: no
    /// snapshot may be taken before it (restored with the state).
    pub(super) evicted_at: Option<Millis>,
    /// Every metric family, driven through [`Family`] (in this order on disk).
    pub(super) families: Families,
    pub(super) customer_ids: CustomerIds,
    /// The closing watermark the families last saw (`None` inside: not yet).
    #[serde(skip)]
    pub(super) closed_at: Option<Option<Millis>>,
    /// The lower bound of the last `state_ttl` pass ([`TaskState::expire_customers`]).
    #[serde(skip)]
    pub(super) expired_at: Option<Millis>,
}

/// The closing watermark's progress that makes [`TaskState::apply`] close what
/// is due (sessions, churn runs, forgotten orders): one pass per second of
/// event time instead of one per event (a dense stream moves it every event).
const CLOSE_TICK_MS: i64 = 1_000;

impl TaskState {
    pub(super) fn new(cfg: &CoreConfig) -> TaskState {
        TaskState {
            inputs: BTreeMap::new(),
            evicted_at: None,
            families: Families::new(FamilyConfig {
                windows: &cfg.windows,
                session_timeout_ms: cfg.session_timeout_ms,
                email_dedup_ttl_ms: cfg.email_dedup_ttl_ms,
                attribution_window_ms: cfg.attribution_window_ms,
                churn_horizon_ms: cfg.churn_horizon_ms,
                max_label_values: cfg.max_label_values,
            }),
            customer_ids: CustomerIds::default(),
            closed_at: None,
            expired_at: None,
        }
    }

    /// Rebuilds what is derived from the saved state, after a restore.
    pub(super) fn restored(&mut self) {
        self.families
            .all_mut()
            .into_iter()
            .for_each(|f| f.restored());
    }

    /// The task's closing watermark: no input of the task can still deliver an
    /// acceptable event older than this. It is the minimum over the task's
    /// inputs — every configured input topic (`CoreConfig::input_topics`), or the
    /// inputs seen so far when none are configured — where an input that has
    /// not accepted anything yet holds time back, unless the edge marked it idle
    /// (SPEC §2 `idle_timeout`). When every input is idle, the largest watermark.
    /// Sessions and churn runs close, and memory is forgotten, against it, so
    /// closing never depends on how inputs interleave.
    pub(super) fn closing_watermark(&self, cfg: &CoreConfig) -> Option<Millis> {
        let lateness = cfg.allowed_lateness_ms;
        // (min over the active inputs, whether one of them has no watermark yet,
        // whether any input is active, max over every input): one pass, no allocation.
        let mut fold = (None::<Millis>, false, false, None::<Millis>);
        let mut visit = |input: Option<&InputState>| {
            let wm = input.and_then(|i| i.clock.watermark(lateness));
            fold.3 = fold.3.max(wm);
            if input.is_some_and(|i| i.idle) {
                return;
            }
            fold.2 = true;
            match wm {
                Some(w) => fold.0 = Some(fold.0.map_or(w, |m: Millis| m.min(w))),
                None => fold.1 = true,
            }
        };
        if cfg.input_topics.is_empty() {
            self.inputs.values().for_each(|i| visit(Some(i)));
        } else {
            for t in &cfg.input_topics {
                visit(self.inputs.get(t.as_str()));
            }
        }
        let (min_active, unknown, any_active, max_all) = fold;
        match (any_active, unknown) {
            (false, _) => max_all,
            (true, true) => None,
            (true, false) => min_active,
        }
    }

    pub(super) fn apply(
        &mut self,
        cfg: &CoreConfig,
        topic: &Arc<str>,
        event: &Event,
    ) -> Result<(), Rejection> {
        let lateness = cfg.allowed_lateness_ms;
        // The same `Arc` as the key most of the time (the edges keep one per
        // topic): a pointer comparison per input instead of comparing names.
        let input = match self.inputs.iter_mut().find(|(k, _)| Arc::ptr_eq(k, topic)) {
            Some((_, input)) => input,
            None => match self.inputs.get_mut(&**topic) {
                Some(input) => input,
                None => {
                    // A new input can hold the closing watermark back.
                    self.closed_at = None;
                    self.inputs
                        .entry(topic.clone())
                        .or_insert_with(|| InputState::new(cfg))
                }
            },
        };
        let t = event.event_time();
        let watermark = input.clock.watermark(lateness);
        if input.clock.is_late(t, lateness) {
            let w = watermark.unwrap_or(Millis::MIN);
            return Err(Rejection::new(
                RejectReason::Late,
                format!("event_time {t} is older than the partition watermark {w}"),
            ));
        }
        if !input.dedup.accept(event.event_id(), t, watermark) {
            return Err(Rejection::new(
                RejectReason::Duplicate,
                format!("event_id {:?} was already accepted", event.event_id()),
            ));
        }
        input.clock.observe(t);
        let moved = input.clock.watermark(lateness);
        if let Some(w) = moved {
            input.dedup.sweep(w);
        }
        // The closing watermark is at most an active input's watermark: while this
        // one is less than a tick past the last close and the event after it,
        // nothing is due (see below), without computing the closing watermark.
        let quiet = !input.idle
            && matches!((self.closed_at, moved),
                (Some(Some(c)), Some(iw)) if iw - c < CLOSE_TICK_MS && t > iw);
        // The closing watermark is a function of the inputs' watermarks and idle
        // marks; every other change of those (`advance`, `set_idle`, a restore)
        // recomputes it, so while this input's watermark stays, it stays.
        let moved = moved != watermark;
        // The customer this event is activity of (SPEC §3 Customers), or the buyer.
        let name: Option<&str> = match event {
            Event::PageView(pv) => pv.customer_id.as_deref(),
            Event::Email(e) => match e.kind {
                EmailEventType::Sent | EmailEventType::Delivered | EmailEventType::Bounced => None,
                _ => Some(&e.customer_id),
            },
            Event::Purchase(p) => Some(&p.customer_id),
            Event::Survey(s) => s.customer_id.as_deref(),
        };
        let customer = name.map(|n| self.customer_ids.get(n));
        // `state_ttl`: an ORDER more than the TTL after the customer's last one
        // starts over (first ORDER, new history), whether or not the memory pass
        // ([`Engine::evict`]) has removed the old one yet.
        if let (Event::Purchase(p), Some(c), Some(ttl)) = (event, customer, cfg.state_ttl_ms)
            && p.kind == PurchaseType::Order
            && self
                .families
                .risk
                .last_order(c)
                .is_some_and(|l| t - l > ttl)
        {
            self.families
                .all_mut()
                .into_iter()
                .for_each(|f| f.forget(c));
        }
        for f in self.families.all_mut() {
            f.on_event(event, customer);
        }
        // What closes at a watermark `w` (sessions at `last + timeout`, churn at
        // `last + horizon`, orders before `w`) lies after every event at or after
        // `w`: unless the closing watermark moved or this event is not after it,
        // nothing new can be due. And what is due may wait: every family decides
        // by event times, not by what was closed (a view at `t >= w` cannot
        // extend a session that ends by `w`, an activity cannot extend a run that
        // ended, an order or message past its time is not matched), so closing
        // once per [`CLOSE_TICK_MS`] of progress gives the same numbers as
        // closing at every step, provided reads close what is due first
        // ([`TaskState::settle`]).
        if quiet {
            return Ok(());
        }
        let w = match self.closed_at {
            Some(w) if !moved => w,
            _ => self.closing_watermark(cfg),
        };
        let due = match (self.closed_at, w) {
            (Some(closed), _) if closed == w => w.is_some_and(|w| t <= w),
            (Some(Some(c)), Some(w)) => w - c >= CLOSE_TICK_MS || t <= w,
            _ => true,
        };
        if due {
            self.close_at(w);
        }
        Ok(())
    }

    /// Closes what is due at the closing watermark (what [`TaskState::apply`]
    /// let wait): before anything reads or saves the task's state.
    pub(super) fn settle(&mut self, cfg: &CoreConfig) {
        let w = self.closing_watermark(cfg);
        if self.closed_at != Some(w) {
            self.close_at(w);
        }
    }

    /// Frees the lifetime state (first ORDER, repeat-purchase history) of customers
    /// whose last ORDER is more than `ttl` before the lower bound `f`: every later
    /// ORDER would start them over anyway ([`TaskState::apply`]), so this changes
    /// no number. A pass over the histories at most once per `ttl / 16` of progress.
    pub(super) fn expire_customers(&mut self, f: Millis, ttl: i64) {
        if self.expired_at.is_some_and(|e| f - e < (ttl / 16).max(1)) {
            return;
        }
        self.expired_at = Some(f);
        for c in self.families.risk.expire_before(f - ttl) {
            self.families
                .all_mut()
                .into_iter()
                .for_each(|f| f.forget(c));
        }
        // Numbers no family holds anything for any more (also those a restore
        // brought back without state) leave the id table.
        for i in 0..u32::try_from(self.customer_ids.len()).unwrap_or(u32::MAX) {
            let c = CustomerId::from_index(i);
            if !self.customer_ids.name(c).is_empty()
                && !self.families.all().iter().any(|f| f.holds(c))
            {
                self.customer_ids.release(c);
            }
        }
    }

    pub(super) fn on_watermark(&mut self, cfg: &CoreConfig) {
        let w = self.closing_watermark(cfg);
        self.close_at(w);
    }

    pub(super) fn close_at(&mut self, w: Option<Millis>) {
        self.closed_at = Some(w);
        if let Some(w) = w {
            self.families
                .all_mut()
                .into_iter()
                .for_each(|f| f.on_watermark(w));
        }
    }
}

impl Merge for TaskState {
    fn merge(&mut self, newer: Self) -> Result<(), String> {
        let TaskState {
            inputs,
            evicted_at,
            families,
            customer_ids,
            closed_at: _,
            expired_at: _,
        } = newer;
        for (topic, input) in inputs {
            match self.inputs.get_mut(&topic) {
                Some(base) => base.merge(input)?,
                // First seen after the base: every entry of it is in this delta.
                None => {
                    self.inputs.insert(topic, input);
                }
            }
        }
        self.evicted_at = evicted_at;
        self.families.merge(families)?;
        self.closed_at = None;
        self.customer_ids.merge(customer_ids)
    }

    fn saved(&mut self) {
        self.inputs.values_mut().for_each(Merge::saved);
        self.families.saved();
        self.customer_ids.saved();
    }
}

/// Leads every saved task state: postcard is not self-describing, so a state
/// written by another layout must be refused, not misread. Bump on any change
/// of `TaskState`'s serialised form (2: customers as numbers, `CustomerIds`;
/// 3: bases and deltas; 4: distinct-count buckets as relative bucket numbers;
/// 5: one distinct counter per event set, shared by every window; 6: released
/// customer numbers, `""` in bases and listed in deltas; 7: window buckets fed
/// through a staging ring, `window::rolled`; 8: released customer numbers are
/// given again, and a delta lists the numbers given again with their ids; email
/// attribution kept by customer number; 9: web state keyed by label numbers,
/// open sessions in slots per (site, visitor); 10: remembered event ids as
/// records in arrival order, `state::dedup`; 11: the start cohort's churn per
/// window, `lost_customers`; 12: page labels, views and exits per page in
/// the web buckets, each open session's exit page and event id; 13: email
/// messages with every kind of event, send-cohort counts in the buckets; 14:
/// label tables with a cap, last uses and released numbers, sites and channels
/// apart, each session slot's site id; 15: one activity view of the churn
/// horizon for every window's start, each window's length and bucket).
pub(super) const BASE_FORMAT: &[u8] = b"engaged-task-state/16\n";
/// Leads every saved delta (see [`delta`]).
pub(super) const DELTA_FORMAT: &[u8] = b"engaged-task-delta/16\n";

fn format_tag(form: Form) -> &'static [u8] {
    match form {
        Form::Base => BASE_FORMAT,
        Form::Delta => DELTA_FORMAT,
    }
}

/// Encodes `task` in `form`; what changed from now on goes into the next delta.
pub(super) fn encode_task(task: &mut TaskState, form: Form) -> Result<Vec<u8>, StateError> {
    let mut out = format_tag(form).to_vec();
    delta::in_form(form, || postcard::to_io(&*task, &mut out))
        .map_err(|e| StateError::Encode(e.to_string()))?;
    task.saved();
    Ok(out)
}

pub(super) fn decode_task(p: i32, bytes: &[u8], form: Form) -> Result<TaskState, StateError> {
    let tag = format_tag(form);
    let Some(body) = bytes.strip_prefix(tag) else {
        return Err(StateError::Decode(format!(
            "task {p}: the state does not start with {:?}",
            String::from_utf8_lossy(tag)
        )));
    };
    delta::in_form(form, || postcard::from_bytes::<TaskState>(body))
        .map_err(|e| StateError::Decode(format!("task {p}: {e}")))
}
