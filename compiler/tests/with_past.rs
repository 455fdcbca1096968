//! Decoders exported with past key/values (Optimum's decoder, decoder with past, and merged
//! decoder of a tiny random GPT-2, `tests/fixtures/models/gpt2-with-past`): evaluated and run
//! two-party with the past as client inputs, against onnxruntime; generated from (veil's own
//! cache) with the tokens of onnxruntime's greedy loop; malformed cache interfaces refused by
//! name.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::frontend::onnx::{bind_from_shapes, import_file, symbolic_dims, ImportOptions};
use veil_compiler::generate::{reference_generation, token_output, GenerateOptions};
use veil_compiler::ir::{Graph, Tensor};
use veil_compiler::npy;
use veil_compiler::recipe::{ModelSpec, Recipe};

fn dir() -> PathBuf {
    common::repo().join("tests/fixtures/models/gpt2-with-past")
}

/// Tensors by name.
type Named = Vec<(String, Tensor)>;

/// Test set `k`: inputs and outputs by name (`names.json` gives the order of the files).
fn set(k: usize) -> (Named, Named) {
    let d = dir().join(format!("test_data_set_{k}"));
    let names: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("names.json")).unwrap()).unwrap();
    let read = |kind: &str, list: &serde_json::Value| -> Vec<(String, Tensor)> {
        let list = list.as_array().unwrap();
        (0..list.len())
            .map(|i| {
                let t = npy::read(&d.join(format!("{kind}_{i}.npy"))).unwrap();
                (list[i].as_str().unwrap().to_string(), t)
            })
            .collect()
    };
    (read("input", &names["inputs"]), read("output", &names["outputs"]))
}

/// `file` imported with its symbolic dimensions bound from `inputs` (as onnxruntime binds
/// them), the inputs in `fixed` made constants.
fn import(file: &str, inputs: &[(String, Tensor)], fixed: &[&str]) -> Graph {
    let path = dir().join(file);
    let shapes: Vec<(String, Vec<usize>)> =
        inputs.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
    let dims = bind_from_shapes(&symbolic_dims(&path).unwrap(), &shapes).unwrap();
    let const_inputs =
        inputs.iter().filter(|(n, _)| fixed.contains(&n.as_str())).cloned().collect();
    let mut g = import_file(&path, &ImportOptions { dims, const_inputs, ..Default::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    g
}

/// The largest |veil − onnxruntime| over `outs` relative to max|onnxruntime|, per output.
fn errors(g: &Graph, outs: &[(String, Tensor)], want: &[(String, Tensor)]) -> Vec<(String, f64)> {
    assert_eq!(g.outputs.len(), want.len());
    outs.iter()
        .zip(want)
        .map(|((n, t), (wn, w))| {
            assert_eq!(n, wn);
            assert_eq!(t.shape, w.shape, "output `{n}`");
            let (a, b) = (t.to_f64_vec(), w.to_f64_vec());
            let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
            (n.clone(), common::max_abs_diff(&a, &b) / scale)
        })
        .collect()
}

fn eval_errors(file: &str, k: usize, fixed: &[&str]) -> Vec<(String, f64)> {
    let (inputs, want) = set(k);
    let g = import(file, &inputs, fixed);
    let feeds: HashMap<String, Tensor> =
        inputs.into_iter().filter(|(n, _)| !fixed.contains(&n.as_str())).collect();
    let outs = veil_compiler::eval::run(&g, &feeds).unwrap_or_else(|e| panic!("{file}: {e}"));
    let named: Vec<(String, Tensor)> =
        g.outputs.iter().map(|&v| g.values[v].name.clone()).zip(outs).collect();
    errors(&g, &named, &want)
}

#[test]
fn eval_of_every_export_matches_onnxruntime() {
    for (file, k, fixed) in [
        ("decoder_model.onnx", 0, &[][..]),
        ("decoder_with_past_model.onnx", 1, &[][..]),
        ("decoder_model_merged.onnx", 2, &["use_cache_branch"][..]),
        ("decoder_model_merged.onnx", 3, &["use_cache_branch"][..]),
    ] {
        for (out, e) in eval_errors(file, k, fixed) {
            eprintln!("{file} set {k} `{out}`: {e:.2e} of max|y|");
            assert!(e < 1e-4, "{file} set {k} output `{out}`: relative error {e:.2e}");
        }
    }
}

#[test]
fn merged_decoder_without_its_branch_fixed_names_the_input() {
    let (inputs, _) = set(3);
    let path = dir().join("decoder_model_merged.onnx");
    let shapes: Vec<(String, Vec<usize>)> =
        inputs.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
    let dims = bind_from_shapes(&symbolic_dims(&path).unwrap(), &shapes).unwrap();
    let e = import_file(&path, &ImportOptions { dims, ..Default::default() }).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("use_cache_branch") && msg.contains("--branch"), "{msg}");
}

#[test]
fn decoder_with_past_runs_two_party_with_the_past_as_client_inputs() {
    let (inputs, want) = set(1);
    // Every input stays one: the ids, the attention mask and the past, all secret.
    let fixed: [&str; 0] = [];
    let g = import("decoder_with_past_model.onnx", &inputs, &fixed);
    let names: Vec<String> = g.inputs.iter().map(|&v| g.values[v].name.clone()).collect();
    assert!(names.iter().any(|n| n == "past_key_values.1.value"), "{names:?}");
    let c = compile(g.clone(), &|_| Vis::Server, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let feeds: HashMap<String, Tensor> =
        inputs.into_iter().filter(|(n, _)| !fixed.contains(&n.as_str())).collect();
    let (_, outs) = common::run_compiled(&c, &feeds, false).unwrap();
    for (out, e) in errors(&g, &outs[..g.outputs.len()], &want) {
        eprintln!("two-party `{out}`: {e:.2e} of max|y|");
        assert!(e < 1e-2, "output `{out}`: {e:.2e} of max|y|");
    }
}

/// The prompt and onnxruntime's greedy tokens (prefill, then the decoder with past).
fn greedy() -> (Vec<i64>, Vec<i64>) {
    let read = |f: &str| {
        let t = npy::read(&dir().join("generate").join(f)).unwrap();
        t.to_f64_vec().iter().map(|&x| x as i64).collect::<Vec<_>>()
    };
    (read("prompt.npy"), read("greedy.npy"))
}

fn recipe(file: &str, prompt: usize, n: usize) -> Recipe {
    let mut r =
        Recipe::new(ModelSpec { file: dir().join(file), seq: Some(32), ..Default::default() });
    r.generate =
        Some(GenerateOptions { prompt_len: prompt, max_new: n, sample: false, top_k: None });
    r
}

#[test]
fn every_export_generates_the_onnxruntime_greedy_tokens_in_plaintext() {
    let (prompt, want) = greedy();
    for file in ["decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx"]
    {
        let r = recipe(file, prompt.len(), want.len());
        let plain = r.load().unwrap_or_else(|e| panic!("{file}: {e}")).graph;
        assert_eq!(plain.inputs.len(), 1, "{file}: only the ids remain");
        let (tokens, _) = reference_generation(&plain, &prompt, want.len(), None, None).unwrap();
        assert_eq!(tokens, want, "{file}: no-cache reference");
        let gen = r.front().unwrap_or_else(|e| panic!("{file}: {e}")).graph;
        let feeds = HashMap::from([(
            "input_ids".to_string(),
            Tensor::i64([1, prompt.len()], prompt.clone()),
        )]);
        let outs = veil_compiler::eval::run(&gen, &feeds).unwrap();
        let got: Vec<i64> = outs.iter().map(|t| t.to_f64_vec()[0] as i64).collect();
        assert_eq!(got, want, "{file}: generation graph (cache)");
    }
}

#[test]
fn merged_decoder_generates_the_onnxruntime_greedy_tokens_two_party() {
    two_party_generation("decoder_model_merged.onnx");
}

/// Generation from `file` run two-party gives onnxruntime's greedy tokens.
fn two_party_generation(file: &str) {
    let (prompt, want) = greedy();
    let r = recipe(file, prompt.len(), want.len());
    let plain = r.load().unwrap().graph;
    let (_, gaps) = reference_generation(&plain, &prompt, want.len(), None, None).unwrap();
    let min_gap = gaps.iter().fold(f64::INFINITY, |m, &x| m.min(x));
    assert!(min_gap > 2e-2, "a near-tie ({min_gap}) could flip in fixed point");
    let built = r.compile(&mut |_, _| {}, &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let feeds = HashMap::from([("input_ids".to_string(), Tensor::i64([1, prompt.len()], prompt))]);
    let (_, outs) = common::run_compiled(&built.compiled, &feeds, false).unwrap();
    let got: Vec<i64> = (0..want.len())
        .map(|t| {
            let (_, v) = outs.iter().find(|(n, _)| *n == token_output(t)).expect("token");
            v.to_f64_vec()[0].round() as i64
        })
        .collect();
    assert_eq!(got, want, "two-party generation vs onnxruntime greedy");
}

#[test]
fn inconsistent_past_lengths_are_refused_naming_both_inputs() {
    let (inputs, _) = set(1);
    let mut shapes: Vec<(String, Vec<usize>)> =
        inputs.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
    let v = shapes.iter_mut().find(|(n, _)| n == "past_key_values.1.value").unwrap();
    v.1[2] = 4;
    let path = dir().join("decoder_with_past_model.onnx");
    let e = bind_from_shapes(&symbolic_dims(&path).unwrap(), &shapes).unwrap_err();
    assert!(e.contains("past_sequence_length") && e.contains("past_key_values.1.value"), "{e}");
}

/// The with-past export with its inputs changed by `edit`, written to a temporary file.
fn edited(edit: impl Fn(&mut veil_onnx_proto::GraphProto)) -> PathBuf {
    use veil_onnx_proto::Message;
    let bytes = std::fs::read(dir().join("decoder_with_past_model.onnx")).unwrap();
    let mut m = veil_onnx_proto::ModelProto::decode(bytes.as_slice()).unwrap();
    edit(m.graph.as_mut().unwrap());
    let p = std::env::temp_dir().join(format!(
        "veil-with-past-{}-{:?}.onnx",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

#[test]
fn unrecognised_cache_layouts_are_refused_naming_the_input() {
    use veil_onnx_proto::tensor_shape_proto::dimension::Value as D;
    type Edit = Box<dyn Fn(&mut veil_onnx_proto::GraphProto)>;
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            // A layer's value without its key.
            Box::new(|g| g.input.retain(|i| i.name.as_deref() != Some("past_key_values.1.key"))),
            "past_key_values.1.value",
            "no matching past key",
        ),
        (
            // One past with its own length.
            Box::new(|g| {
                let i =
                    g.input.iter_mut().find(|i| i.name.as_deref() == Some("past_key_values.1.key"));
                let Some(veil_onnx_proto::type_proto::Value::TensorType(t)) =
                    i.unwrap().r#type.as_mut().unwrap().value.as_mut()
                else {
                    panic!()
                };
                t.shape.as_mut().unwrap().dim[2].value = Some(D::DimParam("other_length".into()));
            }),
            "past_key_values.1.key",
            "same past-length axis",
        ),
    ];
    for (edit, input, why) in cases {
        let path = edited(edit);
        let mut r =
            Recipe::new(ModelSpec { file: path.clone(), seq: Some(32), ..Default::default() });
        r.generate =
            Some(GenerateOptions { prompt_len: 4, max_new: 2, sample: false, top_k: None });
        let msg = r.load().err().map(|e| e.to_string()).unwrap_or_default();
        std::fs::remove_file(&path).ok();
        assert!(msg.contains(input) && msg.contains(why), "{msg}");
    }
}

#[test]
fn decoder_with_past_alone_generates_the_onnxruntime_greedy_tokens_two_party() {
    // Traced for one new token, it has no causal mask: veil puts back the one that token by
    // token use implies, and reads the prompt at once.
    two_party_generation("decoder_with_past_model.onnx");
}
