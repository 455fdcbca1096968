//! `fuse_layer_norm`: layer normalisation written out as operators → one `layer_norm` node.
//!
//! `mean = ReduceMean(x, last axes)`, `d = x − mean`, `var = ReduceMean(d²)` (`Pow(d, 2)` or
//! `d·d`), `n = d / √(var + eps)` (or `d · 1/√(...)`), then `n·γ + β` (γ, β optional).

use super::matching::{replace, Matcher};
use super::Pass;
use crate::ir::{Graph, Op, Pattern, PatternKind, Value};

/// The pass.
pub struct FuseLayerNorm;

struct Found {
    y: Value,
    x: Value,
    axis: usize,
    eps: f32,
    gamma: Option<Value>,
    beta: Option<Value>,
}

impl Pass for FuseLayerNorm {
    fn name(&self) -> &'static str {
        "fuse_layer_norm"
    }

    fn run(&mut self, g: &mut Graph) -> usize {
        let mut found = Vec::new();
        {
            let m = Matcher::new(g);
            for &n in &g.order {
                if let Some(f) = try_match(&m, g.nodes[n].result) {
                    found.push(f);
                }
            }
        }
        // `n`, `n·γ` and `n·γ + β` all match; keep the outermost match of each normalisation.
        let score = |f: &Found| f.gamma.is_some() as u8 + f.beta.is_some() as u8;
        let mut best: Vec<Found> = Vec::new();
        for f in found {
            match best.iter_mut().find(|b| b.x == f.x && b.axis == f.axis) {
                Some(b) if score(&f) > score(b) => *b = f,
                Some(_) => {}
                None => best.push(f),
            }
        }
        let found = best;
        let count = found.len();
        for f in found {
            let scale = f.gamma.unwrap_or_else(|| {
                let shape = g.ty(f.x).shape[f.axis..].to_vec();
                let n = shape.iter().product();
                g.add_const(
                    &format!("{}.ones", g.values[f.y].name),
                    crate::ir::Tensor::f32(shape, vec![1.0; n]),
                )
            });
            let mut args = vec![f.x, scale];
            args.extend(f.beta);
            replace(g, f.y, Op::LayerNorm { axis: f.axis, eps: f.eps }, args);
            g.patterns.push(Pattern { kind: PatternKind::LayerNorm, at: f.y, nodes: 8 });
        }
        count
    }
}

/// Matches `n = d / √(var + eps)` at `v`; returns (x, axis, eps).
fn normalized(m: &Matcher, v: Value) -> Option<(Value, usize, f32)> {
    let n = m.def(v)?;
    let (d, std) = match n.op {
        Op::Div => (n.args[0], n.args[1]),
        Op::Mul => {
            let (d, r) = m
                .operands(v, |o| matches!(o, Op::Mul))?
                .into_iter()
                .find(|&(_, r)| m.def_op(r, |o| matches!(o, Op::Reciprocal)).is_some())?;
            (d, m.def(r)?.args[0])
        }
        _ => return None,
    };
    let sq = m.def_op(std, |o| matches!(o, Op::Sqrt))?;
    let (var, eps_v) = m
        .operands(sq.args[0], |o| matches!(o, Op::Add))?
        .into_iter()
        .find(|&(_, e)| m.scalar(e).is_some())?;
    let eps = m.scalar(eps_v)? as f32;
    let sub = m.def_op(d, |o| matches!(o, Op::Sub))?;
    let (x, mean) = (sub.args[0], sub.args[1]);
    let mn = m.def(mean)?;
    let axes = match &mn.op {
        Op::ReduceMean { axes, keepdims: true } if mn.args[0] == x => axes.clone(),
        _ => return None,
    };
    let rank = m.g.ty(x).rank();
    if axes.is_empty() || axes.iter().enumerate().any(|(i, &a)| a != rank - axes.len() + i) {
        return None;
    }
    let vn = m.def(var)?;
    match &vn.op {
        Op::ReduceMean { axes: a2, keepdims: true } if *a2 == axes => {}
        _ => return None,
    }
    let sqd = vn.args[0];
    let is_square = match m.def(sqd) {
        Some(s) if matches!(s.op, Op::Pow) => s.args[0] == d && m.is_const(s.args[1], 2.0),
        Some(s) if matches!(s.op, Op::Mul) => s.args[0] == d && s.args[1] == d,
        _ => false,
    };
    let singles = [var, std, sq.args[0], sqd, mean].iter().all(|&u| m.single_use(u));
    (is_square && singles).then_some((x, axes[0], eps))
}

fn try_match(m: &Matcher, y: Value) -> Option<Found> {
    // y = n·γ + β, y = n·γ, y = n + β, or y = n.
    let mut beta = None;
    let mut rest = y;
    if let Some(p) = m.operands(y, |o| matches!(o, Op::Add)) {
        if let Some((a, b)) = p.into_iter().find(|&(a, b)| {
            is_param(m, b) && m.def(a).is_some_and(|n| matches!(n.op, Op::Mul | Op::Div))
        }) {
            beta = Some(b);
            rest = a;
            if !m.single_use(a) {
                return None;
            }
        }
    }
    let mut gamma = None;
    let mut n = rest;
    if let Some(p) = m.operands(rest, |o| matches!(o, Op::Mul)) {
        if let Some((a, b)) =
            p.into_iter().find(|&(a, b)| is_param(m, b) && normalized(m, a).is_some())
        {
            gamma = Some(b);
            n = a;
            if !m.single_use(a) {
                return None;
            }
        }
    }
    let (x, axis, eps) = normalized(m, n)?;
    if gamma.is_none() && beta.is_none() && n != y {
        return None;
    }
    let norm_shape = &m.g.ty(x).shape[axis..];
    let fits = |v: Option<Value>| {
        v.is_none_or(|v| {
            m.g.ty(v).shape.as_slice() == norm_shape
                || m.g.ty(v).shape == norm_shape[norm_shape.len() - 1..]
        })
    };
    (fits(gamma) && fits(beta)).then_some(Found { y, x, axis, eps, gamma, beta })
}

/// A constant or weight (not computed from data): a candidate γ or β.
fn is_param(m: &Matcher, v: Value) -> bool {
    m.g.producer(v).is_none()
}
