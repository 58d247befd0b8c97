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

/// What is remembered of one message: its campaign and its events as
/// `(kind, time)` ([`kind_index`]), sorted, two inline. 56 bytes, where seven
/// per-kind lists of one inline time took 144: the map entry a new message is
/// written into spans two cache lines instead of three (a customer-heavy
/// stream writes one per email event). Saved as before ([`SavedMessage`]).
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub campaign: Arc<str>,
    events: SmallVec<[(u8, Millis); 2]>,
}

/// Calls `f` with each counted event of a sorted list: the greedy chain with
/// gaps of at least `ttl`.
fn chain(times: impl IntoIterator<Item = Millis>, ttl: i64, mut f: impl FnMut(Millis)) {
    let mut last: Option<Millis> = None;
    for t in times {
        if last.is_none_or(|l| t - l >= ttl) {
            f(t);
            last = Some(t);
        }
    }
}

/// The times of a kind's events (ascending).
fn times(of: &[(u8, Millis)]) -> impl Iterator<Item = Millis> + '_ {
    of.iter().map(|(_, t)| *t)
}

/// Whether a kind's events have one within `ttl` of `at` (either side).
fn near(of: &[(u8, Millis)], at: Millis, ttl: i64) -> bool {
    of.iter().any(|(_, t)| *t > at - ttl && *t < at + ttl)
}

impl Message {
    pub fn new(campaign: Arc<str>) -> Message {
        Message {
            campaign,
            events: SmallVec::new(),
        }
    }

    /// Adds an event of `kind` ([`kind_index`]) at `t`.
    pub fn insert(&mut self, kind: usize, t: Millis) {
        let e = (kind as u8, t);
        let pos = self.events.partition_point(|x| *x <= e);
        self.events.insert(pos, e);
    }

    /// Whether no event was added yet (it contributes nothing).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The latest event of any kind.
    pub fn last_event(&self) -> Option<Millis> {
        self.events.iter().map(|(_, t)| *t).max()
    }

    /// Each kind's events ([`kind_index`]), in time order.
    fn by_kind(&self) -> [&[(u8, Millis)]; 7] {
        let mut rest = &self.events[..];
        // Filled in order of the kinds: each takes the front of the rest.
        std::array::from_fn(|k| {
            let n = rest
                .iter()
                .take_while(|(x, _)| usize::from(*x) == k)
                .count();
            let (of, after) = rest.split_at(n);
            rest = after;
            of
        })
    }

    /// Everything this message counts (see the module docs), sorted.
    pub fn contributions(&self, ttl: i64) -> Contributions {
        let of = self.by_kind();
        let mut out = Contributions::new();
        for (kind, counter) in [
            (SENT, Counter::Sent),
            (DELIVERED, Counter::Delivered),
            (BOUNCED, Counter::Bounced),
            (CLICKED, Counter::UniqueClicks),
            (UNSUBSCRIBED, Counter::Unsubscribes),
            (COMPLAINED, Counter::Complaints),
        ] {
            chain(times(of[kind]), ttl, |x| out.push((x, counter)));
        }
        // Opens: OPENED and CLICKED events, in time order (each list is sorted).
        let open = |x| out.push((x, Counter::UniqueOpens));
        match (of[OPENED], of[CLICKED]) {
            (only, []) | ([], only) => chain(times(only), ttl, open),
            (opened, clicked) => {
                let mut opens: SmallVec<[Millis; 4]> = times(opened).collect();
                opens.extend(times(clicked));
                opens.sort_unstable();
                chain(opens, ttl, open);
            }
        }
        chain(times(of[DELIVERED]), ttl, |d| {
            for (kinds, counter) in [
                (&[OPENED, CLICKED][..], Counter::DeliveredOpened),
                (&[CLICKED], Counter::DeliveredClicked),
                (&[UNSUBSCRIBED], Counter::DeliveredUnsubscribed),
                (&[COMPLAINED], Counter::DeliveredComplained),
            ] {
                if kinds.iter().any(|k| near(of[*k], d, ttl)) {
                    out.push((d, counter));
                }
            }
        });
        chain(times(of[SENT]), ttl, |s| {
            if near(of[BOUNCED], s, ttl) {
                out.push((s, Counter::SentBounced));
            }
        });
        out.sort_unstable();
        out
    }
}

/// How a [`Message`] is saved (state format unchanged since it kept seven
/// lists): its campaign and each kind's times, ascending.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename = "Message")]
struct SavedMessage<T> {
    campaign: Arc<str>,
    times: [T; 7],
}

/// One kind's times, written from the message without copying them.
struct KindTimes<'a>(&'a [(u8, Millis)]);

impl serde::Serialize for KindTimes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(times(self.0))
    }
}

impl serde::Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SavedMessage {
            campaign: self.campaign.clone(),
            times: self.by_kind().map(KindTimes),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Message {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Message, D::Error> {
        let saved = SavedMessage::<Vec<Millis>>::deserialize(d)?;
        let mut m = Message::new(saved.campaign);
        for (kind, times) in saved.times.iter().enumerate() {
            for t in times {
                m.insert(kind, *t);
            }
        }
        Ok(m)
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
    fn is_saved_as_seven_lists_of_times_and_read_back() {
        assert_eq!(std::mem::size_of::<Message>(), 56);
        let mut m = Message::new(Arc::from("spring"));
        for (k, t) in [
            (OPENED, 50),
            (SENT, 7),
            (OPENED, 20),
            (COMPLAINED, 9),
            (SENT, 3),
        ] {
            m.insert(k, t);
        }
        // The form saved before messages kept one list of events.
        let mut lists: [Vec<Millis>; 7] = Default::default();
        lists[SENT] = vec![3, 7];
        lists[OPENED] = vec![20, 50];
        lists[COMPLAINED] = vec![9];
        let old = SavedMessage {
            campaign: Arc::<str>::from("spring"),
            times: lists,
        };
        let bytes = postcard::to_stdvec(&m).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&old).unwrap());
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"campaign":"spring","times":[[3,7],[],[],[20,50],[],[],[9]]}"#
        );
        let back: Message = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&*back.campaign, "spring");
        assert_eq!(
            back.events.to_vec(),
            vec![(0, 3), (0, 7), (3, 20), (3, 50), (6, 9)]
        );
        assert_eq!(back.contributions(TTL), m.contributions(TTL));
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
