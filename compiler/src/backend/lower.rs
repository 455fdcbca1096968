//! Lowering: the shared part of a partitioned IR graph to a two-party program.
//!
//! Walks the nodes whose result is `Shared` in execution order and asks the
//! [`ProgramBuilder`] for the protocol each needs, tracking the fixed-point scale of every
//! value by the [`Policy`] of `backend::scale` (which the fixed-point simulator follows too):
//! a truncation is folded into the next masked opening whenever the consumer opens the value
//! anyway (products, comparisons) or done explicitly when a consumer needs a plain share at a
//! lower scale (matrix products, products by a weight).

use crate::backend::partition::{Partition, Vis};
use crate::backend::scale::{divisor_reciprocal, Policy, ScalarProduct};
use crate::ir::{Graph, Node, Op, Tensor, Value, ValueDef};
use cranelift_entity::SecondaryMap;
use std::collections::HashMap;
use std::sync::Arc;
use veil_isa::builder::{Masked, ProgramBuilder};
use veil_isa::{Buf, ConstOrigin, Kind, Party};

/// Why lowering failed: always names the node.
#[derive(Debug, thiserror::Error)]
#[error("cannot lower node `{node}` ({op}) to two-party bytecode: {msg}")]
pub struct LowerError {
    /// Node name.
    pub node: String,
    /// Operator.
    pub op: String,
    /// What is unsupported or wrong.
    pub msg: String,
}

/// A value lowered into the program.
#[derive(Clone, Debug)]
pub struct LVal {
    /// The buffer (share, or private to one party).
    pub buf: Buf,
    /// Fixed-point fractional bits of its encoding.
    pub scale: u8,
    /// Logical shape.
    pub shape: Vec<usize>,
}

/// What an operand of a shared node is.
#[derive(Clone, Debug)]
enum Operand {
    /// A public constant.
    Const(Arc<Tensor>),
    /// A lowered value (shared, or private to a party: inputs and weights).
    Val(LVal),
    /// A comparison result: XOR-shared bits (value 0/1).
    Bits { bits: Buf, shape: Vec<usize> },
}

/// A value the client computes in plaintext and feeds to the program.
#[derive(Clone, Debug)]
pub enum ClientFeed {
    /// The graph value itself.
    Value(Value),
    /// `one_hot(value, depth)` (for gathers from a private table).
    OneHot(Value, usize),
}

/// The lowered program and what each party must supply.
pub struct Lowered {
    /// The program builder, ready to `finish`.
    pub builder: ProgramBuilder,
    /// Program inputs fed by the client: (input name, what it is).
    pub client_feeds: Vec<(String, ClientFeed)>,
    /// Program weights supplied by the server: (weight name, graph value).
    pub server_feeds: Vec<(String, Value)>,
    /// Graph outputs computed in plaintext by the client itself.
    pub client_outputs: Vec<Value>,
}

/// Lowering options.
#[derive(Clone, Debug)]
pub struct LowerOptions {
    /// Fixed-point fractional bits.
    pub frac_bits: u8,
    /// `(n, max)` when lowering the model at length `n` for a program pruned from `max`
    /// tokens: maxima over `n` keys pad their rows to `max`, so the comparison tournament has
    /// the same shape at every length.
    pub token_len: Option<(usize, usize)>,
    /// The public weights each constant was computed from (by folding); recorded as the
    /// constant's origin in the program.
    pub weight_sources: HashMap<Value, Vec<String>>,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions { frac_bits: 16, token_len: None, weight_sources: HashMap::new() }
    }
}

struct Lowerer<'g> {
    g: &'g Graph,
    part: &'g Partition,
    b: ProgramBuilder,
    f: u8,
    vals: SecondaryMap<Value, Option<Operand>>,
    boundary: HashMap<(Value, bool), LVal>,
    client_feeds: Vec<(String, ClientFeed)>,
    server_feeds: Vec<(String, Value)>,
    const_bufs: HashMap<(Value, u8, usize), Buf>,
    bit_src: HashMap<Buf, (Value, f64)>,
    /// Openings of the blocks of a concatenated matmul operand (a KV cache), each made once.
    block_open: HashMap<(Value, bool), (Masked, u8)>,
    node: Node,
    /// Token pruning: the compaction planned for each `keep` value, and whether its length
    /// was set yet.
    compactions: HashMap<Value, (veil_isa::builder::Compaction, bool)>,
    token_len: Option<(usize, usize)>,
    weight_sources: &'g HashMap<Value, Vec<String>>,
    /// Real bounds `|x| ≤ b` of values (`backend::bounds`).
    bounds: HashMap<Value, f64>,
    /// Ring magnitude bound of each buffer holding a bounded value: its openings are narrower.
    ring_bound: HashMap<Buf, f64>,
    /// The nodes reading each value.
    readers: HashMap<Value, Vec<Node>>,
    /// How many times each value is read (graph outputs included).
    uses: SecondaryMap<Value, u32>,
    /// `[x ≥ c]·x` of comparisons fused with the selection of the compared value
    /// (`drelu_arith`), by the comparison's value and `x`.
    bit_times: HashMap<(Value, Value), LVal>,
}

/// Lowers the shared part of `g` (visibility from `part`).
pub fn lower(g: &Graph, part: &Partition, opts: &LowerOptions) -> Result<Lowered, LowerError> {
    let mut l = Lowerer {
        g,
        part,
        b: ProgramBuilder::new(opts.frac_bits),
        f: opts.frac_bits,
        vals: SecondaryMap::with_capacity(g.values.len()),
        boundary: HashMap::new(),
        client_feeds: Vec::new(),
        server_feeds: Vec::new(),
        const_bufs: HashMap::new(),
        bit_src: HashMap::new(),
        block_open: HashMap::new(),
        node: Node::from_u32(0),
        compactions: HashMap::new(),
        token_len: opts.token_len,
        weight_sources: &opts.weight_sources,
        bounds: super::bounds::value_bounds(g, opts.token_len),
        ring_bound: HashMap::new(),
        readers: readers(g),
        uses: g.use_counts(),
        bit_times: HashMap::new(),
    };
    if let Some((n, max)) = opts.token_len {
        l.b.len_scale = (max as u64, n.max(1) as u64);
    }
    l.b.meta("model", &g.name);
    for &n in &g.order {
        if part.vis[g.nodes[n].result] != Vis::Shared {
            continue;
        }
        l.node = n;
        let (layer, op) = g.nodes[n].prov.tag(&g.nodes[n].op);
        l.b.set_tag(&layer, &op);
        let out = l.lower_node(n)?;
        l.note_bound(g.nodes[n].result, &out);
        l.vals[g.nodes[n].result] = Some(out);
    }
    let mut client_outputs = Vec::new();
    for &o in &g.outputs {
        match part.vis[o] {
            Vis::Client | Vis::Public => client_outputs.push(o),
            _ => {
                l.b.set_tag("model", "output");
                let v = l.operand_val(o)?;
                let shape: Vec<u32> = v.shape.iter().map(|&d| d as u32).collect();
                let name = g.values[o].name.clone();
                l.b.output(&name, v.buf, Party::Client, &shape, v.scale);
            }
        }
    }
    Ok(Lowered {
        builder: l.b,
        client_feeds: l.client_feeds,
        server_feeds: l.server_feeds,
        client_outputs,
    })
}

/// `Some(inner)` when `small` broadcast to `full` (numpy rules) is `b[(i / inner) % len]` over
/// the row-major elements of `full`: the non-unit dims of `small` form one contiguous block
/// matching `full`.
pub fn inner_of(small: &[usize], full: &[usize]) -> Option<u32> {
    let pad = full.len().checked_sub(small.len())?;
    let padded: Vec<usize> = std::iter::repeat_n(1, pad).chain(small.iter().copied()).collect();
    let non1: Vec<usize> = (0..full.len()).filter(|&i| padded[i] != 1).collect();
    if non1.is_empty() {
        return Some(1);
    }
    let (lo, hi) = (non1[0], *non1.last().expect("non-empty"));
    if (lo..=hi).any(|i| padded[i] != full[i]) {
        return None;
    }
    Some(full[hi + 1..].iter().product::<usize>() as u32)
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

fn u32s(s: &[usize]) -> Vec<u32> {
    s.iter().map(|&d| d as u32).collect()
}

impl<'g> Lowerer<'g> {
    fn err(&self, msg: impl Into<String>) -> LowerError {
        let nd = &self.g.nodes[self.node];
        LowerError { node: nd.name.clone(), op: nd.op.to_string(), msg: msg.into() }
    }

    fn shape(&self, v: Value) -> Vec<usize> {
        self.g.values[v].ty.shape.clone()
    }

    /// The operand for an argument: lowered value, boundary input/weight, or constant.
    fn operand(&mut self, v: Value) -> Result<Operand, LowerError> {
        if let Some(op) = &self.vals[v] {
            return Ok(op.clone());
        }
        let vd = &self.g.values[v];
        match (&vd.def, self.part.vis[v]) {
            (ValueDef::Const(t), _) => Ok(Operand::Const(t.clone())),
            (_, Vis::Client) => Ok(Operand::Val(self.client_input(v, ClientFeed::Value(v), false))),
            (_, Vis::Server) => Ok(Operand::Val(self.server_weight(v))),
            (_, Vis::Public) => {
                Err(self.err(format!("public value `{}` was not folded to a constant", vd.name)))
            }
            (_, Vis::Shared) => {
                Err(self.err(format!("value `{}` is used before it is computed", vd.name)))
            }
        }
    }

    fn client_input(&mut self, v: Value, feed: ClientFeed, one_hot: bool) -> LVal {
        if let Some(l) = self.boundary.get(&(v, one_hot)) {
            return l.clone();
        }
        let vd = &self.g.values[v];
        let (name, shape, scale) = match &feed {
            ClientFeed::OneHot(_, depth) => {
                let mut s = vd.ty.shape.clone();
                s.push(*depth);
                (format!("{}.one_hot", vd.name), s, 0)
            }
            ClientFeed::Value(_) => {
                let scale = self.policy().boundary(vd.ty.dtype.is_float());
                (vd.name.clone(), vd.ty.shape.clone(), scale)
            }
        };
        let buf = self.b.input(&name, Party::Client, &u32s(&shape), scale);
        self.client_feeds.push((name, feed));
        let l = LVal { buf, scale, shape };
        self.boundary.insert((v, one_hot), l.clone());
        l
    }

    fn server_weight(&mut self, v: Value) -> LVal {
        if let Some(l) = self.boundary.get(&(v, false)) {
            return l.clone();
        }
        let vd = &self.g.values[v];
        let scale = self.policy().boundary(vd.ty.dtype.is_float());
        let buf = self.b.weight(&vd.name, Party::Server, false, &u32s(&vd.ty.shape), scale);
        self.server_feeds.push((vd.name.clone(), v));
        let l = LVal { buf, scale, shape: vd.ty.shape.clone() };
        self.boundary.insert((v, false), l.clone());
        l
    }

    /// The operand as a ring value (comparison bits converted to 0/1 shares).
    fn as_val(&mut self, v: Value, op: Operand) -> Result<LVal, LowerError> {
        match op {
            Operand::Val(l) => Ok(l),
            Operand::Bits { bits, shape } => {
                let buf = self.b.b2a(bits);
                let l = LVal { buf, scale: 0, shape };
                self.vals[v] = Some(Operand::Val(l.clone()));
                Ok(l)
            }
            Operand::Const(_) => Err(self.err("a constant where a secret was expected")),
        }
    }

    fn operand_val(&mut self, v: Value) -> Result<LVal, LowerError> {
        let op = self.operand(v)?;
        self.as_val(v, op)
    }

    /// A public buffer holding constant `v` encoded at `scale`, broadcast to `len` elements when
    /// `len` is not its own length.
    fn const_buf(&mut self, v: Value, t: &Tensor, scale: u8) -> Buf {
        let key = (v, scale, t.numel());
        if let Some(&b) = self.const_bufs.get(&key) {
            return b;
        }
        let data: Vec<u64> = (0..t.numel()).map(|i| encode(t.get_f64(i), scale)).collect();
        let b = self.b.constant_from(data, self.origin(v));
        self.const_bufs.insert(key, b);
        b
    }

    /// Where the constant `v` comes from: the public weights it was folded from, if any.
    fn origin(&self, v: Value) -> ConstOrigin {
        match self.weight_sources.get(&v) {
            Some(names) => ConstOrigin::PublicWeights(names.clone()),
            None => ConstOrigin::Program,
        }
    }

    /// Brings a value to scale `target` (≥ its scale) by an exact left shift.
    fn rescale_up(&mut self, l: &LVal, target: u8) -> LVal {
        LVal { buf: self.b.shl(l.buf, target - l.scale), scale: target, shape: l.shape.clone() }
    }

    fn policy(&self) -> Policy {
        Policy { f: self.f }
    }

    /// A plain share at scale `target`: truncated from above, shifted up exactly from below.
    fn rescaled(&mut self, l: &LVal, target: u8) -> LVal {
        if l.scale <= target {
            return self.rescale_up(l, target);
        }
        let t = l.scale - target;
        let w = self.width(l.buf, t);
        LVal { buf: self.b.trunc_w(l.buf, t, w), scale: target, shape: l.shape.clone() }
    }

    /// Records the ring bound of a node's result buffer when the value has a real bound (the
    /// same buffer may be read at several scales, so the bound is kept as a ring magnitude).
    fn note_bound(&mut self, v: Value, out: &Operand) {
        if let (Some(&b), Operand::Val(l)) = (self.bounds.get(&v), out) {
            let m = b * 2f64.powi(l.scale as i32);
            let e = self.ring_bound.entry(l.buf).or_insert(m);
            *e = e.min(m);
        }
    }

    /// The width of an opening of `buf` truncating by `t` bits: as narrow as its bound allows.
    fn width(&self, buf: Buf, t: u8) -> u8 {
        self.ring_bound.get(&buf).map_or(64, |&m| super::bounds::opening_width(m, t))
    }

    /// Masked opening of `buf` truncating by `t` bits, as narrow as its bound allows.
    fn open_w(&mut self, buf: Buf, t: u8) -> Masked {
        let w = self.width(buf, t);
        self.b.masked_open_w(buf, t, w)
    }

    /// A plain share at scale `f`.
    fn at_f(&mut self, l: &LVal) -> LVal {
        self.rescaled(l, self.f)
    }

    /// Masked opening bringing the value to the scale a product or comparison takes.
    fn masked(&mut self, l: &LVal) -> (Masked, u8) {
        let s = self.policy().opened(l.scale);
        (self.open_w(l.buf, l.scale - s), s)
    }

    /// `x` broadcast to `shape`: returns the buffer and the `inner` to use as a `b` operand, or
    /// a materialised copy when the pattern is not a single repeat.
    fn bcast(&mut self, x: &LVal, shape: &[usize]) -> (Buf, u32) {
        if x.shape == shape {
            return (x.buf, 1);
        }
        if let Some(inner) = inner_of(&x.shape, shape) {
            return (x.buf, inner);
        }
        (self.b.broadcast(x.buf, &u32s(&x.shape), &u32s(shape)), 1)
    }

    fn full(&mut self, x: &LVal, shape: &[usize]) -> Buf {
        match self.bcast(x, shape) {
            (b, 1) if self.b.len(b) as usize == numel(shape) => b,
            _ => self.b.broadcast(x.buf, &u32s(&x.shape), &u32s(shape)),
        }
    }

    fn lower_node(&mut self, n: Node) -> Result<Operand, LowerError> {
        let nd = &self.g.nodes[n];
        let out_shape = self.shape(nd.result);
        let args = nd.args.clone();
        let op = nd.op.clone();
        let nd_result = nd.result;
        if let Op::Gather { axis: 0 } = op {
            // Not through `operand`: client indices are fed one-hot, never as themselves.
            return Ok(Operand::Val(self.gather(args[0], args[1], &out_shape)?));
        }
        let ops: Vec<Operand> = args.iter().map(|&a| self.operand(a)).collect::<Result<_, _>>()?;
        let f = self.f;
        Ok(match (&op, ops.as_slice()) {
            (Op::Sub, [Operand::Bits { bits: a, shape }, Operand::Bits { bits: b, .. }])
                if self.nested_thresholds(*a, *b) =>
            {
                // [x ≥ c1] − [x ≥ c2] with c1 ≤ c2 is the indicator of [c1, c2): a local XOR.
                Operand::Bits { bits: self.b.xor_bits_pub(*a, *b), shape: shape.clone() }
            }
            (Op::Add | Op::Sub, [a, b]) => Operand::Val(self.add_sub(
                &op,
                (args[0], a.clone()),
                (args[1], b.clone()),
                &out_shape,
            )?),
            (Op::Neg, [_]) => {
                let x = self.operand_val(args[0])?;
                Operand::Val(LVal { buf: self.b.neg(x.buf), ..x })
            }
            (Op::Mul, [a, b]) => {
                self.mul(nd_result, (args[0], a.clone()), (args[1], b.clone()), &out_shape)?
            }
            (Op::Div, [_, Operand::Const(c)]) => {
                let inv = Tensor::f32(
                    c.shape.clone(),
                    (0..c.numel()).map(|i| divisor_reciprocal(c.get_f64(i))).collect(),
                );
                self.mul_const(args[0], &Arc::new(inv), &out_shape, args[1])?
            }
            (Op::MatMul, [_, _]) => Operand::Val(self.matmul(args[0], args[1], &out_shape)?),
            (Op::Reshape { .. }, [_]) => {
                let x = self.operand_val(args[0])?;
                Operand::Val(LVal { shape: out_shape, ..x })
            }
            (Op::Transpose { perm }, [_]) => {
                let x = self.operand_val(args[0])?;
                let buf = self.b.transpose(x.buf, &u32s(&x.shape), perm);
                Operand::Val(LVal { buf, shape: out_shape, ..x })
            }
            (Op::Slice { start, step, len }, [_]) => {
                let x = self.operand_val(args[0])?;
                let buf = self.b.slice(x.buf, &u32s(&x.shape), &u32s(start), step, &u32s(len));
                Operand::Val(LVal { buf, shape: out_shape, ..x })
            }
            (Op::Expand { shape }, [_]) => {
                let x = self.operand_val(args[0])?;
                let buf = self.b.broadcast(x.buf, &u32s(&x.shape), &u32s(shape));
                Operand::Val(LVal { buf, shape: out_shape, ..x })
            }
            (Op::Concat { axis }, _) => {
                let mut vals = Vec::new();
                for &a in &args {
                    vals.push(match self.operand(a)? {
                        Operand::Const(t) => {
                            let buf = self.const_buf(a, &t, f);
                            let zero = self.b.buf(Kind::Share, t.numel() as u32);
                            let _ = zero;
                            return Err(self.err(format!("concatenating the constant `{}` with secrets is not supported yet (buffer {buf})", self.g.values[a].name)));
                        }
                        o => self.as_val(a, o)?,
                    });
                }
                let p = self.policy();
                let scale =
                    vals.iter().map(|v| v.scale).reduce(|a, b| p.aligned(a, b)).unwrap_or(f);
                // A client-computed block (a public layer's prefill keys) next to shared ones.
                let mixed = vals.iter().any(|v| self.b.kind(v.buf) != self.b.kind(vals[0].buf));
                let mut parts: Vec<(Buf, Vec<u32>)> =
                    vals.iter().map(|v| (self.rescale_up(v, scale).buf, u32s(&v.shape))).collect();
                if mixed {
                    for p in &mut parts {
                        p.0 = self.b.as_share(p.0);
                    }
                }
                let buf = self.b.concat(&parts, *axis);
                Operand::Val(LVal { buf, scale, shape: out_shape })
            }
            (Op::ReduceSum { axes, .. } | Op::ReduceMean { axes, .. }, [_]) => {
                let x = self.operand_val(args[0])?;
                let summed = self.reduce_sum(&x, axes)?;
                let mut v = LVal { buf: summed, scale: x.scale, shape: out_shape };
                if let Op::ReduceMean { .. } = op {
                    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
                    v = self.scale_by(&v, 1.0 / count as f64);
                }
                Operand::Val(v)
            }
            (Op::PruneKeep { axis, theta, protect }, [_]) => {
                let x = self.operand_val(args[0])?;
                let x = self.rescaled(&x, self.policy().compared(x.scale));
                let (buf, rows, n) = self.move_axes_last(&x, &[*axis]);
                // S_j ≤ rows·2^f must stay below 2^33 for the 2^24-scaled comparison, and
                // positions below 2^14 for the compaction's narrow comparisons.
                if (rows as u64) << f >= 1u64 << 33 || n >= 1 << 14 {
                    return Err(self.err(format!(
                        "pruning supports up to 16383 tokens and 2^{} rows of attention per key \
                         ({rows} rows, {n} tokens)",
                        33 - f as u32
                    )));
                }
                let s = self.b.sum(buf, 1, rows, n);
                let total = self.b.sum(s, 1, n, 1);
                let theta_g =
                    (theta * (1u64 << veil_isa::builder::THETA_BITS) as f64).round() as u64;
                let keep = self.b.prune_keep(s, total, theta_g, (*protect).min(n as usize) as u32);
                Operand::Val(LVal { buf: keep, scale: 0, shape: out_shape })
            }
            (Op::Compact { axis }, [x, _]) => {
                let x = match x.clone() {
                    Operand::Const(t) => {
                        let buf = self.const_buf(args[0], &t, f);
                        LVal { buf, scale: f, shape: t.shape.clone() }
                    }
                    o => self.as_val(args[0], o)?,
                };
                if x.shape[..*axis].iter().any(|&d| d != 1) {
                    return Err(self.err("compaction needs the token axis outermost"));
                }
                let rows = x.shape[*axis] as u32;
                let row = (numel(&x.shape) as u32) / rows.max(1);
                let keep = args[1];
                if !self.compactions.contains_key(&keep) {
                    let k = self.operand_val(keep)?;
                    let c = self.b.compaction(k.buf);
                    self.compactions.insert(keep, (c, false));
                }
                let c = &self.compactions[&keep].0;
                let buf = self.b.compact_rows(c, x.buf, row);
                Operand::Val(LVal { buf, shape: out_shape, ..x })
            }
            (Op::Shrink, [x, _]) => {
                let x = self.as_val(args[0], x.clone())?;
                match self.compactions.get_mut(&args[1]) {
                    Some((c, done)) => {
                        if !*done {
                            *done = true;
                            let count = c.count;
                            self.b.set_len(count, 0);
                        }
                    }
                    None => return Err(self.err("shrink without a compaction by the same keep")),
                }
                Operand::Val(x)
            }
            (Op::ReduceMax { axes, .. }, [_]) => {
                // Comparisons need values at scale f (|x| < 2^(bits-1) ring units).
                let x = self.operand_val(args[0])?;
                let x = self.rescaled(&x, self.policy().compared(x.scale));
                let (buf, rows, len) = self.move_axes_last(&x, axes);
                let (buf, len) = match self.token_len {
                    // A row over the keys of a prunable model: padded to the unpruned length
                    // with copies of its first entry (the maximum is unchanged).
                    Some((n, max)) if len as usize == n => {
                        let max = max as u32;
                        let pad = self.b.buf(self.b.kind(buf), rows * max);
                        self.b.copy_into(
                            pad,
                            0,
                            buf,
                            0,
                            &[rows, len],
                            &[max as i64, 1],
                            &[len as i64, 1],
                        );
                        self.b.copy_into(
                            pad,
                            len,
                            buf,
                            0,
                            &[rows, max - len],
                            &[max as i64, 1],
                            &[len as i64, 0],
                        );
                        (pad, max)
                    }
                    _ => (buf, len),
                };
                let m = self.b.max_rows(buf, rows, len);
                Operand::Val(LVal { buf: m, scale: x.scale, shape: out_shape })
            }
            (Op::ArgMax { axis }, [_]) => {
                let x = self.operand_val(args[0])?;
                let (buf, rows, len) = self.move_axes_last(&x, &[*axis]);
                // Exact to 2^-16 of the logit scale for differences below 2^13 (logits, top-k's
                // 1024 and sampling noise): near-ties resolve as the fixed-point values do, and
                // the left (lower) index wins ties.
                let params = argmax_params(x.scale);
                let (_, idx) = self.b.argmax_rows(buf, rows, len, params);
                Operand::Val(LVal { buf: idx, scale: 0, shape: out_shape })
            }
            (Op::KeepTopK { axis, k }, [_]) => {
                let x = self.operand_val(args[0])?;
                if *axis + 1 != x.shape.len() {
                    return Err(self.err("top-k filtering is supported along the last axis only"));
                }
                let len = x.shape[*axis];
                let rows = numel(&x.shape) / len.max(1);
                let params = argmax_params(x.scale);
                let big = encode(crate::ir::TOP_K_DROP, x.scale);
                let buf = self.b.keep_top_k(x.buf, rows as u32, len as u32, *k as u32, params, big);
                Operand::Val(LVal { buf, scale: x.scale, shape: out_shape })
            }
            (Op::Max | Op::Min, [a, b]) => Operand::Val(self.max_min(
                &op,
                (args[0], a.clone()),
                (args[1], b.clone()),
                &out_shape,
            )?),
            (Op::Relu, [_]) => {
                let x = self.operand_val(args[0])?;
                let (m, scale) = self.masked(&x);
                let bits = self.b.drelu(&m, 0);
                Operand::Val(LVal { buf: self.b.select(bits, &m), scale, shape: out_shape })
            }
            (Op::Drelu { slack }, [_]) => {
                let mut params = self.b.compare;
                if *slack > 0.0 {
                    // GELU's thresholds at ±4 (slack 2^-4): 20 bits in 4 digits, one AND round
                    // fewer than 6 digits of 4.
                    let (x, _) = self.compared_value(args[0]);
                    let scale = self.policy().opened(self.operand_val(x)?.scale);
                    params = params.with_slack(*slack, scale);
                }
                let saved = std::mem::replace(&mut self.b.compare, params);
                let r = self.lower_drelu(nd.result, args[0], out_shape);
                self.b.compare = saved;
                r?
            }
            (Op::Cast { to }, [_]) if to.is_float() || to.is_int() => {
                Operand::Val(self.operand_val(args[0])?)
            }
            (Op::Bounded { .. }, [_]) => Operand::Val(self.operand_val(args[0])?),
            _ => return Err(self.err(no_lowering(&op))),
        })
    }

    /// `[v ≥ 0]`: arithmetic shares when only products read it (and with them the selection of
    /// the compared value), else bits.
    fn lower_drelu(
        &mut self,
        d: Value,
        v: Value,
        shape: Vec<usize>,
    ) -> Result<Operand, LowerError> {
        Ok(match self.drelu_reads(d, v) {
            Some(times) => {
                let buf = self.drelu_arith(d, v, times, &shape)?;
                Operand::Val(LVal { buf, scale: 0, shape })
            }
            None => Operand::Bits { bits: self.drelu_with(v, false)?, shape },
        })
    }

    /// True when `a = [x ≥ c1]` and `b = [x ≥ c2]` compare the same value with `c1 ≤ c2`.
    fn nested_thresholds(&self, a: Buf, b: Buf) -> bool {
        matches!((self.bit_src.get(&a), self.bit_src.get(&b)), (Some((xa, ca)), Some((xb, cb))) if xa == xb && ca <= cb)
    }

    fn add_sub(
        &mut self,
        op: &Op,
        a: (Value, Operand),
        b: (Value, Operand),
        out: &[usize],
    ) -> Result<LVal, LowerError> {
        let sub = matches!(op, Op::Sub);
        match (a, b) {
            ((va, Operand::Const(c)), (vb, x)) => {
                // c - x = -(x - c); c + x = x + c.
                let x = self.as_val(vb, x)?;
                let xf = self.full(&x, out);
                let xl = LVal { buf: xf, scale: x.scale, shape: out.to_vec() };
                let cb = self.const_buf(va, &c, x.scale);
                let inner = inner_of(&c.shape, out).unwrap_or(1);
                let cb = if inner_of(&c.shape, out).is_some() {
                    cb
                } else {
                    self.b.broadcast(cb, &u32s(&c.shape), &u32s(out))
                };
                let buf = if sub {
                    let d = self.b.sub_b(xl.buf, cb, inner);
                    self.b.neg(d)
                } else {
                    self.b.add_b(xl.buf, cb, inner)
                };
                Ok(LVal { buf, scale: x.scale, shape: out.to_vec() })
            }
            ((va, x), (vb, Operand::Const(c))) => {
                let x = self.as_val(va, x)?;
                let xf = self.full(&x, out);
                let cb = self.const_buf(vb, &c, x.scale);
                let (cb, inner) = match inner_of(&c.shape, out) {
                    Some(i) => (cb, i),
                    None => (self.b.broadcast(cb, &u32s(&c.shape), &u32s(out)), 1),
                };
                let buf =
                    if sub { self.b.sub_b(xf, cb, inner) } else { self.b.add_b(xf, cb, inner) };
                Ok(LVal { buf, scale: x.scale, shape: out.to_vec() })
            }
            ((va, x), (vb, y)) => {
                let (x, y) = (self.as_val(va, x)?, self.as_val(vb, y)?);
                let s = self.policy().aligned(x.scale, y.scale);
                let (x, y) = (self.rescale_up(&x, s), self.rescale_up(&y, s));
                // The full-size operand goes first; the other broadcasts.
                let (first, second, swapped) =
                    if x.shape == out { (x, y, false) } else { (y, x, true) };
                let first_buf = self.full(&first, out);
                let (sb, inner) = self.bcast(&second, out);
                let buf = match (sub, swapped) {
                    (false, _) => self.b.add_b(first_buf, sb, inner),
                    (true, false) => self.b.sub_b(first_buf, sb, inner),
                    (true, true) => {
                        let d = self.b.sub_b(first_buf, sb, inner);
                        self.b.neg(d)
                    }
                };
                Ok(LVal { buf, scale: s, shape: out.to_vec() })
            }
        }
    }

    /// Multiplies by a public scalar (result carries `f` more fractional bits unless the scalar
    /// is an integer).
    fn scale_by(&mut self, x: &LVal, c: f64) -> LVal {
        match self.policy().scalar_product(x.scale, c) {
            // ×1 is the value itself: the same buffer, so it shares the value's openings.
            ScalarProduct::Integer(1) => x.clone(),
            ScalarProduct::Integer(i) => LVal { buf: self.b.mul_imm(x.buf, i as u64), ..x.clone() },
            ScalarProduct::Relabel { k, negate } => {
                let buf = if negate { self.b.neg(x.buf) } else { x.buf };
                LVal { buf, scale: x.scale + k, shape: x.shape.clone() }
            }
            ScalarProduct::Unlabel { k, negate } => {
                let buf = if negate { self.b.neg(x.buf) } else { x.buf };
                LVal { buf, scale: x.scale - k, shape: x.shape.clone() }
            }
            ScalarProduct::RelabelTruncated { k, negate } => {
                let buf = if negate { self.b.neg(x.buf) } else { x.buf };
                let l = LVal { buf, scale: x.scale + k, shape: x.shape.clone() };
                self.at_f(&l)
            }
            ScalarProduct::Encoded { truncate_first } => {
                let x = if truncate_first { self.at_f(x) } else { x.clone() };
                LVal {
                    buf: self.b.mul_imm(x.buf, encode(c, self.f)),
                    scale: x.scale + self.f,
                    shape: x.shape.clone(),
                }
            }
        }
    }

    fn mul_const(
        &mut self,
        vx: Value,
        c: &Arc<Tensor>,
        out: &[usize],
        cv: Value,
    ) -> Result<Operand, LowerError> {
        let x = self.operand_val(vx)?;
        if c.numel() == 1 {
            return Ok(Operand::Val(LVal {
                shape: out.to_vec(),
                ..self.scale_by(&x, c.get_f64(0))
            }));
        }
        let p = self.policy();
        let x = self.rescaled(&x, p.before_public_product(x.scale));
        let integral = (0..c.numel()).all(|i| c.get_f64(i).fract() == 0.0);
        let cscale = p.public_factor(integral);
        let data: Vec<u64> = (0..c.numel()).map(|i| encode(c.get_f64(i), cscale)).collect();
        let cb = self.b.constant_from(data, self.origin(cv));
        let xf = self.full(&x, out);
        let (cb, inner) = match inner_of(&c.shape, out) {
            Some(i) => (cb, i),
            None => (self.b.broadcast(cb, &u32s(&c.shape), &u32s(out)), 1),
        };
        Ok(Operand::Val(LVal {
            buf: self.b.mul_local(xf, cb, inner),
            scale: x.scale + cscale,
            shape: out.to_vec(),
        }))
    }

    fn is_weight(&self, l: &LVal) -> bool {
        matches!(self.b.kind(l.buf), Kind::Private(Party::Server))
    }

    fn mul(
        &mut self,
        result: Value,
        a: (Value, Operand),
        b: (Value, Operand),
        out: &[usize],
    ) -> Result<Operand, LowerError> {
        for key in [(a.0, b.0), (b.0, a.0)] {
            if let Some(l) = self.bit_times.get(&key) {
                return Ok(Operand::Val(l.clone()));
            }
        }
        if let Some(i) = square_factor(self.g, &self.uses, &self.readers, result, &[a.0, b.0]) {
            // x·z² from the openings of x and z: no opening of the square.
            let ((sq, oq), ox) =
                if i == 0 { (a.clone(), b.1.clone()) } else { (b.clone(), a.1.clone()) };
            let zv = squared(self.g, sq).expect("square_factor found a square");
            let zo = self.operand(zv)?;
            if let (Operand::Val(x), Operand::Val(q), Operand::Val(z)) = (ox, oq, zo) {
                if x.shape == out && z.shape == out && !self.is_weight(&x) && !self.is_weight(&z) {
                    // The square's own share (`square_masked` of z's cached opening).
                    let (mx, sx) = self.masked(&x);
                    let (mz, _) = self.masked(&z);
                    let buf = self.b.mul_square_masked(&mx, &mz, q.buf);
                    let scale = sx + q.scale;
                    return Ok(Operand::Val(LVal { buf, scale, shape: out.to_vec() }));
                }
            }
        }
        if let Some(i) = cube_operand(self.g, &self.uses, &[a.0, b.0]) {
            // (z·z)·z from z's one opening: no opening of the square.
            let z = if i == 0 { &a } else { &b };
            let z = self.as_val(z.0, z.1.clone())?;
            if z.shape == out {
                let (m, s) = self.masked(&z);
                let buf = self.b.cube_masked(&m);
                return Ok(Operand::Val(LVal { buf, scale: 3 * s, shape: out.to_vec() }));
            }
        }
        match (a, b) {
            ((vc, Operand::Const(c)), (vx, _)) | ((vx, _), (vc, Operand::Const(c))) => {
                self.mul_const(vx, &c, out, vc)
            }
            ((_, Operand::Bits { bits, shape }), (vy, y))
            | ((vy, y), (_, Operand::Bits { bits, shape })) => {
                let y = self.as_val(vy, y)?;
                if shape != out || y.shape != out {
                    return Err(self
                        .err("selection by comparison bits needs operands of the result's shape"));
                }
                let (m, scale) = self.masked(&y);
                Ok(Operand::Val(LVal { buf: self.b.select(bits, &m), scale, shape: out.to_vec() }))
            }
            ((va, x), (vb, y)) => {
                let (x, y) = (self.as_val(va, x)?, self.as_val(vb, y)?);
                // A weight of the server times a share: the constant-operand protocol.
                for (w, s) in [(&y, &x), (&x, &y)] {
                    if self.is_weight(w) && !self.is_weight(s) && s.shape == out {
                        if let Some(inner) = inner_of(&w.shape, out) {
                            let s = self.rescaled(s, self.policy().before_weight_product());
                            let buf = self.b.mul_priv(s.buf, w.buf, inner);
                            return Ok(Operand::Val(LVal {
                                buf,
                                scale: s.scale + w.scale,
                                shape: out.to_vec(),
                            }));
                        }
                    }
                }
                if va == vb {
                    let (m, _) = self.masked(&x);
                    let buf = self.b.square_masked(&m);
                    let scale = self.policy().product(x.scale, x.scale);
                    return Ok(Operand::Val(LVal { buf, scale, shape: out.to_vec() }));
                }
                let (first, second) = if x.shape == out { (x, y) } else { (y, x) };
                let first_buf = self.full(&first, out);
                let first = LVal { buf: first_buf, ..first };
                let (sb, inner) = self.bcast(&second, out);
                let second = LVal { buf: sb, ..second };
                let (mx, _) = self.masked(&first);
                let (my, _) = self.masked(&second);
                let buf = self.b.mul_masked(&mx, &my, inner);
                let scale = self.policy().product(first.scale, second.scale);
                Ok(Operand::Val(LVal { buf, scale, shape: out.to_vec() }))
            }
        }
    }

    fn matmul(&mut self, va: Value, vb: Value, out: &[usize]) -> Result<LVal, LowerError> {
        let f = self.f;
        let (sa, sb) = (self.shape(va), self.shape(vb));
        if sa.len() < 2 || sb.len() < 2 {
            return Err(self.err("matrix-vector products are not supported yet"));
        }
        let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
        let batch_a: usize = sa[..sa.len() - 2].iter().product();
        let batch_b: usize = sb[..sb.len() - 2].iter().product();
        let (oa, ob) = (self.operand(va)?, self.operand(vb)?);
        if let Operand::Const(c) = &ob {
            let x = self.as_val(va, oa)?;
            let x = self.rescaled(&x, self.policy().before_public_product(x.scale));
            if batch_b != 1 {
                return Err(self.err("a batched constant right operand is not supported yet"));
            }
            let cb = self.const_buf(vb, c, f);
            let buf = self.b.matmul_local(x.buf, cb, 1, (batch_a * m) as u32, k as u32, n as u32);
            return Ok(LVal { buf, scale: x.scale + f, shape: out.to_vec() });
        }
        let (x, y) = (self.as_val(va, oa)?, self.as_val(vb, ob)?);
        if self.is_weight(&y) && batch_b == 1 {
            let xs = self.rescaled(&x, self.policy().before_weight_product());
            let buf =
                self.b.matmul_priv(xs.buf, y.buf, 1, (batch_a * m) as u32, k as u32, n as u32);
            return Ok(LVal { buf, scale: xs.scale + y.scale, shape: out.to_vec() });
        }
        if batch_a != batch_b && batch_a != 1 && batch_b != 1 {
            return Err(self.err("matmul batch dimensions must be equal or 1"));
        }
        let batch = batch_a.max(batch_b);
        let rb = sb.len();
        // Blocks of a concatenated right operand (a KV cache) are opened once each; a plain
        // operand (also one shared across the batch) is one block, so the prefill's keys and
        // values open once for every step.
        let cache = [(rb - 1, true), (rb - 2, false)]
            .into_iter()
            .filter(|_| batch_a == batch_b)
            .find_map(|(axis, n)| self.concat_parts(vb, axis).map(|p| (p, n)));
        let (parts, along_n) = cache.unwrap_or((vec![vb], true));
        let dims = (batch as u32, m as u32, k as u32, n as u32);
        self.matmul_blocks(x, &parts, along_n, dims, out)
    }

    /// The blocks of a secret value built by concatenations along `axis` (a KV cache: the
    /// prefill's keys, then one row per generated token), in order.
    fn concat_parts(&self, v: Value, axis: usize) -> Option<Vec<Value>> {
        let nd = &self.g.nodes[self.g.producer(v)?];
        match nd.op {
            Op::Concat { axis: a }
                if a == axis && self.part.vis[v] == Vis::Shared && nd.args.len() > 1 =>
            {
                let mut out = Vec::new();
                for &arg in &nd.args {
                    match self.concat_parts(arg, axis) {
                        Some(p) => out.extend(p),
                        None => out.push(arg),
                    }
                }
                Some(out)
            }
            _ => None,
        }
    }

    /// `x · concat(parts)` block by block, each block of the right operand opened once for
    /// every product it takes part in: a decode step opens only its own key and value rows,
    /// not the whole cache again (as weights are masked once). Along `n` the products of the
    /// blocks are concatenated; along `k` the left operand is opened per block (the same bytes
    /// as opening it whole) and the products summed.
    fn matmul_blocks(
        &mut self,
        x: LVal,
        parts: &[Value],
        along_n: bool,
        (batch, m, k, n): (u32, u32, u32, u32),
        out: &[usize],
    ) -> Result<LVal, LowerError> {
        let f = self.f;
        // Blocks may differ in scale (a public layer's prefill keys come from the client at f,
        // the decode rows at 2f): x follows the widest block, and each block is truncated as
        // it needs.
        let mut raw = Vec::with_capacity(parts.len());
        for &pv in parts {
            raw.push(self.operand_val(pv)?.scale);
        }
        let ymax = raw.iter().copied().max().unwrap_or(f);
        let p = self.policy();
        let mut x = x;
        // The policy truncates the wider left operand; when the right one (a single block) is
        // as wide and was ready two rounds earlier (attention's values against its
        // probabilities), truncate it instead: its truncation and its plain opening then run
        // while the left is still being computed, and the left needs one opening, not two.
        // The product's scale is the same either way.
        let right_first = parts.len() == 1 && p.matmul_left(x.scale, ymax).is_some() && {
            let y = self.operand_val(parts[0])?;
            y.scale > f
                && p.matmul_right(x.scale, f).is_none()
                && self.b.ready_phase(y.buf) + 2 <= self.b.ready_phase(x.buf)
        };
        if !right_first {
            if let Some(t) = p.matmul_left(x.scale, ymax) {
                x = self.rescaled(&x, t);
            }
        }
        let trunc: Vec<bool> = if right_first {
            vec![true]
        } else {
            raw.iter().map(|&s| p.matmul_right(x.scale, s).is_some()).collect()
        };
        // Truncate every fresh block first, then open: the order of the plain product.
        let mut fresh: Vec<Option<LVal>> = Vec::new();
        for (&pv, &t) in parts.iter().zip(&trunc) {
            fresh.push(match self.block_open.contains_key(&(pv, t)) {
                true => None,
                false => {
                    let y = self.operand_val(pv)?;
                    Some(if t { self.at_f(&y) } else { y })
                }
            });
        }
        let mx = along_n.then(|| self.b.masked_open(x.buf, 0));
        let mut blocks: Vec<(Buf, u8, u32)> = Vec::new();
        let mut off = 0u32;
        for ((&pv, y), t) in parts.iter().zip(fresh).zip(trunc) {
            let (my, ys) = match y {
                Some(y) => {
                    let o = (self.b.masked_open(y.buf, 0), y.scale);
                    self.block_open.insert((pv, t), o.clone());
                    o
                }
                None => self.block_open[&(pv, t)].clone(),
            };
            let ps = self.shape(pv);
            let w = if along_n { ps[ps.len() - 1] } else { ps[ps.len() - 2] } as u32;
            let prod = match &mx {
                Some(mx) => self.b.matmul_masked(mx, &my, batch, m, k, w),
                None => {
                    let xs = self.b.slice(
                        x.buf,
                        &[batch, m, k],
                        &[0, 0, off],
                        &[1, 1, 1],
                        &[batch, m, w],
                    );
                    let mxs = self.b.masked_open(xs, 0);
                    self.b.matmul_masked(&mxs, &my, batch, m, w, n)
                }
            };
            blocks.push((prod, x.scale + ys, w));
            off += w;
        }
        if let [(buf, scale, _)] = blocks[..] {
            return Ok(LVal { buf, scale, shape: out.to_vec() });
        }
        let scale = blocks.iter().map(|b| b.1).max().unwrap_or(f);
        let mut bufs = Vec::new();
        for (buf, s, w) in blocks {
            let shape = if along_n { vec![batch * m, w] } else { vec![batch * m, n] };
            let l = LVal { buf, scale: s, shape: vec![] };
            bufs.push((self.rescale_up(&l, scale).buf, shape));
        }
        let buf = if along_n {
            self.b.concat(&bufs, 1)
        } else {
            let mut acc = bufs[0].0;
            for (b, _) in &bufs[1..] {
                acc = self.b.add(acc, *b);
            }
            acc
        };
        Ok(LVal { buf, scale, shape: out.to_vec() })
    }

    /// Transposes so `axes` come last; returns the buffer and the `rows × len` view.
    fn move_axes_last(&mut self, x: &LVal, axes: &[usize]) -> (Buf, u32, u32) {
        let r = x.shape.len();
        let mut perm: Vec<usize> = (0..r).filter(|a| !axes.contains(a)).collect();
        perm.extend_from_slice(axes);
        let len: usize = axes.iter().map(|&a| x.shape[a]).product();
        let rows = numel(&x.shape) / len.max(1);
        let buf = if perm.iter().enumerate().all(|(i, &p)| i == p) {
            x.buf
        } else {
            self.b.transpose(x.buf, &u32s(&x.shape), &perm)
        };
        (buf, rows as u32, len as u32)
    }

    fn reduce_sum(&mut self, x: &LVal, axes: &[usize]) -> Result<Buf, LowerError> {
        let contiguous = axes.windows(2).all(|w| w[1] == w[0] + 1);
        if contiguous && !axes.is_empty() {
            let (lo, hi) = (axes[0], axes[axes.len() - 1] + 1);
            let outer: usize = x.shape[..lo].iter().product();
            let mid: usize = x.shape[lo..hi].iter().product();
            let inner: usize = x.shape[hi..].iter().product();
            return Ok(self.b.sum(x.buf, outer as u32, mid as u32, inner as u32));
        }
        let (buf, rows, len) = self.move_axes_last(x, axes);
        Ok(self.b.sum(buf, rows, len, 1))
    }

    /// Comparison bits `[v ≥ 0]`, sharing one masked opening (and the dealer's tables) between
    /// comparisons of the same value against different public thresholds; with `arith`, the
    /// bit as 0/1 shares instead, converted within the comparison's last AND round.
    fn drelu_with(&mut self, v: Value, arith: bool) -> Result<Buf, LowerError> {
        let (m, thr, src) = self.compared(v)?;
        if arith {
            return Ok(self.b.drelu_arith(&m, thr, None).0);
        }
        let bits = self.b.drelu(&m, thr);
        self.bit_src.insert(bits, src);
        Ok(bits)
    }

    /// The value `x` a comparison `[v ≥ 0]` compares, when `v` is `x - c` or `x + c` for a
    /// public scalar `c` (else `v` itself and 0).
    fn compared_value(&self, v: Value) -> (Value, f64) {
        if let Some(p) = self.g.producer(v) {
            let pd = &self.g.nodes[p];
            if matches!(pd.op, Op::Add | Op::Sub) && self.part.vis[v] == Vis::Shared {
                if let Some(c) = self.g.const_data(pd.args[1]).filter(|c| c.numel() == 1) {
                    if self.g.ty(pd.args[0]).shape == self.g.ty(v).shape {
                        let c = if matches!(pd.op, Op::Sub) { c.get_f64(0) } else { -c.get_f64(0) };
                        return (pd.args[0], c);
                    }
                }
            }
        }
        (v, 0.0)
    }

    /// How the comparison `d = [v ≥ 0]` is read, when it can be made as 0/1 shares within its
    /// own rounds: every reader multiplies it by a constant or by the compared value (then
    /// `Some(true)`: the selection of that value is fused too).
    fn drelu_reads(&self, d: Value, v: Value) -> Option<bool> {
        if self.g.outputs.contains(&d) {
            return None;
        }
        let (x, _) = self.compared_value(v);
        let mut times = false;
        for &n in self.readers.get(&d)? {
            let nd = &self.g.nodes[n];
            if !matches!(nd.op, Op::Mul) || nd.args.len() != 2 {
                return None;
            }
            let other = if nd.args[0] == d { nd.args[1] } else { nd.args[0] };
            if other == x && other != d {
                times = true;
            } else if self.g.const_data(other).is_none() {
                return None;
            }
        }
        Some(times)
    }

    /// `[v ≥ 0]` as 0/1 shares; with `times`, also `[v ≥ 0]·x` for the compared `x`, kept for
    /// the product that reads it.
    fn drelu_arith(
        &mut self,
        d: Value,
        v: Value,
        times: bool,
        shape: &[usize],
    ) -> Result<Buf, LowerError> {
        if !times {
            return self.drelu_with(v, true);
        }
        let (x, _) = self.compared_value(v);
        let (m, thr, _) = self.compared(v)?;
        let scale = self.policy().opened(self.operand_val(x)?.scale);
        let (bit, prod) = self.b.drelu_arith(&m, thr, Some(&m));
        let prod =
            LVal { buf: prod.expect("asked for the selection"), scale, shape: shape.to_vec() };
        self.bit_times.insert((d, x), prod);
        Ok(bit)
    }

    /// The masked opening a comparison of `v` uses, its threshold in ring units, and the
    /// compared value with the threshold as a number.
    fn compared(&mut self, v: Value) -> Result<(Masked, u64, (Value, f64)), LowerError> {
        let (x, c) = self.compared_value(v);
        let xl = self.operand_val(x)?;
        let (m, scale) = self.masked(&xl);
        Ok((m, encode(c, scale), (x, c)))
    }

    fn max_min(
        &mut self,
        op: &Op,
        a: (Value, Operand),
        b: (Value, Operand),
        out: &[usize],
    ) -> Result<LVal, LowerError> {
        let is_min = matches!(op, Op::Min);
        match (a, b) {
            ((_, Operand::Const(c)), (vx, _)) | ((vx, _), (_, Operand::Const(c)))
                if c.numel() == 1 =>
            {
                // max(x, c) = c + [x ≥ c]·(x - c); min(x, c) = c - [x ≤ c]·(c - x).
                let x = self.operand_val(vx)?;
                let (m, scale) = self.masked(&x);
                let cv = c.get_f64(0);
                let cenc = encode(cv, scale);
                let shifted = Masked { c: self.b.add_imm(m.c, cenc.wrapping_neg()), ..m.clone() };
                let (sel_src, bits) = if is_min {
                    let neg = Masked {
                        c: self.b.neg(shifted.c),
                        s: self.b.neg(shifted.s),
                        ..shifted.clone()
                    };
                    let _ = neg;
                    return Err(self.err("min with a constant is not supported yet"));
                } else {
                    let bits = self.b.drelu(&m, cenc);
                    (shifted, bits)
                };
                let sel = self.b.select(bits, &sel_src);
                let buf = self.b.add_imm(sel, cenc);
                let _ = out;
                Ok(LVal { buf, scale, shape: x.shape })
            }
            ((va, x), (vb, y)) => {
                let (x, y) = (self.as_val(va, x)?, self.as_val(vb, y)?);
                if x.shape != out || y.shape != out {
                    return Err(
                        self.err("elementwise max of secrets needs operands of the result's shape")
                    );
                }
                let p = self.policy();
                let x = self.rescaled(&x, p.compared(x.scale));
                let y = self.rescaled(&y, p.compared(y.scale));
                let s = p.aligned(x.scale, y.scale);
                let (x, y) = (self.rescale_up(&x, s), self.rescale_up(&y, s));
                let (mx, _) = if is_min {
                    self.b.max_pair(y.buf, x.buf)
                } else {
                    self.b.max_pair(x.buf, y.buf)
                };
                let buf = if is_min {
                    // min(x, y) = x + y - max(x, y)
                    let sum = self.b.add(x.buf, y.buf);
                    self.b.sub(sum, mx)
                } else {
                    mx
                };
                Ok(LVal { buf, scale: s, shape: out.to_vec() })
            }
        }
    }

    /// Gather along axis 0: rows of a secret or server-private table by client indices (a
    /// product with their one-hot encoding, computed in the clear by the client) or by public
    /// indices (copies).
    fn gather(&mut self, vt: Value, vi: Value, out: &[usize]) -> Result<LVal, LowerError> {
        let ts = self.shape(vt);
        let depth = ts[0];
        let row: usize = ts[1..].iter().product();
        let idx = match self.part.vis[vi] {
            Vis::Client => None,
            _ => Some(self.operand(vi)?),
        };
        match (self.part.vis[vi], idx) {
            (Vis::Client, _) => {
                let oh = self.client_input(vi, ClientFeed::OneHot(vi, depth), true);
                let t = self.operand_val(vt)?;
                let rows = numel(&oh.shape) / depth;
                let buf = if self.is_weight(&t) {
                    self.b.matmul_priv(oh.buf, t.buf, 1, rows as u32, depth as u32, row as u32)
                } else {
                    let mo = self.b.masked_open(oh.buf, 0);
                    let mt = self.b.masked_open(t.buf, 0);
                    self.b.matmul_masked(&mo, &mt, 1, rows as u32, depth as u32, row as u32)
                };
                Ok(LVal { buf, scale: t.scale, shape: out.to_vec() })
            }
            (_, Some(Operand::Const(idx))) => {
                let t = self.operand_val(vt)?;
                let d = self.b.buf(Kind::Share, numel(out) as u32);
                for i in 0..idx.numel() {
                    let mut r = idx.get_f64(i) as i64;
                    if r < 0 {
                        r += depth as i64;
                    }
                    if r < 0 || r as usize >= depth {
                        return Err(self.err(format!("index {r} is out of range for {depth} rows")));
                    }
                    self.b.copy_into(
                        d,
                        (i * row) as u32,
                        t.buf,
                        (r as usize * row) as u32,
                        &[row as u32],
                        &[1],
                        &[1],
                    );
                }
                Ok(LVal { buf: d, scale: t.scale, shape: out.to_vec() })
            }
            (Vis::Shared, Some(Operand::Val(ix))) => {
                // A secret index (a generated token): its one-hot encoding, computed on shares,
                // times the table; nothing about the index is opened.
                if ix.scale != 0 {
                    return Err(self.err("secret gather indices must be integers"));
                }
                let oh = self.b.one_hot_secret(ix.buf, depth as u32);
                let rows = numel(&ix.shape);
                if let Operand::Const(c) = self.operand(vt)? {
                    // A public table (an open base model's embeddings): a local product.
                    let cb = self.const_buf(vt, &c, self.f);
                    let (r, d, w) = (rows as u32, depth as u32, row as u32);
                    let buf = self.b.matmul_local(oh, cb, 1, r, d, w);
                    return Ok(LVal { buf, scale: self.f, shape: out.to_vec() });
                }
                let t = self.operand_val(vt)?;
                let buf = if self.is_weight(&t) {
                    self.b.matmul_priv(oh, t.buf, 1, rows as u32, depth as u32, row as u32)
                } else {
                    let mo = self.b.masked_open(oh, 0);
                    let mt = self.b.masked_open(t.buf, 0);
                    self.b.matmul_masked(&mo, &mt, 1, rows as u32, depth as u32, row as u32)
                };
                Ok(LVal { buf, scale: t.scale, shape: out.to_vec() })
            }
            _ => Err(self.err(
                "gather by secret indices is not supported (only client-known or public indices)",
            )),
        }
    }
}

/// Argmax and top-k compare differences below 2^(this - 1) logit units (8192): logits, the
/// 1024 top-k lowers by, and the client's sampling noise (`veil generate` bounds T).
pub const ARGMAX_RANGE_BITS: u8 = 14;

/// Comparisons of argmax and top-k on values at `scale`: exact to 2^-16 of a logit.
fn argmax_params(scale: u8) -> veil_isa::builder::CompareParams {
    veil_isa::builder::CompareParams {
        bits: (scale + ARGMAX_RANGE_BITS).min(62),
        ignore: scale.saturating_sub(16),
        digit: 5,
    }
}

/// Encodes a real at `scale` fractional bits in Z_2^64.
pub fn encode(x: f64, scale: u8) -> u64 {
    let v = (x * (1u64 << scale) as f64).round();
    v.clamp(i64::MIN as f64, i64::MAX as f64) as i64 as u64
}

/// Why an operator on secret data has no two-party form, and what the user can do.
fn no_lowering(op: &Op) -> String {
    let what = match op {
        Op::Exp => {
            "exp of a secret outside a softmax has no two-party form: the stdlib's exp \
                    (exp_neg) is exact only for inputs known to be ≤ 0, as a softmax's are after \
                    its row maximum is subtracted"
        }
        Op::Pow => {
            "a power of a secret is lowered only for a constant integer exponent from 1 \
                    to 8 (as products); this one's exponent is secret, fractional or larger"
        }
        Op::Where => {
            "a selection whose condition is secret (computed from secret data or held \
                      by one party) has no two-party form yet; conditions on public data are folded"
        }
        Op::Erf => {
            "erf of a secret outside a GELU has no stdlib approximation yet (GELU's erf \
                    form is recognised as a whole and approximated)"
        }
        Op::Equal | Op::Less | Op::LessOrEqual | Op::Greater | Op::GreaterOrEqual => {
            "a comparison of secret data gives a secret bool, which has no two-party form \
             outside the comparisons inside max, ReLU, GELU and softmax"
        }
        Op::Log => "log of a secret has no stdlib approximation yet",
        _ => "no two-party lowering for this operator on secret data",
    };
    what.to_string()
}

/// Which argument `z` of a product `(z·z)·z` (either order) is the cubed value, when the
/// square is read by that product only: the lowering cubes `z` from its one opening
/// (`cube_masked`), and the simulator does the same. A square read elsewhere too is opened
/// anyway, and `z·z²` from that opening is narrower than a cube at three times the scale.
pub(crate) fn cube_operand(
    g: &Graph,
    uses: &SecondaryMap<Value, u32>,
    args: &[Value],
) -> Option<usize> {
    if args.len() != 2 || args[0] == args[1] {
        return None;
    }
    (0..2).find(|&i| {
        let (z, sq) = (args[i], args[1 - i]);
        uses[sq] == 1 && squared(g, sq) == Some(z)
    })
}

/// `z` when `v` is the product `z·z`.
pub(crate) fn squared(g: &Graph, v: Value) -> Option<Value> {
    let nd = &g.nodes[g.producer(v)?];
    (matches!(nd.op, Op::Mul) && nd.args.len() == 2 && nd.args[0] == nd.args[1])
        .then_some(nd.args[0])
}

/// Which argument of a product `x·(z·z)` (either order, `x` not `z`) is the square, when the
/// square is read by that product only and the product by sums only: the lowering multiplies
/// `x` by the square's share from the openings of `x` and `z` (`mul_square_masked`), and the
/// simulator does the same (the square taken whole, not truncated by an opening of its own).
pub(crate) fn square_factor(
    g: &Graph,
    uses: &SecondaryMap<Value, u32>,
    readers: &HashMap<Value, Vec<Node>>,
    result: Value,
    args: &[Value],
) -> Option<usize> {
    if args.len() != 2 || args[0] == args[1] || g.outputs.contains(&result) {
        return None;
    }
    // The product carries three scales where the opened square would give two: only a sum
    // takes that for free (its consumer's opening truncates it anyway); a scalar factor or
    // another product would truncate it in a round of its own, or overflow.
    let sums = readers.get(&result).is_some_and(|rs| {
        !rs.is_empty() && rs.iter().all(|&n| matches!(g.nodes[n].op, Op::Add | Op::Sub))
    });
    if !sums {
        return None;
    }
    (0..2).find(|&i| {
        let (sq, x) = (args[i], args[1 - i]);
        uses[sq] == 1 && squared(g, sq).is_some_and(|z| z != x)
    })
}

/// The nodes reading each value.
pub(crate) fn readers(g: &Graph) -> HashMap<Value, Vec<Node>> {
    let mut r: HashMap<Value, Vec<Node>> = HashMap::new();
    for (n, nd) in g.nodes.iter() {
        for &a in &nd.args {
            r.entry(a).or_default().push(n);
        }
    }
    r
}
