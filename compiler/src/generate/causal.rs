//! The causal mask a one-token trace left out. Optimum traces a decoder with past for one new
//! token, where transformers adds no mask (one query attends to the whole past and itself), so
//! the exported graph has none. Run token by token, as it is meant to be, it computes causal
//! attention; veil's prefill reads the prompt at once, so the mask that token-by-token use
//! implies is put back before every unmasked normalisation over key positions: the additive
//! mask a decoder exported without past carries (0 on and below the diagonal, the float
//! minimum above), on the query and key axes the role analysis found.

use super::roles::{self, Role};
use super::GenerateError;
use crate::ir::{Graph, Op, Tensor};

/// Adds the causal mask before every softmax over key positions that has none; returns how
/// many were added.
pub fn restore_causal_mask(g: &mut Graph) -> Result<usize, GenerateError> {
    let r = roles::classify(g)?;
    let mut added = 0;
    for n in g.order.clone() {
        let nd = &g.nodes[n];
        let Op::Softmax { axis } = nd.op else { continue };
        let x = nd.args[0];
        let shape = g.ty(x).shape.clone();
        let (Some(qa), true) =
            ((0..shape.len()).find(|&a| r.get(x, a) == Role::Query), r.get(x, axis) == Role::Key)
        else {
            continue;
        };
        if roles::masked_path(g, &r, x, 8) {
            continue;
        }
        let (sq, sk) = (shape[qa], shape[axis]);
        let mut mshape = vec![1; shape.len()];
        mshape[qa] = sq;
        mshape[axis] = sk;
        // Rows are the last `sq` of `sk` positions (a past before them sees everything).
        let past = sk.saturating_sub(sq);
        let (outer, inner) = if qa < axis { (sq, sk) } else { (sk, sq) };
        let mut v = Vec::with_capacity(sq * sk);
        for i in 0..outer {
            for j in 0..inner {
                let (q, k) = if qa < axis { (i, j) } else { (j, i) };
                v.push(if k <= q + past { 0.0 } else { f32::MIN });
            }
        }
        let name = g.nodes[n].name.clone();
        let mask = g.add_const(&format!("{name}.causal_mask"), Tensor::f32(mshape, v));
        g.cursor = g.nodes[n].prov.clone();
        let masked = g
            .add_node(
                &format!("{name}::causal_mask"),
                Op::Add,
                &[x, mask],
                &format!("{name}.masked"),
            )
            .map_err(|error| GenerateError::Shape { node: name.clone(), window: None, error })?;
        g.cursor = Default::default();
        // Placed right before the softmax, which now reads the masked scores.
        if let (Some(new), Some(at)) = (g.order.pop(), g.order.iter().position(|&m| m == n)) {
            g.order.insert(at, new);
        }
        g.nodes[n].args[0] = masked;
        added += 1;
    }
    Ok(added)
}
