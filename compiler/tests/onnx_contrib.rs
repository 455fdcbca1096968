//! onnxruntime's `com.microsoft` contrib operators: the forms veil does not support are
//! refused with an error naming the node, the operator and what to do; contrib operators it
//! does not know are listed with their domain; QuickGelu (in no fixture) evaluates to its
//! definition and runs two-party (its sigmoid as the stdlib's sigmoid_exp). The fused fixtures themselves are in `onnx_models.rs` and `two_party.rs`.

mod common;

use std::collections::HashMap;
use veil_compiler::frontend::onnx::{import_bytes, ImportOptions};
use veil_compiler::ir::Tensor;
use veil_onnx_proto::*;

const MS: &str = "com.microsoft";

fn tensor_info(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    common::onnx::typed_info(name, elem, dims)
}

fn float_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    common::onnx::value_info(name, dims)
}

fn contrib(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        domain: Some(MS.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

use common::onnx::int_attr;

fn weight(name: &str, dims: &[i64]) -> TensorProto {
    let n: i64 = dims.iter().product();
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        float_data: (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.05).collect(),
        ..Default::default()
    }
}

fn model(
    node: Vec<NodeProto>,
    input: Vec<ValueInfoProto>,
    output: Vec<ValueInfoProto>,
    initializer: Vec<TensorProto>,
) -> Vec<u8> {
    common::onnx::model_with("g", &[("", 17), (MS, 1)], node, input, output, initializer)
}

fn err(bytes: &[u8]) -> String {
    match import_bytes(bytes, "test.onnx", &ImportOptions::default()) {
        Ok(_) => panic!("imported"),
        Err(e) => e.to_string(),
    }
}

/// An `Attention` node on x [1, 4, 8] with 2 heads and packed weights, plus `extra` inputs.
fn attention(inputs: &[&str], extra_inputs: Vec<ValueInfoProto>, heads: Option<i64>) -> Vec<u8> {
    let mut n = contrib("att", "Attention", inputs, &["y"]);
    n.attribute.extend(heads.map(|h| int_attr("num_heads", h)));
    let mut input = vec![float_info("x", &[1, 4, 8])];
    input.extend(extra_inputs);
    model(
        vec![n],
        input,
        vec![float_info("y", &[1, 4, 8])],
        vec![weight("w", &[8, 24]), weight("b", &[24])],
    )
}

#[test]
fn attention_with_past_key_values_is_refused_naming_the_node() {
    let past = tensor_info("past", 1, &[2, 1, 2, 3, 4]);
    let e = err(&attention(&["x", "w", "b", "", "past"], vec![past], Some(2)));
    assert!(
        e.contains("node `att` (Attention): input 4 (past) is not supported; export without past"),
        "{e}"
    );
}

#[test]
fn attention_with_a_4d_mask_is_refused_with_the_forms_supported() {
    let mask = tensor_info("mask", 6, &[1, 1, 4, 4]);
    let e = err(&attention(&["x", "w", "b", "mask"], vec![mask], Some(2)));
    assert!(e.contains("node `att` (Attention): mask_index of shape [1, 1, 4, 4]"), "{e}");
    assert!(e.contains("expected [1] end positions, [2] end and start positions"), "{e}");
}

#[test]
fn attention_needs_num_heads() {
    let e = err(&attention(&["x", "w", "b"], vec![], None));
    assert!(e.contains("node `att` (Attention): attribute `num_heads` is required"), "{e}");
    let e = err(&attention(&["x", "w", "b"], vec![], Some(3)));
    assert!(e.contains("do not divide into 3 heads"), "{e}");
}

#[test]
fn skip_layer_norm_mean_output_is_refused() {
    let n = contrib("sln", "SkipLayerNormalization", &["x", "s", "g"], &["y", "mean"]);
    let bytes = model(
        vec![n],
        vec![float_info("x", &[1, 4, 8]), float_info("s", &[1, 4, 8])],
        vec![float_info("y", &[1, 4, 8]), float_info("mean", &[1, 4, 1])],
        vec![weight("g", &[8])],
    );
    let e = err(&bytes);
    assert!(e.contains("node `sln` (SkipLayerNormalization): output 1 (the mean) is used"), "{e}");
}

#[test]
fn packed_multi_head_attention_is_refused() {
    let mut n = contrib("mha", "MultiHeadAttention", &["qkv"], &["y"]);
    n.attribute.push(int_attr("num_heads", 2));
    let bytes = model(
        vec![n],
        vec![float_info("qkv", &[1, 4, 2, 3, 4])],
        vec![float_info("y", &[1, 4, 8])],
        vec![],
    );
    let e = err(&bytes);
    assert!(e.contains("node `mha` (MultiHeadAttention): packed Q/K/V"), "{e}");
}

#[test]
fn unknown_contrib_ops_are_listed_with_their_domain() {
    let bytes = model(
        vec![contrib("gqa", "GroupQueryAttention", &["x"], &["y"])],
        vec![float_info("x", &[1, 4, 8])],
        vec![float_info("y", &[1, 4, 8])],
        vec![],
    );
    let e = err(&bytes);
    assert!(e.contains("`gqa` (GroupQueryAttention from com.microsoft opset 1)"), "{e}");
}

#[test]
fn quick_gelu_is_x_times_sigmoid_of_alpha_x() {
    let bytes = model(
        vec![contrib("qg", "QuickGelu", &["x"], &["y"])],
        vec![float_info("x", &[5])],
        vec![float_info("y", &[5])],
        vec![],
    );
    let g = import_bytes(&bytes, "t", &ImportOptions::default()).unwrap();
    let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
    let inputs = HashMap::from([("x".to_string(), Tensor::f32(vec![5], xs.to_vec()))]);
    let y = veil_compiler::eval::run(&g, &inputs).unwrap()[0].to_f64_vec();
    for (x, y) in xs.iter().zip(y) {
        let x = *x as f64;
        let want = x / (1.0 + (-1.702 * x).exp());
        assert!((y - want).abs() < 1e-6, "QuickGelu({x}) = {y}, expected {want}");
    }
}

#[test]
fn quick_gelu_of_a_secret_runs_two_party() {
    // x (the client's) · W (the server's) → QuickGelu: the sigmoid runs as stdlib sigmoid_exp.
    let mut rng = veil_compiler::weights::SplitMix(9);
    let w = TensorProto {
        name: Some("w".into()),
        dims: vec![8, 8],
        data_type: Some(tensor_proto::DataType::Float as i32),
        float_data: (0..64).map(|_| rng.normal() as f32 * 0.6).collect(),
        ..Default::default()
    };
    let bytes = model(
        vec![
            NodeProto {
                op_type: Some("MatMul".into()),
                input: vec!["x".into(), "w".into()],
                output: vec!["h".into()],
                ..Default::default()
            },
            contrib("qg", "QuickGelu", &["h"], &["y"]),
        ],
        vec![float_info("x", &[4, 8])],
        vec![float_info("y", &[4, 8])],
        vec![w],
    );
    let mut g = import_bytes(&bytes, "t", &ImportOptions::default()).unwrap();
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let x = Tensor::f32([4, 8], (0..32).map(|_| rng.normal() as f32).collect());
    let inputs = HashMap::from([("x".to_string(), x)]);
    let want = veil_compiler::eval::run(&g, &inputs).unwrap()[0].to_f64_vec();
    let vis = |_: &str| veil_compiler::backend::partition::Vis::Server;
    let c = veil_compiler::compile::compile(g, &vis, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, outs) = common::run_compiled(&c, &inputs, false).unwrap();
    let got = outs[0].1.to_f64_vec();
    let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = common::max_abs_diff(&got, &want);
    // sigmoid_exp is within 2.0e-3 (stdlib table); times |x| ≲ 4 here.
    assert!(err <= 1e-2 * max, "max error {err:.3e} of max |y| = {max:.3}");
}
