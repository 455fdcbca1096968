//! The fixed-point simulator: the reference evaluator run in the VM's ring arithmetic, so the
//! error of an approximation (or of a whole lowered model) is measurable without any MPC.
//!
//! Secret data lives in Z_2^64 as `round(x·2^s)` and wraps like the VM's shares. The scale `s`
//! and where it is truncated (floor here; the VM's probabilistic truncation is within one unit
//! of it) come from the same [`Policy`] the bytecode lowering (`backend::lower`) uses, and a
//! product with a server weight takes the constant-operand protocol's rule where the lowering
//! would choose that protocol (weights being the server's, as `veil stdlib` compiles them).
//! Comparisons are exact on the signed value (the VM's are exact beyond 2^-8 at f = 16). Which
//! data is secret: the graph's float inputs and weights, and everything computed from them
//! (also what the compiled program leaves to one party in plaintext); float constants and
//! values computed from constants alone stay in f32/f64 (the compiler folds those publicly)
//! and are encoded where they meet secret data.
//! Operators without a ring form (`exp`, `sqrt`, `softmax`, …) are errors: lower them to stdlib
//! approximations first (`compile::lowered`).

use crate::backend::lower::inner_of;
use crate::backend::partition::{analyze, Vis};
use crate::backend::scale::{divisor_reciprocal, Policy, ScalarProduct};
use crate::eval::{eval_op, EvalError, EvalFailure};
use crate::ir::{DType, Graph, Op, Tensor, TensorType, Value, ValueDef};
use std::collections::HashMap;

/// Simulator settings.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// Fractional bits `f`.
    pub frac_bits: u8,
    /// Entries ≤ −1e9 (additive attention masks) are encoded as this value, as the client
    /// does with its feeds; `None` makes them an error.
    pub mask_value: Option<f32>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { frac_bits: 16, mask_value: Some(-64.0) }
    }
}

/// A value during simulation: ring elements (an `i64` tensor) at a scale, comparison bits
/// (0/1), or plain data.
#[derive(Clone)]
enum Sim {
    Ring(Tensor, u8),
    Bits(Tensor),
    Plain(Tensor),
}

struct Ctx {
    f: u8,
    p: Policy,
    mask: Option<f32>,
}

/// `t` with `g` applied to every element (an `i64` tensor).
fn map(t: &Tensor, g: impl Fn(i64) -> i64) -> Tensor {
    Tensor::i64(t.shape.clone(), t.as_i64().unwrap_or(&[]).iter().map(|&x| g(x)).collect())
}

impl Ctx {
    fn encode(&self, t: &Tensor, scale: u8, what: &str) -> Result<Tensor, EvalFailure> {
        self.encode_f64(&t.shape, &t.to_f64_vec(), scale, what)
    }

    fn encode_f64(
        &self,
        shape: &[usize],
        vals: &[f64],
        scale: u8,
        what: &str,
    ) -> Result<Tensor, EvalFailure> {
        let k = 2f64.powi(scale as i32);
        let limit = 2f64.powi(62);
        let mut out = Vec::with_capacity(vals.len());
        for &v in vals {
            let v = match self.mask {
                Some(m) if v <= -1e9 => m as f64,
                _ => v,
            };
            let r = (v * k).round();
            if !r.is_finite() || r.abs() >= limit {
                return Err(EvalFailure::Overflow {
                    value: what.to_string(),
                    x: v,
                    frac_bits: scale,
                });
            }
            out.push(r as i64);
        }
        Ok(Tensor::i64(shape.to_vec(), out))
    }

    fn decode(&self, t: &Tensor, scale: u8, ty: &TensorType) -> Tensor {
        let k = 2f64.powi(scale as i32);
        let vals: Vec<f64> = t.as_i64().unwrap_or(&[]).iter().map(|&r| r as f64 / k).collect();
        crate::eval::from_f64s(ty.dtype, ty.shape.clone(), vals)
    }

    /// The value moved from scale `from` to `to`: floor-truncated down, shifted up exactly.
    fn moved(&self, t: &Tensor, from: u8, to: u8) -> Tensor {
        if from > to {
            map(t, |x| x >> (from - to))
        } else if from < to {
            map(t, |x| x.wrapping_shl((to - from) as u32))
        } else {
            t.clone()
        }
    }

    /// `(t, s)` moved to the scale `scale_of(s)` the policy gives it.
    fn rescaled(&self, (t, s): (Tensor, u8), scale_of: impl Fn(u8) -> u8) -> (Tensor, u8) {
        let to = scale_of(s);
        (self.moved(&t, s, to), to)
    }

    /// What a masked opening hands a product or comparison.
    fn opened(&self, t: &Tensor, s: u8) -> (Tensor, u8) {
        self.rescaled((t.clone(), s), |s| self.p.opened(s))
    }
}

fn ring_ty(ty: &TensorType) -> TensorType {
    TensorType::new(DType::I64, ty.shape.clone())
}

/// Runs `g` in fixed point and returns its outputs (floats decoded, in their IR types).
pub fn simulate(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
    opts: &SimOptions,
) -> Result<Vec<Tensor>, EvalError> {
    let cx = Ctx { f: opts.frac_bits, p: Policy { f: opts.frac_bits }, mask: opts.mask_value };
    let f = cx.p.boundary(true);
    // The values the lowering takes as the server's weights (for the protocol of a product).
    let part = analyze(g, &|_| Vis::Server);
    let mut env: HashMap<Value, Sim> = HashMap::new();
    let err = |node: &str, kind: EvalFailure| EvalError::new(node, kind);
    for &i in &g.inputs {
        let vd = &g.values[i];
        let t = inputs.get(&vd.name).ok_or_else(|| err(&vd.name, EvalFailure::NotSupplied))?;
        if t.ty() != vd.ty {
            return Err(err(&vd.name, EvalFailure::InputType { got: t.ty(), want: vd.ty.clone() }));
        }
        let s = if vd.ty.dtype.is_float() {
            Sim::Ring(cx.encode(t, f, &vd.name).map_err(|m| err(&vd.name, m))?, f)
        } else {
            Sim::Plain(t.clone())
        };
        env.insert(i, s);
    }
    for (v, vd) in g.values.iter() {
        match &vd.def {
            ValueDef::Weight(t) if vd.ty.dtype.is_float() => {
                let r = cx.encode(t, f, &vd.name).map_err(|m| err(&vd.name, m))?;
                env.insert(v, Sim::Ring(r, f));
            }
            ValueDef::Weight(t) | ValueDef::Const(t) => {
                env.insert(v, Sim::Plain((**t).clone()));
            }
            _ => {}
        }
    }
    let uses = g.use_counts();
    let readers = crate::backend::lower::readers(g);
    for &n in &g.order {
        let nd = &g.nodes[n];
        let ty = &g.values[nd.result].ty;
        let mut args = Vec::with_capacity(nd.args.len());
        for &a in &nd.args {
            args.push(env.get(&a).cloned().ok_or_else(|| {
                err(&nd.name, EvalFailure::Unavailable(g.values[a].name.clone()))
            })?);
        }
        let same = nd.args.len() == 2 && nd.args[0] == nd.args[1];
        let weight: Vec<bool> = nd.args.iter().map(|&a| part.vis[a] == Vis::Server).collect();
        let cube = crate::backend::lower::cube_operand(g, &uses, &nd.args);
        let square = crate::backend::lower::square_factor(g, &uses, &readers, nd.result, &nd.args);
        let out = step(&cx, &nd.op, args, Args { same, weight, cube, square }, ty, &nd.name)
            .map_err(|m| err(&nd.name, m))?;
        env.insert(nd.result, out);
    }
    g.outputs
        .iter()
        .map(|&o| match env.get(&o) {
            Some(Sim::Ring(t, s)) => Ok(cx.decode(t, *s, &g.values[o].ty)),
            Some(Sim::Bits(t)) => Ok(cx.decode(t, 0, &g.values[o].ty)),
            Some(Sim::Plain(t)) => Ok(t.clone()),
            None => Err(err(&g.values[o].name, EvalFailure::NotComputed)),
        })
        .collect()
}

/// A secret operand: bits become 0/1 ring values at scale 0, as the lowering's `b2a`.
fn secret(a: Sim) -> Option<(Tensor, u8)> {
    match a {
        Sim::Ring(t, s) => Some((t, s)),
        Sim::Bits(t) => Some((t, 0)),
        Sim::Plain(_) => None,
    }
}

/// What the lowering sees of a node's arguments beyond their values.
struct Args {
    /// Both arguments are the same value (a square).
    same: bool,
    /// Per argument: a weight of the server (not shared), for which the lowering uses the
    /// constant-operand protocol of products.
    weight: Vec<bool>,
    /// The argument `z` of a product `(z·z)·z`: cubed from its one opening.
    cube: Option<usize>,
    /// The argument `z·z` of a product `x·(z·z)`: taken whole, times the opened `x`.
    square: Option<usize>,
}

/// One node: plain when every argument is plain, otherwise in the ring.
fn step(
    cx: &Ctx,
    op: &Op,
    mut args: Vec<Sim>,
    Args { same, weight, cube, square }: Args,
    ty: &TensorType,
    node: &str,
) -> Result<Sim, EvalFailure> {
    let (f, p) = (cx.f, cx.p);
    let plain = |a: &Sim| match a {
        Sim::Plain(t) => Some(t.clone()),
        _ => None,
    };
    if args.iter().all(|a| matches!(a, Sim::Plain(_))) {
        let refs: Vec<Tensor> = args.iter().filter_map(plain).collect();
        let refs: Vec<&Tensor> = refs.iter().collect();
        return Ok(Sim::Plain(eval_op(op, &refs, ty)?));
    }
    let rty = ring_ty(ty);
    let ev = |op: &Op, a: &[&Tensor]| eval_op(op, a, &rty);
    let float_out = ty.dtype.is_float();
    Ok(match op {
        Op::Sub if matches!((&args[0], &args[1]), (Sim::Bits(_), Sim::Bits(_))) => {
            // [x ≥ c1] − [x ≥ c2] with c1 ≤ c2: the lowering's local XOR, the same 0/1.
            let (Sim::Bits(a), Sim::Bits(b)) = (&args[0], &args[1]) else { unreachable!() };
            Sim::Bits(ev(op, &[a, b])?)
        }
        Op::Add | Op::Sub => {
            let (a, b) = (args.remove(0), args.remove(0));
            match (plain(&a), plain(&b)) {
                (Some(c), None) | (None, Some(c)) => {
                    let a_is_const = matches!(a, Sim::Plain(_));
                    let (x, s) = secret(if a_is_const { b } else { a }).expect("secret");
                    let c = cx.encode(&c, s, node)?;
                    let (l, r) = if a_is_const { (&c, &x) } else { (&x, &c) };
                    Sim::Ring(ev(op, &[l, r])?, s)
                }
                _ => {
                    let ((x, sx), (y, sy)) =
                        (secret(a).expect("secret"), secret(b).expect("secret"));
                    let s = p.aligned(sx, sy);
                    Sim::Ring(ev(op, &[&cx.moved(&x, sx, s), &cx.moved(&y, sy, s)])?, s)
                }
            }
        }
        Op::Neg => {
            let (x, s) = secret(args.remove(0)).expect("secret");
            Sim::Ring(map(&x, i64::wrapping_neg), s)
        }
        Op::Mul | Op::Div => {
            let (a, b) = (args.remove(0), args.remove(0));
            let inverse = matches!(op, Op::Div);
            match (plain(&a), plain(&b)) {
                (Some(c), None) | (None, Some(c)) => {
                    if inverse && matches!(a, Sim::Plain(_)) {
                        return Err(EvalFailure::SecretDivisor);
                    }
                    let x = if matches!(a, Sim::Plain(_)) { b } else { a };
                    let c = if inverse {
                        let v: Vec<f32> =
                            c.to_f64_vec().iter().map(|&v| divisor_reciprocal(v)).collect();
                        Tensor::f32(c.shape.clone(), v)
                    } else {
                        c
                    };
                    mul_const(cx, secret(x).expect("secret"), &c, &rty, node)?
                }
                _ if inverse => return Err(EvalFailure::SecretDivisor),
                _ => match (&a, &b) {
                    (Sim::Bits(e), y) | (y, Sim::Bits(e)) if !matches!(y, Sim::Bits(_)) => {
                        // Selection by comparison bits of the opened operand.
                        let (y, sy) = secret(y.clone()).expect("secret");
                        let (y, s) = cx.opened(&y, sy);
                        Sim::Ring(ev(&Op::Mul, &[e, &y])?, s)
                    }
                    _ if square.is_some_and(|i| {
                        let (q, x) = if i == 0 { (&a, &b) } else { (&b, &a) };
                        matches!((q, x),
                            (Sim::Ring(q, _), Sim::Ring(x, _))
                                if q.shape == ty.shape && x.shape == ty.shape)
                            && !weight[0]
                            && !weight[1]
                    }) =>
                    {
                        // x·z² from the openings of x and z: the square (z opened, squared
                        // exactly) is taken whole.
                        let (q, x) = if square == Some(0) { (a, b) } else { (b, a) };
                        let (q, sq) = secret(q).expect("secret");
                        let (x, sx) = secret(x).expect("secret");
                        let (x, s) = cx.opened(&x, sx);
                        Sim::Ring(ev(&Op::Mul, &[&x, &q])?, s + sq)
                    }
                    _ if cube.is_some_and(|i| {
                        let z = if i == 0 { &a } else { &b };
                        matches!(z, Sim::Ring(t, _) if t.shape == ty.shape)
                    }) =>
                    {
                        let z = if cube == Some(0) { a } else { b };
                        let (z, sz) = secret(z).expect("secret");
                        let (z, s) = cx.opened(&z, sz);
                        let z2 = ev(&Op::Mul, &[&z, &z])?;
                        Sim::Ring(ev(&Op::Mul, &[&z2, &z])?, 3 * s)
                    }
                    _ => {
                        let ((x, sx), (y, sy)) =
                            (secret(a).expect("secret"), secret(b).expect("secret"));
                        let out = &ty.shape;
                        let by_weight = |w: usize, s: &Tensor, wt: &Tensor| {
                            weight[w]
                                && !weight[1 - w]
                                && &s.shape == out
                                && inner_of(&wt.shape, out).is_some()
                        };
                        if by_weight(1, &x, &y) || by_weight(0, &y, &x) {
                            // A share times a weight of the server: the constant-operand
                            // protocol, whose share operand is at exactly the policy's scale.
                            let ((x, sx), (y, sy)) = if weight[1] {
                                (cx.rescaled((x, sx), |_| p.before_weight_product()), (y, sy))
                            } else {
                                ((x, sx), cx.rescaled((y, sy), |_| p.before_weight_product()))
                            };
                            Sim::Ring(ev(&Op::Mul, &[&x, &y])?, sx + sy)
                        } else {
                            let s = if same { p.product(sx, sx) } else { p.product(sx, sy) };
                            let (x, _) = cx.opened(&x, sx);
                            let (y, _) = if same { (x.clone(), 0) } else { cx.opened(&y, sy) };
                            Sim::Ring(ev(&Op::Mul, &[&x, &y])?, s)
                        }
                    }
                },
            }
        }
        Op::MatMul => {
            let (a, b) = (args.remove(0), args.remove(0));
            let (x, sx) =
                secret(a).ok_or(EvalFailure::Unsupported("a constant left operand of matmul"))?;
            match b {
                Sim::Plain(c) => {
                    let (x, sx) = cx.rescaled((x, sx), |s| p.before_public_product(s));
                    let c = cx.encode(&c, f, node)?;
                    Sim::Ring(ev(op, &[&x, &c])?, sx + f)
                }
                other => {
                    let (y, sy) = secret(other).expect("secret");
                    let batch_b: usize =
                        y.shape[..y.shape.len().saturating_sub(2)].iter().product();
                    let ((x, sx), (y, sy)) = if weight[1] && batch_b == 1 {
                        // The constant-operand protocol, as the lowering chooses it.
                        (cx.rescaled((x, sx), |_| p.before_weight_product()), (y, sy))
                    } else {
                        let x = cx.rescaled((x, sx), |s| p.matmul_left(s, sy).unwrap_or(s));
                        let sx = x.1;
                        (x, cx.rescaled((y, sy), |s| p.matmul_right(sx, s).unwrap_or(s)))
                    };
                    Sim::Ring(ev(op, &[&x, &y])?, sx + sy)
                }
            }
        }
        Op::ReduceSum { .. } => {
            let (x, s) = secret(args.remove(0)).expect("secret");
            Sim::Ring(ev(op, &[&x])?, s)
        }
        Op::ReduceMean { axes, keepdims } => {
            let (x, s) = secret(args.remove(0)).expect("secret");
            let n: usize = axes.iter().map(|&a| x.shape[a]).product();
            let sum = ev(&Op::ReduceSum { axes: axes.clone(), keepdims: *keepdims }, &[&x])?;
            scale_by(cx, (sum, s), 1.0 / n as f64, node)?
        }
        Op::ReduceMax { .. } => {
            let (x, s) = cx.rescaled(secret(args.remove(0)).expect("secret"), |s| p.compared(s));
            Sim::Ring(ev(op, &[&x])?, s)
        }
        Op::Relu => {
            let (x, s) = secret(args.remove(0)).expect("secret");
            let (x, s) = cx.opened(&x, s);
            Sim::Ring(map(&x, |v| v.max(0)), s)
        }
        Op::Drelu { .. } => {
            let (x, _) = secret(args.remove(0)).expect("secret");
            Sim::Bits(map(&x, |v| i64::from(v >= 0)))
        }
        Op::Max | Op::Min => {
            let (a, b) = (args.remove(0), args.remove(0));
            let (x, c, other) = match (plain(&a), plain(&b)) {
                (Some(c), None) => (b, Some(c), None),
                (None, Some(c)) => (a, Some(c), None),
                _ => (a, None, Some(b)),
            };
            let (x, s) = secret(x).expect("secret");
            match c {
                Some(c) => {
                    // Against a constant: compared through a masked opening.
                    let (x, s) = cx.opened(&x, s);
                    Sim::Ring(ev(op, &[&x, &cx.encode(&c, s, node)?])?, s)
                }
                None => {
                    let (x, sx) = cx.rescaled((x, s), |s| p.compared(s));
                    let (y, sy) = secret(other.expect("two secrets")).expect("secret");
                    let (y, sy) = cx.rescaled((y, sy), |s| p.compared(s));
                    let s = p.aligned(sx, sy);
                    Sim::Ring(ev(op, &[&cx.moved(&x, sx, s), &cx.moved(&y, sy, s)])?, s)
                }
            }
        }
        Op::Concat { .. } => {
            let parts: Vec<(Tensor, u8)> = args
                .into_iter()
                .map(|a| {
                    secret(a)
                        .ok_or(EvalFailure::Unsupported("concatenating a constant with secrets"))
                })
                .collect::<Result<_, _>>()?;
            let s = parts.iter().map(|q| q.1).reduce(|a, b| p.aligned(a, b)).unwrap_or(f);
            let up: Vec<Tensor> = parts.iter().map(|(t, ps)| cx.moved(t, *ps, s)).collect();
            let refs: Vec<&Tensor> = up.iter().collect();
            Sim::Ring(ev(op, &refs)?, s)
        }
        Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::Expand { .. }
        | Op::Gather { .. }
        | Op::GatherND { .. }
        | Op::Where => {
            // Data movement: the secret operand keeps its scale; indices and conditions stay.
            let mut scale = f;
            let mut ts = Vec::new();
            for a in args {
                ts.push(match a {
                    Sim::Plain(t) if t.dtype.is_float() => cx.encode(&t, f, node)?,
                    Sim::Plain(t) => t,
                    other => {
                        let (t, s) = secret(other).expect("secret");
                        scale = s;
                        t
                    }
                });
            }
            let refs: Vec<&Tensor> = ts.iter().collect();
            Sim::Ring(eval_op(op, &refs, if float_out { &rty } else { ty })?, scale)
        }
        // The promise is the caller's; in range, a narrower opening gives the same values.
        Op::Bounded { .. } => args.remove(0),
        Op::Cast { to } if to.is_float() => match args.remove(0) {
            Sim::Bits(t) => Sim::Ring(t, 0),
            other => other,
        },
        other => return Err(EvalFailure::NoRingForm(other.name())),
    })
}

/// A secret times a public constant, as the lowering's `mul_const`.
fn mul_const(
    cx: &Ctx,
    (x, s): (Tensor, u8),
    c: &Tensor,
    rty: &TensorType,
    node: &str,
) -> Result<Sim, EvalFailure> {
    if c.numel() == 1 {
        return scale_by(cx, (x, s), c.get_f64(0), node).map(|r| match r {
            Sim::Ring(t, s) if t.shape != rty.shape => Sim::Ring(
                eval_op(&Op::Expand { shape: rty.shape.clone() }, &[&t], rty).unwrap_or(t),
                s,
            ),
            r => r,
        });
    }
    let (x, s) = cx.rescaled((x, s), |s| cx.p.before_public_product(s));
    let integral = c.to_f64_vec().iter().all(|v| v.fract() == 0.0);
    let cs = cx.p.public_factor(integral);
    let c = cx.encode(c, cs, node)?;
    Ok(Sim::Ring(eval_op(&Op::Mul, &[&x, &c], rty)?, s + cs))
}

/// A secret times a public scalar, by the lowering's rule.
fn scale_by(cx: &Ctx, (x, s): (Tensor, u8), c: f64, node: &str) -> Result<Sim, EvalFailure> {
    let f = cx.f;
    Ok(match cx.p.scalar_product(s, c) {
        ScalarProduct::Integer(i) => Sim::Ring(map(&x, |v| v.wrapping_mul(i)), s),
        ScalarProduct::Relabel { k, negate } => {
            let x = if negate { map(&x, i64::wrapping_neg) } else { x };
            Sim::Ring(x, s + k)
        }
        ScalarProduct::Unlabel { k, negate } => {
            let x = if negate { map(&x, i64::wrapping_neg) } else { x };
            Sim::Ring(x, s - k)
        }
        ScalarProduct::RelabelTruncated { k, negate } => {
            let x = if negate { map(&x, i64::wrapping_neg) } else { x };
            Sim::Ring(cx.moved(&x, s + k, f), f)
        }
        ScalarProduct::Encoded { truncate_first } => {
            let (x, s) = if truncate_first { (cx.moved(&x, s, f), f) } else { (x, s) };
            let e = cx.encode_f64(&[], &[c], f, node)?.as_i64().unwrap_or(&[0])[0];
            Sim::Ring(map(&x, |v| v.wrapping_mul(e)), s + f)
        }
    })
}
