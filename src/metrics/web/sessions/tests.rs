//! The sessionizer at its boundaries: gaps, close instants, merges, backwards extension.

use super::*;

const MIN: i64 = 60_000;
const TIMEOUT: i64 = 30 * MIN;

/// Label numbers of `names`, in a table shared by the sessionizer's calls.
fn ids<const N: usize>(labels: &mut LabelIds, names: [&str; N]) -> [u32; N] {
    names.map(|n| labels.id(n))
}

fn closed_after(views: &[(&str, Millis)], wm: Millis) -> Vec<ClosedSession> {
    let mut s = Sessionizer::new(TIMEOUT);
    let mut labels = LabelIds::default();
    let [site, organic] = ids(&mut labels, ["site", "organic"]);
    for (v, t) in views {
        s.add_view(site, v, *t, organic, &labels);
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
    let mut labels = LabelIds::default();
    let [site, email, organic, paid] = ids(&mut labels, ["site", "email", "organic", "paid"]);
    s.add_view(site, "v", 0, email, &labels);
    s.add_view(site, "v", 40 * MIN, organic, &labels);
    assert_eq!(s.open_count(), 2);
    // 20 minutes after the first and before the second: one session now.
    s.add_view(site, "v", 20 * MIN, paid, &labels);
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
    let mut labels = LabelIds::default();
    let [a, b, x] = ids(&mut labels, ["a", "b", "x"]);
    s.add_view(a, "v", 0, x, &labels);
    s.add_view(b, "v", 1, x, &labels);
    s.add_view(a, "w", 2, x, &labels);
    assert_eq!(s.open_count(), 3);
    let mut n = 0;
    s.close_until(TIMEOUT + 2, |_| n += 1);
    assert_eq!(n, 3);
    assert_eq!(s.open_count(), 0);
    assert!(s.is_empty(), "index is cleaned up");
}
