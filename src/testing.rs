//! Helpers shared by the crate's unit tests.

/// A reproducible stream of numbers below `m` from `seed` (xorshift64): randomized
/// tests without a dependency, the same cases on every run.
pub(crate) fn xorshift(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed.max(1);
    move |m| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    }
}
