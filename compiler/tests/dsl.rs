//! The DSL front end: models lower to IR, every stdlib function instantiates, and each kind
//! of bad program gets a located, rendered error (snapshotted).

use veil_compiler::dsl::{lower_model, stdlib_loader, Loader, Val, WeightSource};
use veil_compiler::ir::*;

/// Every parameter is filled with 0.5 (the tests here check structure, not values).
struct Halves;
impl WeightSource for Halves {
    fn get(&mut self, _key: &str, ty: &TensorType) -> Result<Tensor, String> {
        Ok(Tensor::f32(ty.shape.clone(), vec![0.5; ty.numel()]))
    }
}

fn loader_with(path: &str, src: &str) -> Result<Loader, veil_compiler::dsl::DslError> {
    let mut l = stdlib_loader();
    l.load_source(path, src.to_string())?;
    Ok(l)
}

#[test]
fn a_model_with_functions_repeat_and_params_lowers_to_ir() {
    let l = loader_with(
        "m.veil",
        r#"
        import gelu;
        const S = 4;
        const H = 8;
        fn block(x, layer) {
            param w: private f32[H, H] = "layer.{layer}.w";
            param b: public f32[H] = "layer.{layer}.b";
            let h = x @ w + b;
            gelu(h) ^ 2
        }
        model m {
            input x: client f32[S, H];
            let h = x;
            repeat layer in 0..2 { h = block(h, layer); }
            output y = softmax(h, axis = -1);
        }
    "#,
    )
    .unwrap();
    let m = lower_model(&l, "m", &mut Halves).unwrap();
    verify(&m.graph).unwrap();
    assert_eq!(m.public_params, vec!["layer.0.b", "layer.1.b"]);
    assert_eq!(m.graph.weights().len(), 4);
    let ops: Vec<&str> = m.graph.order.iter().map(|&n| m.graph.nodes[n].op.name()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "matmul").count(), 2);
    assert_eq!(ops.iter().filter(|o| **o == "gelu").count(), 2);
    assert_eq!(*ops.last().unwrap(), "softmax");
    assert_eq!(m.graph.values[m.graph.outputs[0]].name, "y");
}

#[test]
fn every_stdlib_function_instantiates_into_a_valid_graph() {
    let mut l = stdlib_loader();
    let imports: String =
        veil_stdlib::MODULES.iter().map(|(n, _)| format!("import {n};\n")).collect();
    l.load_source("all.veil", imports).unwrap();
    for f in veil_stdlib::ALL {
        let shape = match f.shape {
            veil_stdlib::Shape::Elementwise => vec![16],
            veil_stdlib::Shape::Rows(n) => vec![4, n],
        };
        let g = veil_compiler::stdlib_table::function_graph(f, shape)
            .unwrap_or_else(|e| panic!("{}: {e}", f.name));
        verify(&g).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        // Approximations use only operators the two-party backend lowers.
        for &n in &g.order {
            let op = &g.nodes[n].op;
            assert!(
                !matches!(
                    op,
                    Op::Exp
                        | Op::Erf
                        | Op::Tanh
                        | Op::Sqrt
                        | Op::Reciprocal
                        | Op::Softmax { .. }
                        | Op::LayerNorm { .. }
                        | Op::Gelu { .. }
                ),
                "{} uses {op}",
                f.name
            );
        }
    }
    let mut g = Graph::new("ln");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![4, 8]));
    let gm = g.add_input("g", TensorType::new(DType::F32, vec![8]));
    let b = g.add_input("b", TensorType::new(DType::F32, vec![8]));
    let y = veil_compiler::dsl::instantiate(
        &l,
        "layernorm_poly",
        &mut g,
        &[x, gm, b],
        &[("eps", Val::Num(1e-12))],
        "ln",
    )
    .unwrap();
    g.outputs = vec![y];
    verify(&g).unwrap();
}

fn error_of(path: &str, src: &str) -> String {
    match loader_with(path, src) {
        Err(e) => e.to_string(),
        Ok(l) => match lower_model(&l, "m", &mut Halves) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{path} should not compile"),
        },
    }
}

#[test]
fn bad_programs_get_located_errors() {
    let cases = [
        ("syntax.veil", "model m {\n  input x: client f32[2]\n  output y = x;\n}\n"),
        ("unknown_name.veil", "model m {\n  input x: client f32[2];\n  output y = x * scale;\n}\n"),
        ("shape_mismatch.veil", "model m {\n  input x: client f32[2, 3];\n  output y = x @ x;\n}\n"),
        ("input_not_client.veil", "model m {\n  input x: private f32[2];\n  output y = x;\n}\n"),
        ("param_client.veil", "model m {\n  input x: client f32[2];\n  param w: client f32[2];\n  output y = x * w;\n}\n"),
        ("recursion.veil", "fn f(x) { g(x) }\nfn g(x) { f(x) }\nmodel m {\n  input x: client f32[2];\n  output y = f(x);\n}\n"),
        ("too_many_args.veil", "fn f(x) { x }\nmodel m {\n  input x: client f32[2];\n  output y = f(x, x);\n}\n"),
        ("missing_arg.veil", "fn f(x, y) { x + y }\nmodel m {\n  input x: client f32[2];\n  output y = f(x);\n}\n"),
        ("unknown_named_arg.veil", "model m {\n  input x: client f32[2, 4];\n  output y = softmax(x, dim = 1);\n}\n"),
        ("typed_param.veil", "fn f(x: f32[3]) { x }\nmodel m {\n  input x: client f32[2];\n  output y = f(x);\n}\n"),
        ("unknown_module.veil", "import nope;\nmodel m {\n  input x: client f32[2];\n  output y = x;\n}\n"),
        ("no_output.veil", "model m {\n  input x: client f32[2];\n  let y = x;\n}\n"),
    ];
    for (path, src) in cases {
        insta::assert_snapshot!(path, error_of(path, src));
    }
}

#[test]
fn names_built_in_a_caller_interpolate_there_and_examples_have_one_weight_per_layer() {
    for (file, model, per_layer) in
        [("bert-base.veil", "bert_base", 16usize), ("gpt2-small.veil", "gpt2_small", 16usize)]
    {
        let path = format!("{}/../examples/models/{file}", env!("CARGO_MANIFEST_DIR"));
        let mut l = stdlib_loader();
        l.load_path(&path).unwrap();
        let m = lower_model(&l, model, &mut Halves).unwrap();
        let names: std::collections::HashSet<String> =
            m.graph.weights().iter().map(|&w| m.graph.values[w].name.clone()).collect();
        assert!(names.iter().all(|n| !n.contains('{')), "{file}: uninterpolated names");
        for layer in [0, 11] {
            let prefix = if model == "bert_base" {
                format!("layer.{layer}.")
            } else {
                format!("h.{layer}.")
            };
            let n = names.iter().filter(|n| n.starts_with(&prefix)).count();
            assert_eq!(n, per_layer, "{file}: weights of layer {layer}");
        }
    }
}

#[test]
fn causal_mask_is_zero_on_and_below_the_diagonal() {
    let l = loader_with(
        "m.veil",
        "model m { input x: client f32[3, 3]; output y = x + causal_mask(3); }",
    )
    .unwrap();
    let m = lower_model(&l, "m", &mut Halves).unwrap();
    let c = m.graph.consts();
    let t = m.graph.const_data(c[0]).unwrap().as_f32().unwrap().to_vec();
    let big = f32::MIN;
    assert_eq!(t, vec![0.0, big, big, 0.0, 0.0, big, 0.0, 0.0, 0.0]);
    let bad =
        loader_with("b.veil", "model m { input x: client f32[3]; output y = x + causal_mask(0); }")
            .unwrap();
    let err = match lower_model(&bad, "m", &mut Halves) {
        Ok(_) => panic!("causal_mask(0) must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("positive integer"), "{err}");
}
