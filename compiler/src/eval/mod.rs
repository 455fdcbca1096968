//! The plaintext reference evaluator: runs an IR graph on tensors.
//!
//! Storage follows the IR (`f32` for f32/f16/bf16, `f64`, `i64` for every integer type, `bool`);
//! matrix products, reductions, softmax and layer norm accumulate in f64. Integer results wrap
//! to their type's width; f16/bf16 results round to their format. This is the ground truth
//! every two-party result is compared with, and the constant folder of the ONNX importer.

pub mod elementwise;
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
    let mut env: HashMap<Value, Tensor> = HashMap::new();
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
    // Free each intermediate after its last use.
    let mut last_use: HashMap<Value, usize> = HashMap::new();
    for (i, &n) in g.order.iter().enumerate() {
        for &a in &g.nodes[n].args {
            last_use.insert(a, i);
        }
    }
    for (i, &n) in g.order.iter().enumerate() {
        let nd = &g.nodes[n];
        let out = {
            let mut args = Vec::with_capacity(nd.args.len());
            for &a in &nd.args {
                args.push(match &g.values[a].def {
                    ValueDef::Const(t) | ValueDef::Weight(t) => t.as_ref(),
                    _ => env.get(&a).ok_or_else(|| EvalError {
                        node: nd.name.clone(),
                        msg: format!("argument `{}` is not available", g.values[a].name),
                    })?,
                });
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
            if last_use.get(&a) == Some(&i) && !wanted.contains(&a) {
                env.remove(&a);
            }
        }
    }
    wanted
        .iter()
        .map(|&v| match &g.values[v].def {
            ValueDef::Const(t) | ValueDef::Weight(t) => Ok((**t).clone()),
            _ => env.get(&v).cloned().ok_or_else(|| EvalError {
                node: g.values[v].name.clone(),
                msg: "not computed".into(),
            }),
        })
        .collect()
}
