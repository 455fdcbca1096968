//! Who may see each value: the visibility lattice of DESIGN.md.
//!
//! `Public` (both parties know it) · `Client` (the client's input and anything computed from
//! it with public data) · `Server` (private weights and what is computed from them with public
//! data) · `Shared` (depends on both: additively secret-shared). `Client ⊔ Server = Shared`,
//! `Shared` absorbs everything. Nothing moves down the lattice except by an explicit reveal.

use crate::ir::{Graph, Value, ValueDef};
use cranelift_entity::SecondaryMap;

/// Visibility of a value.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Vis {
    /// Known to both parties (constants, public weights).
    #[default]
    Public,
    /// Known to the client only.
    Client,
    /// Known to the server only.
    Server,
    /// Secret-shared between the parties.
    Shared,
}

impl Vis {
    /// The least upper bound.
    pub fn join(self, o: Vis) -> Vis {
        use Vis::*;
        match (self, o) {
            (Public, x) | (x, Public) => x,
            (Client, Client) => Client,
            (Server, Server) => Server,
            _ => Shared,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Vis::Public => "public",
            Vis::Client => "client",
            Vis::Server => "server",
            Vis::Shared => "shared",
        }
    }
}

/// Visibility of every value of a graph.
pub struct Partition {
    /// Per value.
    pub vis: SecondaryMap<Value, Vis>,
}

/// Computes visibility: inputs are the client's, constants public, weights as `weight_vis`
/// says (by weight name), node results the join of their arguments.
pub fn analyze(g: &Graph, weight_vis: &dyn Fn(&str) -> Vis) -> Partition {
    let mut vis: SecondaryMap<Value, Vis> = SecondaryMap::with_capacity(g.values.len());
    for (v, d) in g.values.iter() {
        vis[v] = match &d.def {
            ValueDef::Input => Vis::Client,
            ValueDef::Const(_) => Vis::Public,
            ValueDef::Weight(_) => weight_vis(&d.name),
            ValueDef::Result(_) => Vis::Public,
        };
    }
    for &n in &g.order {
        let nd = &g.nodes[n];
        let v = nd.args.iter().fold(Vis::Public, |acc, &a| acc.join(vis[a]));
        vis[nd.result] = v;
    }
    Partition { vis }
}
