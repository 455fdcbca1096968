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
pub use kernels::OpError;

use crate::ir::{Graph, Op, Tensor, TensorType, Value, ValueDef};
use std::collections::HashMap;

/// Why evaluation failed: always names the node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("evaluating `{node}`: {kind}")]
pub struct EvalError {
    /// Node name (or the value, for missing inputs).
    pub node: String,
    /// What went wrong.
    pub kind: EvalFailure,
}

/// What went wrong evaluating a node or value (the reference evaluator or the fixed-point
/// simulator).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalFailure {
    /// A wanted value was never computed.
    #[error("not computed")]
    NotComputed,
    /// A graph input has no tensor.
    #[error("input not supplied")]
    NotSupplied,
    /// A graph input's tensor is not of its declared type.
    #[error("input is {got}, the graph declares {want}")]
    InputType {
        /// The tensor's type.
        got: TensorType,
        /// The declared type.
        want: TensorType,
    },
    /// A node's argument has not been computed (or was freed).
    #[error("argument `{0}` is not available")]
    Unavailable(String),
    /// The operator's kernel failed.
    #[error(transparent)]
    Op(#[from] OpError),
    /// A value too large for the fixed-point encoding (fixed-point simulator).
    #[error(
        "`{value}` holds {x}, which does not fit fixed point with {frac_bits} fractional bits"
    )]
    Overflow {
        /// The value being encoded.
        value: String,
        /// The entry that does not fit.
        x: f64,
        /// Fractional bits.
        frac_bits: u8,
    },
    /// A division by secret data (fixed-point simulator).
    #[error(
        "division by a secret value has no ring form: rewrite it with the stdlib reciprocal first"
    )]
    SecretDivisor,
    /// A form the fixed-point simulator does not take ("a constant left operand of matmul").
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// An operator without a ring form on secret data (fixed-point simulator).
    #[error(
        "`{0}` has no fixed-point form on secret data: lower it to a stdlib approximation first"
    )]
    NoRingForm(&'static str),
}

impl EvalError {
    /// The error `kind` at node (or value) `node`.
    pub fn new(node: &str, kind: impl Into<EvalFailure>) -> EvalError {
        EvalError { node: node.to_string(), kind: kind.into() }
    }
}

/// A rank-0 tensor of `dtype` holding `v` (rounded or truncated to the type).
pub fn scalar_of(dtype: crate::ir::DType, v: f64) -> Tensor {
    elementwise::from_f64s(dtype, vec![], vec![v])
}

/// Evaluates one operator on argument tensors (shapes already checked by the IR).
pub fn eval_op(
    op: &Op,
    args: &[&Tensor],
    out_ty: &crate::ir::TensorType,
) -> Result<Tensor, OpError> {
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
            arg(g, &env, v)
                .cloned()
                .ok_or_else(|| EvalError::new(&g.values[v].name, EvalFailure::NotComputed))
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
            .ok_or_else(|| EvalError::new(&vd.name, EvalFailure::NotSupplied))?;
        if t.ty() != vd.ty {
            let kind = EvalFailure::InputType { got: t.ty(), want: vd.ty.clone() };
            return Err(EvalError::new(&vd.name, kind));
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
            args.push(arg(g, env, a).ok_or_else(|| {
                EvalError::new(&nd.name, EvalFailure::Unavailable(g.values[a].name.clone()))
            })?);
        }
        let ty = &g.values[nd.result].ty;
        let quick = match nd.op {
            Op::MatMul if fast => fast::matmul_f32(args[0], args[1], ty),
            _ => None,
        };
        match quick {
            Some(t) => t,
            None => eval_op(&nd.op, &args, ty).map_err(|e| EvalError::new(&nd.name, e))?,
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
