//! Weight-only int8 quantization as exporters write it (an `INT8` initializer, `Cast` to float,
//! `Mul` by a per-channel scale, then the matrix product) compiles two-party: the server
//! dequantizes its own weight in the clear and the product runs on the float weight; the
//! output matches the float reference.

mod common;

use std::collections::HashMap;
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{compile, CompileOptions};
use veil_compiler::frontend::onnx::{import_bytes, ImportOptions};
use veil_compiler::ir::Tensor;
use veil_onnx_proto::*;

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value as D, Dimension};
    let dim = dims
        .iter()
        .map(|&d| Dimension { value: Some(D::DimValue(d)), ..Default::default() })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(tensor_proto::DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(format!("node_{output}")),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

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
    let to_float = AttributeProto {
        name: Some("to".into()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(tensor_proto::DataType::Float as i64),
        ..Default::default()
    };
    let nodes = vec![
        node("Cast", &["w_q"], "w_f", vec![to_float]),
        node("Mul", &["w_f", "w_scale"], "w", vec![]),
        node("MatMul", &["x", "w"], "xw", vec![]),
        node("Add", &["xw", "b"], "y", vec![]),
    ];
    ModelProto {
        ir_version: Some(9),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(GraphProto {
            name: Some("int8".into()),
            node: nodes,
            input: vec![value_info("x", &[4, 16])],
            output: vec![value_info("y", &[4, 8])],
            initializer: vec![qw, sw, bw],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn weight_only_int8_compiles_and_matches_the_reference() {
    let mut g = import_bytes(&int8_model(), "int8.onnx", &ImportOptions::default()).unwrap();
    veil_compiler::passes::run(&mut g, &mut veil_compiler::passes::import_pipeline()).unwrap();
    let mut rng = veil_compiler::weights::SplitMix(5);
    let x = Tensor::f32([4, 16], (0..64).map(|_| rng.normal() as f32).collect());
    let inputs = HashMap::from([("x".to_string(), x)]);
    let want = veil_compiler::eval::run(&g, &inputs).unwrap();
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
