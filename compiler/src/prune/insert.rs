//! Inserts the pruning points: per cut, `keep = prune_keep(probs)`, each crossing value
//! compacted by `keep`, then `shrink`, whose results replace the crossing values after the
//! point. The nodes go right before the point's first node, so the order stays valid.

use super::cuts::Cut;
use super::{PruneConfig, PruneError};
use crate::ir::{Graph, Op, Provenance, Value};
use std::collections::HashMap;

/// Inserts every cut of `cuts` (positions in `g.order` as [`super::cuts::find`] gave them).
pub fn insert(g: &mut Graph, cuts: &[Cut], cfg: &PruneConfig) -> Result<(), PruneError> {
    let shape = |node: &str| {
        let node = node.to_string();
        move |error| PruneError::Shape { node, error }
    };
    // Anchors by node, so earlier insertions do not move later points.
    let anchors: Vec<Option<crate::ir::Node>> =
        cuts.iter().map(|c| g.order.get(c.at).copied()).collect();
    // A value crossing several points (the attention mask crosses every one) is read after
    // an earlier point as that point's kept rows: a later point compacts those, not the
    // original, and rewires their uses.
    let mut latest: HashMap<Value, Value> = HashMap::new();
    for (c, anchor) in cuts.iter().zip(anchors) {
        let theta = cfg.theta(c.layer).ok_or(PruneError::CutWithoutThreshold { layer: c.layer })?;
        let before = g.order.len();
        let name = format!("layer.{}.prune", c.layer);
        g.cursor = Provenance { site: Some("prune".into()), ..Provenance::default() };
        let node = format!("{name}::prune/keep");
        let keep = g
            .add_node(
                &node,
                Op::PruneKeep { axis: c.key_axis, theta, protect: cfg.protect },
                &[c.probs],
                &format!("{name}.keep"),
            )
            .map_err(shape(&node))?;
        let sources: Vec<(Value, Value, usize)> = c
            .crossing
            .iter()
            .map(|&(v, axis)| (v, latest.get(&v).copied().unwrap_or(v), axis))
            .collect();
        // Its own tag, so that a run's time splits into the keep decision and the compaction.
        g.cursor = Provenance { site: Some("compact".into()), ..Provenance::default() };
        let mut compacted = Vec::new();
        for &(_, src, axis) in &sources {
            let vn = g.values[src].name.clone();
            let node = format!("{name}::prune/compact");
            let x = g
                .add_node(&node, Op::Compact { axis }, &[src, keep], &format!("{vn}.compact"))
                .map_err(shape(&node))?;
            compacted.push(x);
        }
        // (what the uses after the point read now, what they read instead)
        let mut shrunk: Vec<(Value, Value)> = Vec::new();
        for (&(v, src, _), &x) in sources.iter().zip(&compacted) {
            let vn = g.values[v].name.clone();
            let node = format!("{name}::prune/shrink");
            let s = g
                .add_node(&node, Op::Shrink, &[x, keep], &format!("{vn}.kept"))
                .map_err(shape(&node))?;
            shrunk.push((src, s));
            latest.insert(v, s);
        }
        let new: Vec<_> = g.order.drain(before..).collect();
        let pos = match anchor {
            Some(a) => g
                .order
                .iter()
                .position(|&m| m == a)
                .ok_or(PruneError::AnchorVanished { layer: c.layer })?,
            None => g.order.len(),
        };
        // Uses after the point read the kept tokens.
        let after: Vec<_> = g.order[pos..].to_vec();
        for nd in after {
            for a in g.nodes[nd].args.iter_mut() {
                if let Some(&(_, s)) = shrunk.iter().find(|(v, _)| v == a) {
                    *a = s;
                }
            }
        }
        g.order.splice(pos..pos, new);
    }
    g.cursor = Provenance::default();
    Ok(())
}
