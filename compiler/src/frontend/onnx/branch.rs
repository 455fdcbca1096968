//! `If` with a condition known at import: the branch taken is imported in place of the node.
//!
//! A secret-shared program has no data-dependent control flow, so veil compiles one branch.
//! The condition must fold to a constant, which it does when it comes from constants or from
//! an input fixed at import (Optimum's merged decoders take `use_cache_branch`: fixed with
//! `--branch use_cache_branch=false` it is the decoder without past, `=true` the decoder with
//! past); a condition computed from data is refused, naming the inputs it depends on.

use super::context::Cx;
use super::error::ImportError;
use crate::ir::Value;
use std::collections::HashSet;
use veil_onnx_proto::{GraphProto, NodeProto};

/// The `then_branch`/`else_branch` subgraphs of an `If` node (either may be absent in a
/// malformed file).
pub fn branches(n: &NodeProto) -> impl Iterator<Item = &GraphProto> {
    n.attribute
        .iter()
        .filter(|a| matches!(a.name.as_deref(), Some("then_branch" | "else_branch")))
        .filter_map(|a| a.g.as_ref())
}

/// Imports the branch of `If` node `n` that its constant condition selects, and returns the
/// branch's outputs (the node's outputs, in order).
pub(crate) fn inline_if<'a>(
    cx: &mut Cx<'a>,
    n: &'a NodeProto,
    registry: &super::Builders,
) -> Result<Vec<Value>, ImportError> {
    let cond = cx.input(0)?;
    let Some(t) = cx.const_of(cond) else {
        let inputs = graph_inputs_behind(cx, cond);
        let hint = match inputs.as_slice() {
            [] => "it is computed from the model's weights".to_string(),
            names => format!(
                "it depends on the input{} {}: fix {} with --branch NAME=true|false (e.g. `--branch {}=false` for a merged decoder without past, `=true` with past)",
                if names.len() == 1 { "" } else { "s" },
                names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
                if names.len() == 1 { "it" } else { "them" },
                names[0]
            ),
        };
        return Err(cx.err(format!(
            "its condition `{}` is not known at compile time, and a two-party program takes one branch: {hint}",
            cx.g.values[cond].name
        )));
    };
    if t.numel() != 1 {
        return Err(cx.err(format!("the condition must be one value, it has shape {:?}", t.shape)));
    }
    let which = if t.get_f64(0) != 0.0 { "then_branch" } else { "else_branch" };
    let g = n
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(which))
        .and_then(|a| a.g.as_ref())
        .ok_or_else(|| cx.err(format!("attribute `{which}` (a graph) is required")))?;
    let node_name = cx.node_name.clone();
    for init in &g.initializer {
        let name = init.name.clone().unwrap_or_default();
        let tensor = super::tensor::from_proto(init).map_err(|e| cx.err(e.to_string()))?;
        let v = super::initializer(&mut cx.g, &name, tensor);
        cx.names.insert(name, v);
    }
    super::import_nodes(cx, &g.node, registry)?;
    cx.node = Some(n);
    cx.node_name = node_name;
    let outs: Result<Vec<Value>, ImportError> = g
        .output
        .iter()
        .map(|o| {
            let name = o.name.clone().unwrap_or_default();
            cx.names.get(&name).copied().ok_or_else(|| {
                cx.err(format!("{which} output `{name}` is never computed in the branch"))
            })
        })
        .collect();
    let outs = outs?;
    if outs.len() < cx.num_outputs() {
        return Err(cx.err(format!(
            "{which} has {} outputs, the node {}",
            outs.len(),
            cx.num_outputs()
        )));
    }
    Ok(outs)
}

/// The graph inputs `v` is computed from (for the message when a condition is not constant).
fn graph_inputs_behind(cx: &Cx, v: Value) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut stack = vec![v];
    let mut found = Vec::new();
    while let Some(x) = stack.pop() {
        if !seen.insert(x) {
            continue;
        }
        if cx.g.inputs.contains(&x) {
            found.push(cx.g.values[x].name.clone());
        }
        if let Some(p) = cx.g.producer(x) {
            stack.extend(cx.g.nodes[p].args.iter().copied());
        }
    }
    found.sort();
    found
}
