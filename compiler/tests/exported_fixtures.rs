//! Fixtures exported by PyTorch from models a user has (`make.py` in each folder): a sentence
//! embedding ending in mean pooling and `F.normalize` (ReduceL2 → Clip → Expand → Div), and a
//! weight-only int8 model (INT8 initializer → Cast → Mul → MatMul). Each evaluates to
//! onnxruntime's output, and runs two-party under the default lowering within 1e-2 ×
//! max|output| with the predicted bytes and rounds equal to the measured ones.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::ir::{Graph, Tensor};
use veil_compiler::{eval, npy};

fn dir(model: &str) -> PathBuf {
    common::repo().join("tests/fixtures/models").join(model)
}

/// The imported graph (after the import passes; the sequence axis bound to `seq`) and test set
/// 0's inputs by name.
fn load(model: &str, file: &str, seq: usize) -> (Graph, HashMap<String, Tensor>) {
    let opts = ImportOptions { seq: Some(seq), ..ImportOptions::default() };
    let mut g = import_file(&dir(model).join(file), &opts).unwrap_or_else(|e| panic!("{e}"));
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let mut inputs = HashMap::new();
    for (i, &v) in g.inputs.iter().enumerate() {
        let t = npy::read(&dir(model).join(format!("test_data_set_0/input_{i}.npy"))).unwrap();
        inputs.insert(g.values[v].name.clone(), t);
    }
    (g, inputs)
}

fn want(model: &str) -> Vec<f64> {
    npy::read(&dir(model).join("test_data_set_0/output_0.npy")).unwrap().to_f64_vec()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0f64, |m, x| m.max(x.abs()))
}

/// The reference evaluator's output and the two-party output (whose predicted cost is checked
/// against the measured one).
fn run(model: &str, file: &str, seq: usize) -> (Vec<f64>, Vec<f64>) {
    let (g, inputs) = load(model, file, seq);
    let reference = eval::run(&g, &inputs).unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
    for a in &c.approximations {
        eprintln!("{model}/{file}: {} ({}) → {}", a.node, a.op, a.with);
    }
    let (r, outs) =
        common::run_compiled(&c, &inputs, false).unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
    common::assert_cost_predicted(&c, &r, &format!("{model}/{file}"));
    let pc = veil_isa::cost::program_cost(&c.program);
    eprintln!(
        "{model}/{file}: {} rounds, {:.1} KB online",
        pc.body.rounds,
        (pc.body.sent[0] + pc.body.sent[1]) as f64 / 1e3
    );
    (reference[0].to_f64_vec(), outs[0].1.to_f64_vec())
}

fn check_embedding(file: &str) {
    let model = "sentence-embedding-normalize-random";
    let w = want(model);
    let (reference, got) = run(model, file, 128);
    let ref_err = common::max_abs_diff(&reference, &w);
    assert!(ref_err <= 1e-4 * max_abs(&w), "{file}: the reference is off by {ref_err}");
    let err = common::max_abs_diff(&got, &w);
    let dot: f64 = got.iter().zip(&w).map(|(a, b)| a * b).sum();
    let norm = got.iter().map(|a| a * a).sum::<f64>().sqrt();
    let cos = dot / (norm * w.iter().map(|b| b * b).sum::<f64>().sqrt());
    eprintln!(
        "{file}: max abs err {err:.2e} of max |y| {:.3}; cosine {cos:.6}; norm {norm:.5}",
        max_abs(&w)
    );
    assert!(err <= 1e-2 * max_abs(&w), "{file}: {err}");
    assert!(cos >= 0.999, "{file}: cosine {cos}");
    // rsqrt_octave's relative error (≤ 2e-3 at its edges, ~1e-4 in the table) bounds the norm's.
    assert!((norm - 1.0).abs() <= 2e-3, "{file}: norm {norm}");
}

#[test]
fn sentence_embedding_with_l2_normalisation_torchscript() {
    check_embedding("model.onnx");
}

#[test]
fn sentence_embedding_with_l2_normalisation_dynamo() {
    check_embedding("model.dynamo.onnx");
}

#[test]
fn weight_only_int8_export() {
    let model = "int8-weight-only-random";
    let w = want(model);
    let (reference, got) = run(model, "model.onnx", 32);
    let ref_err = common::max_abs_diff(&reference, &w);
    assert!(ref_err <= 1e-4 * max_abs(&w), "the reference is off by {ref_err}");
    let err = common::max_abs_diff(&got, &w);
    eprintln!("int8: max abs err {err:.2e} of max |y| {:.3}", max_abs(&w));
    assert!(err <= 1e-2 * max_abs(&w), "{err}");
}
