//! Small ONNX models written out in a test: float inputs and outputs of fixed shapes, nodes,
//! and the model's bytes.

use veil_onnx_proto::*;

/// A float tensor input or output of fixed shape.
pub fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    typed_info(name, tensor_proto::DataType::Float as i32, dims)
}

/// A tensor input or output of element type `elem` (ONNX's code) and fixed shape.
pub fn typed_info(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    let dims: Vec<Result<i64, &str>> = dims.iter().map(|&d| Ok(d)).collect();
    symbolic_info(name, elem, &dims)
}

/// A tensor input or output of element type `elem` whose dimensions are sizes (`Ok`) or
/// symbolic names (`Err`).
pub fn symbolic_info(name: &str, elem: i32, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value as D, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Ok(v) => D::DimValue(*v),
                Err(p) => D::DimParam(p.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node named after its one output.
pub fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(format!("node_{output}")),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(i),
        ..Default::default()
    }
}

/// The bytes of an opset-17 model of one graph.
pub fn model(
    name: &str,
    node: Vec<NodeProto>,
    input: Vec<ValueInfoProto>,
    output: Vec<ValueInfoProto>,
    initializer: Vec<TensorProto>,
) -> Vec<u8> {
    model_with(name, &[("", 17)], node, input, output, initializer)
}

/// The bytes of a model of one graph importing the operator sets `opsets` (domain, version).
pub fn model_with(
    name: &str,
    opsets: &[(&str, i64)],
    node: Vec<NodeProto>,
    input: Vec<ValueInfoProto>,
    output: Vec<ValueInfoProto>,
    initializer: Vec<TensorProto>,
) -> Vec<u8> {
    ModelProto {
        ir_version: Some(9),
        opset_import: opsets
            .iter()
            .map(|&(d, v)| OperatorSetIdProto { domain: Some(d.into()), version: Some(v) })
            .collect(),
        graph: Some(GraphProto {
            name: Some(name.into()),
            node,
            input,
            output,
            initializer,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A float initializer (or `Constant` value) of the given shape.
pub fn f32_tensor(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(tensor_proto::DataType::Float as i32),
        float_data: data,
        ..Default::default()
    }
}

/// An int64 initializer (axes, shapes) of the given shape.
pub fn i64_tensor(name: &str, dims: &[i64], data: Vec<i64>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(tensor_proto::DataType::Int64 as i32),
        int64_data: data,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}
