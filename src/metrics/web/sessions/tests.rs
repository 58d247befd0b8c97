//! The sessionizer at its boundaries: gaps, close instants, merges, backwards extension.

use super::*;

const MIN: i64 = 60_000;
const TIMEOUT: i64 = 30 * MIN;

/// Label numbers of `names`, in a table shared by the sessionizer's calls.
fn ids<const N: usize>(labels: &mut LabelIds, names: [&str; N]) -> [u32; N] {
    names.map(|n| labels.id(n, 0))
}

/// The slot key of site number `n` in these tests (one per number).
const SITE_IDS: [&str; 8] = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"];

/// A view on page 0 without an event id (exit pages are tested below).
fn view(site: u32, visitor: &str, time: Millis, channel: u32) -> View<'_> {
    View {
        site,
        site_name: SITE_IDS[site as usize],
        visitor,
        time,
        channel,
        page: 0,
        event_id: "",
    }
}

fn closed_after(views: &[(&str, Millis)], wm: Millis) -> Vec<ClosedSession> {
    let mut s = Sessionizer::new(TIMEOUT);
    let mut labels = LabelIds::new(100, TIMEOUT);
    let [site, organic] = ids(&mut labels, ["site", "organic"]);
    for (v, t) in views {
        s.add_view(view(site, v, *t, organic), &labels);
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
    let mut labels = LabelIds::new(100, TIMEOUT);
    let [site, email, organic, paid] = ids(&mut labels, ["site", "email", "organic", "paid"]);
    s.add_view(view(site, "v", 0, email), &labels);
    s.add_view(view(site, "v", 40 * MIN, organic), &labels);
    assert_eq!(s.open_count(), 2);
    // 20 minutes after the first and before the second: one session now.
    s.add_view(view(site, "v", 20 * MIN, paid), &labels);
    assert_eq!(s.open_count(), 1);
    let mut out = vec![];
    s.close_until(i64::MAX / 2, |c| out.push(c));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].views, 3);
    assert_eq!(out[0].duration_ms, (40 * MIN) as u64);
    assert_eq!(out[0].close_time, 70 * MIN);
    assert_eq!(
        &**labels.name(out[0].channel),
        "email",
        "channel of the earliest view"
    );
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
    let mut labels = LabelIds::new(100, TIMEOUT);
    let [a, b, x] = ids(&mut labels, ["a", "b", "x"]);
    s.add_view(view(a, "v", 0, x), &labels);
    s.add_view(view(b, "v", 1, x), &labels);
    s.add_view(view(a, "w", 2, x), &labels);
    assert_eq!(s.open_count(), 3);
    let mut n = 0;
    s.close_until(TIMEOUT + 2, |_| n += 1);
    assert_eq!(n, 3);
    assert_eq!(s.open_count(), 0);
    assert!(s.is_empty(), "index is cleaned up");
}

/// Closed sessions' exit pages (as page names) after `views` of one visitor:
/// (time, page, event id).
fn exits_after(views: &[(Millis, &str, &str)]) -> Vec<(Millis, String)> {
    let mut s = Sessionizer::new(TIMEOUT);
    let mut labels = LabelIds::new(100, TIMEOUT);
    let mut pages = LabelIds::new(100, TIMEOUT);
    let [site, x] = ids(&mut labels, ["site", "x"]);
    for (t, page, event_id) in views {
        let page = pages.id(page, *t);
        s.add_view(
            View {
                site,
                site_name: "site",
                visitor: "v",
                time: *t,
                channel: x,
                page,
                event_id,
            },
            &labels,
        );
    }
    let mut out = vec![];
    s.close_until(i64::MAX / 2, |c| out.push(c));
    out.iter()
        .map(|c| (c.close_time, pages.name(c.exit_page).to_string()))
        .collect()
}

#[test]
fn the_exit_page_is_the_last_views_whatever_the_arrival_order() {
    let views = [
        (0, "/home", "e1"),
        (10 * MIN, "/cart", "e2"),
        (5 * MIN, "/shop", "e3"),
    ];
    assert_eq!(exits_after(&views), vec![(40 * MIN, "/cart".to_string())]);
    let mut reversed = views;
    reversed.reverse();
    assert_eq!(
        exits_after(&reversed),
        vec![(40 * MIN, "/cart".to_string())]
    );
}

#[test]
fn exit_page_ties_in_time_go_to_the_greatest_event_id() {
    for views in [
        [(0, "/a", "e1"), (MIN, "/b", "e7"), (MIN, "/c", "e3")],
        [(MIN, "/c", "e3"), (0, "/a", "e1"), (MIN, "/b", "e7")],
        [(MIN, "/b", "e7"), (MIN, "/c", "e3"), (0, "/a", "e1")],
    ] {
        assert_eq!(
            exits_after(&views),
            vec![(31 * MIN, "/b".to_string())],
            "{views:?}"
        );
    }
}

#[test]
fn a_bridged_session_exits_where_its_later_part_did() {
    // Two sessions (exits /late at 40m and /early at 0m) bridged by a view at 20m.
    let views = [
        (40 * MIN, "/late", "e2"),
        (0, "/early", "e1"),
        (20 * MIN, "/bridge", "e3"),
    ];
    assert_eq!(exits_after(&views), vec![(70 * MIN, "/late".to_string())]);
    // Without the bridge: two sessions, each with its own exit page.
    assert_eq!(
        exits_after(&views[..2]),
        vec![
            (30 * MIN, "/early".to_string()),
            (70 * MIN, "/late".to_string())
        ]
    );
}
