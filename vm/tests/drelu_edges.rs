//! DReLU just above its ignored low bits: the comparison skips the lowest `ignore` bits of
//! the masked value and promises the exact sign whenever `2^ignore ≤ |x|` ring units (and
//! `-2^(bits-1) ≤ x ≤ 2^(bits-1) - 2^ignore`). These are the inputs where that promise is
//! tight: `±2^ignore` and one ulp either side, values with every bit below a digit boundary
//! set or clear, and the largest magnitudes allowed, each repeated so that many fresh masks
//! meet them, for every parameter set the builder uses.

mod common;
use common::*;
use veil_isa::builder::CompareParams;
use veil_isa::Party;
use veil_vm::{run_session, PartyData, RunOptions, Values};

/// Ring values (integers) at the edges of `p`'s exact range: `2^ignore ≤ |x|`, and
/// `-2^(n-1) ≤ x ≤ 2^(n-1) - 2^ignore` for the comparison width `n` (a value less than
/// `2^ignore` below the top also has its lowest digits ignored, and reads as negative).
fn edges(p: CompareParams, width: u8) -> Vec<i64> {
    let top = (p.bits.min(width) - 1) as u32;
    let lo = p.ignore as u32;
    let mut mags: Vec<i64> = Vec::new();
    let mut boundary = lo;
    while boundary <= top {
        let b = 1i64 << boundary;
        mags.extend([
            b - 1,
            b,
            b + 1,
            2 * b - 1,
            b | (b >> 1).max(1),
            b + (1 << lo),
            b - (1 << lo),
        ]);
        boundary += p.digit as u32;
    }
    mags.extend([1i64 << top, (1i64 << top) - (1 << lo), 1i64 << lo, (1i64 << lo) + 1]);
    if lo > 0 {
        mags.push((1i64 << (lo + 1)) - 1);
    }
    let (min, max_pos, max_neg) = (1i64 << lo, (1i64 << top) - (1 << lo), 1i64 << top);
    let mut v: Vec<i64> = mags
        .iter()
        .filter(|&&m| (min..=max_pos).contains(&m))
        .copied()
        .chain(mags.iter().filter(|&&m| (min..=max_neg).contains(&m)).map(|&m| -m))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Checks `drelu` at the edges of `p` after an opening of `width` bits (64: the whole ring).
fn check(p: CompareParams, width: u8) {
    let edges = edges(p, width);
    let copies = 24;
    let xs: Vec<i64> = edges.iter().flat_map(|&k| std::iter::repeat_n(k, copies)).collect();
    let n = xs.len() as u32;
    let mut b = builder();
    b.compare = p;
    let x = b.input("x", Party::Client, &[n], 0);
    let m = if width == 64 { b.masked_open(x, 0) } else { b.masked_open_w(x, 0, width) };
    let bit = b.drelu(&m, 0);
    let bit = b.b2a(bit);
    b.output("bit", bit, Party::Client, &[n], 0);
    let prog = b.finish();
    veil_isa::verify(&prog).unwrap();
    for run_no in 0..3 {
        // As integers: the largest magnitudes (2^57) are beyond what an f64 input may carry.
        let client =
            PartyData { inputs: vec![("x".into(), Values::I64(xs.clone()))], weights: vec![] };
        let opts = RunOptions { tcp: run_no == 0, ..RunOptions::default() };
        let r = run_session(&prog, &client, &PartyData::default(), &opts).expect("session runs");
        check_costs(&prog, &r);
        let got = out(&r, "bit");
        for (i, &k) in xs.iter().enumerate() {
            assert_eq!(got[i], (k >= 0) as u8 as f64, "drelu({k}) with {p:?}, {width}-bit opening");
        }
    }
}

#[test]
fn drelu_is_exact_just_above_the_ignored_bits() {
    let b = builder();
    // The builder's own: comparisons, maxima (softmax, argmax tournaments), pruning, positions.
    for p in [
        b.compare,
        b.max_compare,
        CompareParams { bits: 58, ignore: 8, digit: 4 },
        CompareParams { bits: 2 * F + 14, ignore: F, digit: 5 },
    ] {
        check(p, 64);
    }
    // Narrow openings: the comparison runs on w bits, exact for |x| < 2^(w-2).
    check(CompareParams { bits: 17, ignore: 0, digit: 4 }, 17);
    check(CompareParams { bits: 36, ignore: 8, digit: 4 }, 32);
}
