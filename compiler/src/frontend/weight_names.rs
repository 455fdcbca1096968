//! Readable names for the anonymous parameters of ONNX exports.
//!
//! The dynamo exporter stores each `nn.Linear` weight pre-transposed under a generated name
//! (`val_49`), while its bias keeps the module path (`…attention.self.query.bias`). A DSL model
//! that loads an export's weights names parameters by module path, so `export-weights` names
//! such a matrix after the bias it is added to: `…query.weight`, laid out `[in, out]` as the
//! graph multiplies it (`x @ w`), which is the transpose of PyTorch's `[out, in]`.

use crate::ir::{Graph, Node, Op, Value, ValueDef};
use std::collections::{HashMap, HashSet};

/// Generated-looking names: no module path (`val_49`, `onnx::MatMul_123`, `_v_12`).
fn is_anonymous(name: &str) -> bool {
    !name.contains('.') || name.starts_with("onnx::")
}

/// For each anonymous weight `w` used only as the right operand of a `MatMul` whose only use is
/// an `Add` of a weight named `P.bias`, the name `P.weight` (when no other weight has it).
pub fn descriptive_names(g: &Graph) -> HashMap<Value, String> {
    let uses = g.use_counts();
    let taken: HashSet<&str> = g.weights().iter().map(|&w| g.values[w].name.as_str()).collect();
    let mut users: HashMap<Value, Vec<Node>> = HashMap::new();
    for &n in &g.order {
        for &a in &g.nodes[n].args {
            users.entry(a).or_default().push(n);
        }
    }
    let mut out = HashMap::new();
    let mut given: HashSet<String> = HashSet::new();
    for &n in &g.order {
        let nd = &g.nodes[n];
        if !matches!(nd.op, Op::MatMul) || nd.args.len() != 2 {
            continue;
        }
        let w = nd.args[1];
        let wd = &g.values[w];
        if !matches!(wd.def, ValueDef::Weight(_)) || !is_anonymous(&wd.name) || uses[w] != 1 {
            continue;
        }
        let Some([add]) = users.get(&nd.result).map(Vec::as_slice) else { continue };
        let add = &g.nodes[*add];
        if !matches!(add.op, Op::Add) {
            continue;
        }
        let Some(bias) = add.args.iter().find(|&&a| a != nd.result) else { continue };
        let bd = &g.values[*bias];
        let Some(prefix) = bd.name.strip_suffix(".bias") else { continue };
        if !matches!(bd.def, ValueDef::Weight(_)) {
            continue;
        }
        let name = format!("{prefix}.weight");
        if !taken.contains(name.as_str()) && given.insert(name.clone()) {
            out.insert(w, name);
        }
    }
    out
}

/// Every weight of `g` under the name `export-weights` gives it (see [`descriptive_names`]),
/// sorted by name.
pub fn exported_weights(g: &Graph) -> Vec<(String, crate::ir::Tensor)> {
    let renamed = descriptive_names(g);
    let mut out: Vec<(String, crate::ir::Tensor)> = g
        .values
        .iter()
        .filter_map(|(v, vd)| match &vd.def {
            ValueDef::Weight(t) => {
                Some((renamed.get(&v).cloned().unwrap_or_else(|| vd.name.clone()), (**t).clone()))
            }
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
