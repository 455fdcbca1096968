//! The graph: values (inputs, constants, weights, node results) and nodes in execution order.

use super::dtype::TensorType;
use super::op::{GeluApprox, Op};
use super::provenance::Provenance;
use super::shape;
use super::tensor::Tensor;
use cranelift_entity::{entity_impl, PrimaryMap, SecondaryMap};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// A tensor value in a [`Graph`].
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Value(u32);
entity_impl!(Value, "v");

/// An operator application in a [`Graph`].
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Node(u32);
entity_impl!(Node, "n");

/// Where a value comes from.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum ValueDef {
    /// A graph input, supplied at run time (by the client in MPC).
    Input,
    /// Public constant data baked into the model (shape plumbing, scales, masks).
    Const(Arc<Tensor>),
    /// A model parameter (an ONNX initializer or a DSL parameter); who may see it is decided
    /// by the partition pass, not here.
    Weight(Arc<Tensor>),
    /// The result of a node.
    Result(Node),
}

/// A value's name, static type and definition.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ValueData {
    /// Unique within the graph (the ONNX tensor name where there is one).
    pub name: String,
    /// Static dtype and shape.
    pub ty: TensorType,
    /// Where it comes from.
    pub def: ValueDef,
}

/// One node: an operator applied to values, defining one result value.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeData {
    /// Source name (ONNX node name or DSL binding); nodes made by an expansion get `.suffix`es.
    pub name: String,
    /// The operator.
    pub op: Op,
    /// Arguments, in operator order.
    pub args: Vec<Value>,
    /// The defined value.
    pub result: Value,
    /// Where the node comes from (layer, generation step, expansion site).
    pub prov: Provenance,
}

/// A recognised multi-node structure, recorded for the dump and for later passes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PatternKind {
    /// A GELU subgraph fused into one `gelu` node.
    Gelu(GeluApprox),
    /// A decomposed layer norm fused into one `layer_norm` node.
    LayerNorm,
    /// The SMU-1 expression fused into one `smu1` node.
    Smu1,
    /// Scaled dot-product attention: `softmax(Q·Kᵀ·scale [+ mask]) · V`, left unfused.
    Attention {
        /// Number of heads.
        heads: usize,
        /// Query length.
        q_len: usize,
        /// Key/value length.
        kv_len: usize,
        /// Per-head dimension.
        head_dim: usize,
        /// True when an additive mask is added to the scores.
        masked: bool,
    },
}

/// A recognised pattern: what, where (the pattern's result value), and how many nodes it spans.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Pattern {
    /// What was recognised.
    pub kind: PatternKind,
    /// The value the pattern produces (for attention, the softmax probabilities).
    pub at: Value,
    /// Number of source nodes the pattern covered.
    pub nodes: usize,
}

/// A static-shape tensor graph.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Graph {
    /// Model name.
    pub name: String,
    /// Every value.
    pub values: PrimaryMap<Value, ValueData>,
    /// Every node, including dead ones until [`Graph::compact`].
    pub nodes: PrimaryMap<Node, NodeData>,
    /// Execution order: a node's arguments are defined before it.
    pub order: Vec<Node>,
    /// Graph inputs, in declaration order.
    pub inputs: Vec<Value>,
    /// Graph outputs, in declaration order.
    pub outputs: Vec<Value>,
    /// Recognised patterns.
    pub patterns: Vec<Pattern>,
    /// The provenance nodes added now get (an expansion sets it to the expanded node's).
    #[serde(skip)]
    pub cursor: Provenance,
    // Ordered, so that a serialised graph (the client's part) is the same bytes every time.
    names: BTreeSet<String>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    /// A value name not used yet, based on `base`.
    pub fn unique_name(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "v" } else { base };
        if self.names.insert(base.to_string()) {
            return base.to_string();
        }
        for i in 1.. {
            let n = format!("{base}.{i}");
            if self.names.insert(n.clone()) {
                return n;
            }
        }
        unreachable!()
    }

    fn push_value(&mut self, name: &str, ty: TensorType, def: ValueDef) -> Value {
        let name = self.unique_name(name);
        self.values.push(ValueData { name, ty, def })
    }

    /// Declares a graph input.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> Value {
        let v = self.push_value(name, ty, ValueDef::Input);
        self.inputs.push(v);
        v
    }

    /// Adds public constant data.
    pub fn add_const(&mut self, name: &str, t: Tensor) -> Value {
        self.push_value(name, t.ty(), ValueDef::Const(Arc::new(t)))
    }

    /// Adds a model parameter.
    pub fn add_weight(&mut self, name: &str, t: Tensor) -> Value {
        self.push_value(name, t.ty(), ValueDef::Weight(Arc::new(t)))
    }

    /// Appends a node computing `op(args)`; its result name is `result_name` (made unique).
    /// Fails with the shape-inference error when the argument types do not fit `op`.
    pub fn add_node(
        &mut self,
        name: &str,
        op: Op,
        args: &[Value],
        result_name: &str,
    ) -> Result<Value, shape::ShapeError> {
        let tys: Vec<&TensorType> = args.iter().map(|&a| &self.values[a].ty).collect();
        let ty = shape::infer(&op, &tys)?;
        let node = self.nodes.next_key();
        let result = self.push_value(result_name, ty, ValueDef::Result(node));
        let n = self.nodes.push(NodeData {
            name: name.to_string(),
            op,
            args: args.to_vec(),
            result,
            prov: self.cursor.clone(),
        });
        self.order.push(n);
        Ok(result)
    }

    /// The static type of a value.
    pub fn ty(&self, v: Value) -> &TensorType {
        &self.values[v].ty
    }

    /// The node defining `v`, if it is a node result.
    pub fn producer(&self, v: Value) -> Option<Node> {
        match self.values[v].def {
            ValueDef::Result(n) => Some(n),
            _ => None,
        }
    }

    /// The constant data of `v`, if it is a public constant.
    pub fn const_data(&self, v: Value) -> Option<&Tensor> {
        match &self.values[v].def {
            ValueDef::Const(t) => Some(t),
            _ => None,
        }
    }

    /// Number of uses of each value by live nodes and graph outputs.
    pub fn use_counts(&self) -> SecondaryMap<Value, u32> {
        let mut uses = SecondaryMap::with_capacity(self.values.len());
        for &n in &self.order {
            for &a in &self.nodes[n].args {
                uses[a] += 1;
            }
        }
        for &o in &self.outputs {
            uses[o] += 1;
        }
        uses
    }

    /// Makes every live use of `old` (node arguments and graph outputs) refer to `new`.
    pub fn replace_uses(&mut self, old: Value, new: Value) {
        for &n in &self.order {
            for a in &mut self.nodes[n].args {
                if *a == old {
                    *a = new;
                }
            }
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
        for p in &mut self.patterns {
            if p.at == old {
                p.at = new;
            }
        }
    }

    /// Makes `new` take `old`'s place: every use, and its name (so a graph output keeps its
    /// name); `old` is renamed `<name>.replaced`.
    pub fn take_place(&mut self, old: Value, new: Value) {
        self.replace_uses(old, new);
        let name = std::mem::take(&mut self.values[old].name);
        self.values[old].name = format!("{name}.replaced");
        self.values[new].name = name;
    }

    /// Moves the nodes appended since the order had `len` entries to just before `n`, so a
    /// node's expansion runs where the node did.
    pub fn move_before(&mut self, len: usize, n: Node) {
        let new: Vec<_> = self.order.drain(len..).collect();
        let pos = self.order.iter().position(|&m| m == n).expect("the node is in the order");
        self.order.splice(pos..pos, new);
    }

    /// Removes nodes whose results no output depends on. Returns how many were removed.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let mut live: SecondaryMap<Value, bool> = SecondaryMap::with_capacity(self.values.len());
        for &o in &self.outputs {
            live[o] = true;
        }
        let mut keep = Vec::with_capacity(self.order.len());
        for &n in self.order.iter().rev() {
            let nd = &self.nodes[n];
            if live[nd.result] {
                for &a in &nd.args {
                    live[a] = true;
                }
                keep.push(n);
            }
        }
        keep.reverse();
        let removed = self.order.len() - keep.len();
        self.order = keep;
        self.patterns.retain(|p| live[p.at]);
        removed
    }

    /// Rebuilds the graph with only live nodes and the values they use, renumbered in
    /// execution order, so ids in dumps are dense and stable.
    pub fn compact(&self) -> Graph {
        let mut g = Graph::new(self.name.clone());
        let mut map: SecondaryMap<Value, Option<Value>> =
            SecondaryMap::with_capacity(self.values.len());
        let copy =
            |g: &mut Graph, map: &mut SecondaryMap<Value, Option<Value>>, v: Value| -> Value {
                if let Some(m) = map[v] {
                    return m;
                }
                let d = &self.values[v];
                g.names.insert(d.name.clone());
                let nv = g.values.push(ValueData {
                    name: d.name.clone(),
                    ty: d.ty.clone(),
                    def: d.def.clone(),
                });
                map[v] = Some(nv);
                nv
            };
        for &i in &self.inputs {
            let nv = copy(&mut g, &mut map, i);
            g.inputs.push(nv);
        }
        for &n in &self.order {
            let nd = &self.nodes[n];
            let args: Vec<Value> = nd.args.iter().map(|&a| copy(&mut g, &mut map, a)).collect();
            let node = g.nodes.next_key();
            let result = copy(&mut g, &mut map, nd.result);
            g.values[result].def = ValueDef::Result(node);
            g.nodes.push(NodeData {
                name: nd.name.clone(),
                op: nd.op.clone(),
                args,
                result,
                prov: nd.prov.clone(),
            });
            g.order.push(node);
        }
        for &o in &self.outputs {
            let nv = copy(&mut g, &mut map, o);
            g.outputs.push(nv);
        }
        for p in &self.patterns {
            if let Some(at) = map[p.at] {
                g.patterns.push(Pattern { kind: p.kind.clone(), at, nodes: p.nodes });
            }
        }
        g
    }

    /// Live values that are weights, in first-use order.
    pub fn weights(&self) -> Vec<Value> {
        self.used_values(|d| matches!(d, ValueDef::Weight(_)))
    }

    /// Live values that are public constants, in first-use order.
    pub fn consts(&self) -> Vec<Value> {
        self.used_values(|d| matches!(d, ValueDef::Const(_)))
    }

    fn used_values(&self, pred: impl Fn(&ValueDef) -> bool) -> Vec<Value> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let candidates =
            self.order.iter().flat_map(|&n| self.nodes[n].args.iter()).chain(self.outputs.iter());
        for &v in candidates {
            if pred(&self.values[v].def) && seen.insert(v) {
                out.push(v);
            }
        }
        out
    }
}
