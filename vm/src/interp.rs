//! The party interpreter: runs a validated program's instructions over this party's arrays.
//!
//! Every buffer is one `Vec<u64>` (ring elements, or packed bits). A private buffer of the
//! other party is never written here, so it stays all zeros, which makes it a valid sharing
//! of the owner's value wherever it meets a share.

use crate::bits;
use crate::error::VmError;
use crate::kernels;
use crate::material::{At, Material};
use crate::net::{CommStats, Transport};
use crate::ring;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use veil_isa::validate::is_dealer_instr;
use veil_isa::{Buf, Instr, Kind, Party, Program, Tag};

/// The code a section runs: the loaded program, or an instance at a pruned length.
#[derive(Clone)]
enum Code<'p> {
    Loaded(&'p Program),
    Instance(Arc<Program>),
}

impl std::ops::Deref for Code<'_> {
    type Target = Program;
    fn deref(&self) -> &Program {
        match self {
            Code::Loaded(p) => p,
            Code::Instance(p) => p,
        }
    }
}

/// Tensor data handed to or returned by the VM.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// Reals (encoded with the declaration's fractional bits).
    F32(Vec<f32>),
    /// Reals in double precision.
    F64(Vec<f64>),
    /// Integers (encoded exactly; the declaration must have 0 fractional bits).
    I64(Vec<i64>),
}

impl Values {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A revealed output.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Decoded values.
    pub data: Vec<f64>,
}

/// What one party measured.
#[derive(Clone, Debug, Default)]
pub struct PartyReport {
    /// Online communication of the setup section.
    pub setup: CommStats,
    /// Online communication of the body (all runs).
    pub body: CommStats,
    /// Dealer bytes received (server), frames included.
    pub dealer_bytes: u64,
    /// Wall time of the body.
    pub body_time: Duration,
    /// Time spent waiting in exchanges during the body.
    pub wait_time: Duration,
    /// Time per tag during the body (local compute plus waits), keyed by tag.
    pub time_by_tag: BTreeMap<Tag, Duration>,
    /// Time of the body's local compute: every instruction except exchanges and dealer draws.
    pub local_time: Duration,
    /// The part of `local_time` spent in elementwise instructions (fused kernels with the JIT).
    pub elementwise_time: Duration,
    /// Time to fuse and compile the program's kernels (zero without the JIT).
    pub jit_compile_time: Duration,
    /// Of the body's time, the part spent planning the kernels of pruned instances (after
    /// each `setlen`) and compiling the signatures they add.
    pub jit_instance_time: Duration,
    /// Fused kernels planned: the loaded program's, plus those of every pruned instance run so
    /// far (zero without the JIT).
    pub jit_kernels: usize,
    /// Sequence lengths set by the body's `setlen`s, in order (token pruning).
    pub lengths: Vec<u32>,
    /// Time and count per instruction name during the body (exchanges and dealer draws
    /// included); fused kernels are counted under [`FUSED`].
    pub time_by_op: BTreeMap<&'static str, (Duration, u64)>,
}

/// The [`PartyReport::time_by_op`] key of the JIT's fused kernels.
pub const FUSED: &str = "(fused kernel)";

/// A message part awaiting the exchange. Sources are read again at the exchange (the
/// builder keeps them alive until then), so no copy of this party's share is kept.
enum Pending {
    Open { d: Buf, a: Buf, bits: u8 },
    OpenB { d: Buf, a: Buf, n: usize },
    Recv { d: Buf, n: usize },
    Reveal { d: Buf, a: Buf, n: usize },
}

/// Default limit on a party's buffer memory (16 GiB).
pub const DEFAULT_MAX_MEMORY: u64 = 16 << 30;

/// One party's VM for one session.
pub struct PartyVm<'p> {
    prog: &'p Program,
    me: Party,
    bufs: Vec<Vec<u64>>,
    material: Material,
    peer: Box<dyn Transport>,
    out: Vec<u8>,
    pending: Vec<Pending>,
    report: PartyReport,
    progress: Option<Box<dyn FnMut(usize, usize) + Send + 'p>>,
    /// Body time per index into the program's tags (the last slot: untagged).
    tag_time: Vec<Option<Duration>>,
    jit_on: bool,
    #[cfg(feature = "jit")]
    jit: Option<crate::jit::Jit>,
    /// The body instance at the current pruned length (None: the loaded program).
    live: Option<Arc<Program>>,
    /// Where the client tells the dealer each length it sets.
    len_sink: Option<Box<dyn crate::net::FrameSink>>,
    /// What `setlen` cut off each buffer, in order: weights and setup results regain it for
    /// the next run.
    tails: Vec<(usize, Vec<u64>)>,
    /// Buffers whose contents must survive a run: weights, constants, setup results.
    persistent: Vec<bool>,
    /// The live sequence length of a dynamic program.
    len: u32,
}

/// Buffers whose contents must survive a run: weights, constants, and setup results.
fn persistent(p: &Program) -> Vec<bool> {
    let mut keep = vec![false; p.buffers.len()];
    for io in &p.weights {
        keep[io.buf.0 as usize] = true;
    }
    for c in &p.consts {
        keep[c.buf.0 as usize] = true;
    }
    for ins in &p.setup {
        for (b, w) in ins.buffers() {
            if w {
                keep[b.0 as usize] = true;
            }
        }
    }
    keep
}

/// What one step of a section runs.
#[derive(Copy, Clone)]
enum Unit {
    /// One instruction.
    Instr(usize),
    /// A fused kernel (index into the section's plan).
    #[cfg_attr(not(feature = "jit"), allow(dead_code))]
    Kernel(usize),
}

impl<'p> PartyVm<'p> {
    /// A VM for party `me` running the validated `prog`, talking to the other party through
    /// `peer` and drawing dealer material from `material`. Fails when the program's buffers
    /// would need more than `max_memory` bytes.
    pub fn new(
        prog: &'p Program,
        me: Party,
        material: Material,
        peer: Box<dyn Transport>,
        max_memory: u64,
    ) -> Result<PartyVm<'p>, VmError> {
        let need: u64 = prog.buffers.iter().map(|b| 8 * b.kind.words(b.len) as u64).sum();
        if need > max_memory {
            return Err(VmError::Tensor {
                what: "program",
                name: prog.meta("model").unwrap_or("?").to_string(),
                msg: format!("needs {need} bytes of buffers, more than the limit of {max_memory}"),
            });
        }
        let bufs = prog.buffers.iter().map(|b| vec![0u64; b.kind.words(b.len)]).collect();
        let mut vm = PartyVm {
            prog,
            me,
            bufs,
            material,
            peer,
            out: Vec::new(),
            pending: Vec::new(),
            report: PartyReport::default(),
            progress: None,
            tag_time: vec![None; prog.tags.len() + 1],
            jit_on: cfg!(feature = "jit"),
            #[cfg(feature = "jit")]
            jit: None,
            live: None,
            len_sink: None,
            tails: Vec::new(),
            persistent: persistent(prog),
            len: prog.dynamic.as_ref().map_or(0, |d| d.max_len),
        };
        for c in &prog.consts {
            vm.bufs[c.buf.0 as usize].copy_from_slice(&c.data);
        }
        Ok(vm)
    }

    /// Chooses the JIT (when compiled in; the default) or the interpreter for local kernels.
    /// Results are bit-identical either way. Takes effect at the next run.
    pub fn set_jit(&mut self, on: bool) {
        self.jit_on = on && cfg!(feature = "jit");
    }

    /// Fuses and compiles the program's kernels once, before the first run. If the JIT is not
    /// available on this host the VM interprets.
    fn prepare(&mut self) {
        #[cfg(feature = "jit")]
        if self.jit_on && self.jit.is_none() {
            match crate::jit::Jit::new(self.prog, self.me, true) {
                Ok(j) => {
                    self.report.jit_compile_time = j.compile_time;
                    self.report.jit_kernels = j.kernels;
                    self.jit = Some(j);
                }
                Err(_) => self.jit_on = false,
            }
        }
    }

    /// Sends each sequence length the body sets to the dealer (the client's side of a dynamic
    /// program: the dealer needs the length to size the rest of the material).
    pub fn set_len_sink(&mut self, sink: Box<dyn crate::net::FrameSink>) {
        self.len_sink = Some(sink);
    }

    /// The program the current instructions come from.
    fn cur(&self) -> &Program {
        self.live.as_deref().unwrap_or(self.prog)
    }

    /// Back to the loaded program's sizes (before loading or a run): buffers regain their
    /// length, and those that hold data across runs (weights, constants, setup results) their
    /// data.
    fn reset_len(&mut self) {
        self.live = None;
        self.len = self.prog.dynamic.as_ref().map_or(0, |d| d.max_len);
        while let Some((i, tail)) = self.tails.pop() {
            self.bufs[i].extend_from_slice(&tail);
        }
        for (i, b) in self.prog.buffers.iter().enumerate() {
            let w = b.kind.words(b.len);
            if self.bufs[i].len() < w {
                self.bufs[i].resize(w, 0);
            }
        }
    }

    /// Continues at sequence length `n` (a `setlen` at body instruction `index`).
    fn set_len(&mut self, n: u32, index: usize) -> Result<(), VmError> {
        let err = |msg: String| VmError::Protocol { section: "body", index, msg };
        let d = self.prog.dynamic.as_ref().ok_or_else(|| err("no dynamic section".into()))?;
        let inst = d.shrink(self.prog, self.cur(), self.len, n).map_err(err)?;
        if let Some(s) = self.len_sink.as_mut() {
            s.send_frame((n as u64).to_le_bytes().to_vec())?;
            s.flush()?;
        }
        for (i, b) in inst.buffers.iter().enumerate() {
            let w = b.kind.words(b.len);
            if self.bufs[i].len() > w {
                if self.persistent[i] {
                    let tail = self.bufs[i].split_off(w);
                    self.tails.push((i, tail));
                } else {
                    self.bufs[i].truncate(w);
                }
            }
            if b.kind.is_bits() {
                // Bits past the new length stay out of any opening.
                crate::bits::clear_tail(&mut self.bufs[i], b.len as usize);
            }
        }
        self.report.lengths.push(n);
        self.len = n;
        self.live = Some(Arc::new(inst));
        Ok(())
    }

    /// Calls `f(done, total)` as body instructions complete (for progress bars).
    pub fn on_progress(&mut self, f: impl FnMut(usize, usize) + Send + 'p) {
        self.progress = Some(Box::new(f));
    }

    fn load(
        &mut self,
        what: &'static str,
        decls: &[veil_isa::IoDecl],
        given: &[(String, Values)],
    ) -> Result<(), VmError> {
        for io in decls {
            let holds = match self.prog.buffers[io.buf.0 as usize].kind {
                Kind::Public => true,
                Kind::Private(p) => p == self.me,
                _ => false,
            };
            if !holds {
                continue;
            }
            let err = |msg: String| VmError::Tensor { what, name: io.name.clone(), msg };
            let v = given.iter().find(|(n, _)| n == &io.name).map(|(_, v)| v).ok_or_else(|| {
                err(format!("missing (the program needs it with shape {:?})", io.shape))
            })?;
            let want: usize = io.shape.iter().map(|&d| d as usize).product();
            if v.len() != want {
                return Err(err(format!(
                    "has {} elements, the program needs shape {:?} ({want})",
                    v.len(),
                    io.shape
                )));
            }
            let f = io.frac_bits;
            let dst = &mut self.bufs[io.buf.0 as usize];
            match v {
                Values::F32(x) => {
                    for (d, &x) in dst.iter_mut().zip(x) {
                        if !ring::fits(x as f64, f, 8) {
                            return Err(err(format!(
                                "value {x} does not fit fixed point with {f} fractional bits"
                            )));
                        }
                        *d = ring::encode(x as f64, f);
                    }
                }
                Values::F64(x) => {
                    for (d, &x) in dst.iter_mut().zip(x) {
                        if !ring::fits(x, f, 8) {
                            return Err(err(format!(
                                "value {x} does not fit fixed point with {f} fractional bits"
                            )));
                        }
                        *d = ring::encode(x, f);
                    }
                }
                Values::I64(x) => {
                    for (d, &x) in dst.iter_mut().zip(x) {
                        *d = (x as u64).wrapping_shl(f as u32);
                    }
                }
            }
        }
        Ok(())
    }

    /// Loads this party's weights (and every public weight).
    pub fn load_weights(&mut self, weights: &[(String, Values)]) -> Result<(), VmError> {
        self.reset_len();
        let decls = self.prog.weights.clone();
        self.load("weight", &decls, weights)
    }

    /// Loads this party's inputs for the next run.
    pub fn set_inputs(&mut self, inputs: &[(String, Values)]) -> Result<(), VmError> {
        self.reset_len();
        let decls = self.prog.inputs.clone();
        self.load("input", &decls, inputs)
    }

    /// Runs the setup section (once per program load).
    pub fn run_setup(&mut self) -> Result<(), VmError> {
        self.reset_len();
        self.prepare();
        let before = self.peer.stats();
        let code = Code::Loaded(self.prog);
        self.run_code("setup", &code, 0, false)?;
        self.report.setup = sub_stats(self.peer.stats(), before);
        Ok(())
    }

    /// Runs the body (one inference).
    pub fn run_body(&mut self) -> Result<(), VmError> {
        self.prepare();
        let before = self.peer.stats();
        let t0 = Instant::now();
        self.reset_len();
        let mut code = Code::Loaded(self.prog);
        let mut from = 0;
        while let Some((index, n)) = self.run_code("body", &code, from, true)? {
            self.set_len(n, index)?;
            code = Code::Instance(self.live.clone().expect("set_len makes an instance"));
            from = index + 1;
        }
        self.report.body_time += t0.elapsed();
        let d = sub_stats(self.peer.stats(), before);
        self.report.body.rounds += d.rounds;
        self.report.body.sent += d.sent;
        self.report.body.received += d.received;
        self.report.dealer_bytes = self.material.dealer_bytes();
        Ok(())
    }

    /// The outputs revealed to this party, decoded.
    pub fn outputs(&self) -> Vec<Output> {
        self.prog
            .outputs
            .iter()
            .filter(|o| o.party == self.me)
            .map(|o| Output {
                name: o.name.clone(),
                shape: o.shape.iter().map(|&d| d as usize).collect(),
                data: self.bufs[o.buf.0 as usize]
                    .iter()
                    .map(|&v| ring::decode(v, o.frac_bits))
                    .collect(),
            })
            .collect()
    }

    /// This party's own array of buffer `b` (for tests that compare executions). It holds
    /// this party's share: never print it.
    pub fn raw_buffer(&self, b: Buf) -> Option<&[u64]> {
        self.bufs.get(b.0 as usize).map(|v| v.as_slice())
    }

    /// The measurements so far.
    pub fn report(&self) -> PartyReport {
        let mut r = self.report.clone();
        r.dealer_bytes = self.material.dealer_bytes();
        for (i, t) in self.tag_time.iter().enumerate() {
            if let Some(t) = t {
                let tag = self
                    .prog
                    .tags
                    .get(i)
                    .cloned()
                    .unwrap_or(Tag { layer: "?".into(), op: "?".into() });
                *r.time_by_tag.entry(tag).or_default() += *t;
            }
        }
        r
    }

    /// Runs `section` of `prog` from instruction `from`; stops early at a `setlen` and returns
    /// its index and the length it sets.
    fn run_code(
        &mut self,
        section: &'static str,
        prog: &Code<'p>,
        from: usize,
        timed: bool,
    ) -> Result<Option<(usize, u32)>, VmError> {
        let (code, tags) = match section {
            "setup" => (&prog.setup, &prog.setup_tags),
            _ => (&prog.body, &prog.body_tags),
        };
        // The loaded program's plan was made at load; an instance (after a `setlen`) is
        // planned from where it starts to its next `setlen`, reusing compiled signatures.
        let loaded = matches!(prog, Code::Loaded(_)) && from == 0;
        #[cfg(feature = "jit")]
        let compiled = match (&mut self.jit, self.jit_on) {
            (Some(j), true) if loaded => {
                Some(if section == "setup" { j.setup.clone() } else { j.body.clone() })
            }
            (Some(j), true) if section == "body" => {
                let (c, t) = j.segment(prog, from);
                self.report.jit_instance_time += t;
                self.report.jit_kernels += c.as_ref().map_or(0, |c| c.plan.kernels.len());
                c
            }
            _ => None,
        };
        #[cfg(feature = "jit")]
        let units: Vec<Unit> = match &compiled {
            Some(c) => c
                .plan
                .steps
                .iter()
                .map(|s| match *s {
                    crate::jit::fuse::Step::Instr(i) => Unit::Instr(i),
                    crate::jit::fuse::Step::Kernel(k) => Unit::Kernel(k),
                })
                .collect(),
            None => (from..code.len()).map(Unit::Instr).collect(),
        };
        #[cfg(not(feature = "jit"))]
        let units: Vec<Unit> = (from..code.len()).map(Unit::Instr).collect();
        let _ = loaded;
        let total = code.len();
        let (mut done, mut reported) = (from, from);
        let mut last = Instant::now();
        for (step, &unit) in units.iter().enumerate() {
            let (index, local, elementwise, op) = match unit {
                Unit::Instr(index) => {
                    let ins = &code[index];
                    let op = ins.name();
                    let at = At { section, index };
                    done += 1;
                    if is_dealer_instr(ins) {
                        self.material.draw(ins, at, prog, &mut self.bufs)?;
                        (index, false, false, op)
                    } else if let Instr::SetLen { a, frac } = ins {
                        let v = self.bufs[a.0 as usize][0] as i64;
                        let half = if *frac == 0 { 0 } else { 1i64 << (frac - 1) };
                        let n = v.checked_add(half).map_or(0, |x| x >> frac);
                        let n = u32::try_from(n).unwrap_or(0);
                        return Ok(Some((index, n)));
                    } else if let Instr::Exchange {} = ins {
                        let t = Instant::now();
                        self.exchange(at)?;
                        if timed {
                            self.report.wait_time += t.elapsed();
                        }
                        (index, false, false, op)
                    } else {
                        self.exec(ins);
                        (index, true, is_elementwise(ins), op)
                    }
                }
                #[cfg_attr(not(feature = "jit"), allow(unused_variables))]
                Unit::Kernel(k) => {
                    #[cfg(feature = "jit")]
                    {
                        let c = compiled.as_ref().expect("kernels come from a plan");
                        let kernel = &c.plan.kernels[k];
                        let ran =
                            c.fns[k].is_some_and(|f| crate::jit::run(kernel, f, &mut self.bufs));
                        if !ran {
                            for &i in &kernel.members {
                                self.exec(&code[i]);
                            }
                        }
                        done += kernel.members.len();
                        (kernel.members.last().copied().unwrap_or(0), true, true, FUSED)
                    }
                    #[cfg(not(feature = "jit"))]
                    unreachable!("kernels exist only with the JIT")
                }
            };
            if timed {
                let now = Instant::now();
                let dt = now - last;
                if local {
                    self.report.local_time += dt;
                }
                if elementwise {
                    self.report.elementwise_time += dt;
                }
                let e = self.report.time_by_op.entry(op).or_default();
                e.0 += dt;
                e.1 += 1;
                // By tag index: building the `Tag` key here would allocate per instruction.
                let tag = (tags.get(index).copied().unwrap_or(u32::MAX) as usize)
                    .min(self.prog.tags.len());
                *self.tag_time[tag].get_or_insert(Duration::ZERO) += dt;
                last = now;
                let end = step + 1 == units.len();
                if done >= reported + 64 || end {
                    reported = done;
                    if let Some(p) = self.progress.as_mut() {
                        p(if end { total } else { done.min(total) }, total);
                    }
                }
            }
        }
        Ok(None)
    }

    fn exchange(&mut self, at: At) -> Result<(), VmError> {
        let msg = std::mem::take(&mut self.out);
        let got = self.peer.exchange(msg)?;
        let mut pos = 0usize;
        let pending = std::mem::take(&mut self.pending);
        let short = |need: usize, pos: usize, got: &[u8]| VmError::Protocol {
            section: at.section,
            index: at.index,
            msg: format!(
                "the peer's message has {} bytes, the program expects at least {}",
                got.len(),
                pos + need
            ),
        };
        for p in pending {
            match p {
                Pending::Open { d, a, bits } => {
                    let n = self.bufs[a.0 as usize].len();
                    let need = bits::packed_len(n, bits);
                    let part = got.get(pos..pos + need).ok_or_else(|| short(need, pos, &got))?;
                    let mut dst = self.take(d);
                    bits::unpack(part, n, bits, &mut dst);
                    let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
                    for (o, &m) in dst.iter_mut().zip(&self.bufs[a.0 as usize]) {
                        *o = o.wrapping_add(m) & mask;
                    }
                    self.put(d, dst);
                    pos += need;
                }
                Pending::OpenB { d, a, n } => {
                    let need = n.div_ceil(8);
                    let part = got.get(pos..pos + need).ok_or_else(|| short(need, pos, &got))?;
                    let mut dst = self.take(d);
                    let mine = &self.bufs[a.0 as usize];
                    for (i, w) in dst.iter_mut().enumerate() {
                        let mut x = 0u64;
                        for (j, &byte) in part.iter().skip(i * 8).take(8).enumerate() {
                            x |= (byte as u64) << (8 * j);
                        }
                        *w = x ^ mine[i];
                    }
                    bits::clear_tail(&mut dst, n);
                    self.put(d, dst);
                    pos += need;
                }
                Pending::Recv { d, n } => {
                    let need = 8 * n;
                    let part = got.get(pos..pos + need).ok_or_else(|| short(need, pos, &got))?;
                    bits::unpack(part, n, 64, &mut self.bufs[d.0 as usize]);
                    pos += need;
                }
                Pending::Reveal { d, a, n } => {
                    let need = 8 * n;
                    let part = got.get(pos..pos + need).ok_or_else(|| short(need, pos, &got))?;
                    let mut dst = self.take(d);
                    bits::unpack(part, n, 64, &mut dst);
                    for (o, &m) in dst.iter_mut().zip(&self.bufs[a.0 as usize]) {
                        *o = o.wrapping_add(m);
                    }
                    self.put(d, dst);
                    pos += need;
                }
            }
        }
        if pos != got.len() {
            return Err(VmError::Protocol {
                section: at.section,
                index: at.index,
                msg: format!(
                    "the peer's message has {} bytes, the program expects {pos}",
                    got.len()
                ),
            });
        }
        Ok(())
    }

    fn kind(&self, b: Buf) -> Kind {
        self.prog.buffers[b.0 as usize].kind
    }

    /// True when this party computes values for a result of kind `k` (the other party's
    /// private buffers are never written here).
    fn computes(&self, k: Kind) -> bool {
        match k {
            Kind::Private(p) => p == self.me,
            _ => true,
        }
    }

    /// Whether this party includes a public operand of an additive operation whose result has
    /// kind `dk`: always for public or own-private results, only the client for shares.
    fn adds_public(&self, dk: Kind) -> bool {
        dk != Kind::Share || self.me == Party::Client
    }

    /// Takes the destination out of the buffer table so sources can be borrowed alongside it.
    fn take(&mut self, d: Buf) -> Vec<u64> {
        std::mem::take(&mut self.bufs[d.0 as usize])
    }

    fn put(&mut self, d: Buf, v: Vec<u64>) {
        self.bufs[d.0 as usize] = v;
    }

    fn exec(&mut self, ins: &Instr) {
        use Instr::*;
        let me = self.me;
        match ins {
            Add { d, a, b, inner } | Sub { d, a, b, inner } => {
                let dk = self.kind(*d);
                if !self.computes(dk) {
                    return;
                }
                let sub = matches!(ins, Sub { .. });
                let use_a = self.kind(*a) != Kind::Public || self.adds_public(dk);
                let use_b = self.kind(*b) != Kind::Public || self.adds_public(dk);
                let mut dv = self.take(*d);
                let (av, bv) = (&self.bufs[a.0 as usize], &self.bufs[b.0 as usize]);
                let inner = *inner as usize;
                match (use_a, use_b, sub) {
                    (true, true, false) => {
                        kernels::binary(&mut dv, av, bv, inner, |x, y| x.wrapping_add(y))
                    }
                    (true, true, true) => {
                        kernels::binary(&mut dv, av, bv, inner, |x, y| x.wrapping_sub(y))
                    }
                    (true, false, _) => dv.copy_from_slice(av),
                    (false, true, false) => kernels::binary(&mut dv, av, bv, inner, |_, y| y),
                    (false, true, true) => {
                        kernels::binary(&mut dv, av, bv, inner, |_, y| y.wrapping_neg())
                    }
                    (false, false, _) => dv.fill(0),
                }
                self.put(*d, dv);
            }
            Mul { d, a, b, inner } => {
                let dk = self.kind(*d);
                if !self.computes(dk) {
                    return;
                }
                let mut dv = self.take(*d);
                if self.foreign(*a) || self.foreign(*b) {
                    dv.fill(0);
                } else {
                    let (av, bv) = (&self.bufs[a.0 as usize], &self.bufs[b.0 as usize]);
                    kernels::binary(&mut dv, av, bv, *inner as usize, |x, y| x.wrapping_mul(y));
                }
                self.put(*d, dv);
            }
            MatMul { d, a, b, batch, m, k, n } => {
                let dk = self.kind(*d);
                if !self.computes(dk) {
                    return;
                }
                let mut dv = self.take(*d);
                if self.foreign(*a) || self.foreign(*b) {
                    dv.fill(0);
                } else {
                    let (av, bv) = (&self.bufs[a.0 as usize], &self.bufs[b.0 as usize]);
                    kernels::matmul(
                        &mut dv,
                        av,
                        bv,
                        *batch as usize,
                        *m as usize,
                        *k as usize,
                        *n as usize,
                    );
                }
                self.put(*d, dv);
            }
            Neg { d, a } => self.map(*d, *a, |x| x.wrapping_neg()),
            MulImm { d, a, imm } => {
                let imm = *imm;
                self.map(*d, *a, move |x| x.wrapping_mul(imm))
            }
            Shl { d, a, bits } => {
                let s = *bits as u32;
                self.map(*d, *a, move |x| x.wrapping_shl(s))
            }
            AddImm { d, a, imm } => {
                let dk = self.kind(*d);
                let imm = if self.adds_public(dk) { *imm } else { 0 };
                self.map(*d, *a, move |x| x.wrapping_add(imm))
            }
            Sum { d, a, outer, mid, inner } => {
                if !self.computes(self.kind(*d)) {
                    return;
                }
                let mut dv = self.take(*d);
                kernels::sum(
                    &mut dv,
                    &self.bufs[a.0 as usize],
                    *outer as usize,
                    *mid as usize,
                    *inner as usize,
                );
                self.put(*d, dv);
            }
            CumSum { d, a, outer, mid, inner } => {
                if !self.computes(self.kind(*d)) {
                    return;
                }
                let mut dv = self.take(*d);
                let (o, m, i) = (*outer as usize, *mid as usize, *inner as usize);
                kernels::cumsum(&mut dv, &self.bufs[a.0 as usize], o, m, i);
                self.put(*d, dv);
            }
            Copy { d, d_off, a, a_off, shape, d_strides, a_strides } => {
                if !self.computes(self.kind(*d)) {
                    return;
                }
                let mut dv = self.take(*d);
                let av = &self.bufs[a.0 as usize];
                kernels::copy(
                    &mut dv,
                    *d_off as usize,
                    av,
                    *a_off as usize,
                    &shape.0,
                    &d_strides.0,
                    &a_strides.0,
                );
                self.put(*d, dv);
            }
            TruncPost { c2, pk, s, c, rhi, m, t, w } => {
                let (t, w) = (*t as u32, *w as u32);
                let wmask = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
                let off = 1u64 << (w - 2 - t);
                let k = if w - t == 64 { 0 } else { 1u64 << (w - t) };
                let (mut c2v, mut pkv, mut sv) = (self.take(*c2), self.take(*pk), self.take(*s));
                let (cv, rv, mv) = (
                    &self.bufs[c.0 as usize],
                    &self.bufs[rhi.0 as usize],
                    &self.bufs[m.0 as usize],
                );
                for i in 0..cv.len() {
                    let cc = cv[i] & wmask;
                    c2v[i] = (cc >> t).wrapping_sub(off);
                    let p = if (cc >> (w - 1)) & 1 == 0 { k } else { 0 };
                    pkv[i] = p;
                    sv[i] = rv[i].wrapping_sub(p.wrapping_mul(mv[i]));
                }
                self.put(*c2, c2v);
                self.put(*pk, pkv);
                self.put(*s, sv);
            }
            Sel { d, e, a, b } => {
                if !self.computes(self.kind(*d)) {
                    return;
                }
                let mut dv = self.take(*d);
                let (ev, av, bv) =
                    (&self.bufs[e.0 as usize], &self.bufs[a.0 as usize], &self.bufs[b.0 as usize]);
                kernels::sel(&mut dv, ev, av, bv);
                self.put(*d, dv);
            }
            XorB { d, a, b } => {
                let dk = self.kind(*d);
                let use_a =
                    self.kind(*a) == Kind::Bits || dk == Kind::PubBits || me == Party::Client;
                let use_b =
                    self.kind(*b) == Kind::Bits || dk == Kind::PubBits || me == Party::Client;
                let mut dv = self.take(*d);
                let (av, bv) = (&self.bufs[a.0 as usize], &self.bufs[b.0 as usize]);
                for (i, o) in dv.iter_mut().enumerate() {
                    *o = (if use_a { av[i] } else { 0 }) ^ (if use_b { bv[i] } else { 0 });
                }
                self.put(*d, dv);
            }
            AndB { d, a, b } => {
                let mut dv = self.take(*d);
                let (av, bv) = (&self.bufs[a.0 as usize], &self.bufs[b.0 as usize]);
                for (i, o) in dv.iter_mut().enumerate() {
                    *o = av[i] & bv[i];
                }
                self.put(*d, dv);
            }
            NotB { d, a } => {
                let n = self.cur().buffers[d.0 as usize].len as usize;
                let flip = self.kind(*d) == Kind::PubBits || me == Party::Client;
                let mut dv = self.take(*d);
                let av = &self.bufs[a.0 as usize];
                for (i, o) in dv.iter_mut().enumerate() {
                    *o = if flip { !av[i] } else { av[i] };
                }
                bits::clear_tail(&mut dv, n);
                self.put(*d, dv);
            }
            Lookup { d, table, idx, shift, width } => {
                let mut dv = self.take(*d);
                let (tv, iv) = (&self.bufs[table.0 as usize], &self.bufs[idx.0 as usize]);
                kernels::lookup(&mut dv, tv, iv, *shift as u32, *width as u32);
                self.put(*d, dv);
            }
            BitOf { d, a, bit } => {
                let mut dv = self.take(*d);
                kernels::bit_of(&mut dv, &self.bufs[a.0 as usize], *bit as u32);
                self.put(*d, dv);
            }
            Open { d, a, bits: nb } => {
                bits::pack(&self.bufs[a.0 as usize], *nb, &mut self.out);
                self.pending.push(Pending::Open { d: *d, a: *a, bits: *nb });
            }
            OpenB { d, a } => {
                let n = self.cur().buffers[a.0 as usize].len as usize;
                for (i, w) in self.bufs[a.0 as usize].iter().enumerate() {
                    let bytes = w.to_le_bytes();
                    let take = (n.div_ceil(8) - i * 8).min(8);
                    self.out.extend_from_slice(&bytes[..take]);
                }
                self.pending.push(Pending::OpenB { d: *d, a: *a, n });
            }
            Send { d, a, from } => {
                let n = self.cur().buffers[a.0 as usize].len as usize;
                if *from == me {
                    bits::pack(&self.bufs[a.0 as usize], 64, &mut self.out);
                } else {
                    self.pending.push(Pending::Recv { d: *d, n });
                }
            }
            Reveal { d, a, to } => {
                let n = self.cur().buffers[a.0 as usize].len as usize;
                if *to == me {
                    self.pending.push(Pending::Reveal { d: *d, a: *a, n });
                } else {
                    bits::pack(&self.bufs[a.0 as usize], 64, &mut self.out);
                }
            }
            Exchange {} | SetLen { .. } => unreachable!("handled by run_code"),
            _ => unreachable!("dealer instructions are handled by run_code"),
        }
    }

    /// True when `b` is the other party's private buffer (all zeros here).
    fn foreign(&self, b: Buf) -> bool {
        matches!(self.kind(b), Kind::Private(p) if p != self.me)
    }

    fn map(&mut self, d: Buf, a: Buf, f: impl Fn(u64) -> u64) {
        if !self.computes(self.kind(d)) {
            return;
        }
        let mut dv = self.take(d);
        kernels::unary(&mut dv, &self.bufs[a.0 as usize], f);
        self.put(d, dv);
    }
}

/// True for the local elementwise ring instructions (the ones the JIT fuses into kernels).
pub(crate) fn is_elementwise(ins: &Instr) -> bool {
    elementwise_dest(ins).is_some()
}

/// The buffer an elementwise instruction computes over (its destination, whose length is the
/// loop's); `None` for every other instruction.
pub(crate) fn elementwise_dest(ins: &Instr) -> Option<Buf> {
    use Instr::*;
    match ins {
        Add { d, .. } | Sub { d, .. } | Mul { d, .. } => Some(*d),
        Neg { d, .. } | AddImm { d, .. } | MulImm { d, .. } | Shl { d, .. } => Some(*d),
        TruncPost { c2, .. } => Some(*c2),
        _ => None,
    }
}

fn sub_stats(a: CommStats, b: CommStats) -> CommStats {
    CommStats {
        rounds: a.rounds - b.rounds,
        sent: a.sent - b.sent,
        received: a.received - b.received,
    }
}
