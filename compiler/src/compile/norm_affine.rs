//! A layer norm's affine step folded into the product that reads it:
//! `(n·γ + β)·W = n·(γ ⊙ W) + β·W`, with `γ`, `β`, `W` the server's (or public) and `n`
//! secret.
//!
//! Why: `n·γ + β` is a product with a weight (one send), then a truncation (one opening)
//! before `W`'s product can send it again. Folded, `γ ⊙ W` and `β·W` are weight-only
//! expressions that `fold_public` turns into derived weights, and `n` (already truncated by
//! its opening) is sent once for both products: two rounds fewer per layer norm that feeds a
//! linear layer, and no truncation of `n·γ + β` at all when its other readers (the residual)
//! take it at its own scale.

use super::fold::FoldError;
use crate::backend::partition::{Partition, Vis};
use crate::ir::{Graph, Op, Value};

/// Rewrites every `MatMul(n·γ + β, W)` (or of a reshape of `n·γ + β` that keeps its last
/// axis) whose `γ`, `β` (vectors over `W`'s rows) and `W` (a matrix) no client data reaches,
/// and whose `n` is secret. Returns how many it rewrote.
pub fn fold_norm_affine(g: &mut Graph, part: &Partition) -> Result<usize, FoldError> {
    let weight_only = |v: Value| matches!(part.vis[v], Vis::Server | Vis::Public);
    let order = g.order.clone();
    let mut changed = 0;
    for n in order {
        let nd = g.nodes[n].clone();
        if !matches!(nd.op, Op::MatMul) || part.vis[nd.result] != Vis::Shared {
            continue;
        }
        let (a, w) = (nd.args[0], nd.args[1]);
        let wt = g.ty(w).clone();
        if !weight_only(w) || wt.rank() != 2 || !wt.dtype.is_float() {
            continue;
        }
        let h = wt.shape[0];
        // A view that keeps the last axis (GPT-2's Conv1D flattens the tokens) may sit between.
        let (a, view) = match g.producer(a).map(|p| g.nodes[p].op.clone()) {
            Some(Op::Reshape { shape }) if shape.last() == Some(&h) => {
                let src = g.nodes[g.producer(a).expect("a reshape")].args[0];
                (src, Some(shape))
            }
            _ => (a, None),
        };
        if g.ty(a).shape.last() != Some(&h) {
            continue;
        }
        let Some((nv, gamma, beta)) = affine_of(g, a) else { continue };
        let vector = |v: Value| g.ty(v).shape == [h];
        if !(weight_only(gamma) && weight_only(beta) && vector(gamma) && vector(beta))
            || part.vis[nv] != Vis::Shared
            || g.ty(nv).shape != g.ty(a).shape
        {
            continue;
        }
        let before = g.order.len();
        g.cursor = nd.prov.clone();
        let base = g.values[nd.result].name.clone();
        let node = |g: &mut Graph, what: &str, op: Op, args: &[Value]| {
            let name = format!("{}.{what}", nd.name);
            g.add_node(&name, op, args, &format!("{base}.{what}"))
                .map_err(|error| FoldError::Shape { node: name, error })
        };
        let col = node(g, "gamma_col", Op::Reshape { shape: vec![h, 1] }, &[gamma])?;
        let scaled = node(g, "gamma_w", Op::Mul, &[col, w])?;
        let row = node(g, "beta_row", Op::Reshape { shape: vec![1, h] }, &[beta])?;
        let shift = node(g, "beta_w", Op::MatMul, &[row, w])?;
        let nv = match view {
            Some(shape) => node(g, "normed_view", Op::Reshape { shape }, &[nv])?,
            None => nv,
        };
        let prod = node(g, "normed_w", Op::MatMul, &[nv, scaled])?;
        let out = node(g, "folded", Op::Add, &[prod, shift])?;
        g.move_before(before, n);
        g.take_place(nd.result, out);
        changed += 1;
    }
    g.cursor = Default::default();
    if changed > 0 {
        g.remove_dead_nodes();
    }
    Ok(changed)
}

/// `(n, γ, β)` when `a = n·γ + β` (either operand order of the sum and the product).
fn affine_of(g: &Graph, a: Value) -> Option<(Value, Value, Value)> {
    let add = &g.nodes[g.producer(a)?];
    if !matches!(add.op, Op::Add) {
        return None;
    }
    for (p, beta) in [(add.args[0], add.args[1]), (add.args[1], add.args[0])] {
        let Some(pn) = g.producer(p) else { continue };
        let mul = &g.nodes[pn];
        if !matches!(mul.op, Op::Mul) {
            continue;
        }
        for (nv, gamma) in [(mul.args[0], mul.args[1]), (mul.args[1], mul.args[0])] {
            if g.ty(gamma).rank() == 1 {
                return Some((nv, gamma, beta));
            }
        }
    }
    None
}
