//! Web metrics (SPEC §3 Web): sessions from page views, and page-view/session aggregates per window.
//!
//! A session is a maximal run of one visitor's views on one site with
//! consecutive views less than `session_timeout` apart. Views may arrive out of
//! order (within the lateness bound): a view can extend a session backwards or
//! bridge two open sessions, which then merge. A session closes when its
//! partition's watermark reaches `last_view + session_timeout`; that instant is
//! its close time, and it counts in the bucket of its close time. Because a view
//! older than the watermark is late (rejected), a closed session can never be
//! reopened, so closing is final and depends only on the set of accepted views.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The maps on the page-view path hash with foldhash (SipHash was a tenth of the
/// profile); seeds are per process, and nothing depends on iteration order.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use super::{Dim, Labels, NO_CHANNEL, nearest_rank_runs};
use crate::event::{Millis, PageView};
use crate::window::WindowSpec;
use crate::window::rolled::{Absorb, RolledRings};

/// Upper bounds (seconds) of the session-duration histogram on `/metrics`.
pub const DURATION_BUCKETS_SECONDS: [f64; 10] = [
    0.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Additive web aggregates of one bucket (or one window, once merged).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebCounts {
    pub page_views: u64,
    pub sessions: u64,
    pub bounced_sessions: u64,
    pub duration_ms_sum: u64,
    /// Session durations (ms), for exact percentiles.
    pub durations_ms: Durations,
}

/// Session durations (ms) as a multiset of sorted runs, read by selection
/// without copying.
///
/// A bucket appends one value per closed session to an unsorted tail (8 bytes,
/// no tree insert) and [`Durations::seal`] sorts the tail into the bucket's one
/// shared run before a snapshot reads it (a merge of the new values, since the
/// run is already sorted). A window's aggregate only shares the buckets' runs
/// (`Arc` clones) and [`Durations::percentile`] finds the exact nearest rank by
/// bisection over values ([`nearest_rank_runs`]): a snapshot costs
/// O(runs × log values) instead of a copy of every session in the window.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
pub struct Durations {
    runs: Vec<Arc<Vec<u64>>>,
    tail: Vec<u64>,
}

impl From<Vec<u64>> for Durations {
    fn from(mut v: Vec<u64>) -> Durations {
        v.sort_unstable();
        let runs = if v.is_empty() {
            vec![]
        } else {
            vec![Arc::new(v)]
        };
        Durations { runs, tail: vec![] }
    }
}

/// Saved as the flat list of values (the checkpoint form does not change).
impl From<Durations> for Vec<u64> {
    fn from(d: Durations) -> Vec<u64> {
        let mut v = Vec::with_capacity(d.len());
        d.runs.iter().for_each(|r| v.extend_from_slice(r));
        v.extend_from_slice(&d.tail);
        v
    }
}

impl Durations {
    pub fn push(&mut self, ms: u64) {
        self.tail.push(ms);
    }

    /// Sorts the values appended since the last seal into one run with the
    /// others (in place when no snapshot still shares the run).
    pub fn seal(&mut self) {
        if self.tail.is_empty() && self.runs.len() <= 1 {
            return;
        }
        let mut all = if self.runs.len() > 1 {
            let mut v = Vec::with_capacity(self.len());
            self.runs.drain(..).for_each(|r| v.extend_from_slice(&r));
            v
        } else {
            self.runs
                .pop()
                .map(Arc::unwrap_or_clone)
                .unwrap_or_default()
        };
        all.append(&mut self.tail);
        // A stable sort merges the sorted runs it finds in linear time.
        all.sort();
        self.runs = vec![Arc::new(all)];
    }

    /// Copies `other`'s values into this one's tail (a bucket taking a rolled-up
    /// slot: one run per bucket once sealed, not one per slot).
    pub fn absorb(&mut self, other: &Durations) {
        other
            .runs
            .iter()
            .for_each(|r| self.tail.extend_from_slice(r));
        self.tail.extend_from_slice(&other.tail);
    }

    /// Adds `other`'s values: its runs are shared, an unsealed tail is copied.
    pub fn extend(&mut self, other: &Durations) {
        self.runs
            .extend(other.runs.iter().filter(|r| !r.is_empty()).cloned());
        if !other.tail.is_empty() {
            let mut t = other.tail.clone();
            t.sort_unstable();
            self.runs.push(Arc::new(t));
        }
    }

    /// The nearest-rank `p`-th percentile (see [`super::nearest_rank`]).
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let mut tail = self.tail.clone();
        tail.sort_unstable();
        let mut runs: Vec<&[u64]> = self.runs.iter().map(|r| r.as_slice()).collect();
        runs.push(&tail);
        nearest_rank_runs(&runs, p)
    }

    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.len()).sum::<usize>() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Equal as multisets: the order durations were appended in does not matter.
impl PartialEq for Durations {
    fn eq(&self, other: &Durations) -> bool {
        let sorted = |d: &Durations| {
            let mut v: Vec<u64> = d.clone().into();
            v.sort_unstable();
            v
        };
        self.len() == other.len() && sorted(self) == sorted(other)
    }
}

impl Eq for Durations {}

impl WebCounts {
    pub fn merge(&mut self, other: &WebCounts) {
        self.page_views += other.page_views;
        self.sessions += other.sessions;
        self.bounced_sessions += other.bounced_sessions;
        self.duration_ms_sum += other.duration_ms_sum;
        self.durations_ms.extend(&other.durations_ms);
    }

    fn add_session(&mut self, s: &ClosedSession) {
        self.sessions += 1;
        if s.views == 1 {
            self.bounced_sessions += 1;
        }
        self.duration_ms_sum += s.duration_ms;
        self.durations_ms.push(s.duration_ms);
    }
}

/// An open session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub site: Arc<str>,
    pub visitor: Box<str>,
    pub first: Millis,
    pub last: Millis,
    pub views: u32,
    /// Channel of the first view (ties: the smallest label), as GA attributes a session's source.
    pub channel: Arc<str>,
}

/// A session that closed at `close_time = last + session_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedSession {
    pub close_time: Millis,
    pub duration_ms: u64,
    pub views: u32,
    pub site: Arc<str>,
    pub channel: Arc<str>,
}

/// Open sessions per dimension, kept up to date so snapshots need not scan sessions.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct OpenCounts {
    all: i64,
    site: FastMap<Arc<str>, i64>,
    channel: FastMap<Arc<str>, i64>,
}

impl OpenCounts {
    /// Adds `delta` to the counts of `s`'s dimensions, dropping zeros.
    fn count(&mut self, s: &Session, delta: i64) {
        self.all += delta;
        for (map, v) in [(&mut self.site, &s.site), (&mut self.channel, &s.channel)] {
            let n = match map.get_mut(v) {
                Some(n) => n,
                None => map.entry(v.clone()).or_default(),
            };
            *n += delta;
            if *n == 0 {
                map.remove(v);
            }
        }
    }

    fn by_dim(&self) -> impl Iterator<Item = (Dim, i64)> + '_ {
        std::iter::once((Dim::All, self.all))
            .chain(self.site.iter().map(|(v, n)| (Dim::Site(v.clone()), *n)))
            .chain(
                self.channel
                    .iter()
                    .map(|(v, n)| (Dim::Channel(v.clone()), *n)),
            )
    }
}

/// Turns one partition's page views into sessions.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sessionizer {
    timeout_ms: i64,
    next_id: u64,
    sessions: FastMap<u64, Session>,
    /// Open session ids per (site, visitor): usually one, two or more only
    /// while out-of-order views have not bridged them yet.
    /// Keyed site → visitor so that a view is looked up without allocating.
    by_visitor: FastMap<Arc<str>, FastMap<Box<str>, Vec<u64>>>,
    /// When to look at a session again: a min-heap of (instant, session id)
    /// with one entry per open session at or before its close time
    /// (`last + timeout`). A view that extends a session leaves its entry
    /// alone; an entry that comes up early is queued again at the session's
    /// close time, one that names a merged-away session is dropped. Sessions
    /// still close in (close time, id) order, each at its own close time.
    close_queue: BinaryHeap<Reverse<(Millis, u64)>>,
    open_by_dim: OpenCounts,
}

impl Sessionizer {
    pub fn new(timeout_ms: i64) -> Sessionizer {
        Sessionizer {
            timeout_ms,
            next_id: 0,
            sessions: FastMap::default(),
            by_visitor: FastMap::default(),
            close_queue: BinaryHeap::new(),
            open_by_dim: OpenCounts::default(),
        }
    }

    /// Adds a view; merges every open session of this visitor it is within the gap of.
    pub fn add_view(&mut self, site: &Arc<str>, visitor: &str, t: Millis, channel: &Arc<str>) {
        let timeout = self.timeout_ms;
        let visitors = match self.by_visitor.get_mut(site) {
            Some(v) => v,
            None => self.by_visitor.entry(site.clone()).or_default(),
        };
        let ids = match visitors.get_mut(visitor) {
            Some(ids) => ids,
            None => visitors.entry(Box::from(visitor)).or_default(),
        };
        // The common case: the visitor's one open session takes the view without
        // an earlier first view (so its channel stays): update it in place.
        if let [id] = ids[..]
            && let Some(s) = self.sessions.get_mut(&id)
            && t > s.first - timeout
            && t < s.last + timeout
            && (t, channel) >= (s.first, &s.channel)
        {
            if t > s.last {
                s.last = t;
            }
            s.views += 1;
            return;
        }
        let mut merged: Option<Session> = None;
        let mut i = 0;
        while i < ids.len() {
            let id = ids[i];
            let joins = self
                .sessions
                .get(&id)
                .is_some_and(|s| t > s.first - timeout && t < s.last + timeout);
            if !joins {
                i += 1;
                continue;
            }
            ids.swap_remove(i);
            if let Some(s) = self.sessions.remove(&id) {
                self.open_by_dim.count(&s, -1);
                merged = Some(match merged {
                    None => s,
                    Some(mut m) => {
                        if (s.first, &s.channel) < (m.first, &m.channel) {
                            m.channel = s.channel.clone();
                        }
                        m.first = m.first.min(s.first);
                        m.last = m.last.max(s.last);
                        m.views += s.views;
                        m
                    }
                });
            }
        }
        let session = match merged {
            Some(mut m) => {
                if (t, channel) < (m.first, &m.channel) {
                    m.channel = channel.clone();
                }
                m.first = m.first.min(t);
                m.last = m.last.max(t);
                m.views += 1;
                m
            }
            None => Session {
                site: site.clone(),
                visitor: Box::from(visitor),
                first: t,
                last: t,
                views: 1,
                channel: channel.clone(),
            },
        };
        let id = self.next_id;
        self.next_id += 1;
        ids.push(id);
        self.close_queue.push(Reverse((session.last + timeout, id)));
        self.open_by_dim.count(&session, 1);
        self.sessions.insert(id, session);
    }

    /// Closes every session whose close time is at or before `watermark`, oldest first.
    pub fn close_until(&mut self, watermark: Millis, mut out: impl FnMut(ClosedSession)) {
        while let Some(&Reverse((at, id))) = self.close_queue.peek() {
            if at > watermark {
                break;
            }
            self.close_queue.pop();
            // Merged into another session since it was queued.
            let Some(s) = self.sessions.get(&id) else {
                continue;
            };
            let close = s.last + self.timeout_ms;
            if close > at {
                // Extended since it was queued.
                self.close_queue.push(Reverse((close, id)));
                continue;
            }
            let Some(s) = self.sessions.remove(&id) else {
                continue;
            };
            self.open_by_dim.count(&s, -1);
            if let Some(visitors) = self.by_visitor.get_mut(&s.site) {
                if let Some(ids) = visitors.get_mut(&s.visitor) {
                    ids.retain(|x| *x != id);
                    if ids.is_empty() {
                        visitors.remove(&s.visitor);
                    }
                }
                if visitors.is_empty() {
                    self.by_visitor.remove(&s.site);
                }
            }
            out(ClosedSession {
                close_time: close,
                duration_ms: (s.last - s.first) as u64,
                views: s.views,
                site: s.site,
                channel: s.channel,
            });
        }
    }

    pub fn open_sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    pub fn open_count(&self) -> usize {
        self.sessions.len()
    }
}

/// Cumulative session-duration histogram (Prometheus buckets of [`DURATION_BUCKETS_SECONDS`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DurationHistogram {
    /// Non-cumulative counts per bucket; the last entry is `+Inf`.
    pub counts: [u64; DURATION_BUCKETS_SECONDS.len() + 1],
    pub sum_ms: u64,
    pub count: u64,
}

impl DurationHistogram {
    pub fn observe(&mut self, duration_ms: u64) {
        let secs = duration_ms as f64 / 1000.0;
        let idx = DURATION_BUCKETS_SECONDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS_SECONDS.len());
        self.counts[idx] += 1;
        self.sum_ms += duration_ms;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &DurationHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
        self.count += other.count;
    }
}

/// One bucket of web aggregates: the whole stream and per site / channel.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct WebBucket {
    all: WebCounts,
    site: FastMap<Arc<str>, WebCounts>,
    channel: FastMap<Arc<str>, WebCounts>,
}

impl WebBucket {
    fn parts(&mut self, site: &Arc<str>, channel: &Arc<str>) -> [&mut WebCounts; 3] {
        // Look up before inserting: no reference-count traffic when the value is there.
        fn part<'a>(map: &'a mut FastMap<Arc<str>, WebCounts>, v: &Arc<str>) -> &'a mut WebCounts {
            if !map.contains_key(v) {
                map.insert(v.clone(), WebCounts::default());
            }
            map.get_mut(v).expect("just inserted")
        }
        let s = part(&mut self.site, site);
        let c = part(&mut self.channel, channel);
        [&mut self.all, s, c]
    }
}

impl Absorb for WebCounts {
    fn absorb(&mut self, o: &WebCounts) {
        self.page_views += o.page_views;
        self.sessions += o.sessions;
        self.bounced_sessions += o.bounced_sessions;
        self.duration_ms_sum += o.duration_ms_sum;
        self.durations_ms.absorb(&o.durations_ms);
    }
}

impl Absorb for WebBucket {
    fn absorb(&mut self, other: &WebBucket) {
        self.all.absorb(&other.all);
        for (map, from) in [
            (&mut self.site, &other.site),
            (&mut self.channel, &other.channel),
        ] {
            for (v, c) in from {
                match map.get_mut(v) {
                    Some(mine) => mine.absorb(c),
                    None => map.entry(v.clone()).or_default().absorb(c),
                }
            }
        }
    }
}

/// The web state of one partition: its sessionizer and its window buckets.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WebState {
    sessions: Sessionizer,
    /// One bucket ring per configured window (in configuration order), fed
    /// through one staging ring ([`RolledRings`]).
    windows: RolledRings<WebBucket>,
    histogram: DurationHistogram,
    labels: Labels,
}

impl WebState {
    pub fn new(specs: &[WindowSpec], session_timeout_ms: i64) -> WebState {
        WebState {
            sessions: Sessionizer::new(session_timeout_ms),
            windows: RolledRings::new(specs),
            histogram: DurationHistogram::default(),
            labels: Labels::default(),
        }
    }

    /// An accepted page view.
    pub fn on_view(&mut self, pv: &PageView) {
        let site = self.labels.get(&pv.site);
        let channel = self.labels.get(pv.channel.as_deref().unwrap_or(NO_CHANNEL));
        self.sessions
            .add_view(&site, &pv.visitor_id, pv.event_time, &channel);
        self.windows.update(pv.event_time, |b| {
            for c in b.parts(&site, &channel) {
                c.page_views += 1;
            }
        });
    }

    /// The partition watermark moved to `watermark`: close sessions that ended,
    /// then roll what no event can change any more into the windows.
    pub fn on_watermark(&mut self, watermark: Millis) {
        let windows = &mut self.windows;
        let histogram = &mut self.histogram;
        self.sessions.close_until(watermark, |s| {
            histogram.observe(s.duration_ms);
            windows.update(s.close_time, |b| {
                for c in b.parts(&s.site, &s.channel) {
                    c.add_session(&s);
                }
            });
        });
        self.windows.roll_to(watermark);
    }

    /// Adds this partition's buckets of window `idx` in `[start, end)` to `into`,
    /// sealing their session durations first ([`Durations::seal`]: only values
    /// appended since the last snapshot are sorted in).
    pub fn collect(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
        into: &mut HashMap<Dim, WebCounts>,
    ) {
        for bucket in self.windows.range_mut(idx, start, end) {
            bucket.all.durations_ms.seal();
            bucket.site.values_mut().for_each(|c| c.durations_ms.seal());
            bucket
                .channel
                .values_mut()
                .for_each(|c| c.durations_ms.seal());
            let bucket = &*bucket;
            into.entry(Dim::All).or_default().merge(&bucket.all);
            for (v, c) in &bucket.site {
                into.entry(Dim::Site(v.clone())).or_default().merge(c);
            }
            for (v, c) in &bucket.channel {
                into.entry(Dim::Channel(v.clone())).or_default().merge(c);
            }
        }
    }

    /// Adds the open sessions of this partition per dimension to `into`.
    pub fn collect_open(&self, into: &mut HashMap<Dim, u64>) {
        for (d, n) in self.sessions.open_by_dim.by_dim() {
            if n > 0 {
                *into.entry(d).or_default() += n as u64;
            }
        }
    }

    pub fn histogram(&self) -> &DurationHistogram {
        &self.histogram
    }

    /// Drops buckets of window `idx` that start before `before`.
    pub fn evict(&mut self, idx: usize, before: Millis) {
        self.windows.evict_before(idx, before);
    }

    /// Adds this partition's entries to the memory accounting.
    pub fn account(&self, size: &mut crate::state::memory::StateSize) {
        use crate::state::memory::StateKind;
        size.add(StateKind::OpenSession, self.sessions.open_count());
        size.add(StateKind::WindowBucket, self.windows.len());
        let durations = |c: &WebCounts| c.durations_ms.len();
        let held: usize = self
            .windows
            .iter()
            .map(|b| {
                durations(&b.all)
                    + b.site.values().map(durations).sum::<usize>()
                    + b.channel.values().map(durations).sum::<usize>()
            })
            .sum();
        size.add(StateKind::SessionDuration, held);
    }

    /// Rough entry count, for the state-size gauge.
    pub fn size(&self) -> usize {
        self.sessions.open_count() + self.windows.len()
    }
}

/// The web family: sessions from page views (see the module docs).
impl super::family::Family for WebState {
    fn on_event(&mut self, event: &crate::event::Event, _customer: Option<super::CustomerId>) {
        if let crate::event::Event::PageView(pv) = event {
            self.on_view(pv);
        }
    }

    fn on_watermark(&mut self, w: Millis) {
        WebState::on_watermark(self, w);
    }

    fn collect(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
        into: &mut super::family::WindowAggregates,
    ) {
        WebState::collect(self, idx, start, end, &mut into.web);
    }

    fn evict(&mut self, idx: usize, start: Millis, _end: Millis, _lower_bound: Option<Millis>) {
        WebState::evict(self, idx, start);
    }

    fn account(&self, size: &mut crate::state::memory::StateSize) {
        WebState::account(self, size);
    }

    fn size(&self) -> usize {
        WebState::size(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const TIMEOUT: i64 = 30 * MIN;

    fn a(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn closed_after(views: &[(&str, Millis)], wm: Millis) -> Vec<ClosedSession> {
        let mut s = Sessionizer::new(TIMEOUT);
        for (v, t) in views {
            s.add_view(&a("site"), v, *t, &a("organic"));
        }
        let mut out = vec![];
        s.close_until(wm, |c| out.push(c));
        out
    }

    #[test]
    fn gap_of_29m59s_continues_the_session() {
        let c = closed_after(&[("v", 0), ("v", TIMEOUT - 1_000)], i64::MAX / 2);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].views, 2);
        assert_eq!(c[0].duration_ms, (TIMEOUT - 1_000) as u64);
        assert_eq!(c[0].close_time, 2 * TIMEOUT - 1_000);
    }

    #[test]
    fn gap_of_exactly_30m_starts_a_new_session() {
        let c = closed_after(&[("v", 0), ("v", TIMEOUT)], i64::MAX / 2);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|s| s.views == 1 && s.duration_ms == 0));
    }

    #[test]
    fn gap_of_30m01s_starts_a_new_session() {
        let c = closed_after(&[("v", 0), ("v", TIMEOUT + 1_000)], i64::MAX / 2);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn sessions_close_exactly_when_the_watermark_reaches_last_plus_timeout() {
        assert!(closed_after(&[("v", 0)], TIMEOUT - 1).is_empty());
        let c = closed_after(&[("v", 0)], TIMEOUT);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].close_time, TIMEOUT);
    }

    #[test]
    fn a_late_view_bridging_two_open_sessions_merges_them() {
        let mut s = Sessionizer::new(TIMEOUT);
        let (site, ch) = (a("site"), a("email"));
        s.add_view(&site, "v", 0, &ch);
        s.add_view(&site, "v", 40 * MIN, &a("organic"));
        assert_eq!(s.open_count(), 2);
        // 20 minutes after the first and before the second: one session now.
        s.add_view(&site, "v", 20 * MIN, &a("paid"));
        assert_eq!(s.open_count(), 1);
        let mut out = vec![];
        s.close_until(i64::MAX / 2, |c| out.push(c));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].views, 3);
        assert_eq!(out[0].duration_ms, (40 * MIN) as u64);
        assert_eq!(out[0].close_time, 70 * MIN);
        assert_eq!(&*out[0].channel, "email", "channel of the earliest view");
    }

    #[test]
    fn an_earlier_view_extends_a_session_backwards() {
        let c = closed_after(&[("v", 50 * MIN), ("v", 25 * MIN)], i64::MAX / 2);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].duration_ms, (25 * MIN) as u64);
    }

    #[test]
    fn visitors_and_sites_are_sessionized_apart() {
        let mut s = Sessionizer::new(TIMEOUT);
        s.add_view(&a("a"), "v", 0, &a("x"));
        s.add_view(&a("b"), "v", 1, &a("x"));
        s.add_view(&a("a"), "w", 2, &a("x"));
        assert_eq!(s.open_count(), 3);
        let mut n = 0;
        s.close_until(TIMEOUT + 2, |_| n += 1);
        assert_eq!(n, 3);
        assert_eq!(s.open_count(), 0);
        assert!(s.by_visitor.is_empty(), "index is cleaned up");
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = DurationHistogram::default();
        h.observe(0);
        h.observe(10_000);
        h.observe(10_001);
        h.observe(100_000_000);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[2], 1);
        assert_eq!(h.counts[DURATION_BUCKETS_SECONDS.len()], 1);
        assert_eq!(h.count, 4);
    }
}
