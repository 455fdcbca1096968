//! The IR verifier: structural invariants every pass must preserve.

use super::graph::{Graph, ValueDef};
use super::shape;
use cranelift_entity::SecondaryMap;
use std::fmt;

/// Everything wrong with a graph, one message per problem. A verifier failure after a pass is
/// always a bug in that pass.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyErrors(pub Vec<String>);

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for VerifyErrors {}

/// Checks: ids in range; every argument defined before use; each node's result type equals
/// shape inference; constants' data match their types; outputs are defined.
pub fn verify(g: &Graph) -> Result<(), VerifyErrors> {
    let mut errs = Vec::new();
    let mut defined: SecondaryMap<super::graph::Value, bool> =
        SecondaryMap::with_capacity(g.values.len());
    for (v, d) in g.values.iter() {
        match &d.def {
            ValueDef::Input => {}
            ValueDef::Const(t) | ValueDef::Weight(t) => {
                defined[v] = true;
                if t.ty() != d.ty || t.numel() != d.ty.numel() {
                    errs.push(format!("value `{}` declares {} but holds {}", d.name, d.ty, t.ty()));
                }
            }
            ValueDef::Result(_) => {}
        }
    }
    for &i in &g.inputs {
        if !g.values.is_valid(i) {
            errs.push(format!("graph input {i} does not exist"));
            continue;
        }
        defined[i] = true;
    }
    for &n in &g.order {
        if !g.nodes.is_valid(n) {
            errs.push(format!("node {n} in the order does not exist"));
            continue;
        }
        let nd = &g.nodes[n];
        for &a in &nd.args {
            if !g.values.is_valid(a) {
                errs.push(format!("node `{}` uses value {a}, which does not exist", nd.name));
            } else if !defined[a] {
                errs.push(format!(
                    "node `{}` uses `{}` before it is defined",
                    nd.name, g.values[a].name
                ));
            }
        }
        if !g.values.is_valid(nd.result) {
            errs.push(format!(
                "node `{}` defines value {}, which does not exist",
                nd.name, nd.result
            ));
            continue;
        }
        if defined[nd.result] {
            errs.push(format!("node `{}` redefines `{}`", nd.name, g.values[nd.result].name));
        }
        defined[nd.result] = true;
        if !matches!(g.values[nd.result].def, ValueDef::Result(m) if m == n) {
            errs.push(format!(
                "value `{}` does not record node `{}` as its definition",
                g.values[nd.result].name, nd.name
            ));
        }
        if nd.args.iter().all(|&a| g.values.is_valid(a)) {
            let tys: Vec<_> = nd.args.iter().map(|&a| &g.values[a].ty).collect();
            match shape::infer(&nd.op, &tys) {
                Ok(t) if t == g.values[nd.result].ty => {}
                Ok(t) => errs.push(format!(
                    "node `{}` ({}) computes {} but its result `{}` is declared {}",
                    nd.name,
                    nd.op.name(),
                    t,
                    g.values[nd.result].name,
                    g.values[nd.result].ty
                )),
                Err(e) => errs.push(format!("node `{}`: {e}", nd.name)),
            }
        }
    }
    for &o in &g.outputs {
        if !g.values.is_valid(o) || !defined[o] {
            errs.push(format!("graph output {o} is not defined"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors(errs))
    }
}
