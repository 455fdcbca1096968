//! Helpers for recognising subgraphs: producers, constants, single uses, product trees.

use crate::ir::{Graph, Node, NodeData, Op, Value};
use cranelift_entity::SecondaryMap;

/// Read-only view with use counts, for matching.
pub struct Matcher<'g> {
    /// The graph.
    pub g: &'g Graph,
    uses: SecondaryMap<Value, u32>,
}

impl<'g> Matcher<'g> {
    /// A matcher over `g` (use counts computed once).
    pub fn new(g: &'g Graph) -> Matcher<'g> {
        Matcher { g, uses: g.use_counts() }
    }

    /// The node defining `v`.
    pub fn def(&self, v: Value) -> Option<&'g NodeData> {
        self.g.producer(v).map(|n| &self.g.nodes[n])
    }

    /// The node defining `v` when its operator is `op` (compared by kind).
    pub fn def_op(&self, v: Value, op: fn(&Op) -> bool) -> Option<&'g NodeData> {
        self.def(v).filter(|n| op(&n.op))
    }

    /// True when `v` is used exactly once (so its node can be absorbed into a fusion).
    pub fn single_use(&self, v: Value) -> bool {
        self.uses[v] == 1
    }

    /// The value of a scalar constant (any rank with one element).
    pub fn scalar(&self, v: Value) -> Option<f64> {
        self.g.const_data(v).filter(|t| t.numel() == 1).map(|t| t.get_f64(0))
    }

    /// True when `v` is a scalar constant within a relative 1e-3 of `want`.
    pub fn is_const(&self, v: Value, want: f64) -> bool {
        self.scalar(v).is_some_and(|x| (x - want).abs() <= 1e-3 * want.abs().max(1e-6))
    }

    /// The operands of a binary node whose operator satisfies `op`, in both orders.
    pub fn operands(&self, v: Value, op: fn(&Op) -> bool) -> Option<[(Value, Value); 2]> {
        let n = self.def_op(v, op).filter(|n| n.args.len() == 2)?;
        Some([(n.args[0], n.args[1]), (n.args[1], n.args[0])])
    }

    /// Leaves of the tree of `Mul` nodes rooted at `v` whose inner nodes are used once.
    pub fn product_leaves(&self, v: Value, depth: usize) -> Vec<Value> {
        match self.def_op(v, |o| matches!(o, Op::Mul)) {
            Some(n) if depth > 0 => {
                let mut out = Vec::new();
                for &a in &n.args {
                    if self.def_op(a, |o| matches!(o, Op::Mul)).is_some() && self.single_use(a) {
                        out.extend(self.product_leaves(a, depth - 1));
                    } else {
                        out.push(a);
                    }
                }
                out
            }
            _ => vec![v],
        }
    }

    /// Nodes that use `v`.
    pub fn users(&self, v: Value) -> Vec<Node> {
        self.g.order.iter().copied().filter(|&n| self.g.nodes[n].args.contains(&v)).collect()
    }
}

/// Replaces the node defining `target` by `op(args)` with `target`'s name and type, so every
/// use stays valid; the absorbed nodes become dead and are removed by the pass manager.
pub fn replace(g: &mut Graph, target: Value, op: Op, args: Vec<Value>) {
    let n = g.producer(target).expect("a node result");
    let nd = &mut g.nodes[n];
    nd.op = op;
    nd.args = args;
}
