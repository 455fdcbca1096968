//! The plaintext reference evaluator: runs an IR graph on tensors.
//!
//! Storage follows the IR (`f32` for f32/f16/bf16, `f64`, `i64` for every integer type, `bool`);
//! matrix products, reductions, softmax and layer norm accumulate in f64. Integer results wrap
//! to their type's width; f16/bf16 results round to their format. This is the ground truth
//! every two-party result is compared with, and the constant folder of the ONNX importer.

mod elementwise;
mod fast;
mod kernels;

pub use elementwise::from_f64s;

use crate::ir::{Graph, Op, Tensor, Value, ValueDef};
use std::collections::HashMap;
use std::fmt;

/// Why evaluation failed: always names the node.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError {
    /// Node name (or the value, for missing inputs).
    pub node: String,
    /// What went wrong.
    pub msg: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "evaluating `{}`: {}", self.node, self.msg)
    }
}

impl std::error::Error for EvalError {}

/// A rank-0 tensor of `dtype` holding `v` (rounded or truncated to the type).
pub fn scalar_of(dtype: crate::ir::DType, v: f64) -> Tensor {
    elementwise::from_f64s(dtype, vec![], vec![v])
}

/// Evaluates one operator on argument tensors (shapes already checked by the IR).
pub fn eval_op(
    op: &Op,
    args: &[&Tensor],
    out_ty: &crate::ir::TensorType,
) -> Result<Tensor, String> {
    kernels::eval_op(op, args, out_ty)
}

/// Evaluates `g` with the given inputs (by input name) and returns its outputs in order.
pub fn run(g: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, EvalError> {
    let all = run_values(g, inputs, &g.outputs)?;
    Ok(all)
}

/// As [`run`], with f32 matrix products split across threads: what an f32 runtime computes,
/// for the client's plaintext part (not the reference: that accumulates in f64).
pub fn run_fast(g: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, EvalError> {
    evaluate(g, inputs, &g.outputs, true)
}

/// Evaluates `g` and returns the values `wanted` (any values, not only outputs).
pub fn run_values(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
    wanted: &[Value],
) -> Result<Vec<Tensor>, EvalError> {
    evaluate(g, inputs, wanted, false)
}

fn evaluate(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
    wanted: &[Value],
    fast: bool,
) -> Result<Vec<Tensor>, EvalError> {
    let mut env = input_env(g, inputs)?;
    let last_use = last_uses(g);
    for i in 0..g.order.len() {
        step(g, &mut env, i, &last_use, wanted, fast)?;
    }
    wanted
        .iter()
        .map(|&v| {
            arg(g, &env, v).cloned().ok_or_else(|| EvalError {
                node: g.values[v].name.clone(),
                msg: "not computed".into(),
            })
        })
        .collect()
}

/// The graph's inputs from `inputs` (by name), checked against their declared types.
pub(crate) fn input_env(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
) -> Result<HashMap<Value, Tensor>, EvalError> {
    let mut env = HashMap::new();
    for &i in &g.inputs {
        let vd = &g.values[i];
        let t = inputs
            .get(&vd.name)
            .ok_or_else(|| EvalError { node: vd.name.clone(), msg: "input not supplied".into() })?;
        if t.ty() != vd.ty {
            return Err(EvalError {
                node: vd.name.clone(),
                msg: format!("input is {}, the graph declares {}", t.ty(), vd.ty),
            });
        }
        env.insert(i, t.clone());
    }
    Ok(env)
}

/// The position in `g.order` of each value's last use as an argument (so an evaluation can
/// free it there); depends only on the graph's structure.
pub(crate) fn last_uses(g: &Graph) -> HashMap<Value, usize> {
    let mut last_use = HashMap::new();
    for (i, &n) in g.order.iter().enumerate() {
        for &a in &g.nodes[n].args {
            last_use.insert(a, i);
        }
    }
    last_use
}

/// Value `v`: a constant or weight of `g`, or what `env` holds.
pub(crate) fn arg<'a>(
    g: &'a Graph,
    env: &'a HashMap<Value, Tensor>,
    v: Value,
) -> Option<&'a Tensor> {
    match &g.values[v].def {
        ValueDef::Const(t) | ValueDef::Weight(t) => Some(t.as_ref()),
        _ => env.get(&v),
    }
}

/// Evaluates the node at position `i` of `g.order` into `env`, then frees the arguments
/// used there for the last time, except those in `keep`. `fast`: f32 matrix products.
pub(crate) fn step(
    g: &Graph,
    env: &mut HashMap<Value, Tensor>,
    i: usize,
    last_use: &HashMap<Value, usize>,
    keep: &[Value],
    fast: bool,
) -> Result<(), EvalError> {
    let nd = &g.nodes[g.order[i]];
    let out = {
        let mut args = Vec::with_capacity(nd.args.len());
        for &a in &nd.args {
            args.push(arg(g, env, a).ok_or_else(|| EvalError {
                node: nd.name.clone(),
                msg: format!("argument `{}` is not available", g.values[a].name),
            })?);
        }
        let ty = &g.values[nd.result].ty;
        let quick = match nd.op {
            Op::MatMul if fast => fast::matmul_f32(args[0], args[1], ty),
            _ => None,
        };
        match quick {
            Some(t) => t,
            None => eval_op(&nd.op, &args, ty)
                .map_err(|msg| EvalError { node: nd.name.clone(), msg })?,
        }
    };
    env.insert(nd.result, out);
    for &a in &nd.args {
        if last_use.get(&a) == Some(&i) && !keep.contains(&a) {
            env.remove(&a);
        }
    }
    Ok(())
}
