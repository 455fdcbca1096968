//! Float guards that are constant in fixed point. Exporters guard against NaN and infinity
//! (recent PyTorch puts `Where(IsNaN(p), 0, p)` after an attention softmax for fully masked
//! rows); a fixed-point value is never NaN or infinite, so on secret data the test is constant
//! false and the `Where` is its other branch. Folding them here lets such models compile; the
//! plaintext reference keeps the float semantics.

use crate::backend::partition::{Partition, Vis};
use crate::ir::{Data, Graph, Op, Tensor, Value};

/// Folds `IsNaN` and `IsInf` of secret values to false and `Where` with a constant condition to the
/// branch it selects; returns how many nodes were folded.
pub fn fold_guards(g: &mut Graph, part: &Partition) -> usize {
    let mut folded = 0;
    for n in g.order.clone() {
        let nd = g.nodes[n].clone();
        let secret = |v: Value| part.vis.get(v).is_some_and(|&s| s == Vis::Shared);
        match nd.op {
            Op::IsNaN | Op::IsInf { .. } if secret(nd.args[0]) => {
                let shape = g.ty(nd.result).shape.clone();
                let n_el = shape.iter().product();
                let f = g.add_const(
                    &format!("{}.never", g.values[nd.result].name),
                    Tensor::bool(shape, vec![false; n_el]),
                );
                replace(g, nd.result, f);
                folded += 1;
            }
            Op::Where => {
                let Some(Data::Bool(bits)) = g.const_data(nd.args[0]).map(|c| &c.data) else {
                    continue;
                };
                let pick = match (bits.iter().all(|&b| b), bits.iter().all(|&b| !b)) {
                    (true, _) => nd.args[1],
                    (_, true) => nd.args[2],
                    _ => continue,
                };
                // Only when no broadcast is needed (the branch already has the result's type),
                // and not where an output would have to take an input's or output's name.
                let named = g.inputs.contains(&pick) || g.outputs.contains(&pick);
                if g.ty(pick) != g.ty(nd.result) || (g.outputs.contains(&nd.result) && named) {
                    continue;
                }
                replace(g, nd.result, pick);
                folded += 1;
            }
            _ => {}
        }
    }
    if folded > 0 {
        g.remove_dead_nodes();
    }
    folded
}

/// Makes the uses of `old` read `new`; a graph output keeps its name.
fn replace(g: &mut Graph, old: Value, new: Value) {
    let is_output = g.outputs.contains(&old);
    g.replace_uses(old, new);
    if is_output {
        let name = std::mem::take(&mut g.values[old].name);
        g.values[old].name = format!("{name}.folded");
        g.values[new].name = name;
    }
}
