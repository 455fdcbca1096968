//! Operators with no two-party form of their own, written with ones that have one when their
//! input is secret: `Pow` by a constant integer (products), `Clip` (max and min against its
//! bounds), `Abs` (through ReLU), `Where` on a condition the client holds (arithmetic), and a
//! softmax written out node by node (recognised as one softmax). Each output is compared with
//! the float reference.

mod common;

use common::onnx::{f32_tensor, i64_tensor, int_attr, ints_attr, model, node, value_info};
use std::collections::HashMap;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::frontend::onnx::{import_bytes, ImportOptions};
use veil_compiler::ir::Tensor;

const OUTPUTS: [&str; 5] = ["pow", "clip", "softmax", "abs", "where"];

/// x, z [4, 8] (the client's) → h = x·W (secret) → h^k, Clip(h, −0.5, 0.75),
/// exp(h − max h) / Σ exp(h − max h) along the last axis, |h|, and Where(z > 0, h, 0).
fn model_with_power(k: f32) -> Vec<u8> {
    let mut rng = veil_compiler::weights::SplitMix(11);
    let w = f32_tensor("w", &[8, 8], (0..64).map(|_| rng.normal() as f32 * 0.4).collect());
    let inits = vec![
        w,
        f32_tensor("k", &[], vec![k]),
        f32_tensor("lo", &[], vec![-0.5]),
        f32_tensor("hi", &[], vec![0.75]),
        f32_tensor("zero", &[], vec![0.0]),
        i64_tensor("last", &[1], vec![-1]),
    ];
    let keep = int_attr("keepdims", 1);
    let nodes = vec![
        node("MatMul", &["x", "w"], "h", vec![]),
        node("Pow", &["h", "k"], "pow", vec![]),
        node("Clip", &["h", "lo", "hi"], "clip", vec![]),
        node("ReduceMax", &["h"], "m", vec![ints_attr("axes", &[-1]), keep.clone()]),
        node("Sub", &["h", "m"], "d", vec![]),
        node("Exp", &["d"], "e", vec![]),
        node("ReduceSum", &["e", "last"], "s", vec![keep]),
        node("Div", &["e", "s"], "softmax", vec![]),
        node("Abs", &["h"], "abs", vec![]),
        // A condition only the client computes (from its own input): arithmetic selection.
        node("Greater", &["z", "zero"], "c", vec![]),
        node("Where", &["c", "h", "zero"], "where", vec![]),
    ];
    let outputs = OUTPUTS.iter().map(|n| value_info(n, &[4, 8])).collect();
    let inputs = vec![value_info("x", &[4, 8]), value_info("z", &[4, 8])];
    model("secret_ops", nodes, inputs, outputs, inits)
}

/// Compiles with the weight the server's and runs; per output (max error, max |reference|).
fn run(k: f32) -> Vec<(f64, f64)> {
    let mut g = import_bytes(&model_with_power(k), "ops.onnx", &ImportOptions::default()).unwrap();
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let mut rng = veil_compiler::weights::SplitMix(5);
    let mut draw = || Tensor::f32([4, 8], (0..32).map(|_| rng.normal() as f32).collect());
    let inputs = HashMap::from([("x".to_string(), draw()), ("z".to_string(), draw())]);
    let want = veil_compiler::eval::run(&g, &inputs).unwrap();
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let (_, outs) = common::run_compiled(&c, &inputs, false).unwrap();
    outs.iter()
        .zip(&want)
        .map(|((_, got), want)| {
            let (got, want) = (got.to_f64_vec(), want.to_f64_vec());
            (common::max_abs_diff(&got, &want), want.iter().fold(0f64, |m, v| m.max(v.abs())))
        })
        .collect()
}

#[test]
fn integer_powers_clip_and_a_written_out_softmax_run_two_party() {
    for k in [1.0, 2.0, 3.0, 5.0, 8.0] {
        // Compiling at all means each was rewritten: neither has a two-party lowering.
        let errs = run(k);
        for (name, (err, max)) in OUTPUTS.iter().zip(&errs) {
            // Products and comparisons are exact up to fixed-point truncation (2^-16 per
            // product, growing with the power's size); the softmax has the stdlib's error.
            let tol = match *name {
                "softmax" => 1e-2,
                "pow" => 1e-4 * max.max(1.0) * k as f64,
                _ => 1e-4,
            };
            assert!(*err <= tol, "k = {k}, {name}: max error {err:.3e} (max |y| {max:.3})");
        }
    }
}

#[test]
fn a_fractional_power_of_a_secret_is_refused_with_the_reason() {
    let mut g =
        import_bytes(&model_with_power(0.5), "ops.onnx", &ImportOptions::default()).unwrap();
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let Err(e) = compile(g, &|_| Vis::Server, &CompileOptions::default()) else {
        panic!("x^0.5 of a secret compiled")
    };
    let e = e.to_string();
    assert!(e.contains("node_pow") && e.contains("constant integer exponent from 1 to 8"), "{e}");
}
