//! The JIT end to end: bundled models give bit-identical revealed outputs with the JIT and
//! with the interpreter (same dealer seeds, so the same masks and truncation errors).

mod common;

use std::collections::HashMap;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::npy;
use veil_vm::RunOptions;

fn jit_matches_interpreter(model: &str, file: &str, set: &str) {
    let dir = common::repo().join("tests/fixtures/models").join(model);
    let opts = ImportOptions { seq: Some(128), ..ImportOptions::default() };
    let mut g = import_file(&dir.join(file), &opts).unwrap_or_else(|e| panic!("{e}"));
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let names: Vec<String> = g.inputs.iter().map(|&v| g.values[v].name.clone()).collect();
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let mut inputs = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        inputs.insert(n.clone(), npy::read(&dir.join(set).join(format!("input_{i}.npy"))).unwrap());
    }
    let run = |jit: bool| {
        let opts = RunOptions { jit, seeds: Some([[3; 16], [5; 16]]), ..RunOptions::default() };
        common::run_compiled_with(&c, &inputs, &opts).unwrap().0
    };
    let (with, without) = (run(true), run(false));
    for (party, r) in [("client", &with.client), ("server", &with.server)] {
        // Planned kernels alone would pass with every kernel falling back to the interpreter.
        assert!(r.jit_kernels > 0, "{model}: no kernels planned for the {party}");
        assert!(r.jit_runs.0 > 0, "{model}: no kernel of the {party} ran compiled");
        assert_eq!(r.jit_runs.1, 0, "{model}: kernels of the {party} fell back to the interpreter");
    }
    for r in [&without.client, &without.server] {
        assert_eq!((r.jit_kernels, r.jit_runs), (0, (0, 0)), "{model}: the JIT ran when off");
    }
    assert_eq!(with.outputs.len(), without.outputs.len());
    for (a, b) in with.outputs.iter().zip(&without.outputs) {
        assert_eq!(a.name, b.name);
        let same = a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{model}: output `{}` differs between JIT and interpreter", a.name);
    }
    eprintln!(
        "{model}: {} kernels, compiled in {:.1} ms (client); elementwise time {:.1} ms JIT vs {:.1} ms interpreted",
        with.client.jit_kernels,
        with.client.jit_compile_time.as_secs_f64() * 1e3,
        with.client.elementwise_time.as_secs_f64() * 1e3,
        without.client.elementwise_time.as_secs_f64() * 1e3
    );
}

#[test]
fn bert_tiny_with_padding_mask_is_bit_identical_with_and_without_jit() {
    jit_matches_interpreter("bert-tiny-random", "model.dynamo_opset17.onnx", "test_data_set_1");
}

#[test]
fn gpt2_tiny_is_bit_identical_with_and_without_jit() {
    jit_matches_interpreter("gpt2-tiny-random", "model.dynamo_opset18.onnx", "test_data_set_0");
}
