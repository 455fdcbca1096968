//! The stable text form of a graph: the basis of `veil inspect` and of every IR snapshot.
//!
//! One line per node, values by name, types after a colon, the source node name in a trailing
//! comment. The output depends only on the graph's content and order, never on ids or hashing.

use super::graph::{Graph, PatternKind, ValueDef};
use super::op::{fmt_f64, GeluApprox};
use super::tensor::{Data, Tensor};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Quotes a value name for printing when it is not a plain identifier.
pub fn value_ref(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | ':' | '-'));
    if plain {
        format!("%{name}")
    } else {
        format!("%{name:?}")
    }
}

/// A short, deterministic rendering of constant data: the value for scalars, the first few
/// elements otherwise.
pub fn preview(t: &Tensor) -> String {
    const SHOW: usize = 6;
    let n = t.numel();
    let item = |i: usize| match &t.data {
        Data::F32(v) => fmt_f64(v[i] as f64),
        Data::F64(v) => fmt_f64(v[i]),
        Data::I64(v) => v[i].to_string(),
        Data::Bool(v) => v[i].to_string(),
    };
    if t.shape.is_empty() {
        return item(0);
    }
    let shown: Vec<String> = (0..n.min(SHOW)).map(item).collect();
    if n > SHOW {
        format!("[{}, …] ({n} elements)", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// Renders the graph's nodes section: one line per live node.
pub fn nodes_text(g: &Graph) -> String {
    let mut s = String::new();
    for &n in &g.order {
        let nd = &g.nodes[n];
        let r = &g.values[nd.result];
        let args: Vec<String> = nd.args.iter().map(|&a| value_ref(&g.values[a].name)).collect();
        write!(s, "  {}: {} = {} {}", value_ref(&r.name), r.ty, nd.op, args.join(", ")).unwrap();
        if !nd.name.is_empty() {
            write!(s, "  # {}", nd.name).unwrap();
        }
        if nd.prov != Default::default() {
            write!(s, "  @{}", nd.prov).unwrap();
        }
        s.push('\n');
    }
    s
}

/// Describes a recognised pattern in one line.
pub fn pattern_text(g: &Graph, p: &super::graph::Pattern) -> String {
    let what = match &p.kind {
        PatternKind::Gelu(GeluApprox::Erf) => "gelu (erf form)".to_string(),
        PatternKind::Gelu(GeluApprox::Tanh) => "gelu (tanh form, gelu_new)".to_string(),
        PatternKind::LayerNorm => "layer_norm".to_string(),
        PatternKind::Smu1 => "smu1".to_string(),
        PatternKind::Attention { heads, q_len, kv_len, head_dim, masked } => format!(
            "attention heads={heads} q_len={q_len} kv_len={kv_len} head_dim={head_dim}{}",
            if *masked { " masked" } else { "" }
        ),
    };
    format!("{what} at {} ({} nodes)", value_ref(&g.values[p.at].name), p.nodes)
}

/// The full text form of a graph.
pub fn graph_text(g: &Graph) -> String {
    let mut s = String::new();
    writeln!(s, "graph {:?}", g.name).unwrap();
    s.push_str("inputs:\n");
    for &i in &g.inputs {
        writeln!(s, "  {}: {}", value_ref(&g.values[i].name), g.values[i].ty).unwrap();
    }
    s.push_str("outputs:\n");
    for &o in &g.outputs {
        writeln!(s, "  {}: {}", value_ref(&g.values[o].name), g.values[o].ty).unwrap();
    }
    let weights = g.weights();
    let total: usize = weights.iter().map(|&w| g.values[w].ty.numel()).sum();
    writeln!(s, "weights: {} tensors, {} parameters", weights.len(), total).unwrap();
    for &w in &weights {
        writeln!(s, "  {}: {}", value_ref(&g.values[w].name), g.values[w].ty).unwrap();
    }
    s.push_str("consts:\n");
    for c in g.consts() {
        if let ValueDef::Const(t) = &g.values[c].def {
            writeln!(s, "  {}: {} = {}", value_ref(&g.values[c].name), g.values[c].ty, preview(t))
                .unwrap();
        }
    }
    s.push_str("nodes:\n");
    s.push_str(&nodes_text(g));
    s.push_str("patterns:\n");
    for p in &g.patterns {
        writeln!(s, "  {}", pattern_text(g, p)).unwrap();
    }
    s.push_str("histogram:\n");
    let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
    for &n in &g.order {
        *hist.entry(g.nodes[n].op.name()).or_default() += 1;
    }
    let mut rows: Vec<(&str, usize)> = hist.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (name, count) in rows {
        writeln!(s, "  {name:<18} {count}").unwrap();
    }
    s
}
