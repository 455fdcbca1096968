//! Shapes and data movement: constants, shape plumbing (folded at import), reshapes,
//! transposes, slices, splits, concatenation, gathers.

use super::OpBuilder;
use crate::frontend::onnx::context::{elements, Cx, MAX_CONST};
use crate::frontend::onnx::error::ImportError;
use crate::ir::shape::broadcast;
use crate::ir::{Op, Tensor, Value};
use std::collections::HashMap;
use veil_onnx_proto::NodeProto;

type R = Result<Vec<Value>, ImportError>;

pub fn register(r: &mut HashMap<&'static str, OpBuilder>) {
    r.insert("Identity", |cx, _| Ok(vec![cx.input(0)?]));
    r.insert("Constant", constant);
    r.insert("Shape", shape);
    r.insert("Size", size);
    r.insert("ConstantOfShape", constant_of_shape);
    r.insert("Range", range);
    r.insert("Reshape", reshape);
    r.insert("Transpose", transpose);
    r.insert("Slice", slice);
    r.insert("Concat", concat);
    r.insert("Split", split);
    r.insert("Squeeze", squeeze);
    r.insert("Unsqueeze", unsqueeze);
    r.insert("Flatten", flatten);
    r.insert("Expand", expand);
    r.insert("Gather", gather);
    r.insert("GatherND", gather_nd);
}

fn out(cx: &mut Cx, t: Tensor) -> Value {
    let name = cx.output_name(0);
    cx.g.add_const(&name, t)
}

fn constant(cx: &mut Cx, _: &NodeProto) -> R {
    let t = if let Some(t) = cx.attr_tensor("value")? {
        t
    } else if let Some(f) = cx.attr_float("value_float") {
        Tensor::scalar_f32(f)
    } else if let Some(v) =
        cx.attr_ints("value_ints").filter(|_| cx.attr_names().iter().any(|n| n == "value_ints"))
    {
        Tensor::i64(vec![v.len()], v)
    } else if let Some(i) = cx.attr_int("value_int") {
        Tensor::i64(Vec::<usize>::new(), vec![i])
    } else if cx.attr_names().iter().any(|n| n == "value_floats") {
        let v = cx_floats(cx, "value_floats");
        Tensor::f32(vec![v.len()], v)
    } else {
        let names = cx.attr_names().join(", ");
        return Err(cx.err(format!(
            "only tensor, float(s) and int(s) constants are supported (attributes: {names})"
        )));
    };
    Ok(vec![out(cx, t)])
}

fn cx_floats(cx: &Cx, name: &str) -> Vec<f32> {
    cx.node
        .and_then(|n| n.attribute.iter().find(|a| a.name.as_deref() == Some(name)))
        .map(|a| a.floats.clone())
        .unwrap_or_default()
}

fn shape(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let s: Vec<i64> = cx.g.ty(x).shape.iter().map(|&d| d as i64).collect();
    let r = s.len() as i64;
    let clampi = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
    let start = clampi(cx.attr_int("start").unwrap_or(0));
    let end = clampi(cx.attr_int("end").unwrap_or(r));
    let part: Vec<i64> =
        if start < end { s[start as usize..end as usize].to_vec() } else { vec![] };
    Ok(vec![out(cx, Tensor::i64(vec![part.len()], part))])
}

fn size(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let n = cx.g.ty(x).numel() as i64;
    Ok(vec![out(cx, Tensor::i64(Vec::<usize>::new(), vec![n]))])
}

fn dims_of(cx: &Cx, v: &[i64], what: &str) -> Result<Vec<usize>, ImportError> {
    v.iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| cx.err(format!("{what} has negative dimension {d}")))
        })
        .collect()
}

fn constant_of_shape(cx: &mut Cx, _: &NodeProto) -> R {
    let s = cx.input(0)?;
    let dims = cx.const_ints(s, "the shape")?;
    let shape = dims_of(cx, &dims, "the shape")?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_CONST)
        .ok_or_else(|| cx.err("the shape is too large"))?;
    let fill = cx.attr_tensor("value")?.unwrap_or_else(|| Tensor::f32(vec![1], vec![0.0]));
    if fill.numel() != 1 {
        return Err(cx.err("`value` must hold one element"));
    }
    let t = crate::eval::eval_op(
        &Op::Expand { shape: shape.clone() },
        &[&Tensor { shape: vec![], ..fill.clone() }],
        &crate::ir::TensorType::new(fill.dtype, shape.clone()),
    )
    .map_err(|e| cx.err(e.to_string()))?;
    debug_assert_eq!(t.numel(), n);
    Ok(vec![out(cx, t)])
}

fn range(cx: &mut Cx, _: &NodeProto) -> R {
    let (a, b, c) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let dtype = cx.g.ty(a).dtype;
    let (start, limit, delta) =
        (cx.const_f64(a, "start")?, cx.const_f64(b, "limit")?, cx.const_f64(c, "delta")?);
    if delta == 0.0 {
        return Err(cx.err("delta is zero"));
    }
    let n = ((limit - start) / delta).ceil().max(0.0);
    if n > MAX_CONST as f64 {
        return Err(cx.err("the range is too large"));
    }
    let vals: Vec<f64> = (0..n as usize).map(|i| start + i as f64 * delta).collect();
    let len = vals.len();
    let t = crate::eval::from_f64s(dtype, vec![len], vals);
    Ok(vec![out(cx, t)])
}

fn reshape(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let s = cx.input(1)?;
    let dims = cx.const_ints(s, "the target shape")?;
    let inp = cx.g.ty(x).shape.clone();
    let allowzero = cx.attr_int("allowzero").unwrap_or(0) != 0;
    let mut shape = Vec::with_capacity(dims.len());
    let mut hole = None;
    for (i, &d) in dims.iter().enumerate() {
        match d {
            -1 if hole.is_none() => {
                hole = Some(i);
                shape.push(1);
            }
            0 if !allowzero => shape.push(*inp.get(i).ok_or_else(|| {
                cx.err(format!("shape entry {i} copies a dimension the input does not have"))
            })?),
            d if d >= 0 => shape.push(d as usize),
            _ => return Err(cx.err(format!("invalid target shape {dims:?}"))),
        }
    }
    let n: usize = inp.iter().product();
    if let Some(h) = hole {
        let rest = elements(&shape).ok_or_else(|| {
            cx.err(format!("the target shape {dims:?} has more elements than a tensor can hold"))
        })?;
        if rest == 0 || !n.is_multiple_of(rest) {
            return Err(cx.err(format!("cannot reshape {inp:?} to {dims:?}")));
        }
        shape[h] = n / rest;
    }
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Reshape { shape }, &[x], &name)?])
}

fn transpose(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let rank = cx.g.ty(x).rank();
    let perm: Vec<usize> = match cx.attr_ints("perm") {
        Some(p) if !p.is_empty() => {
            p.into_iter().map(|v| cx.axis(v, rank, "perm entry")).collect::<Result<_, _>>()?
        }
        _ => (0..rank).rev().collect(),
    };
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Transpose { perm }, &[x], &name)?])
}

fn slice(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let shape = cx.g.ty(x).shape.clone();
    let rank = shape.len();
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        let st = cx.attr_ints("starts").ok_or_else(|| cx.err("`starts` is required"))?;
        let en = cx.attr_ints("ends").ok_or_else(|| cx.err("`ends` is required"))?;
        let ax = cx.attr_ints("axes").unwrap_or_else(|| (0..st.len() as i64).collect());
        let n = st.len();
        (st, en, ax, vec![1; n])
    } else {
        let (a, b) = (cx.input(1)?, cx.input(2)?);
        let st = cx.const_ints(a, "starts")?;
        let en = cx.const_ints(b, "ends")?;
        let ax = match cx.opt_input(3)? {
            Some(v) => cx.const_ints(v, "axes")?,
            None => (0..st.len() as i64).collect(),
        };
        let sp = match cx.opt_input(4)? {
            Some(v) => cx.const_ints(v, "steps")?,
            None => vec![1; st.len()],
        };
        (st, en, ax, sp)
    };
    if starts.len() != ends.len() || starts.len() != axes.len() || starts.len() != steps.len() {
        return Err(cx.err("starts, ends, axes and steps differ in length"));
    }
    let mut start: Vec<usize> = vec![0; rank];
    let mut step: Vec<i64> = vec![1; rank];
    let mut len: Vec<usize> = shape.clone();
    for i in 0..axes.len() {
        let ax = cx.axis(axes[i], rank, "slice axis")?;
        let dim = shape[ax] as i64;
        let s = steps[i];
        if s == 0 {
            return Err(cx.err("a slice step is zero"));
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (b, e) = if s > 0 {
            (norm(starts[i]).clamp(0, dim), norm(ends[i]).clamp(0, dim))
        } else {
            (norm(starts[i]).clamp(-1, dim - 1), norm(ends[i]).clamp(-1, dim - 1))
        };
        // `e - b + s - 1` overflowed for a step near i64::MAX, and `-s` for i64::MIN.
        let span = if s > 0 { e - b } else { b - e };
        let count = if span > 0 { ((span - 1) as u64 / s.unsigned_abs()) as i64 + 1 } else { 0 };
        start[ax] = if count > 0 { b as usize } else { 0 };
        step[ax] = s;
        len[ax] = count as usize;
    }
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Slice { start, step, len }, &[x], &name)?])
}

fn concat(cx: &mut Cx, _: &NodeProto) -> R {
    let mut args = Vec::new();
    for i in 0..cx.num_inputs() {
        if let Some(v) = cx.opt_input(i)? {
            args.push(v);
        }
    }
    let first = *args.first().ok_or_else(|| cx.err("needs at least one input"))?;
    let rank = cx.g.ty(first).rank();
    let axis = cx.axis(
        cx.attr_int("axis").ok_or_else(|| cx.err("attribute `axis` is required"))?,
        rank,
        "axis",
    )?;
    // An empty part (a past of length 0 fed to a decoder exported with past key/values)
    // adds nothing: dropped, so that no zero-length tensor reaches the program.
    let nonempty: Vec<Value> =
        args.iter().copied().filter(|&a| cx.g.ty(a).shape.get(axis) != Some(&0)).collect();
    if let [only] = nonempty.as_slice() {
        if nonempty.len() < args.len() {
            return Ok(vec![*only]);
        }
    }
    let args = if nonempty.is_empty() { args } else { nonempty };
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Concat { axis }, &args, &name)?])
}

fn split(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let shape = cx.g.ty(x).shape.clone();
    let rank = shape.len();
    let axis = cx.axis(cx.attr_int("axis").unwrap_or(0), rank, "axis")?;
    let dim = shape[axis];
    let n_out = cx.num_outputs();
    let sizes: Vec<usize> =
        match (cx.opset >= 13, if cx.opset >= 13 { cx.opt_input(1)? } else { None }) {
            (true, Some(v)) => dims_of(cx, &cx.const_ints(v, "the split sizes")?, "split")?,
            (false, _) if cx.attr_ints("split").is_some_and(|s| !s.is_empty()) => {
                dims_of(cx, &cx.attr_ints("split").unwrap_or_default(), "split")?
            }
            _ => {
                let parts = match cx.attr_int("num_outputs") {
                    None => n_out,
                    Some(n) if usize::try_from(n) == Ok(n_out) => n_out,
                    Some(n) => {
                        return Err(
                            cx.err(format!("num_outputs is {n} but the node has {n_out} outputs"))
                        )
                    }
                };
                if parts == 0 {
                    return Err(cx.err("cannot split into zero parts"));
                }
                let each = dim.div_ceil(parts);
                (0..parts).map(|i| each.min(dim.saturating_sub(i * each))).collect()
            }
        };
    if sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s)) != Some(dim) || sizes.len() != n_out
    {
        return Err(cx.err(format!("split sizes {sizes:?} do not cover dimension {axis} of size {dim} with {n_out} outputs")));
    }
    let mut outs = Vec::new();
    let mut offset = 0;
    for (i, &sz) in sizes.iter().enumerate() {
        let mut start = vec![0; rank];
        start[axis] = if sz > 0 { offset } else { 0 };
        let mut len = shape.clone();
        len[axis] = sz;
        let name = cx.output_name(i);
        let nm = if name.is_empty() { format!("{}.part{i}", cx.node_name) } else { name };
        outs.push(cx.wire(Op::Slice { start, step: vec![1; rank], len }, &[x], &nm)?);
        offset += sz;
    }
    Ok(outs)
}

fn axes_of(cx: &Cx) -> Result<Option<Vec<i64>>, ImportError> {
    if cx.opset >= 13 {
        match cx.opt_input(1)? {
            Some(v) => Ok(Some(cx.const_ints(v, "axes")?)),
            None => Ok(None),
        }
    } else {
        Ok(cx.attr_ints("axes"))
    }
}

fn squeeze(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let shape = cx.g.ty(x).shape.clone();
    let axes: Vec<usize> = match axes_of(cx)? {
        Some(a) => {
            a.into_iter().map(|v| cx.axis(v, shape.len(), "axis")).collect::<Result<_, _>>()?
        }
        None => (0..shape.len()).filter(|&i| shape[i] == 1).collect(),
    };
    if let Some(&a) = axes.iter().find(|&&a| shape[a] != 1) {
        return Err(cx.err(format!("cannot squeeze dimension {a} of size {}", shape[a])));
    }
    let new: Vec<usize> =
        (0..shape.len()).filter(|i| !axes.contains(i)).map(|i| shape[i]).collect();
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Reshape { shape: new }, &[x], &name)?])
}

fn unsqueeze(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let shape = cx.g.ty(x).shape.clone();
    let axes = axes_of(cx)?.ok_or_else(|| cx.err("axes are required"))?;
    let r = shape.len() + axes.len();
    let mut norm = Vec::new();
    for a in axes {
        norm.push(cx.axis(a, r, "axis")?);
    }
    norm.sort();
    if norm.windows(2).any(|w| w[0] == w[1]) {
        return Err(cx.err("repeated axis"));
    }
    let mut new = Vec::with_capacity(r);
    let mut it = shape.iter();
    for i in 0..r {
        if norm.contains(&i) {
            new.push(1);
        } else {
            new.push(*it.next().ok_or_else(|| cx.err("axes out of range"))?);
        }
    }
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Reshape { shape: new }, &[x], &name)?])
}

fn flatten(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let shape = cx.g.ty(x).shape.clone();
    let r = shape.len() as i64;
    let a = cx.attr_int("axis").unwrap_or(1);
    let axis = if a < 0 { a + r } else { a };
    if axis < 0 || axis > r {
        return Err(cx.err(format!("axis {a} is out of range for rank {r}")));
    }
    let outer: usize = shape[..axis as usize].iter().product();
    let inner: usize = shape[axis as usize..].iter().product();
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Reshape { shape: vec![outer, inner] }, &[x], &name)?])
}

fn expand(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let s = cx.input(1)?;
    let dims = cx.const_ints(s, "the target shape")?;
    let target = dims_of(cx, &dims, "the target shape")?;
    let inp = cx.g.ty(x).shape.clone();
    let shape = broadcast(&inp, &target)
        .ok_or_else(|| cx.err(format!("cannot expand {inp:?} to {dims:?}")))?;
    // The product of the target's dimensions wrapped in release builds: 2^32 × 2^32 expanded a
    // constant to zero elements. `wire` checks the result's size (and a folded constant's).
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Expand { shape }, &[x], &name)?])
}

fn gather(cx: &mut Cx, _: &NodeProto) -> R {
    let (d, i) = (cx.input(0)?, cx.input(1)?);
    let rank = cx.g.ty(d).rank();
    let axis = cx.axis(cx.attr_int("axis").unwrap_or(0), rank, "axis")?;
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::Gather { axis }, &[d, i], &name)?])
}

fn gather_nd(cx: &mut Cx, _: &NodeProto) -> R {
    let (d, i) = (cx.input(0)?, cx.input(1)?);
    let b = cx.attr_int("batch_dims").unwrap_or(0);
    if b < 0 {
        return Err(cx.err("batch_dims is negative"));
    }
    let name = cx.output_name(0);
    Ok(vec![cx.wire(Op::GatherND { batch_dims: b as usize }, &[d, i], &name)?])
}
