//! Merged LoRA: a checkpoint whose matrices are the open base plus a low-rank update compiles
//! as the public base product plus two thin private products, computes the checkpoint's
//! function, and runs two-party within the end-to-end tolerance.

mod common;

use common::max_abs_diff;
use std::collections::HashMap;
use std::path::PathBuf;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::low_rank::split_low_rank;
use veil_compiler::compile::public::{public_weights, Reason};
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::dsl::{lower_model, stdlib_loader};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::ir::{Graph, Tensor};
use veil_compiler::weights::{SplitMix, TensorSource};
use veil_compiler::{eval, npy};

fn fixture() -> PathBuf {
    common::repo().join("tests/fixtures/models/bert-tiny-random")
}

/// The bundled BERT-tiny's weights (the "open base") under export-weights' names.
fn base() -> Vec<(String, Tensor)> {
    let onnx = import_file(&fixture().join("model.dynamo_opset17.onnx"), &ImportOptions::default())
        .unwrap();
    veil_compiler::frontend::weight_names::exported_weights(&onnx)
}

/// The base with a rank-`r` update merged into every matrix of layer 1 (as `merge_and_unload`
/// of a LoRA fine-tune writes it) and one layer-1 bias changed (a bias-tuned parameter).
fn fine_tuned(base: &[(String, Tensor)], r: usize) -> Vec<(String, Tensor)> {
    let mut rng = SplitMix(42);
    base.iter()
        .map(|(n, t)| {
            let mut t = t.clone();
            if n.contains(".layer.1.") && t.shape.len() == 2 {
                let (k, m) = (t.shape[0], t.shape[1]);
                let a: Vec<f64> = (0..k * r).map(|_| rng.normal() * 0.05).collect();
                let b: Vec<f64> = (0..r * m).map(|_| rng.normal() * 0.05).collect();
                let w = t.as_f32().unwrap();
                let v = (0..k * m)
                    .map(|ij| {
                        let (i, j) = (ij / m, ij % m);
                        w[ij] + (0..r).map(|c| a[i * r + c] * b[c * m + j]).sum::<f64>() as f32
                    })
                    .collect();
                t = Tensor::f32(t.shape.clone(), v);
            } else if n.ends_with("layer.1.output.dense.bias") {
                t = Tensor::f32(
                    t.shape.clone(),
                    t.as_f32().unwrap().iter().map(|v| v + 0.1).collect(),
                );
            }
            (n.clone(), t)
        })
        .collect()
}

fn model(weights: &[(String, Tensor)]) -> Graph {
    let mut l = stdlib_loader();
    l.load_path(&common::repo().join("examples/models/bert-tiny.veil").display().to_string())
        .unwrap();
    lower_model(&l, "bert_tiny", &mut TensorSource(weights.iter().cloned().collect()))
        .unwrap()
        .graph
}

fn inputs(g: &Graph) -> HashMap<String, Tensor> {
    let set = fixture().join("test_data_set_1");
    g.inputs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let t = npy::read(&set.join(format!("input_{i}.npy"))).unwrap();
            (g.values[v].name.clone(), t)
        })
        .collect()
}

#[test]
fn a_merged_rank_4_update_is_split_exactly_and_runs_two_party() {
    let base = base();
    let tuned = fine_tuned(&base, 4);
    let original = model(&tuned);
    let mut g = original.clone();
    let mut public = public_weights(&g, &[], &[], Some(&base)).unwrap();
    let out = split_low_rank(&mut g, &base, 8, &|n| public.contains_key(n)).unwrap();
    // q, k, v, attention output, intermediate, output: the six matrices of layer 1.
    assert_eq!(out.split.len(), 6, "{:?}", out.split);
    assert!(out.split.iter().all(|s| s.rank == 4 && s.residual < 1e-5), "{:?}", out.split);
    for s in &out.split {
        public.insert(format!("{}.base", s.name), Reason::LowRankBase(s.base.clone()));
    }
    // The split model is the checkpoint's function (up to f32 rounding).
    let x = inputs(&g);
    let want = eval::run(&original, &x).unwrap()[0].to_f64_vec();
    let split = eval::run(&g, &x).unwrap()[0].to_f64_vec();
    let top = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(
        max_abs_diff(&split, &want) < 1e-5 * top,
        "split vs checkpoint {}",
        max_abs_diff(&split, &want)
    );
    // Two-party: within the end-to-end tolerance, and fewer bytes than the whole checkpoint
    // private (the base half of every product is local).
    let vis = |n: &str| if public.contains_key(n) { Vis::Public } else { Vis::Server };
    let c = compile(g, &vis, &CompileOptions::default()).unwrap();
    let (_, outs) = common::run_compiled(&c, &x, false).unwrap();
    let err = max_abs_diff(&outs[0].1.to_f64_vec(), &want);
    assert!(err < 0.01 * top, "two-party vs checkpoint: {err} of {top}");
    let all = compile(original, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let bytes = |c: &veil_compiler::compile::Compiled| {
        let b = veil_isa::cost::program_cost(&c.program).body;
        b.sent[0] + b.sent[1]
    };
    eprintln!("online: every weight private {} B, merged LoRA split {} B", bytes(&all), bytes(&c));
    assert!(bytes(&c) < bytes(&all));
}

#[test]
fn a_full_rank_change_is_kept_private_whole() {
    let base = base();
    let mut tuned = fine_tuned(&base, 4);
    // Layer 1's query matrix changes everywhere (full fine-tuning).
    let mut rng = SplitMix(7);
    for (n, t) in tuned.iter_mut() {
        if n.ends_with("layer.1.attention.self.query.weight") {
            let v = t.as_f32().unwrap().iter().map(|x| x + 0.01 * rng.normal() as f32).collect();
            *t = Tensor::f32(t.shape.clone(), v);
        }
    }
    let mut g = model(&tuned);
    let out = split_low_rank(&mut g, &base, 8, &|_| false).unwrap();
    assert_eq!(out.split.len(), 5);
    assert!(
        out.kept.iter().any(|(n, why)| n.ends_with("query.weight") && why.contains("rank 8")),
        "{:?}",
        out.kept
    );
    assert!(split_low_rank(&mut g, &base, 0, &|_| false).is_err());
}
