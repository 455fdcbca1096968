//! Grouping local elementwise instructions into kernels.
//!
//! A group collects elementwise instructions over one length. Instructions the JIT does not
//! compile (dealer draws, matrix products, copies, queued openings) that touch none of the
//! group's buffers run first and the group keeps growing past them; the group is flushed into a
//! kernel, which runs where it is flushed, at the first instruction that touches one of its
//! buffers, at an `exchange`, or when the next elementwise instruction cannot join. Running the
//! members later than their program positions is sound because nothing in between reads or
//! writes what they touch.
//!
//! Inside a kernel a buffer written by one member and read elementwise by a later one is an SSA
//! value, never stored in between; a written buffer is stored only if something after the
//! kernel may read it (its next access in the section is not a full overwrite).

use super::kernel::{Kernel, Op, Read, Sig, V};
use std::collections::{HashMap, HashSet};
use veil_isa::{Buf, Class, ElementwiseVisitor, Instr, Kind, Party, Program};

/// What runs next in a section.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// One instruction, interpreted.
    Instr(usize),
    /// A fused kernel (index into [`Plan::kernels`]).
    Kernel(usize),
}

/// The execution order of one section for one party.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// The kernels the steps refer to.
    pub kernels: Vec<Kernel>,
}

/// Bounds that keep one kernel's compile time and register pressure modest.
const MAX_OPS: usize = 256;
const MAX_PTRS: usize = 32;

/// One instruction as a small DAG over its sources (`Op::Load(k)` reads `srcs[k]`).
struct Lowered {
    n: usize,
    srcs: Vec<(Buf, Read)>,
    ops: Vec<Op>,
    dsts: Vec<(Buf, V)>,
}

enum Lower {
    /// This party does nothing for the instruction.
    NoOp,
    /// Elementwise: may join a kernel.
    Fuse(Lowered),
    /// Runs in the interpreter.
    Interp,
}

struct Ctx<'a> {
    prog: &'a Program,
    me: Party,
}

impl Ctx<'_> {
    fn kind(&self, b: Buf) -> Kind {
        self.prog.buffers[b.0 as usize].kind
    }

    fn len(&self, b: Buf) -> usize {
        self.prog.buffers[b.0 as usize].len as usize
    }

    /// The interpreter's rules (see `interp/exec.rs`): whether this party writes a result of kind
    /// `k`, whether it includes a public addend, whether a buffer is the peer's private one.
    fn computes(&self, k: Kind) -> bool {
        !matches!(k, Kind::Private(p) if p != self.me)
    }

    fn adds_public(&self, dk: Kind) -> bool {
        dk != Kind::Share || self.me == Party::Client
    }

    fn foreign(&self, b: Buf) -> bool {
        matches!(self.kind(b), Kind::Private(p) if p != self.me)
    }

    fn access(&self, b: Buf, n: usize, inner: u32) -> Option<Read> {
        let lb = self.len(b);
        if lb == n && inner == 1 {
            Some(Read::Elem)
        } else if lb == 1 {
            Some(Read::Splat)
        } else if lb == 0 || inner == 0 || !n.is_multiple_of(lb * inner as usize) {
            None
        } else {
            Some(Read::Bcast { len: lb as u32, inner })
        }
    }

    fn lower(&self, ins: &Instr) -> Lower {
        let Some(d) = ins.elementwise_dest() else { return Lower::Interp };
        let n = self.len(d);
        if n == 0 {
            return Lower::Interp;
        }
        let dk = self.kind(d);
        if !matches!(ins, Instr::TruncPost { .. }) && !self.computes(dk) {
            return Lower::NoOp;
        }
        let l = Lowered { n, srcs: Vec::new(), ops: Vec::new(), dsts: Vec::new() };
        let mut lowering = Lowering { ctx: self, dk, l };
        match ins.visit_elementwise(&mut lowering) {
            Some(()) => Lower::Fuse(lowering.l),
            None => Lower::Interp,
        }
    }
}

/// One elementwise instruction being lowered (every destination has length `l.n`, and this
/// party computes its results of kind `dk`). A method returns `None` to leave the instruction
/// to the interpreter.
struct Lowering<'c, 'p> {
    ctx: &'c Ctx<'p>,
    dk: Kind,
    l: Lowered,
}

impl Lowering<'_, '_> {
    fn src(&mut self, b: Buf, a: Read) -> V {
        self.l.srcs.push((b, a));
        self.push(Op::Load(self.l.srcs.len() as u32 - 1))
    }

    fn push(&mut self, op: Op) -> V {
        self.l.ops.push(op);
        self.l.ops.len() as u32 - 1
    }

    fn access(&self, b: Buf, inner: u32) -> Option<Read> {
        self.ctx.access(b, self.l.n, inner)
    }

    fn add_sub(&mut self, d: Buf, a: Buf, b: Buf, inner: u32, sub: bool) -> Option<()> {
        let acc = self.access(b, inner)?;
        let ctx = self.ctx;
        let use_a = ctx.kind(a) != Kind::Public || ctx.adds_public(self.dk);
        let use_b = ctx.kind(b) != Kind::Public || ctx.adds_public(self.dk);
        let v = match (use_a, use_b) {
            (true, true) => {
                let x = self.src(a, Read::Elem);
                let y = self.src(b, acc);
                self.push(if sub { Op::Sub(x, y) } else { Op::Add(x, y) })
            }
            (true, false) => self.src(a, Read::Elem),
            (false, true) => {
                let y = self.src(b, acc);
                if sub {
                    self.push(Op::Neg(y))
                } else {
                    y
                }
            }
            (false, false) => self.push(Op::Const(0)),
        };
        self.l.dsts.push((d, v));
        Some(())
    }

    /// `d = op(a, imm)`.
    fn with_const(&mut self, d: Buf, a: Buf, imm: u64, op: fn(V, V) -> Op) -> Option<()> {
        let x = self.src(a, Read::Elem);
        let k = self.push(Op::Const(imm));
        let v = self.push(op(x, k));
        self.l.dsts.push((d, v));
        Some(())
    }
}

impl ElementwiseVisitor for Lowering<'_, '_> {
    type Out = Option<()>;

    fn other(&mut self, _: &Instr) -> Option<()> {
        None
    }

    fn add(&mut self, d: Buf, a: Buf, b: Buf, inner: u32) -> Option<()> {
        self.add_sub(d, a, b, inner, false)
    }

    fn sub(&mut self, d: Buf, a: Buf, b: Buf, inner: u32) -> Option<()> {
        self.add_sub(d, a, b, inner, true)
    }

    fn mul(&mut self, d: Buf, a: Buf, b: Buf, inner: u32) -> Option<()> {
        let acc = self.access(b, inner)?;
        let v = if self.ctx.foreign(a) || self.ctx.foreign(b) {
            self.push(Op::Const(0))
        } else {
            let x = self.src(a, Read::Elem);
            let y = self.src(b, acc);
            self.push(Op::Mul(x, y))
        };
        self.l.dsts.push((d, v));
        Some(())
    }

    fn neg(&mut self, d: Buf, a: Buf) -> Option<()> {
        let x = self.src(a, Read::Elem);
        let v = self.push(Op::Neg(x));
        self.l.dsts.push((d, v));
        Some(())
    }

    fn add_imm(&mut self, d: Buf, a: Buf, imm: u64) -> Option<()> {
        let imm = if self.ctx.adds_public(self.dk) { imm } else { 0 };
        self.with_const(d, a, imm, Op::Add)
    }

    fn mul_imm(&mut self, d: Buf, a: Buf, imm: u64) -> Option<()> {
        self.with_const(d, a, imm, Op::Mul)
    }

    fn shl(&mut self, d: Buf, a: Buf, bits: u8) -> Option<()> {
        let x = self.src(a, Read::Elem);
        let v = self.push(Op::Shl(x, bits & 63));
        self.l.dsts.push((d, v));
        Some(())
    }

    fn trunc_post(
        &mut self,
        c2: Buf,
        pk: Buf,
        s: Buf,
        c: Buf,
        rhi: Buf,
        m: Buf,
        t: u8,
        w: u8,
    ) -> Option<()> {
        let (t, w) = (t as u32, w as u32);
        // The interpreter's constants; a program outside the validated ranges stays with the
        // interpreter.
        if !(3..=64).contains(&w) || t + 2 > w {
            return None;
        }
        let (wmask, off, k) = crate::kernels::trunc_post_constants(t, w);
        if [pk, s, c, rhi, m].iter().any(|&b| self.ctx.len(b) != self.l.n) {
            return None;
        }
        let cv = self.src(c, Read::Elem);
        let rv = self.src(rhi, Read::Elem);
        let mv = self.src(m, Read::Elem);
        let wm = self.push(Op::Const(wmask));
        let cc = self.push(Op::And(cv, wm));
        let hi = self.push(Op::Ushr(cc, t as u8));
        let offv = self.push(Op::Const(off));
        let c2v = self.push(Op::Sub(hi, offv));
        // p = k when bit w-1 of cc is 0, else 0: (bit - 1) & k.
        let top = self.push(Op::Ushr(cc, (w - 1) as u8));
        let one = self.push(Op::Const(1));
        let bit = self.push(Op::And(top, one));
        let mask = self.push(Op::Sub(bit, one));
        let kv = self.push(Op::Const(k));
        let p = self.push(Op::And(mask, kv));
        let pm = self.push(Op::Mul(p, mv));
        let sv = self.push(Op::Sub(rv, pm));
        self.l.dsts.extend([(c2, c2v), (pk, p), (s, sv)]);
        Some(())
    }
}

/// How an instruction accesses a buffer, for liveness.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Use {
    Read,
    /// Overwrites every element without reading it.
    FullWrite,
    /// Writes some elements, or later (at an exchange).
    Other,
}

/// Every access to each buffer in a section, in program order.
struct Accesses(Vec<Vec<(usize, Use)>>);

impl Accesses {
    fn new(ctx: &Ctx, code: &[Instr], base: usize) -> Accesses {
        use Instr::*;
        let mut acc = vec![Vec::new(); ctx.prog.buffers.len()];
        for (pos, ins) in (base..).zip(code) {
            // Writes that overwrite the whole destination: the elementwise instructions and
            // the two reductions.
            let full =
                ins.class() == Class::Elementwise || matches!(ins, MatMul { .. } | Sum { .. });
            let bufs = ins.buffers();
            for &(b, written) in &bufs {
                let Some(list) = acc.get_mut(b.0 as usize) else { continue };
                let read = bufs.iter().any(|&(r, w)| r == b && !w);
                let u = if read {
                    Use::Read
                } else if written && full && ctx.computes(ctx.prog.buffers[b.0 as usize].kind) {
                    Use::FullWrite
                } else {
                    Use::Other
                };
                list.push((pos, u));
            }
        }
        Accesses(acc)
    }

    /// Whether `b`, last written at `pos` by a kernel made of `members`, may be read after it.
    fn live_after(&self, b: Buf, pos: usize, members: &HashSet<usize>) -> bool {
        let list = &self.0[b.0 as usize];
        let from = list.partition_point(|&(p, _)| p <= pos);
        !matches!(
            list[from..].iter().find(|(p, _)| !members.contains(p)),
            Some(&(_, Use::FullWrite))
        )
    }
}

/// The kernel being collected.
#[derive(Default)]
struct Group {
    n: usize,
    members: Vec<usize>,
    inputs: Vec<(Buf, Read)>,
    loads: HashMap<(Buf, Read), V>,
    ops: Vec<Op>,
    /// The current value of each buffer written so far, and where it was written.
    cur: HashMap<Buf, (V, usize)>,
    /// Written buffers, most recently written last (a layer-independent output order).
    order: Vec<Buf>,
    /// Buffers read with a broadcast pattern (must not be written inside the kernel).
    bcast: HashSet<Buf>,
    touched: HashSet<Buf>,
}

impl Group {
    fn fits(&self, l: &Lowered) -> bool {
        if self.members.is_empty() {
            return true;
        }
        let new_inputs = l.srcs.iter().filter(|s| !self.loads.contains_key(s)).count();
        l.n == self.n
            && self.ops.len() + l.ops.len() <= MAX_OPS
            && self.inputs.len() + new_inputs + self.cur.len() + l.dsts.len() <= MAX_PTRS
            && l.srcs.iter().all(|&(b, a)| a == Read::Elem || !self.cur.contains_key(&b))
            && l.dsts.iter().all(|(d, _)| !self.bcast.contains(d))
    }

    fn add(&mut self, pos: usize, l: Lowered, ins: &Instr) {
        self.n = l.n;
        self.members.push(pos);
        self.touched.extend(ins.buffers().into_iter().map(|(b, _)| b));
        let mut map: Vec<V> = Vec::with_capacity(l.ops.len());
        for op in &l.ops {
            let m = |v: V| map[v as usize];
            let v = match *op {
                Op::Load(k) => {
                    let (b, a) = l.srcs[k as usize];
                    match self.cur.get(&b) {
                        Some(&(v, _)) if a == Read::Elem => v,
                        _ => {
                            if a != Read::Elem {
                                self.bcast.insert(b);
                            }
                            match self.loads.get(&(b, a)) {
                                Some(&v) => v,
                                None => {
                                    self.inputs.push((b, a));
                                    let v = self.push(Op::Load(self.inputs.len() as u32 - 1));
                                    self.loads.insert((b, a), v);
                                    v
                                }
                            }
                        }
                    }
                }
                Op::Const(c) => self.push(Op::Const(c)),
                Op::Add(a, b) => self.push(Op::Add(m(a), m(b))),
                Op::Sub(a, b) => self.push(Op::Sub(m(a), m(b))),
                Op::Mul(a, b) => self.push(Op::Mul(m(a), m(b))),
                Op::Neg(a) => self.push(Op::Neg(m(a))),
                Op::And(a, b) => self.push(Op::And(m(a), m(b))),
                Op::Shl(a, s) => self.push(Op::Shl(m(a), s)),
                Op::Ushr(a, s) => self.push(Op::Ushr(m(a), s)),
            };
            map.push(v);
        }
        for &(d, v) in &l.dsts {
            self.cur.insert(d, (map[v as usize], pos));
            self.order.retain(|&b| b != d);
            self.order.push(d);
        }
    }

    fn push(&mut self, op: Op) -> V {
        self.ops.push(op);
        self.ops.len() as u32 - 1
    }

    fn finish(self, acc: &Accesses) -> Kernel {
        let members: HashSet<usize> = self.members.iter().copied().collect();
        let mut outputs = Vec::new();
        let mut bufs: Vec<Buf> = self.inputs.iter().map(|&(b, _)| b).collect();
        for b in &self.order {
            let (v, pos) = self.cur[b];
            if acc.live_after(*b, pos, &members) {
                outputs.push(v);
                bufs.push(*b);
            }
        }
        Kernel {
            sig: Sig {
                inputs: self.inputs.iter().map(|&(_, a)| a.access()).collect(),
                ops: self.ops,
                outputs,
            },
            reads: self.inputs.iter().map(|&(_, a)| a).collect(),
            bufs,
            n: self.n,
            members: self.members,
        }
    }
}

/// Plans `code` (a run of one section of `prog`, already validated, starting at index `base`
/// of that section) for party `me`; steps and kernel members are section indices.
pub fn plan(prog: &Program, code: &[Instr], base: usize, me: Party) -> Plan {
    let ctx = Ctx { prog, me };
    let acc = Accesses::new(&ctx, code, base);
    let mut plan = Plan::default();
    let mut g = Group::default();
    let flush = |g: &mut Group, plan: &mut Plan| {
        if !g.members.is_empty() {
            plan.kernels.push(std::mem::take(g).finish(&acc));
            plan.steps.push(Step::Kernel(plan.kernels.len() - 1));
        }
    };
    for (pos, ins) in (base..).zip(code) {
        match ctx.lower(ins) {
            Lower::NoOp => {}
            Lower::Fuse(l) => {
                if !g.fits(&l) {
                    flush(&mut g, &mut plan);
                }
                g.add(pos, l, ins);
            }
            Lower::Interp => {
                // A `setlen` ends the loaded program's sizes: no kernel spans it.
                let conflict = matches!(ins, Instr::Exchange {} | Instr::SetLen { .. })
                    || ins.buffers().iter().any(|(b, _)| g.touched.contains(b));
                if conflict {
                    flush(&mut g, &mut plan);
                }
                plan.steps.push(Step::Instr(pos));
            }
        }
    }
    flush(&mut g, &mut plan);
    plan
}
