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
use crate::ir::{Graph, Node, Op, Value};

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
                    let y = g.add_node(&at("smu1"), smu.clone(), &nd.args, &at("smu1"))?;
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
            g.replace_uses(nd.result, new);
            let name = std::mem::take(&mut g.values[nd.result].name);
            g.values[nd.result].name = format!("{name}.replaced");
            g.values[new].name = name;
            count += 1;
        }
        count
    }
}

/// Runs `build` (which appends nodes) and moves the new nodes to just before `n`.
fn insert_before(
    g: &mut Graph,
    n: Node,
    build: impl FnOnce(&mut Graph) -> Result<Value, String>,
) -> Result<Value, String> {
    let before = g.order.len();
    let out = build(g)?;
    let new: Vec<_> = g.order.drain(before..).collect();
    let pos = g.order.iter().position(|&m| m == n).expect("the node is in the order");
    g.order.splice(pos..pos, new);
    Ok(out)
}
