//! Property tests: every windowed web metric equals a brute-force recomputation
//! over the accepted events, for random streams with disorder, duplicates and
//! late records, and the result does not depend on how partitions interleave.

use std::collections::{BTreeMap, HashMap};

use engaged::event::{Event, Millis, PageView};
use engaged::snapshot::{self, WindowSnapshot};
use engaged::state::{CoreConfig, Engine, TopicPartition};
use engaged::window::WindowSpec;
use proptest::prelude::*;

const MIN: i64 = 60_000;
const LATENESS: i64 = 5 * MIN;
const TIMEOUT: i64 = 30 * MIN;
const DEDUP: i64 = 10 * MIN;
const PARTITIONS: i32 = 3;

fn config() -> CoreConfig {
    CoreConfig {
        windows: vec![
            WindowSpec::with_default_buckets("10m", 10 * MIN),
            WindowSpec::with_default_buckets("1h", 60 * MIN),
            WindowSpec {
                name: "3h".into(),
                length_ms: 180 * MIN,
                bucket_ms: 9 * MIN,
            },
        ],
        allowed_lateness_ms: LATENESS,
        session_timeout_ms: TIMEOUT,
        dedup_window_ms: DEDUP,
        max_dimension_values: 100,
        ..CoreConfig::default()
    }
}

/// A record as produced: partition and page view.
#[derive(Debug, Clone)]
struct Rec {
    partition: i32,
    view: PageView,
}

fn visitor_partition(visitor: u32) -> i32 {
    (visitor % PARTITIONS as u32) as i32
}

/// Per partition: a sequence of views with disorder, some late and some duplicated.
fn stream() -> impl Strategy<Value = Vec<Rec>> {
    let step = (
        0u32..9,               // visitor
        0i64..(12 * MIN),      // cursor advance
        -(9 * MIN)..(2 * MIN), // jitter around the cursor: sometimes beyond the lateness
        0usize..3,             // site
        0usize..4,             // channel
        0u32..100,             // duplicate dice
        any::<bool>(),         // snap to whole minutes: exact 30:00 gaps and ties happen
        0usize..4,             // page
    );
    proptest::collection::vec(step, 1..250).prop_map(|steps| {
        let mut cursors = [1_700_000_000_000i64; PARTITIONS as usize];
        let mut out: Vec<Rec> = vec![];
        for (n, (visitor, adv, jitter, site, channel, dice, snap, page)) in
            steps.into_iter().enumerate()
        {
            let p = visitor_partition(visitor);
            if dice < 12 {
                // A producer retry: the same record again (same partition, same id).
                if let Some(prev) = out.iter().rev().find(|r| r.partition == p).cloned() {
                    out.push(prev);
                    continue;
                }
            }
            let c = &mut cursors[p as usize];
            *c += adv / 3;
            let mut t = *c + jitter;
            if snap {
                t = t.div_euclid(MIN) * MIN;
            }
            out.push(Rec {
                partition: p,
                view: PageView {
                    event_id: format!("e{n}"),
                    event_time: t,
                    visitor_id: format!("v{visitor}"),
                    customer_id: None,
                    site: ["shop", "blog", "news"][site].into(),
                    page: ["/", "/shop", "/cart", "/blog"][page].into(),
                    referrer: None,
                    channel: [None, Some("email"), Some("organic"), Some("paid")][channel]
                        .map(String::from),
                },
            });
        }
        out
    })
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new("pageviews", p)
}

/// Runs the engine over `recs` in the given order; returns the accepted flags.
fn run(engine: &Engine, recs: &[Rec]) -> Vec<bool> {
    recs.iter()
        .map(|r| {
            engine
                .apply(&tp(r.partition), &Event::PageView(r.view.clone()))
                .is_ok()
        })
        .collect()
}

// ---------- the brute-force reference, written from SPEC §1–§3 alone ----------

/// SPEC §1/§2 acceptance, per partition, in arrival order.
fn reference_accepts(recs: &[Rec]) -> Vec<bool> {
    let mut max: HashMap<i32, Millis> = HashMap::new();
    let mut seen: HashMap<(i32, String), Millis> = HashMap::new();
    recs.iter()
        .map(|r| {
            let t = r.view.event_time;
            let wm = max.get(&r.partition).map(|m| m - LATENESS);
            if wm.is_some_and(|w| t < w) {
                return false;
            }
            let key = (r.partition, r.view.event_id.clone());
            if let Some(&old) = seen.get(&key)
                && wm.is_none_or(|w| old + DEDUP > w)
            {
                return false;
            }
            seen.insert(key, t);
            let m = max.entry(r.partition).or_insert(t);
            *m = (*m).max(t);
            true
        })
        .collect()
}

#[derive(Debug, Clone)]
struct RefSession {
    first: Millis,
    last: Millis,
    views: u32,
    site: String,
    channel: String,
    partition: i32,
    /// SPEC: the page of the last view (ties in time: the greatest event_id),
    /// with that view's (time, event_id).
    exit: (Millis, String, String),
}

fn channel_label(v: &PageView) -> String {
    v.channel.clone().unwrap_or_else(|| "(none)".into())
}

/// Sessions by sorting each (site, visitor)'s views and splitting at gaps >= timeout.
fn reference_sessions(views: &[(i32, PageView)]) -> Vec<RefSession> {
    let mut by: BTreeMap<(String, String), Vec<&(i32, PageView)>> = BTreeMap::new();
    for pv in views {
        by.entry((pv.1.site.clone(), pv.1.visitor_id.clone()))
            .or_default()
            .push(pv);
    }
    let mut out = vec![];
    for (_, mut vs) in by {
        vs.sort_by(|a, b| {
            (a.1.event_time, channel_label(&a.1)).cmp(&(b.1.event_time, channel_label(&b.1)))
        });
        let mut cur: Option<RefSession> = None;
        for (p, v) in vs {
            match &mut cur {
                Some(s) if v.event_time - s.last < TIMEOUT => {
                    s.last = v.event_time;
                    s.views += 1;
                    let at = (v.event_time, v.event_id.clone(), v.page.clone());
                    if (&at.0, &at.1) > (&s.exit.0, &s.exit.1) {
                        s.exit = at;
                    }
                }
                _ => {
                    if let Some(s) = cur.take() {
                        out.push(s);
                    }
                    cur = Some(RefSession {
                        first: v.event_time,
                        last: v.event_time,
                        views: 1,
                        site: v.site.clone(),
                        channel: channel_label(v),
                        partition: *p,
                        exit: (v.event_time, v.event_id.clone(), v.page.clone()),
                    });
                }
            }
        }
        out.extend(cur);
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64 / 1000.0)
}

/// (window, dimension, value) -> expected snapshot numbers.
#[derive(Debug, PartialEq)]
struct Expect {
    page_views: i64,
    sessions: i64,
    sessions_active: i64,
    bounced: i64,
    duration_sum: f64,
    p50: Option<f64>,
    p90: Option<f64>,
    exits: Option<i64>,
    exit_rate: Option<f64>,
}

fn reference(
    cfg: &CoreConfig,
    recs: &[Rec],
    accepted: &[bool],
    watermark: Millis,
    partition_wm: &HashMap<i32, Millis>,
) -> BTreeMap<(String, String, Option<String>), Expect> {
    let views: Vec<(i32, PageView)> = recs
        .iter()
        .zip(accepted)
        .filter(|(_, a)| **a)
        .map(|(r, _)| (r.partition, r.view.clone()))
        .collect();
    let sessions = reference_sessions(&views);
    let closed = |s: &RefSession| s.last + TIMEOUT <= partition_wm[&s.partition];
    let mut out = BTreeMap::new();
    for w in &cfg.windows {
        let end = watermark.div_euclid(w.bucket_ms) * w.bucket_ms;
        let start = end - w.length_ms;
        let dims: Vec<(String, Option<String>)> = std::iter::once(("all".into(), None))
            .chain(
                views
                    .iter()
                    .map(|(_, v)| ("site".into(), Some(v.site.clone()))),
            )
            .chain(
                views
                    .iter()
                    .map(|(_, v)| ("channel".into(), Some(channel_label(v)))),
            )
            .chain(
                views
                    .iter()
                    .map(|(_, v)| ("page".into(), Some(v.page.clone()))),
            )
            .collect();
        for (dim, val) in dims {
            let view_in = |v: &PageView| match dim.as_str() {
                "site" => Some(&v.site) == val.as_ref(),
                "channel" => Some(channel_label(v)) == val,
                "page" => Some(&v.page) == val.as_ref(),
                _ => true,
            };
            // A page row counts no sessions, only those exiting on the page.
            let sess_in = |s: &RefSession| match dim.as_str() {
                "site" => Some(&s.site) == val.as_ref(),
                "channel" => Some(&s.channel) == val.as_ref(),
                "page" => false,
                _ => true,
            };
            let page_views = views
                .iter()
                .filter(|(_, v)| view_in(v) && v.event_time >= start && v.event_time < end)
                .count() as i64;
            let in_window: Vec<&RefSession> = sessions
                .iter()
                .filter(|s| sess_in(s) && closed(s))
                .filter(|s| s.last + TIMEOUT >= start && s.last + TIMEOUT < end)
                .collect();
            let mut durations: Vec<u64> = in_window
                .iter()
                .map(|s| (s.last - s.first) as u64)
                .collect();
            durations.sort();
            let e = Expect {
                page_views,
                sessions: in_window.len() as i64,
                sessions_active: sessions.iter().filter(|s| sess_in(s) && !closed(s)).count()
                    as i64,
                bounced: in_window.iter().filter(|s| s.views == 1).count() as i64,
                duration_sum: durations.iter().sum::<u64>() as f64 / 1000.0,
                p50: percentile(&durations, 0.5),
                p90: percentile(&durations, 0.9),
                exits: None,
                exit_rate: None,
            };
            // Per page: sessions closed in the window that exited on the page.
            let e = if dim == "page" {
                let exits = sessions
                    .iter()
                    .filter(|s| closed(s) && Some(&s.exit.2) == val.as_ref())
                    .filter(|s| s.last + TIMEOUT >= start && s.last + TIMEOUT < end)
                    .count() as i64;
                Expect {
                    exits: Some(exits),
                    exit_rate: (page_views > 0).then(|| exits as f64 / page_views as f64),
                    ..e
                }
            } else {
                e
            };
            // A dimension value is published when it has anything to show;
            // the whole stream (`all`) always is.
            if dim == "all"
                || e.page_views > 0
                || e.sessions > 0
                || e.sessions_active > 0
                || e.exits.is_some_and(|x| x > 0)
            {
                out.insert((w.name.clone(), dim.clone(), val.clone()), e);
            }
        }
    }
    out
}

fn observed(snaps: &[WindowSnapshot]) -> BTreeMap<(String, String, Option<String>), Expect> {
    snaps
        .iter()
        .map(|s| {
            (
                (
                    s.window.clone(),
                    s.dimension.clone(),
                    s.dimension_value.clone(),
                ),
                Expect {
                    page_views: s.page_views,
                    sessions: s.sessions,
                    sessions_active: s.sessions_active,
                    bounced: s.bounced_sessions,
                    duration_sum: s.session_duration_sum_seconds,
                    p50: s.session_duration_p50_seconds,
                    p90: s.session_duration_p90_seconds,
                    exits: s.exits,
                    exit_rate: s.exit_rate,
                },
            )
        })
        .collect()
}

fn partition_watermarks(engine: &Engine) -> HashMap<i32, Millis> {
    engine
        .watermarks()
        .into_iter()
        .filter_map(|(tp, w)| w.map(|w| (tp.partition, w)))
        .collect()
}

fn partitions(engine: &Engine) -> Vec<TopicPartition> {
    engine.watermarks().into_iter().map(|(tp, _)| tp).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn windowed_web_metrics_equal_brute_force(recs in stream(), probe in 0i64..(40 * MIN)) {
        let cfg = config();
        let engine = Engine::new(cfg.clone());
        let accepted = run(&engine, &recs);
        prop_assert_eq!(&accepted, &reference_accepts(&recs));
        let pwm = partition_watermarks(&engine);
        // Instance watermark: min over partitions, then probe a few earlier instants too.
        let min_wm = *pwm.values().min().unwrap();
        for w in [min_wm, min_wm - probe] {
            let snaps = snapshot::build(&engine, w, &partitions(&engine));
            let got = observed(&snaps);
            let want = reference(&cfg, &recs, &accepted, w, &pwm);
            // Every dimension value the reference knows is published, and vice versa.
            prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
            for (k, want) in &want {
                let got = &got[k];
                prop_assert_eq!(got.page_views, want.page_views, "page_views {:?}", k);
                prop_assert_eq!(got.sessions, want.sessions, "sessions {:?}", k);
                prop_assert_eq!(got.sessions_active, want.sessions_active, "active {:?}", k);
                prop_assert_eq!(got.bounced, want.bounced, "bounced {:?}", k);
                prop_assert!((got.duration_sum - want.duration_sum).abs() < 1e-6, "duration {:?}", k);
                prop_assert_eq!(got.p50, want.p50, "p50 {:?}", k);
                prop_assert_eq!(got.p90, want.p90, "p90 {:?}", k);
                prop_assert_eq!(got.exits, want.exits, "exits {:?}", k);
                prop_assert_eq!(got.exit_rate, want.exit_rate, "exit_rate {:?}", k);
            }
        }
    }

    #[test]
    fn partition_interleaving_does_not_change_results(recs in stream(), seed in any::<u64>()) {
        let shuffled = interleaved(&recs, seed);
        let a = Engine::new(config());
        let b = Engine::new(config());
        run(&a, &recs);
        run(&b, &shuffled);
        let wa = partition_watermarks(&a);
        prop_assert_eq!(&wa, &partition_watermarks(&b));
        let w = *wa.values().min().unwrap();
        prop_assert_eq!(
            snapshot::build(&a, w, &partitions(&a)),
            snapshot::build(&b, w, &partitions(&b))
        );
    }

    /// With fewer label values named per partition than the stream has
    /// (`max_label_values`), the `all` rows are what they are without the cap,
    /// every breakdown still adds up to them, and the interleaving of
    /// partitions still does not matter.
    #[test]
    fn a_label_cap_changes_breakdowns_only(recs in stream(), seed in any::<u64>()) {
        let capped = || {
            let mut cfg = config();
            cfg.max_dimension_values = 1;
            cfg.max_label_values = 1;
            Engine::new(cfg)
        };
        let (a, b, whole) = (capped(), capped(), Engine::new(config()));
        run(&a, &recs);
        run(&b, &interleaved(&recs, seed));
        run(&whole, &recs);
        let w = *partition_watermarks(&a).values().min().unwrap();
        let snaps = snapshot::build(&a, w, &partitions(&a));
        prop_assert_eq!(&snaps, &snapshot::build(&b, w, &partitions(&b)));
        let all = |s: &[WindowSnapshot]| -> Vec<WindowSnapshot> {
            s.iter().filter(|r| r.dimension == "all").cloned().collect()
        };
        prop_assert_eq!(all(&snaps), all(&snapshot::build(&whole, w, &partitions(&whole))));
        for r in all(&snaps) {
            for dim in ["site", "channel", "page"] {
                let rows = || snaps.iter().filter(|s| s.window == r.window && s.dimension == dim);
                prop_assert!(rows().count() <= 2, "{} {}: {} rows", r.window, dim, rows().count());
                prop_assert_eq!(rows().map(|s| s.page_views).sum::<i64>(), r.page_views);
                if dim != "page" {
                    prop_assert_eq!(rows().map(|s| s.sessions).sum::<i64>(), r.sessions);
                    prop_assert_eq!(
                        rows().map(|s| s.sessions_active).sum::<i64>(),
                        r.sessions_active
                    );
                }
            }
        }
    }
}

/// The records of `recs` in another interleaving of partitions (each
/// partition's own order kept), chosen by `seed`.
fn interleaved(recs: &[Rec], seed: u64) -> Vec<Rec> {
    let mut queues: Vec<Vec<Rec>> = (0..PARTITIONS)
        .map(|p| recs.iter().filter(|r| r.partition == p).cloned().collect())
        .collect();
    let mut shuffled = vec![];
    let mut x = seed | 1;
    while queues.iter().any(|q| !q.is_empty()) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = (x % PARTITIONS as u64) as usize;
        if !queues[p].is_empty() {
            shuffled.push(queues[p].remove(0));
        }
    }
    shuffled
}

#[test]
fn top_n_folds_the_rest_into_other() {
    let mut cfg = config();
    cfg.max_dimension_values = 1;
    let engine = Engine::new(cfg);
    let t0 = 1_700_000_000_000;
    for (i, (site, page)) in [("a", "/x"), ("a", "/y"), ("b", "/y"), ("c", "/z")]
        .iter()
        .enumerate()
    {
        let pv = PageView {
            event_id: format!("e{i}"),
            event_time: t0 + i as i64,
            visitor_id: format!("v{i}"),
            customer_id: None,
            site: site.to_string(),
            page: page.to_string(),
            referrer: None,
            channel: None,
        };
        engine.apply(&tp(0), &Event::PageView(pv)).unwrap();
    }
    let snaps = snapshot::build(&engine, t0 + 20 * MIN, &partitions(&engine));
    let sites: BTreeMap<String, i64> = snaps
        .iter()
        .filter(|s| s.window == "1h" && s.dimension == "site")
        .map(|s| (s.dimension_value.clone().unwrap(), s.page_views))
        .collect();
    assert_eq!(
        sites,
        BTreeMap::from([("a".into(), 2), ("other".into(), 2)])
    );
    // Pages too, by page views: /y (2), the rest as other; each of the four
    // one-view sessions closed 30 min after its view and exited where it was.
    engine.advance(&tp(0), t0 + 50 * MIN);
    let snaps = snapshot::build(&engine, t0 + 50 * MIN, &partitions(&engine));
    let pages: BTreeMap<String, (i64, Option<i64>, Option<f64>)> = snaps
        .iter()
        .filter(|s| s.window == "1h" && s.dimension == "page")
        .map(|s| {
            (
                s.dimension_value.clone().unwrap(),
                (s.page_views, s.exits, s.exit_rate),
            )
        })
        .collect();
    assert_eq!(
        pages,
        BTreeMap::from([
            ("/y".into(), (2, Some(2), Some(1.0))),
            ("other".into(), (2, Some(2), Some(1.0)))
        ])
    );
}
