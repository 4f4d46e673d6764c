//! The one deterministic pseudo-random generator of the project: xorshift64* (Vigna), for
//! generated benchmark inputs, test data and the benches. Fast, no dependency, the same
//! bytes for the same seed on every machine. Not for anything secret: keys, session keys
//! and markers come from the OpenPGP library's and the system's generators.

/// xorshift64*: a 64-bit state, one multiply per word.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator for `seed`; any seed (0 included) gives a usable, distinct stream.
    pub fn new(seed: u64) -> Self {
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`0` if `n` is 0); the tiny modulo bias does not matter here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64().checked_rem(n).unwrap_or(0)
    }

    /// Appends `n` pseudo-random (incompressible) bytes to `out`.
    pub fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        let end = out.len() + n;
        out.reserve(n);
        while out.len() < end {
            let word = self.next_u64().to_le_bytes();
            let take = (end - out.len()).min(8);
            out.extend_from_slice(&word[..take]);
        }
    }

    /// `n` pseudo-random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        self.fill(&mut out, n);
        out
    }
}

/// `n` pseudo-random bytes from `seed`: [`Prng::new`]`(seed).bytes(n)`.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    Prng::new(seed).bytes(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_distinct_and_incompressible() {
        assert_eq!(noise(1000, 7), noise(1000, 7));
        assert_ne!(noise(64, 0), noise(64, 1));
        assert_eq!(
            &noise(1000, 7)[..13],
            &noise(13, 7)[..],
            "a prefix of a longer run"
        );
        let data = noise(1 << 20, 3);
        let packed = zstd::bulk::compress(&data, 3).unwrap();
        assert!(packed.len() as f64 > data.len() as f64 * 0.99);
        let mut counts = [0u32; 256];
        data.iter().for_each(|&b| counts[b as usize] += 1);
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*lo > 3500 && *hi < 4700, "{lo}..{hi}");
        let mut p = Prng::new(5);
        assert!((0..1000).all(|_| p.below(10) < 10));
        assert_eq!(p.below(0), 0);
    }
}
