//! Weight-only int8 quantization as exporters write it (an `INT8` initializer, `Cast` to float,
//! `Mul` by a per-channel scale, then the matrix product) compiles two-party: the server
//! dequantizes its own weight in the clear and the product runs on the float weight; the
//! output matches the float reference.

mod common;

use common::onnx::{int_attr, model, node, value_info};
use std::collections::HashMap;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::frontend::onnx::{import_bytes, ImportOptions};
use veil_compiler::ir::{Graph, Tensor};
use veil_onnx_proto::*;

/// The int8 weight [16, 8], its per-column scale and the bias.
fn params() -> (Vec<i32>, Vec<f32>, Vec<f32>) {
    let mut rng = veil_compiler::weights::SplitMix(11);
    let q = (0..16 * 8).map(|_| (rng.normal() * 40.0).clamp(-127.0, 127.0) as i32).collect();
    let scale = (0..8).map(|_| 0.004 + 0.002 * rng.normal().abs() as f32).collect();
    let bias = (0..8).map(|_| rng.normal() as f32 * 0.1).collect();
    (q, scale, bias)
}

/// x [4, 16] (the client's) → x · (f32(q) · scale) + b → y [4, 8], q int8 [16, 8].
fn int8_model() -> Vec<u8> {
    let (q, scale, bias) = params();
    let init = |name: &str, dims: &[i64], t: tensor_proto::DataType| TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(t as i32),
        ..Default::default()
    };
    let qw = TensorProto { int32_data: q, ..init("w_q", &[16, 8], tensor_proto::DataType::Int8) };
    let sw =
        TensorProto { float_data: scale, ..init("w_scale", &[8], tensor_proto::DataType::Float) };
    let bw = TensorProto { float_data: bias, ..init("b", &[8], tensor_proto::DataType::Float) };
    let to_float = int_attr("to", tensor_proto::DataType::Float as i64);
    let nodes = vec![
        node("Cast", &["w_q"], "w_f", vec![to_float]),
        node("Mul", &["w_f", "w_scale"], "w", vec![]),
        node("MatMul", &["x", "w"], "xw", vec![]),
        node("Add", &["xw", "b"], "y", vec![]),
    ];
    let (input, output) = (vec![value_info("x", &[4, 16])], vec![value_info("y", &[4, 8])]);
    model("int8", nodes, input, output, vec![qw, sw, bw])
}

/// The model after import and the import passes, a seeded input x [4, 16], and the reference
/// evaluator's outputs on it.
fn imported(bytes: &[u8], file: &str) -> (Graph, HashMap<String, Tensor>, Vec<Tensor>) {
    let mut g = import_bytes(bytes, file, &ImportOptions::default()).unwrap();
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let mut rng = veil_compiler::weights::SplitMix(5);
    let x = Tensor::f32([4, 16], (0..64).map(|_| rng.normal() as f32).collect());
    let inputs = HashMap::from([("x".to_string(), x)]);
    let want = veil_compiler::eval::run(&g, &inputs).unwrap();
    (g, inputs, want)
}

#[test]
fn weight_only_int8_compiles_and_matches_the_reference() {
    let (g, inputs, want) = imported(&int8_model(), "int8.onnx");
    // The reference itself against the dequantization written out (the import reads int8
    // from `int32_data`, one value per element).
    let (q, scale, bias) = params();
    let xs = inputs["x"].to_f64_vec();
    let by_hand: Vec<f64> = (0..4 * 8)
        .map(|ij| {
            let (i, j) = (ij / 8, ij % 8);
            let dot: f64 =
                (0..16).map(|k| xs[i * 16 + k] * q[k * 8 + j] as f64 * scale[j] as f64).sum();
            dot + bias[j] as f64
        })
        .collect();
    assert!(common::max_abs_diff(&want[0].to_f64_vec(), &by_hand) < 1e-5);
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    // The dequantized weight is what the server feeds (computed from its int8 weight and the
    // scale, in the clear): the program never sees the int8 tensor or a cast.
    assert!(!veil_isa::disas::disassemble(&c.program).contains("cast"));
    assert!(
        c.server_weights.iter().all(|(_, t)| t.dtype.is_float()),
        "{:?}",
        c.server_weights.iter().map(|(n, t)| (n, t.ty())).collect::<Vec<_>>()
    );
    let (_, outs) = common::run_compiled(&c, &inputs, false).unwrap();
    let (got, want) = (outs[0].1.to_f64_vec(), want[0].to_f64_vec());
    let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = common::max_abs_diff(&got, &want);
    // A product of 16 terms at 16 fractional bits plus one truncation: ~1e-4 absolute.
    assert!(err <= 1e-3 * max.max(1.0), "max error {err:.3e} of max |y| = {max:.3}");
}

/// The same model in the QDQ form quantization tools write for weight-only int8:
/// `DequantizeLinear(w_q, scale, zero_point)` per output channel (axis 1), then the product.
fn qdq_model(quantize_input: bool) -> Vec<u8> {
    let (q, scale, bias) = params();
    let init = |name: &str, dims: &[i64], t: tensor_proto::DataType| TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(t as i32),
        ..Default::default()
    };
    let int8 = tensor_proto::DataType::Int8;
    let qw = TensorProto { int32_data: q, ..init("w_q", &[16, 8], int8) };
    let zp = TensorProto { int32_data: vec![3; 8], ..init("w_zp", &[8], int8) };
    let sw =
        TensorProto { float_data: scale, ..init("w_scale", &[8], tensor_proto::DataType::Float) };
    let bw = TensorProto { float_data: bias, ..init("b", &[8], tensor_proto::DataType::Float) };
    let xs = TensorProto {
        float_data: vec![0.02],
        ..init("x_scale", &[], tensor_proto::DataType::Float)
    };
    let mut nodes =
        vec![node("DequantizeLinear", &["w_q", "w_scale", "w_zp"], "w", vec![int_attr("axis", 1)])];
    let x = if quantize_input {
        nodes.push(node("QuantizeLinear", &["x", "x_scale"], "x_q", vec![]));
        nodes.push(node("DequantizeLinear", &["x_q", "x_scale"], "x_dq", vec![]));
        "x_dq"
    } else {
        "x"
    };
    nodes.push(node("MatMul", &[x, "w"], "xw", vec![]));
    nodes.push(node("Add", &["xw", "b"], "y", vec![]));
    let (input, output) = (vec![value_info("x", &[4, 16])], vec![value_info("y", &[4, 8])]);
    model("qdq", nodes, input, output, vec![qw, zp, sw, bw, xs])
}

#[test]
fn weight_only_dequantize_linear_compiles_and_matches_the_dequantization() {
    let (g, inputs, want) = imported(&qdq_model(false), "qdq.onnx");
    let (q, scale, bias) = params();
    let xs = inputs["x"].to_f64_vec();
    let by_hand: Vec<f64> = (0..4 * 8)
        .map(|ij| {
            let (i, j) = (ij / 8, ij % 8);
            let w = |k: usize| (q[k * 8 + j] - 3) as f64 * scale[j] as f64;
            (0..16).map(|k| xs[i * 16 + k] * w(k)).sum::<f64>() + bias[j] as f64
        })
        .collect();
    assert!(common::max_abs_diff(&want[0].to_f64_vec(), &by_hand) < 1e-5);
    let c = compile(g, &|_| Vis::Server, &CompileOptions::default()).unwrap();
    assert!(c.server_weights.iter().all(|(_, t)| t.dtype.is_float()));
    let (_, outs) = common::run_compiled(&c, &inputs, false).unwrap();
    let (got, want) = (outs[0].1.to_f64_vec(), want[0].to_f64_vec());
    let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = common::max_abs_diff(&got, &want);
    assert!(err <= 1e-3 * max.max(1.0), "max error {err:.3e} of max |y| = {max:.3}");
}

#[test]
fn activation_quantization_is_refused_by_name() {
    let e = import_bytes(&qdq_model(true), "qdq.onnx", &ImportOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("QuantizeLinear") && msg.contains("activation quantization"), "{msg}");
}
