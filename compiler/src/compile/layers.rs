//! Layer attribution for cost reports: exporters name weights by layer
//! (`encoder.layer.3.…`, `h.3.…`) but often not the nodes (`node_MatMul_48`). A node takes the
//! layer of the weights it reads, else of its arguments (the highest), and a node whose own
//! name has no layer gets a `layer.N/` prefix so the backend's tags find it.

use crate::backend::lower::tag_of;
use crate::ir::{Graph, Op, Value, ValueDef};
use cranelift_entity::SecondaryMap;

fn layer_of_name(name: &str) -> Option<u32> {
    let layer = tag_of(name, &Op::Add).0;
    let layer = layer.rsplit(':').next().unwrap_or_default();
    layer.strip_prefix("layer").and_then(|n| n.parse().ok())
}

/// Prefixes node names with their layer where the name does not say it.
pub fn assign_layers(g: &mut Graph) {
    let mut layer: SecondaryMap<Value, Option<u32>> = SecondaryMap::with_capacity(g.values.len());
    for (v, d) in g.values.iter() {
        if let ValueDef::Weight(_) = d.def {
            layer[v] = layer_of_name(&d.name);
        }
    }
    for &n in &g.order.clone() {
        let nd = &g.nodes[n];
        let own = layer_of_name(&nd.name);
        let weights: Vec<Value> = nd
            .args
            .iter()
            .copied()
            .filter(|&a| matches!(g.values[a].def, ValueDef::Weight(_)))
            .collect();
        let l = own.or_else(|| {
            if weights.is_empty() {
                nd.args.iter().filter_map(|&a| layer[a]).max()
            } else {
                weights.iter().filter_map(|&a| layer[a]).max()
            }
        });
        let r = nd.result;
        layer[r] = l;
        if own.is_none() {
            if let Some(l) = l {
                let name = format!("layer.{l}/{}", g.nodes[n].name);
                g.nodes[n].name = name;
            }
        }
    }
}
