//! Public weights (Marill) and the leakage check: the client's file holds public data only,
//! a frozen prefix costs nothing online, and a program that would leak is refused by name.

use std::path::{Path, PathBuf};
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::leakage::{check_client_graph, check_program};
use veil_compiler::compile::public::{glob_match, public_weights, Reason};
use veil_compiler::compile::{artifacts, compile, CompileOptions};
use veil_compiler::dsl::{lower_model, stdlib_loader};
use veil_compiler::frontend::onnx::{import_file, ImportOptions};
use veil_compiler::ir::{DType, Graph, Tensor, TensorType, ValueDef};
use veil_compiler::weights::TensorSource;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bert_tiny() -> (Graph, Vec<(String, Tensor)>) {
    let onnx = import_file(
        &repo().join("tests/fixtures/models/bert-tiny-random/model.dynamo_opset17.onnx"),
        &ImportOptions::default(),
    )
    .unwrap();
    let exported = veil_compiler::frontend::weight_names::exported_weights(&onnx);
    let mut l = stdlib_loader();
    l.load_path(&repo().join("examples/models/bert-tiny.veil").display().to_string()).unwrap();
    let g = lower_model(&l, "bert_tiny", &mut TensorSource(exported.iter().cloned().collect()))
        .unwrap()
        .graph;
    (g, exported)
}

fn online(c: &veil_compiler::compile::Compiled) -> u64 {
    let b = veil_isa::cost::program_cost(&c.program).body;
    b.sent[0] + b.sent[1]
}

#[test]
fn the_client_file_holds_public_weights_only_and_the_frozen_prefix_is_free() {
    let (g, exported) = bert_tiny();
    // The base checkpoint: the export itself with layer 1 "fine-tuned" (changed).
    let base: Vec<(String, Tensor)> = exported
        .iter()
        .map(|(n, t)| {
            let mut t = t.clone();
            if n.contains(".layer.1.") {
                t = veil_compiler::eval::from_f64s(
                    t.dtype,
                    t.shape.clone(),
                    t.to_f64_vec().iter().map(|v| v + 0.01).collect(),
                );
            }
            (n.clone(), t)
        })
        .collect();
    let public = public_weights(&g, &[], &[], Some(&base)).unwrap();
    assert_eq!(public.len(), 21, "embeddings (5) and layer 0 (16) equal the base");
    assert!(public.values().all(|r| matches!(r, Reason::Base(_))));
    assert!(public.keys().all(|n| !n.contains(".layer.1.")));

    let all_private = compile(g.clone(), &|_| Vis::Server, &CompileOptions::default()).unwrap();
    let vis = |n: &str| if public.contains_key(n) { Vis::Public } else { Vis::Server };
    let c = compile(g.clone(), &vis, &CompileOptions::default()).unwrap();
    let (a, b) = (online(&all_private), online(&c));
    eprintln!("online bytes: all private {a}, layer 0 frozen {b}");
    assert!(2 * b < a + a / 10, "a frozen half should cost about half: {b} vs {a}");

    // What the client receives, read back from disk: no private weight in it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("leakage");
    std::fs::create_dir_all(&dir).unwrap();
    let paths = artifacts::write(&c, &dir.join("bt.vbc")).unwrap();
    let bytes = std::fs::read(&paths.client).unwrap();
    let private: Vec<(String, Tensor)> =
        exported.iter().filter(|(n, _)| !public.contains_key(n)).cloned().collect();
    let program = artifacts::read_program(&paths.program).unwrap();
    let client = artifacts::read_client(&paths.client, &program, &paths.program).unwrap();
    check_client_graph(&client.graph, &private).unwrap();
    check_client_graph(&client.graph, &c.server_weights).unwrap();
    // ...while the public table is there (the client computes the frozen prefix itself).
    let word = &exported.iter().find(|(n, _)| n.ends_with("word_embeddings.weight")).unwrap().1;
    let has =
        |t: &Tensor| {
            client.graph.values.iter().any(
                |(_, d)| matches!(&d.def, ValueDef::Const(c) | ValueDef::Weight(c) if **c == *t),
            )
        };
    assert!(has(word), "the public embedding table is in the client's part");
    // Raw bytes too: no private matrix's bytes appear anywhere in the file (the public table's
    // do, so the search would find them).
    let raw_of = |t: &Tensor| -> Vec<u8> {
        t.as_f32().unwrap()[..16].iter().flat_map(|x| x.to_le_bytes()).collect()
    };
    let w = raw_of(word);
    assert!(bytes.windows(w.len()).any(|x| x == w));
    for (n, t) in &private {
        if t.numel() < 64 {
            continue;
        }
        let raw = raw_of(t);
        assert!(!bytes.windows(raw.len()).any(|w| w == raw), "{n} found in the client file");
    }
}

#[test]
fn a_client_part_holding_a_private_weight_is_refused_by_name() {
    let secret = Tensor::f32(vec![2, 2], vec![0.1, 0.2, 0.3, 0.4]);
    let mut cg = Graph::new("c");
    let x = cg.add_input("x", TensorType::new(DType::F32, vec![2, 2]));
    let w = cg.add_const("copied_weight", secret.clone());
    let y = cg.add_node("y", veil_compiler::ir::Op::MatMul, &[x, w], "y").unwrap();
    cg.outputs = vec![y];
    let e =
        check_client_graph(&cg, &[("layer.3.attention.query.weight".into(), secret)]).unwrap_err();
    assert!(e.contains("copied_weight") && e.contains("layer.3.attention.query.weight"), "{e}");
}

#[test]
fn a_program_revealing_more_than_its_outputs_is_refused_by_name() {
    let (g, _) = bert_tiny();
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    check_program(&c.program, &["last_hidden_state".into()]).unwrap();
    let e = check_program(&c.program, &["pooled".into()]).unwrap_err();
    assert!(e.contains("last_hidden_state") && e.contains("not a declared output"), "{e}");
}

#[test]
fn globs_name_weights() {
    let (g, _) = bert_tiny();
    let p = public_weights(&g, &[], &["m.embeddings.*".into()], None).unwrap();
    assert_eq!(p.len(), 5);
    assert!(p.keys().all(|n| glob_match("m.embeddings.*", n)));
    let e = public_weights(&g, &[], &["m.embedding.*".into()], None).unwrap_err();
    assert!(e.contains("matches no weight"), "{e}");
    // In the ONNX export a layer's matrices are `val_NN`: globs see their export-weights names.
    let onnx = import_file(
        &repo().join("tests/fixtures/models/bert-tiny-random/model.dynamo_opset17.onnx"),
        &ImportOptions::default(),
    )
    .unwrap();
    let p = public_weights(&onnx, &[], &["*.layer.0.*".into()], None).unwrap();
    assert_eq!(p.len(), 16, "6 matrices, 6 biases, 4 layer-norm vectors: {p:?}");
}
