//! Deterministic pseudo-random words for tests and benchmarks (xorshift64; not for masks:
//! those come from [`crate::prg`]).

/// `n` pseudo-random words from `seed` (any seed, zero included).
pub fn xorshift_words(n: usize, seed: u64) -> Vec<u64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        })
        .collect()
}
