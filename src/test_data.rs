//! Deterministic test inputs shared by the unit tests.

/// `n` pseudo-random (incompressible) bytes from xorshift64, the same for the same seed.
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
