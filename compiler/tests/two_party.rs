//! Every bundled model runs two-party (dealer, client, server in threads, in memory and over
//! TCP loopback): outputs within 1e-2 × max|output| of the onnxruntime reference, and the
//! compiler's predicted bytes and rounds equal to what the VM measured.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::npy;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

/// Runs `file` of `model` on test set `set` two-party; returns (outputs, references).
fn two_party(model: &str, file: &str, set: &str, tcp: bool) -> Vec<(Vec<f64>, Vec<f64>)> {
    let opts = ImportOptions { seq: Some(128), ..ImportOptions::default() };
    let g =
        import_file(&fixtures().join(model).join(file), &opts).unwrap_or_else(|e| panic!("{e}"));
    two_party_graph(g, model, file, set, tcp, &|_| false)
}

/// Runs the graph `g` (of fixture `model`, loaded from `file`) on test set `set` two-party.
fn two_party_graph(
    mut g: veil_compiler::ir::Graph,
    model: &str,
    file: &str,
    set: &str,
    tcp: bool,
    public: &dyn Fn(&str) -> bool,
) -> Vec<(Vec<f64>, Vec<f64>)> {
    let dir = fixtures().join(model);
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let names: Vec<String> = g.inputs.iter().map(|&v| g.values[v].name.clone()).collect();
    let n_out = g.outputs.len();
    let vis = |n: &str| if public(n) { Vis::Public } else { Vis::Server };
    let c = compile(g, &vis, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
    let mut inputs = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        inputs.insert(n.clone(), npy::read(&dir.join(set).join(format!("input_{i}.npy"))).unwrap());
    }
    let (r, outs) =
        common::run_compiled(&c, &inputs, tcp).unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
    common::assert_cost_predicted(&c, &r, &format!("{model}/{file}"));
    let mut res = Vec::new();
    for (i, (_, t)) in outs.iter().enumerate().take(n_out) {
        let want = npy::read(&dir.join(set).join(format!("output_{i}.npy"))).unwrap();
        assert_eq!(t.shape, want.shape, "{model}/{file} output {i} shape");
        res.push((t.to_f64_vec(), want.to_f64_vec()));
    }
    res
}

fn max_err(got: &[f64], want: &[f64]) -> (f64, f64) {
    let maxabs = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = common::max_abs_diff(got, want);
    (err, maxabs)
}

fn check(model: &str, file: &str, set: &str, tcp: bool) {
    check_results(model, file, set, two_party(model, file, set, tcp));
}

fn check_results(model: &str, file: &str, set: &str, results: Vec<(Vec<f64>, Vec<f64>)>) {
    for (i, (got, want)) in results.iter().enumerate() {
        let (err, maxabs) = max_err(got, want);
        eprintln!("{model}/{file} {set} output {i}: max abs err {err:.3e} of max |y| {maxabs:.3}");
        assert!(err <= 1e-2 * maxabs, "{model}/{file} output {i}: {err} > 1e-2 × {maxabs}");
    }
}

#[test]
fn bert_tiny_in_memory() {
    check("bert-tiny-random", "model.dynamo_opset17.onnx", "test_data_set_0", false);
}

#[test]
fn bert_tiny_padding_mask_over_tcp() {
    // 37 tokens then padding: the −3.4e38 additive mask, computed by the client from its mask.
    check("bert-tiny-random", "model.dynamo_opset17.onnx", "test_data_set_1", true);
}

#[test]
fn bert_tiny_opset20_over_tcp() {
    check("bert-tiny-random", "model.dynamo_opset20.onnx", "test_data_set_0", true);
}

#[test]
fn bert_tiny_torchscript_dynamic_axes() {
    check("bert-tiny-random", "model.torchscript_opset17_dynamic.onnx", "test_data_set_1", false);
}

#[test]
fn gpt2_tiny_causal() {
    check("gpt2-tiny-random", "model.dynamo_opset18.onnx", "test_data_set_0", false);
}

#[test]
fn minilm_sentence_embedding_over_tcp() {
    for set in ["test_data_set_0", "test_data_set_1"] {
        let outs = two_party("packaged-paraphrase-minilm-l3-v2", "model.onnx", set, true);
        // Outputs 0 and 1 echo the client's inputs (computed by the client alone): exact.
        assert_eq!(outs[0].0, outs[0].1);
        assert_eq!(outs[1].0, outs[1].1);
        let (err, tok_max) = max_err(&outs[2].0, &outs[2].1);
        eprintln!("minilm {set} token embeddings: max abs err {err:.3e} of {tok_max:.3}");
        assert!(err <= 1e-2 * tok_max);
        let (a, b) = (&outs[3].0, &outs[3].1);
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        let (err, maxabs) = max_err(a, b);
        eprintln!(
            "minilm {set} pooled embedding: cosine {cos:.6}, max abs err {err:.3e} of {maxabs:.3}"
        );
        // The pooled embedding is judged by cosine (the target) and by the token
        // embeddings' scale: pooling averages the per-token errors, not the magnitudes.
        assert!(cos >= 0.999, "cosine {cos}");
        assert!(err <= 1e-2 * tok_max);
    }
}

/// The DSL BERT-tiny with the ONNX export's weights.
fn dsl_bert_tiny() -> veil_compiler::ir::Graph {
    let onnx = import_file(
        &fixtures().join("bert-tiny-random/model.dynamo_opset17.onnx"),
        &ImportOptions::default(),
    )
    .unwrap();
    let mut weights = veil_compiler::weights::TensorSource(
        veil_compiler::frontend::weight_names::exported_weights(&onnx).into_iter().collect(),
    );
    let mut l = veil_compiler::dsl::stdlib_loader();
    l.load_path(&fixtures().join("../../../examples/models/bert-tiny.veil").display().to_string())
        .unwrap();
    veil_compiler::dsl::lower_model(&l, "bert_tiny", &mut weights).unwrap().graph
}

#[test]
fn bert_tiny_written_in_the_dsl_with_exported_weights() {
    let set = "test_data_set_1";
    let r =
        two_party_graph(dsl_bert_tiny(), "bert-tiny-random", "bert-tiny.veil", set, false, &|_| {
            false
        });
    check_results("bert-tiny-random", "bert-tiny.veil", set, r);
}

/// Marill's partitions: public embeddings; the first half of the layers public (frozen); the
/// outputs still match, and the frozen prefix runs at the client (fewer bytes).
#[test]
fn public_layers_run_in_the_clear_and_still_match() {
    use veil_compiler::compile::public::glob_match;
    let set = "test_data_set_1";
    for globs in [vec!["m.embeddings.*"], vec!["m.embeddings.*", "*.layer.0.*"]] {
        let public = |n: &str| globs.iter().any(|g| glob_match(g, n));
        let r = two_party_graph(
            dsl_bert_tiny(),
            "bert-tiny-random",
            "bert-tiny.veil",
            set,
            true,
            &public,
        );
        eprintln!("public {globs:?}:");
        check_results("bert-tiny-random", "bert-tiny.veil", set, r);
    }
}

#[test]
fn bert_tiny_ort_fused_contrib_ops_padding_mask() {
    // EmbedLayerNormalization's mask_index (37 tokens) into Attention's 1-D end positions.
    check("bert-tiny-ort-fused", "model.onnx", "test_data_set_1", false);
}

#[test]
fn bert_tiny_ort_fp16_io() {
    check("bert-tiny-ort-fp16", "model.onnx", "test_data_set_1", false);
}

#[test]
fn bert_tiny_ort_fp16_keep_io_types_over_tcp() {
    check("bert-tiny-ort-fp16-keep-io", "model.onnx", "test_data_set_0", true);
}

#[test]
fn gpt2_tiny_ort_fused_contrib_ops() {
    check("gpt2-tiny-ort-fused", "model.onnx", "test_data_set_0", false);
}

#[test]
fn bert_tiny_optimum_export() {
    check("bert-tiny-optimum", "model.onnx", "test_data_set_0", false);
}

/// The program's predicted cost (online bytes per party, rounds, dealer bytes) for a fixture.
fn cost(model: &str, file: &str) -> veil_isa::cost::ProgramCost {
    let opts = ImportOptions { seq: Some(128), ..ImportOptions::default() };
    let mut g =
        import_file(&fixtures().join(model).join(file), &opts).unwrap_or_else(|e| panic!("{e}"));
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let c = compile(g, &|_: &str| Vis::Server, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
    veil_isa::cost::program_cost(&c.program)
}

/// The contrib ops import as the patterns the unfused graph gives: the fused export compiles
/// to the same bytes and rounds as the export it was fused from (and its float16 conversion
/// to the same as the float32 model).
#[test]
fn fused_exports_cost_what_the_unfused_ones_cost() {
    for (fused, unfused) in [
        (
            ("bert-tiny-ort-fused", "model.onnx"),
            ("bert-tiny-random", "model.torchscript_opset17_dynamic.onnx"),
        ),
        (("gpt2-tiny-ort-fused", "model.onnx"), ("gpt2-tiny-random", "model.dynamo_opset18.onnx")),
        // Float16 is float32 in fixed point: the same program.
        (("bert-tiny-ort-fp16", "model.onnx"), ("bert-tiny-ort-fused", "model.onnx")),
    ] {
        let (a, b) = (cost(fused.0, fused.1), cost(unfused.0, unfused.1));
        eprintln!(
            "{}: rounds {} / {}, bytes {:?} / {:?}, dealer {} / {}",
            fused.0,
            a.body.rounds,
            b.body.rounds,
            a.body.sent,
            b.body.sent,
            a.body.dealer,
            b.body.dealer
        );
        assert_eq!(a.body.rounds, b.body.rounds, "{}: rounds", fused.0);
        assert_eq!(a.body.sent, b.body.sent, "{}: online bytes", fused.0);
        assert_eq!(a.body.dealer, b.body.dealer, "{}: dealer bytes", fused.0);
        assert_eq!(a.setup.online(), b.setup.online(), "{}: setup bytes", fused.0);
    }
}

#[test]
fn contrib_ops_synthetic_masks_causal_mha() {
    check("contrib-ops-synthetic", "model.onnx", "test_data_set_0", false);
}

#[test]
fn contrib_ops_synthetic_fp16_inputs_and_outputs() {
    check("contrib-ops-synthetic-fp16", "model.onnx", "test_data_set_0", false);
}
