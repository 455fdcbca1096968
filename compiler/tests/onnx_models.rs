//! Every bundled model variant imports, and the reference evaluator reproduces the stored
//! onnxruntime outputs to 1e-4 × max|output| on every test set (float16 models: 1e-2, see
//! [`FP16_TOL`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::{eval, npy};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

/// Float16 models: the evaluator rounds each operator's result to float16 while onnxruntime's
/// float16 kernels accumulate in float32 inside the fused operators and matrix products, so the
/// two differ by float16's precision (2⁻¹¹ relative per operator), not 1e-4.
const FP16_TOL: f64 = 1e-2;

fn check(model: &str, file: &str) {
    check_within(model, file, 1e-4)
}

fn check_within(model: &str, file: &str, tol: f64) {
    let dir = fixtures().join(model);
    let opts = ImportOptions { seq: Some(128), ..ImportOptions::default() };
    let mut g = import_file(&dir.join(file), &opts).unwrap_or_else(|e| panic!("{e}"));
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let kinds: Vec<String> = g
        .patterns
        .iter()
        .map(|p| format!("{:?}", p.kind).split(['(', ' ']).next().unwrap().to_string())
        .collect();
    eprintln!("{model}/{file}: patterns {kinds:?}");
    let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
    let gelus = g
        .order
        .iter()
        .filter(|&&n| matches!(g.nodes[n].op, veil_compiler::ir::Op::Gelu { .. }))
        .count();
    assert!(gelus >= 2, "{model}/{file}: GELU fused in every layer ({gelus})");
    assert!(count("Attention") >= 2, "{model}/{file}: attention blocks annotated");
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    assert!(!sets.is_empty());
    for set in sets {
        let mut inputs = HashMap::new();
        for (i, &v) in g.inputs.iter().enumerate() {
            let t = npy::read(&set.join(format!("input_{i}.npy"))).unwrap();
            inputs.insert(g.values[v].name.clone(), t);
        }
        let outs = eval::run(&g, &inputs).unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
        for (i, got) in outs.iter().enumerate() {
            let want = npy::read(&set.join(format!("output_{i}.npy"))).unwrap();
            assert_eq!(got.shape, want.shape, "{model}/{file} output {i}");
            let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
            let maxabs = w.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = g.iter().zip(&w).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            eprintln!(
                "{model}/{file} {} output {i}: max abs err {err:.2e} (max |output| {maxabs:.3})",
                set.file_name().unwrap().to_string_lossy()
            );
            assert!(
                err <= tol * maxabs.max(1e-30),
                "{model}/{file} output {i}: error {err} > {tol:e} × {maxabs}"
            );
        }
    }
}

#[test]
fn bert_tiny_dynamo_opset17() {
    check("bert-tiny-random", "model.dynamo_opset17.onnx");
}

#[test]
fn bert_tiny_dynamo_opset20() {
    check("bert-tiny-random", "model.dynamo_opset20.onnx");
}

#[test]
fn bert_tiny_torchscript_dynamic() {
    check("bert-tiny-random", "model.torchscript_opset17_dynamic.onnx");
}

#[test]
fn gpt2_tiny_dynamo_opset18() {
    check("gpt2-tiny-random", "model.dynamo_opset18.onnx");
}

#[test]
fn minilm_packaged() {
    check("packaged-paraphrase-minilm-l3-v2", "model.onnx");
}

#[test]
fn bert_tiny_ort_fused_contrib_ops() {
    check("bert-tiny-ort-fused", "model.onnx");
}

#[test]
fn bert_tiny_ort_fp16() {
    check_within("bert-tiny-ort-fp16", "model.onnx", FP16_TOL);
}

#[test]
fn bert_tiny_ort_fp16_keep_io_types() {
    check_within("bert-tiny-ort-fp16-keep-io", "model.onnx", FP16_TOL);
}

#[test]
fn gpt2_tiny_ort_fused_contrib_ops() {
    check("gpt2-tiny-ort-fused", "model.onnx");
}

#[test]
fn bert_tiny_optimum_export() {
    check("bert-tiny-optimum", "model.onnx");
}

#[test]
fn contrib_ops_synthetic_masks_causal_mha() {
    check("contrib-ops-synthetic", "model.onnx");
}

#[test]
fn contrib_ops_synthetic_fp16_inputs_and_outputs() {
    check_within("contrib-ops-synthetic-fp16", "model.onnx", FP16_TOL);
}
