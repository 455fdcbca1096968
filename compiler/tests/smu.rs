//! `--nonlinear smu`: the SMU rewrite, calibration, and the comparison-free inverse square
//! root, end to end. The model trained with SMU-1 (examples/models/bert-tiny-smu.veil) runs
//! two-party and matches its plaintext reference; sites without a range, ranges too wide for
//! the Newton iteration, and non-positive divisors are refused with the site's name.

mod common;

use std::collections::{BTreeMap, HashMap};
use veil_compiler::backend::nonlinear::{Mode, NonlinearOptions};
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::calibrate::calibrate;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::dsl::{lower_model, stdlib_loader};
use veil_compiler::ir::{Graph, Tensor};
use veil_compiler::passes::{Pass, SmuRewrite};
use veil_compiler::weights::{RandomSource, SplitMix};
use veil_isa::Instr;

fn smu_model() -> Graph {
    let mut l = stdlib_loader();
    l.load_path(&common::repo().join("examples/models/bert-tiny-smu.veil").display().to_string())
        .unwrap();
    let mut g = lower_model(&l, "bert_tiny_smu", &mut RandomSource::new(1)).unwrap().graph;
    SmuRewrite { alpha: 0.0, mu: 1.0 }.run(&mut g);
    g.remove_dead_nodes();
    g
}

fn sample(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let v = g.inputs[0];
    let ty = g.ty(v);
    let mut r = SplitMix(seed);
    let x: Vec<f32> = (0..ty.numel()).map(|_| r.normal() as f32).collect();
    [(g.values[v].name.clone(), Tensor::f32(ty.shape.clone(), x))].into_iter().collect()
}

/// The first calibrated site of kind `op`.
fn site(cal: &veil_compiler::compile::calibrate::Calibration, op: &str) -> String {
    cal.sites.iter().find(|(_, s)| s.op == op).map(|(k, _)| k.clone()).unwrap()
}

fn smu_options(ranges: BTreeMap<String, (f64, f64)>) -> CompileOptions {
    let nonlinear = NonlinearOptions { mode: Mode::Smu, ranges, ..NonlinearOptions::default() };
    CompileOptions { nonlinear, ..CompileOptions::default() }
}

#[test]
fn smu_trained_model_runs_two_party_without_comparisons_and_matches_plaintext() {
    let g = smu_model();
    let samples: Vec<_> = (1..=3).map(|s| sample(&g, s)).collect();
    let cal = calibrate(&g, None, &samples, "smu 0 1").unwrap();
    let c = compile(g.clone(), &|_| Vis::Server, &smu_options(cal.ranges())).unwrap();
    // Every nonlinearity went through the comparison-free inverse square root...
    assert!(!c.approximations.is_empty());
    for a in &c.approximations {
        assert!(a.with.ends_with("_fit"), "{} → {}", a.node, a.with);
    }
    // ...so the program holds no comparison at all (comparisons draw dealer tables).
    let tables = c.program.body.iter().filter(|i| matches!(i, Instr::DTable { .. })).count();
    assert_eq!(tables, 0, "comparison tables in a --nonlinear smu program");
    // An input the calibration never saw.
    let inputs = sample(&g, 9);
    let want = veil_compiler::eval::run(&g, &inputs).unwrap()[0].to_f64_vec();
    let (_, outs) = common::run_compiled(&c, &inputs, false).unwrap();
    let got = outs[0].1.to_f64_vec();
    let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = common::max_abs_diff(&got, &want);
    // The end-to-end tolerance of the two-party tests: 1% of the output's range.
    assert!(err < 0.01 * max, "SMU model two-party: max abs error {err} of max {max}");
    eprintln!("bert_tiny_smu two-party: max abs error {err:.3e} of max |y| {max:.3}");
}

#[test]
fn the_rewrite_replaces_gelu_and_softmax_by_their_smu_forms() {
    let mut l = stdlib_loader();
    l.load_source(
        "<t>",
        "model m { input x: client f32[4, 8]; output y = softmax(gelu(x), axis = -1); }".into(),
    )
    .unwrap();
    let original = lower_model(&l, "m", &mut RandomSource::new(1)).unwrap().graph;
    let mut g = original.clone();
    let (alpha, mu) = (0.25f64, 0.5f64);
    assert_eq!(SmuRewrite { alpha: alpha as f32, mu: mu as f32 }.run(&mut g), 2);
    g.remove_dead_nodes();
    let inputs = sample(&g, 3);
    let x = inputs.values().next().unwrap().to_f64_vec();
    let got = veil_compiler::eval::run(&g, &inputs).unwrap()[0].to_f64_vec();
    let smu1 = |v: f64| ((1.0 + alpha) * v + (((1.0 - alpha) * v).powi(2) + mu * mu).sqrt()) / 2.0;
    for (r, row) in x.chunks(8).enumerate() {
        let e: Vec<f64> = row.iter().map(|&v| smu1(smu1(v))).collect();
        let s: f64 = e.iter().sum();
        for (j, v) in e.iter().enumerate() {
            assert!((got[r * 8 + j] - v / s).abs() < 1e-5, "row {r} col {j}");
        }
    }
    // The calibration reports how far that moved the outputs from the original model.
    let cal = calibrate(&g, Some(&original), &[inputs], "smu 0.25 0.5").unwrap();
    let change = cal.function_change.unwrap();
    assert!(change.max_abs > 1e-3 && change.max_abs < 1.0, "{change:?}");
}

#[test]
fn a_site_without_a_calibrated_range_is_refused_by_name() {
    let g = smu_model();
    let cal = calibrate(&g, None, &[sample(&g, 1)], "smu 0 1").unwrap();
    let mut ranges = cal.ranges();
    let dropped = site(&cal, "layer_norm");
    ranges.remove(&dropped);
    let e = compile(g, &|_| Vis::Server, &smu_options(ranges)).err().unwrap().to_string();
    assert!(e.contains(&dropped) && e.contains("veil calibrate"), "{e}");
}

#[test]
fn ranges_too_wide_or_not_positive_are_refused() {
    let g = smu_model();
    let cal = calibrate(&g, None, &[sample(&g, 1)], "smu 0 1").unwrap();
    let ln = site(&cal, "layer_norm");

    let mut wide = cal.ranges();
    wide.insert(ln.clone(), (1e-6, 1e6));
    let e = compile(g.clone(), &|_| Vis::Server, &smu_options(wide)).err().unwrap().to_string();
    assert!(e.contains(&ln) && e.contains("Newton steps"), "{e}");

    let recip = site(&cal, "reciprocal");
    let mut negative = cal.ranges();
    negative.insert(recip.clone(), (-1.0, 5.0));
    let e = compile(g, &|_| Vis::Server, &smu_options(negative)).err().unwrap().to_string();
    assert!(e.contains(&recip) && e.contains("positive"), "{e}");
}
