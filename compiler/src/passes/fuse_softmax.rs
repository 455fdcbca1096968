//! `fuse_softmax`: a softmax written out, `exp(x − max(x)) / Σ exp(x − max(x))` along one
//! axis (ONNX's `Softmax` function body, older exporters, hand-written attention), → one
//! `softmax` node.
//!
//! Without the fusion the `Exp` alone reaches the two-party lowering, which has no form for an
//! exp of unbounded secret input; the fused node gets the stdlib's max-subtracted softmax.
//! The form without the maximum subtracted is the same function and is fused too.

use super::matching::{replace, Matcher};
use super::Pass;
use crate::ir::{Graph, Op, Value};

/// The pass.
pub struct FuseSoftmax;

impl Pass for FuseSoftmax {
    fn name(&self) -> &'static str {
        "fuse_softmax"
    }

    fn run(&mut self, g: &mut Graph) -> usize {
        let found: Vec<(Value, Value, usize)> = {
            let m = Matcher::new(g);
            g.order.iter().filter_map(|&n| try_match(&m, g.nodes[n].result)).collect()
        };
        for &(y, x, axis) in &found {
            replace(g, y, Op::Softmax { axis }, vec![x]);
        }
        found.len()
    }
}

/// The one axis a keepdims reduction reduces.
fn one_axis(op: &Op) -> Option<usize> {
    match op {
        Op::ReduceSum { axes, keepdims: true } | Op::ReduceMax { axes, keepdims: true }
            if axes.len() == 1 =>
        {
            Some(axes[0])
        }
        _ => None,
    }
}

/// `y = e / ReduceSum(e)` with `e = Exp(x − ReduceMax(x))` or `e = Exp(x)`, all on one axis
/// → (y, x, axis). The exp and the difference must have no other users.
fn try_match(m: &Matcher, y: Value) -> Option<(Value, Value, usize)> {
    let div = m.def_op(y, |o| matches!(o, Op::Div))?;
    let (e, s) = (div.args[0], div.args[1]);
    let sum = m.def_op(s, |o| matches!(o, Op::ReduceSum { .. }))?;
    let axis = one_axis(&sum.op)?;
    if sum.args[0] != e || !m.single_use(s) || m.users(e).len() != 2 {
        return None;
    }
    let exp = m.def_op(e, |o| matches!(o, Op::Exp))?;
    let d = exp.args[0];
    let x = match m.def_op(d, |o| matches!(o, Op::Sub)) {
        Some(sub) if m.single_use(d) => {
            let (x, mx) = (sub.args[0], sub.args[1]);
            match m.def_op(mx, |o| matches!(o, Op::ReduceMax { .. })) {
                Some(r) if r.args[0] == x && one_axis(&r.op) == Some(axis) => x,
                _ => d,
            }
        }
        _ => d,
    };
    // Shapes must agree: the softmax's result has x's type.
    (m.g.ty(x) == m.g.ty(y)).then_some((y, x, axis))
}
