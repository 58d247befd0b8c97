use super::*;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_step_within_its_interval_keeps_the_cadence() {
    let at = Instant::now();
    // Begun on time (or 5 ms late at most), took 300 ms of a 1 s interval.
    assert_eq!(
        next_due(at, at + 2 * MS, 1000 * MS, at + 302 * MS),
        at + 1000 * MS
    );
    assert_eq!(
        next_due(at, at + 5 * MS, 1000 * MS, at + 305 * MS),
        at + 1000 * MS
    );
}

#[test]
fn a_step_longer_than_its_interval_is_followed_by_as_long_without_one() {
    let at = Instant::now();
    // Took 1.5 s of a 1 s interval: 1.5 s for everything else before the next.
    assert_eq!(next_due(at, at, 1000 * MS, at + 1500 * MS), at + 3000 * MS);
    // Half of the time at most, whatever the interval.
    let due = next_due(at, at, MS, at + 40 * MS);
    assert_eq!(due, at + 80 * MS);
}

#[test]
fn a_late_step_is_due_a_period_after_it_began_not_at_once() {
    let at = Instant::now();
    // The loop was busy for 1.5 s past the due time; the step took 10 ms.
    let started = at + 1500 * MS;
    assert_eq!(
        next_due(at, started, 1000 * MS, started + 10 * MS),
        started + 1000 * MS
    );
}
