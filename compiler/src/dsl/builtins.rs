//! Builtin functions: tensor operations that map one-to-one (or nearly) onto IR operators.

use crate::dsl::ast::{Ident, Span};
use crate::dsl::error::DslError;
use crate::dsl::lower::{Eval, Val};
use crate::ir::{DType, GeluApprox, Op, Value};

/// Every builtin, with its parameters (`name=default` for optional ones) for messages.
pub const BUILTINS: &[(&str, &str)] = &[
    ("softmax", "x, axis=-1"),
    ("layernorm", "x, scale, bias, axis=-1, eps=1e-5"),
    ("gelu", "x"),
    ("gelu_tanh", "x"),
    ("smu1", "x, alpha, mu"),
    ("erf", "x"),
    ("tanh", "x"),
    ("exp", "x"),
    ("log", "x"),
    ("sqrt", "x"),
    ("reciprocal", "x"),
    ("sigmoid", "x"),
    ("relu", "x"),
    ("abs", "x"),
    ("drelu", "x, slack=0"),
    ("bounded", "x, abs"),
    ("maximum", "a, b"),
    ("minimum", "a, b"),
    ("where", "cond, a, b"),
    ("reshape", "x, shape"),
    ("transpose", "x, perm"),
    ("slice", "x, axis, start, end, step=1"),
    ("concat", "xs, axis"),
    ("gather", "table, indices, axis=0"),
    ("expand", "x, shape"),
    ("cast", "x, dtype"),
    ("sum", "x, axis, keepdims=0"),
    ("mean", "x, axis, keepdims=0"),
    ("max", "x, axis, keepdims=0"),
    ("dim", "x, axis"),
    ("causal_mask", "n"),
    ("log2", "x"),
    ("ceil", "x"),
    ("floor", "x"),
    ("rsqrt_fit_a", "lo, hi"),
    ("rsqrt_fit_b", "lo, hi"),
    ("rsqrt_fit_iters", "lo, hi, rel"),
];

/// Builtins that also compute on compile-time numbers.
fn numeric(name: &str, x: f64) -> Option<f64> {
    Some(match name {
        "sqrt" => x.sqrt(),
        "exp" => x.exp(),
        "log" => x.ln(),
        "log2" => x.log2(),
        "ceil" => x.ceil(),
        "floor" => x.floor(),
        "abs" => x.abs(),
        "erf" | "tanh" | "reciprocal" => return None,
        _ => return None,
    })
}

/// True when `name` is a builtin.
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.iter().any(|(n, _)| *n == name)
}

struct Args<'e, 'a> {
    e: &'e mut Eval<'a>,
    func: &'e Ident,
    params: Vec<(&'static str, Option<&'static str>)>,
    vals: Vec<Option<Val>>,
    span: Span,
}

impl<'e, 'a> Args<'e, 'a> {
    fn new(
        e: &'e mut Eval<'a>,
        func: &'e Ident,
        sig: &'static str,
        pos: Vec<Val>,
        named: Vec<(Ident, Val)>,
        span: Span,
    ) -> Result<Self, DslError> {
        let params: Vec<(&'static str, Option<&'static str>)> = sig
            .split(", ")
            .map(|p| match p.split_once('=') {
                Some((n, d)) => (n, Some(d)),
                None => (p, None),
            })
            .collect();
        if pos.len() > params.len() {
            let s = if params.len() == 1 { "" } else { "s" };
            return Err(e.err(
                span,
                format!(
                    "`{}({sig})` takes {} argument{s}, {} given",
                    func.name,
                    params.len(),
                    pos.len()
                ),
            ));
        }
        let mut vals: Vec<Option<Val>> = pos.into_iter().map(Some).collect();
        vals.resize(params.len(), None);
        for (n, v) in named {
            let i = params.iter().position(|p| p.0 == n.name).ok_or_else(|| {
                e.err(n.span, format!("`{}({sig})` has no parameter `{}`", func.name, n.name))
            })?;
            if vals[i].is_some() {
                return Err(e.err(n.span, format!("argument `{}` is given twice", n.name)));
            }
            vals[i] = Some(v);
        }
        for (i, p) in params.iter().enumerate() {
            if vals[i].is_none() {
                match p.1 {
                    Some(d) => {
                        vals[i] = Some(Val::Num(d.parse().expect("builtin defaults are numbers")))
                    }
                    None => {
                        return Err(
                            e.err(span, format!("`{}({sig})` needs argument `{}`", func.name, p.0))
                        )
                    }
                }
            }
        }
        Ok(Args { e, func, params, vals, span })
    }

    fn tensor(&mut self, i: usize) -> Result<Value, DslError> {
        match self.vals[i].take().expect("bound") {
            Val::Tensor(v) => Ok(v),
            Val::Num(x) => Ok(self.e.g.add_const(
                &format!("{}.{}", self.func.name, self.params[i].0),
                crate::ir::Tensor::scalar_f32(x as f32),
            )),
            _ => Err(self.e.err(
                self.span,
                format!("argument `{}` of `{}` must be a tensor", self.params[i].0, self.func.name),
            )),
        }
    }

    fn num(&mut self, i: usize) -> Result<f64, DslError> {
        match self.vals[i].take().expect("bound") {
            Val::Num(x) => Ok(x),
            _ => Err(self.e.err(
                self.span,
                format!(
                    "argument `{}` of `{}` must be a compile-time number",
                    self.params[i].0, self.func.name
                ),
            )),
        }
    }

    fn ints(&mut self, i: usize) -> Result<Vec<i64>, DslError> {
        let what = self.params[i].0;
        match self.vals[i].take().expect("bound") {
            Val::Num(x) if x.fract() == 0.0 => Ok(vec![x as i64]),
            Val::List(items) => items
                .into_iter()
                .map(|v| match v {
                    Val::Num(x) if x.fract() == 0.0 => Ok(x as i64),
                    _ => Err(self.e.err(self.span, format!("`{what}` must be a list of integers"))),
                })
                .collect(),
            _ => Err(self.e.err(
                self.span,
                format!(
                    "`{what}` of `{}` must be an integer or a list of integers",
                    self.func.name
                ),
            )),
        }
    }

    fn axis(&mut self, i: usize, rank: usize) -> Result<usize, DslError> {
        let a = self.num(i)?;
        let r = rank as i64;
        let k = a as i64;
        if a.fract() != 0.0 || k < -r || k >= r {
            return Err(self.e.err(self.span, format!("axis {a} is out of range for rank {rank}")));
        }
        Ok(if k < 0 { (k + r) as usize } else { k as usize })
    }
}

/// Calls builtin `func`.
pub(crate) fn call(
    e: &mut Eval,
    func: &Ident,
    pos: Vec<Val>,
    named: Vec<(Ident, Val)>,
    span: Span,
    name: Option<&str>,
) -> Result<Val, DslError> {
    let sig = match BUILTINS.iter().find(|(n, _)| *n == func.name) {
        Some((_, s)) => *s,
        None => return Err(e.err(func.span, format!("unknown function `{}`", func.name))),
    };
    if let ([Val::Num(x)], true) = (pos.as_slice(), named.is_empty()) {
        if let Some(v) = numeric(&func.name, *x) {
            return Ok(Val::Num(v));
        }
    }
    if matches!(func.name.as_str(), "log2" | "ceil" | "floor") {
        return Err(e.err(span, format!("`{}` works on compile-time numbers only", func.name)));
    }
    let mut a = Args::new(e, func, sig, pos, named, span)?;
    if func.name.starts_with("rsqrt_fit_") {
        return rsqrt_fit(&mut a);
    }
    let unary = |op: Op| -> Option<Op> { Some(op) };
    let un = match func.name.as_str() {
        "gelu" => unary(Op::Gelu { approx: GeluApprox::Erf }),
        "gelu_tanh" => unary(Op::Gelu { approx: GeluApprox::Tanh }),
        "erf" => unary(Op::Erf),
        "tanh" => unary(Op::Tanh),
        "exp" => unary(Op::Exp),
        "log" => unary(Op::Log),
        "sqrt" => unary(Op::Sqrt),
        "reciprocal" => unary(Op::Reciprocal),
        "sigmoid" => unary(Op::Sigmoid),
        "relu" => unary(Op::Relu),
        "abs" => unary(Op::Abs),
        _ => None,
    };
    if let Some(op) = un {
        let x = a.tensor(0)?;
        return a.e.node(span, op, &[x], name);
    }
    match func.name.as_str() {
        "softmax" => {
            let x = a.tensor(0)?;
            let r = a.e.g.ty(x).rank();
            let axis = a.axis(1, r)?;
            a.e.node(span, Op::Softmax { axis }, &[x], name)
        }
        "layernorm" => {
            let (x, s, b) = (a.tensor(0)?, a.tensor(1)?, a.tensor(2)?);
            let r = a.e.g.ty(x).rank();
            let axis = a.axis(3, r)?;
            let eps = a.num(4)? as f32;
            a.e.node(span, Op::LayerNorm { axis, eps }, &[x, s, b], name)
        }
        "drelu" => {
            let x = a.tensor(0)?;
            let slack = a.num(1)?;
            if !(slack.is_finite() && slack >= 0.0) {
                return Err(a
                    .e
                    .err(span, format!("`drelu` needs a finite slack of 0 or more, got {slack}")));
            }
            a.e.node(span, Op::Drelu { slack }, &[x], name)
        }
        "bounded" => {
            let x = a.tensor(0)?;
            let abs = a.num(1)?;
            if !(abs.is_finite() && abs > 0.0) {
                return Err(a
                    .e
                    .err(span, format!("`bounded` needs a positive finite bound, got {abs}")));
            }
            a.e.node(span, Op::Bounded { abs }, &[x], name)
        }
        "smu1" => {
            let x = a.tensor(0)?;
            let (alpha, mu) = (a.num(1)? as f32, a.num(2)? as f32);
            a.e.node(span, Op::Smu1 { alpha, mu }, &[x], name)
        }
        "maximum" | "minimum" => {
            let (x, y) = (a.tensor(0)?, a.tensor(1)?);
            let op = if func.name == "maximum" { Op::Max } else { Op::Min };
            a.e.node(span, op, &[x, y], name)
        }
        "where" => {
            let (c, x, y) = (a.tensor(0)?, a.tensor(1)?, a.tensor(2)?);
            a.e.node(span, Op::Where, &[c, x, y], name)
        }
        "reshape" => {
            let x = a.tensor(0)?;
            let dims = a.ints(1)?;
            let n = a.e.g.ty(x).numel();
            // Checked: the known dimensions' product overflowed i64 (wrapping to a divisor).
            let known = dims.iter().filter(|&&d| d != -1).try_fold(1i64, |a, &d| a.checked_mul(d));
            let known = known.unwrap_or(-1);
            let holes = dims.iter().filter(|&&d| d == -1).count();
            let valid = dims.iter().all(|&d| d >= -1);
            let shape: Vec<usize> = if valid && holes == 1 && known > 0 && n as i64 % known == 0 {
                dims.iter()
                    .map(|&d| if d == -1 { (n as i64 / known) as usize } else { d as usize })
                    .collect()
            } else if holes == 0 && dims.iter().all(|&d| d >= 0) {
                dims.iter().map(|&d| d as usize).collect()
            } else {
                return Err(a.e.err(span, format!("cannot reshape {n} elements to {dims:?}")));
            };
            a.e.node(span, Op::Reshape { shape }, &[x], name)
        }
        "transpose" => {
            let x = a.tensor(0)?;
            let perm = a.ints(1)?.into_iter().map(|p| p.max(0) as usize).collect();
            a.e.node(span, Op::Transpose { perm }, &[x], name)
        }
        "slice" => {
            let x = a.tensor(0)?;
            let shape = a.e.g.ty(x).shape.clone();
            let axis = a.axis(1, shape.len())?;
            let (start, end, step) = (a.num(2)?, a.num(3)?, a.num(4)?);
            let dim = shape[axis] as f64;
            if step < 1.0
                || start < 0.0
                || end > dim
                || start > end
                || start.fract() != 0.0
                || end.fract() != 0.0
            {
                return Err(a.e.err(span, format!("slice {start}..{end} step {step} does not fit dimension {axis} of size {dim}")));
            }
            let len = ((end - start) / step).ceil() as usize;
            let mut st = vec![0; shape.len()];
            let mut stp = vec![1; shape.len()];
            let mut ln = shape.clone();
            st[axis] = start as usize;
            stp[axis] = step as i64;
            ln[axis] = len;
            a.e.node(span, Op::Slice { start: st, step: stp, len: ln }, &[x], name)
        }
        "concat" => {
            let items = match a.vals[0].take().expect("bound") {
                Val::List(items) => items,
                _ => return Err(a.e.err(span, "`concat` takes a list of tensors")),
            };
            let mut vs = Vec::new();
            for it in items {
                match it {
                    Val::Tensor(v) => vs.push(v),
                    _ => return Err(a.e.err(span, "`concat` takes a list of tensors")),
                }
            }
            let rank = vs.first().map(|&v| a.e.g.ty(v).rank()).unwrap_or(0);
            let axis = a.axis(1, rank)?;
            a.e.node(span, Op::Concat { axis }, &vs, name)
        }
        "gather" => {
            let (t, i) = (a.tensor(0)?, a.tensor(1)?);
            let r = a.e.g.ty(t).rank();
            let axis = a.axis(2, r)?;
            a.e.node(span, Op::Gather { axis }, &[t, i], name)
        }
        "expand" => {
            let x = a.tensor(0)?;
            let shape = a.ints(1)?.into_iter().map(|d| d.max(0) as usize).collect();
            a.e.node(span, Op::Expand { shape }, &[x], name)
        }
        "cast" => {
            let x = a.tensor(0)?;
            let to = match a.vals[1].take() {
                Some(Val::Str(s)) => s,
                _ => {
                    return Err(a
                        .e
                        .err(span, "`cast(x, \"f32\")` takes the element type as a string"))
                }
            };
            let to = match to.as_str() {
                "f32" => DType::F32,
                "i64" => DType::I64,
                "bool" => DType::Bool,
                "f64" => DType::F64,
                other => return Err(a.e.err(span, format!("unknown element type `{other}`"))),
            };
            a.e.node(span, Op::Cast { to }, &[x], name)
        }
        "sum" | "mean" | "max" => {
            let x = a.tensor(0)?;
            let r = a.e.g.ty(x).rank();
            let raw = a.ints(1)?;
            let mut axes = Vec::new();
            for k in raw {
                if k < -(r as i64) || k >= r as i64 {
                    return Err(a.e.err(span, format!("axis {k} is out of range for rank {r}")));
                }
                axes.push(if k < 0 { (k + r as i64) as usize } else { k as usize });
            }
            axes.sort();
            axes.dedup();
            let keepdims = a.num(2)? != 0.0;
            let op = match func.name.as_str() {
                "sum" => Op::ReduceSum { axes, keepdims },
                "mean" => Op::ReduceMean { axes, keepdims },
                _ => Op::ReduceMax { axes, keepdims },
            };
            a.e.node(span, op, &[x], name)
        }
        "causal_mask" => {
            // The additive mask of a decoder: 0 where key j ≤ query i, −3.4028235e38 (as
            // exporters write it) above the diagonal; a public constant.
            let n = a.num(0)?;
            if n < 1.0 || n.fract() != 0.0 || n > 65536.0 {
                return Err(a
                    .e
                    .err(span, format!("causal_mask needs a positive integer size, got {n}")));
            }
            let n = n as usize;
            let data: Vec<f32> =
                (0..n * n).map(|k| if k % n > k / n { f32::MIN } else { 0.0 }).collect();
            Ok(Val::Tensor(a.e.g.add_const(
                name.unwrap_or("causal_mask"),
                crate::ir::Tensor::f32(vec![n, n], data),
            )))
        }
        "dim" => {
            let x = a.tensor(0)?;
            let shape = a.e.g.ty(x).shape.clone();
            let axis = a.axis(1, shape.len())?;
            Ok(Val::Num(shape[axis] as f64))
        }
        _ => unreachable!("every builtin in BUILTINS is handled"),
    }
}

/// `rsqrt_fit_a/b/iters`: the compile-time fit of [`crate::rsqrt_fit`] for a stdlib function.
fn rsqrt_fit(a: &mut Args) -> Result<Val, DslError> {
    let (lo, hi) = (a.num(0)?, a.num(1)?);
    let Some(g) = crate::rsqrt_fit::guess(lo, hi) else {
        return Err(a
            .e
            .err(a.span, format!("`{}`: need 0 < lo < hi, got [{lo}, {hi}]", a.func.name)));
    };
    Ok(Val::Num(match a.func.name.as_str() {
        "rsqrt_fit_a" => g.a,
        "rsqrt_fit_b" => g.b,
        _ => {
            let rel = a.num(2)?;
            let k = crate::rsqrt_fit::iterations(lo, hi, rel).ok_or_else(|| {
                a.e.err(
                    a.span,
                    format!(
                        "inverse square root on [{lo}, {hi}] needs more than {} Newton steps for \
                         relative error {rel}: the range is too wide for a comparison-free guess \
                         (calibrate the model to narrow it)",
                        crate::rsqrt_fit::MAX_ITERATIONS
                    ),
                )
            })?;
            k as f64
        }
    }))
}
