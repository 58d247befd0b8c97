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
//!
//! Per page: the page views of the page (at their event time) and the sessions
//! that exited there (at their close time), for `exit_rate = exits /
//! page_views` of the page in a window.
//!
//! Sites, channels and pages are label numbers of a table each, which names at
//! most `max_label_values` values at a time ([`LabelIds`]; the rest count as
//! `other`); the top values by page views are published, the rest as `other`.

use std::collections::HashMap;

/// The maps on the page-view path hash with foldhash (SipHash was a tenth of the
/// profile); seeds are per process, and nothing depends on iteration order.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use super::{Dim, LabelIds, NO_CHANNEL};
use crate::event::{Millis, PageView};
use crate::window::WindowSpec;
use crate::window::rolled::{Absorb, RolledRings};

mod durations;
mod sessions;

pub use durations::Durations;
pub(crate) use sessions::{ClosedSession, Sessionizer, View};

/// Upper bounds (seconds) of the session-duration histogram on `/metrics`.
pub(crate) const DURATION_BUCKETS_SECONDS: [f64; 10] = [
    0.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Additive web aggregates of one bucket (or one window, once merged).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct WebCounts {
    pub page_views: u64,
    pub sessions: u64,
    pub bounced_sessions: u64,
    pub duration_ms_sum: u64,
    /// Session durations (ms), for exact percentiles.
    pub durations_ms: Durations,
    /// Sessions that exited on the page (in `page` rows only).
    pub exits: u64,
}

impl WebCounts {
    pub(crate) fn merge(&mut self, other: &WebCounts) {
        self.page_views += other.page_views;
        self.sessions += other.sessions;
        self.bounced_sessions += other.bounced_sessions;
        self.duration_ms_sum += other.duration_ms_sum;
        self.durations_ms.extend(&other.durations_ms);
        self.exits += other.exits;
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

/// Cumulative session-duration histogram (Prometheus buckets of [`DURATION_BUCKETS_SECONDS`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DurationHistogram {
    /// Non-cumulative counts per bucket; the last entry is `+Inf`.
    pub counts: [u64; DURATION_BUCKETS_SECONDS.len() + 1],
    pub sum_ms: u64,
    pub count: u64,
}

impl DurationHistogram {
    pub(crate) fn observe(&mut self, duration_ms: u64) {
        let secs = duration_ms as f64 / 1000.0;
        let idx = DURATION_BUCKETS_SECONDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS_SECONDS.len());
        self.counts[idx] += 1;
        self.sum_ms += duration_ms;
        self.count += 1;
    }

    pub(crate) fn merge(&mut self, other: &DurationHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
        self.count += other.count;
    }
}

/// One bucket of web aggregates: the whole stream and per site / channel
/// (label numbers of the task's [`LabelIds`]).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct WebBucket {
    all: WebCounts,
    site: FastMap<u32, WebCounts>,
    channel: FastMap<u32, WebCounts>,
    /// By page label number (of [`WebState`]'s page labels).
    page: FastMap<u32, PageCounts>,
}

impl WebBucket {
    fn parts(&mut self, site: u32, channel: u32) -> [&mut WebCounts; 3] {
        let s = self.site.entry(site).or_default();
        let c = self.channel.entry(channel).or_default();
        [&mut self.all, s, c]
    }

    fn parts_mut(&mut self) -> impl Iterator<Item = &mut WebCounts> {
        std::iter::once(&mut self.all)
            .chain(self.site.values_mut())
            .chain(self.channel.values_mut())
    }

    fn parts_ref(&self) -> impl Iterator<Item = &WebCounts> {
        std::iter::once(&self.all)
            .chain(self.site.values())
            .chain(self.channel.values())
    }
}

impl Absorb for WebCounts {
    fn clear(&mut self) {
        let mut durations = std::mem::take(&mut self.durations_ms);
        durations.clear();
        *self = WebCounts {
            durations_ms: durations,
            ..WebCounts::default()
        };
    }

    fn absorb(&mut self, o: &WebCounts) {
        self.page_views += o.page_views;
        self.sessions += o.sessions;
        self.bounced_sessions += o.bounced_sessions;
        self.duration_ms_sum += o.duration_ms_sum;
        self.durations_ms.absorb(&o.durations_ms);
        self.exits += o.exits;
    }
}

/// Sizes a new bucket's map for the slot it takes first, instead of growing it
/// a few times on the way (the 5-minute window starts a bucket every grain).
fn reserve_if_empty<V>(map: &mut FastMap<u32, V>, n: usize) {
    if map.is_empty() {
        map.reserve(n);
    }
}

/// One page's counts in a bucket: its views, and the sessions that exited on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PageCounts {
    views: u64,
    exits: u64,
}

impl Absorb for WebBucket {
    fn clear(&mut self) {
        self.all.clear();
        self.site.clear();
        self.channel.clear();
        self.page.clear();
    }

    fn absorb(&mut self, other: &WebBucket) {
        self.all.absorb(&other.all);
        for (map, from) in [
            (&mut self.site, &other.site),
            (&mut self.channel, &other.channel),
        ] {
            reserve_if_empty(map, from.len());
            for (v, c) in from {
                map.entry(*v).or_default().absorb(c);
            }
        }
        reserve_if_empty(&mut self.page, other.page.len());
        for (p, c) in &other.page {
            let mine = self.page.entry(*p).or_default();
            mine.views += c.views;
            mine.exits += c.exits;
        }
    }
}

/// The web state of one task: its label numbers, its sessionizer and its window buckets.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct WebState {
    /// Sites, channels and pages as numbers (buckets, sessions and open counts
    /// hold numbers), each kind in its own table.
    sites: LabelIds,
    channels: LabelIds,
    pages: LabelIds,
    /// The longest window (its evictions say which released labels nothing holds).
    longest: usize,
    session_timeout_ms: i64,
    sessions: Sessionizer,
    /// One bucket ring per configured window (in configuration order), fed
    /// through one staging ring ([`RolledRings`]).
    windows: RolledRings<WebBucket>,
    histogram: DurationHistogram,
}

impl WebState {
    /// `max_labels`: values named per kind of label (`max_label_values`).
    pub fn new(specs: &[WindowSpec], session_timeout_ms: i64, max_labels: usize) -> WebState {
        // A label last seen at `t` is held by buckets up to `t` (views) and
        // `t + session_timeout` (the close of a session it is in).
        let longest = (0..specs.len())
            .max_by_key(|&i| specs[i].length_ms)
            .unwrap_or(0);
        let retention =
            specs.get(longest).map_or(0, |s| s.length_ms + s.bucket_ms) + session_timeout_ms;
        let table = || LabelIds::new(max_labels, retention);
        WebState {
            sites: table(),
            channels: table(),
            pages: table(),
            longest,
            session_timeout_ms,
            sessions: Sessionizer::new(session_timeout_ms),
            windows: RolledRings::new(specs),
            histogram: DurationHistogram::default(),
        }
    }

    /// An accepted page view.
    pub(crate) fn on_view(&mut self, pv: &PageView) {
        let t = pv.event_time;
        let site = self.sites.id(&pv.site, t);
        let channel = self
            .channels
            .id(pv.channel.as_deref().unwrap_or(NO_CHANNEL), t);
        let page = self.pages.id(&pv.page, t);
        let view = View {
            site,
            site_name: &pv.site,
            visitor: &pv.visitor_id,
            time: pv.event_time,
            channel,
            page,
            event_id: &pv.event_id,
        };
        self.sessions.add_view(view, &self.channels);
        self.windows.update(pv.event_time, |b| {
            for c in b.parts(site, channel) {
                c.page_views += 1;
            }
            b.page.entry(page).or_default().views += 1;
        });
    }

    /// The task's closing watermark moved to `watermark`: close sessions that
    /// ended (each counts in the bucket of its close time), then roll what no
    /// event can change any more into the windows.
    pub(crate) fn on_watermark(&mut self, watermark: Millis) {
        let windows = &mut self.windows;
        let histogram = &mut self.histogram;
        self.sessions.close_until(watermark, |s| {
            histogram.observe(s.duration_ms);
            windows.update(s.close_time, |b| {
                for c in b.parts(s.site, s.channel) {
                    c.add_session(&s);
                }
                b.page.entry(s.exit_page).or_default().exits += 1;
            });
        });
        self.windows.roll_to(watermark);
    }

    /// Adds this task's buckets of window `idx` in `[start, end)` to `into`,
    /// sealing their session durations first ([`Durations::seal`]: only values
    /// appended since the last snapshot are sorted in).
    pub fn collect(
        &mut self,
        idx: usize,
        start: Millis,
        end: Millis,
        into: &mut HashMap<Dim, WebCounts>,
    ) {
        let (sites, channels) = (&self.sites, &self.channels);
        let mut pages: FastMap<u32, PageCounts> = FastMap::default();
        for bucket in self.windows.range_mut(idx, start, end) {
            bucket.parts_mut().for_each(|c| c.durations_ms.seal());
            let bucket = &*bucket;
            into.entry(Dim::All).or_default().merge(&bucket.all);
            for (v, c) in &bucket.site {
                into.entry(Dim::Site(sites.name(*v).clone()))
                    .or_default()
                    .merge(c);
            }
            for (v, c) in &bucket.channel {
                into.entry(Dim::Channel(channels.name(*v).clone()))
                    .or_default()
                    .merge(c);
            }
            // By page number first: a page's name is hashed once per snapshot,
            // not once per bucket it appears in.
            for (p, c) in &bucket.page {
                let sum = pages.entry(*p).or_default();
                sum.views += c.views;
                sum.exits += c.exits;
            }
        }
        for (p, c) in pages {
            let row = into
                .entry(Dim::Page(self.pages.name(p).clone()))
                .or_default();
            row.page_views += c.views;
            row.exits += c.exits;
        }
    }

    /// Adds the open sessions of this task per dimension to `into`.
    pub(crate) fn collect_open(&self, into: &mut HashMap<Dim, u64>) {
        for (d, n) in self.sessions.open_by_dim(&self.sites, &self.channels) {
            if n > 0 {
                *into.entry(d).or_default() += n as u64;
            }
        }
    }

    pub fn histogram(&self) -> &DurationHistogram {
        &self.histogram
    }

    /// Drops buckets of window `idx` that start before `before` (and, for the
    /// longest window, the names of released labels no bucket can hold).
    pub fn evict(&mut self, idx: usize, before: Millis) {
        self.windows.evict_before(idx, before);
        if idx == self.longest {
            let held_after = before.saturating_sub(self.session_timeout_ms);
            for t in [&mut self.sites, &mut self.channels, &mut self.pages] {
                t.forget_before(held_after);
            }
        }
    }

    /// Adds this task's entries to the memory accounting.
    pub(crate) fn account(&self, size: &mut crate::state::memory::StateSize) {
        use crate::state::memory::StateKind;
        size.add(StateKind::OpenSession, self.sessions.open_count());
        size.add(StateKind::WindowBucket, self.windows.len());
        let held: usize = self
            .windows
            .iter()
            .flat_map(WebBucket::parts_ref)
            .map(|c| c.durations_ms.len())
            .sum();
        size.add(StateKind::SessionDuration, held);
        let breakdowns: usize = self
            .windows
            .iter()
            .map(|b| b.site.len() + b.channel.len() + b.page.len())
            .sum();
        let named = self.sites.held() + self.channels.held() + self.pages.held();
        size.add(StateKind::LabelValue, breakdowns + named);
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
