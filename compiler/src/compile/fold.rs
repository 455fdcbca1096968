//! Public folding: a node whose arguments are all public is computed at compile time and
//! becomes a constant, so the lowering only ever sees constants, private values and shares.

use crate::backend::partition::{Partition, Vis};
use crate::eval::OpError;
use crate::ir::shape::ShapeError;
use crate::ir::{Graph, Value, ValueDef};
use std::collections::HashMap;
use std::sync::Arc;

/// The public weights each folded constant was computed from (sorted names), for the
/// constants' origin in the program ([`veil_isa::ConstOrigin`]); constants not listed depend
/// on no weight.
pub type WeightSources = HashMap<Value, Vec<String>>;

/// Why public folding or the division rewrite failed: names the node.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// A public node reads a value that is not a constant (a partition bug).
    #[error("public node `{node}` reads `{arg}`, which is not a constant")]
    NotConstant {
        /// The node.
        node: String,
        /// The argument.
        arg: String,
    },
    /// Evaluating a public node failed.
    #[error("folding public node `{node}`: {error}")]
    Eval {
        /// The node.
        node: String,
        /// The evaluator's error.
        error: OpError,
    },
    /// A node the rewrite adds does not fit its arguments (a bug).
    #[error("node `{node}`: {error}")]
    Shape {
        /// The node.
        node: String,
        /// The shape error.
        error: ShapeError,
    },
}

/// Replaces every public weight and every public node result by a constant; returns the
/// weights each constant was computed from.
pub fn fold_public(g: &mut Graph, part: &Partition) -> Result<WeightSources, FoldError> {
    let public_weights: Vec<_> = g
        .values
        .iter()
        .filter(|(v, d)| matches!(d.def, ValueDef::Weight(_)) && part.vis[*v] == Vis::Public)
        .map(|(v, _)| v)
        .collect();
    let mut sources = WeightSources::new();
    for v in public_weights {
        if let ValueDef::Weight(t) = &g.values[v].def {
            g.values[v].def = ValueDef::Const(t.clone());
            sources.insert(v, vec![g.values[v].name.clone()]);
        }
    }
    let order = g.order.clone();
    let mut keep = Vec::with_capacity(order.len());
    for n in order {
        let nd = &g.nodes[n];
        if part.vis[nd.result] != Vis::Public {
            keep.push(n);
            continue;
        }
        let mut args = Vec::new();
        for &a in &nd.args {
            match g.const_data(a) {
                Some(t) => args.push(t.clone()),
                None => {
                    return Err(FoldError::NotConstant {
                        node: nd.name.clone(),
                        arg: g.values[a].name.clone(),
                    })
                }
            }
        }
        let refs: Vec<&crate::ir::Tensor> = args.iter().collect();
        let ty = g.values[nd.result].ty.clone();
        let t = crate::eval::eval_op(&nd.op, &refs, &ty)
            .map_err(|error| FoldError::Eval { node: nd.name.clone(), error })?;
        let r = nd.result;
        let mut from: Vec<String> =
            nd.args.iter().filter_map(|a| sources.get(a)).flatten().cloned().collect();
        from.sort();
        from.dedup();
        if !from.is_empty() {
            sources.insert(r, from);
        }
        g.values[r].def = ValueDef::Const(Arc::new(t));
    }
    g.order = keep;
    Ok(sources)
}

/// `a / b` with `a` secret and `b` known to one party (or public): that party computes `1/b`
/// in the clear and the division becomes a product (mean pooling's division by the token
/// count, which the client knows).
pub fn divisions_to_products(g: &mut Graph, part: &Partition) -> Result<usize, FoldError> {
    let order = g.order.clone();
    let mut changed = 0;
    for n in order {
        let nd = g.nodes[n].clone();
        if !matches!(nd.op, crate::ir::Op::Div)
            || part.vis[nd.result] != Vis::Shared
            || part.vis[nd.args[1]] == Vis::Shared
            || !g.ty(nd.args[1]).dtype.is_float()
        {
            continue;
        }
        let one = g.add_const(
            &format!("{}.one", nd.name),
            crate::ir::Tensor {
                dtype: g.ty(nd.args[1]).dtype,
                ..crate::ir::Tensor::scalar_f32(1.0)
            },
        );
        let before = g.order.len();
        g.cursor = nd.prov.clone();
        let node = format!("{}.reciprocal", nd.name);
        let r = g
            .add_node(
                &node,
                crate::ir::Op::Div,
                &[one, nd.args[1]],
                &format!("{}.reciprocal", g.values[nd.result].name),
            )
            .map_err(|error| FoldError::Shape { node, error })?;
        let new: Vec<_> = g.order.drain(before..).collect();
        let pos = g.order.iter().position(|&m| m == n).expect("the node is in the order");
        g.order.splice(pos..pos, new);
        g.nodes[n].op = crate::ir::Op::Mul;
        g.nodes[n].args[1] = r;
        changed += 1;
    }
    g.cursor = Default::default();
    Ok(changed)
}

/// The largest constant integer exponent [`powers_to_products`] expands (x^8: three squarings).
pub const MAX_POWER: i64 = 8;

/// Secret operators without a two-party form of their own, written with ones that have one:
/// `x^k` with `k` a public integer in `1..=MAX_POWER` (the same for every element) as products
/// by repeated squaring, and `Clip(x, lo, hi)` as `Max(Min(x, hi), lo)` (an infinite bound
/// dropped). Other exponents are left to the lowering, which refuses them with the reason.
pub fn expand_secret_ops(g: &mut Graph, part: &Partition) -> Result<usize, FoldError> {
    let order = g.order.clone();
    let mut changed = 0;
    for n in order {
        let nd = g.nodes[n].clone();
        if part.vis[nd.result] != Vis::Shared {
            continue;
        }
        if let crate::ir::Op::Clip { min, max } = nd.op {
            changed += clip_to_max_min(g, n, min, max)?;
            continue;
        }
        if !matches!(nd.op, crate::ir::Op::Pow) {
            continue;
        }
        let Some(k) = g.const_data(nd.args[1]).and_then(integer_exponent) else { continue };
        g.cursor = nd.prov.clone();
        let before = g.order.len();
        let base = nd.args[0];
        let name = g.values[nd.result].name.clone();
        let mul = |g: &mut Graph, a, b, step: &str| {
            let node = format!("{}.{step}", nd.name);
            g.add_node(&node, crate::ir::Op::Mul, &[a, b], &format!("{name}.{step}"))
                .map_err(|error| FoldError::Shape { node, error })
        };
        // Square-and-multiply from the top bit: ⌊log2 k⌋ squarings, popcount(k) − 1 products.
        let mut acc = base;
        for bit in (0..63 - k.leading_zeros()).rev() {
            acc = mul(g, acc, acc, &format!("sq{bit}"))?;
            if k >> bit & 1 == 1 {
                acc = mul(g, acc, base, &format!("mul{bit}"))?;
            }
        }
        let new: Vec<_> = g.order.drain(before..).collect();
        let pos = g.order.iter().position(|&m| m == n).expect("the node is in the order");
        g.order.splice(pos..pos, new);
        if acc == base {
            // x^1: the node becomes a copy.
            g.replace_uses(nd.result, base);
        } else {
            g.replace_uses(nd.result, acc);
            let old = std::mem::take(&mut g.values[nd.result].name);
            g.values[nd.result].name = format!("{old}.replaced");
            g.values[acc].name = old;
        }
        changed += 1;
    }
    g.cursor = Default::default();
    if changed > 0 {
        g.remove_dead_nodes();
    }
    Ok(changed)
}

/// The exponent `k` when every element of `t` is the same integer in `1..=MAX_POWER`.
fn integer_exponent(t: &crate::ir::Tensor) -> Option<i64> {
    let v = t.to_f64_vec();
    let k = *v.first()?;
    let ok = v.iter().all(|&e| e == k) && k.fract() == 0.0 && (1.0..=MAX_POWER as f64).contains(&k);
    ok.then_some(k as i64)
}

/// Rewrites the `Clip` node `n` as `Max(Min(x, hi), lo)`, dropping an infinite bound.
fn clip_to_max_min(
    g: &mut Graph,
    n: crate::ir::Node,
    lo: f64,
    hi: f64,
) -> Result<usize, FoldError> {
    let nd = g.nodes[n].clone();
    let dtype = g.ty(nd.args[0]).dtype;
    let bound = |g: &mut Graph, v: f64, what: &str| {
        let t = crate::ir::Tensor { dtype, ..crate::ir::Tensor::scalar_f32(v as f32) };
        g.add_const(&format!("{}.{what}", nd.name), t)
    };
    g.cursor = nd.prov.clone();
    let before = g.order.len();
    let mut x = nd.args[0];
    // ONNX: min(max(x, lo), hi), so hi wins when lo > hi; Min then Max would let lo win.
    if lo.is_finite() {
        let c = bound(g, lo, "min");
        let node = format!("{}.max", nd.name);
        x = g
            .add_node(&node, crate::ir::Op::Max, &[x, c], &format!("{}.lower", nd.name))
            .map_err(|error| FoldError::Shape { node, error })?;
    }
    if hi.is_finite() {
        // min(x, hi) = −max(−x, −hi): the lowering compares with a constant only from below.
        let c = bound(g, -hi, "max");
        let step = |g: &mut Graph, op, args: &[crate::ir::Value], what: &str| {
            let node = format!("{}.{what}", nd.name);
            g.add_node(&node, op, args, &format!("{}.{what}", nd.name))
                .map_err(|error| FoldError::Shape { node, error })
        };
        let neg = step(g, crate::ir::Op::Neg, &[x], "neg")?;
        let max = step(g, crate::ir::Op::Max, &[neg, c], "neg_max")?;
        x = step(g, crate::ir::Op::Neg, &[max], "upper")?;
    }
    let new: Vec<_> = g.order.drain(before..).collect();
    let pos = g.order.iter().position(|&m| m == n).expect("the node is in the order");
    g.order.splice(pos..pos, new);
    g.replace_uses(nd.result, x);
    if x != nd.args[0] {
        let old = std::mem::take(&mut g.values[nd.result].name);
        g.values[nd.result].name = format!("{old}.replaced");
        g.values[x].name = old;
    }
    g.cursor = Default::default();
    Ok(1)
}
