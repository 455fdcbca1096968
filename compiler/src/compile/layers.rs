//! Layer attribution for cost reports and calibration keys: exporters name weights by layer
//! (`encoder.layer.3.…`, `h.3.…`) but often not the nodes (`node_MatMul_48`). A node keeps
//! the layer it was given (a generation window copies its source's), else takes the one its
//! own name says, else the layer of the weights it reads, else of its arguments (the highest);
//! it is recorded in the node's provenance.

use crate::ir::provenance::layer_in_name as layer_of_name;
use crate::ir::{Graph, Value, ValueDef};
use cranelift_entity::SecondaryMap;

/// Sets every node's provenance layer.
pub fn assign_layers(g: &mut Graph) {
    let mut layer: SecondaryMap<Value, Option<u32>> = SecondaryMap::with_capacity(g.values.len());
    for (v, d) in g.values.iter() {
        if let ValueDef::Weight(_) = d.def {
            layer[v] = layer_of_name(&d.name);
        }
    }
    for &n in &g.order.clone() {
        let nd = &g.nodes[n];
        let own = nd.prov.layer.or_else(|| layer_of_name(&nd.name));
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
        g.nodes[n].prov.layer = l;
    }
}
