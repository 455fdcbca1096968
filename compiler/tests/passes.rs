//! Pattern recognition on hand-built graphs: each recogniser fuses its pattern in every
//! written form, keeps the function (checked with the evaluator), and leaves near-misses alone.

use std::collections::HashMap;
use veil_compiler::ir::*;
use veil_compiler::passes::{import_pipeline, run, FuseGelu, FuseLayerNorm, FuseSmu1, Pass};

fn c(g: &mut Graph, x: f32) -> Value {
    let n = format!("c{}", g.values.len());
    g.add_const(&n, Tensor::scalar_f32(x))
}

fn node(g: &mut Graph, op: Op, args: &[Value]) -> Value {
    let n = format!("n{}", g.nodes.len());
    g.add_node(&n, op, args, &n).unwrap()
}

fn input(g: &mut Graph, shape: &[usize]) -> Value {
    g.add_input("x", TensorType::new(DType::F32, shape.to_vec()))
}

fn sample(n: usize) -> Tensor {
    Tensor::f32(vec![n], (0..n).map(|i| -6.0 + 12.0 * i as f32 / n as f32).collect())
}

/// Fuses with `pass`, checks the op count dropped to `expect_ops`, and that the function is
/// unchanged on sample inputs.
fn fuse_and_check(mut g: Graph, pass: &mut dyn Pass, expect_op: &str) -> Graph {
    let before = g.clone();
    let n = pass.run(&mut g);
    g.remove_dead_nodes();
    verify(&g).unwrap();
    assert_eq!(n, 1, "{} should fuse once", pass.name());
    assert!(g.order.iter().any(|&n| g.nodes[n].op.name() == expect_op));
    let x = sample(before.ty(before.inputs[0]).numel());
    let x = Tensor { shape: before.ty(before.inputs[0]).shape.clone(), ..x };
    let inputs: HashMap<String, Tensor> = [("x".to_string(), x)].into_iter().collect();
    let (a, b) = (
        veil_compiler::eval::run(&before, &inputs).unwrap(),
        veil_compiler::eval::run(&g, &inputs).unwrap(),
    );
    for (p, q) in a[0].to_f64_vec().iter().zip(b[0].to_f64_vec()) {
        assert!((p - q).abs() < 2e-5 * (1.0 + p.abs()), "{p} vs {q}");
    }
    g
}

#[test]
fn gelu_erf_in_every_grouping() {
    for grouping in 0..3 {
        let mut g = Graph::new("t");
        let x = input(&mut g, &[64]);
        let s2 = c(&mut g, std::f32::consts::SQRT_2);
        let d = node(&mut g, Op::Div, &[x, s2]);
        let e = node(&mut g, Op::Erf, &[d]);
        let one = c(&mut g, 1.0);
        let s = node(&mut g, Op::Add, &[one, e]);
        let half = c(&mut g, 0.5);
        let y = match grouping {
            0 => {
                let t = node(&mut g, Op::Mul, &[half, s]);
                node(&mut g, Op::Mul, &[x, t])
            }
            1 => {
                let t = node(&mut g, Op::Mul, &[x, s]);
                node(&mut g, Op::Mul, &[t, half])
            }
            _ => {
                let t = node(&mut g, Op::Mul, &[x, half]);
                node(&mut g, Op::Mul, &[t, s])
            }
        };
        g.outputs = vec![y];
        let g = fuse_and_check(g, &mut FuseGelu, "gelu");
        assert_eq!(g.order.len(), 1);
    }
}

#[test]
fn gelu_tanh_form_with_pow_and_with_products() {
    for use_pow in [true, false] {
        let mut g = Graph::new("t");
        let x = input(&mut g, &[64]);
        let cube = if use_pow {
            let three = c(&mut g, 3.0);
            node(&mut g, Op::Pow, &[x, three])
        } else {
            let sq = node(&mut g, Op::Mul, &[x, x]);
            node(&mut g, Op::Mul, &[sq, x])
        };
        let k1 = c(&mut g, 0.044715);
        let m2 = node(&mut g, Op::Mul, &[cube, k1]);
        let inner = node(&mut g, Op::Add, &[x, m2]);
        let k2 = c(&mut g, 0.797_884_6);
        let m3 = node(&mut g, Op::Mul, &[inner, k2]);
        let t = node(&mut g, Op::Tanh, &[m3]);
        let one = c(&mut g, 1.0);
        let s = node(&mut g, Op::Add, &[t, one]);
        let half = c(&mut g, 0.5);
        let hx = node(&mut g, Op::Mul, &[x, half]);
        let y = node(&mut g, Op::Mul, &[hx, s]);
        g.outputs = vec![y];
        fuse_and_check(g, &mut FuseGelu, "gelu");
    }
}

#[test]
fn gelu_near_misses_are_left_alone() {
    // Wrong constant inside erf, and an intermediate used elsewhere.
    for case in 0..2 {
        let mut g = Graph::new("t");
        let x = input(&mut g, &[8]);
        let k = c(&mut g, if case == 0 { 1.5 } else { std::f32::consts::SQRT_2 });
        let d = node(&mut g, Op::Div, &[x, k]);
        let e = node(&mut g, Op::Erf, &[d]);
        let one = c(&mut g, 1.0);
        let s = node(&mut g, Op::Add, &[e, one]);
        let half = c(&mut g, 0.5);
        let t = node(&mut g, Op::Mul, &[half, s]);
        let y = node(&mut g, Op::Mul, &[x, t]);
        g.outputs = if case == 1 { vec![y, e] } else { vec![y] };
        assert_eq!(FuseGelu.run(&mut g), 0, "case {case}");
    }
}

fn layer_norm_graph(with_pow: bool, affine: bool) -> Graph {
    let mut g = Graph::new("t");
    let x = input(&mut g, &[4, 16]);
    let mean = node(&mut g, Op::ReduceMean { axes: vec![1], keepdims: true }, &[x]);
    let d = node(&mut g, Op::Sub, &[x, mean]);
    let sq = if with_pow {
        let two = c(&mut g, 2.0);
        node(&mut g, Op::Pow, &[d, two])
    } else {
        node(&mut g, Op::Mul, &[d, d])
    };
    let var = node(&mut g, Op::ReduceMean { axes: vec![1], keepdims: true }, &[sq]);
    let eps = c(&mut g, 1e-5);
    let ve = node(&mut g, Op::Add, &[var, eps]);
    let sd = node(&mut g, Op::Sqrt, &[ve]);
    let n = node(&mut g, Op::Div, &[d, sd]);
    let y = if affine {
        let gamma = g.add_weight(
            "gamma",
            Tensor::f32(vec![16], (0..16).map(|i| 1.0 + i as f32 / 16.0).collect()),
        );
        let beta =
            g.add_weight("beta", Tensor::f32(vec![16], (0..16).map(|i| i as f32 / 32.0).collect()));
        let m = node(&mut g, Op::Mul, &[n, gamma]);
        node(&mut g, Op::Add, &[m, beta])
    } else {
        n
    };
    g.outputs = vec![y];
    g
}

#[test]
fn decomposed_layer_norm_fuses() {
    for (pow, affine) in [(true, true), (false, true), (true, false)] {
        let g = fuse_and_check(layer_norm_graph(pow, affine), &mut FuseLayerNorm, "layer_norm");
        assert_eq!(g.order.len(), 1);
    }
}

#[test]
fn smu1_is_recognised_with_its_parameters() {
    let (alpha, mu) = (0.25f32, 0.5f32);
    let mut g = Graph::new("t");
    let x = input(&mut g, &[64]);
    let c1 = c(&mut g, 1.0 + alpha);
    let lin = node(&mut g, Op::Mul, &[x, c1]);
    let c2 = c(&mut g, 1.0 - alpha);
    let z = node(&mut g, Op::Mul, &[x, c2]);
    let two = c(&mut g, 2.0);
    let z2 = node(&mut g, Op::Pow, &[z, two]);
    let m2 = c(&mut g, mu * mu);
    let inside = node(&mut g, Op::Add, &[z2, m2]);
    let root = node(&mut g, Op::Sqrt, &[inside]);
    let sum = node(&mut g, Op::Add, &[lin, root]);
    let two2 = c(&mut g, 2.0);
    let y = node(&mut g, Op::Div, &[sum, two2]);
    g.outputs = vec![y];
    let g = fuse_and_check(g, &mut FuseSmu1, "smu1");
    let n = g.order[0];
    match g.nodes[n].op {
        Op::Smu1 { alpha: a, mu: m } => assert!((a - alpha).abs() < 1e-6 && (m - mu).abs() < 1e-6),
        ref o => panic!("{o}"),
    }
}

#[test]
fn smu1_of_a_scaled_value_keeps_the_scaled_value_as_its_argument() {
    // smu1(x·0.125) written out: the 0.125 belongs to the argument, not to α.
    let mut g = Graph::new("t");
    let x = input(&mut g, &[64]);
    let k = c(&mut g, 0.125);
    let s = node(&mut g, Op::Mul, &[x, k]);
    let sq = node(&mut g, Op::Mul, &[s, s]);
    let one = c(&mut g, 1.0);
    let inside = node(&mut g, Op::Add, &[sq, one]);
    let root = node(&mut g, Op::Sqrt, &[inside]);
    let sum = node(&mut g, Op::Add, &[s, root]);
    let half = c(&mut g, 0.5);
    let y = node(&mut g, Op::Mul, &[sum, half]);
    g.outputs = vec![y];
    let g = fuse_and_check(g, &mut FuseSmu1, "smu1");
    let n = g.order.iter().copied().find(|&n| g.nodes[n].op.name() == "smu1").unwrap();
    match g.nodes[n].op {
        Op::Smu1 { alpha, mu } => assert!(alpha == 0.0 && (mu - 1.0).abs() < 1e-6),
        ref o => panic!("{o}"),
    }
}

#[test]
fn attention_blocks_are_annotated() {
    let mut g = Graph::new("t");
    let q = g.add_input("q", TensorType::new(DType::F32, vec![2, 8, 4]));
    let k = g.add_weight("kt", Tensor::f32(vec![2, 4, 8], vec![0.1; 64]));
    let v = g.add_weight("v", Tensor::f32(vec![2, 8, 4], vec![0.1; 64]));
    let s = node(&mut g, Op::MatMul, &[q, k]);
    let scale = c(&mut g, 0.5);
    let ss = node(&mut g, Op::Mul, &[s, scale]);
    let mask = g.add_const("mask", Tensor::f32(vec![8], vec![0.0; 8]));
    let sm = node(&mut g, Op::Add, &[ss, mask]);
    let p = node(&mut g, Op::Softmax { axis: 2 }, &[sm]);
    let o = node(&mut g, Op::MatMul, &[p, v]);
    g.outputs = vec![o];
    run(&mut g, &mut import_pipeline()).unwrap();
    let pats: Vec<_> = g.patterns.iter().map(|p| p.kind.clone()).collect();
    assert_eq!(
        pats,
        vec![PatternKind::Attention { heads: 2, q_len: 8, kv_len: 8, head_dim: 4, masked: true }]
    );
}
