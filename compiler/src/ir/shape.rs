//! Static shape and dtype inference: the result type of an operator from its argument types.

use super::dtype::{DType, TensorType};
use super::op::Op;

/// Numpy broadcasting of two shapes, or `None` when they are incompatible.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

fn shape_str(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
}

/// Why an operator does not accept its argument types: names the operator and the offending
/// types or attributes (the caller adds the node name).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ShapeError {
    /// Wrong number of arguments.
    #[error("`{op}` takes {want} arguments, got {got}")]
    Arity {
        /// Operator.
        op: &'static str,
        /// How many it takes (`2`, `2 to 3`).
        want: String,
        /// How many it got.
        got: usize,
    },
    /// Two arguments that must share a dtype do not.
    #[error("`{op}` needs arguments of one dtype, got {a} and {b}")]
    MixedDTypes {
        /// Operator.
        op: &'static str,
        /// One argument's dtype.
        a: DType,
        /// The other's.
        b: DType,
    },
    /// An argument of the wrong dtype (`what` says which and what was expected).
    #[error("{what}, got {got}")]
    DType {
        /// Operator.
        op: &'static str,
        /// What was expected, e.g. "`not` needs a bool argument".
        what: String,
        /// The dtype it got.
        got: DType,
    },
    /// Argument shapes that do not broadcast together.
    #[error("`{op}` cannot broadcast shapes {}", list(shapes))]
    Broadcast {
        /// Operator.
        op: &'static str,
        /// The argument shapes.
        shapes: Vec<Vec<usize>>,
    },
    /// Reduction axes out of order or repeated.
    #[error("`{op}` axes must be sorted and distinct, got {axes:?}")]
    UnsortedAxes {
        /// Operator.
        op: &'static str,
        /// The axes.
        axes: Vec<usize>,
    },
    /// An axis past the argument's rank.
    #[error("{} axis {axis} is out of range for rank {rank}", axis_op(op, *quoted))]
    AxisOutOfRange {
        /// Operator.
        op: &'static str,
        /// Whether the message quotes the operator (`` `reduce_sum` axis `` or `softmax axis`).
        quoted: bool,
        /// The axis.
        axis: usize,
        /// The argument's rank.
        rank: usize,
    },
    /// A matrix product of arguments whose shapes do not fit (`what` says how).
    #[error("matmul {what}: {} · {}", shape_str(a), shape_str(b))]
    MatMul {
        /// What does not fit ("inner dimensions differ", ...).
        what: &'static str,
        /// The left shape.
        a: Vec<usize>,
        /// The right shape.
        b: Vec<usize>,
    },
    /// Any other argument or attribute the operator does not accept.
    #[error("{msg}")]
    Invalid {
        /// Operator.
        op: &'static str,
        /// What is wrong, with the offending shapes or attributes.
        msg: String,
    },
}

impl ShapeError {
    /// The operator's name.
    pub fn op(&self) -> &'static str {
        match self {
            ShapeError::Arity { op, .. }
            | ShapeError::MixedDTypes { op, .. }
            | ShapeError::DType { op, .. }
            | ShapeError::Broadcast { op, .. }
            | ShapeError::UnsortedAxes { op, .. }
            | ShapeError::AxisOutOfRange { op, .. }
            | ShapeError::Invalid { op, .. } => op,
            ShapeError::MatMul { .. } => "matmul",
        }
    }
}

fn invalid(op: &Op, msg: impl Into<String>) -> ShapeError {
    ShapeError::Invalid { op: op.name(), msg: msg.into() }
}

fn wrong_dtype(op: &Op, what: impl Into<String>, got: DType) -> ShapeError {
    ShapeError::DType { op: op.name(), what: what.into(), got }
}

fn axis_op(op: &str, quoted: bool) -> String {
    if quoted {
        format!("`{op}`")
    } else {
        op.to_string()
    }
}

fn list(shapes: &[Vec<usize>]) -> String {
    let s: Vec<String> = shapes.iter().map(|s| shape_str(s)).collect();
    match s.as_slice() {
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        [] => String::new(),
    }
}

fn out_of_range(op: &Op, axis: usize, rank: usize) -> ShapeError {
    ShapeError::AxisOutOfRange { op: op.name(), quoted: false, axis, rank }
}

fn arity(op: &Op, args: &[&TensorType], lo: usize, hi: usize) -> Result<(), ShapeError> {
    if args.len() < lo || args.len() > hi {
        let want = if lo == hi { lo.to_string() } else { format!("{lo} to {hi}") };
        return Err(ShapeError::Arity { op: op.name(), want, got: args.len() });
    }
    Ok(())
}

fn same_dtype(op: &Op, a: &TensorType, b: &TensorType) -> Result<(), ShapeError> {
    if a.dtype != b.dtype {
        return Err(ShapeError::MixedDTypes { op: op.name(), a: a.dtype, b: b.dtype });
    }
    Ok(())
}

fn check_axes(op: &Op, axes: &[usize], rank: usize) -> Result<(), ShapeError> {
    for w in axes.windows(2) {
        if w[0] >= w[1] {
            return Err(ShapeError::UnsortedAxes { op: op.name(), axes: axes.to_vec() });
        }
    }
    if let Some(&axis) = axes.iter().find(|&&a| a >= rank) {
        return Err(ShapeError::AxisOutOfRange { op: op.name(), quoted: true, axis, rank });
    }
    Ok(())
}

/// The result type of `op` applied to arguments of the given types, or what was expected (the
/// caller adds the node name).
pub fn infer(op: &Op, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    if op.is_binary_elementwise() {
        arity(op, args, 2, 2)?;
        // ONNX Pow takes an exponent of any numeric type; the result has the base's type.
        if !matches!(op, Op::Pow) {
            same_dtype(op, args[0], args[1])?;
        }
        let shape =
            broadcast(&args[0].shape, &args[1].shape).ok_or_else(|| ShapeError::Broadcast {
                op: op.name(),
                shapes: vec![args[0].shape.clone(), args[1].shape.clone()],
            })?;
        if matches!(op, Op::And | Op::Or | Op::Xor) && args[0].dtype != DType::Bool {
            let what = format!("`{}` needs bool arguments", op.name());
            return Err(wrong_dtype(op, what, args[0].dtype));
        }
        let dtype = if op.returns_bool() { DType::Bool } else { args[0].dtype };
        return Ok(TensorType::new(dtype, shape));
    }
    match op {
        Op::Not | Op::Neg | Op::Abs | Op::Relu | Op::Clip { .. } | Op::Bounded { .. } => {
            arity(op, args, 1, 1)?;
            if matches!(op, Op::Not) && args[0].dtype != DType::Bool {
                return Err(wrong_dtype(op, "`not` needs a bool argument", args[0].dtype));
            }
            Ok(args[0].clone())
        }
        Op::Sqrt
        | Op::Reciprocal
        | Op::Exp
        | Op::Log
        | Op::Erf
        | Op::Tanh
        | Op::Sigmoid
        | Op::Gelu { .. }
        | Op::Smu1 { .. }
        | Op::Drelu { .. }
        | Op::Softmax { .. } => {
            arity(op, args, 1, 1)?;
            if !args[0].dtype.is_float() && !matches!(op, Op::Drelu { .. }) {
                let what = format!("`{}` needs a floating-point argument", op.name());
                return Err(wrong_dtype(op, what, args[0].dtype));
            }
            if let Op::Softmax { axis } = op {
                if *axis >= args[0].rank() {
                    return Err(out_of_range(op, *axis, args[0].rank()));
                }
            }
            Ok(args[0].clone())
        }
        Op::IsNaN | Op::IsInf { .. } => {
            arity(op, args, 1, 1)?;
            Ok(TensorType::new(DType::Bool, args[0].shape.clone()))
        }
        Op::Cast { to } => {
            arity(op, args, 1, 1)?;
            Ok(TensorType::new(*to, args[0].shape.clone()))
        }
        Op::Where => {
            arity(op, args, 3, 3)?;
            if args[0].dtype != DType::Bool {
                return Err(wrong_dtype(op, "`where` condition must be bool", args[0].dtype));
            }
            same_dtype(op, args[1], args[2])?;
            let s = broadcast(&args[0].shape, &args[1].shape)
                .and_then(|s| broadcast(&s, &args[2].shape))
                .ok_or_else(|| ShapeError::Broadcast {
                    op: op.name(),
                    shapes: args.iter().map(|a| a.shape.clone()).collect(),
                })?;
            Ok(TensorType::new(args[1].dtype, s))
        }
        Op::MatMul => {
            arity(op, args, 2, 2)?;
            same_dtype(op, args[0], args[1])?;
            matmul_shape(&args[0].shape, &args[1].shape).map(|s| TensorType::new(args[0].dtype, s))
        }
        Op::ReduceSum { axes, keepdims }
        | Op::ReduceMean { axes, keepdims }
        | Op::ReduceMax { axes, keepdims } => {
            arity(op, args, 1, 1)?;
            check_axes(op, axes, args[0].rank())?;
            let mut shape = Vec::new();
            for (i, &d) in args[0].shape.iter().enumerate() {
                if axes.contains(&i) {
                    if *keepdims {
                        shape.push(1);
                    }
                } else {
                    shape.push(d);
                }
            }
            Ok(TensorType::new(args[0].dtype, shape))
        }
        Op::ArgMax { axis } => {
            arity(op, args, 1, 1)?;
            check_axes(op, &[*axis], args[0].rank())?;
            if args[0].shape[*axis] == 0 {
                return Err(invalid(op, "arg_max over an empty axis"));
            }
            let mut shape = args[0].shape.clone();
            shape[*axis] = 1;
            Ok(TensorType::new(DType::I64, shape))
        }
        Op::PruneKeep { axis, .. } => {
            arity(op, args, 1, 1)?;
            check_axes(op, &[*axis], args[0].rank())?;
            Ok(TensorType::new(DType::F32, vec![args[0].shape[*axis]]))
        }
        Op::Compact { axis } => {
            arity(op, args, 2, 2)?;
            check_axes(op, &[*axis], args[0].rank())?;
            if args[1].shape != [args[0].shape[*axis]] {
                let msg =
                    format!("keep {:?} does not match axis {axis} of {}", args[1].shape, args[0]);
                return Err(invalid(op, msg));
            }
            Ok(args[0].clone())
        }
        Op::Shrink => {
            arity(op, args, 2, 2)?;
            Ok(args[0].clone())
        }
        Op::KeepTopK { axis, k } => {
            arity(op, args, 1, 1)?;
            check_axes(op, &[*axis], args[0].rank())?;
            if *k == 0 || args[0].shape[*axis] == 0 {
                return Err(invalid(op, "keep_top_k needs k >= 1 and a non-empty axis"));
            }
            Ok(args[0].clone())
        }
        Op::LayerNorm { axis, .. } => {
            arity(op, args, 2, 3)?;
            let x = args[0];
            if *axis >= x.rank() {
                return Err(out_of_range(op, *axis, x.rank()));
            }
            let norm = &x.shape[*axis..];
            for p in &args[1..] {
                same_dtype(op, x, p)?;
                if broadcast(norm, &p.shape).as_deref() != Some(norm) {
                    return Err(invalid(
                        op,
                        format!(
                            "layer_norm scale/bias of shape {} does not broadcast to the normalised shape {}",
                            shape_str(&p.shape),
                            shape_str(norm)
                        ),
                    ));
                }
            }
            Ok(x.clone())
        }
        Op::Reshape { shape } => {
            arity(op, args, 1, 1)?;
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let Some(n) = n else {
                let msg = format!("reshape to {}: the element count overflows", shape_str(shape));
                return Err(invalid(op, msg));
            };
            if n != args[0].numel() {
                return Err(invalid(
                    op,
                    format!(
                        "cannot reshape {} ({} elements) to {} ({n} elements)",
                        shape_str(&args[0].shape),
                        args[0].numel(),
                        shape_str(shape)
                    ),
                ));
            }
            Ok(TensorType::new(args[0].dtype, shape.clone()))
        }
        Op::Transpose { perm } => {
            arity(op, args, 1, 1)?;
            let r = args[0].rank();
            let mut seen = vec![false; r];
            if perm.len() != r
                || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
            {
                let msg = format!("transpose perm {perm:?} is not a permutation of rank {r}");
                return Err(invalid(op, msg));
            }
            Ok(TensorType::new(
                args[0].dtype,
                perm.iter().map(|&p| args[0].shape[p]).collect::<Vec<_>>(),
            ))
        }
        Op::Slice { start, step, len } => {
            arity(op, args, 1, 1)?;
            let s = &args[0].shape;
            if start.len() != s.len() || step.len() != s.len() || len.len() != s.len() {
                let msg =
                    format!("slice attributes must have one entry per dim (rank {})", s.len());
                return Err(invalid(op, msg));
            }
            for d in 0..s.len() {
                if len[d] == 0 {
                    continue;
                }
                // In i128: a step or length from a file must not wrap the last index.
                let last = start[d] as i128 + (len[d] as i128 - 1) * step[d] as i128;
                if step[d] == 0 || start[d] >= s[d] || last < 0 || last >= s[d] as i128 {
                    return Err(invalid(
                        op,
                        format!(
                            "slice of dim {d} (size {}) with start {} step {} len {} reads out of range",
                            s[d], start[d], step[d], len[d]
                        ),
                    ));
                }
            }
            Ok(TensorType::new(args[0].dtype, len.clone()))
        }
        Op::Concat { axis } => {
            if args.is_empty() {
                return Err(invalid(op, "`concat` needs at least one argument"));
            }
            let first = args[0];
            if *axis >= first.rank() {
                return Err(out_of_range(op, *axis, first.rank()));
            }
            let mut shape = first.shape.clone();
            shape[*axis] = 0;
            for a in args {
                same_dtype(op, first, a)?;
                let compatible = a.rank() == first.rank()
                    && (0..a.rank()).all(|d| d == *axis || a.shape[d] == first.shape[d]);
                if !compatible {
                    return Err(invalid(
                        op,
                        format!(
                            "concat on axis {axis} of shapes {} and {}",
                            shape_str(&first.shape),
                            shape_str(&a.shape)
                        ),
                    ));
                }
                shape[*axis] = shape[*axis].checked_add(a.shape[*axis]).ok_or_else(|| {
                    invalid(op, format!("concat on axis {axis}: the dimension overflows"))
                })?;
            }
            Ok(TensorType::new(first.dtype, shape))
        }
        Op::Expand { shape } => {
            arity(op, args, 1, 1)?;
            if broadcast(&args[0].shape, shape).as_deref() != Some(shape) {
                let msg =
                    format!("cannot expand {} to {}", shape_str(&args[0].shape), shape_str(shape));
                return Err(invalid(op, msg));
            }
            Ok(TensorType::new(args[0].dtype, shape.clone()))
        }
        Op::Gather { axis } => {
            arity(op, args, 2, 2)?;
            let (data, idx) = (args[0], args[1]);
            if !idx.dtype.is_int() {
                return Err(wrong_dtype(op, "gather indices must be integers", idx.dtype));
            }
            if *axis >= data.rank() {
                return Err(out_of_range(op, *axis, data.rank()));
            }
            let mut shape = data.shape[..*axis].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&data.shape[axis + 1..]);
            Ok(TensorType::new(data.dtype, shape))
        }
        Op::GatherND { batch_dims } => {
            arity(op, args, 2, 2)?;
            let (data, idx) = (args[0], args[1]);
            let b = *batch_dims;
            if !idx.dtype.is_int() {
                return Err(wrong_dtype(op, "gather_nd indices must be integers", idx.dtype));
            }
            let q = idx.rank();
            if q == 0 || b >= q || b >= data.rank() || data.shape[..b] != idx.shape[..b] {
                return Err(invalid(
                    op,
                    format!(
                        "gather_nd with batch_dims {b} on data {} and indices {}",
                        shape_str(&data.shape),
                        shape_str(&idx.shape)
                    ),
                ));
            }
            let k = idx.shape[q - 1];
            if k > data.rank() - b {
                return Err(invalid(
                    op,
                    format!(
                        "gather_nd index tuples of length {k} exceed data rank {} (batch_dims {b})",
                        data.rank()
                    ),
                ));
            }
            let mut shape = idx.shape[..q - 1].to_vec();
            shape.extend_from_slice(&data.shape[b + k..]);
            Ok(TensorType::new(data.dtype, shape))
        }
        _ => unreachable!("elementwise binary operators are handled above"),
    }
}

/// Numpy `matmul` result shape.
pub fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let err = |what| ShapeError::MatMul { what, a: a.to_vec(), b: b.to_vec() };
    if a.is_empty() || b.is_empty() {
        return Err(ShapeError::Invalid {
            op: "matmul",
            msg: "matmul arguments must have rank ≥ 1".into(),
        });
    }
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k1) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k1 != k2 {
        return Err(err("inner dimensions differ"));
    }
    let batch = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])
        .ok_or_else(|| err("batch dimensions do not broadcast"))?;
    let mut out = batch;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize]) -> TensorType {
        TensorType::new(DType::F32, shape.to_vec())
    }

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast(&[2], &[3]), None);
    }

    #[test]
    fn matmul_shapes() {
        assert_eq!(matmul_shape(&[1, 2, 128, 64], &[1, 2, 64, 128]).unwrap(), vec![1, 2, 128, 128]);
        assert_eq!(matmul_shape(&[128, 768], &[768]).unwrap(), vec![128]);
        assert_eq!(matmul_shape(&[768], &[768, 3]).unwrap(), vec![3]);
        assert!(matmul_shape(&[2, 3], &[4, 5]).is_err());
    }

    #[test]
    fn gather_nd_shape() {
        let data = t(&[2, 3, 4]);
        let idx = TensorType::new(DType::I64, vec![5, 2]);
        assert_eq!(
            infer(&Op::GatherND { batch_dims: 0 }, &[&data, &idx]).unwrap().shape,
            vec![5, 4]
        );
    }

    #[test]
    fn slice_bounds_are_checked() {
        let op = Op::Slice { start: vec![3], step: vec![-1], len: vec![4] };
        assert_eq!(infer(&op, &[&t(&[4])]).unwrap().shape, vec![4]);
        let bad = Op::Slice { start: vec![3], step: vec![1], len: vec![2] };
        assert!(infer(&bad, &[&t(&[4])]).is_err());
    }
}
