//! The client's plaintext part: the subgraph that depends only on the client's inputs and
//! public data, extended with the encodings the program needs (one-hot vectors of indices
//! that select rows of a private table). The client evaluates it with the reference evaluator
//! and feeds its outputs to the program as inputs.

use crate::backend::lower::ClientFeed;
use crate::backend::partition::{Partition, Vis};
use crate::ir::shape::ShapeError;
use crate::ir::{DType, Graph, Op, Tensor, Value, ValueDef};
use cranelift_entity::SecondaryMap;

/// Why the client's part could not be built: names the value or node.
#[derive(Debug, thiserror::Error)]
pub enum ClientGraphError {
    /// The client's part would read a weight (a partition bug or a leak).
    #[error("the client's part reads weight `{0}`, which the client does not have")]
    Weight(String),
    /// The client's part needs a value the client does not compute.
    #[error("the client's part needs `{0}`, which is not computed in the clear by the client")]
    NotClient(String),
    /// A copied or added node does not fit its arguments (a bug).
    #[error("node `{node}`: {error}")]
    Shape {
        /// The node.
        node: String,
        /// The shape error.
        error: ShapeError,
    },
}

fn shape_err(node: &str) -> impl FnOnce(ShapeError) -> ClientGraphError + '_ {
    move |error| ClientGraphError::Shape { node: node.to_string(), error }
}

/// Builds the client's graph: inputs are the model's inputs, outputs are the program inputs
/// named in `feeds` (in order) followed by the model outputs the client computes alone.
pub fn client_graph(
    g: &Graph,
    part: &Partition,
    feeds: &[(String, ClientFeed)],
    own_outputs: &[Value],
) -> Result<Graph, ClientGraphError> {
    let mut c = Graph::new(format!("{}.client", g.name));
    let mut map: SecondaryMap<Value, Option<Value>> = SecondaryMap::with_capacity(g.values.len());
    for &i in &g.inputs {
        map[i] = Some(c.add_input(&g.values[i].name, g.values[i].ty.clone()));
    }
    // Copy every client or public node in order; dead ones are removed at the end.
    for &n in &g.order {
        let nd = &g.nodes[n];
        if !matches!(part.vis[nd.result], Vis::Client | Vis::Public) {
            continue;
        }
        let mut args = Vec::new();
        for &a in &nd.args {
            args.push(copy_value(g, &mut c, &mut map, a)?);
        }
        let v = c
            .add_node(&nd.name, nd.op.clone(), &args, &g.values[nd.result].name)
            .map_err(shape_err(&nd.name))?;
        map[nd.result] = Some(v);
    }
    let mut outs = Vec::new();
    for (name, feed) in feeds {
        let v = match feed {
            ClientFeed::Value(v) => copy_value(g, &mut c, &mut map, *v)?,
            ClientFeed::OneHot(v, depth) => {
                let ids = copy_value(g, &mut c, &mut map, *v)?;
                one_hot(&mut c, ids, *depth, name)?
            }
        };
        outs.push(v);
    }
    for &o in own_outputs {
        outs.push(copy_value(g, &mut c, &mut map, o)?);
    }
    c.outputs = outs;
    c.remove_dead_nodes();
    Ok(c.compact())
}

fn copy_value(
    g: &Graph,
    c: &mut Graph,
    map: &mut SecondaryMap<Value, Option<Value>>,
    v: Value,
) -> Result<Value, ClientGraphError> {
    if let Some(m) = map[v] {
        return Ok(m);
    }
    let vd = &g.values[v];
    let nv = match &vd.def {
        ValueDef::Const(t) => c.add_const(&vd.name, (**t).clone()),
        ValueDef::Weight(_) => return Err(ClientGraphError::Weight(vd.name.clone())),
        _ => return Err(ClientGraphError::NotClient(vd.name.clone())),
    };
    map[v] = Some(nv);
    Ok(nv)
}

/// `one_hot(ids, depth)` as f32, with `ids` of integer type (negative ids count from the end,
/// as in ONNX Gather).
fn one_hot(c: &mut Graph, ids: Value, depth: usize, name: &str) -> Result<Value, ClientGraphError> {
    one_hot_nodes(c, ids, depth, name).map_err(shape_err(name))
}

fn one_hot_nodes(c: &mut Graph, ids: Value, depth: usize, name: &str) -> Result<Value, ShapeError> {
    let ty = c.ty(ids).clone();
    let mut shape = ty.shape.clone();
    shape.push(1);
    let ids64 = if ty.dtype == DType::I64 {
        ids
    } else {
        c.add_node(name, Op::Cast { to: DType::I64 }, &[ids], &format!("{name}.i64"))?
    };
    let col = c.add_node(name, Op::Reshape { shape }, &[ids64], &format!("{name}.col"))?;
    let range = c
        .add_const(&format!("{name}.range"), Tensor::i64(vec![depth], (0..depth as i64).collect()));
    let neg = c.add_const(&format!("{name}.depth"), Tensor::i64(vec![], vec![depth as i64]));
    let wrapped = c.add_node(name, Op::Sub, &[range, neg], &format!("{name}.range_neg"))?;
    let hit = c.add_node(name, Op::Equal, &[col, range], &format!("{name}.hit"))?;
    let hit_neg = c.add_node(name, Op::Equal, &[col, wrapped], &format!("{name}.hit_neg"))?;
    let any = c.add_node(name, Op::Or, &[hit, hit_neg], &format!("{name}.any"))?;
    c.add_node(name, Op::Cast { to: DType::F32 }, &[any], name)
}
