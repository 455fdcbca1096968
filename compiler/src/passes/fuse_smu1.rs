//! `fuse_smu1`: the SMU-1 activation `((1+a)·x + √(((1−a)·x)² + μ²)) / 2` → one `smu1` node.
//!
//! Recognised with or without the factors when a = 0, with `/2` or `·0.5`, and `(·)²` as
//! `Pow(·, 2)` or a product with itself. α and μ are read from the constants, so a model
//! fine-tuned with SMU-1 keeps its exact activation.

use super::matching::{replace, Matcher};
use super::Pass;
use crate::ir::{Graph, Op, Pattern, PatternKind, Value};

/// The pass.
pub struct FuseSmu1;

impl Pass for FuseSmu1 {
    fn name(&self) -> &'static str {
        "fuse_smu1"
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
        let count = found.len();
        for (y, x, alpha, mu) in found {
            replace(g, y, Op::Smu1 { alpha, mu }, vec![x]);
            g.patterns.push(Pattern { kind: PatternKind::Smu1, at: y, nodes: 7 });
        }
        count
    }
}

/// `c·x` or `x` → (x, c).
fn scaled(m: &Matcher, v: Value) -> (Value, f64) {
    if let Some(p) = m.operands(v, |o| matches!(o, Op::Mul)) {
        if let Some((x, c)) = p.into_iter().find(|&(_, c)| m.scalar(c).is_some()) {
            return (x, m.scalar(c).expect("checked"));
        }
    }
    (v, 1.0)
}

fn try_match(m: &Matcher, y: Value) -> Option<(Value, Value, f32, f32)> {
    let n = m.def(y)?;
    let sum = match n.op {
        Op::Div if m.is_const(n.args[1], 2.0) => n.args[0],
        Op::Mul => {
            m.operands(y, |o| matches!(o, Op::Mul))?
                .into_iter()
                .find(|&(_, c)| m.is_const(c, 0.5))?
                .0
        }
        _ => return None,
    };
    if !m.single_use(sum) {
        return None;
    }
    for (lin, root) in m.operands(sum, |o| matches!(o, Op::Add))? {
        let Some(sq) = m.def_op(root, |o| matches!(o, Op::Sqrt)) else { continue };
        let Some((sq_term, mu2)) = m
            .operands(sq.args[0], |o| matches!(o, Op::Add))
            .and_then(|p| p.into_iter().find(|&(_, c)| m.scalar(c).is_some()))
        else {
            continue;
        };
        let z = match m.def(sq_term) {
            Some(s) if matches!(s.op, Op::Pow) && m.is_const(s.args[1], 2.0) => s.args[0],
            Some(s) if matches!(s.op, Op::Mul) && s.args[0] == s.args[1] => s.args[0],
            _ => continue,
        };
        // The same value on both sides is SMU-1 with α = 0 of that value, even when it is
        // itself a scaled product (attention scores `(q·k)·0.125`).
        let ((x1, c1), (x2, c2)) =
            if lin == z { ((lin, 1.0), (z, 1.0)) } else { (scaled(m, lin), scaled(m, z)) };
        if x1 != x2 {
            continue;
        }
        let alpha = c1 - 1.0;
        if ((1.0 - alpha) - c2).abs() > 1e-3 * c2.abs().max(1e-6) {
            continue;
        }
        let mu2 = m.scalar(mu2)?;
        if mu2 <= 0.0 {
            continue;
        }
        return Some((y, x1, alpha as f32, mu2.sqrt() as f32));
    }
    None
}
