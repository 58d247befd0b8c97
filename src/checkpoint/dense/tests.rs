//! [`Dense`] against [`Tracked`], the hash map it replaces: same contents, same
//! change counts, and a base plus deltas of either rebuilds the live map.

use super::*;
use crate::checkpoint::delta::{Tracked, in_form};

fn encode_dense(d: &Dense<u32, u64>, form: Form) -> Vec<u8> {
    in_form(form, || postcard::to_stdvec(d).expect("encodes"))
}

fn decode_dense(bytes: &[u8], form: Form) -> Dense<u32, u64> {
    in_form(form, || postcard::from_bytes(bytes).expect("decodes"))
}

fn contents_dense(d: &Dense<u32, u64>) -> Vec<(u32, u64)> {
    d.iter().map(|(k, v)| (k, *v)).collect()
}

fn contents_tracked(t: &Tracked<u32, u64>) -> Vec<(u32, u64)> {
    let mut v: Vec<_> = t.iter().map(|(k, v)| (*k, *v)).collect();
    v.sort();
    v
}

/// A xorshift stream, so a failure is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn random_operations_and_saves_match_the_hash_map() {
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        // Keys spread over a few chunks, some sparse, so chunks come and go.
        let span = [50, 5_000, 3 * CHUNK as u64][seed as usize % 3];
        let (mut dense, mut tracked) =
            (Dense::<u32, u64>::default(), Tracked::<u32, u64>::default());
        let mut chain: Vec<(Vec<u8>, Form)> = Vec::new();
        for step in 0..3_000u64 {
            let k = rng.below(span) as u32;
            match rng.below(9) {
                0 | 1 => {
                    assert_eq!(
                        dense.insert(k, step),
                        tracked.insert(k, step),
                        "seed {seed}"
                    );
                }
                2 => assert_eq!(dense.remove(&k), tracked.remove(&k), "seed {seed}"),
                3 => {
                    let a = dense.get_mut(&k).map(|v| {
                        *v += 1;
                        *v
                    });
                    let b = tracked.get_mut(&k).map(|v| {
                        *v += 1;
                        *v
                    });
                    assert_eq!(a, b, "seed {seed}");
                }
                4 => {
                    *dense.get_or_insert(k, || 7) += 2;
                    *tracked.get_or_insert(k, || 7) += 2;
                }
                5 => {
                    // Changes only odd values: an update that leaves a value alone marks nothing.
                    let f = |v: &mut u64| (*v % 2 == 1).then(|| *v += 1);
                    assert_eq!(dense.update(k, || 1, f), tracked.update(k, || 1, f));
                }
                6 if rng.below(20) == 0 => {
                    let cut = rng.below(span) as u32;
                    let f = |key: &u32, v: &mut u64| match (key % 3, *key < cut) {
                        (0, true) => Kept::Removed,
                        (1, true) => {
                            *v += 10;
                            Kept::Changed
                        }
                        _ => Kept::Unchanged,
                    };
                    dense.retain(f);
                    tracked.retain(f);
                }
                7 if rng.below(15) == 0 => {
                    let form = if chain.is_empty() || rng.below(4) == 0 {
                        chain.clear();
                        Form::Base
                    } else {
                        Form::Delta
                    };
                    chain.push((encode_dense(&dense, form), form));
                    dense.saved();
                    tracked.saved();
                }
                _ => assert_eq!(dense.get(&k), tracked.get(&k), "seed {seed}"),
            }
            assert_eq!(dense.len(), tracked.len(), "seed {seed} step {step}");
            assert_eq!(
                dense.changed(),
                tracked.changed(),
                "seed {seed} step {step}"
            );
        }
        assert_eq!(
            contents_dense(&dense),
            contents_tracked(&tracked),
            "seed {seed}"
        );
        // What was saved, restored, equals the live map as of its last save.
        if let Some(((base, _), deltas)) = chain.split_first() {
            let mut restored = decode_dense(base, Form::Base);
            for (d, form) in deltas {
                restored.merge(decode_dense(d, *form)).expect("merges");
            }
            assert_eq!(restored.changed(), 0, "seed {seed}");
            // Replay the live map's changes since its last save onto a copy of the
            // restored one, through a delta: equal contents.
            let last = encode_dense(&dense, Form::Delta);
            restored
                .merge(decode_dense(&last, Form::Delta))
                .expect("merges");
            assert_eq!(
                contents_dense(&restored),
                contents_dense(&dense),
                "seed {seed}"
            );
        }
    }
}

#[test]
fn memory_is_a_value_and_three_bits_per_slot_and_empty_chunks_are_freed() {
    let mut d: Dense<u32, u64> = Dense::default();
    for k in 0..(2 * CHUNK as u32) {
        d.insert(k, 1);
    }
    assert_eq!(d.chunks.iter().flatten().count(), 2);
    d.retain(|k, _| {
        if (*k as usize) < CHUNK {
            Kept::Removed
        } else {
            Kept::Unchanged
        }
    });
    assert_eq!(d.len(), CHUNK);
    assert!(d.chunks[0].is_none(), "an emptied chunk is freed");
    assert_eq!(d.iter().next().map(|(k, _)| k), Some(CHUNK as u32));
}

#[test]
fn a_saved_map_iterates_and_saves_in_key_order() {
    let mut d: Dense<u32, u64> = Dense::default();
    for k in [9_000u32, 3, 4_100, 0] {
        d.insert(k, u64::from(k));
    }
    assert_eq!(
        d.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        vec![0, 3, 4_100, 9_000]
    );
    let (a, b) = (
        encode_dense(&d, Form::Base),
        encode_dense(&d.clone(), Form::Base),
    );
    assert_eq!(a, b);
}

#[test]
fn a_corrupt_key_is_refused_not_allocated() {
    let bytes = in_form(Form::Base, || {
        postcard::to_stdvec(&vec![(u32::MAX, 1u64)]).expect("encodes")
    });
    let r: Result<Dense<u32, u64>, _> = in_form(Form::Base, || postcard::from_bytes(&bytes));
    assert!(r.is_err());
}
