//! Encrypted token pruning end to end: thresholds calibrated in plaintext, the model compiled
//! at several lengths into one dynamic program, and the two-party pruned run keeping the tokens
//! the plaintext pruned run keeps (same count after every point) with outputs within tolerance.

mod common;

use std::collections::HashMap;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::pruned::{compile_pruned, cuts};
use veil_compiler::compile::CompileOptions;
use veil_compiler::ir::{Graph, Tensor};
use veil_compiler::prune::reference::GraphError;
use veil_compiler::prune::{calibrate, reference, PruneConfig};

/// `bert_tiny_cls` at `n` tokens with seeded random weights.
fn bert_tiny_cls(n: usize) -> Result<Graph, String> {
    bert_tiny_cls_layers(n, 2)
}

/// [`bert_tiny_cls`] with `layers` encoder layers.
fn bert_tiny_cls_layers(n: usize, layers: usize) -> Result<Graph, String> {
    let mut l = veil_compiler::dsl::stdlib_loader();
    l.override_const("S", n as f64);
    l.override_const("L", layers as f64);
    let path = common::repo().join("examples/models/bert-tiny-cls.veil");
    l.load_path(&path.display().to_string()).map_err(|e| e.to_string())?;
    let mut w = veil_compiler::weights::RandomSource::new(3);
    let mut g = veil_compiler::dsl::lower::lower_model(&l, "bert_tiny_cls", &mut w)
        .map_err(|e| e.to_string())?
        .graph;
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline())
        .map_err(|e| e.to_string())?;
    Ok(g)
}

fn inputs(n: usize, seed: u64) -> HashMap<String, Tensor> {
    let mut r = veil_compiler::weights::SplitMix(seed);
    let ids: Vec<i64> = (0..n).map(|_| (r.next_u64() % 1024) as i64).collect();
    HashMap::from([
        ("input_ids".to_string(), Tensor::i64([1, n], ids)),
        ("attention_mask".to_string(), Tensor::i64([1, n], vec![1; n])),
        ("token_type_ids".to_string(), Tensor::i64([1, n], vec![0; n])),
    ])
}

#[test]
fn two_party_pruned_run_keeps_the_plaintext_tokens() {
    let n = 24;
    let graph_at = |k: usize| bert_tiny_cls(k).map_err(GraphError::from);
    let all = PruneConfig { theta: vec![Some(0.0), Some(0.0)], protect: 1 };
    let points = cuts(&graph_at, n, &all).unwrap();
    assert_eq!(points.len(), 2, "one point after each attention layer");
    let samples: Vec<_> = (0..3).map(|s| inputs(n, 10 + s)).collect();
    let cfg =
        calibrate::thresholds(&graph_at, n, &points, &[0.5, 0.6], 1, &samples).unwrap().config;
    let compiled = compile_pruned(
        &graph_at,
        n,
        &cfg,
        &|_: &str| Vis::Server,
        &CompileOptions::default(),
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(compiled.program.dynamic.is_some());
    for (s, x) in samples.iter().enumerate() {
        let want = reference::run(&graph_at, n, &points, &cfg, x).unwrap();
        assert!(want.lengths[0] < n && want.lengths[1] <= want.lengths[0], "{:?}", want.lengths);
        let (r, outs) = common::run_compiled(&compiled, x, s == 0).unwrap();
        let got: Vec<u32> = r.client.lengths.clone();
        let exp: Vec<u32> = want.lengths.iter().map(|&k| k as u32).collect();
        assert_eq!(got, exp, "sample {s}: kept counts (margin {:.2e})", want.margin);
        let out = outs[0].1.to_f64_vec();
        let err = common::max_abs_diff(&out, &want.outputs[0].to_f64_vec());
        assert!(err < 0.05, "sample {s}: max error {err}");
        // The pruned run is cheaper than the same program at full length.
        let full = veil_isa::cost::program_cost(&compiled.program);
        assert!(r.client.body.sent < full.body.sent[0]);
    }
    // The instances after each `setlen` run fused kernels: bit-identical to the interpreter.
    let run = |jit: bool| {
        let opts = veil_vm::RunOptions {
            jit,
            seeds: Some([[2; 16], [7; 16]]),
            ..veil_vm::RunOptions::default()
        };
        common::run_compiled_with(&compiled, &samples[0], &opts).unwrap()
    };
    let ((with, a), (without, b)) = (run(true), run(false));
    assert_eq!(with.client.lengths, without.client.lengths);
    assert_eq!(with.outputs, without.outputs, "bit-identical with and without the JIT");
    assert_eq!(a[0].1.to_f64_vec(), b[0].1.to_f64_vec());
    for r in [&with.client, &with.server] {
        assert!(r.jit_kernels > 0 && r.jit_runs.0 > 0, "kernels planned and run compiled");
        assert_eq!(r.jit_runs.1, 0, "no kernel fell back to the interpreter");
    }
    assert_eq!((without.client.jit_kernels, without.client.jit_runs), (0, (0, 0)));
}

#[test]
fn a_value_crossing_two_points_is_compacted_at_each() {
    // The attention mask crosses every point. With holes in it, the first point keeping all
    // 16 tokens and the second dropping the masked ones, reading the first point's rows after
    // the second would mask half of the kept tokens (error 4.4e-2 before the fix, 1e-3 after).
    let n = 16;
    let graph_at = |k: usize| bert_tiny_cls_layers(k, 3).map_err(GraphError::from);
    let cfg = PruneConfig { theta: vec![Some(0.0), Some(0.05), None], protect: 1 };
    let points = cuts(&graph_at, n, &cfg).unwrap();
    assert_eq!(points.len(), 2);
    assert!(
        points[1].crossing.iter().any(|&(v, _)| points[0].crossing.iter().any(|&(w, _)| w == v)),
        "some value crosses both points"
    );
    let mut x = inputs(n, 5);
    let holes: Vec<i64> = (0..n as i64).map(|i| 1 - i % 2).collect();
    x.insert("attention_mask".to_string(), Tensor::i64([1, n], holes));
    let compiled = compile_pruned(
        &graph_at,
        n,
        &cfg,
        &|_: &str| Vis::Server,
        &CompileOptions::default(),
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let want = reference::run(&graph_at, n, &points, &cfg, &x).unwrap();
    assert_eq!(want.lengths, vec![n, n / 2], "the second point drops the masked tokens");
    let (r, outs) = common::run_compiled(&compiled, &x, false).unwrap();
    assert_eq!(r.client.lengths, vec![n as u32, n as u32 / 2]);
    let err = common::max_abs_diff(&outs[0].1.to_f64_vec(), &want.outputs[0].to_f64_vec());
    assert!(err < 1e-2, "max error {err}");
}
