//! Softmax, layer normalization, GELU, dropout (inference: identity).

use super::OpBuilder;
use crate::frontend::onnx::context::Cx;
use crate::frontend::onnx::error::ImportError;
use crate::ir::{GeluApprox, Op, Value};
use std::collections::HashMap;
use veil_onnx_proto::NodeProto;

type R = Result<Vec<Value>, ImportError>;

pub fn register(r: &mut HashMap<&'static str, OpBuilder>) {
    r.insert("Softmax", softmax);
    r.insert("LayerNormalization", layer_norm);
    r.insert("Gelu", gelu);
    r.insert("Dropout", dropout);
}

fn softmax(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let rank = cx.g.ty(x).rank();
    let default = if cx.opset >= 13 { -1 } else { 1 };
    let a = cx.attr_int("axis").unwrap_or(default);
    let axis = cx.axis(a, rank, "axis")?;
    let name = cx.output_name(0);
    if cx.opset < 13 && axis + 1 != rank {
        // Before opset 13 the input is flattened to 2-D at `axis`: softmax over all trailing dims.
        return Err(cx.err("softmax over several trailing axes (opset < 13) is not supported"));
    }
    Ok(vec![cx.wire(Op::Softmax { axis }, &[x], &name)?])
}

fn layer_norm(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let scale = cx.input(1)?;
    let bias = cx.opt_input(2)?;
    let rank = cx.g.ty(x).rank();
    let axis = cx.axis(cx.attr_int("axis").unwrap_or(-1), rank, "axis")?;
    let eps = cx.attr_float("epsilon").unwrap_or(1e-5);
    let mut args = vec![x, scale];
    args.extend(bias);
    let name = cx.output_name(0);
    let y = cx.wire(Op::LayerNorm { axis, eps }, &args, &name)?;
    let mut outs = vec![y];
    if (1..cx.num_outputs()).any(|i| !cx.output_name(i).is_empty()) {
        // Mean and InvStdDev (training outputs) from primitive operators.
        let axes: Vec<usize> = (axis..rank).collect();
        let (mean_name, inv_name) = (cx.output_name(1), cx.output_name(2));
        let mean_nm = if mean_name.is_empty() { format!("{name}.mean") } else { mean_name };
        let mean =
            cx.wire(Op::ReduceMean { axes: axes.clone(), keepdims: true }, &[x], &mean_nm)?;
        let d = cx.wire(Op::Sub, &[x, mean], &format!("{name}.centered"))?;
        let d2 = cx.wire(Op::Mul, &[d, d], &format!("{name}.sq"))?;
        let var =
            cx.wire(Op::ReduceMean { axes, keepdims: true }, &[d2], &format!("{name}.var"))?;
        let dtype = cx.g.ty(var).dtype;
        let e = cx.constant("eps", crate::eval::scalar_of(dtype, eps as f64));
        let ve = cx.wire(Op::Add, &[var, e], &format!("{name}.var_eps"))?;
        let sd = cx.wire(Op::Sqrt, &[ve], &format!("{name}.std"))?;
        let inv_nm = if inv_name.is_empty() { format!("{name}.inv_std") } else { inv_name };
        let inv = cx.wire(Op::Reciprocal, &[sd], &inv_nm)?;
        outs.push(mean);
        outs.push(inv);
    }
    Ok(outs)
}

fn gelu(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let approx = match cx.attr_string("approximate").as_deref().unwrap_or("none") {
        "none" => GeluApprox::Erf,
        "tanh" => GeluApprox::Tanh,
        other => {
            return Err(
                cx.err(format!("unknown approximation `{other}` (expected `none` or `tanh`)"))
            )
        }
    };
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Gelu { approx }, &[x], &name)?])
}

/// Inference-mode dropout is the identity; the mask output, if used, is all ones.
fn dropout(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    if let Some(t) = cx.opt_input(2)? {
        let on = cx.const_of(t).map(|t| t.get_f64(0) != 0.0).unwrap_or(true);
        if on {
            return Err(cx.err("dropout in training mode is not supported"));
        }
    }
    if cx.num_outputs() > 1 && !cx.output_name(1).is_empty() {
        return Err(cx.err("the dropout mask output is not supported"));
    }
    Ok(vec![x])
}
