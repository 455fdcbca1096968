//! Operators on secret data with no two-party form of their own, written with ones that have
//! one: `x^k` for a public integer `k` as products, `Clip` as max and min against its bounds,
//! `|x|` through ReLU, and `Where` on a condition one party holds as arithmetic.

use super::fold::FoldError;
use crate::backend::partition::{Partition, Vis};
use crate::ir::{DType, Graph, Node, Op, Tensor, Value};

/// The largest constant integer exponent [`expand_secret_ops`] expands (x^8: three squarings).
pub const MAX_POWER: i64 = 8;

/// Rewrites every shared `Pow` by a public integer in `1..=MAX_POWER` (the same for every
/// element), `Clip`, `Abs` and `Where` on a condition that is not shared. Other forms are left
/// to the lowering, which refuses them with the reason. Returns how many were rewritten.
pub fn expand_secret_ops(g: &mut Graph, part: &Partition) -> Result<usize, FoldError> {
    let mut changed = 0;
    for n in g.order.clone() {
        let nd = g.nodes[n].clone();
        if part.vis[nd.result] != Vis::Shared {
            continue;
        }
        let done = match nd.op {
            Op::Pow => match g.const_data(nd.args[1]).and_then(integer_exponent) {
                Some(k) => splice(g, n, |b| power(b, nd.args[0], k))?,
                None => false,
            },
            Op::Clip { min, max } => splice(g, n, |b| clip(b, nd.args[0], min, max))?,
            Op::Abs => splice(g, n, |b| abs(b, nd.args[0]))?,
            // A shared condition comes from a comparison of secrets, which has no form yet.
            Op::Where if part.vis[nd.args[0]] != Vis::Shared => {
                splice(g, n, |b| select(b, nd.args[0], nd.args[1], nd.args[2]))?
            }
            _ => false,
        };
        changed += done as usize;
    }
    if changed > 0 {
        g.remove_dead_nodes();
    }
    Ok(changed)
}

/// Adds the nodes of one rewrite, named after the node it replaces.
struct Builder<'g> {
    g: &'g mut Graph,
    node: String,
    value: String,
    dtype: DType,
}

impl Builder<'_> {
    fn op(&mut self, op: Op, args: &[Value], step: &str) -> Result<Value, FoldError> {
        let node = format!("{}.{step}", self.node);
        let result = format!("{}.{step}", self.value);
        self.g.add_node(&node, op, args, &result).map_err(|error| FoldError::Shape { node, error })
    }

    fn scalar(&mut self, v: f64, step: &str) -> Value {
        let t = Tensor { dtype: self.dtype, ..Tensor::scalar_f32(v as f32) };
        self.g.add_const(&format!("{}.{step}", self.node), t)
    }
}

/// Replaces node `n` by what `build` adds (placed where `n` was, with its provenance, and the
/// result taking its name). `build` returning the node's own argument makes `n` a copy.
fn splice(
    g: &mut Graph,
    n: Node,
    build: impl FnOnce(&mut Builder) -> Result<Value, FoldError>,
) -> Result<bool, FoldError> {
    let nd = g.nodes[n].clone();
    g.cursor = nd.prov.clone();
    let before = g.order.len();
    let dtype = g.ty(nd.result).dtype;
    let value = g.values[nd.result].name.clone();
    let out = build(&mut Builder { g: &mut *g, node: nd.name.clone(), value, dtype });
    g.cursor = Default::default();
    let out = out?;
    g.move_before(before, n);
    if nd.args.contains(&out) {
        // A copy: the argument keeps its own name.
        g.replace_uses(nd.result, out);
    } else {
        g.take_place(nd.result, out);
    }
    Ok(true)
}

/// `x^k` by square-and-multiply from the top bit: ⌊log2 k⌋ squarings, popcount(k) − 1 products.
fn power(b: &mut Builder, x: Value, k: i64) -> Result<Value, FoldError> {
    let mut acc = x;
    for bit in (0..63 - k.leading_zeros()).rev() {
        acc = b.op(Op::Mul, &[acc, acc], &format!("sq{bit}"))?;
        if k >> bit & 1 == 1 {
            acc = b.op(Op::Mul, &[acc, x], &format!("mul{bit}"))?;
        }
    }
    Ok(acc)
}

/// `Clip(x, lo, hi)` as ONNX orders it, `min(max(x, lo), hi)` (hi wins when lo > hi), an
/// infinite bound dropped; `min(y, hi) = −max(−y, −hi)` because the lowering compares with a
/// constant from below only.
fn clip(b: &mut Builder, x: Value, lo: f64, hi: f64) -> Result<Value, FoldError> {
    let mut y = x;
    if lo.is_finite() {
        let c = b.scalar(lo, "min");
        y = b.op(Op::Max, &[y, c], "lower")?;
    }
    if hi.is_finite() {
        let c = b.scalar(-hi, "max");
        let neg = b.op(Op::Neg, &[y], "neg")?;
        let max = b.op(Op::Max, &[neg, c], "neg_max")?;
        y = b.op(Op::Neg, &[max], "upper")?;
    }
    Ok(y)
}

/// `|x| = 2·relu(x) − x`: one comparison.
fn abs(b: &mut Builder, x: Value) -> Result<Value, FoldError> {
    let r = b.op(Op::Relu, &[x], "relu")?;
    let two = b.scalar(2.0, "two");
    let r2 = b.op(Op::Mul, &[r, two], "twice")?;
    b.op(Op::Sub, &[r2, x], "abs")
}

/// `Where(c, a, e) = e + c·(a − e)` with `c` as 0/1 of the branches' type: the party holding
/// the condition converts it in the clear, and the product is an ordinary two-party one.
fn select(b: &mut Builder, c: Value, a: Value, e: Value) -> Result<Value, FoldError> {
    let dtype = b.dtype;
    let c = b.op(Op::Cast { to: dtype }, &[c], "condition")?;
    let d = b.op(Op::Sub, &[a, e], "difference")?;
    let p = b.op(Op::Mul, &[c, d], "chosen")?;
    b.op(Op::Add, &[e, p], "select")
}

/// The exponent `k` when every element of `t` is the same integer in `1..=MAX_POWER`.
fn integer_exponent(t: &Tensor) -> Option<i64> {
    let v = t.to_f64_vec();
    let k = *v.first()?;
    let ok = v.iter().all(|&e| e == k) && k.fract() == 0.0 && (1.0..=MAX_POWER as f64).contains(&k);
    ok.then_some(k as i64)
}
