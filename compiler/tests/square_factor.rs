//! `x·(z·z)` with the square read by that product only and the product by sums: the lowering
//! multiplies `x` by `z²` from the openings of `x` and `z` (`mul_square_masked`), where opening
//! the square would take a round of its own. Checked two-party against plaintext with
//! untruncated, truncating and narrow openings (each wrap term of the mask expansion) and
//! against the cost model; then the layer norm it serves (`rsqrt_poly_times`) over its whole
//! variance range.

mod common;

use std::collections::HashMap;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions, Compiled};
use veil_compiler::ir::Tensor;
use veil_isa::cost::program_cost;

/// `body` (a DSL expression in `x`, with `rsqrt` and `layernorm` imported) on a secret `x` of
/// `shape`, compiled and run two-party with fixed dealer seeds; the cost model checked against
/// the run.
fn two_party(body: &str, shape: Vec<usize>, xs: &[f64], seed: u8) -> (Compiled, Vec<f64>) {
    let g = common::dsl_body_graph("import rsqrt;\nimport layernorm;\n", body, shape.clone());
    let x = Tensor::f32(shape, xs.iter().map(|&v| v as f32).collect());
    let inputs = HashMap::from([("x".to_string(), x)]);
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let opts = veil_vm::RunOptions {
        seeds: Some([[seed; 16], [seed ^ 0x5a; 16]]),
        ..veil_vm::RunOptions::default()
    };
    let (r, outs) = common::run_compiled_with(&c, &inputs, &opts).unwrap();
    common::assert_cost_predicted(&c, &r, body);
    (c, outs[0].1.to_f64_vec())
}

/// `x` as the program holds it (16 fractional bits).
fn held(x: f64) -> f64 {
    (x * 65536.0).round() / 65536.0
}

fn rounds(c: &Compiled) -> u64 {
    program_cost(&c.program).body.rounds
}

#[test]
fn a_product_with_a_square_is_right_for_every_kind_of_opening() {
    let xs: Vec<f64> = (-400..=400).map(|k| k as f64 / 97.0).collect();
    // (body, plaintext, whose opening wraps, rounds: the openings and the reveal, none for z²)
    type Case = (&'static str, fn(f64) -> f64, &'static str, u64);
    let cases: &[Case] = &[
        (
            "let z = x - 1.0; (x + 0.5) * (z * z) + 1.0",
            |x| (x + 0.5) * (x - 1.0).powi(2) + 1.0,
            "none",
            2,
        ),
        (
            "let z = x - 1.0; (x * x) * (z * z) + 1.0",
            |x| (x * x) * (x - 1.0).powi(2) + 1.0,
            "x's",
            3,
        ),
        (
            "let z = x * 0.5; (x + 0.5) * (z * z) + 1.0",
            |x| (x + 0.5) * (x * 0.5).powi(2) + 1.0,
            "z's",
            2,
        ),
        (
            "let z = x * 0.25; (z + 0.5) * (z * z) + 1.0",
            |x| (x * 0.25 + 0.5) * (x * 0.25).powi(2) + 1.0,
            "both",
            2,
        ),
        (
            "let z = bounded(x * 0.3, 2.0); bounded(x * 0.5, 4.0) * (z * z) + 1.0",
            |x| (x * 0.5) * (x * 0.3f32 as f64).powi(2) + 1.0,
            "both, narrow",
            2,
        ),
    ];
    for (seed, (body, want, what, r)) in cases.iter().enumerate() {
        let (c, got) = two_party(body, vec![xs.len()], &xs, seed as u8 + 1);
        let worst = xs
            .iter()
            .zip(&got)
            .map(|(&x, &y)| (y - want(held(x))).abs() / want(held(x)).abs().max(1.0))
            .fold(0.0, f64::max);
        assert!(worst < 2e-4, "{body} ({what}): worst error {worst:.3e}");
        assert_eq!(rounds(&c), *r, "{body}: the square is not opened");
    }
    // The negative controls: a square read twice, or a product read by anything but sums (here
    // the output), is opened as before: a round more.
    let (c, _) =
        two_party("let z = x - 1.0; let q = z * z; (x + 0.5) * q + q", vec![4], &[0.5; 4], 9);
    assert_eq!(rounds(&c), 3);
    let (c, _) = two_party("let z = x - 1.0; (x + 0.5) * (z * z)", vec![4], &[0.5; 4], 9);
    assert_eq!(rounds(&c), 3);
}

#[test]
fn the_polynomial_rsqrt_holds_over_its_domain_at_any_input_scale() {
    // x itself (16 fractional bits) and x as a variance arrives at 48 (a square times a
    // non-power-of-two constant): the lift by 4^k before the comparisons must not overflow.
    let xs: Vec<f64> = (0..240).map(|k| 0.001 * 1.05f64.powi(k)).collect();
    let (_, got) = two_party("rsqrt_poly(x)", vec![xs.len()], &xs, 3);
    for (&x, &y) in xs.iter().zip(&got) {
        let want = 1.0 / held(x).sqrt();
        // Truncated to 16 bits on its own: 2^-16 absolute; the cubic's 3.5e-6 relative, more at
        // the bottom of the domain, where a comparison's 2^-8 is a coarser fraction of x.
        assert!((y - want).abs() <= 2e-5 * want + 4e-5, "x = {x}: {y} against {want}");
    }
    let roots: Vec<f64> = xs.iter().map(|x| (x / 0.3).sqrt()).collect();
    let (_, got) = two_party("rsqrt_poly(x * x * 0.3)", vec![xs.len()], &roots, 4);
    for (&r, &y) in roots.iter().zip(&got) {
        let want = 1.0 / (held(r) * held(r) * 0.3f32 as f64).sqrt();
        assert!((y - want).abs() <= 1e-4 * want + 4e-5, "x = {}: {y} against {want}", r * r * 0.3);
    }
}

#[test]
fn a_layer_norm_is_right_over_its_whole_variance_range() {
    // One outlier per row of 768: variance from 1.3e-3 to 1.0e3 (the domain is [2^-10, 4096]).
    // Before the lift became a relabel, rows above a variance of 256 came back as garbage.
    let d = 768;
    let peaks = [1.0, 10.0, 100.0, 300.0, 600.0, 876.0];
    let xs: Vec<f64> =
        peaks.iter().flat_map(|&p| (0..d).map(move |i| if i == 0 { p } else { 0.0 })).collect();
    let (c, got) = two_party("layernorm_poly(x, 1.0, 0.0)", vec![peaks.len(), d], &xs, 5);
    for (r, &p) in peaks.iter().enumerate() {
        let row: Vec<f64> = xs[r * d..(r + 1) * d].iter().map(|&v| held(v)).collect();
        let mu = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
        for (i, &v) in row.iter().enumerate() {
            let want = (v - mu) / (var + 1e-5).sqrt();
            let y = got[r * d + i];
            assert!(
                (y - want).abs() <= 4e-3 * want.abs().max(1.0),
                "peak {p} [{i}]: {y} vs {want}"
            );
        }
    }
    eprintln!("layer norm: {} rounds", rounds(&c));
}
