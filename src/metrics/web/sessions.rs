//! Sessions from one task's page views: open sessions per (site, visitor) in slots, closed by event-time timers.
//!
//! A session is a maximal run of one visitor's views on one site with
//! consecutive views less than `session_timeout` apart. Views may arrive out of
//! order (within the lateness bound): a view can extend a session backwards or
//! bridge two open sessions, which then merge. A session closes when its
//! task's closing watermark reaches `last_view + session_timeout`; that instant
//! is its close time. Because a view older than the watermark is late
//! (rejected), a closed session can never be reopened, so closing is final and
//! depends only on the set of accepted views.
//!
//! A session's exit page is the page of its last view; of views at the same
//! last instant, the one with the greatest `event_id` (SPEC §3). The open
//! session keeps the page and event id of that view, and a view or a merge
//! that comes later in (time, event id) order takes its place, so the exit
//! page too depends only on the set of views, not on their arrival order.
//!
//! # Layout
//! Each (site, visitor) with an open session owns a slot of [`Sessionizer`]'s
//! `visitors`: the site's and the visitor's ids once, the site and channel as
//! label numbers ([`LabelIds`]) and its open sessions inline (usually one; two
//! or more only while out-of-order views have not bridged them yet). A slot is
//! found by the site's *name*, not its number: a site without a name of its own
//! (`other`, see [`crate::metrics::labels`]) still keeps its visitors' sessions
//! apart from other sites'. A hash table of slot numbers finds a view's slot
//! with one hash of the two ids and no allocation. A slot is freed when its
//! last session closes and given to the next new visitor.
//!
//! # Closing
//! `close_queue` holds timers ([`Timers`]) of (instant, session id, slot) with
//! one entry per open session at or before its close time. A view that extends
//! a session leaves the entry alone; an entry that comes up early is queued
//! again at the session's close time, and one whose session is gone (merged
//! away: session ids are never given twice) is dropped. Each session closes at
//! its own close time, once, whatever the steps the watermark moved in.

use std::collections::HashMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::event::Millis;
use crate::metrics::{Dim, LabelIds};
use crate::time::timers::Timers;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One page view as the sessionizer sees it: label numbers (site, channel,
/// page) and the view's own ids.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub site: u32,
    /// The site's own id (the slot key: `site` may be `other`).
    pub site_name: &'a str,
    pub visitor: &'a str,
    pub time: Millis,
    pub channel: u32,
    pub page: u32,
    pub event_id: &'a str,
}

/// An open session of a visitor on a site.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Session {
    /// Unique in the task: a merged session gets a new one.
    pub id: u64,
    pub first: Millis,
    pub last: Millis,
    pub views: u32,
    /// Label number of the first view's channel (ties: the smallest label), as
    /// GA attributes a session's source.
    pub channel: u32,
    /// Label number of the exit page: the page of the last view (ties: the
    /// greatest event id, kept in `exit_event`).
    pub exit_page: u32,
    pub exit_event: String,
}

impl Session {
    /// Whether the view at (`time`, `event_id`) comes after this session's exit view.
    fn exits_before(&self, time: Millis, event_id: &str) -> bool {
        (self.last, self.exit_event.as_str()) < (time, event_id)
    }

    fn set_exit(&mut self, page: u32, event_id: &str) {
        self.exit_page = page;
        self.exit_event.clear();
        self.exit_event.push_str(event_id);
    }
}

/// A session that closed at `close_time = last + session_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClosedSession {
    pub close_time: Millis,
    pub duration_ms: u64,
    pub views: u32,
    pub site: u32,
    pub channel: u32,
    /// Label number (in the page labels) of the page of the last view.
    pub exit_page: u32,
}

/// The open sessions of one visitor on one site (a free slot has none).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Visitor {
    site: u32,
    /// Where the site's id ends and the visitor's begins in `ids`.
    split: u32,
    /// The site's id, then the visitor's: one buffer per slot, emptied (not
    /// freed) when the slot is, for the slot's next visitor.
    ids: String,
    open: SmallVec<[Session; 1]>,
}

impl Visitor {
    fn site_name(&self) -> &str {
        self.ids.get(..self.split as usize).unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.ids.get(self.split as usize..).unwrap_or_default()
    }

    /// Whether this is the slot of `visitor` on `site_name`.
    fn is(&self, site_name: &str, visitor: &str) -> bool {
        let (ids, site, name) = (
            self.ids.as_bytes(),
            site_name.as_bytes(),
            visitor.as_bytes(),
        );
        self.split as usize == site.len()
            && ids.len() == site.len() + name.len()
            && ids.starts_with(site)
            && ids.ends_with(name)
    }
}

/// Open sessions per dimension, kept up to date so snapshots need not scan sessions.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct OpenCounts {
    all: i64,
    site: FastMap<u32, i64>,
    channel: FastMap<u32, i64>,
}

impl OpenCounts {
    /// Adds `delta` to the counts of a session's dimensions, dropping zeros.
    fn count(&mut self, site: u32, channel: u32, delta: i64) {
        self.all += delta;
        for (map, v) in [(&mut self.site, site), (&mut self.channel, channel)] {
            let n = map.entry(v).or_default();
            *n += delta;
            if *n == 0 {
                map.remove(&v);
            }
        }
    }
}

/// Turns one task's page views into sessions (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Sessionizer {
    timeout_ms: i64,
    next_id: u64,
    visitors: Vec<Visitor>,
    /// Slots without open sessions, given to the next new visitor.
    free: Vec<usize>,
    /// Slot numbers of `visitors` by (site, visitor id).
    index: HashTable<usize>,
    hasher: foldhash::fast::RandomState,
    close_queue: Timers<(u64, usize)>,
    /// The due timers of one pass (kept for its allocation).
    due: Vec<(Millis, (u64, usize))>,
    open_by_dim: OpenCounts,
    /// Exit event ids of closed sessions, for the next new sessions' (not saved).
    spare_ids: Vec<String>,
}

/// At most this many spare exit-event buffers are kept.
const SPARE_IDS: usize = 64;

/// `id` in a spare buffer if there is one.
fn reuse(spare: &mut Vec<String>, id: &str) -> String {
    match spare.pop() {
        Some(mut s) => {
            s.clear();
            s.push_str(id);
            s
        }
        None => id.to_owned(),
    }
}

/// Keeps `s`'s buffer for a later session, while there are few.
fn keep(spare: &mut Vec<String>, s: String) {
    if spare.len() < SPARE_IDS {
        spare.push(s);
    }
}

/// Whether a view at `a` = (time, channel) comes before one at `b`: time first,
/// then the channel's label.
fn before(a: (Millis, u32), b: (Millis, u32), channels: &LabelIds) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 != b.1 && channels.name(a.1) < channels.name(b.1))
}

impl Sessionizer {
    pub fn new(timeout_ms: i64) -> Sessionizer {
        Sessionizer {
            timeout_ms,
            next_id: 0,
            visitors: vec![],
            free: vec![],
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            // A ring of 512 slots spans the timeout: a due pass sorts a few sessions.
            close_queue: Timers::new(timeout_ms / 512),
            due: vec![],
            open_by_dim: OpenCounts::default(),
            spare_ids: vec![],
        }
    }

    fn hash(hasher: &foldhash::fast::RandomState, site: &str, visitor: &str) -> u64 {
        hasher.hash_one((site, visitor))
    }

    /// The slot of (`site_name`, `visitor`), taken (with label `site`) if it has none.
    fn slot(&mut self, site: u32, site_name: &str, visitor: &str) -> usize {
        let Sessionizer {
            visitors,
            free,
            index,
            hasher,
            ..
        } = self;
        let hash = Self::hash(hasher, site_name, visitor);
        let found = index.find(hash, |&s| {
            let v = &visitors[s];
            v.is(site_name, visitor)
        });
        if let Some(&s) = found {
            return s;
        }
        // A site id is a string field of a Kafka record, under 2 GiB.
        let split = u32::try_from(site_name.len()).unwrap_or(u32::MAX);
        let s = free.pop().unwrap_or_else(|| {
            visitors.push(Visitor::default());
            visitors.len() - 1
        });
        let v = &mut visitors[s];
        v.site = site;
        v.split = split;
        // Exactly what the ids need (a freed slot's buffer grows only if shorter).
        v.ids.reserve_exact(site_name.len() + visitor.len());
        v.ids.push_str(site_name);
        v.ids.push_str(visitor);
        index.insert_unique(hash, s, |&x| {
            let v = &visitors[x];
            Self::hash(hasher, v.site_name(), v.name())
        });
        s
    }

    /// Adds a view; merges every open session of this visitor it is within the
    /// gap of. `channel` is a label number of `channels` (ties compare names).
    pub(crate) fn add_view(&mut self, view: View<'_>, channels: &LabelIds) {
        let View {
            site,
            site_name,
            visitor,
            time: t,
            channel,
            page,
            event_id,
        } = view;
        let timeout = self.timeout_ms;
        let slot = self.slot(site, site_name, visitor);
        let v = &mut self.visitors[slot];
        // The common case: the visitor's one open session takes the view without
        // an earlier first view (so its channel stays): update it in place.
        if let [s] = &mut v.open[..]
            && t > s.first - timeout
            && t < s.last + timeout
            && !before((t, channel), (s.first, s.channel), channels)
        {
            if s.exits_before(t, event_id) {
                s.set_exit(page, event_id);
            }
            s.last = s.last.max(t);
            s.views += 1;
            return;
        }
        let mut merged = Session {
            id: self.next_id,
            first: t,
            last: t,
            views: 1,
            channel,
            exit_page: page,
            exit_event: reuse(&mut self.spare_ids, event_id),
        };
        self.next_id += 1;
        let mut i = 0;
        while i < v.open.len() {
            let s = &v.open[i];
            if !(t > s.first - timeout && t < s.last + timeout) {
                i += 1;
                continue;
            }
            let s = v.open.swap_remove(i);
            self.open_by_dim.count(site, s.channel, -1);
            if before(
                (s.first, s.channel),
                (merged.first, merged.channel),
                channels,
            ) {
                merged.channel = s.channel;
            }
            if merged.exits_before(s.last, &s.exit_event) {
                merged.exit_page = s.exit_page;
                let old = std::mem::replace(&mut merged.exit_event, s.exit_event);
                keep(&mut self.spare_ids, old);
            } else {
                keep(&mut self.spare_ids, s.exit_event);
            }
            merged.first = merged.first.min(s.first);
            merged.last = merged.last.max(s.last);
            merged.views += s.views;
        }
        let (close, id, channel) = (merged.last + timeout, merged.id, merged.channel);
        v.open.push(merged);
        self.close_queue.push(close, (id, slot));
        self.open_by_dim.count(site, channel, 1);
    }

    /// Closes every session whose close time is at or before `watermark`.
    pub(crate) fn close_until(&mut self, watermark: Millis, mut out: impl FnMut(ClosedSession)) {
        let mut due = std::mem::take(&mut self.due);
        loop {
            self.close_queue.pop_due(watermark, &mut due);
            if due.is_empty() {
                break;
            }
            for (at, (id, slot)) in due.drain(..) {
                let v = &mut self.visitors[slot];
                // Merged into another session since it was queued.
                let Some(i) = v.open.iter().position(|s| s.id == id) else {
                    continue;
                };
                let close = v.open[i].last + self.timeout_ms;
                if close > at {
                    // Extended since it was queued (due in a later pass if still at
                    // or before `watermark`).
                    self.close_queue.push(close, (id, slot));
                    continue;
                }
                let s = v.open.swap_remove(i);
                let site = v.site;
                self.open_by_dim.count(site, s.channel, -1);
                if v.open.is_empty() {
                    self.release(slot);
                }
                out(ClosedSession {
                    close_time: close,
                    duration_ms: (s.last - s.first) as u64,
                    views: s.views,
                    site,
                    channel: s.channel,
                    exit_page: s.exit_page,
                });
                keep(&mut self.spare_ids, s.exit_event);
            }
        }
        self.due = due;
    }

    /// Frees `slot` (its visitor has no open session left).
    fn release(&mut self, slot: usize) {
        let v = &mut self.visitors[slot];
        let hash = Self::hash(&self.hasher, v.site_name(), v.name());
        if let Ok(e) = self.index.find_entry(hash, |&s| s == slot) {
            e.remove();
        }
        // Its buffer stays for the slot's next visitor (saved as empty ids).
        v.site = 0;
        v.split = 0;
        v.ids.clear();
        v.open = SmallVec::new();
        self.free.push(slot);
    }

    /// Open sessions per dimension (`all`, sites, channels), zeros left out.
    pub(crate) fn open_by_dim<'a>(
        &'a self,
        sites: &'a LabelIds,
        channels: &'a LabelIds,
    ) -> impl Iterator<Item = (Dim, i64)> + 'a {
        let o = &self.open_by_dim;
        std::iter::once((Dim::All, o.all))
            .chain(
                o.site
                    .iter()
                    .map(|(v, n)| (Dim::Site(sites.name(*v).clone()), *n)),
            )
            .chain(
                o.channel
                    .iter()
                    .map(|(v, n)| (Dim::Channel(channels.name(*v).clone()), *n)),
            )
    }

    pub(crate) fn open_count(&self) -> usize {
        usize::try_from(self.open_by_dim.all).unwrap_or(0)
    }

    /// Whether no slot is taken (every session closed).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// The saved form: slots, free list and queue as they are; the index is rebuilt.
#[derive(serde::Serialize)]
struct SavedRef<'a> {
    timeout_ms: i64,
    next_id: u64,
    visitors: &'a [Visitor],
    free: &'a [usize],
    close_queue: &'a Timers<(u64, usize)>,
    open_by_dim: &'a OpenCounts,
}

#[derive(serde::Deserialize)]
struct Saved {
    timeout_ms: i64,
    next_id: u64,
    visitors: Vec<Visitor>,
    free: Vec<usize>,
    close_queue: Timers<(u64, usize)>,
    open_by_dim: OpenCounts,
}

impl serde::Serialize for Sessionizer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SavedRef {
            timeout_ms: self.timeout_ms,
            next_id: self.next_id,
            visitors: &self.visitors,
            free: &self.free,
            close_queue: &self.close_queue,
            open_by_dim: &self.open_by_dim,
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Sessionizer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sessionizer, D::Error> {
        let s = Saved::deserialize(d)?;
        let mut out = Sessionizer {
            timeout_ms: s.timeout_ms,
            next_id: s.next_id,
            visitors: s.visitors,
            free: s.free,
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            close_queue: s.close_queue,
            due: vec![],
            open_by_dim: s.open_by_dim,
            spare_ids: vec![],
        };
        let Sessionizer {
            visitors,
            index,
            hasher,
            ..
        } = &mut out;
        for (slot, v) in visitors.iter().enumerate() {
            if v.open.is_empty() {
                continue;
            }
            index.insert_unique(Self::hash(hasher, v.site_name(), v.name()), slot, |&x| {
                let v = &visitors[x];
                Self::hash(hasher, v.site_name(), v.name())
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
