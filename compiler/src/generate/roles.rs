//! Which axis of every tensor is the token position, and which is the attended-to (key)
//! position, in a causal decoder graph exported without a KV cache.
//!
//! Axes are linked by structure (an elementwise op's aligned axes, a reshape's preserved
//! dims, a transpose's permutation, a gather's index axes, a matmul's row axis) in a
//! union-find; the token axis of the ids input seeds the query class. A matmul whose right
//! operand carries the query class in its rows or columns turns it into the key class: that
//! operand (K, or V) is a *cache point*, computed once per token and kept. Every node is then
//! checked to be row-local in the query class — which is what lets one token's row be computed
//! alone from the cache.

use super::GenerateError;
use crate::ir::{Graph, Op, Value, ValueDef};
use std::collections::{HashMap, HashSet};

/// What an axis of a tensor indexes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Nothing position-related (hidden units, heads, batch).
    None,
    /// The token (query) position: one row per token.
    Query,
    /// The key position: every token so far.
    Key,
}

/// A matmul operand whose query axis becomes a key axis: kept across tokens.
#[derive(Clone, Debug)]
pub struct CachePoint {
    /// The source graph value (K or V of one layer).
    pub value: Value,
    /// Its query axis.
    pub axis: usize,
}

/// The analysis result.
#[derive(Clone, Debug)]
pub struct Roles {
    /// Per value, one role per axis.
    pub of: HashMap<Value, Vec<Role>>,
    /// Cache points in execution order.
    pub caches: Vec<CachePoint>,
    /// The full (compiled) sequence length.
    pub seq: usize,
    /// The token-ids input.
    pub ids: Value,
    /// Values whose every token row is needed (feeding a cache point); the others are needed
    /// for the last row only (the next-token logits), so a prefill computes the last layer's
    /// tail and the LM head for one row.
    pub all_rows: HashSet<Value>,
}

impl Roles {
    /// The role of axis `a` of `v`.
    pub fn get(&self, v: Value, a: usize) -> Role {
        self.of.get(&v).and_then(|r| r.get(a).copied()).unwrap_or(Role::None)
    }

    /// True when `v` has any query or key axis.
    pub fn positional(&self, v: Value) -> bool {
        self.of.get(&v).is_some_and(|r| r.iter().any(|&x| x != Role::None))
    }
}

struct Dsu {
    parent: Vec<usize>,
    ids: HashMap<(Value, usize), usize>,
}

impl Dsu {
    fn id(&mut self, v: Value, a: usize) -> usize {
        let n = self.parent.len();
        *self.ids.entry((v, a)).or_insert_with(|| {
            self.parent.push(n);
            n
        })
    }
    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }
    fn union(&mut self, a: (Value, usize), b: (Value, usize)) {
        let (x, y) = (self.id(a.0, a.1), self.id(b.0, b.1));
        let (x, y) = (self.find(x), self.find(y));
        if x != y {
            self.parent[x] = y;
        }
    }
    fn class(&mut self, v: Value, a: usize) -> usize {
        let i = self.id(v, a);
        self.find(i)
    }
}

fn shape(g: &Graph, v: Value) -> &[usize] {
    &g.values[v].ty.shape
}

/// Links the aligned (right-aligned, numpy) axes of `arg` and `out` of equal size above 1.
fn link_aligned(d: &mut Dsu, g: &Graph, arg: Value, out: Value) {
    let (sa, so) = (shape(g, arg), shape(g, out));
    if sa.len() > so.len() {
        return;
    }
    let pad = so.len() - sa.len();
    for (i, &n) in sa.iter().enumerate() {
        if n > 1 && n == so[i + pad] {
            d.union((arg, i), (out, i + pad));
        }
    }
}

/// Axis `i` of `from` ↦ axis of `to` with the same size and the same product of outer dims.
fn reshape_map(from: &[usize], to: &[usize]) -> Vec<Option<usize>> {
    let prefix = |s: &[usize]| -> Vec<usize> {
        let mut p = vec![1usize; s.len()];
        for i in 1..s.len() {
            p[i] = p[i - 1] * s[i - 1];
        }
        p
    };
    let (pf, pt) = (prefix(from), prefix(to));
    (0..from.len())
        .map(|i| (0..to.len()).find(|&j| to[j] == from[i] && pt[j] == pf[i] && from[i] > 1))
        .collect()
}

/// Why a graph is not a causal decoder veil can generate with.
fn refuse(g: &Graph, node: &str, why: impl Into<String>) -> GenerateError {
    GenerateError::NotCausal { model: g.name.clone(), node: node.to_string(), why: why.into() }
}

/// Analyses `g` (one int input `[…, S]` of token ids) and checks that it is a causal decoder.
pub fn analyze(g: &Graph) -> Result<Roles, GenerateError> {
    let mut roles = classify(g)?;
    check(g, &roles)?;
    let mut all: HashSet<Value> = roles.caches.iter().map(|c| c.value).collect();
    for &n in g.order.iter().rev() {
        let nd = &g.nodes[n];
        if all.contains(&nd.result) {
            all.extend(nd.args.iter().copied().filter(|&a| roles.positional(a)));
        }
    }
    roles.all_rows = all;
    Ok(roles)
}

/// The roles of every axis of `g` and its cache points, before any check (`all_rows` empty).
pub fn classify(g: &Graph) -> Result<Roles, GenerateError> {
    let ids = match g.inputs.as_slice() {
        [i] if g.values[*i].ty.dtype.is_int() && !shape(g, *i).is_empty() => *i,
        _ => {
            return Err(GenerateError::Inputs {
                model: g.name.clone(),
                inputs: g
                    .inputs
                    .iter()
                    .map(|&i| format!("`{}`: {}", g.values[i].name, g.values[i].ty))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    let ids_axis = shape(g, ids).len() - 1;
    let seq = shape(g, ids)[ids_axis];
    if shape(g, ids)[..ids_axis].iter().any(|&d| d != 1) {
        return Err(GenerateError::Batch { model: g.name.clone(), ty: g.values[ids].ty.clone() });
    }
    let mut d = Dsu { parent: Vec::new(), ids: HashMap::new() };
    let mut matmuls = Vec::new();
    for &n in &g.order {
        let nd = &g.nodes[n];
        let out = nd.result;
        let args = &nd.args;
        match &nd.op {
            Op::MatMul => {
                let (sa, sb, so) = (shape(g, args[0]), shape(g, args[1]), shape(g, out));
                let (ra, rb, ro) = (sa.len(), sb.len(), so.len());
                if ra < 2 || rb < 2 {
                    continue;
                }
                for (arg, r) in [(args[0], ra), (args[1], rb)] {
                    for i in 0..r - 2 {
                        let j = i + (ro - r);
                        if shape(g, arg)[i] > 1 && shape(g, arg)[i] == so[j] {
                            d.union((arg, i), (out, j));
                        }
                    }
                }
                d.union((args[0], ra - 2), (out, ro - 2));
                matmuls.push(n);
            }
            Op::Reshape { .. } => {
                for (i, j) in reshape_map(shape(g, args[0]), shape(g, out)).into_iter().enumerate()
                {
                    if let Some(j) = j {
                        d.union((args[0], i), (out, j));
                    }
                }
            }
            Op::Transpose { perm } => {
                for (i, &p) in perm.iter().enumerate() {
                    d.union((out, i), (args[0], p));
                }
            }
            Op::Slice { .. } | Op::Expand { .. } => link_aligned(&mut d, g, args[0], out),
            Op::Concat { axis } => {
                for &a in args {
                    for i in 0..shape(g, a).len() {
                        if i != *axis {
                            d.union((a, i), (out, i));
                        }
                    }
                }
            }
            Op::Gather { axis } => {
                let ri = shape(g, args[1]).len();
                for i in 0..shape(g, args[0]).len() {
                    if i < *axis {
                        d.union((args[0], i), (out, i));
                    } else if i > *axis {
                        d.union((args[0], i), (out, i + ri - 1));
                    }
                }
                for j in 0..ri {
                    d.union((args[1], j), (out, axis + j));
                }
            }
            Op::GatherND { .. } => {}
            Op::ReduceSum { axes, keepdims }
            | Op::ReduceMean { axes, keepdims }
            | Op::ReduceMax { axes, keepdims } => {
                let mut j = 0;
                for i in 0..shape(g, args[0]).len() {
                    if axes.contains(&i) {
                        j += usize::from(*keepdims);
                    } else {
                        d.union((args[0], i), (out, j));
                        j += 1;
                    }
                }
            }
            _ => {
                for &a in args {
                    link_aligned(&mut d, g, a, out);
                }
            }
        }
    }
    let q = d.class(ids, ids_axis);
    // A sentinel key class, linked to every axis a query axis turns into.
    let key_seed = (ids, usize::MAX);
    let mut cache_vals = Vec::new();
    for &n in &matmuls {
        let nd = &g.nodes[n];
        let (a, b, out) = (nd.args[0], nd.args[1], nd.result);
        let (ra, rb, ro) = (shape(g, a).len(), shape(g, b).len(), shape(g, out).len());
        let (bk, bn) = (d.class(b, rb - 2), d.class(b, rb - 1));
        if bn == q {
            d.union((out, ro - 1), key_seed);
            cache_vals.push(CachePoint { value: b, axis: rb - 1 });
        } else if bk == q {
            d.union((a, ra - 1), key_seed);
            cache_vals.push(CachePoint { value: b, axis: rb - 2 });
        } else {
            d.union((out, ro - 1), (b, rb - 1));
        }
    }
    let q = d.class(ids, ids_axis);
    let k = d.class(key_seed.0, key_seed.1);
    if q == k {
        return Err(refuse(g, "-", "token positions and attended positions cannot be told apart"));
    }
    let mut of = HashMap::new();
    for (v, vd) in g.values.iter() {
        let r: Vec<Role> = (0..vd.ty.shape.len())
            .map(|a| match d.ids.get(&(v, a)).copied() {
                Some(i) if d.find(i) == q => Role::Query,
                Some(i) if d.find(i) == k => Role::Key,
                _ => Role::None,
            })
            .collect();
        if r.iter().any(|&x| x != Role::None) {
            of.insert(v, r);
        }
    }
    Ok(Roles { of, caches: cache_vals, seq, ids, all_rows: HashSet::new() })
}

/// Refuses every node that mixes token rows outside attention, and a model without a causal
/// mask.
fn check(g: &Graph, r: &Roles) -> Result<(), GenerateError> {
    let query_in = |v: Value, axes: &[usize]| axes.iter().any(|&a| r.get(v, a) == Role::Query);
    for &n in &g.order {
        let nd = &g.nodes[n];
        let x = nd.args.first().copied();
        let rank = |v: Value| shape(g, v).len();
        let bad = match &nd.op {
            Op::Softmax { axis } | Op::ArgMax { axis } => {
                query_in(x.unwrap(), &[*axis]).then_some("normalises over token positions")
            }
            Op::LayerNorm { axis, .. } => {
                query_in(x.unwrap(), &(*axis..rank(x.unwrap())).collect::<Vec<_>>())
                    .then_some("normalises over token positions")
            }
            Op::ReduceSum { axes, .. }
            | Op::ReduceMean { axes, .. }
            | Op::ReduceMax { axes, .. } => {
                query_in(x.unwrap(), axes).then_some("reduces over token positions")
            }
            Op::MatMul => {
                let a = nd.args[0];
                query_in(a, &[rank(a) - 1]).then_some("contracts over token positions")
            }
            Op::Concat { axis } => nd
                .args
                .iter()
                .any(|&a| r.get(a, *axis) != Role::None)
                .then_some("concatenates along token positions"),
            Op::Gather { axis } => {
                (r.get(nd.args[0], *axis) != Role::None).then_some("gathers along token positions")
            }
            Op::GatherND { .. } => nd
                .args
                .iter()
                .chain(std::iter::once(&nd.result))
                .any(|&a| r.positional(a))
                .then_some("gather_nd over token positions is not supported"),
            Op::Slice { .. } => {
                let (si, so) = (shape(g, x.unwrap()), shape(g, nd.result));
                (0..si.len())
                    .any(|a| r.get(x.unwrap(), a) != Role::None && si[a] != so[a])
                    .then_some("slices token positions")
            }
            Op::Reshape { .. } => {
                let m = reshape_map(shape(g, x.unwrap()), shape(g, nd.result));
                (0..m.len())
                    .any(|a| r.get(x.unwrap(), a) != Role::None && m[a].is_none())
                    .then_some("reshapes token positions together with other dims")
            }
            _ => None,
        };
        if let Some(why) = bad {
            return Err(refuse(g, &nd.name, why));
        }
        let out_pos = r.positional(nd.result);
        if !out_pos {
            continue;
        }
        for &a in &nd.args {
            if let ValueDef::Weight(_) = g.values[a].def {
                if r.positional(a) {
                    return Err(refuse(
                        g,
                        &nd.name,
                        format!("weight `{}` is indexed by token position", g.values[a].name),
                    ));
                }
            }
        }
    }
    // Causality: every normalisation over key positions (a softmax, or the sum of the SMU
    // form) must see, through elementwise operators, a constant with a query and a key axis
    // that hides every later key: additively (≤ −1e9), as a 0 factor, or as a false condition.
    let mut normalisations = 0;
    for &n in &g.order {
        let nd = &g.nodes[n];
        let over_keys = match &nd.op {
            Op::Softmax { axis } => r.get(nd.args[0], *axis) == Role::Key,
            Op::ReduceSum { axes, .. }
            | Op::ReduceMean { axes, .. }
            | Op::ReduceMax { axes, .. } => axes.iter().any(|&a| r.get(nd.args[0], a) == Role::Key),
            _ => false,
        };
        if !over_keys {
            continue;
        }
        normalisations += 1;
        if !masked_path(g, r, nd.args[0], 8) {
            return Err(GenerateError::Unmasked { model: g.name.clone(), node: nd.name.clone() });
        }
    }
    if normalisations == 0 && !r.caches.is_empty() {
        return Err(GenerateError::NoNormalisation { model: g.name.clone() });
    }
    Ok(())
}

/// True when `c`, a constant with a query and a key axis used by `op`, hides every key after
/// its query.
fn hides_later(g: &Graph, r: &Roles, c: Value, op: &Op) -> bool {
    let ValueDef::Const(t) = &g.values[c].def else { return false };
    let (Some(qa), Some(ka)) = (
        (0..t.shape.len()).find(|&a| r.get(c, a) == Role::Query),
        (0..t.shape.len()).find(|&a| r.get(c, a) == Role::Key),
    ) else {
        return false;
    };
    let st: Vec<usize> = (0..t.shape.len()).map(|i| t.shape[i + 1..].iter().product()).collect();
    let hidden = |x: f64| match (op, t.dtype) {
        (_, crate::ir::DType::Bool) | (Op::Mul, _) => x == 0.0,
        _ => x <= -1e9,
    };
    (0..t.numel()).all(|i| {
        let (qi, ki) = ((i / st[qa]) % t.shape[qa], (i / st[ka]) % t.shape[ka]);
        ki <= qi || hidden(t.get_f64(i))
    })
}

/// True when `v` is computed, through at most `depth` elementwise operators, with a constant
/// that hides later positions.
pub fn masked_path(g: &Graph, r: &Roles, v: Value, depth: usize) -> bool {
    let Some(p) = g.producer(v).filter(|_| depth > 0) else { return false };
    let nd = &g.nodes[p];
    if nd.args.iter().any(|&a| hides_later(g, r, a, &nd.op)) {
        return true;
    }
    let elementwise = nd.op.is_binary_elementwise()
        || nd.op.is_unary_elementwise()
        || matches!(nd.op, Op::Where | Op::Smu1 { .. } | Op::Cast { .. });
    elementwise && nd.args.iter().any(|&a| masked_path(g, r, a, depth - 1))
}
