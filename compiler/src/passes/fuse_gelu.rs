//! `fuse_gelu`: GELU written out as operators → one `gelu` node.
//!
//! Erf form: `x · 0.5 · (1 + erf(x / √2))` (or `x · (1/√2)` inside erf), the three factors of
//! the outer product in any order and grouping. Tanh form ("gelu_new"):
//! `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))` with `x³` as `Pow(x, 3)` or `x·x·x`.
//! Every intermediate must be used only inside the pattern.

use super::matching::{replace, Matcher};
use super::Pass;
use crate::ir::{GeluApprox, Graph, Op, Pattern, PatternKind, Value};

/// The pass.
pub struct FuseGelu;

impl Pass for FuseGelu {
    fn name(&self) -> &'static str {
        "fuse_gelu"
    }

    fn run(&mut self, g: &mut Graph) -> usize {
        let mut found: Vec<(Value, Value, GeluApprox, usize)> = Vec::new();
        {
            let m = Matcher::new(g);
            for &n in &g.order {
                let nd = &g.nodes[n];
                let (x, form, inner_nodes) = match nd.op {
                    Op::Erf => match erf_arg(&m, nd.args[0]) {
                        Some(x) => (x, GeluApprox::Erf, 2),
                        None => continue,
                    },
                    Op::Tanh => match tanh_arg(&m, nd.args[0]) {
                        Some((x, k)) => (x, GeluApprox::Tanh, k),
                        None => continue,
                    },
                    _ => continue,
                };
                if !m.single_use(nd.result) || !m.single_use(nd.args[0]) {
                    continue;
                }
                // 1 + f(...)
                let Some(s) = m.users(nd.result).first().map(|&u| g.nodes[u].result) else {
                    continue;
                };
                let one_plus = m
                    .operands(s, |o| matches!(o, Op::Add))
                    .is_some_and(|p| p.iter().any(|&(a, b)| a == nd.result && m.is_const(b, 1.0)));
                if !one_plus || !m.single_use(s) {
                    continue;
                }
                // The outer product {x, 0.5, s}, found by walking up to two Mul users from s.
                if let Some((y, extra)) = outer_product(&m, s, x) {
                    found.push((y, x, form, inner_nodes + 2 + extra));
                }
            }
        }
        let count = found.len();
        for (y, x, approx, nodes) in found {
            replace(g, y, Op::Gelu { approx }, vec![x]);
            g.patterns.push(Pattern { kind: PatternKind::Gelu(approx), at: y, nodes });
        }
        count
    }
}

/// `x / √2` or `x · (1/√2)` → `x`.
fn erf_arg(m: &Matcher, v: Value) -> Option<Value> {
    let n = m.def(v)?;
    match n.op {
        Op::Div if m.is_const(n.args[1], std::f64::consts::SQRT_2) => Some(n.args[0]),
        Op::Mul => m
            .operands(v, |o| matches!(o, Op::Mul))?
            .into_iter()
            .find(|&(_, c)| m.is_const(c, std::f64::consts::FRAC_1_SQRT_2))
            .map(|(x, _)| x),
        _ => None,
    }
}

/// `√(2/π) · (x + 0.044715 · x³)` → (`x`, nodes covered).
fn tanh_arg(m: &Matcher, v: Value) -> Option<(Value, usize)> {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let (inner, _) =
        m.operands(v, |o| matches!(o, Op::Mul))?.into_iter().find(|&(_, c)| m.is_const(c, k))?;
    if !m.single_use(inner) {
        return None;
    }
    for (x, cube_term) in m.operands(inner, |o| matches!(o, Op::Add))? {
        let Some((cube, _)) = m
            .operands(cube_term, |o| matches!(o, Op::Mul))
            .and_then(|p| p.into_iter().find(|&(_, c)| m.is_const(c, 0.044715)))
        else {
            continue;
        };
        let is_cube = match m.def(cube) {
            Some(n) if matches!(n.op, Op::Pow) => n.args[0] == x && m.is_const(n.args[1], 3.0),
            Some(n) if matches!(n.op, Op::Mul) => {
                let leaves = m.product_leaves(cube, 2);
                leaves.len() == 3 && leaves.iter().all(|&l| l == x)
            }
            _ => false,
        };
        if is_cube && m.single_use(cube) && m.single_use(cube_term) {
            return Some((x, 5));
        }
    }
    None
}

/// The `Mul` node, at most two levels above `s`, whose product tree is exactly {x, 0.5, s}.
fn outer_product(m: &Matcher, s: Value, x: Value) -> Option<(Value, usize)> {
    let mut frontier = vec![s];
    for level in 1..=2 {
        let mut next = Vec::new();
        for v in frontier {
            for u in m.users(v) {
                let nd = &m.g.nodes[u];
                if !matches!(nd.op, Op::Mul) {
                    continue;
                }
                let leaves = m.product_leaves(nd.result, 2);
                let has =
                    |pred: &dyn Fn(Value) -> bool| leaves.iter().filter(|&&l| pred(l)).count() == 1;
                if leaves.len() == 3
                    && has(&|l| l == s)
                    && has(&|l| l == x)
                    && has(&|l| m.is_const(l, 0.5))
                {
                    return Some((nd.result, level));
                }
                if m.single_use(nd.result) {
                    next.push(nd.result);
                }
            }
        }
        frontier = next;
    }
    None
}
