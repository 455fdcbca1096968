//! Truncation error distribution over a million samples: the result is `x >> f` or one ulp
//! above it, never anything else, for every magnitude up to the documented limit |x| < 2^62.

mod common;
use common::*;
use veil_isa::Party;
use veil_vm::{run_session, PartyData, RunOptions, Values};

#[test]
fn truncation_error_is_at_most_one_ulp_over_a_million_samples() {
    let n: usize = 1 << 20;
    let mut rng = Rng(42);
    // Raw ring values at 2f fractional bits, spread over every magnitude up to 2^61.
    let raw: Vec<i64> = (0..n)
        .map(|i| {
            let bits = 1 + (i % 61) as u32;
            let mag = (rng.next() >> (64 - bits)) as i64;
            if rng.next() & 1 == 0 {
                mag
            } else {
                -mag
            }
        })
        .collect();
    let mut b = builder();
    let x = b.input("x", Party::Client, &[n as u32], 0);
    let t = b.trunc(x, F);
    b.output("t", t, Party::Client, &[n as u32], 0);
    let prog = b.finish();
    let c = PartyData { inputs: vec![("x".into(), Values::I64(raw.clone()))], weights: vec![] };
    let r = run_session(&prog, &c, &PartyData::default(), &RunOptions::default()).expect("runs");
    check_costs(&prog, &r);
    let got = &r.outputs[0].data;
    let mut hist = [0usize; 3];
    for (i, &g) in got.iter().enumerate() {
        let want = raw[i] >> F; // floor division by 2^16
        let err = g as i64 - want;
        assert!(err == 0 || err == 1, "sample {i}: x={} got {} want {want}", raw[i], g as i64);
        hist[err as usize] += 1;
    }
    // The +1 ulp event is the carry of the low bits (probability = low part / 2^f, about 1/2
    // on average); anything beyond 1 ulp never happens.
    let rate = hist[1] as f64 / n as f64;
    eprintln!(
        "truncation over {n} samples: exact {}, +1 ulp {} (rate {rate:.4}), beyond: 0",
        hist[0], hist[1]
    );
    assert!((0.45..0.55).contains(&rate), "carry rate {rate}");
}

#[test]
fn truncation_at_the_range_limit() {
    let vals: Vec<i64> = vec![
        (1 << 62) - 1,
        -(1 << 62) + 1,
        (1 << 61) + 12345,
        -(1 << 61) - 777,
        0,
        -1,
        1,
        65535,
        65536,
        -65536,
        -65537,
    ];
    let mut b = builder();
    let n = vals.len() as u32;
    let x = b.input("x", Party::Client, &[n], 0);
    let t = b.trunc(x, F);
    b.output("t", t, Party::Client, &[n], 0);
    let prog = b.finish();
    for _ in 0..50 {
        let c =
            PartyData { inputs: vec![("x".into(), Values::I64(vals.clone()))], weights: vec![] };
        let r =
            run_session(&prog, &c, &PartyData::default(), &RunOptions::default()).expect("runs");
        for (i, &g) in r.outputs[0].data.iter().enumerate() {
            let err = g as i64 - (vals[i] >> F);
            assert!(err == 0 || err == 1, "x={} err={err}", vals[i]);
        }
    }
}

#[test]
fn narrow_truncation_is_exact_up_to_one_ulp_below_its_bound() {
    let n: usize = 1 << 18;
    let mut rng = Rng(43);
    for w in [40u8, 48, 56] {
        let raw: Vec<i64> = (0..n)
            .map(|i| {
                let bits = 1 + (i % (w as usize - 3)) as u32;
                let mag = (rng.next() >> (64 - bits)) as i64;
                if rng.next() & 1 == 0 {
                    mag
                } else {
                    -mag
                }
            })
            .collect();
        let mut b = builder();
        let x = b.input("x", Party::Client, &[n as u32], 0);
        let m = b.masked_open_w(x, F, w);
        let t = b.to_share(&m);
        b.output("t", t, Party::Client, &[n as u32], 0);
        let prog = b.finish();
        let c = PartyData { inputs: vec![("x".into(), Values::I64(raw.clone()))], weights: vec![] };
        let r =
            run_session(&prog, &c, &PartyData::default(), &RunOptions::default()).expect("runs");
        check_costs(&prog, &r);
        for (i, &g) in r.outputs[0].data.iter().enumerate() {
            let err = g as i64 - (raw[i] >> F);
            assert!(err == 0 || err == 1, "w={w} x={} err={err}", raw[i]);
        }
    }
}
