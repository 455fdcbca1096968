//! Public weights (Marill) and the leakage check: the client's file holds public data only,
//! a frozen prefix costs nothing online, and a program that would leak is refused by name.

use std::path::{Path, PathBuf};
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::leakage::{check_client_graph, check_constants, check_program};
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
    let e = check_client_graph(&cg, &[("layer.3.attention.query.weight".into(), secret)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("copied_weight") && e.contains("layer.3.attention.query.weight"), "{e}");
}

#[test]
fn a_program_revealing_more_than_its_outputs_is_refused_by_name() {
    let (g, _) = bert_tiny();
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    check_program(&c.program, &["last_hidden_state".into()]).unwrap();
    let e = check_program(&c.program, &["pooled".into()]).unwrap_err().to_string();
    assert!(e.contains("last_hidden_state") && e.contains("not a declared output"), "{e}");
}

#[test]
fn globs_name_weights() {
    let (g, _) = bert_tiny();
    let p = public_weights(&g, &[], &["m.embeddings.*".into()], None).unwrap();
    assert_eq!(p.len(), 5);
    assert!(p.keys().all(|n| glob_match("m.embeddings.*", n)));
    let e = public_weights(&g, &[], &["m.embedding.*".into()], None).unwrap_err().to_string();
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

/// A private matrix (`rows × cols`, distinct values) and a client graph holding `held`.
fn secret_matrix(rows: usize, cols: usize) -> Tensor {
    let mut r = veil_compiler::weights::SplitMix(7);
    Tensor::f32(vec![rows, cols], (0..rows * cols).map(|_| (r.normal() * 0.02) as f32).collect())
}

fn client_holding(held: Tensor) -> Graph {
    let mut cg = Graph::new("c");
    let x = cg.add_input("x", TensorType::new(DType::F32, vec![2]));
    cg.add_const("held", held);
    cg.outputs = vec![x];
    cg
}

#[test]
fn a_client_part_holding_a_transformed_private_weight_is_refused() {
    let (rows, cols) = (6, 5);
    let w = secret_matrix(rows, cols);
    let v = w.as_f32().unwrap().to_vec();
    let private = [("layer.1.ffn.weight".to_string(), w.clone())];
    let transposed: Vec<f32> = (0..cols)
        .flat_map(|j| (0..rows).map(move |i| (i, j)))
        .map(|(i, j)| v[i * cols + j])
        .collect();
    let scaled: Vec<f32> = v.iter().map(|x| x * -0.125).collect();
    let fixed: Vec<i64> = v.iter().map(|&x| (x as f64 * 65536.0).round() as i64).collect();
    // Concatenated after a public block along the rows, and along the columns.
    let mut rows_cat: Vec<f32> = vec![0.5; 2 * cols];
    rows_cat.extend(&v);
    let cols_cat: Vec<f32> = (0..rows)
        .flat_map(|i| [&[0.25f32, 0.75][..], &v[i * cols..(i + 1) * cols]].concat())
        .collect();
    let cases = [
        (Tensor::f32(vec![cols, rows], transposed), "another layout"),
        (Tensor::f32(vec![rows * cols], v.clone()), "another layout"),
        (Tensor::f32(vec![rows, cols], scaled), "scaled by -1.25"),
        (Tensor::i64(vec![rows, cols], fixed), "scaled by 6.55"),
        (Tensor::f32(vec![rows + 2, cols], rows_cat), "contains"),
        (Tensor::f32(vec![rows, cols + 2], cols_cat), "contains"),
    ];
    for (held, how) in cases {
        let e = check_client_graph(&client_holding(held.clone()), &private)
            .expect_err(&format!("{held:?} must be refused"))
            .to_string();
        assert!(e.contains("`held`") && e.contains(how) && e.contains("layer.1.ffn.weight"), "{e}");
    }
    // Unrelated data of the same size, and a constant vector the weight does not resemble.
    let other = secret_matrix(cols, rows);
    let other =
        Tensor::f32(vec![rows, cols], other.as_f32().unwrap().iter().map(|x| x + 0.5).collect());
    check_client_graph(&client_holding(other), &private).unwrap();
    check_client_graph(
        &client_holding(Tensor::f32(vec![rows * cols], vec![1.0; rows * cols])),
        &private,
    )
    .unwrap();
}

/// BERT-tiny's program, all weights private, with its output revealed to the server instead.
fn revealing_to_the_server() -> (veil_isa::Program, Vec<String>) {
    let (g, _) = bert_tiny();
    let names: Vec<String> = g.outputs.iter().map(|&o| g.values[o].name.clone()).collect();
    let mut p = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap().program;
    let b = p.outputs[0].buf;
    p.outputs[0].party = veil_isa::Party::Server;
    p.buffers[b.0 as usize].kind = veil_isa::Kind::Private(veil_isa::Party::Server);
    for ins in &mut p.body {
        if let veil_isa::Instr::Reveal { d, to, .. } = ins {
            if *d == b {
                *to = veil_isa::Party::Server;
            }
        }
    }
    veil_isa::validate(&p).unwrap();
    (p, names)
}

/// Issue 23, 9(c): the check every compile runs refuses a program that reveals to the server.
#[test]
fn a_compile_that_reveals_to_the_server_is_refused() {
    let (mut p, names) = revealing_to_the_server();
    let e = check_program(&p, &names).unwrap_err().to_string();
    assert!(e.contains("last_hidden_state") && e.contains("for the server"), "{e}");
    // The output declared for the client, the reveal still to the server: the reveal is named.
    p.outputs.clear();
    let e = check_program(&p, &names).unwrap_err().to_string();
    assert!(e.contains("reveal d=") && e.contains("to=server"), "{e}");
    assert!(e.contains("only to the client"), "{e}");
}

#[test]
fn public_weights_in_the_program_are_tagged_and_listed() {
    let (g, _) = bert_tiny();
    let vis = |n: &str| if glob_match("*.layer.1.*", n) { Vis::Public } else { Vis::Server };
    let c = compile(g, &vis, &CompileOptions::default()).unwrap();
    let from: Vec<&veil_isa::ConstOrigin> = (0..c.program.consts.len())
        .map(|i| c.program.const_origin(i))
        .filter(|o| matches!(o, veil_isa::ConstOrigin::PublicWeights(_)))
        .collect();
    assert!(from.len() >= 6, "the layer's matrices and biases: {from:?}");
    assert!(!c.reveals.public_weights.is_empty());
    assert!(
        c.reveals.public_weights.iter().all(|n| glob_match("*.layer.1.*", n)),
        "{:?}",
        c.reveals
    );
    let text = c.reveals.to_string();
    assert!(text.contains("to the client: output `last_hidden_state`"), "{text}");
    assert!(text.contains("public weights in the clear"), "{text}");
    // The same program checked against the weights as if they were private: refused.
    let (_, exported) = bert_tiny();
    let layer1: Vec<(String, Tensor)> =
        exported.into_iter().filter(|(n, _)| glob_match("*.layer.1.*", n)).collect();
    let e = check_constants(&c.program, &layer1).unwrap_err().to_string();
    assert!(e.contains("which the server keeps private"), "{e}");
    let mut p = c.program.clone();
    p.const_origins.clear();
    let e = check_constants(&p, &layer1).unwrap_err().to_string();
    assert!(e.contains("holds the values of the server's private"), "{e}");
}
