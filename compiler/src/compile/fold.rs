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
        g.move_before(before, n);
        g.nodes[n].op = crate::ir::Op::Mul;
        g.nodes[n].args[1] = r;
        changed += 1;
    }
    g.cursor = Default::default();
    Ok(changed)
}
