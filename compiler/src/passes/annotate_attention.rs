//! `annotate_attention`: records each scaled dot-product attention block
//! `softmax(Q·Kᵀ·scale [+ mask]) · V` as a pattern (the nodes stay as they are). Token pruning
//! and the cost report use it.

use super::matching::Matcher;
use super::Pass;
use crate::ir::{Graph, Op, Pattern, PatternKind, Value};

/// The pass.
pub struct AnnotateAttention;

impl Pass for AnnotateAttention {
    fn name(&self) -> &'static str {
        "annotate_attention"
    }

    fn run(&mut self, g: &mut Graph) -> usize {
        let mut found = Vec::new();
        {
            let m = Matcher::new(g);
            for &n in &g.order {
                let nd = &g.nodes[n];
                if !matches!(nd.op, Op::Softmax { .. })
                    || g.patterns.iter().any(|p| p.at == nd.result)
                {
                    continue;
                }
                let mut v = nd.args[0];
                let mut masked = false;
                let mut nodes = 2;
                if let Some(p) = m.operands(v, |o| matches!(o, Op::Add)) {
                    if let Some((s, _)) = p.into_iter().find(|&(s, _)| is_scores(&m, s)) {
                        v = s;
                        masked = true;
                        nodes += 1;
                    }
                }
                if !is_scores(&m, v) {
                    continue;
                }
                // The probabilities must feed a product with V.
                let Some(pv) = m.users(nd.result).into_iter().find(|&u| {
                    matches!(g.nodes[u].op, Op::MatMul) && g.nodes[u].args[0] == nd.result
                }) else {
                    continue;
                };
                let vdim = *g.ty(g.nodes[pv].args[1]).shape.last().unwrap_or(&0);
                let s = &g.ty(nd.result).shape;
                let r = s.len();
                let heads = if r >= 3 { s[r - 3] } else { 1 };
                found.push((
                    nd.result,
                    heads,
                    s[r.saturating_sub(2)],
                    s[r - 1],
                    vdim,
                    masked,
                    nodes + 2,
                ));
            }
        }
        let count = found.len();
        for (at, heads, q_len, kv_len, head_dim, masked, nodes) in found {
            g.patterns.push(Pattern {
                kind: PatternKind::Attention { heads, q_len, kv_len, head_dim, masked },
                at,
                nodes,
            });
        }
        count
    }
}

/// `Q·Kᵀ`, possibly scaled by a constant (`·c` or `/c`).
fn is_scores(m: &Matcher, v: Value) -> bool {
    let Some(n) = m.def(v) else { return false };
    match n.op {
        Op::MatMul => true,
        Op::Mul | Op::Div => {
            let (a, b) = (n.args[0], n.args[1]);
            let is_mm = |x: Value| m.def_op(x, |o| matches!(o, Op::MatMul)).is_some();
            (is_mm(a) && m.scalar(b).is_some())
                || (matches!(n.op, Op::Mul) && is_mm(b) && m.scalar(a).is_some())
        }
        _ => false,
    }
}
