//! The closed set of IR operators.
//!
//! One enum, matched exhaustively by shape inference, the printer, the reference evaluator and
//! the backend, so adding an operator fails to compile until every stage says what it does.
//! High-level operators (`Softmax`, `LayerNorm`, `Gelu`) stay whole after import so the dump
//! reads like the model; passes lower them later.

use super::dtype::DType;
use std::fmt::{self, Write as _};

/// Which formula a GELU uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum GeluApprox {
    /// `x/2 · (1 + erf(x/√2))` (PyTorch `gelu`, ONNX `Gelu` approximate="none").
    Erf,
    /// `x/2 · (1 + tanh(√(2/π)·(x + 0.044715x³)))` (PyTorch `gelu_new`, approximate="tanh").
    Tanh,
}

/// An IR operator with its static attributes. Arguments are IR values held by the node.
///
/// Elementwise binary operators broadcast their two arguments numpy-style. Axes stored in
/// attributes are normalised (non-negative, in range) at construction.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (integer division truncates toward zero, as ONNX).
    Div,
    /// `a ^ b`.
    Pow,
    /// Elementwise maximum of two arguments.
    Max,
    /// Elementwise minimum of two arguments.
    Min,
    /// `a == b` → bool.
    Equal,
    /// `a < b` → bool.
    Less,
    /// `a <= b` → bool.
    LessOrEqual,
    /// `a > b` → bool.
    Greater,
    /// `a >= b` → bool.
    GreaterOrEqual,
    /// Logical and of bools.
    And,
    /// Logical or of bools.
    Or,
    /// Logical xor of bools.
    Xor,
    /// Logical not.
    Not,
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `√x`.
    Sqrt,
    /// `1/x`.
    Reciprocal,
    /// `eˣ`.
    Exp,
    /// Natural logarithm.
    Log,
    /// Gauss error function.
    Erf,
    /// Hyperbolic tangent.
    Tanh,
    /// `1/(1+e⁻ˣ)`.
    Sigmoid,
    /// `max(x, 0)`.
    Relu,
    /// True where x is NaN.
    IsNaN,
    /// True where x is infinite (of the signs asked for: ONNX `IsInf`).
    IsInf {
        /// Detect −∞.
        negative: bool,
        /// Detect +∞.
        positive: bool,
    },
    /// Conversion to another element type (ONNX `Cast` semantics).
    Cast {
        /// Target element type.
        to: DType,
    },
    /// Clamp to `[min, max]` (bounds are constants; ±inf when absent).
    Clip {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
    /// The identity, with the promise that `|x| ≤ abs` wherever the result matters: values
    /// outside may come back as anything (a caller that discards them, e.g. by a selection,
    /// may still pass them). The backend opens such values in a narrower ring.
    Bounded {
        /// The bound on `|x|`.
        abs: f64,
    },
    /// `cond ? a : b`, broadcasting all three.
    Where,
    /// Matrix product with numpy `matmul` semantics (batched, broadcasting batch dims).
    MatMul,
    /// Sum over axes.
    ReduceSum {
        /// Reduced axes, sorted.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// Mean over axes.
    ReduceMean {
        /// Reduced axes, sorted.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// Maximum over axes.
    ReduceMax {
        /// Reduced axes, sorted.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// Index of the first maximum along one axis (ONNX `ArgMax`, keepdims, first index), i64.
    ArgMax {
        /// The searched axis.
        axis: usize,
    },
    /// Top-k filtering along one axis: entries below the `k`-th largest are lowered by
    /// [`TOP_K_DROP`] (entries equal to it are kept), so an argmax, even after adding sampling
    /// noise smaller than that, picks among the `k` largest.
    KeepTopK {
        /// The filtered axis.
        axis: usize,
        /// How many to keep.
        k: usize,
    },
    /// Token pruning's rule, on attention probabilities (arg `probs`, keys along `axis`): `1`
    /// for each key token whose mean attention received (averaged over every other axis) is
    /// at least `theta`, and for the first `protect` tokens; else `0`. f32, shape `[n]`.
    PruneKeep {
        /// The key axis of `probs`.
        axis: usize,
        /// The threshold on the mean attention received.
        theta: f64,
        /// Leading tokens never pruned (CLS).
        protect: usize,
    },
    /// Args `x, keep`: the slices of `x` along `axis` whose `keep` is 1 moved to the front in
    /// their order, zeros after.
    Compact {
        /// The token axis of `x`.
        axis: usize,
    },
    /// Args `x, keep`: `x`, after which the model continues on the `Σ keep` first tokens (the
    /// count is revealed; the nodes after run at that sequence length).
    Shrink,
    /// Softmax along one axis.
    Softmax {
        /// The normalised axis.
        axis: usize,
    },
    /// Layer normalisation over the axes from `axis` to the last; args `x, scale[, bias]`.
    LayerNorm {
        /// First normalised axis.
        axis: usize,
        /// Added to the variance.
        eps: f32,
    },
    /// GELU activation.
    Gelu {
        /// Erf form or tanh form.
        approx: GeluApprox,
    },
    /// SMU-1 (Biswas et al.): `((1+α)x + sqrt(((1−α)x)² + μ²)) / 2`.
    Smu1 {
        /// α.
        alpha: f32,
        /// μ.
        mu: f32,
    },
    /// Same data, new static shape.
    Reshape {
        /// Output shape.
        shape: Vec<usize>,
    },
    /// Permute dimensions: output dim `i` is input dim `perm[i]`.
    Transpose {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// Strided slice: output element `i < len[d]` along dim `d` is input element
    /// `start[d] + i·step[d]`; one entry per input dim.
    Slice {
        /// First index per dim (in range whenever `len[d] > 0`).
        start: Vec<usize>,
        /// Step per dim (non-zero, may be negative).
        step: Vec<i64>,
        /// Number of elements taken per dim.
        len: Vec<usize>,
    },
    /// Concatenation of all arguments along one axis.
    Concat {
        /// The normalised axis.
        axis: usize,
    },
    /// Broadcast to a larger static shape (ONNX `Expand`).
    Expand {
        /// Output shape.
        shape: Vec<usize>,
    },
    /// `data.take(indices, axis)`; args `data, indices` (negative indices count from the end).
    Gather {
        /// The normalised axis of `data`.
        axis: usize,
    },
    /// ONNX `GatherND`; args `data, indices`.
    GatherND {
        /// Number of leading batch dims shared by data and indices.
        batch_dims: usize,
    },
    /// MPC primitive: `1` where `x >= 0`, else `0`, in the dtype of `x`. With `slack > 0` the
    /// two-party comparison may misjudge `x` within `slack` of 0 (for a caller whose two
    /// alternatives agree there), which lets it read fewer bits in wider digits.
    Drelu {
        /// Half-width of the band around 0 where the result may be either (0: exact to the
        /// comparison's default resolution).
        slack: f64,
    },
}

/// How much [`Op::KeepTopK`] lowers the entries it drops (logit units).
pub const TOP_K_DROP: f64 = 1024.0;

impl Op {
    /// The operator's name as printed in dumps (snake_case).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::Pow => "pow",
            Op::Max => "max",
            Op::Min => "min",
            Op::Equal => "equal",
            Op::Less => "less",
            Op::LessOrEqual => "less_or_equal",
            Op::Greater => "greater",
            Op::GreaterOrEqual => "greater_or_equal",
            Op::And => "and",
            Op::Or => "or",
            Op::Xor => "xor",
            Op::Not => "not",
            Op::Neg => "neg",
            Op::Abs => "abs",
            Op::Sqrt => "sqrt",
            Op::Reciprocal => "reciprocal",
            Op::Exp => "exp",
            Op::Log => "log",
            Op::Erf => "erf",
            Op::Tanh => "tanh",
            Op::Sigmoid => "sigmoid",
            Op::Relu => "relu",
            Op::IsNaN => "is_nan",
            Op::IsInf { .. } => "is_inf",
            Op::Cast { .. } => "cast",
            Op::Clip { .. } => "clip",
            Op::Bounded { .. } => "bounded",
            Op::Where => "where",
            Op::MatMul => "matmul",
            Op::ReduceSum { .. } => "reduce_sum",
            Op::ReduceMean { .. } => "reduce_mean",
            Op::ReduceMax { .. } => "reduce_max",
            Op::ArgMax { .. } => "arg_max",
            Op::KeepTopK { .. } => "keep_top_k",
            Op::PruneKeep { .. } => "prune_keep",
            Op::Compact { .. } => "compact",
            Op::Shrink => "shrink",
            Op::Softmax { .. } => "softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Gelu { .. } => "gelu",
            Op::Smu1 { .. } => "smu1",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Expand { .. } => "expand",
            Op::Gather { .. } => "gather",
            Op::GatherND { .. } => "gather_nd",
            Op::Drelu { .. } => "drelu",
        }
    }

    /// True for elementwise operators of two broadcast arguments.
    pub fn is_binary_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Add
                | Op::Sub
                | Op::Mul
                | Op::Div
                | Op::Pow
                | Op::Max
                | Op::Min
                | Op::Equal
                | Op::Less
                | Op::LessOrEqual
                | Op::Greater
                | Op::GreaterOrEqual
                | Op::And
                | Op::Or
                | Op::Xor
        )
    }

    /// True for elementwise operators of one argument.
    pub fn is_unary_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Not
                | Op::Neg
                | Op::Abs
                | Op::Sqrt
                | Op::Reciprocal
                | Op::Exp
                | Op::Log
                | Op::Erf
                | Op::Tanh
                | Op::Sigmoid
                | Op::Relu
                | Op::IsNaN
                | Op::IsInf { .. }
                | Op::Cast { .. }
                | Op::Clip { .. }
                | Op::Bounded { .. }
                | Op::Gelu { .. }
                | Op::Smu1 { .. }
                | Op::Drelu { .. }
        )
    }

    /// True for comparisons and logical operators, whose result is bool.
    pub fn returns_bool(&self) -> bool {
        matches!(
            self,
            Op::Equal
                | Op::Less
                | Op::LessOrEqual
                | Op::Greater
                | Op::GreaterOrEqual
                | Op::And
                | Op::Or
                | Op::Xor
                | Op::Not
                | Op::IsNaN
                | Op::IsInf { .. }
        )
    }

    /// Only moves or copies data (no arithmetic): free in every execution model.
    pub fn is_data_movement(&self) -> bool {
        matches!(
            self,
            Op::Reshape { .. }
                | Op::Transpose { .. }
                | Op::Slice { .. }
                | Op::Concat { .. }
                | Op::Expand { .. }
        )
    }

    /// The attributes in printer syntax, e.g. `{axis=2}`; empty when there are none.
    pub fn attrs(&self) -> String {
        let mut s = String::new();
        let list = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        let ilist = |v: &[i64]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        match self {
            Op::Cast { to } => write!(s, "{{to={to}}}").unwrap(),
            Op::IsInf { negative, positive } => {
                write!(s, "{{negative={negative}, positive={positive}}}").unwrap()
            }
            Op::Clip { min, max } => {
                write!(s, "{{min={}, max={}}}", fmt_f64(*min), fmt_f64(*max)).unwrap()
            }
            Op::Bounded { abs } => write!(s, "{{abs={}}}", fmt_f64(*abs)).unwrap(),
            Op::Drelu { slack } if *slack > 0.0 => {
                write!(s, "{{slack={}}}", fmt_f64(*slack)).unwrap()
            }
            Op::ReduceSum { axes, keepdims }
            | Op::ReduceMean { axes, keepdims }
            | Op::ReduceMax { axes, keepdims } => {
                write!(s, "{{axes=[{}], keepdims={keepdims}}}", list(axes)).unwrap()
            }
            Op::Softmax { axis }
            | Op::Concat { axis }
            | Op::Gather { axis }
            | Op::Compact { axis }
            | Op::ArgMax { axis } => write!(s, "{{axis={axis}}}").unwrap(),
            Op::PruneKeep { axis, theta, protect } => {
                write!(s, "{{axis={axis}, theta={}, protect={protect}}}", fmt_f64(*theta)).unwrap()
            }
            Op::KeepTopK { axis, k } => write!(s, "{{axis={axis}, k={k}}}").unwrap(),
            Op::LayerNorm { axis, eps } => {
                write!(s, "{{axis={axis}, eps={}}}", fmt_f64(*eps as f64)).unwrap()
            }
            Op::Gelu { approx } => {
                let a = match approx {
                    GeluApprox::Erf => "erf",
                    GeluApprox::Tanh => "tanh",
                };
                write!(s, "{{approx={a}}}").unwrap()
            }
            Op::Smu1 { alpha, mu } => {
                write!(s, "{{alpha={}, mu={}}}", fmt_f64(*alpha as f64), fmt_f64(*mu as f64))
                    .unwrap()
            }
            Op::Reshape { shape } | Op::Expand { shape } => {
                write!(s, "{{shape=[{}]}}", list(shape)).unwrap()
            }
            Op::Transpose { perm } => write!(s, "{{perm=[{}]}}", list(perm)).unwrap(),
            Op::Slice { start, step, len } => write!(
                s,
                "{{start=[{}], step=[{}], len=[{}]}}",
                list(start),
                ilist(step),
                list(len)
            )
            .unwrap(),
            Op::GatherND { batch_dims } => write!(s, "{{batch_dims={batch_dims}}}").unwrap(),
            _ => {}
        }
        s
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name(), self.attrs())
    }
}

/// Formats a float compactly and deterministically (shortest round-trip form).
pub fn fmt_f64(x: f64) -> String {
    if x == f64::INFINITY {
        "inf".into()
    } else if x == f64::NEG_INFINITY {
        "-inf".into()
    } else if x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.1}")
    } else {
        let f = x as f32;
        if f as f64 == x {
            format!("{f:e}")
        } else {
            format!("{x:e}")
        }
    }
}
