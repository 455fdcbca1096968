//! Bad ONNX input gives a clear error, never a panic: truncated files, random bytes,
//! unsupported operators (all listed), unbound dimensions, inconsistent shapes.

mod common;

use veil_compiler::frontend::onnx::{import_bytes, ImportError, ImportOptions};
use veil_onnx_proto::*;

use common::onnx::symbolic_info as value_info;

fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> Vec<u8> {
    ModelProto {
        ir_version: Some(9),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            input: inputs,
            output: outputs,
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn err(bytes: &[u8]) -> ImportError {
    import_bytes(bytes, "test.onnx", &ImportOptions::default()).unwrap_err()
}

#[test]
fn a_truncated_file_is_rejected() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/models/bert-tiny-random/model.dynamo_opset17.onnx"
    ))
    .unwrap();
    for cut in [10, 1000, bytes.len() / 2, bytes.len() - 7] {
        let e = err(&bytes[..cut]);
        assert!(matches!(e, ImportError::NotOnnx { .. }), "cut {cut}: {e}");
        assert!(e.to_string().contains("test.onnx is not a valid ONNX model"), "{e}");
    }
}

#[test]
fn random_bytes_are_rejected() {
    let mut s = 12345u64;
    for len in [0usize, 1, 17, 4096] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        assert!(matches!(err(&bytes), ImportError::NotOnnx { .. }));
    }
}

#[test]
fn every_unsupported_node_is_listed_at_once() {
    let mut custom = node("my_custom", "FancyAttention", &["x"], &["y"]);
    custom.domain = Some("com.example".into());
    let bytes = ModelProto {
        ir_version: Some(9),
        opset_import: vec![
            OperatorSetIdProto { domain: Some(String::new()), version: Some(17) },
            OperatorSetIdProto { domain: Some("com.example".into()), version: Some(3) },
        ],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![
                node("conv0", "Conv", &["x", "w"], &["h"]),
                custom,
                node("ok", "Relu", &["h"], &["z"]),
            ],
            input: vec![value_info("x", 1, &[Ok(1), Ok(4)])],
            output: vec![value_info("z", 1, &[Ok(1), Ok(4)])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let e = err(&bytes).to_string();
    assert!(e.contains("2 unsupported nodes"), "{e}");
    assert!(e.contains("`conv0` (Conv from ai.onnx opset 17)"), "{e}");
    assert!(e.contains("`my_custom` (FancyAttention from com.example opset 3)"), "{e}");
}

#[test]
fn an_unbound_dimension_names_the_flag() {
    let bytes = model(
        vec![node("r", "Relu", &["ids"], &["y"])],
        vec![value_info("ids", 1, &[Ok(1), Err("sequence_length")])],
        vec![value_info("y", 1, &[])],
        vec![],
    );
    let e = err(&bytes).to_string();
    assert!(
        e.contains(
            "input `ids` has dimension `sequence_length` with no value; bind it with --seq N"
        ),
        "{e}"
    );
    let bytes = model(
        vec![node("r", "Relu", &["ids"], &["y"])],
        vec![value_info("ids", 1, &[Err("width")])],
        vec![value_info("y", 1, &[])],
        vec![],
    );
    assert!(err(&bytes).to_string().contains("--dim width=N"));
    // Bound, it imports.
    let opts = ImportOptions { dims: vec![("width".into(), 5)], ..Default::default() };
    let mut out = value_info("y", 1, &[]);
    out.r#type = None;
    let bytes = model(
        vec![node("r", "Relu", &["ids"], &["y"])],
        vec![value_info("ids", 1, &[Err("width")])],
        vec![out],
        vec![],
    );
    assert_eq!(
        import_bytes(&bytes, "t", &opts).unwrap().ty(veil_compiler::ir::Value::from_u32(0)).shape,
        vec![5]
    );
}

#[test]
fn inconsistent_shapes_name_the_node() {
    let w = TensorProto {
        name: Some("w".into()),
        dims: vec![3, 2],
        data_type: Some(1),
        float_data: vec![0.5; 6],
        ..Default::default()
    };
    let bytes = model(
        vec![node("proj", "MatMul", &["x", "w"], &["y"])],
        vec![value_info("x", 1, &[Ok(1), Ok(4)])],
        vec![value_info("y", 1, &[])],
        vec![w],
    );
    let e = err(&bytes).to_string();
    assert!(
        e.contains("node `proj` (MatMul): matmul inner dimensions differ: [1,4] · [3,2]"),
        "{e}"
    );
}

#[test]
fn a_shape_computed_from_data_is_rejected_with_a_reason() {
    let bytes = model(
        vec![node("cast", "Cast", &["x"], &["s"]), node("rs", "Reshape", &["x", "s"], &["y"])],
        vec![value_info("x", 7, &[Ok(2)])],
        vec![value_info("y", 7, &[])],
        vec![],
    );
    let mut m = ModelProto::decode(bytes.as_slice()).unwrap();
    m.graph.as_mut().unwrap().node[0].attribute = vec![AttributeProto {
        name: Some("to".into()),
        i: Some(7),
        r#type: Some(2),
        ..Default::default()
    }];
    let e = err(&m.encode_to_vec()).to_string();
    assert!(e.contains("the target shape (`s`) must be a constant known at compile time"), "{e}");
}
