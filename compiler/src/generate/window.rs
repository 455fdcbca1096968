//! Emits the decoder for a window of token rows `[q0, q1)` attending to keys `[0, q1)`: the
//! prefill is the window `[0, P)`, a decode step the window `[p, p+1)`. Keys and values of
//! earlier rows come from the cache the previous windows filled; weights are shared by all
//! windows (one program weight each, masked once).

use super::roles::{Role, Roles};
use super::GenerateError;
use crate::ir::{Graph, Op, Provenance, Step, Tensor, TensorType, Value, ValueDef};
use std::collections::HashMap;

/// Builds a generation graph window by window.
pub struct Emitter<'a> {
    src: &'a Graph,
    roles: &'a Roles,
    /// The graph being built.
    pub dst: Graph,
    weights: HashMap<Value, Value>,
    caches: HashMap<Value, Value>,
    /// Source nodes computed from weights and constants alone (a transposed embedding used
    /// as the LM head): emitted once, so the server derives and masks them once.
    fixed: std::collections::HashSet<Value>,
    fixed_done: HashMap<Value, Value>,
}

impl<'a> Emitter<'a> {
    /// An emitter from `src` (analysed as `roles`) into an empty graph named `name`.
    pub fn new(src: &'a Graph, roles: &'a Roles, name: &str) -> Emitter<'a> {
        let mut fixed = std::collections::HashSet::new();
        for &n in &src.order {
            let nd = &src.nodes[n];
            let leaf = |a: &Value| match src.values[*a].def {
                ValueDef::Const(_) | ValueDef::Weight(_) => !roles.positional(*a),
                ValueDef::Result(_) => fixed.contains(a),
                ValueDef::Input => false,
            };
            if nd.args.iter().all(leaf) && !roles.positional(nd.result) {
                fixed.insert(nd.result);
            }
        }
        Emitter {
            src,
            roles,
            dst: Graph::new(name),
            weights: HashMap::new(),
            caches: HashMap::new(),
            fixed,
            fixed_done: HashMap::new(),
        }
    }

    /// The first row of the window that value `v` is computed for.
    fn lo(&self, v: Value, q0: usize, q1: usize) -> usize {
        if self.roles.all_rows.contains(&v) {
            q0
        } else {
            q1 - 1
        }
    }

    fn dim(&self, role: Role, full: usize, q0: usize, q1: usize) -> usize {
        match role {
            Role::None => full,
            Role::Query => q1 - q0,
            Role::Key => q1,
        }
    }

    fn new_shape(&self, v: Value, shape: &[usize], q0: usize, q1: usize) -> Vec<usize> {
        let lo = self.lo(v, q0, q1);
        shape.iter().enumerate().map(|(a, &d)| self.dim(self.roles.get(v, a), d, lo, q1)).collect()
    }

    /// Constant `v` restricted to the window's rows and keys.
    fn slice_const(
        &mut self,
        v: Value,
        t: &Tensor,
        q0: usize,
        q1: usize,
        prefix: &str,
    ) -> Result<Value, GenerateError> {
        let name = format!("{prefix}/{}", self.src.values[v].name);
        if !self.roles.positional(v) {
            return Ok(self.dst.add_const(&name, t.clone()));
        }
        let q0 = self.lo(v, q0, q1);
        let r = t.shape.len();
        let mut start = vec![0; r];
        let mut len = t.shape.clone();
        for a in 0..r {
            let role = self.roles.get(v, a);
            if t.shape[a] != self.roles.seq {
                continue;
            }
            if role == Role::Query {
                start[a] = q0;
            }
            len[a] = self.dim(role, t.shape[a], q0, q1);
        }
        let op = Op::Slice { start, step: vec![1; r], len: len.clone() };
        let sliced =
            crate::eval::eval_op(&op, &[t], &TensorType::new(t.dtype, len)).map_err(|error| {
                GenerateError::SliceConst { value: self.src.values[v].name.clone(), error }
            })?;
        Ok(self.dst.add_const(&name, sliced))
    }

    /// The window's version of a node's attributes (static shapes and slice offsets).
    fn adjust(
        &self,
        node: &str,
        op: &Op,
        args: &[Value],
        out: Value,
        q0: usize,
        q1: usize,
    ) -> Result<Op, GenerateError> {
        let q0 = self.lo(out, q0, q1);
        Ok(match op {
            Op::Reshape { shape } => Op::Reshape { shape: self.new_shape(out, shape, q0, q1) },
            Op::Expand { shape } => Op::Expand { shape: self.new_shape(out, shape, q0, q1) },
            Op::Slice { start, step, len } => {
                let (mut start, mut len) = (start.clone(), len.clone());
                for a in 0..len.len() {
                    let ro = self.roles.get(out, a);
                    if ro == Role::None {
                        continue;
                    }
                    if self.roles.get(args[0], a) == Role::None {
                        // A positional table (position embeddings) sliced by the token rows.
                        if step[a] != 1 {
                            return Err(GenerateError::StridedPositions { node: node.to_string() });
                        }
                        if ro == Role::Query {
                            start[a] += q0;
                        }
                    }
                    len[a] = self.dim(ro, len[a], q0, q1);
                }
                Op::Slice { start, step: step.clone(), len }
            }
            other => other.clone(),
        })
    }

    /// Emits the window `[q0, q1)` with `ids` (a `dst` value: the window's token ids) and
    /// returns the map from source values to window values. Node names get `prefix/`.
    pub fn window(
        &mut self,
        ids: Value,
        q0: usize,
        q1: usize,
        prefix: &str,
    ) -> Result<HashMap<Value, Value>, GenerateError> {
        let src = self.src;
        let mut env: HashMap<Value, Value> = HashMap::new();
        env.insert(self.roles.ids, ids);
        let mut full: HashMap<Value, Value> = HashMap::new();
        for &n in &src.order {
            let nd = &src.nodes[n];
            // The window's copy keeps its source's layer and site, in this step.
            let prov = Provenance { step: Step::parse(prefix), ..nd.prov.clone() };
            if let Some(&v) = self.fixed_done.get(&nd.result) {
                env.insert(nd.result, v);
                continue;
            }
            let mut args = Vec::with_capacity(nd.args.len());
            for &a in &nd.args {
                let v = match env.get(&a) {
                    Some(&v) => v,
                    None => {
                        let v = match &src.values[a].def {
                            ValueDef::Const(t) => {
                                self.slice_const(a, &t.clone(), q0, q1, prefix)?
                            }
                            ValueDef::Weight(t) => *self.weights.entry(a).or_insert_with(|| {
                                self.dst.add_weight(&src.values[a].name, (**t).clone())
                            }),
                            ValueDef::Input => {
                                return Err(GenerateError::OtherInput(src.values[a].name.clone()))
                            }
                            ValueDef::Result(_) => {
                                return Err(GenerateError::UsedBeforeComputed(
                                    src.values[a].name.clone(),
                                ))
                            }
                        };
                        env.insert(a, v);
                        v
                    }
                };
                args.push(v);
            }
            if let Op::MatMul = nd.op {
                if let Some(cp) = self.roles.caches.iter().find(|c| c.value == nd.args[1]) {
                    let v = match full.get(&cp.value) {
                        Some(&v) => v,
                        None => {
                            self.dst.cursor = prov.at_site("kv_cache");
                            let v = match self.caches.get(&cp.value) {
                                Some(&old) => self
                                    .dst
                                    .add_node(
                                        &format!("{prefix}/{}::kv_cache", nd.name),
                                        Op::Concat { axis: cp.axis },
                                        &[old, args[1]],
                                        &format!("{prefix}/{}.cache", src.values[cp.value].name),
                                    )
                                    .map_err(shape_err(&nd.name, None))?,
                                None => args[1],
                            };
                            self.caches.insert(cp.value, v);
                            full.insert(cp.value, v);
                            v
                        }
                    };
                    args[1] = v;
                }
            }
            // An argument computed for every row feeding a node needed for the last row only.
            let out_lo = self.lo(nd.result, q0, q1);
            for (i, &a) in nd.args.iter().enumerate() {
                let cached = matches!(nd.op, Op::MatMul) && i == 1 && full.contains_key(&a);
                let rows: Vec<usize> = (0..src.values[a].ty.shape.len())
                    .filter(|&ax| self.roles.get(a, ax) == Role::Query)
                    .collect();
                if cached || rows.is_empty() || self.lo(a, q0, q1) >= out_lo {
                    continue;
                }
                let shape = self.dst.values[args[i]].ty.shape.clone();
                let mut start = vec![0; shape.len()];
                let mut len = shape.clone();
                for &ax in &rows {
                    start[ax] = out_lo - self.lo(a, q0, q1);
                    len[ax] = q1 - out_lo;
                }
                let op = Op::Slice { start, step: vec![1; shape.len()], len };
                self.dst.cursor = prov.at_site("last_row");
                args[i] = self
                    .dst
                    .add_node(
                        &format!("{prefix}/{}::last_row", nd.name),
                        op,
                        &[args[i]],
                        &format!("{prefix}/{}.last", src.values[a].name),
                    )
                    .map_err(shape_err(&nd.name, None))?;
            }
            let op = self.adjust(&nd.name, &nd.op, &nd.args, nd.result, q0, q1)?;
            self.dst.cursor = prov;
            let r = self
                .dst
                .add_node(
                    &format!("{prefix}/{}", nd.name),
                    op,
                    &args,
                    &format!("{prefix}/{}", src.values[nd.result].name),
                )
                .map_err(shape_err(&nd.name, Some((q0, q1))))?;
            env.insert(nd.result, r);
            if self.fixed.contains(&nd.result) {
                self.fixed_done.insert(nd.result, r);
            }
        }
        self.dst.cursor = Provenance::default();
        Ok(env)
    }
}

/// For `map_err`: a shape error at the window's copy of source node `node`.
fn shape_err(
    node: &str,
    window: Option<(usize, usize)>,
) -> impl FnOnce(crate::ir::shape::ShapeError) -> GenerateError + '_ {
    move |error| GenerateError::Shape { node: node.to_string(), window, error }
}
