//! onnxruntime's `com.microsoft` contrib operators, which its transformer optimizer and
//! Optimum's optimized exports fuse BERT and GPT-2 into. Each is expanded into the IR the
//! unfused export gives (bias add, residual add, `LayerNorm`, `Gelu`, the attention
//! products and softmax), so the import patterns, the cost model, public-weight folding and
//! `--nonlinear smu` see the same graph whichever form the file has.

use super::OpBuilder;
use crate::eval;
use crate::frontend::onnx::context::Cx;
use crate::frontend::onnx::error::ImportError;
use crate::ir::{DType, Data, GeluApprox, Op, Tensor, Value, ValueDef};
use std::collections::HashMap;
use veil_onnx_proto::NodeProto;

type R = Result<Vec<Value>, ImportError>;

/// onnxruntime's default epsilon for the fused layer norms (`kDefaultSkipLayerNormEpsilon`,
/// `kDefaultEmbedLayerNormEpsilon`).
const FUSED_LN_EPS: f32 = 1e-12;

/// The additive mask value onnxruntime's attention kernels use by default.
const MASK_FILTER: f32 = -10000.0;

/// Registers the supported `com.microsoft` operators.
pub fn register(r: &mut HashMap<&'static str, OpBuilder>) {
    r.insert("SkipLayerNormalization", skip_layer_norm);
    r.insert("BiasGelu", |cx, _| gelu(cx, GeluApprox::Erf, true));
    r.insert("Gelu", |cx, _| gelu(cx, GeluApprox::Erf, false));
    r.insert("FastGelu", |cx, _| gelu(cx, GeluApprox::Tanh, true));
    r.insert("QuickGelu", quick_gelu);
    r.insert("EmbedLayerNormalization", embed_layer_norm);
    r.insert("Attention", attention);
    r.insert("MultiHeadAttention", multi_head_attention);
}

/// Refuses a node whose output `i` (an optional output veil does not compute) is used.
fn refuse_output(cx: &Cx, i: usize, what: &str) -> Result<(), ImportError> {
    if !cx.output_name(i).is_empty() {
        return Err(cx.err(format!(
            "output {i} ({what}) is used, which veil does not compute; export the model without \
             it, or without this fusion (the unfused operators are supported)"
        )));
    }
    Ok(())
}

/// Refuses a node whose optional input `i` is given.
fn refuse_input(cx: &Cx, i: usize, what: &str, todo: &str) -> Result<(), ImportError> {
    if cx.opt_input(i)?.is_some() {
        return Err(cx.err(format!("input {i} ({what}) is not supported; {todo}")));
    }
    Ok(())
}

/// A scalar constant of `dtype`.
fn scalar(cx: &mut Cx, suffix: &str, dtype: DType, v: f64) -> Value {
    cx.constant(suffix, eval::scalar_of(dtype, v))
}

/// `x + bias` when the bias is given.
fn add_bias(cx: &mut Cx, x: Value, bias: Option<Value>, name: &str) -> Result<Value, ImportError> {
    match bias {
        Some(b) => cx.wire(Op::Add, &[x, b], &format!("{name}.bias_add")),
        None => Ok(x),
    }
}

/// `SkipLayerNormalization(input, skip, gamma[, beta[, bias]])`: `LayerNorm(input + bias +
/// skip)`, the bias first as in the unfused `MatMul → Add(bias) → Add(residual)`. Output 3 is
/// the sum (GPT-2's residual stream); outputs 1 and 2 (mean, inverse std) are refused.
fn skip_layer_norm(cx: &mut Cx, _: &NodeProto) -> R {
    let (x, skip, gamma) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let (beta, bias) = (cx.opt_input(3)?, cx.opt_input(4)?);
    refuse_output(cx, 1, "the mean")?;
    refuse_output(cx, 2, "the inverse standard deviation")?;
    let rank = cx.g.ty(x).rank();
    if rank < 2 {
        return Err(cx.err(format!("the input has rank {rank}, expected 2 or 3")));
    }
    let eps = cx.attr_float("epsilon").unwrap_or(FUSED_LN_EPS);
    let name = cx.output_name(0);
    let biased = add_bias(cx, x, bias, &name)?;
    let sum_name = match cx.output_name(3) {
        s if s.is_empty() => format!("{name}.skip_add"),
        s => s,
    };
    let sum = cx.wire(Op::Add, &[biased, skip], &sum_name)?;
    let mut args = vec![sum, gamma];
    args.extend(beta);
    let y = cx.wire(Op::LayerNorm { axis: rank - 1, eps }, &args, &name)?;
    Ok(vec![y, y, y, sum])
}

/// `Gelu(X)`, `BiasGelu(A, B)` and `FastGelu(X[, bias])`: GELU of `X + bias`, erf form for the
/// first two, tanh form for `FastGelu` (onnxruntime's definition).
fn gelu(cx: &mut Cx, approx: GeluApprox, has_bias: bool) -> R {
    let x = cx.input(0)?;
    let bias = if has_bias { cx.opt_input(1)? } else { None };
    let name = cx.output_name(0);
    let x = add_bias(cx, x, bias, &name)?;
    Ok(vec![cx.wire(Op::Gelu { approx }, &[x], &name)?])
}

/// `QuickGelu(X)`: `X · sigmoid(alpha · X)` (alpha 1.702 by default).
fn quick_gelu(cx: &mut Cx, _: &NodeProto) -> R {
    let x = cx.input(0)?;
    let alpha = cx.attr_float("alpha").unwrap_or(1.702);
    let name = cx.output_name(0);
    let dtype = cx.g.ty(x).dtype;
    let a = scalar(cx, "alpha", dtype, alpha as f64);
    let ax = cx.wire(Op::Mul, &[x, a], &format!("{name}.scaled"))?;
    let s = cx.wire(Op::Sigmoid, &[ax], &format!("{name}.sigmoid"))?;
    Ok(vec![cx.wire(Op::Mul, &[x, s], &name)?])
}

/// `EmbedLayerNormalization(input_ids, segment_ids?, word_embedding, position_embedding,
/// segment_embedding?, gamma, beta, mask?, position_ids?)`: the three embedding lookups
/// summed, then `LayerNorm`. Output 1 (mask_index) is the count of ones in each row of the
/// mask (zeros without a mask), output 2 the sum before normalisation.
fn embed_layer_norm(cx: &mut Cx, _: &NodeProto) -> R {
    let ids = cx.input(0)?;
    let seg_ids = cx.opt_input(1)?;
    let (word, pos) = (cx.input(2)?, cx.input(3)?);
    let seg = cx.opt_input(4)?;
    let (gamma, beta) = (cx.input(5)?, cx.input(6)?);
    let mask = cx.opt_input(7)?;
    let pos_ids = cx.opt_input(8)?;
    let ids_shape = cx.g.ty(ids).shape.clone();
    let [batch, seq] = ids_shape[..] else {
        return Err(
            cx.err(format!("input_ids has shape {ids_shape:?}, expected [batch, sequence]"))
        );
    };
    if seg_ids.is_some() != seg.is_some() {
        return Err(cx.err("segment_ids and segment_embedding must be given together"));
    }
    let eps = cx.attr_float("epsilon").unwrap_or(FUSED_LN_EPS);
    let name = cx.output_name(0);
    let words = cx.wire(Op::Gather { axis: 0 }, &[word, ids], &format!("{name}.words"))?;
    let mut sum = words;
    if let (Some(seg_ids), Some(seg)) = (seg_ids, seg) {
        let segs = cx.wire(Op::Gather { axis: 0 }, &[seg, seg_ids], &format!("{name}.segments"))?;
        sum = cx.wire(Op::Add, &[sum, segs], &format!("{name}.add_segments"))?;
    }
    // Without position_ids onnxruntime takes position s for token s, as BERT's buffer does.
    let pos_ids = match pos_ids {
        Some(p) => p,
        None => cx.constant(
            "position_ids",
            Tensor {
                dtype: DType::I64,
                shape: vec![1, seq],
                data: Data::I64((0..seq as i64).collect()),
            },
        ),
    };
    let positions =
        cx.wire(Op::Gather { axis: 0 }, &[pos, pos_ids], &format!("{name}.positions"))?;
    let sum_name = match cx.output_name(2) {
        s if s.is_empty() => format!("{name}.embeddings"),
        s => s,
    };
    sum = cx.wire(Op::Add, &[sum, positions], &sum_name)?;
    let y = cx.wire(Op::LayerNorm { axis: 2, eps }, &[sum, gamma, beta], &name)?;
    let mask_name = cx.output_name(1);
    let mask_index = match (mask, mask_name.is_empty()) {
        (_, true) => y,
        (Some(m), false) => {
            let dtype = cx.g.ty(m).dtype;
            let one = scalar(cx, "one", dtype, 1.0);
            let is_one = cx.wire(Op::Equal, &[m, one], &format!("{mask_name}.ones"))?;
            let n = cx.wire(Op::Cast { to: DType::I32 }, &[is_one], &format!("{mask_name}.i32"))?;
            cx.wire(Op::ReduceSum { axes: vec![1], keepdims: false }, &[n], &mask_name)?
        }
        (None, false) => cx.constant(
            "mask_index",
            Tensor { dtype: DType::I32, shape: vec![batch], data: Data::I64(vec![0; batch]) },
        ),
    };
    Ok(vec![y, mask_index, sum])
}

/// What the fused attention operators share once Q, K and V are projected.
struct Core {
    heads: usize,
    /// `scale` attribute (0: 1/√head_size, applied as a division like the unfused exports).
    scale: f32,
    mask: Option<Value>,
    bias: Option<Value>,
    causal: bool,
    filter: f32,
}

/// `Attention(input, weights, bias?, mask_index?, past?, attention_bias?,
/// past_sequence_length?)`: one packed Q/K/V projection, split into three (new weights when
/// the packed ones are initializers), then [`attend`].
fn attention(cx: &mut Cx, _: &NodeProto) -> R {
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let b = cx.opt_input(2)?;
    let todo = "export without past key/values (use_cache=False) or without attention fusion";
    refuse_input(cx, 4, "past", todo)?;
    refuse_input(cx, 6, "past_sequence_length", todo)?;
    refuse_output(cx, 1, "present")?;
    if cx.attr_int("do_rotary").unwrap_or(0) != 0 {
        return Err(cx.err("do_rotary=1 (rotary embeddings inside attention) is not supported"));
    }
    let heads = num_heads(cx)?;
    let xs = cx.g.ty(x).shape.clone();
    let ws = cx.g.ty(w).shape.clone();
    if xs.len() != 3 || ws.len() != 2 || ws[0] != xs[2] {
        return Err(cx.err(format!(
            "input {xs:?} and weights {ws:?}: expected [batch, sequence, hidden] and [hidden, q+k+v]"
        )));
    }
    let sizes = match cx.attr_ints("qkv_hidden_sizes") {
        Some(s) if !s.is_empty() => {
            if s.len() != 3 || s.iter().any(|&v| v <= 0) || s[0] != s[1] {
                return Err(cx.err(format!(
                    "qkv_hidden_sizes {s:?}: expected three positive sizes, Q's equal to K's"
                )));
            }
            [s[0] as usize, s[1] as usize, s[2] as usize]
        }
        _ => {
            if !ws[1].is_multiple_of(3) {
                return Err(cx.err(format!("weights {ws:?}: the last dimension is not 3 × hidden")));
            }
            [ws[1] / 3; 3]
        }
    };
    if sizes.iter().sum::<usize>() != ws[1] || sizes.iter().any(|s| s % heads != 0) {
        return Err(cx.err(format!(
            "Q/K/V sizes {sizes:?} do not fill the weights {ws:?} or do not divide into {heads} heads"
        )));
    }
    if let Some(b) = b {
        let bs = &cx.g.ty(b).shape;
        if bs[..] != [ws[1]] {
            return Err(cx.err(format!("bias {bs:?}: expected [{}]", ws[1])));
        }
    }
    let name = cx.output_name(0);
    let mut qkv = Vec::new();
    let mut start = 0;
    for (part, &size) in ["q", "k", "v"].iter().zip(&sizes) {
        let wp = split_last(cx, w, start, size, part)?;
        let mut p = cx.wire(Op::MatMul, &[x, wp], &format!("{name}.{part}_proj"))?;
        if let Some(b) = b {
            let bp = split_last(cx, b, start, size, part)?;
            p = cx.wire(Op::Add, &[p, bp], &format!("{name}.{part}_bias"))?;
        }
        qkv.push(p);
        start += size;
    }
    let core = Core {
        heads,
        scale: cx.attr_float("scale").unwrap_or(0.0),
        mask: cx.opt_input(3)?,
        bias: cx.opt_input(5)?,
        causal: cx.attr_int("unidirectional").unwrap_or(0) != 0,
        filter: cx.attr_float("mask_filter_value").unwrap_or(MASK_FILTER),
    };
    Ok(vec![attend(cx, qkv[0], qkv[1], qkv[2], &core, &name)?])
}

/// `MultiHeadAttention(query, key, value, bias?, key_padding_mask?, attention_bias?)` with
/// separate 3-D Q, K and V (already projected); the packed and cached forms are refused.
fn multi_head_attention(cx: &mut Cx, _: &NodeProto) -> R {
    let q = cx.input(0)?;
    let todo = "export without past key/values (use_cache=False) or without attention fusion";
    for (i, what) in [(6, "past_key"), (7, "past_value"), (8, "past_sequence_length")] {
        refuse_input(cx, i, what, todo)?;
    }
    for i in 9..cx.num_inputs() {
        refuse_input(cx, i, "cache or beam-search input", todo)?;
    }
    for (i, what) in [(1, "present_key"), (2, "present_value"), (3, "qk")] {
        refuse_output(cx, i, what)?;
    }
    let (Some(k), Some(v)) = (cx.opt_input(1)?, cx.opt_input(2)?) else {
        return Err(cx.err(
            "packed Q/K/V or packed K/V (no separate key and value inputs) is not supported; \
             export without attention fusion",
        ));
    };
    let heads = num_heads(cx)?;
    let (qs, ks, vs) =
        (cx.g.ty(q).shape.clone(), cx.g.ty(k).shape.clone(), cx.g.ty(v).shape.clone());
    if qs.len() != 3 || ks.len() != 3 || vs.len() != 3 || ks[2] != qs[2] || ks[1] != vs[1] {
        return Err(cx.err(format!(
            "query {qs:?}, key {ks:?}, value {vs:?}: only 3-D [batch, sequence, hidden] Q, K and \
             V are supported (not the 4-D BNSH cache form)"
        )));
    }
    if qs[2] % heads != 0 || vs[2] % heads != 0 {
        return Err(cx.err(format!(
            "hidden sizes {} and {} do not divide into {heads} heads",
            qs[2], vs[2]
        )));
    }
    let name = cx.output_name(0);
    let (mut q, mut k, mut v) = (q, k, v);
    if let Some(b) = cx.opt_input(3)? {
        let bs = cx.g.ty(b).shape.clone();
        if bs[..] != [2 * qs[2] + vs[2]] {
            return Err(cx.err(format!("bias {bs:?}: expected [{}]", 2 * qs[2] + vs[2])));
        }
        let bq = split_last(cx, b, 0, qs[2], "q")?;
        let bk = split_last(cx, b, qs[2], qs[2], "k")?;
        let bv = split_last(cx, b, 2 * qs[2], vs[2], "v")?;
        q = cx.wire(Op::Add, &[q, bq], &format!("{name}.q_bias"))?;
        k = cx.wire(Op::Add, &[k, bk], &format!("{name}.k_bias"))?;
        v = cx.wire(Op::Add, &[v, bv], &format!("{name}.v_bias"))?;
    }
    let core = Core {
        heads,
        scale: cx.attr_float("scale").unwrap_or(0.0),
        mask: cx.opt_input(4)?,
        bias: cx.opt_input(5)?,
        causal: cx.attr_int("unidirectional").unwrap_or(0) != 0,
        filter: cx.attr_float("mask_filter_value").unwrap_or(MASK_FILTER),
    };
    Ok(vec![attend(cx, q, k, v, &core, &name)?])
}

fn num_heads(cx: &Cx) -> Result<usize, ImportError> {
    match cx.attr_int("num_heads") {
        Some(h) if h > 0 => Ok(h as usize),
        Some(h) => Err(cx.err(format!("num_heads {h} is not positive"))),
        None => Err(cx.err("attribute `num_heads` is required")),
    }
}

/// Elements `start..start+len` of the last axis of `v`: a new weight when `v` is one (so the
/// projections are `MatMul(x, weight)` as in the unfused graph), else a slice.
fn split_last(
    cx: &mut Cx,
    v: Value,
    start: usize,
    len: usize,
    part: &str,
) -> Result<Value, ImportError> {
    let shape = cx.g.ty(v).shape.clone();
    let r = shape.len();
    let op = Op::Slice {
        start: (0..r).map(|d| if d + 1 == r { start } else { 0 }).collect(),
        step: vec![1; r],
        len: (0..r).map(|d| if d + 1 == r { len } else { shape[d] }).collect(),
    };
    let vname = cx.g.values[v].name.clone();
    if let ValueDef::Weight(t) = &cx.g.values[v].def {
        let t = t.clone();
        let mut ty = t.ty();
        ty.shape[r - 1] = len;
        let part_t = eval::eval_op(&op, &[&t], &ty).map_err(|e| cx.err(e.to_string()))?;
        return Ok(cx.g.add_weight(&format!("{vname}.{part}"), part_t));
    }
    cx.wire(op, &[v], &format!("{vname}.{part}"))
}

/// Multi-head scaled dot-product attention of projected `q [B,S,Dq]`, `k [B,L,Dq]`,
/// `v [B,L,Dv]`, written as the unfused exports write it: heads split by reshape and
/// transpose, `Q·Kᵀ / √d`, the additive mask, softmax, `·V`, heads merged.
fn attend(
    cx: &mut Cx,
    q: Value,
    k: Value,
    v: Value,
    c: &Core,
    name: &str,
) -> Result<Value, ImportError> {
    let (qs, ks, vs) =
        (cx.g.ty(q).shape.clone(), cx.g.ty(k).shape.clone(), cx.g.ty(v).shape.clone());
    let (b, s, l, h) = (qs[0], qs[1], ks[1], c.heads);
    let (d, dv) = (qs[2] / h, vs[2] / h);
    let dtype = cx.g.ty(q).dtype;
    let split = |cx: &mut Cx, x: Value, len: usize, hd: usize, perm: Vec<usize>, part: &str| {
        let r = cx.wire(
            Op::Reshape { shape: vec![b, len, h, hd] },
            &[x],
            &format!("{name}.{part}_heads"),
        )?;
        cx.wire(Op::Transpose { perm }, &[r], &format!("{name}.{part}_t"))
    };
    let qh = split(cx, q, s, d, vec![0, 2, 1, 3], "q")?;
    let kt = split(cx, k, l, d, vec![0, 2, 3, 1], "k")?;
    let vh = split(cx, v, l, dv, vec![0, 2, 1, 3], "v")?;
    let mut scores = cx.wire(Op::MatMul, &[qh, kt], &format!("{name}.qk"))?;
    scores = if c.scale == 0.0 {
        let sd = scalar(cx, "sqrt_head_size", dtype, (d as f64).sqrt());
        cx.wire(Op::Div, &[scores, sd], &format!("{name}.scaled"))?
    } else {
        let sc = scalar(cx, "scale", dtype, c.scale as f64);
        cx.wire(Op::Mul, &[scores, sc], &format!("{name}.scaled"))?
    };
    if let Some(m) = additive_mask(cx, c, b, s, l, dtype, name)? {
        scores = cx.wire(Op::Add, &[scores, m], &format!("{name}.masked"))?;
    }
    if let Some(ab) = c.bias {
        scores = cx.wire(Op::Add, &[scores, ab], &format!("{name}.attention_bias"))?;
    }
    let probs = cx.wire(Op::Softmax { axis: 3 }, &[scores], &format!("{name}.probs"))?;
    let ctx = cx.wire(Op::MatMul, &[probs, vh], &format!("{name}.context"))?;
    let t =
        cx.wire(Op::Transpose { perm: vec![0, 2, 1, 3] }, &[ctx], &format!("{name}.context_t"))?;
    cx.wire(Op::Reshape { shape: vec![b, s, h * dv] }, &[t], name)
}

/// The mask as an additive term (0 where attended, `filter` where not), of shape
/// `[B, 1, 1|S, L]`, from the mask_index forms onnxruntime's CPU kernel accepts: `[B]` end
/// positions, `[2B]` end and start positions, `[B, L]` and `[B, S, L]` 0/1 masks; and the
/// causal mask when `unidirectional`. `None` when neither applies.
fn additive_mask(
    cx: &mut Cx,
    c: &Core,
    b: usize,
    s: usize,
    l: usize,
    dtype: DType,
    name: &str,
) -> Result<Option<Value>, ImportError> {
    let positions = |cx: &mut Cx, suffix: &str, shape: Vec<usize>| {
        cx.constant(
            suffix,
            Tensor { dtype: DType::I64, shape, data: Data::I64((0..l as i64).collect()) },
        )
    };
    let mut keep = match c.mask {
        None => None,
        Some(m) => {
            let ms = cx.g.ty(m).shape.clone();
            let mdt = cx.g.ty(m).dtype;
            if !mdt.is_int() {
                return Err(cx.err(format!("the mask has element type {mdt}, expected int32")));
            }
            let m64 = cx.wire(Op::Cast { to: DType::I64 }, &[m], &format!("{name}.mask_i64"))?;
            Some(match ms[..] {
                [n] if n == b || n == 2 * b => {
                    let j = positions(cx, "key_positions", vec![1, l]);
                    let ends = slice0(cx, m64, 0, b, &format!("{name}.mask_end"))?;
                    let ends = cx.wire(
                        Op::Reshape { shape: vec![b, 1] },
                        &[ends],
                        &format!("{name}.mask_end_col"),
                    )?;
                    let mut k =
                        cx.wire(Op::Less, &[j, ends], &format!("{name}.mask_before_end"))?;
                    if n == 2 * b {
                        let starts = slice0(cx, m64, b, b, &format!("{name}.mask_start"))?;
                        let starts = cx.wire(
                            Op::Reshape { shape: vec![b, 1] },
                            &[starts],
                            &format!("{name}.mask_start_col"),
                        )?;
                        let after = cx.wire(
                            Op::GreaterOrEqual,
                            &[j, starts],
                            &format!("{name}.mask_after_start"),
                        )?;
                        k = cx.wire(Op::And, &[k, after], &format!("{name}.mask_in_range"))?;
                    }
                    cx.wire(
                        Op::Reshape { shape: vec![b, 1, 1, l] },
                        &[k],
                        &format!("{name}.mask_keep"),
                    )?
                }
                [mb, ml] if mb == b && ml == l => {
                    let zero = cx.constant(
                        "mask_zero",
                        Tensor { dtype: DType::I64, shape: vec![], data: Data::I64(vec![0]) },
                    );
                    let k = cx.wire(Op::Greater, &[m64, zero], &format!("{name}.mask_on"))?;
                    cx.wire(
                        Op::Reshape { shape: vec![b, 1, 1, l] },
                        &[k],
                        &format!("{name}.mask_keep"),
                    )?
                }
                [mb, ms_, ml] if mb == b && ms_ == s && ml == l => {
                    let zero = cx.constant(
                        "mask_zero",
                        Tensor { dtype: DType::I64, shape: vec![], data: Data::I64(vec![0]) },
                    );
                    let k = cx.wire(Op::Greater, &[m64, zero], &format!("{name}.mask_on"))?;
                    cx.wire(
                        Op::Reshape { shape: vec![b, 1, s, l] },
                        &[k],
                        &format!("{name}.mask_keep"),
                    )?
                }
                _ => {
                    return Err(cx.err(format!(
                        "mask_index of shape {ms:?} is not supported (batch {b}, sequence {s}, \
                         keys {l}): expected [{b}] end positions, [{}] end and start positions, \
                         a [{b}, {l}] or [{b}, {s}, {l}] 0/1 mask",
                        2 * b
                    )))
                }
            })
        }
    };
    if c.causal {
        let past = l.saturating_sub(s);
        let causal: Vec<bool> = (0..s).flat_map(|i| (0..l).map(move |j| j <= i + past)).collect();
        let cm = cx.constant(
            "causal",
            Tensor { dtype: DType::Bool, shape: vec![1, 1, s, l], data: Data::Bool(causal) },
        );
        keep = Some(match keep {
            None => cm,
            Some(k) => cx.wire(Op::And, &[k, cm], &format!("{name}.mask_causal"))?,
        });
    }
    let Some(keep) = keep else { return Ok(None) };
    // Below about −104, e^x is 0 in float32, so onnxruntime's −10000 masks exactly as −∞ does;
    // writing the float32 minimum the unfused exports add makes veil clamp it to its fixed-point
    // mask value like theirs (−10000 itself is beyond the softmax approximation's range).
    let filter = if c.filter <= -1000.0 { f32::MIN } else { c.filter };
    let zero = scalar(cx, "mask_zero_f", DType::F32, 0.0);
    let filter = scalar(cx, "mask_filter", DType::F32, filter as f64);
    let add = cx.wire(Op::Where, &[keep, zero, filter], &format!("{name}.mask_add"))?;
    if dtype == DType::F32 {
        return Ok(Some(add));
    }
    Ok(Some(cx.wire(Op::Cast { to: dtype }, &[add], &format!("{name}.mask_add_cast"))?))
}

/// Elements `start..start+len` of a 1-D value.
fn slice0(
    cx: &mut Cx,
    v: Value,
    start: usize,
    len: usize,
    name: &str,
) -> Result<Value, ImportError> {
    cx.wire(Op::Slice { start: vec![start], step: vec![1], len: vec![len] }, &[v], name)
}
