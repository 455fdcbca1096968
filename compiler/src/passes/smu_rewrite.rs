//! `smu_rewrite` (`--nonlinear smu`, after Comet): every nonlinearity becomes one inverse
//! square root. GELU → SMU-1(α, μ); softmax → the normalised SMU-1 form
//! `smu1(x_i) / Σ_j smu1(x_j)` (no maximum, no exponential); a division by a computed value →
//! a product with its reciprocal, which the lowering computes as `rsqrt(y)²` (valid for a
//! positive divisor: calibration checks it). Layer norm keeps its node; the lowering gives it
//! the comparison-free inverse square root.
//!
//! GELU and softmax rewrites change the model's function (SMU-1 is not GELU); the compile
//! summary reports by how much on the calibration inputs. A model already written with SMU-1
//! (fine-tuned with it) is recognised by `fuse_smu1` and keeps its exact activation.
//!
//! New nodes are named `<node>::<kind>/...`, so the cost report still files them under the
//! operator they replace (`gelu`, `softmax`).

use super::Pass;
use crate::ir::{Graph, Node, Op, Tensor, Value};

/// The pass, with SMU-1's parameters.
pub struct SmuRewrite {
    /// α of SMU-1.
    pub alpha: f32,
    /// μ of SMU-1.
    pub mu: f32,
}

impl Pass for SmuRewrite {
    fn name(&self) -> &'static str {
        "smu_rewrite"
    }

    fn run(&mut self, g: &mut Graph) -> usize {
        let smu = Op::Smu1 { alpha: self.alpha, mu: self.mu };
        let mut count = 0;
        for n in g.order.clone() {
            let nd = g.nodes[n].clone();
            let built = match &nd.op {
                Op::Gelu { .. } => {
                    let name = format!("{}::gelu/smu1", nd.name);
                    Some(insert_before(g, n, |g| g.add_node(&name, smu.clone(), &nd.args, &name)))
                }
                Op::Softmax { axis } => Some(insert_before(g, n, |g| {
                    let at = |k: &str| format!("{}::softmax/{k}", nd.name);
                    let y = match masked_scores(g, nd.args[0], *axis) {
                        // Masked entries must weigh exactly 0: SMU-1 of a large negative
                        // number is small but not 0 (μ²/4|x|), so the mask becomes a product.
                        Some((scores, finite, keep)) => {
                            let fin = g.add_const(&at("mask_finite"), finite);
                            let keep = g.add_const(&at("mask_keep"), keep);
                            let x =
                                g.add_node(&at("masked"), Op::Add, &[scores, fin], &at("masked"))?;
                            let y = g.add_node(&at("smu1"), smu.clone(), &[x], &at("smu1"))?;
                            g.add_node(&at("keep"), Op::Mul, &[y, keep], &at("keep"))?
                        }
                        None => g.add_node(&at("smu1"), smu.clone(), &nd.args, &at("smu1"))?,
                    };
                    let sum = Op::ReduceSum { axes: vec![*axis], keepdims: true };
                    let s = g.add_node(&at("sum"), sum, &[y], &at("sum"))?;
                    let r = g.add_node(&at("recip"), Op::Reciprocal, &[s], &at("recip"))?;
                    g.add_node(&at("scale"), Op::Mul, &[y, r], &at("scale"))
                })),
                Op::Div if g.const_data(nd.args[1]).is_none() => Some(insert_before(g, n, |g| {
                    let at = |k: &str| format!("{}::div/{k}", nd.name);
                    let r =
                        g.add_node(&at("recip"), Op::Reciprocal, &nd.args[1..], &at("recip"))?;
                    g.add_node(&at("mul"), Op::Mul, &[nd.args[0], r], &at("mul"))
                })),
                _ => None,
            };
            let Some(new) = built else { continue };
            // Every rewrite keeps shapes, so building cannot fail on a verified graph.
            let new = new.expect("the rewrite keeps the operator's type");
            g.take_place(nd.result, new);
            count += 1;
        }
        count
    }
}

/// `x = scores + mask` with a constant mask holding huge negative entries (≤ −1e9, a causal or
/// padding mask): the scores, the mask with those entries 0, and the 0/1 keep pattern.
/// A row (along the softmax `axis`) masked entirely is left to the additive form: its SMU sum
/// would be 0, and the calibrated range then refuses the compile, naming the node.
fn masked_scores(g: &Graph, x: Value, axis: usize) -> Option<(Value, Tensor, Tensor)> {
    let nd = &g.nodes[g.producer(x)?];
    if !matches!(nd.op, Op::Add) {
        return None;
    }
    let (scores, mask) = match (g.const_data(nd.args[0]), g.const_data(nd.args[1])) {
        (None, Some(m)) => (nd.args[0], m),
        (Some(m), None) => (nd.args[1], m),
        _ => return None,
    };
    let v: Vec<f64> = (0..mask.numel()).map(|i| mask.get_f64(i)).collect();
    if !v.iter().any(|&x| x <= -1e9) {
        return None;
    }
    let rank = g.values[x].ty.shape.len();
    let ma = (axis + mask.shape.len()).checked_sub(rank)?;
    let (len, inner) = (mask.shape[ma], mask.shape[ma + 1..].iter().product::<usize>());
    let full_row = (0..v.len() / len.max(1)).any(|r| {
        let (o, i) = (r / inner, r % inner);
        (0..len).all(|j| v[(o * len + j) * inner + i] <= -1e9)
    });
    if full_row {
        return None;
    }
    let finite = v.iter().map(|&x| if x <= -1e9 { 0.0 } else { x as f32 }).collect();
    let keep = v.iter().map(|&x| if x <= -1e9 { 0.0 } else { 1.0 }).collect();
    Some((scores, Tensor::f32(mask.shape.clone(), finite), Tensor::f32(mask.shape.clone(), keep)))
}

/// Runs `build` (which appends nodes) and moves the new nodes to just before `n`.
fn insert_before(
    g: &mut Graph,
    n: Node,
    build: impl FnOnce(&mut Graph) -> Result<Value, crate::ir::shape::ShapeError>,
) -> Result<Value, crate::ir::shape::ShapeError> {
    let before = g.order.len();
    let out = build(g)?;
    g.move_before(before, n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, TensorType};

    fn rewritten(mask: Vec<f32>) -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::new(DType::F32, vec![2, 3]));
        let m = g.add_const("m", Tensor::f32([2, 3], mask));
        let s = g.add_node("s", Op::Add, &[x, m], "s").unwrap();
        let p = g.add_node("p", Op::Softmax { axis: 1 }, &[s], "p").unwrap();
        g.outputs = vec![p];
        SmuRewrite { alpha: 0.0, mu: 1.0 }.run(&mut g);
        g
    }

    fn has_keep(g: &Graph) -> bool {
        g.values.iter().any(|(_, d)| d.name.ends_with("mask_keep"))
    }

    #[test]
    fn a_causal_mask_becomes_a_product_but_a_fully_masked_row_does_not() {
        let inf = -3.4e38;
        assert!(has_keep(&rewritten(vec![0.0, inf, inf, 0.0, 0.0, inf])));
        assert!(!has_keep(&rewritten(vec![0.0, inf, inf, inf, inf, inf])));
        assert!(!has_keep(&rewritten(vec![0.0, -5.0, 0.0, 0.0, 0.0, 0.0])));
    }
}
