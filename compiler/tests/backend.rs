//! The backend end to end on small graphs: partition, stdlib lowering, bytecode, a two-party
//! run in memory, and outputs against closed-form references.

use veil_compiler::backend::lower::{lower, LowerOptions};
use veil_compiler::backend::nonlinear::stdlib_loader;
use veil_compiler::backend::partition::{analyze, Vis};
use veil_compiler::ir::*;
use veil_vm::{run_session, PartyData, RunOptions, Values};

fn rnd(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

/// Compiles `g` (inputs the client's, weights the server's), runs it two-party, and checks that
/// the measured bytes and rounds equal the prediction.
fn run(g: &Graph, inputs: Vec<(&str, Vec<f32>)>) -> Vec<Vec<f64>> {
    let part = analyze(g, &|_| Vis::Server);
    let l = lower(g, &part, &LowerOptions::default()).unwrap();
    let prog = l.builder.finish();
    veil_isa::validate(&prog).unwrap();
    let mut weights = vec![];
    for (name, v) in &l.server_feeds {
        if let ValueDef::Weight(t) = &g.values[*v].def {
            weights.push((name.clone(), Values::F32(t.as_f32().unwrap().to_vec())));
        }
    }
    let c = PartyData {
        inputs: inputs.into_iter().map(|(n, v)| (n.to_string(), Values::F32(v))).collect(),
        weights: vec![],
    };
    let s = PartyData { weights, inputs: vec![] };
    let r = run_session(&prog, &c, &s, &RunOptions::default()).unwrap();
    let pc = veil_isa::cost::program_cost(&prog);
    assert_eq!(r.client.body.rounds, pc.body.rounds);
    assert_eq!(r.client.body.sent + r.server.body.sent, pc.body.online());
    r.outputs.iter().map(|o| o.data.clone()).collect()
}

#[test]
fn linear_layer_relu_and_products() {
    let mut g = Graph::new("t");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![4, 8]));
    let wv = rnd(24, 1, 0.5);
    let bv = rnd(3, 2, 0.5);
    let w = g.add_weight("w", Tensor::f32(vec![8, 3], wv.clone()));
    let b = g.add_weight("b", Tensor::f32(vec![3], bv.clone()));
    let mm = g.add_node("mm", Op::MatMul, &[x, w], "mm").unwrap();
    let add = g.add_node("add", Op::Add, &[mm, b], "add").unwrap();
    let r = g.add_node("relu", Op::Relu, &[add], "r").unwrap();
    let half = g.add_const("half", Tensor::scalar_f32(0.5));
    let m = g.add_node("mul", Op::Mul, &[r, half], "m").unwrap();
    let sq = g.add_node("sq", Op::Mul, &[m, m], "sq").unwrap();
    g.outputs = vec![m, sq];
    let xv = rnd(32, 3, 2.0);
    let out = run(&g, vec![("x", xv.clone())]);
    for i in 0..4 {
        for j in 0..3 {
            let mut s = bv[j] as f64;
            for p in 0..8 {
                s += xv[i * 8 + p] as f64 * wv[p * 3 + j] as f64;
            }
            let want = s.max(0.0) * 0.5;
            assert!((out[0][i * 3 + j] - want).abs() < 1e-3, "{} vs {want}", out[0][i * 3 + j]);
            assert!((out[1][i * 3 + j] - want * want).abs() < 2e-3);
        }
    }
}

/// `f(x · 1)` with the weight making `x` secret-shared, `f` a stdlib function.
fn stdlib_graph(fname: &str, n: usize) -> Graph {
    let l = stdlib_loader();
    let mut g = Graph::new("t");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![n]));
    let w = g.add_weight("w", Tensor::f32(vec![n], vec![1.0; n]));
    let xs = g.add_node("scale", Op::Mul, &[x, w], "xs").unwrap();
    let y = veil_compiler::dsl::instantiate(&l, fname, &mut g, &[xs], &[], fname).unwrap();
    g.outputs = vec![y];
    g
}

#[test]
fn stdlib_approximations_two_party() {
    // (function, domain, reference, error bound, relative?)
    type Case = (&'static str, f32, f32, fn(f64) -> f64, f64, bool);
    let cases: [Case; 6] = [
        (
            "gelu_erf_poly",
            -8.0,
            8.0,
            |x| 0.5 * x * (1.0 + veil_stdlib::erf(x / std::f64::consts::SQRT_2)),
            2e-3,
            false,
        ),
        // (1 + x/243)^243: the base's rounding is amplified 243×, and a truncating opening is
        // within 1.5 ulp (it drops the bits it truncates and the carry out of them), so
        // 243 · 1.5 · 2^-16 = 5.6e-3 at worst; measured up to 4.6e-3 (3.8e-3 simulated).
        ("exp_neg", -16.0, 0.0, f64::exp, 5e-3, false),
        ("recip_newton", 1.0, 128.0, |x| 1.0 / x, 5e-3, true),
        ("rsqrt_newton", 0.01, 4000.0, |x| 1.0 / x.sqrt(), 1e-3, true),
        // Just below the domain's low end (a layer norm's quietest rows): the first guess's
        // lowest bucket still holds there, so the first Newton step must too (5.5e-3).
        ("rsqrt_newton", 0.0008, 0.000975, |x| 1.0 / x.sqrt(), 1e-2, true),
        ("smu1_newton", -8.0, 8.0, |x| (x + (x * x + 1.0).sqrt()) / 2.0, 2e-3, false),
    ];
    for (name, lo, hi, f, bound, rel) in cases {
        let n = 1024;
        let g = stdlib_graph(name, n);
        let xv: Vec<f32> = (0..n).map(|i| lo + (hi - lo) * i as f32 / n as f32).collect();
        let out = run(&g, vec![("x", xv.clone())]);
        let mut worst: f64 = 0.0;
        for (i, &x) in xv.iter().enumerate() {
            let want = f(x as f64);
            let e = (out[0][i] - want).abs();
            worst = worst.max(if rel { e / want.abs() } else { e });
        }
        assert!(worst < bound, "{name}: error {worst:.2e} above {bound:.0e}");
    }
}
