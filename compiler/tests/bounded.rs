//! `bounded(x, b)` and the narrow openings it allows (`backend::bounds`): the stdlib functions
//! that promise a bound (exp_neg's base and powers, GELU's polynomial inside its interval, a
//! softmax probability, a normalised layer-norm row) open those values modulo `2^w` for the
//! smallest `w` that holds them. Checked two-party over each function's whole domain and at
//! its edges, with the cost predicted = measured (dealer bytes included: the dealer sends
//! only the low bits of the corrections a wrap factor multiplies), and with a negative control
//! showing that the promise is load-bearing: a value beyond its bound comes back wrong.

mod common;

use std::collections::HashMap;
use veil_compiler::backend::bounds::value_bounds;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions, Compiled};
use veil_compiler::dsl::{instantiate, stdlib_loader};
use veil_compiler::fixed::{simulate, SimOptions};
use veil_compiler::ir::{DType, Graph, Tensor, TensorType};

const ULP: f64 = 1.0 / 65536.0;

/// `body` on a secret `x` of `shape`, with the stdlib modules it uses imported.
fn graph(body: &str, shape: Vec<usize>) -> Graph {
    let imports = "import exp;\nimport gelu;\nimport softmax;\nimport layernorm;\n";
    common::dsl_body_graph(imports, body, shape)
}

/// Compiles and runs `body` two-party on `xs` (fixed dealer seeds), checks the predicted cost
/// against the measured one; returns the program, the two-party outputs and the fixed-point
/// simulator's (empty unless `sim`).
fn two_party(
    body: &str,
    shape: Vec<usize>,
    xs: &[f64],
    sim: bool,
) -> (Compiled, Vec<f64>, Vec<f64>) {
    let g = graph(body, shape.clone());
    let x = Tensor::f32(shape, xs.iter().map(|&v| v as f32).collect());
    let inputs = HashMap::from([("x".to_string(), x)]);
    let sim = match sim {
        true => simulate(&g, &inputs, &SimOptions::default()).unwrap()[0].to_f64_vec(),
        false => Vec::new(),
    };
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let opts =
        veil_vm::RunOptions { seeds: Some([[3; 16], [8; 16]]), ..veil_vm::RunOptions::default() };
    let (r, outs) = common::run_compiled_with(&c, &inputs, &opts).unwrap();
    common::assert_cost_predicted(&c, &r, body);
    (c, outs[0].1.to_f64_vec(), sim)
}

/// The widths of the program's openings, with the element count of each.
fn opening_widths(c: &Compiled) -> Vec<(u8, u32)> {
    let p = &c.program;
    p.body
        .iter()
        .filter_map(|i| match i {
            veil_isa::Instr::Open { a, bits, .. } => Some((*bits, p.buffers[a.0 as usize].len)),
            _ => None,
        })
        .collect()
}

/// The input as the program holds it: rounded to 16 fractional bits.
fn held(x: f64) -> f64 {
    (x as f32 as f64 * 65536.0).round() / 65536.0
}

fn erf(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 is too coarse for 1e-3 checks; integrate instead (Simpson).
    if x.abs() > 6.0 {
        return x.signum();
    }
    let n = 2000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

#[test]
fn exp_neg_opens_its_cubes_narrow_over_its_whole_domain() {
    // The domain is [-243, 0] (k = 5 cubes): the edges, one unit inside them, and a sweep.
    let mut xs = vec![0.0, -ULP, -2.0 * ULP, -1.0, -242.5, -243.0 + ULP, -243.0];
    xs.extend((0..249).map(|i| -(i as f64) * 243.0 / 248.0));
    let (c, got, sim) = two_party("exp_neg(x)", vec![xs.len()], &xs, true);
    let widths = opening_widths(&c);
    // The base in 35 bits; each cube before the last is opened at three times the scale,
    // truncated by two: 48 bits of fraction for a value in [0, 1], not 64.
    assert_eq!(widths.len(), 5, "the base and 4 cubes are opened: {widths:?}");
    assert!(widths.iter().all(|(w, _)| *w <= 52), "all narrow: {widths:?}");
    let mut worst = 0f64;
    for ((&x, &y), &s) in xs.iter().zip(&got).zip(&sim) {
        let want = held(x).exp();
        // The limit approximation's own error (stdlib table: 3.8e-3 on [-16, 0]) plus the
        // fixed point's; the simulator truncates by flooring where the VM's truncation is
        // random to one ulp, which 243 steps amplify to a few 1e-3.
        assert!((y - want).abs() <= 5e-3, "exp_neg({x}) = {y}, want {want}");
        assert!((y - s).abs() <= 5e-3, "exp_neg({x}) = {y}, simulated {s}");
        worst = worst.max((y - want).abs());
    }
    eprintln!("exp_neg: {} points, max abs err {worst:.2e}, openings {widths:?}", xs.len());
}

#[test]
fn gelu_discards_what_wraps_outside_its_interval() {
    // Inside [-t, t) (t = 4) v = x²/t² ≤ 1 is opened narrow; outside it is far larger and wraps
    // in the narrow ring, and the selection must discard it: far inputs are the check.
    let t = 4.0;
    let mut xs = vec![-t - ULP, -t, -t + ULP, t - ULP, t, t + ULP, 0.0, ULP, -ULP];
    for far in [4.5, 8.0, 16.0, 100.0, 1000.0, 8000.0, 16000.0] {
        xs.extend([far, -far]);
    }
    xs.extend((0..161).map(|i| -8.0 + i as f64 * 0.1));
    let (c, got, _) = two_party("gelu_erf_poly(x)", vec![xs.len()], &xs, false);
    let widths = opening_widths(&c);
    assert!(
        widths.iter().filter(|(w, _)| *w < 64).count() >= 4,
        "v, v², v³ and p open narrow: {widths:?}"
    );
    let mut worst = 0f64;
    for (&x, &y) in xs.iter().zip(&got) {
        let x = held(x);
        let want = gelu(x);
        // The polynomial's error (stdlib table: 9.2e-4) and the tail below -t (|GELU| ≤ 1.3e-4).
        let tol = 2e-3 + 2.0 * ULP * x.abs().max(1.0);
        assert!((y - want).abs() <= tol, "gelu({x}) = {y}, want {want}");
        worst = worst.max((y - want).abs());
    }
    eprintln!("gelu_erf_poly: {} points, max abs err {worst:.2e}, openings {widths:?}", xs.len());
}

#[test]
fn softmax_and_layernorm_at_their_bounds() {
    // Softmax: a row whose maximum dominates (one probability at the bound of 1) and a flat
    // row. Layer norm over 768: a row with one outlier, whose normalised value is √767, the
    // largest a row of 768 can have (the bound promised is 2√768).
    let n = 128;
    let mut xs = vec![-8.0; n];
    xs[5] = 8.0;
    xs.extend(vec![0.5; n]);
    let (_, got, _) = two_party("softmax_max(x)", vec![2, n], &xs, false);
    assert!((got[5] - 1.0).abs() < 2e-3, "dominant probability {}", got[5]);
    for &p in &got[n..] {
        assert!((p - 1.0 / n as f64).abs() < 2e-4, "flat row probability {p}");
    }
    let d = 768;
    let mut xs = vec![0.0; d];
    xs[0] = 100.0;
    xs.extend((0..d).map(|i| ((i * 37 % 101) as f64 - 50.0) / 10.0));
    let body = "layernorm_poly(x, 1.0, 0.0)";
    let (_, got, _) = two_party(body, vec![2, d], &xs, false);
    for r in 0..2 {
        let row: Vec<f64> = xs[r * d..(r + 1) * d].iter().map(|&v| held(v)).collect();
        let mu = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
        for i in 0..d {
            let want = (row[i] - mu) / (var + 1e-5).sqrt();
            let y = got[r * d + i];
            assert!((y - want).abs() <= 1e-2 * want.abs().max(1.0), "row {r}[{i}]: {y} vs {want}");
        }
    }
    assert!((got[0] - 767f64.sqrt()).abs() < 0.2, "the outlier at the bound: {}", got[0]);
}

#[test]
fn a_value_beyond_its_promised_bound_comes_back_wrong() {
    // The negative control: the promise decides the width. |x| ≤ 1 holds for 0.5 and is
    // broken by 100: the square of 0.5 is right, the square of 100 is not (it wrapped modulo
    // the narrow ring), while the same square with no promise is right for both.
    let xs = [0.5, 100.0];
    let (c, got, _) = two_party("bounded(x, 1.0) * bounded(x, 1.0)", vec![2], &xs, false);
    assert!(opening_widths(&c).iter().any(|(w, _)| *w < 64));
    assert!((got[0] - 0.25).abs() < 1e-3, "in bound: {}", got[0]);
    assert!((got[1] - 1e4).abs() > 1.0, "beyond the bound the result wraps: {}", got[1]);
    let (c, got, _) = two_party("x * x", vec![2], &xs, false);
    assert!(opening_widths(&c).iter().all(|(w, _)| *w == 64));
    assert!((got[1] - 1e4).abs() < 1e-3, "no promise, no narrowing: {}", got[1]);
}

#[test]
fn bounds_follow_the_arithmetic_and_stop_where_unknown() {
    let g =
        graph("let y = bounded(x, 2.0); let z = y * y + 1.0; let u = x * y; z - 0.5 * z", vec![4]);
    let b = value_bounds(&g, None);
    let by_name = |n: &str| {
        let v = g.values.iter().find(|(_, vd)| vd.name.ends_with(n)).map(|(v, _)| v);
        v.and_then(|v| b.get(&v).copied())
    };
    let out = b.get(&g.outputs[0]).copied();
    // z ≤ 5, z - 0.5·z bounded by 5 + 2.5.
    assert_eq!(out, Some(7.5), "{b:?}");
    assert_eq!(by_name("u"), None, "x has no bound, so x·y has none");
}

#[test]
fn bounded_refuses_a_bound_that_is_not_a_positive_number() {
    for bad in ["0.0", "-1.0"] {
        let mut l = stdlib_loader();
        let src = format!("fn f(x) {{ bounded(x, {bad}) }}\n");
        l.load_source("bad.veil", src).unwrap();
        let mut g = Graph::new("bad");
        let x = g.add_input("x", TensorType::new(DType::F32, vec![2]));
        let e = instantiate(&l, "f", &mut g, &[x], &[], "f").unwrap_err().to_string();
        assert!(e.contains("bounded") && e.contains("positive"), "{e}");
    }
}
