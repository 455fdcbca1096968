//! Where the pruning points go. Token axes are the axes whose size follows the sequence
//! length: the model is imported at two lengths and compared value by value.

use super::PruneError;
use crate::ir::{Graph, Op, Value, ValueDef};
use std::collections::HashMap;

/// One pruning point.
#[derive(Clone, Debug, PartialEq)]
pub struct Cut {
    /// Which attention layer (index among the attention softmaxes).
    pub layer: usize,
    /// The attention probabilities (the softmax's result).
    pub probs: Value,
    /// Their key axis.
    pub key_axis: usize,
    /// The position in `order` of the first node after the point.
    pub at: usize,
    /// Values defined before the point and used after it that carry the token axis, with it.
    pub crossing: Vec<(Value, usize)>,
}

/// A possible point: its crossing elements, position and crossing values.
type Candidate = (usize, usize, Vec<(Value, usize)>);

/// Token axes of every value: where `a` (at length `n`) and `b` (at `n − 1`) differ.
fn token_axes(a: &Graph, b: &Graph, n: usize) -> Result<HashMap<Value, Vec<usize>>, PruneError> {
    let mut out = HashMap::new();
    for (v, va) in a.values.iter() {
        let vb = &b.values[v];
        let (sa, sb) = (&va.ty.shape, &vb.ty.shape);
        if sa.len() != sb.len() {
            return Err(PruneError::RankChanges { value: va.name.clone() });
        }
        let axes: Vec<usize> = (0..sa.len()).filter(|&i| sa[i] != sb[i]).collect();
        if axes.iter().any(|&i| sa[i] != n || sb[i] + 1 != n) {
            out.insert(v, vec![usize::MAX]);
        } else if !axes.is_empty() {
            out.insert(v, axes);
        }
    }
    Ok(out)
}

/// Checks that `b` is `a` up to the sequence length: same nodes, operators and arguments.
pub fn same_structure(a: &Graph, b: &Graph) -> Result<(), PruneError> {
    if a.order.len() != b.order.len() || a.values.len() != b.values.len() {
        return Err(PruneError::NodeCount { a: a.order.len(), b: b.order.len() });
    }
    for (&na, &nb) in a.order.iter().zip(&b.order) {
        let (x, y) = (&a.nodes[na], &b.nodes[nb]);
        if na != nb || x.op.name() != y.op.name() || x.args != y.args || x.result != y.result {
            return Err(PruneError::NodeDiffers { node: x.name.clone() });
        }
    }
    Ok(())
}

/// The axis along which node `nd` normalises its result to sum to one: a softmax, or the
/// form `--nonlinear smu` rewrites it to, `y · 1/Σ_axis y` (`smu_rewrite`).
fn normalised_axis(g: &Graph, nd: crate::ir::Node) -> Option<usize> {
    let node = &g.nodes[nd];
    match node.op {
        Op::Softmax { axis } => return Some(axis),
        Op::Mul => {}
        _ => return None,
    }
    let of = |v: Value| g.producer(v).map(|p| &g.nodes[p]);
    let [y, r] = node.args[..] else { return None };
    // y · recip(sum(y)) in either order.
    [(y, r), (r, y)].into_iter().find_map(|(y, r)| {
        let recip = of(r).filter(|n| matches!(n.op, Op::Reciprocal))?;
        let sum = of(recip.args[0])?;
        match &sum.op {
            Op::ReduceSum { axes, keepdims: true } if sum.args[0] == y && axes.len() == 1 => {
                Some(axes[0])
            }
            _ => None,
        }
    })
}

/// The pruning points of `g` (at length `n`; `shorter` is the same model at `n − 1`) for the
/// layers `wanted` (indices among the attention softmaxes; None: every one).
pub fn find(
    g: &Graph,
    shorter: &Graph,
    n: usize,
    wanted: Option<&[usize]>,
) -> Result<Vec<Cut>, PruneError> {
    same_structure(g, shorter)?;
    let axes = token_axes(g, shorter, n)?;
    if axes.is_empty() {
        return Err(PruneError::FixedLength { n });
    }
    for &o in &g.outputs {
        if axes.contains_key(&o) {
            return Err(PruneError::OutputTokenAxis { output: g.values[o].name.clone() });
        }
    }
    // Attention softmaxes: over a token axis, of a value with two.
    let mut attn = Vec::new();
    for (pos, &nd) in g.order.iter().enumerate() {
        let node = &g.nodes[nd];
        if let Some(axis) = normalised_axis(g, nd) {
            let ax = axes.get(&node.result).cloned().unwrap_or_default();
            if ax.len() == 2 && ax.contains(&axis) {
                attn.push((pos, node.result, axis));
            }
        }
    }
    if attn.is_empty() {
        return Err(PruneError::NoAttention);
    }
    let every: Vec<usize> = (0..attn.len()).collect();
    let wanted = wanted.unwrap_or(&every);
    if let Some(&bad) = wanted.iter().find(|&&l| l >= attn.len()) {
        return Err(PruneError::NoSuchLayer { layer: bad, count: attn.len() });
    }
    // Last use of every value, by position.
    let mut last: HashMap<Value, usize> = HashMap::new();
    for (pos, &nd) in g.order.iter().enumerate() {
        for &a in &g.nodes[nd].args {
            last.insert(a, pos);
        }
    }
    // Where each input (0) and result is defined; ordered, so that the first offending value
    // an error names does not depend on hashing.
    let pos_of: HashMap<_, usize> = g.order.iter().enumerate().map(|(i, &nd)| (nd, i)).collect();
    let def_pos: std::collections::BTreeMap<Value, usize> = g
        .values
        .iter()
        .filter_map(|(v, vd)| match vd.def {
            ValueDef::Result(nd) => pos_of.get(&nd).map(|&p| (v, p)),
            ValueDef::Input => Some((v, 0)),
            _ => None,
        })
        .collect();
    let mut cuts = Vec::new();
    for &layer in wanted {
        let (spos, probs, key_axis) = attn[layer];
        let end = attn.get(layer + 1).map_or(g.order.len(), |a| a.0);
        // (crossing elements, position, crossing values)
        let mut best: Option<Candidate> = None;
        let mut why = String::from("no position after the attention");
        for at in spos + 1..=end {
            let mut crossing = Vec::new();
            let mut size = 0usize;
            let mut ok = true;
            for (&v, &dp) in &def_pos {
                if dp >= at || last.get(&v).is_none_or(|&l| l < at) {
                    continue;
                }
                let Some(ax) = axes.get(&v) else { continue };
                let ty = g.ty(v);
                if ax.len() != 1 || ax[0] == usize::MAX || ty.shape[..ax[0]].iter().any(|&d| d != 1)
                {
                    ok = false;
                    why = format!(
                        "`{}` ({}) is live there and its token axis is not its outermost",
                        g.values[v].name, ty
                    );
                    break;
                }
                size += ty.numel();
                crossing.push((v, ax[0]));
            }
            if ok && !crossing.is_empty() && best.as_ref().is_none_or(|b| size < b.0) {
                crossing.sort();
                best = Some((size, at, crossing));
            }
        }
        let Some((_, at, crossing)) = best else {
            return Err(PruneError::NoPoint { layer, why });
        };
        cuts.push(Cut { layer, probs, key_axis, at, crossing });
    }
    Ok(cuts)
}

/// Small attention graphs for the tests of pruning points and of calibration over them.
#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::ir::{DType, TensorType};
    use crate::passes::Pass;

    /// Two attentions over `n` tokens of width 4, `x ← softmax(x·xᵀ)·x`, then the sum over
    /// the tokens (an output without a token axis); with `--nonlinear smu`'s rewrite when `smu`.
    pub fn attention(n: usize, smu: bool) -> Graph {
        let mut g = Graph::new("t");
        let mut x = g.add_input("x", TensorType::new(DType::F32, vec![n, 4]));
        for (l, name) in ["attn", "attn2"].into_iter().enumerate() {
            let at = |k: &str| format!("{k}{l}");
            let xt = g.add_node(&at("xt"), Op::Transpose { perm: vec![1, 0] }, &[x], &at("xt"));
            let s = g.add_node(&at("scores"), Op::MatMul, &[x, xt.unwrap()], &at("s")).unwrap();
            let p = g.add_node(name, Op::Softmax { axis: 1 }, &[s], &at("p")).unwrap();
            x = g.add_node(&at("ctx"), Op::MatMul, &[p, x], &at("c")).unwrap();
        }
        let sum = Op::ReduceSum { axes: vec![0], keepdims: false };
        let y = g.add_node("pool", sum, &[x], "y").unwrap();
        g.outputs.push(y);
        if smu {
            crate::passes::SmuRewrite { alpha: 0.0, mu: 1.0 }.run(&mut g);
            g.remove_dead_nodes();
        }
        g
    }

    #[test]
    fn the_smu_form_of_an_attention_softmax_is_a_pruning_point() {
        for smu in [false, true] {
            let (a, b) = (attention(8, smu), attention(7, smu));
            let cuts = find(&a, &b, 8, None).expect("a point per attention");
            assert_eq!(cuts.len(), 2);
            let probs = a.producer(cuts[0].probs).map(|nd| a.nodes[nd].name.clone());
            let want = if smu { "attn::softmax/scale" } else { "attn" };
            assert_eq!(probs.as_deref(), Some(want));
            assert_eq!(cuts[0].key_axis, 1);
        }
        // The scores scaled by 1/Σ of other values do not sum to one: not attention.
        let mut g = attention(8, true);
        let mut h = attention(7, true);
        for g in [&mut g, &mut h] {
            for l in 0..2 {
                let name = format!("s{l}");
                let s = g.values.iter().find(|(_, v)| v.name == name).map(|(v, _)| v).unwrap();
                let scale = ["attn::softmax/scale", "attn2::softmax/scale"][l];
                for (_, nd) in g.nodes.iter_mut() {
                    if nd.name == scale {
                        nd.args[0] = s;
                    }
                }
            }
        }
        assert!(matches!(find(&g, &h, 8, None), Err(PruneError::NoAttention)));
    }
}
