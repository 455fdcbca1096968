//! Snapshots of compiled programs: for each bundled model the program summary (header, I/O,
//! instruction counts and cost per layer/op — a transformer's full listing is ~80k lines of
//! bit-circuit instructions), and the full disassembly of a small graph.

use std::path::Path;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::ir::*;

fn compiled(model: &str, file: &str) -> veil_isa::Program {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(model)
        .join(file);
    let opts = ImportOptions { seq: Some(128), ..ImportOptions::default() };
    let mut g = import_file(&path, &opts).unwrap();
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap().program
}

#[test]
fn bert_tiny_program() {
    let p = compiled("bert-tiny-random", "model.dynamo_opset17.onnx");
    insta::assert_snapshot!(veil_isa::disas::summary(&p));
}

#[test]
fn gpt2_tiny_program() {
    let p = compiled("gpt2-tiny-random", "model.dynamo_opset18.onnx");
    insta::assert_snapshot!(veil_isa::disas::summary(&p));
}

#[test]
fn minilm_program() {
    let p = compiled("packaged-paraphrase-minilm-l3-v2", "model.onnx");
    insta::assert_snapshot!(veil_isa::disas::summary(&p));
}

#[test]
fn linear_layer_full_listing() {
    let mut g = Graph::new("linear");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![2, 4]));
    let w = g.add_weight("w", Tensor::f32(vec![4, 3], (0..12).map(|i| i as f32 / 10.0).collect()));
    let b = g.add_weight("b", Tensor::f32(vec![3], vec![0.1, 0.2, 0.3]));
    let mm = g.add_node("layer.0/mm", Op::MatMul, &[x, w], "mm").unwrap();
    let y = g.add_node("layer.0/add", Op::Add, &[mm, b], "y").unwrap();
    let sq = g.add_node("layer.0/sq", Op::Mul, &[y, y], "sq").unwrap();
    g.outputs = vec![sq];
    let p = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap().program;
    insta::assert_snapshot!(veil_isa::disas::disassemble(&p));
}
