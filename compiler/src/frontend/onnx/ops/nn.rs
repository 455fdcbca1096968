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
    if (1..cx.num_outputs()).any(|i| !cx.output_name(i).is_empty()) {
        return Err(cx.err("the Mean and InvStdDev outputs are not supported (only Y)"));
    }
    let mut args = vec![x, scale];
    args.extend(bias);
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::LayerNorm { axis, eps }, &args, &name)?])
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
