//! Every ONNX model in `tests/fixtures/models` with each of its data sets: evaluated within
//! 1e-4·max|y| of onnxruntime's stored output (1e-2 for float16 models: veil's reference rounds
//! after each operator, onnxruntime's fused kernels accumulate in float32), and compiled
//! two-party with every weight the server's. A fixture added to the folder is covered without
//! a line here; the two-party *runs* with their error bounds are in the per-model tests
//! (`two_party.rs`, `with_past.rs`, `exported_fixtures.rs`, ...).
//!
//! A data set `test_data_set_<k>` belongs to a model file of its folder when its `input_<i>.npy`
//! files match the file's graph inputs in number (and in names, where a `names.json` lists
//! them) and shape; symbolic dimensions are bound from the inputs, as onnxruntime binds them.
//! One-element boolean inputs (a merged decoder's `use_cache_branch`) are fixed as constants.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::frontend::onnx::{bind_from_shapes, import_file, symbolic_dims, ImportOptions};
use veil_compiler::ir::{DType, Tensor};
use veil_compiler::npy;

fn models() -> PathBuf {
    common::repo().join("tests/fixtures/models")
}

fn sorted(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| keep(p))
        .collect();
    v.sort();
    v
}

/// The inputs of `set` in order, when they fit the graph inputs `names` (and their names).
fn inputs_of(set: &Path, names: &[String]) -> Option<Vec<(String, Tensor)>> {
    let files = sorted(set, |p| p.file_name().unwrap().to_string_lossy().starts_with("input_"));
    if files.len() != names.len() {
        return None;
    }
    if let Ok(text) = std::fs::read_to_string(set.join("names.json")) {
        let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let listed: Vec<&str> =
            listed["inputs"].as_array()?.iter().filter_map(|v| v.as_str()).collect();
        if listed != names.iter().map(String::as_str).collect::<Vec<_>>() {
            return None;
        }
    }
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let t = npy::read(&set.join(format!("input_{i}.npy"))).ok()?;
        out.push((name.clone(), t));
    }
    Some(out)
}

/// Evaluates and compiles `file` on `set`; `None` when the set is not this file's.
fn check(file: &Path, set: &Path) -> Option<String> {
    let symbolic = symbolic_dims(file).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = symbolic.iter().map(|(n, _)| n.clone()).collect();
    let inputs = inputs_of(set, &names)?;
    let shapes: Vec<(String, Vec<usize>)> =
        inputs.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
    let dims = bind_from_shapes(&symbolic, &shapes).ok()?;
    let mut opts = ImportOptions { dims, ..ImportOptions::default() };
    let mut feeds = HashMap::new();
    for (n, t) in inputs {
        if t.dtype == DType::Bool && t.numel() == 1 {
            opts.const_inputs.insert(n, t);
        } else {
            feeds.insert(n, t);
        }
    }
    let what = format!("{} on {}", file.display(), set.display());
    let mut g = import_file(file, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
    // A set whose fixed dimensions differ from the file's is another file's.
    for &v in &g.inputs {
        let val = &g.values[v];
        if feeds.get(&val.name).is_some_and(|t| t.shape != val.ty.shape) {
            return None;
        }
    }
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let half = g.values.values().any(|v| matches!(v.ty.dtype, DType::F16 | DType::BF16));
    let outs = veil_compiler::eval::run(&g, &feeds).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut worst = 0f64;
    for (i, got) in outs.iter().enumerate() {
        let want = npy::read(&set.join(format!("output_{i}.npy")))
            .unwrap_or_else(|e| panic!("{what}: output {i}: {e}"));
        assert_eq!(got.shape, want.shape, "{what}: output {i} shape");
        let (got, want) = (got.to_f64_vec(), want.to_f64_vec());
        let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = common::max_abs_diff(&got, &want);
        let tol = if half { 1e-2 } else { 1e-4 };
        assert!(err <= tol * max.max(1e-3), "{what}: output {i}: max error {err:.3e} of {max:.3}");
        worst = worst.max(err / max.max(1e-3));
    }
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{what}: compile: {e}"));
    let cost = veil_isa::cost::program_cost(&c.program);
    Some(format!(
        "eval max error {worst:.2e} of max|y|; compiled: {} rounds, {} B online",
        cost.body.rounds,
        cost.body.sent[0] + cost.body.sent[1]
    ))
}

#[test]
fn every_fixture_model_evaluates_and_compiles() {
    let mut checked = 0;
    for dir in sorted(&models(), |p| p.is_dir()) {
        let files = sorted(&dir, |p| p.extension().is_some_and(|e| e == "onnx"));
        let sets = sorted(&dir, |p| {
            p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("test_data_set_")
        });
        for file in &files {
            let mut used = 0;
            for set in &sets {
                if let Some(line) = check(file, set) {
                    eprintln!(
                        "{}/{}: {line}",
                        file.strip_prefix(models()).unwrap().display(),
                        set.file_name().unwrap().to_string_lossy()
                    );
                    used += 1;
                }
            }
            assert!(used > 0, "{}: no data set fits its inputs", file.display());
            checked += used;
        }
    }
    assert!(checked >= 10, "only {checked} model/data-set pairs found");
}
