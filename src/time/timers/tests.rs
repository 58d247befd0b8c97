//! The ring of timers against a plain sorted list, under random pushes and watermarks.

use super::*;

#[test]
fn pops_what_a_sorted_list_says_is_due_in_order() {
    for case in 0..300u64 {
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15 ^ (case * 0x1234_5678));
        let slot_ms = [1, 7, 1000][(case % 3) as usize];
        let mut timers: Timers<u32> = Timers::new(slot_ms);
        let mut reference: Vec<(Millis, u32)> = vec![];
        let mut w: Millis = next(10_000) as i64 - 5_000;
        for step in 0..(next(400) + 1) as u32 {
            match next(10) {
                // Mostly near the watermark, sometimes behind it or far beyond the ring.
                0 => {
                    let at = w - next(20_000) as i64;
                    timers.push(at, step);
                    reference.push((at, step));
                }
                1 => {
                    let at = w + (MAX_SLOTS as i64 + next(50) as i64) * slot_ms;
                    timers.push(at, step);
                    reference.push((at, step));
                }
                2..=6 => {
                    let at = w + next(3_000 * slot_ms as u64) as i64;
                    timers.push(at, step);
                    reference.push((at, step));
                }
                _ => {
                    w += if next(20) == 0 {
                        (next(3 * MAX_SLOTS as u64) as i64) * slot_ms
                    } else {
                        next(200) as i64
                    };
                    let mut got = vec![];
                    timers.pop_due(w, &mut got);
                    reference.sort_unstable();
                    let due = reference.partition_point(|e| e.0 <= w);
                    let want: Vec<_> = reference.drain(..due).collect();
                    assert_eq!(got, want, "case {case}, step {step}, w {w}");
                    assert_eq!(timers.len(), reference.len());
                }
            }
        }
        // What is left survives a save and restore, then comes out in order.
        let bytes = postcard::to_stdvec(&timers).expect("encodes");
        let mut back: Timers<u32> = postcard::from_bytes(&bytes).expect("decodes");
        let mut got = vec![];
        back.pop_due(Millis::MAX, &mut got);
        reference.sort_unstable();
        assert_eq!(got, reference, "case {case}: after a restore");
        assert!(back.is_empty());
    }
}

#[test]
fn a_far_future_timer_does_not_grow_the_ring() {
    let mut t: Timers<u8> = Timers::new(1_000);
    t.push(0, 1);
    t.push(10 * 365 * 86_400_000, 2);
    assert!(t.slots.len() <= 1, "{} slots", t.slots.len());
    let mut got = vec![];
    t.pop_due(1_000, &mut got);
    assert_eq!(got, vec![(0, 1)]);
    got.clear();
    t.pop_due(Millis::MAX, &mut got);
    assert_eq!(got, vec![(10 * 365 * 86_400_000, 2)]);
}
