//! `widen_floats`: float16 and bfloat16 values retyped to float32 before lowering. In fixed
//! point every real has the same representation, so a `Cast` between float types of secret
//! data is the identity and the half-precision rounding onnxruntime does is not emulated (the
//! plaintext reference, which keeps the model's types, does emulate it). Graph inputs keep
//! their declared type: a cast to float32 after each (the client's, so free) takes it in.

use crate::ir::{DType, Graph, Op, Tensor, ValueDef};
use std::sync::Arc;

fn half(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

/// Retypes every half-precision float in `g` to float32. Returns how many values changed.
pub fn widen_floats(g: &mut Graph) -> usize {
    let mut count = 0;
    for n in g.order.clone() {
        if let Op::Cast { to } = &mut g.nodes[n].op {
            if half(*to) {
                *to = DType::F32;
                count += 1;
            }
        }
    }
    let inputs = g.inputs.clone();
    for v in g.values.keys().collect::<Vec<_>>() {
        if !half(g.values[v].ty.dtype) || inputs.contains(&v) {
            continue;
        }
        count += 1;
        let vd = &mut g.values[v];
        vd.ty.dtype = DType::F32;
        // Half-precision data is held as f32 already; only the declared dtype changes.
        let retype = |t: &Arc<Tensor>| Arc::new(Tensor { dtype: DType::F32, ..(**t).clone() });
        match &vd.def {
            ValueDef::Const(t) => vd.def = ValueDef::Const(retype(t)),
            ValueDef::Weight(t) => vd.def = ValueDef::Weight(retype(t)),
            _ => {}
        }
    }
    let half_inputs: Vec<_> = inputs.into_iter().filter(|&v| half(g.values[v].ty.dtype)).collect();
    for v in half_inputs {
        count += 1;
        let name = format!("{}.f32", g.values[v].name);
        let before = g.order.clone();
        let Ok(w) = g.add_node(&name, Op::Cast { to: DType::F32 }, &[v], &name) else { continue };
        g.replace_uses(v, w);
        // The cast must run first, before the nodes that now read it.
        let cast = g.producer(w).expect("a node result");
        g.nodes[cast].args = vec![v];
        g.order = std::iter::once(cast).chain(before).collect();
    }
    count
}
