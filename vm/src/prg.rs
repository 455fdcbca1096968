//! AES-128 in counter mode as a seeded PRG: the source of every party's dealer material.
//!
//! Each party expands its own material from a 16-byte seed the dealer gave it, so only
//! correction words for correlated values travel. Every output of every dealer instruction
//! has a stream of its own ([`Prg::stream`]): the draws of one output do not depend on what
//! was drawn before it, and its draws at a shorter length are the first words of its draws at
//! a longer one. That is what lets the dealer make a pruned program's material before the
//! lengths are known (`ahead.rs`).

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use aes::Aes128;

/// A 128-bit PRG seed.
pub type Seed = [u8; 16];

/// AES-128-CTR keyed by the seed.
pub struct Prg {
    cipher: Aes128,
    counter: u128,
}

const BATCH: usize = 8;

impl Prg {
    /// A PRG from a seed.
    pub fn new(seed: Seed) -> Prg {
        Prg { cipher: Aes128::new(&Array::from(seed)), counter: 0 }
    }

    /// Moves to the start of stream `id`: block `i` of the stream is AES(id·2^64 + i), so
    /// streams never overlap (none is 2^64 blocks long).
    pub fn seek(&mut self, id: u64) {
        self.counter = (id as u128) << 64;
    }

    /// The stream of output `part` of instruction `index` of a program section (`setup` true
    /// for the setup).
    pub fn stream(setup: bool, index: usize, part: u8) -> u64 {
        ((setup as u64) << 63) | ((index as u64) << 8) | part as u64
    }

    /// Seeks to [`Prg::stream`]`(setup, index, part)`.
    pub fn at(&mut self, setup: bool, index: usize, part: u8) {
        self.seek(Prg::stream(setup, index, part));
    }

    /// A fresh random seed from the operating system.
    pub fn random_seed() -> Seed {
        let mut s = [0u8; 16];
        getrandom::fill(&mut s).expect("the operating system provides randomness");
        s
    }

    /// Fills `out` with uniform 64-bit words: block `i` of the stream is AES(counter + i),
    /// its two little-endian halves words `2i` and `2i + 1` (the second half of a last odd
    /// block is dropped).
    pub fn fill(&mut self, out: &mut [u64]) {
        #[cfg(target_endian = "little")]
        {
            self.fill_in_place(out);
        }
        #[cfg(not(target_endian = "little"))]
        self.fill_blocks(out);
    }

    /// [`Self::fill`] encrypting the counters where the words go, many blocks per call, so
    /// the cipher runs at its wide-vector speed (AES-128 at ~5 GB/s here instead of ~1 with
    /// eight blocks a call).
    #[cfg(target_endian = "little")]
    fn fill_in_place(&mut self, out: &mut [u64]) {
        const STEP: usize = 4096;
        let full = out.len() / 2;
        let (pairs, tail) = out.split_at_mut(2 * full);
        for chunk in pairs.chunks_mut(2 * STEP) {
            let n = chunk.len() / 2;
            for (k, w) in chunk.chunks_exact_mut(2).enumerate() {
                let c = self.counter + k as u128;
                w[0] = c as u64;
                w[1] = (c >> 64) as u64;
            }
            self.counter += n as u128;
            // SAFETY: `Array<u8, U16>` is a transparent 16-byte array (alignment 1); the
            // chunk holds exactly `n` such blocks of two little-endian words each, and no
            // other reference to it is used while this one lives.
            let blocks = unsafe {
                std::slice::from_raw_parts_mut(
                    chunk.as_mut_ptr() as *mut Array<u8, aes::cipher::consts::U16>,
                    n,
                )
            };
            self.cipher.encrypt_blocks(blocks);
        }
        if let [last] = tail {
            let mut b = Array::from(self.counter.to_le_bytes());
            self.counter += 1;
            self.cipher.encrypt_block(&mut b);
            *last = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        }
    }

    /// [`Self::fill`] a few blocks at a time through a staging array (any byte order).
    #[cfg_attr(target_endian = "little", allow(dead_code))]
    fn fill_blocks(&mut self, out: &mut [u64]) {
        let mut blocks = [Array::from([0u8; 16]); BATCH];
        for chunk in out.chunks_mut(2 * BATCH) {
            let nblocks = chunk.len().div_ceil(2);
            for b in blocks.iter_mut().take(nblocks) {
                *b = Array::from(self.counter.to_le_bytes());
                self.counter += 1;
            }
            self.cipher.encrypt_blocks(&mut blocks[..nblocks]);
            for (i, w) in chunk.iter_mut().enumerate() {
                let b = &blocks[i / 2];
                let off = (i % 2) * 8;
                *w = u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"));
            }
        }
    }

    /// `n` uniform words.
    pub fn words(&mut self, n: usize) -> Vec<u64> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }

    /// Uniform packed bits: `ceil(n/64)` words with the bits past `n` cleared.
    pub fn bits(&mut self, n: usize) -> Vec<u64> {
        let mut v = vec![0; n.div_ceil(64)];
        self.fill_bits(&mut v, n);
        v
    }

    /// Fills `out` (`ceil(n/64)` words) with uniform packed bits, clearing bits past `n`.
    /// Draws exactly what [`Prg::bits`] draws.
    pub fn fill_bits(&mut self, out: &mut [u64], n: usize) {
        self.fill(out);
        crate::bits::clear_tail(out, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_stream_aligned() {
        let mut a = Prg::new([7; 16]);
        let mut b = Prg::new([7; 16]);
        assert_eq!(a.words(5), b.words(5));
        assert_eq!(a.words(100), b.words(100));
        let mut c = Prg::new([8; 16]);
        assert_ne!(Prg::new([7; 16]).words(4), c.words(4));
    }

    #[test]
    fn the_fast_fill_draws_the_same_stream_as_the_block_by_block_one() {
        for n in [0, 1, 2, 3, 15, 16, 17, 8191, 8192, 8193, 20_001] {
            let (mut a, mut b) = (Prg::new([3; 16]), Prg::new([3; 16]));
            let (mut x, mut y) = (vec![0u64; n], vec![0u64; n]);
            a.fill(&mut x);
            b.fill_blocks(&mut y);
            assert_eq!(x, y, "{n} words");
            // And the streams stay aligned afterwards.
            assert_eq!(a.words(3), b.words(3));
        }
    }

    #[test]
    fn a_stream_drawn_shorter_is_the_start_of_the_same_stream_drawn_longer() {
        let mut a = Prg::new([5; 16]);
        a.at(false, 77, 1);
        let long = a.words(1001);
        a.words(3); // whatever came before does not matter after a seek
        a.at(false, 77, 1);
        assert_eq!(a.words(333), long[..333]);
        a.at(false, 77, 2);
        assert_ne!(a.words(4), long[..4]);
        a.at(true, 77, 1);
        assert_ne!(a.words(4), long[..4]);
        let mut b = Prg::new([5; 16]);
        b.at(false, 77, 1);
        let mut bits = vec![0; 2];
        b.fill_bits(&mut bits, 70);
        assert_eq!(bits[0], long[0]);
        assert_eq!(bits[1], long[1] & 0x3f);
    }

    #[test]
    fn roughly_uniform_bits() {
        let w = Prg::new([1; 16]).words(10_000);
        let ones: u32 = w.iter().map(|x| x.count_ones()).sum();
        let frac = ones as f64 / (64.0 * 10_000.0);
        assert!((frac - 0.5).abs() < 0.005, "{frac}");
    }
}
