//! Elementwise arithmetic, comparisons, logic, casts, matrix products and reductions.

use super::OpBuilder;
use crate::frontend::onnx::context::Cx;
use crate::frontend::onnx::error::ImportError;
use crate::ir::{DType, Op, Tensor, Value};
use std::collections::HashMap;
use veil_onnx_proto::NodeProto;

type R = Result<Vec<Value>, ImportError>;

pub fn register(r: &mut HashMap<&'static str, OpBuilder>) {
    r.insert("Add", |cx, _| binary(cx, Op::Add));
    r.insert("Sub", |cx, _| binary(cx, Op::Sub));
    r.insert("Mul", |cx, _| binary(cx, Op::Mul));
    r.insert("Div", |cx, _| binary(cx, Op::Div));
    r.insert("Pow", |cx, _| binary(cx, Op::Pow));
    r.insert("Equal", |cx, _| binary(cx, Op::Equal));
    r.insert("Less", |cx, _| binary(cx, Op::Less));
    r.insert("LessOrEqual", |cx, _| binary(cx, Op::LessOrEqual));
    r.insert("Greater", |cx, _| binary(cx, Op::Greater));
    r.insert("GreaterOrEqual", |cx, _| binary(cx, Op::GreaterOrEqual));
    r.insert("And", |cx, _| binary(cx, Op::And));
    r.insert("Or", |cx, _| binary(cx, Op::Or));
    r.insert("Xor", |cx, _| binary(cx, Op::Xor));
    r.insert("Max", |cx, _| variadic(cx, Op::Max));
    r.insert("Min", |cx, _| variadic(cx, Op::Min));
    r.insert("Sum", |cx, _| variadic(cx, Op::Add));
    r.insert("Not", |cx, _| unary(cx, Op::Not));
    r.insert("Neg", |cx, _| unary(cx, Op::Neg));
    r.insert("Abs", |cx, _| unary(cx, Op::Abs));
    r.insert("Sqrt", |cx, _| unary(cx, Op::Sqrt));
    r.insert("Reciprocal", |cx, _| unary(cx, Op::Reciprocal));
    r.insert("Exp", |cx, _| unary(cx, Op::Exp));
    r.insert("Log", |cx, _| unary(cx, Op::Log));
    r.insert("Erf", |cx, _| unary(cx, Op::Erf));
    r.insert("Tanh", |cx, _| unary(cx, Op::Tanh));
    r.insert("Sigmoid", |cx, _| unary(cx, Op::Sigmoid));
    r.insert("Relu", |cx, _| unary(cx, Op::Relu));
    r.insert("IsNaN", |cx, _| unary(cx, Op::IsNaN));
    r.insert("IsInf", |cx, _| {
        let negative = cx.attr_int("detect_negative").unwrap_or(1) != 0;
        let positive = cx.attr_int("detect_positive").unwrap_or(1) != 0;
        unary(cx, Op::IsInf { negative, positive })
    });
    r.insert("Cast", cast);
    r.insert("CastLike", cast_like);
    r.insert("Clip", clip);
    r.insert("DequantizeLinear", dequantize_linear);
    r.insert("QuantizeLinear", |cx, _| {
        Err(cx.err(
            "quantizing a computed value (activation quantization, as onnxruntime's \
             quantize_static and quantize_dynamic write) is not supported: veil computes on \
             fixed-point shares; quantize the weights only (their DequantizeLinear, or an int8 \
             initializer cast and scaled, is supported)",
        ))
    });
    r.insert("Where", where_);
    r.insert("MatMul", |cx, _| binary(cx, Op::MatMul));
    r.insert("Gemm", gemm);
    r.insert("ReduceSum", |cx, n| reduce(cx, n, "sum"));
    r.insert("ReduceMean", |cx, n| reduce(cx, n, "mean"));
    r.insert("ReduceMax", |cx, n| reduce(cx, n, "max"));
    r.insert("ReduceL2", |cx, n| reduce(cx, n, "l2"));
    r.insert("ReduceSumSquare", |cx, n| reduce(cx, n, "sum_square"));
}

fn binary(cx: &mut Cx, op: Op) -> R {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let name = cx.output_name(0);
    Ok(vec![cx.wire(op, &[a, b], &name)?])
}

fn unary(cx: &mut Cx, op: Op) -> R {
    let a = cx.input(0)?;
    let name = cx.output_name(0);
    Ok(vec![cx.wire(op, &[a], &name)?])
}

/// Max/Min/Sum of any number of inputs: a chain of binary operators.
fn variadic(cx: &mut Cx, op: Op) -> R {
    let n = cx.num_inputs();
    if n == 0 {
        return Err(cx.err("needs at least one input"));
    }
    let name = cx.output_name(0);
    let mut acc = cx.input(0)?;
    if n == 1 {
        // One input: the value itself, under the output's name.
        let shape = cx.g.ty(acc).shape.clone();
        return Ok(vec![cx.wire(Op::Reshape { shape }, &[acc], &name)?]);
    }
    for i in 1..n {
        let b = cx.input(i)?;
        let nm = if i + 1 == n { name.clone() } else { format!("{name}.{i}") };
        acc = cx.wire(op.clone(), &[acc, b], &nm)?;
    }
    Ok(vec![acc])
}

fn cast(cx: &mut Cx, _: &NodeProto) -> R {
    let a = cx.input(0)?;
    let code = cx.attr_int("to").ok_or_else(|| cx.err("attribute `to` is required"))?;
    let to = DType::from_onnx(code as i32)
        .map_err(|d| cx.err(format!("cast to the unsupported element type {d}")))?;
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Cast { to }, &[a], &name)?])
}

fn cast_like(cx: &mut Cx, _: &NodeProto) -> R {
    let (a, like) = (cx.input(0)?, cx.input(1)?);
    let to = cx.g.ty(like).dtype;
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Cast { to }, &[a], &name)?])
}

fn clip(cx: &mut Cx, _: &NodeProto) -> R {
    let a = cx.input(0)?;
    let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
    if cx.opset < 11 {
        lo = cx.attr_float("min").map(|x| x as f64).unwrap_or(lo);
        hi = cx.attr_float("max").map(|x| x as f64).unwrap_or(hi);
    } else {
        if let Some(v) = cx.opt_input(1)? {
            lo = cx.const_f64(v, "the minimum")?;
        }
        if let Some(v) = cx.opt_input(2)? {
            hi = cx.const_f64(v, "the maximum")?;
        }
    }
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Clip { min: lo, max: hi }, &[a], &name)?])
}

/// `(x − zero_point) · scale`, per tensor or per `axis`, as a cast, a difference and a
/// product: on an int8 weight the server computes it in the clear, like a cast-and-scale
/// weight-only export.
fn dequantize_linear(cx: &mut Cx, _: &NodeProto) -> R {
    let (x, scale) = (cx.input(0)?, cx.input(1)?);
    if cx.attr_int("block_size").unwrap_or(0) != 0 {
        return Err(cx.err("block-wise dequantization (block_size) is not supported"));
    }
    let name = cx.output_name(0);
    let to = cx.g.ty(scale).dtype;
    let rank = cx.g.ty(x).rank();
    let per_axis = cx.g.ty(scale).rank() == 1 && rank > 0;
    // A per-axis scale (and zero point) of length shape[axis] broadcasts from that axis.
    let along = |cx: &mut Cx, v: Value, what: &str| -> Result<Value, ImportError> {
        if !per_axis {
            return Ok(v);
        }
        let axis = cx.axis(cx.attr_int("axis").unwrap_or(1), rank, "the quantization axis")?;
        let mut shape = vec![1; rank - axis];
        shape[0] = cx.g.ty(v).numel();
        cx.wire(Op::Reshape { shape }, &[v], &format!("{name}.{what}"))
    };
    let xf = cx.wire(Op::Cast { to }, &[x], &format!("{name}.float"))?;
    let centred = match cx.opt_input(2)? {
        Some(zp) => {
            let zf = cx.wire(Op::Cast { to }, &[zp], &format!("{name}.zero_point_float"))?;
            let zf = along(cx, zf, "zero_point_axis")?;
            cx.wire(Op::Sub, &[xf, zf], &format!("{name}.centred"))?
        }
        None => xf,
    };
    let scale = along(cx, scale, "scale_axis")?;
    Ok(vec![cx.wire(Op::Mul, &[centred, scale], &name)?])
}

fn where_(cx: &mut Cx, _: &NodeProto) -> R {
    let (c, a, b) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Where, &[c, a, b], &name)?])
}

/// `Y = alpha·A'·B' + beta·C` as transposes, a matrix product, scalings and an addition.
fn gemm(cx: &mut Cx, _: &NodeProto) -> R {
    let name = cx.output_name(0);
    let (mut a, mut b) = (cx.input(0)?, cx.input(1)?);
    let alpha = cx.attr_float("alpha").unwrap_or(1.0);
    let beta = cx.attr_float("beta").unwrap_or(1.0);
    if cx.attr_int("transA").unwrap_or(0) != 0 {
        a = cx.wire(Op::Transpose { perm: vec![1, 0] }, &[a], &format!("{name}.a_t"))?;
    }
    if cx.attr_int("transB").unwrap_or(0) != 0 {
        b = cx.wire(Op::Transpose { perm: vec![1, 0] }, &[b], &format!("{name}.b_t"))?;
    }
    let c = cx.opt_input(2)?;
    let last = |has_more: bool, suffix: &str| {
        if has_more {
            format!("{name}.{suffix}")
        } else {
            name.clone()
        }
    };
    let mut y = cx.wire(Op::MatMul, &[a, b], &last(alpha != 1.0 || c.is_some(), "ab"))?;
    let dtype = cx.g.ty(y).dtype;
    if alpha != 1.0 {
        let k = cx.constant("alpha", scalar(dtype, alpha as f64));
        y = cx.wire(Op::Mul, &[y, k], &last(c.is_some(), "alpha_ab"))?;
    }
    if let Some(mut c) = c {
        if beta != 1.0 {
            let k = cx.constant("beta", scalar(dtype, beta as f64));
            c = cx.wire(Op::Mul, &[c, k], &format!("{name}.beta_c"))?;
        }
        y = cx.wire(Op::Add, &[y, c], &name)?;
    }
    Ok(vec![y])
}

/// A scalar of `dtype`.
pub fn scalar(dtype: DType, v: f64) -> Tensor {
    crate::eval::scalar_of(dtype, v)
}

fn reduce(cx: &mut Cx, _: &NodeProto, kind: &str) -> R {
    let x = cx.input(0)?;
    let rank = cx.g.ty(x).rank();
    let keepdims = cx.attr_int("keepdims").unwrap_or(1) != 0;
    // Axes moved from attribute to input at opset 13 for ReduceSum and 18 for the others.
    let input_form = if kind == "sum" { cx.opset >= 13 } else { cx.opset >= 18 };
    let axes: Option<Vec<i64>> = if input_form {
        match cx.opt_input(1)? {
            Some(v) => Some(cx.const_ints(v, "the reduction axes")?),
            None => None,
        }
    } else {
        cx.attr_ints("axes")
    };
    let name = cx.output_name(0);
    let axes = match axes {
        Some(a) if !a.is_empty() => a,
        _ => {
            if cx.attr_int("noop_with_empty_axes").unwrap_or(0) != 0 {
                let shape = cx.g.ty(x).shape.clone();
                return Ok(vec![cx.wire(Op::Reshape { shape }, &[x], &name)?]);
            }
            (0..rank as i64).collect()
        }
    };
    let mut norm = Vec::new();
    for a in axes {
        norm.push(cx.axis(a, rank, "reduction axis")?);
    }
    norm.sort();
    norm.dedup();
    if kind == "l2" || kind == "sum_square" {
        // ‖x‖₂ (F.normalize's norm) as √Σx²: the square and the sum are exact on shares, and
        // the square root has a stdlib approximation.
        let sq = cx.wire(Op::Mul, &[x, x], &format!("{name}.square"))?;
        let op = Op::ReduceSum { axes: norm, keepdims };
        if kind == "sum_square" {
            return Ok(vec![cx.wire(op, &[sq], &name)?]);
        }
        let sum = cx.wire(op, &[sq], &format!("{name}.sum_square"))?;
        return Ok(vec![cx.wire(Op::Sqrt, &[sum], &name)?]);
    }
    let op = match kind {
        "sum" => Op::ReduceSum { axes: norm, keepdims },
        "mean" => Op::ReduceMean { axes: norm, keepdims },
        _ => Op::ReduceMax { axes: norm, keepdims },
    };
    Ok(vec![cx.wire(op, &[x], &name)?])
}
