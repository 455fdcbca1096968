//! `veil inspect` dumps of the bundled models, snapshotted (the same text the CLI prints).

use std::path::Path;
use veil_compiler::frontend::onnx::{import_file, ImportOptions};

fn dump(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel);
    let mut g = import_file(&p, &ImportOptions { seq: Some(128), ..Default::default() }).unwrap();
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    veil_compiler::ir::print::graph_text(&g)
}

#[test]
fn bert_tiny_dynamo_opset17() {
    insta::assert_snapshot!(dump("bert-tiny-random/model.dynamo_opset17.onnx"));
}

#[test]
fn bert_tiny_dynamo_opset20() {
    insta::assert_snapshot!(dump("bert-tiny-random/model.dynamo_opset20.onnx"));
}

#[test]
fn bert_tiny_torchscript_dynamic() {
    insta::assert_snapshot!(dump("bert-tiny-random/model.torchscript_opset17_dynamic.onnx"));
}

#[test]
fn gpt2_tiny_dynamo_opset18() {
    insta::assert_snapshot!(dump("gpt2-tiny-random/model.dynamo_opset18.onnx"));
}

#[test]
fn minilm_packaged() {
    insta::assert_snapshot!(dump("packaged-paraphrase-minilm-l3-v2/model.onnx"));
}
