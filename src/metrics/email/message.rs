//! One email message's events and what they count (SPEC §3 Email): activity per kind, and its send cohort.
//!
//! # Activity
//! Counts follow messages: the counted events of a kind are the chain
//! `f1 = earliest`, `f(n+1) = earliest at or after fn + email_dedup_ttl` of the
//! message's events of that kind, usually one (a message seen again a TTL
//! later counts again, as a forgotten message would). Kinds: SENT, DELIVERED,
//! BOUNCED, CLICKED, UNSUBSCRIBED, COMPLAINED, and the open, whose events are
//! the OPENED *and* CLICKED events (a click implies an open). Each counted
//! event counts at its own time.
//!
//! # Send cohort
//! A counted DELIVERED at `d` counts in `delivered_opened` (…`_clicked`,
//! `_unsubscribed`, `_complained`) at `d` when the message has an open (a
//! click, …) at `t` with `|t - d| < email_dedup_ttl`; a counted SENT at `s`
//! counts in `sent_bounced` at `s` when the message has a BOUNCED within the
//! TTL of it. So a late open raises the rate of the window holding the
//! delivery, and no rate exceeds 1 (each counted delivery counts at most once
//! in each numerator). An open recorded before its delivery (the provider's
//! clocks disagree) pairs with it too, within the TTL.
//!
//! # Exactness
//! Everything a message counts is [`Message::contributions`], a function of
//! the set of its events; an event changes the counts by the difference of the
//! contributions before and after it, so the result does not depend on the
//! order events arrive in. A message is forgotten once its latest event is a
//! TTL behind the task's lower bound `l` (no event of its inputs can come
//! before `l` any more): a later event `y >= l` is then at least a TTL after
//! every event of the message, so it starts a new chain element of its kind
//! and pairs with none of them — exactly what it does with a forgotten message.

use smallvec::SmallVec;
use std::sync::Arc;

use crate::event::{EmailEventType, Millis};

/// A counter of [`super::EmailCounts`] a message contributes one to, at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Counter {
    Sent,
    Delivered,
    Bounced,
    UniqueOpens,
    UniqueClicks,
    Unsubscribes,
    Complaints,
    DeliveredOpened,
    DeliveredClicked,
    DeliveredUnsubscribed,
    DeliveredComplained,
    SentBounced,
}

const SENT: usize = 0;
const DELIVERED: usize = 1;
const BOUNCED: usize = 2;
const OPENED: usize = 3;
const CLICKED: usize = 4;
const UNSUBSCRIBED: usize = 5;
const COMPLAINED: usize = 6;

/// Where a kind's times are kept in [`Message::times`].
pub(crate) fn kind_index(kind: EmailEventType) -> usize {
    match kind {
        EmailEventType::Sent => SENT,
        EmailEventType::Delivered => DELIVERED,
        EmailEventType::Bounced => BOUNCED,
        EmailEventType::Opened => OPENED,
        EmailEventType::Clicked => CLICKED,
        EmailEventType::Unsubscribed => UNSUBSCRIBED,
        EmailEventType::Complained => COMPLAINED,
    }
}

/// What a message counts: (instant, counter), sorted.
pub(crate) type Contributions = SmallVec<[(Millis, Counter); 8]>;

/// What is remembered of one message: its campaign and the sorted times of its
/// events per kind (usually one per kind, inline).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Message {
    pub campaign: Arc<str>,
    times: [SmallVec<[Millis; 1]>; 7],
}

/// Calls `f` with each counted event of a sorted list: the greedy chain with
/// gaps of at least `ttl`.
fn chain(times: &[Millis], ttl: i64, mut f: impl FnMut(Millis)) {
    let mut last: Option<Millis> = None;
    for &t in times {
        if last.is_none_or(|l| t - l >= ttl) {
            f(t);
            last = Some(t);
        }
    }
}

/// Whether a sorted list has a time within `ttl` of `at` (either side).
fn near(times: &[Millis], at: Millis, ttl: i64) -> bool {
    let i = times.partition_point(|x| *x <= at - ttl);
    times.get(i).is_some_and(|t| *t < at + ttl)
}

impl Message {
    pub fn new(campaign: Arc<str>) -> Message {
        Message {
            campaign,
            times: Default::default(),
        }
    }

    /// Adds an event of `kind` ([`kind_index`]) at `t`.
    pub fn insert(&mut self, kind: usize, t: Millis) {
        let times = &mut self.times[kind];
        let pos = times.partition_point(|x| *x <= t);
        times.insert(pos, t);
    }

    /// Whether no event was added yet (it contributes nothing).
    pub fn is_empty(&self) -> bool {
        self.times.iter().all(|t| t.is_empty())
    }

    /// The latest event of any kind.
    pub fn last_event(&self) -> Option<Millis> {
        self.times.iter().filter_map(|t| t.last()).max().copied()
    }

    /// Everything this message counts (see the module docs), sorted.
    pub fn contributions(&self, ttl: i64) -> Contributions {
        let t = &self.times;
        let mut out = Contributions::new();
        for (kind, counter) in [
            (SENT, Counter::Sent),
            (DELIVERED, Counter::Delivered),
            (BOUNCED, Counter::Bounced),
            (CLICKED, Counter::UniqueClicks),
            (UNSUBSCRIBED, Counter::Unsubscribes),
            (COMPLAINED, Counter::Complaints),
        ] {
            chain(&t[kind], ttl, |x| out.push((x, counter)));
        }
        // Opens: OPENED and CLICKED events, in time order (each list is sorted).
        let open = |x| out.push((x, Counter::UniqueOpens));
        match (&t[OPENED][..], &t[CLICKED][..]) {
            (only, []) | ([], only) => chain(only, ttl, open),
            (opened, clicked) => {
                let mut opens: SmallVec<[Millis; 4]> = SmallVec::new();
                opens.extend_from_slice(opened);
                opens.extend_from_slice(clicked);
                opens.sort_unstable();
                chain(&opens, ttl, open);
            }
        }
        chain(&t[DELIVERED], ttl, |d| {
            for (kinds, counter) in [
                (&[OPENED, CLICKED][..], Counter::DeliveredOpened),
                (&[CLICKED], Counter::DeliveredClicked),
                (&[UNSUBSCRIBED], Counter::DeliveredUnsubscribed),
                (&[COMPLAINED], Counter::DeliveredComplained),
            ] {
                if kinds.iter().any(|k| near(&t[*k], d, ttl)) {
                    out.push((d, counter));
                }
            }
        });
        chain(&t[SENT], ttl, |s| {
            if near(&t[BOUNCED], s, ttl) {
                out.push((s, Counter::SentBounced));
            }
        });
        out.sort_unstable();
        out
    }
}

/// The changes from `before` to `after` (both sorted): (instant, counter, ±1).
pub(crate) fn changes(
    before: &Contributions,
    after: &Contributions,
) -> SmallVec<[(Millis, Counter, i64); 4]> {
    let mut out = SmallVec::new();
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) if b == a => {
                i += 1;
                j += 1;
            }
            (Some(b), Some(a)) if b < a => {
                out.push((b.0, b.1, -1));
                i += 1;
            }
            (Some(_), Some(a)) | (None, Some(a)) => {
                out.push((a.0, a.1, 1));
                j += 1;
            }
            (Some(b), None) => {
                out.push((b.0, b.1, -1));
                i += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: i64 = 100;

    fn message(events: &[(usize, Millis)]) -> Contributions {
        let mut m = Message::new(Arc::from("c"));
        for (k, t) in events {
            m.insert(*k, *t);
        }
        m.contributions(TTL)
    }

    fn has(c: &Contributions, counter: Counter) -> Vec<Millis> {
        c.iter()
            .filter(|(_, k)| *k == counter)
            .map(|(t, _)| *t)
            .collect()
    }

    #[test]
    fn an_open_just_before_the_ttl_after_delivery_counts_and_one_at_it_does_not() {
        let c = message(&[(DELIVERED, 1_000), (OPENED, 1_099)]);
        assert_eq!(has(&c, Counter::DeliveredOpened), vec![1_000]);
        let c = message(&[(DELIVERED, 1_000), (OPENED, 1_100)]);
        assert_eq!(has(&c, Counter::DeliveredOpened), Vec::<Millis>::new());
        // The open still counts as an open, at its own time.
        assert_eq!(has(&c, Counter::UniqueOpens), vec![1_100]);
    }

    #[test]
    fn a_click_without_an_open_is_an_open_too() {
        let c = message(&[(DELIVERED, 0), (CLICKED, 10)]);
        assert_eq!(has(&c, Counter::UniqueOpens), vec![10]);
        assert_eq!(has(&c, Counter::UniqueClicks), vec![10]);
        assert_eq!(has(&c, Counter::DeliveredOpened), vec![0]);
        assert_eq!(has(&c, Counter::DeliveredClicked), vec![0]);
        // An open after the click: still one open, at the click.
        let c = message(&[(DELIVERED, 0), (CLICKED, 10), (OPENED, 20)]);
        assert_eq!(has(&c, Counter::UniqueOpens), vec![10]);
    }

    #[test]
    fn every_kind_counts_once_per_message_within_the_ttl() {
        let c = message(&[
            (SENT, 0),
            (SENT, 5),
            (DELIVERED, 7),
            (DELIVERED, 8),
            (BOUNCED, 9),
        ]);
        assert_eq!(has(&c, Counter::Sent), vec![0]);
        assert_eq!(has(&c, Counter::Delivered), vec![7]);
        assert_eq!(has(&c, Counter::SentBounced), vec![0]);
        // A TTL later the message counts again (a forgotten message would).
        let c = message(&[(SENT, 0), (SENT, 100)]);
        assert_eq!(has(&c, Counter::Sent), vec![0, 100]);
    }

    #[test]
    fn changes_are_the_multiset_difference() {
        let before = message(&[(OPENED, 50)]);
        let after = message(&[(OPENED, 50), (OPENED, 20)]);
        assert_eq!(
            changes(&before, &after).to_vec(),
            vec![
                (20, Counter::UniqueOpens, 1),
                (50, Counter::UniqueOpens, -1)
            ]
        );
        assert!(changes(&after, &after).is_empty());
    }
}
