//! `drelu(x, slack)`: a comparison allowed to misjudge values within `slack` of its threshold
//! reads fewer bits in wider digits (one AND round fewer for GELU's thresholds), and stays
//! exact outside that band. Checked two-party against the exact comparison, and the DSL's
//! refusal of a bad slack.

mod common;

use std::collections::HashMap;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions, Compiled};
use veil_compiler::dsl::{instantiate, stdlib_loader};
use veil_compiler::ir::{DType, Graph, Tensor, TensorType};
use veil_isa::cost::program_cost;

/// `body` (a DSL expression in `x`) on a secret `x` of `n` elements, compiled and run
/// two-party with fixed dealer seeds; the cost model checked against the run.
fn two_party(body: &str, xs: &[f64]) -> (Compiled, Vec<f64>) {
    let g = common::dsl_body_graph("", body, vec![xs.len()]);
    let x = Tensor::f32(vec![xs.len()], xs.iter().map(|&v| v as f32).collect());
    let inputs = HashMap::from([("x".to_string(), x)]);
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let opts =
        veil_vm::RunOptions { seeds: Some([[5; 16], [9; 16]]), ..veil_vm::RunOptions::default() };
    let (r, outs) = common::run_compiled_with(&c, &inputs, &opts).unwrap();
    common::assert_cost_predicted(&c, &r, body);
    (c, outs[0].1.to_f64_vec())
}

#[test]
fn a_comparison_with_slack_is_exact_outside_its_band_in_fewer_rounds() {
    // Every 1/256 from −6 to 8, around the threshold 1: enough elements that the exact
    // comparison does not take two wide digits anyway (`drelu`'s table budget).
    let xs: Vec<f64> = (-1536..=2048).map(|k| k as f64 / 256.0).collect();
    let (exact, e) = two_party("drelu(x - 1.0) * 1.0", &xs);
    let (loose, l) = two_party("drelu(x - 1.0, 0.0625) * 1.0", &xs);
    for (i, &x) in xs.iter().enumerate() {
        let want = (x >= 1.0) as u8 as f64;
        assert_eq!(e[i], want, "exact comparison at x = {x}");
        if (x - 1.0).abs() >= 0.0625 {
            assert_eq!(l[i], want, "x = {x} lies outside the slack band");
        } else {
            assert!(l[i] == 0.0 || l[i] == 1.0, "x = {x}: {} is not a bit", l[i]);
        }
    }
    let (ce, cl) = (program_cost(&exact.program).body, program_cost(&loose.program).body);
    eprintln!("rounds: exact {}, with slack {}", ce.rounds, cl.rounds);
    assert!(cl.rounds < ce.rounds, "slack {} rounds against exact {}", cl.rounds, ce.rounds);
}

#[test]
fn a_negative_or_infinite_slack_is_refused_by_name() {
    for bad in ["-0.5", "1.0 / 0.0"] {
        let mut l = stdlib_loader();
        l.load_source("bad.veil", format!("fn f(x) {{ drelu(x, {bad}) }}\n")).unwrap();
        let mut g = Graph::new("bad");
        let x = g.add_input("x", TensorType::new(DType::F32, vec![4]));
        let err = instantiate(&l, "f", &mut g, &[x], &[], "f").unwrap_err().to_string();
        assert!(err.contains("`drelu` needs a finite slack"), "{bad}: {err}");
    }
}
