//! The octave functions (`stdlib/dsl/octave.veil`): square root, inverse square root and
//! reciprocal of secrets over the whole positive fixed-point range, checked two-party at the
//! edges (the smallest positive value, the largest, powers of two and their neighbours, the
//! comparison thresholds), at zero and below it, and for their cost; and the default lowering
//! using them for `Sqrt`, `Reciprocal`, a division by a secret and `a / √s`.

mod common;

use common::onnx::{model, node, value_info};
use std::collections::HashMap;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::fixed::{simulate, SimOptions};
use veil_compiler::frontend::onnx::{import_bytes, ImportOptions};
use veil_compiler::ir::Tensor;
use veil_compiler::stdlib_table::function_graph;

const ULP: f64 = 1.0 / 65536.0;

/// The edge points: 1..4 units, every power of two from 2^-16 to 2^18 with its neighbours
/// (one fixed-point unit, or two f32 units where that is coarser), the octave thresholds
/// 0.75·4^j and their neighbours, and the largest value below 2^19.
fn edges() -> Vec<f64> {
    let mut xs = vec![ULP, 2.0 * ULP, 3.0 * ULP, 4.0 * ULP, 524287.0];
    for k in -16..=18 {
        let p = 2f64.powi(k);
        let d = ULP.max(p * 2f64.powi(-22));
        xs.extend([p - d, p, p + d]);
    }
    for j in -8..=9 {
        let t = 0.75 * 4f64.powi(j);
        let d = ULP.max(t * 2f64.powi(-22));
        xs.extend([t - d, t, t + d]);
    }
    xs.retain(|&x| x >= ULP);
    xs
}

struct Case {
    name: &'static str,
    f: fn(f64) -> f64,
}

const CASES: &[Case] = &[
    Case { name: "rsqrt_octave", f: |x| 1.0 / x.sqrt() },
    Case { name: "sqrt_octave", f: f64::sqrt },
    Case { name: "recip_octave", f: |x| 1.0 / x },
];

fn stdfn(name: &str) -> &'static veil_stdlib::StdFn {
    veil_stdlib::ALL.iter().find(|f| f.name == name).expect("listed")
}

/// `name` on `xs` two-party (fixed dealer seeds), after checking the predicted cost against
/// the measured one; returns the outputs and the bytes both parties sent per element.
fn two_party(name: &str, xs: &[f64]) -> (Vec<f64>, Vec<f64>, f64, u64) {
    let g = function_graph(stdfn(name), vec![xs.len()]).unwrap();
    let x = Tensor::f32([xs.len()], xs.iter().map(|&v| v as f32).collect());
    let inputs = HashMap::from([("x".to_string(), x)]);
    let sim = simulate(&g, &inputs, &SimOptions::default()).unwrap()[0].to_f64_vec();
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let opts =
        veil_vm::RunOptions { seeds: Some([[5; 16], [9; 16]]), ..veil_vm::RunOptions::default() };
    let (r, outs) = common::run_compiled_with(&c, &inputs, &opts).unwrap();
    common::assert_cost_predicted(&c, &r, name);
    let pc = veil_isa::cost::program_cost(&c.program);
    let bytes = (pc.body.sent[0] + pc.body.sent[1]) as f64 / xs.len() as f64;
    (outs[0].1.to_f64_vec(), sim, bytes, pc.body.rounds)
}

#[test]
fn octave_functions_are_accurate_at_every_edge_of_the_domain() {
    let xs = edges();
    for case in CASES {
        let (got, sim, bytes, rounds) = two_party(case.name, &xs);
        let (mut worst_rel, mut worst_abs) = (0f64, 0f64);
        for ((&x, &y), &s) in xs.iter().zip(&got).zip(&sim) {
            // Against the input as the program holds it (rounded to 16 fractional bits): the
            // input's own rounding is not the function's error.
            let x = (x as f32 as f64 * 65536.0).round() / 65536.0;
            let want = (case.f)(x);
            let err = (y - want).abs();
            // Relative to the result, plus the output's own resolution: a few units of 2^-16
            // (a result below 2^-16, 1/x for x > 2^16, can only be 0 or one unit).
            let bound = 2e-3 * want.abs() + 4.0 * ULP;
            assert!(err <= bound, "{}({x}) = {y} (simulated {s}), want {want}", case.name);
            worst_abs = worst_abs.max(err);
            if want.abs() >= 1.0 / 64.0 {
                worst_rel = worst_rel.max(err / want.abs());
            }
        }
        eprintln!(
            "{}: {} edge points, max abs err {worst_abs:.2e}, max rel err {worst_rel:.2e}; \
             {bytes:.0} B/elem, {rounds} rounds",
            case.name,
            xs.len()
        );
    }
}

#[test]
fn octave_functions_return_zero_at_and_below_zero() {
    let xs = [0.0, -ULP, -0.001, -0.0078125, -0.01, -1.0, -1000.0, -250000.0];
    for case in CASES {
        let (got, sim, ..) = two_party(case.name, &xs);
        for ((x, y), s) in xs.iter().zip(&got).zip(&sim) {
            assert!(y.abs() <= ULP && s.abs() <= ULP, "{}({x}) = {y} (simulated {s})", case.name);
        }
    }
}

/// x [2, 8] (the client's) times a server weight, then on the result: `Sqrt`, `Reciprocal`,
/// `Reciprocal(Sqrt(y))` (`torch.rsqrt`), `y / ReduceSum(y²)` or `y / √ReduceSum(y²)`.
fn secret_model(kind: &str) -> Vec<u8> {
    let w = veil_onnx_proto::TensorProto {
        name: Some("w".into()),
        dims: vec![8],
        data_type: Some(veil_onnx_proto::tensor_proto::DataType::Float as i32),
        float_data: (0..8).map(|i| 0.5 + 0.25 * i as f32).collect(),
        ..Default::default()
    };
    let axes = veil_onnx_proto::TensorProto {
        name: Some("axes".into()),
        dims: vec![1],
        data_type: Some(veil_onnx_proto::tensor_proto::DataType::Int64 as i32),
        int64_data: vec![1],
        ..Default::default()
    };
    let mut nodes = vec![node("Mul", &["x", "w"], "y", vec![])];
    let out = [2, 8];
    match kind {
        "Sqrt" | "Reciprocal" => nodes.push(node(kind, &["y"], "z", vec![])),
        "rsqrt" => {
            nodes.push(node("Sqrt", &["y"], "r", vec![]));
            nodes.push(node("Reciprocal", &["r"], "z", vec![]));
        }
        _ => {
            nodes.push(node("Mul", &["y", "y"], "y2", vec![]));
            nodes.push(node("ReduceSum", &["y2", "axes"], "s", vec![]));
            let d = if kind == "div" {
                "s"
            } else {
                nodes.push(node("Sqrt", &["s"], "n", vec![]));
                "n"
            };
            nodes.push(node("Div", &["y", d], "z", vec![]));
        }
    }
    model(
        "octave",
        nodes,
        vec![value_info("x", &[2, 8])],
        vec![value_info("z", &out)],
        vec![w, axes],
    )
}

#[test]
fn the_default_lowering_uses_the_octave_functions_where_no_range_is_known() {
    let mut rng = veil_compiler::weights::SplitMix(3);
    let x = Tensor::f32([2, 8], (0..16).map(|_| 0.05 + 3.0 * rng.normal().abs() as f32).collect());
    let inputs = HashMap::from([("x".to_string(), x)]);
    for (kind, func) in [
        ("Sqrt", "sqrt_octave"),
        ("Reciprocal", "recip_octave"),
        ("div", "recip_octave"),
        ("div_sqrt", "rsqrt_octave"),
        ("rsqrt", "rsqrt_octave"),
    ] {
        let mut g = import_bytes(&secret_model(kind), "octave.onnx", &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
        let want = veil_compiler::eval::run(&g, &inputs).unwrap()[0].to_f64_vec();
        let c = compile(g, &|_| Vis::Server, &CompileOptions::default())
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let with: Vec<&str> = c.approximations.iter().map(|a| a.with.as_str()).collect();
        assert_eq!(with, [format!("stdlib {func}")], "{kind}");
        let (_, outs) = common::run_compiled(&c, &inputs, false).unwrap();
        let got = outs[0].1.to_f64_vec();
        let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = common::max_abs_diff(&got, &want);
        eprintln!("{kind} → {func}: max abs err {err:.2e} of max |z| {max:.3}");
        assert!(err <= 2e-3 * max, "{kind}: {err} > 2e-3 × {max}");
    }
}
