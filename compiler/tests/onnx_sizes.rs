//! Sizes in an ONNX file are multiplied with checks: a shape whose element count overflows, or
//! a folded constant far larger than the file, is an error naming the node, never a wrapped
//! size (release builds) or an overflow panic (debug builds).

mod common;

use veil_compiler::frontend::onnx::{import_bytes, ImportError, ImportOptions};
use veil_compiler::ir::Graph;
use veil_onnx_proto::*;

use common::onnx::typed_info as value_info;

fn node(op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(op.to_lowercase()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec!["y".into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(7),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), i: Some(i), r#type: Some(2), ..Default::default() }
}

/// A model of one node `op` reading the f32 input `x` of shape `dims` (when given) and the
/// integer initializers `inits`, with output `y`.
fn import(
    op: NodeProto,
    dims: Option<&[i64]>,
    inits: Vec<TensorProto>,
) -> Result<Graph, ImportError> {
    let bytes = ModelProto {
        ir_version: Some(9),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(18) }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![op],
            input: dims.map(|d| value_info("x", 1, d)).into_iter().collect(),
            output: vec![ValueInfoProto { name: Some("y".into()), ..Default::default() }],
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    import_bytes(&bytes, "m.onnx", &ImportOptions::default())
}

fn err(r: Result<Graph, ImportError>) -> String {
    r.map(|_| ()).expect_err("the model must be refused").to_string()
}

const G: i64 = 1 << 32;

#[test]
fn expanding_a_constant_to_2_32_by_2_32_is_an_error_not_zero_elements() {
    // The product 2^64 wrapped to 0 in release builds and passed the size limit.
    let e = err(import(
        node("Expand", &["one", "s"], vec![]),
        None,
        vec![ints("one", &[1]), ints("s", &[G, G])],
    ));
    assert!(e.contains("m.onnx: node `expand` (Expand)"), "{e}");
    assert!(e.contains("the target shape [4294967296, 4294967296] has more elements"), "{e}");
}

#[test]
fn expanding_an_input_past_usize_is_an_error() {
    let e =
        err(import(node("Expand", &["x", "s"], vec![]), Some(&[1]), vec![ints("s", &[G, G, G])]));
    assert!(
        e.contains("node `expand` (Expand)") && e.contains("more elements than a tensor can hold"),
        "{e}"
    );
}

#[test]
fn a_folded_constant_is_bounded_whatever_op_makes_it() {
    // [2^15, 1] + [1, 2^15] folds to 2^30 elements: 8 GiB from a 512 KiB file.
    let col = TensorProto { dims: vec![1 << 15, 1], ..ints("a", &vec![1; 1 << 15]) };
    let row = TensorProto { dims: vec![1, 1 << 15], ..ints("b", &vec![1; 1 << 15]) };
    let e = err(import(node("Add", &["a", "b"], vec![]), None, vec![col, row]));
    assert!(
        e.contains("node `add` (Add)")
            && e.contains("constant of shape [32768, 32768], more than 2^28"),
        "{e}"
    );
}

#[test]
fn reshape_targets_are_checked_products() {
    // With a -1 the other dimensions' product overflowed; without one, shape inference's did
    // (`allowzero`: a 0 is a zero-length dimension, not a copy of the input's).
    for target in [&[-1, G, G][..], &[G, G, 0]] {
        let op = node("Reshape", &["x", "s"], vec![int_attr("allowzero", 1)]);
        let e = err(import(op, Some(&[0]), vec![ints("s", target)]));
        assert!(
            e.contains("node `reshape` (Reshape)")
                && e.contains("has more elements than a tensor can hold"),
            "{target:?}: {e}"
        );
    }
}

#[test]
fn an_input_shape_past_usize_is_an_error() {
    let e = err(import(node("Relu", &["x"], vec![]), Some(&[G, G, G]), vec![]));
    assert!(
        e.contains("input `x` of shape [4294967296, 4294967296, 4294967296] has more elements"),
        "{e}"
    );
}

#[test]
fn slice_steps_at_the_ends_of_i64_take_one_element() {
    // `end - start + step - 1` overflowed for i64::MAX and `-step` for i64::MIN.
    let cases = [(0, 4, i64::MAX), (3, -5, i64::MIN)];
    for (start, end, step) in cases {
        let inits =
            vec![ints("st", &[start]), ints("en", &[end]), ints("ax", &[0]), ints("sp", &[step])];
        let g = import(node("Slice", &["x", "st", "en", "ax", "sp"], vec![]), Some(&[4]), inits)
            .unwrap();
        assert_eq!(g.ty(g.outputs[0]).shape, vec![1], "step {step}");
    }
}

#[test]
fn split_sizes_and_counts_from_the_file_are_checked() {
    let split = |attrs, inits| {
        let mut n = node("Split", &["x", "sp"][..if inits == 0 { 1 } else { 2 }], attrs);
        n.output = vec!["y".into(), "z".into()];
        n
    };
    // num_outputs = -1 became 2^64 - 1 parts to allocate.
    let e = err(import(split(vec![int_attr("num_outputs", -1)], 0), Some(&[4]), vec![]));
    assert!(
        e.contains("node `split` (Split)")
            && e.contains("num_outputs is -1 but the node has 2 outputs"),
        "{e}"
    );
    // 2^63 + 2^63 + 4 wrapped to 4, the dimension.
    let sizes = ints("sp", &[i64::MIN, i64::MIN, 4]);
    let e = err(import(split(vec![], 1), Some(&[4]), vec![sizes]));
    assert!(e.contains("node `split` (Split)"), "{e}");
}

#[test]
fn concatenated_dimensions_are_a_checked_sum() {
    // Three empty [2^63 - 1, 0] constants: the axis summed past 2^64.
    let empty = |name: &str| TensorProto {
        name: Some(name.into()),
        dims: vec![i64::MAX, 0],
        data_type: Some(7),
        ..Default::default()
    };
    let op = node("Concat", &["a", "b", "c"], vec![int_attr("axis", 0)]);
    let e = err(import(op, None, vec![empty("a"), empty("b"), empty("c")]));
    assert!(e.contains("node `concat` (Concat): concat on axis 0: the dimension overflows"), "{e}");
}
