//! The DSL examples: BERT-tiny and GPT-2-tiny written in the DSL, loaded with the weights of
//! their ONNX exports (written to safetensors the way `veil export-weights` writes them),
//! reproduce the stored onnxruntime outputs to 1e-5 × max|output|; and the IR of every example
//! is snapshotted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use veil_compiler::dsl::{lower_model, stdlib_loader, WeightSource};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::ir::{print, Tensor, TensorType};
use veil_compiler::weights::{write_safetensors, SafetensorsSource};
use veil_compiler::{eval, npy};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What `veil export-weights` writes.
fn export_weights(onnx: &Path, to: &Path) {
    let g = import_file(onnx, &ImportOptions::default()).unwrap();
    write_safetensors(to, &veil_compiler::frontend::weight_names::exported_weights(&g)).unwrap();
}

fn lower(file: &str, model: &str, weights: &mut dyn WeightSource) -> veil_compiler::ir::Graph {
    let mut l = stdlib_loader();
    l.load_path(&repo().join("examples/models").join(file).display().to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    lower_model(&l, model, weights).unwrap_or_else(|e| panic!("{e}")).graph
}

fn check(veil: &str, model: &str, fixture: &str, onnx: &str) {
    let dir = repo().join("tests/fixtures/models").join(fixture);
    let st = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{model}.safetensors"));
    export_weights(&dir.join(onnx), &st);
    let g = lower(veil, model, &mut SafetensorsSource::open(&st).unwrap());
    for set in ["test_data_set_0", "test_data_set_1"] {
        let set = dir.join(set);
        if !set.exists() {
            continue;
        }
        let mut inputs = HashMap::new();
        for (i, &v) in g.inputs.iter().enumerate() {
            inputs.insert(
                g.values[v].name.clone(),
                npy::read(&set.join(format!("input_{i}.npy"))).unwrap(),
            );
        }
        let got = eval::run(&g, &inputs).unwrap_or_else(|e| panic!("{model}: {e}"));
        let want = npy::read(&set.join("output_0.npy")).unwrap();
        assert_eq!(got[0].shape, want.shape);
        let (a, b) = (got[0].to_f64_vec(), want.to_f64_vec());
        let maxabs = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        eprintln!("{model} {}: max abs err {err:.2e} of max |output| {maxabs:.3}", set.display());
        assert!(err <= 1e-5 * maxabs, "{model}: error {err} > 1e-5 × {maxabs}");
    }
}

#[test]
fn bert_tiny_dsl_matches_onnxruntime() {
    check("bert-tiny.veil", "bert_tiny", "bert-tiny-random", "model.dynamo_opset17.onnx");
}

#[test]
fn gpt2_tiny_dsl_matches_onnxruntime() {
    check("gpt2-tiny.veil", "gpt2_tiny", "gpt2-tiny-random", "model.dynamo_opset18.onnx");
}

/// Fills every parameter with a constant: the IR text does not show weight values.
struct Fill;
impl WeightSource for Fill {
    fn get(&mut self, _key: &str, ty: &TensorType) -> Result<Tensor, String> {
        Ok(Tensor::f32(ty.shape.clone(), vec![0.25; ty.numel()]))
    }
}

#[test]
fn ir_of_every_example() {
    for (file, model) in [
        ("bert-tiny.veil", "bert_tiny"),
        ("gpt2-tiny.veil", "gpt2_tiny"),
        ("bert-base.veil", "bert_base_layer"),
        ("bert-base.veil", "bert_base"),
        ("gpt2-small.veil", "gpt2_small"),
    ] {
        let g = lower(file, model, &mut Fill);
        insta::assert_snapshot!(format!("ir_{model}"), print::graph_text(&g));
    }
}
