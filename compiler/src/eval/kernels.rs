//! One function per operator family.

use super::elementwise::{bcast_offsets, f64s, float_to_int, from_f64s, wrap};
use crate::ir::tensor::strides;
use crate::ir::{DType, Data, GeluApprox, Op, Tensor, TensorType};

type R = Result<Tensor, OpError>;

/// Why an operator could not be evaluated on its arguments (the caller adds the node name).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum OpError {
    /// An argument of the wrong dtype for the kernel.
    #[error("expected {want}, got {got}")]
    DType {
        /// What the kernel takes ("integers", "bools").
        want: &'static str,
        /// The argument's dtype.
        got: DType,
    },
    /// An arithmetic operator applied to booleans.
    #[error("`{op}` is not defined on bool")]
    Bool {
        /// Operator.
        op: &'static str,
    },
    /// An integer division by zero.
    #[error("integer division by zero")]
    DivisionByZero,
    /// `where` branches stored differently.
    #[error("`where` branches have different storage")]
    WhereStorage,
    /// Matrix-product batch dimensions that do not broadcast.
    #[error("matmul batch dims do not broadcast")]
    MatMulBatch,
    /// Gather indices that are not integers.
    #[error("indices must be integers, got {0}")]
    Indices(DType),
    /// An index past its axis.
    #[error("index {index} is out of range for {what} {axis} of size {size}")]
    Index {
        /// The index.
        index: i64,
        /// "axis" or "dimension".
        what: &'static str,
        /// The axis.
        axis: usize,
        /// Its size.
        size: i64,
    },
}

pub fn eval_op(op: &Op, a: &[&Tensor], ty: &TensorType) -> R {
    let out = &ty.shape;
    match op {
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min => arith(op, a[0], a[1], ty),
        Op::Pow => pow(a[0], a[1], ty),
        Op::Equal | Op::Less | Op::LessOrEqual | Op::Greater | Op::GreaterOrEqual => {
            compare(op, a[0], a[1], out)
        }
        Op::And | Op::Or | Op::Xor => logic(op, a[0], a[1], out),
        Op::Not => Ok(Tensor::bool(out.clone(), bools(a[0])?.iter().map(|&b| !b).collect())),
        Op::Neg | Op::Abs | Op::Relu => {
            if a[0].dtype.is_float() {
                let f: fn(f64) -> f64 = match op {
                    Op::Neg => |x| -x,
                    Op::Abs => f64::abs,
                    _ => |x| x.max(0.0),
                };
                Ok(from_f64s(ty.dtype, out.clone(), f64s(a[0]).into_iter().map(f).collect()))
            } else {
                let v = ints(a[0])?;
                let f: fn(i64) -> i64 = match op {
                    Op::Neg => |x| x.wrapping_neg(),
                    Op::Abs => |x| x.wrapping_abs(),
                    _ => |x| x.max(0),
                };
                Ok(int_tensor(ty.dtype, out.clone(), v.iter().map(|&x| f(x)).collect()))
            }
        }
        Op::Sqrt
        | Op::Reciprocal
        | Op::Exp
        | Op::Log
        | Op::Erf
        | Op::Tanh
        | Op::Sigmoid
        | Op::Gelu { .. }
        | Op::Smu1 { .. } => {
            let f = unary_fn(op);
            Ok(from_f64s(ty.dtype, out.clone(), f64s(a[0]).into_iter().map(f).collect()))
        }
        Op::Drelu { .. } => Ok(from_f64s(
            ty.dtype,
            out.clone(),
            f64s(a[0]).into_iter().map(|x| (x >= 0.0) as u8 as f64).collect(),
        )),
        Op::IsNaN => {
            Ok(Tensor::bool(out.clone(), f64s(a[0]).into_iter().map(f64::is_nan).collect()))
        }
        Op::IsInf { negative, positive } => Ok(Tensor::bool(
            out.clone(),
            f64s(a[0])
                .into_iter()
                .map(|x| (x == f64::INFINITY && *positive) || (x == f64::NEG_INFINITY && *negative))
                .collect(),
        )),
        Op::Cast { to } => cast(a[0], *to),
        Op::Bounded { .. } => Ok(a[0].clone()),
        Op::Clip { min, max } => {
            if a[0].dtype.is_float() {
                Ok(from_f64s(
                    ty.dtype,
                    out.clone(),
                    f64s(a[0])
                        .into_iter()
                        .map(|x| if x.is_nan() { x } else { x.max(*min).min(*max) })
                        .collect(),
                ))
            } else {
                let v = ints(a[0])?;
                let (lo, hi) = (clamp_bound(*min), clamp_bound(*max));
                Ok(int_tensor(
                    ty.dtype,
                    out.clone(),
                    v.iter()
                        .map(|&x| {
                            if ty.dtype == DType::U64 {
                                (x as u64).clamp(lo.max(0) as u64, hi as u64) as i64
                            } else {
                                x.clamp(lo, hi)
                            }
                        })
                        .collect(),
                ))
            }
        }
        Op::Where => where_(a[0], a[1], a[2], ty),
        Op::MatMul => matmul(a[0], a[1], ty),
        Op::ReduceSum { axes, .. } | Op::ReduceMean { axes, .. } | Op::ReduceMax { axes, .. } => {
            reduce(op, a[0], axes, ty)
        }
        Op::Softmax { axis } => softmax(a[0], *axis, ty),
        Op::ArgMax { axis } => arg_max(a[0], *axis, ty),
        Op::KeepTopK { axis, k } => keep_top_k(a[0], *axis, *k, ty),
        Op::PruneKeep { axis, theta, protect } => {
            let keep = crate::prune::rule(&f64s(a[0]), &a[0].shape, *axis, *theta, *protect);
            Ok(Tensor::f32(vec![keep.len()], keep.iter().map(|&k| k as u8 as f32).collect()))
        }
        Op::Compact { axis } => {
            let keep: Vec<bool> = f64s(a[1]).iter().map(|&k| k != 0.0).collect();
            Ok(crate::prune::compact(a[0], *axis, &keep, true))
        }
        Op::Shrink => Ok(a[0].clone()),
        Op::LayerNorm { axis, eps } => layer_norm(a[0], a[1], a.get(2).copied(), *axis, *eps, ty),
        Op::Reshape { .. } => {
            Ok(Tensor { dtype: a[0].dtype, shape: out.clone(), data: a[0].data.clone() })
        }
        Op::Transpose { perm } => {
            let st = strides(&a[0].shape);
            let src: Vec<i64> = perm.iter().map(|&p| st[p] as i64).collect();
            Ok(gather_strided(a[0], out, 0, &src))
        }
        Op::Slice { start, step, .. } => {
            let st = strides(&a[0].shape);
            let off: i64 = start.iter().zip(&st).map(|(&s, &t)| s as i64 * t as i64).sum();
            let src: Vec<i64> = step.iter().zip(&st).map(|(&s, &t)| s * t as i64).collect();
            Ok(gather_strided(a[0], out, off, &src))
        }
        Op::Expand { .. } => {
            let offs = bcast_offsets(&a[0].shape, out);
            Ok(take(a[0], out.clone(), &offs))
        }
        Op::Concat { axis } => concat(a, *axis, ty),
        Op::Gather { axis } => gather(a[0], a[1], *axis, ty),
        Op::GatherND { batch_dims } => gather_nd(a[0], a[1], *batch_dims, ty),
    }
}

fn clamp_bound(x: f64) -> i64 {
    if x == f64::INFINITY {
        i64::MAX
    } else if x == f64::NEG_INFINITY {
        i64::MIN
    } else {
        x as i64
    }
}

fn unary_fn(op: &Op) -> Box<dyn Fn(f64) -> f64> {
    match op {
        Op::Sqrt => Box::new(f64::sqrt),
        Op::Reciprocal => Box::new(|x| 1.0 / x),
        Op::Exp => Box::new(f64::exp),
        Op::Log => Box::new(f64::ln),
        Op::Erf => Box::new(veil_stdlib::erf),
        Op::Tanh => Box::new(f64::tanh),
        Op::Sigmoid => Box::new(|x| 1.0 / (1.0 + (-x).exp())),
        Op::Gelu { approx: GeluApprox::Erf } => {
            Box::new(|x| 0.5 * x * (1.0 + veil_stdlib::erf(x / std::f64::consts::SQRT_2)))
        }
        Op::Gelu { approx: GeluApprox::Tanh } => Box::new(|x| {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }),
        Op::Smu1 { alpha, mu } => {
            let (a, m) = (*alpha as f64, *mu as f64);
            Box::new(move |x| ((1.0 + a) * x + (((1.0 - a) * x).powi(2) + m * m).sqrt()) / 2.0)
        }
        _ => unreachable!("not a float unary operator"),
    }
}

fn ints(t: &Tensor) -> Result<&[i64], OpError> {
    t.as_i64().ok_or(OpError::DType { want: "integers", got: t.dtype })
}

fn bools(t: &Tensor) -> Result<Vec<bool>, OpError> {
    match &t.data {
        Data::Bool(v) => Ok(v.clone()),
        _ => Err(OpError::DType { want: "bools", got: t.dtype }),
    }
}

fn int_tensor(dtype: DType, shape: Vec<usize>, v: Vec<i64>) -> Tensor {
    Tensor { dtype, shape, data: Data::I64(v.into_iter().map(|x| wrap(dtype, x)).collect()) }
}

/// Pairs of broadcast elements of two tensors as f64 or i64.
fn pairs_f64(a: &Tensor, b: &Tensor, out: &[usize]) -> Vec<(f64, f64)> {
    let (av, bv) = (f64s(a), f64s(b));
    let (oa, ob) = (bcast_offsets(&a.shape, out), bcast_offsets(&b.shape, out));
    oa.iter().zip(&ob).map(|(&i, &j)| (av[i], bv[j])).collect()
}

fn pairs_i64(a: &Tensor, b: &Tensor, out: &[usize]) -> Result<Vec<(i64, i64)>, OpError> {
    let (av, bv) = (ints(a)?, ints(b)?);
    let (oa, ob) = (bcast_offsets(&a.shape, out), bcast_offsets(&b.shape, out));
    Ok(oa.iter().zip(&ob).map(|(&i, &j)| (av[i], bv[j])).collect())
}

fn arith(op: &Op, a: &Tensor, b: &Tensor, ty: &TensorType) -> R {
    if ty.dtype.is_float() {
        let f: fn(f64, f64) -> f64 = match op {
            Op::Add => |x, y| x + y,
            Op::Sub => |x, y| x - y,
            Op::Mul => |x, y| x * y,
            Op::Div => |x, y| x / y,
            Op::Max => |x, y| if x.is_nan() || y.is_nan() { f64::NAN } else { x.max(y) },
            _ => |x, y| if x.is_nan() || y.is_nan() { f64::NAN } else { x.min(y) },
        };
        return Ok(from_f64s(
            ty.dtype,
            ty.shape.clone(),
            pairs_f64(a, b, &ty.shape).into_iter().map(|(x, y)| f(x, y)).collect(),
        ));
    }
    if ty.dtype == DType::Bool {
        return Err(OpError::Bool { op: op.name() });
    }
    let unsigned = ty.dtype.is_unsigned();
    let mut out = Vec::new();
    for (x, y) in pairs_i64(a, b, &ty.shape)? {
        out.push(match op {
            Op::Add => x.wrapping_add(y),
            Op::Sub => x.wrapping_sub(y),
            Op::Mul => x.wrapping_mul(y),
            Op::Div => {
                if y == 0 {
                    return Err(OpError::DivisionByZero);
                }
                if unsigned {
                    ((x as u64) / (y as u64)) as i64
                } else {
                    x.wrapping_div(y)
                }
            }
            Op::Max => {
                if unsigned {
                    (x as u64).max(y as u64) as i64
                } else {
                    x.max(y)
                }
            }
            _ => {
                if unsigned {
                    (x as u64).min(y as u64) as i64
                } else {
                    x.min(y)
                }
            }
        });
    }
    Ok(int_tensor(ty.dtype, ty.shape.clone(), out))
}

fn pow(a: &Tensor, b: &Tensor, ty: &TensorType) -> R {
    if ty.dtype.is_float() {
        let v = pairs_f64(a, b, &ty.shape).into_iter().map(|(x, y)| x.powf(y)).collect();
        return Ok(from_f64s(ty.dtype, ty.shape.clone(), v));
    }
    // Integer base: exponentiation by squaring with wrapping (an exponent below zero gives 0,
    // or ±1 for a base of ±1, as integer division would).
    let (av, bv) = (ints(a)?, f64s(b));
    let (oa, ob) = (bcast_offsets(&a.shape, &ty.shape), bcast_offsets(&b.shape, &ty.shape));
    let mut out = Vec::with_capacity(oa.len());
    for (&i, &j) in oa.iter().zip(&ob) {
        let (base, e) = (av[i], bv[j]);
        if b.dtype.is_float() {
            out.push(float_to_int(ty.dtype, (base as f64).powf(e)));
            continue;
        }
        let e = e as i64;
        let v = if e < 0 {
            match base {
                1 => 1,
                -1 => {
                    if e % 2 == 0 {
                        1
                    } else {
                        -1
                    }
                }
                _ => 0,
            }
        } else {
            let (mut acc, mut p, mut k) = (1i64, base, e as u64);
            while k > 0 {
                if k & 1 == 1 {
                    acc = acc.wrapping_mul(p);
                }
                p = p.wrapping_mul(p);
                k >>= 1;
            }
            acc
        };
        out.push(v);
    }
    Ok(int_tensor(ty.dtype, ty.shape.clone(), out))
}

fn compare(op: &Op, a: &Tensor, b: &Tensor, out: &[usize]) -> R {
    let f = |o: std::cmp::Ordering| match op {
        Op::Equal => o.is_eq(),
        Op::Less => o.is_lt(),
        Op::LessOrEqual => o.is_le(),
        Op::Greater => o.is_gt(),
        _ => o.is_ge(),
    };
    let v: Vec<bool> = if a.dtype.is_float() {
        pairs_f64(a, b, out)
            .into_iter()
            .map(|(x, y)| x.partial_cmp(&y).map(f).unwrap_or(false))
            .collect()
    } else if a.dtype == DType::Bool {
        let (av, bv) = (bools(a)?, bools(b)?);
        let (oa, ob) = (bcast_offsets(&a.shape, out), bcast_offsets(&b.shape, out));
        oa.iter().zip(&ob).map(|(&i, &j)| f(av[i].cmp(&bv[j]))).collect()
    } else if a.dtype.is_unsigned() {
        pairs_i64(a, b, out)?.into_iter().map(|(x, y)| f((x as u64).cmp(&(y as u64)))).collect()
    } else {
        pairs_i64(a, b, out)?.into_iter().map(|(x, y)| f(x.cmp(&y))).collect()
    };
    Ok(Tensor::bool(out.to_vec(), v))
}

fn logic(op: &Op, a: &Tensor, b: &Tensor, out: &[usize]) -> R {
    let (av, bv) = (bools(a)?, bools(b)?);
    let (oa, ob) = (bcast_offsets(&a.shape, out), bcast_offsets(&b.shape, out));
    let v = oa
        .iter()
        .zip(&ob)
        .map(|(&i, &j)| match op {
            Op::And => av[i] && bv[j],
            Op::Or => av[i] || bv[j],
            _ => av[i] ^ bv[j],
        })
        .collect();
    Ok(Tensor::bool(out.to_vec(), v))
}

fn cast(a: &Tensor, to: DType) -> R {
    let shape = a.shape.clone();
    Ok(match (&a.data, to) {
        (Data::Bool(v), _) => from_f64s(to, shape, v.iter().map(|&b| b as u8 as f64).collect()),
        (Data::I64(v), t) if t.is_int() => {
            Tensor { dtype: to, shape, data: Data::I64(v.iter().map(|&x| wrap(to, x)).collect()) }
        }
        (Data::I64(v), t) if t.is_float() && a.dtype == DType::U64 => {
            from_f64s(to, shape, v.iter().map(|&x| x as u64 as f64).collect())
        }
        (Data::I64(v), DType::Bool) => Tensor::bool(shape, v.iter().map(|&x| x != 0).collect()),
        (_, DType::Bool) => Tensor::bool(shape, f64s(a).into_iter().map(|x| x != 0.0).collect()),
        _ => from_f64s(to, shape, f64s(a)),
    })
}

fn where_(c: &Tensor, a: &Tensor, b: &Tensor, ty: &TensorType) -> R {
    let cv = bools(c)?;
    let out = &ty.shape;
    let (oc, oa, ob) =
        (bcast_offsets(&c.shape, out), bcast_offsets(&a.shape, out), bcast_offsets(&b.shape, out));
    let pick = |k: usize| if cv[oc[k]] { (true, oa[k]) } else { (false, ob[k]) };
    let n = oc.len();
    let data = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => Data::F32(
            (0..n)
                .map(|k| match pick(k) {
                    (true, i) => x[i],
                    (false, j) => y[j],
                })
                .collect(),
        ),
        (Data::F64(x), Data::F64(y)) => Data::F64(
            (0..n)
                .map(|k| match pick(k) {
                    (true, i) => x[i],
                    (false, j) => y[j],
                })
                .collect(),
        ),
        (Data::I64(x), Data::I64(y)) => Data::I64(
            (0..n)
                .map(|k| match pick(k) {
                    (true, i) => x[i],
                    (false, j) => y[j],
                })
                .collect(),
        ),
        (Data::Bool(x), Data::Bool(y)) => Data::Bool(
            (0..n)
                .map(|k| match pick(k) {
                    (true, i) => x[i],
                    (false, j) => y[j],
                })
                .collect(),
        ),
        _ => return Err(OpError::WhereStorage),
    };
    Ok(Tensor { dtype: ty.dtype, shape: out.clone(), data })
}

fn matmul(a: &Tensor, b: &Tensor, ty: &TensorType) -> R {
    let (sa, sb) = (
        if a.shape.len() == 1 { vec![1, a.shape[0]] } else { a.shape.clone() },
        if b.shape.len() == 1 { vec![b.shape[0], 1] } else { b.shape.clone() },
    );
    let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
    let batch_out = crate::ir::shape::broadcast(&sa[..sa.len() - 2], &sb[..sb.len() - 2])
        .ok_or(OpError::MatMulBatch)?;
    let nb: usize = batch_out.iter().product();
    let mut ba = batch_out.clone();
    ba.extend([1, 1]);
    let oa = bcast_offsets(&[&sa[..sa.len() - 2], &[1, 1][..]].concat(), &ba);
    let ob = bcast_offsets(&[&sb[..sb.len() - 2], &[1, 1][..]].concat(), &ba);
    let is_int = a.dtype.is_int();
    let (af, bf) = if is_int { (Vec::new(), Vec::new()) } else { (f64s(a), f64s(b)) };
    let (ai, bi) =
        if is_int { (ints(a)?.to_vec(), ints(b)?.to_vec()) } else { (Vec::new(), Vec::new()) };
    let mut outf = vec![0f64; if is_int { 0 } else { nb * m * n }];
    let mut outi = vec![0i64; if is_int { nb * m * n } else { 0 }];
    for bt in 0..nb {
        // offsets are in units of whole matrices of the operand's own batch layout
        let a0 = oa[bt] * m * k;
        let b0 = ob[bt] * k * n;
        let o0 = bt * m * n;
        for i in 0..m {
            for p in 0..k {
                if is_int {
                    let x = ai[a0 + i * k + p];
                    for j in 0..n {
                        outi[o0 + i * n + j] =
                            outi[o0 + i * n + j].wrapping_add(x.wrapping_mul(bi[b0 + p * n + j]));
                    }
                } else {
                    let x = af[a0 + i * k + p];
                    if x == 0.0 {
                        continue;
                    }
                    let row = &bf[b0 + p * n..b0 + p * n + n];
                    let dst = &mut outf[o0 + i * n..o0 + i * n + n];
                    for (d, &y) in dst.iter_mut().zip(row) {
                        *d += x * y;
                    }
                }
            }
        }
    }
    Ok(if is_int {
        int_tensor(ty.dtype, ty.shape.clone(), outi)
    } else {
        from_f64s(ty.dtype, ty.shape.clone(), outf)
    })
}

/// Views a tensor as `outer × mid × inner` around the contiguous block of `axes` after moving
/// them last: returns (values as f64 in row-major order of the permuted view, rows, len).
fn rows_over(a: &Tensor, axes: &[usize]) -> (Vec<f64>, usize, usize) {
    let r = a.shape.len();
    let mut perm: Vec<usize> = (0..r).filter(|x| !axes.contains(x)).collect();
    perm.extend_from_slice(axes);
    let len: usize = axes.iter().map(|&x| a.shape[x]).product();
    let rows = a.numel() / len.max(1);
    let vals = f64s(a);
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return (vals, rows, len);
    }
    let st = strides(&a.shape);
    let pshape: Vec<usize> = perm.iter().map(|&p| a.shape[p]).collect();
    let src: Vec<i64> = perm.iter().map(|&p| st[p] as i64).collect();
    let offs = strided_offsets(&pshape, 0, &src);
    (offs.into_iter().map(|o| vals[o]).collect(), rows, len)
}

fn reduce(op: &Op, a: &Tensor, axes: &[usize], ty: &TensorType) -> R {
    if a.dtype.is_int() && !matches!(op, Op::ReduceMean { .. }) {
        let (vals, rows, len) = rows_over(a, axes);
        let out: Vec<i64> = (0..rows)
            .map(|r| {
                let it = vals[r * len..(r + 1) * len].iter().map(|&v| v as i64);
                match op {
                    Op::ReduceSum { .. } => it.fold(0i64, |s, v| s.wrapping_add(v)),
                    _ => it.max().unwrap_or(i64::MIN),
                }
            })
            .collect();
        return Ok(int_tensor(ty.dtype, ty.shape.clone(), out));
    }
    let (vals, rows, len) = rows_over(a, axes);
    let out: Vec<f64> = (0..rows)
        .map(|r| {
            let row = &vals[r * len..(r + 1) * len];
            match op {
                Op::ReduceSum { .. } => row.iter().sum(),
                Op::ReduceMean { .. } => {
                    if len == 0 {
                        f64::NAN
                    } else {
                        row.iter().sum::<f64>() / len as f64
                    }
                }
                _ => row.iter().cloned().fold(f64::NEG_INFINITY, |m, v| {
                    if v.is_nan() || m.is_nan() {
                        f64::NAN
                    } else {
                        m.max(v)
                    }
                }),
            }
        })
        .collect();
    Ok(from_f64s(ty.dtype, ty.shape.clone(), out))
}

fn softmax(a: &Tensor, axis: usize, ty: &TensorType) -> R {
    let outer: usize = a.shape[..axis].iter().product();
    let mid = a.shape[axis];
    let inner: usize = a.shape[axis + 1..].iter().product();
    let v = f64s(a);
    let mut out = vec![0f64; v.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * mid + j) * inner + i;
            let m = (0..mid).map(|j| v[at(j)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..mid).map(|j| (v[at(j)] - m).exp()).sum();
            for j in 0..mid {
                out[at(j)] = (v[at(j)] - m).exp() / s;
            }
        }
    }
    Ok(from_f64s(ty.dtype, ty.shape.clone(), out))
}

/// First index of the maximum along `axis` (NaN never wins).
fn arg_max(a: &Tensor, axis: usize, ty: &TensorType) -> R {
    let outer: usize = a.shape[..axis].iter().product();
    let mid = a.shape[axis];
    let inner: usize = a.shape[axis + 1..].iter().product();
    let v = f64s(a);
    let mut out = vec![0i64; outer * inner];
    for o in 0..outer {
        for i in 0..inner {
            let mut best = 0;
            for j in 1..mid {
                if v[(o * mid + j) * inner + i] > v[(o * mid + best) * inner + i] {
                    best = j;
                }
            }
            out[o * inner + i] = best as i64;
        }
    }
    Ok(Tensor::i64(ty.shape.clone(), out))
}

/// Entries below the `k`-th largest along `axis` lowered by [`crate::ir::TOP_K_DROP`].
fn keep_top_k(a: &Tensor, axis: usize, k: usize, ty: &TensorType) -> R {
    let outer: usize = a.shape[..axis].iter().product();
    let mid = a.shape[axis];
    let inner: usize = a.shape[axis + 1..].iter().product();
    let mut v = f64s(a);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * mid + j) * inner + i;
            let mut row: Vec<f64> = (0..mid).map(|j| v[at(j)]).collect();
            row.sort_by(|x, y| y.total_cmp(x));
            let t = row[k.min(mid) - 1];
            for j in 0..mid {
                if v[at(j)] < t {
                    v[at(j)] -= crate::ir::TOP_K_DROP;
                }
            }
        }
    }
    Ok(from_f64s(ty.dtype, ty.shape.clone(), v))
}

fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    axis: usize,
    eps: f32,
    ty: &TensorType,
) -> R {
    let norm = &x.shape[axis..];
    let len: usize = norm.iter().product();
    let rows = x.numel() / len.max(1);
    let v = f64s(x);
    let so = bcast_offsets(&scale.shape, norm);
    let sv = f64s(scale);
    let bv = bias.map(|b| (f64s(b), bcast_offsets(&b.shape, norm)));
    let mut out = vec![0f64; v.len()];
    for r in 0..rows {
        let row = &v[r * len..(r + 1) * len];
        let mu = row.iter().sum::<f64>() / len as f64;
        let var = row.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / len as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for j in 0..len {
            let b = bv.as_ref().map(|(b, o)| b[o[j]]).unwrap_or(0.0);
            out[r * len + j] = (row[j] - mu) * inv * sv[so[j]] + b;
        }
    }
    Ok(from_f64s(ty.dtype, ty.shape.clone(), out))
}

fn strided_offsets(shape: &[usize], off: i64, src: &[i64]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let mut offs = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    let mut cur = off;
    for _ in 0..n {
        offs.push(cur as usize);
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            cur += src[k];
            if idx[k] < shape[k] {
                break;
            }
            cur -= src[k] * idx[k] as i64;
            idx[k] = 0;
        }
    }
    offs
}

fn gather_strided(a: &Tensor, out: &[usize], off: i64, src: &[i64]) -> Tensor {
    let offs = strided_offsets(out, off, src);
    take(a, out.to_vec(), &offs)
}

/// The elements of `a` at the given offsets, as a tensor of `shape`.
fn take(a: &Tensor, shape: Vec<usize>, offs: &[usize]) -> Tensor {
    let data = match &a.data {
        Data::F32(v) => Data::F32(offs.iter().map(|&o| v[o]).collect()),
        Data::F64(v) => Data::F64(offs.iter().map(|&o| v[o]).collect()),
        Data::I64(v) => Data::I64(offs.iter().map(|&o| v[o]).collect()),
        Data::Bool(v) => Data::Bool(offs.iter().map(|&o| v[o]).collect()),
    };
    Tensor { dtype: a.dtype, shape, data }
}

fn concat(a: &[&Tensor], axis: usize, ty: &TensorType) -> R {
    let out = &ty.shape;
    let outer: usize = out[..axis].iter().product();
    let inner: usize = out[axis + 1..].iter().product();
    let mut offs: Vec<(usize, usize)> = Vec::with_capacity(ty.numel());
    for o in 0..outer {
        for (t, part) in a.iter().enumerate() {
            let m = part.shape[axis];
            for j in 0..m * inner {
                offs.push((t, o * m * inner + j));
            }
        }
    }
    let data = match &a[0].data {
        Data::F32(_) => Data::F32(
            offs.iter().map(|&(t, o)| a[t].as_f32().map(|v| v[o]).unwrap_or(0.0)).collect(),
        ),
        Data::F64(_) => Data::F64(offs.iter().map(|&(t, o)| a[t].get_f64(o)).collect()),
        Data::I64(_) => {
            Data::I64(offs.iter().map(|&(t, o)| a[t].as_i64().map(|v| v[o]).unwrap_or(0)).collect())
        }
        Data::Bool(_) => Data::Bool(offs.iter().map(|&(t, o)| a[t].get_f64(o) != 0.0).collect()),
    };
    Ok(Tensor { dtype: ty.dtype, shape: out.clone(), data })
}

fn index_list(idx: &Tensor) -> Result<Vec<i64>, OpError> {
    if !idx.dtype.is_int() {
        return Err(OpError::Indices(idx.dtype));
    }
    Ok(idx.to_i64_vec())
}

fn gather(data: &Tensor, idx: &Tensor, axis: usize, ty: &TensorType) -> R {
    let dim = data.shape[axis] as i64;
    let outer: usize = data.shape[..axis].iter().product();
    let inner: usize = data.shape[axis + 1..].iter().product();
    let ids = index_list(idx)?;
    let mut offs = Vec::with_capacity(ty.numel());
    for o in 0..outer {
        for &i in &ids {
            let r = if i < 0 { i + dim } else { i };
            if r < 0 || r >= dim {
                return Err(OpError::Index { index: i, what: "axis", axis, size: dim });
            }
            for j in 0..inner {
                offs.push((o * dim as usize + r as usize) * inner + j);
            }
        }
    }
    Ok(take(data, ty.shape.clone(), &offs))
}

fn gather_nd(data: &Tensor, idx: &Tensor, b: usize, ty: &TensorType) -> R {
    let ids = index_list(idx)?;
    let q = idx.shape.len();
    let k = idx.shape[q - 1];
    let batch: usize = data.shape[..b].iter().product();
    let per_batch_tuples: usize = idx.shape[b..q - 1].iter().product();
    let slice: usize = data.shape[b + k..].iter().product();
    let ds = strides(&data.shape);
    let mut offs = Vec::with_capacity(ty.numel());
    let batch_size: usize = data.shape[b..].iter().product();
    for bt in 0..batch {
        let base = bt * batch_size;
        for t in 0..per_batch_tuples {
            let tup = &ids[(bt * per_batch_tuples + t) * k..(bt * per_batch_tuples + t + 1) * k];
            let mut off = base;
            for (d, &i) in tup.iter().enumerate() {
                let dim = data.shape[b + d] as i64;
                let r = if i < 0 { i + dim } else { i };
                if r < 0 || r >= dim {
                    return Err(OpError::Index {
                        index: i,
                        what: "dimension",
                        axis: b + d,
                        size: dim,
                    });
                }
                off += r as usize * ds[b + d];
            }
            offs.extend(off..off + slice);
        }
    }
    Ok(take(data, ty.shape.clone(), &offs))
}
