//! The party interpreter: runs a validated program's instructions over this party's arrays.
//!
//! Every buffer is a `Vec<u64>` (ring elements, or packed bits) in the party's [`Store`]. A
//! private buffer of the other party is never written here: it is a view of zeros, which
//! makes it a valid sharing of the owner's value wherever it meets a share. A value's array
//! is taken when a step first writes it and given back after the step that last reads it
//! ([`veil_isa::lifetime`]), so a session holds its live values and what it keeps for the
//! whole session (weights, constants, setup results), not every buffer of the program.
//!
//! What each instruction does is in `exec.rs`: one method per instruction
//! ([`veil_isa::PartyVisitor`]), so that a new instruction does not compile until it is there.

mod exec;

use crate::bits;
use crate::error::VmError;
use crate::kernels;
use crate::material::{At, Material};
use crate::net::{CommStats, Expect, Outgoing, Transport};
use crate::ring;
use crate::store::{Slot, Store};
use exec::{Exec, Flow};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use veil_isa::lifetime::{self, Deaths};
use veil_isa::{Buf, Class, Instr, Kind, Party, Program, Tag};

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
    /// Kernel signatures compiled while the body ran (a pruned instance's code that was not
    /// compiled with the loaded program); zero when every instance reused compiled code.
    pub jit_compiled_in_body: usize,
    /// Kernels run compiled, and kernels that had to run interpreted because their code did
    /// not compile, over all runs.
    pub jit_runs: (u64, u64),
    /// Sequence lengths set by the body's `setlen`s, in order (token pruning).
    pub lengths: Vec<u32>,
    /// Of the body's time, the part spent switching to the instance at each `setlen`
    /// (instantiating and checking it, planning its steps; `jit_instance_time` included).
    pub setlen_time: Duration,
    /// Time and count per instruction name during the body (exchanges and dealer draws
    /// included); fused kernels are counted under [`FUSED`].
    pub time_by_op: BTreeMap<&'static str, (Duration, u64)>,
    /// The most memory the party's buffers held at once (live values, kept data and the
    /// pool of arrays for reuse; shared weights not included).
    pub peak_memory: u64,
    /// What the lifetime analysis declared a session of this party holds in its own buffers
    /// at most (kept data, including weights it loaded itself, and live values).
    pub declared_memory: u64,
}

/// The [`PartyReport::time_by_op`] key of the JIT's fused kernels.
pub const FUSED: &str = "(fused kernel)";

/// A message part awaiting the exchange. Sources are read again at the exchange (the
/// builder keeps them alive until then), so no copy of this party's share is kept.
enum Pending {
    Open { d: Buf, a: Buf, bits: u8, lo: u8 },
    OpenB { d: Buf, a: Buf, n: usize },
    Recv { d: Buf, n: usize },
    Reveal { d: Buf, a: Buf, n: usize },
}

impl Pending {
    /// Bytes of the peer's message this part takes.
    fn need(&self, store: &Store) -> usize {
        match *self {
            Pending::Open { a, bits, lo, .. } => {
                bits::packed_len(store.bufs[a.0 as usize].len(), bits - lo)
            }
            Pending::OpenB { n, .. } => n.div_ceil(8),
            Pending::Recv { n, .. } | Pending::Reveal { n, .. } => 8 * n,
        }
    }

    /// Completes the part from its bytes of the peer's message.
    fn complete(&self, part: &[u8], store: &mut Store) {
        let take = |store: &mut Store, d: Buf| std::mem::take(&mut store.bufs[d.0 as usize]);
        match *self {
            Pending::Open { d, a, bits, lo } => {
                let n = store.bufs[a.0 as usize].len();
                let mut dst = take(store, d).into_vec();
                let sent = bits - lo;
                bits::unpack(part, n, sent, &mut dst);
                let mask = if sent == 64 { u64::MAX } else { (1u64 << sent) - 1 };
                for (o, &m) in dst.iter_mut().zip(store.bufs[a.0 as usize].iter()) {
                    *o = (o.wrapping_add(m >> lo) & mask) << lo;
                }
                store.bufs[d.0 as usize] = Slot::Own(dst);
            }
            Pending::OpenB { d, a, n } => {
                let mut dst = take(store, d).into_vec();
                let mine = &store.bufs[a.0 as usize];
                for (i, w) in dst.iter_mut().enumerate() {
                    let mut x = 0u64;
                    for (j, &byte) in part.iter().skip(i * 8).take(8).enumerate() {
                        x |= (byte as u64) << (8 * j);
                    }
                    *w = x ^ mine[i];
                }
                bits::clear_tail(&mut dst, n);
                store.bufs[d.0 as usize] = Slot::Own(dst);
            }
            Pending::Recv { d, n } => {
                bits::unpack(part, n, 64, &mut store.bufs[d.0 as usize]);
            }
            Pending::Reveal { d, a, n } => {
                let mut dst = take(store, d).into_vec();
                bits::unpack(part, n, 64, &mut dst);
                for (o, &m) in dst.iter_mut().zip(store.bufs[a.0 as usize].iter()) {
                    *o = o.wrapping_add(m);
                }
                store.bufs[d.0 as usize] = Slot::Own(dst);
            }
        }
    }
}

/// Default limit on a party's buffer memory (16 GiB).
pub const DEFAULT_MAX_MEMORY: u64 = 16 << 30;

/// Outgoing message bytes a party accumulates before handing them to a transport that
/// takes a message in parts ([`Transport::send_part`]).
const STREAM_OUT: usize = 64 << 20;

/// What one step of a section runs.
#[derive(Copy, Clone)]
enum Unit {
    /// One instruction.
    Instr(usize),
    /// A fused kernel (index into the section's plan).
    #[cfg_attr(not(feature = "jit"), allow(dead_code))]
    Kernel(usize),
}

/// How a section runs for this party: its steps, the buffers each step touches (allocated
/// before it runs if they are not: zeroed when read or written only in part) and the values
/// that die after it.
struct Steps {
    units: Vec<Unit>,
    writes_start: Vec<u32>,
    writes: Vec<(Buf, bool)>,
    deaths: Deaths,
    #[cfg(feature = "jit")]
    compiled: Option<Arc<crate::jit::Compiled>>,
}

impl Steps {
    fn writes(&self, s: usize) -> &[(Buf, bool)] {
        &self.writes[self.writes_start[s] as usize..self.writes_start[s + 1] as usize]
    }
}

/// Data a server's sessions share: its weights, encoded once.
pub type SharedWeights = Vec<(Buf, Arc<Vec<u64>>)>;

/// One party's VM for one session.
pub struct PartyVm<'p> {
    prog: &'p Program,
    me: Party,
    store: Store,
    /// Buffers of the other party's (views of zeros here).
    foreign: Vec<bool>,
    /// Buffers whose data lives for the whole session.
    keep: Vec<bool>,
    /// Keep every value after its last use (differential tests compare whole buffer tables).
    keep_all: bool,
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
    /// The loaded program's steps of each section (made at the first run).
    setup_steps: Option<Arc<Steps>>,
    body_steps: Option<Arc<Steps>>,
    /// The body instance at the current pruned length (None: the loaded program).
    live: Option<Arc<Program>>,
    /// Where the client tells the dealer each length it sets.
    len_sink: Option<Box<dyn crate::net::FrameSink>>,
    /// What `setlen` cut off each buffer, in order: weights and setup results regain it for
    /// the next run.
    tails: Vec<(usize, Vec<u64>)>,
    /// The live sequence length of a dynamic program.
    len: u32,
    /// How far this run's instances have been checked (None before the first `setlen`).
    checked: Option<veil_isa::Segments>,
    /// For a dynamic body, per position after a `setlen`, the buffers read from there on
    /// before being overwritten ([`lifetime::live_from`]).
    live_at: Vec<(usize, Vec<bool>)>,
}

/// Zeros viewed by every buffer of the other party (never written here; untouched pages of
/// a fresh allocation cost no memory).
fn zeros_for(p: &Program, foreign: &[bool]) -> Arc<Vec<u64>> {
    let n = p
        .buffers
        .iter()
        .zip(foreign)
        .filter(|(_, f)| **f)
        .map(|(b, _)| b.kind.words(b.len))
        .max()
        .unwrap_or(0);
    Arc::new(vec![0u64; n])
}

impl<'p> PartyVm<'p> {
    /// A VM for party `me` running the validated `prog`, talking to the other party through
    /// `peer` and drawing dealer material from `material`. Fails when a session of the
    /// program would need more than `max_memory` bytes ([`lifetime::footprint`]); at run
    /// time the buffers are held to that limit too.
    pub fn new(
        prog: &'p Program,
        me: Party,
        material: Material,
        peer: Box<dyn Transport>,
        max_memory: u64,
    ) -> Result<PartyVm<'p>, VmError> {
        let keep = lifetime::persistent(prog, me);
        let foreign: Vec<bool> =
            prog.buffers.iter().map(|b| lifetime::foreign(b.kind, me)).collect();
        let zeros = zeros_for(prog, &foreign);
        let mut store = Store::new(prog.buffers.len(), max_memory);
        for (i, b) in prog.buffers.iter().enumerate() {
            if foreign[i] {
                store.share(i, zeros.clone(), b.kind.words(b.len));
            }
        }
        for c in &prog.consts {
            store.put_new(c.buf.0 as usize, c.data.clone())?;
        }
        Ok(PartyVm {
            prog,
            me,
            store,
            keep,
            foreign,
            keep_all: false,
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
            setup_steps: None,
            body_steps: None,
            live: None,
            len_sink: None,
            tails: Vec::new(),
            len: prog.dynamic.as_ref().map_or(0, |d| d.max_len),
            checked: None,
            live_at: Vec::new(),
        })
    }

    /// Chooses the JIT (when compiled in; the default) or the interpreter for local kernels.
    /// Results are bit-identical either way. Takes effect at the next run.
    pub fn set_jit(&mut self, on: bool) {
        let on = on && cfg!(feature = "jit");
        if on != self.jit_on {
            self.setup_steps = None;
            self.body_steps = None;
        }
        self.jit_on = on;
    }

    /// Keeps every value after its last use (tests that compare whole buffer tables of two
    /// executions; costs the memory of every buffer).
    pub fn keep_values(&mut self, on: bool) {
        self.keep_all = on;
    }

    /// Draws the dealer material of the next section from `m` (each inference of a session
    /// uses fresh material).
    pub fn set_material(&mut self, m: Material) {
        self.material = m;
    }

    /// Plans (and with the JIT, compiles) both sections now rather than at the first run (a
    /// server does it while its client still prepares).
    pub fn prepare_now(&mut self) -> Result<(), VmError> {
        self.prepare()
    }

    /// Fuses and compiles the program's kernels once, before the first run. If the JIT is not
    /// available on this host the VM interprets.
    fn prepare(&mut self) -> Result<(), VmError> {
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
        if self.live_at.is_empty() && self.prog.dynamic.is_some() {
            let body = &self.prog.body;
            let ends: Vec<usize> = (0..body.len())
                .filter(|&i| matches!(body[i], Instr::SetLen { .. }))
                .map(|i| i + 1)
                .collect();
            self.live_at = lifetime::live_from(self.prog, body, &ends, self.me);
        }
        if self.setup_steps.is_none() {
            let code = Code::Loaded(self.prog);
            self.setup_steps = Some(Arc::new(self.steps(&code, "setup", 0, None)));
        }
        if self.body_steps.is_none() {
            let code = Code::Loaded(self.prog);
            #[cfg(feature = "jit")]
            let c = self.jit.as_ref().filter(|_| self.jit_on).map(|j| j.body.clone());
            #[cfg(not(feature = "jit"))]
            let c = None;
            self.body_steps = Some(Arc::new(self.steps(&code, "body", 0, c)));
            self.check_memory()?;
        }
        Ok(())
    }

    /// Declares what a session holds at most (kept data plus the larger section's live
    /// values, from the steps just planned) and refuses a program that needs more than the
    /// limit before anything runs.
    fn check_memory(&mut self) -> Result<(), VmError> {
        let mut kept = 0u64;
        for (i, b) in self.prog.buffers.iter().enumerate() {
            if self.keep[i] && !self.foreign[i] {
                kept += 8 * b.kind.words(b.len) as u64;
            }
        }
        let peak = |st: &Steps| {
            let mut held = std::collections::HashSet::new();
            let (mut cur, mut max) = (0u64, 0u64);
            for s in 0..st.units.len() {
                for &(b, _) in st.writes(s) {
                    if !self.keep[b.0 as usize] && held.insert(b) {
                        cur += 8 * self.words(b.0 as usize) as u64;
                    }
                }
                max = max.max(cur);
                for b in st.deaths.after(s) {
                    if held.remove(b) {
                        cur -= 8 * self.words(b.0 as usize) as u64;
                    }
                }
            }
            max
        };
        let (setup, body) = (
            self.setup_steps.as_deref().map_or(0, peak),
            self.body_steps.as_deref().map_or(0, peak),
        );
        let need = kept + setup.max(body);
        self.report.declared_memory = need;
        if need > self.store.limit() {
            return Err(VmError::Memory {
                need,
                limit: self.store.limit(),
                what: format!(
                    "a session of `{}` as the {} (kept data {kept}, live values {})",
                    self.prog.meta("model").unwrap_or("?"),
                    self.me,
                    setup.max(body)
                ),
            });
        }
        Ok(())
    }

    /// The steps of `section` of `prog` from instruction `from` to its next `setlen` (or
    /// end), following the JIT's plan when given one.
    #[cfg_attr(not(feature = "jit"), allow(unused_variables))]
    fn steps(
        &self,
        prog: &Program,
        section: &str,
        from: usize,
        #[cfg(feature = "jit")] compiled: Option<Arc<crate::jit::Compiled>>,
        #[cfg(not(feature = "jit"))] compiled: Option<()>,
    ) -> Steps {
        let code = if section == "setup" { &prog.setup } else { &prog.body };
        let end = code[from..]
            .iter()
            .position(|i| matches!(i, Instr::SetLen { .. }))
            .map_or(code.len(), |e| from + e + 1);
        #[cfg(feature = "jit")]
        let (units, members): (Vec<Unit>, Vec<Vec<usize>>) = match &compiled {
            Some(c) => c
                .plan
                .steps
                .iter()
                .map(|s| match *s {
                    crate::jit::fuse::Step::Instr(i) => (Unit::Instr(i), vec![i]),
                    crate::jit::fuse::Step::Kernel(k) => {
                        (Unit::Kernel(k), c.plan.kernels[k].members.clone())
                    }
                })
                .unzip(),
            None => (from..end).map(|i| (Unit::Instr(i), vec![i])).unzip(),
        };
        #[cfg(not(feature = "jit"))]
        let (units, members): (Vec<Unit>, Vec<Vec<usize>>) =
            (from..end).map(|i| (Unit::Instr(i), vec![i])).unzip();
        let refs: Vec<&[usize]> = members.iter().map(|m| &m[..]).collect();
        let keep: Vec<bool> =
            if self.keep_all { vec![true; self.keep.len()] } else { self.keep.clone() };
        // What the body reads past a `setlen` is the same for every instance (ids and kinds
        // do not change): found once per program ([`Self::prepare`]), not per `setlen`.
        let cached =
            (section == "body").then(|| self.live_at.iter().find(|(at, _)| *at == end)).flatten();
        let deaths = match cached {
            Some((_, live)) => lifetime::deaths_with(prog, code, &refs, live, self.me, &keep),
            None => lifetime::deaths(prog, code, &refs, end, self.me, &keep),
        };
        let mut writes_start = Vec::with_capacity(units.len() + 1);
        let mut writes = Vec::new();
        let mut w = Vec::new();
        for (u, m) in units.iter().zip(&members) {
            writes_start.push(writes.len() as u32);
            match *u {
                Unit::Instr(i) => {
                    // A value read before anything wrote it in this session reads as zeros
                    // (a hostile program's, or data the body keeps across runs).
                    w.clear();
                    lifetime::local_reads(prog, &code[i], self.me, &mut w);
                    writes.extend(w.iter().map(|&b| (b, true)));
                    w.clear();
                    lifetime::local_writes(prog, &code[i], self.me, &mut w);
                    let partial = matches!(code[i], Instr::Copy { .. });
                    writes.extend(w.iter().map(|&b| (b, partial)));
                }
                #[cfg_attr(not(feature = "jit"), allow(unused_variables))]
                Unit::Kernel(k) => {
                    #[cfg(feature = "jit")]
                    {
                        let c = compiled.as_ref().expect("kernels come from a plan");
                        let kernel = &c.plan.kernels[k];
                        let (read, stored) = kernel.bufs.split_at(kernel.sig.inputs.len());
                        writes.extend(read.iter().map(|&b| (b, true)));
                        writes.extend(stored.iter().map(|&b| (b, false)));
                    }
                    let _ = m;
                }
            }
        }
        writes_start.push(writes.len() as u32);
        Steps {
            units,
            writes_start,
            writes,
            deaths,
            #[cfg(feature = "jit")]
            compiled,
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

    /// Words buffer `b` has at the current length.
    fn words(&self, b: usize) -> usize {
        let d = &self.cur().buffers[b];
        d.kind.words(d.len)
    }

    /// Back to the loaded program's sizes (before loading or a run): buffers that hold data
    /// across runs (weights, constants, setup results) regain their length and data; the
    /// values of a run that failed half-way go back to the pool.
    fn reset_len(&mut self) {
        self.live = None;
        self.checked = None;
        self.len = self.prog.dynamic.as_ref().map_or(0, |d| d.max_len);
        while let Some((i, tail)) = self.tails.pop() {
            if let Slot::Own(v) = &mut self.store.bufs[i] {
                v.extend_from_slice(&tail);
            }
        }
        for (i, b) in self.prog.buffers.iter().enumerate() {
            if self.foreign[i] {
                let w = b.kind.words(b.len);
                if self.store.bufs[i].len() != w {
                    let Slot::Shared(z, _) = &self.store.bufs[i] else { continue };
                    let z = z.clone();
                    self.store.share(i, z, w);
                }
            } else if !self.keep[i] && !self.keep_all {
                self.store.free(i);
            }
        }
        self.store.recount();
    }

    /// Continues at sequence length `n` (a `setlen` at body instruction `index`).
    fn set_len(&mut self, n: u32, index: usize) -> Result<(), VmError> {
        let err = |msg: String| VmError::Protocol { section: "body", index, msg };
        let d = self.prog.dynamic.as_ref().ok_or_else(|| err("no dynamic section".into()))?;
        // The instance runs from `index + 1` through its next `setlen`: that segment is
        // checked before it runs (the loaded program was validated whole before the run).
        let from = index + 1;
        let mut checked =
            self.checked.take().unwrap_or_else(|| veil_isa::Segments::at(self.prog, from));
        // The instance is resized in place (`run_body` let go of its handle); the run's first
        // `setlen` starts from a copy of the loaded program.
        let mut inst = match self.live.take().map(Arc::try_unwrap) {
            Some(Ok(q)) => q,
            Some(Err(shared)) => (*shared).clone(),
            None => Program { dynamic: None, ..self.prog.clone() },
        };
        let r = d.shrink_segment(self.prog, &mut inst, self.len, n, from, &mut checked);
        self.checked = Some(checked);
        r.map_err(err)?;
        if let Some(s) = self.len_sink.as_mut() {
            s.send_frame((n as u64).to_le_bytes().to_vec())?;
            s.flush()?;
        }
        for (i, b) in inst.buffers.iter().enumerate() {
            let w = b.kind.words(b.len);
            let slot = &mut self.store.bufs[i];
            if slot.len() > w {
                match slot {
                    Slot::Own(v) if self.keep[i] => {
                        let tail = v.split_off(w);
                        self.tails.push((i, tail));
                    }
                    s => s.truncate(w),
                }
            }
            if b.kind.is_bits() && !self.foreign[i] && !self.store.bufs[i].is_empty() {
                // Bits past the new length stay out of any opening.
                crate::bits::clear_tail(&mut self.store.bufs[i], b.len as usize);
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
            let dst = encode(io, v).map_err(err)?;
            self.store.put_new(io.buf.0 as usize, dst)?;
        }
        Ok(())
    }

    /// Loads this party's weights (and every public weight).
    pub fn load_weights(&mut self, weights: &[(String, Values)]) -> Result<(), VmError> {
        self.reset_len();
        let decls = self.prog.weights.clone();
        self.load("weight", &decls, weights)
    }

    /// Uses weights encoded once for several sessions ([`encode_weights`]): buffers view them
    /// instead of holding a copy.
    pub fn share_weights(&mut self, w: &SharedWeights) {
        self.reset_len();
        for (b, data) in w {
            let n = data.len();
            self.store.share(b.0 as usize, data.clone(), n);
        }
    }

    /// Loads this party's inputs for the next run.
    pub fn set_inputs(&mut self, inputs: &[(String, Values)]) -> Result<(), VmError> {
        self.reset_len();
        let decls = self.prog.inputs.clone();
        self.load("input", &decls, inputs)
    }

    /// Runs the setup section (once per session: the masked weights of the epoch).
    pub fn run_setup(&mut self) -> Result<(), VmError> {
        self.reset_len();
        self.prepare()?;
        let before = self.peer.stats();
        let code = Code::Loaded(self.prog);
        let steps = self.setup_steps.clone().expect("prepared");
        self.run_code("setup", &code, &steps, false)?;
        self.report.setup = self.peer.stats().since(before);
        self.report.peak_memory = self.report.peak_memory.max(self.store.peak());
        Ok(())
    }

    /// Runs the body (one inference).
    pub fn run_body(&mut self) -> Result<(), VmError> {
        self.prepare()?;
        let before = self.peer.stats();
        let t0 = Instant::now();
        self.reset_len();
        let mut code = Code::Loaded(self.prog);
        let mut steps = self.body_steps.clone().expect("prepared");
        while let Some((index, n)) = self.run_code("body", &code, &steps, true)? {
            let t = Instant::now();
            // `set_len` resizes the instance in place: this loop's handle on it goes first.
            drop(std::mem::replace(&mut code, Code::Loaded(self.prog)));
            self.set_len(n, index)?;
            let inst = self.live.clone().expect("set_len makes an instance");
            code = Code::Instance(inst.clone());
            steps = Arc::new(self.instance_steps(&inst, index + 1));
            self.report.setlen_time += t.elapsed();
        }
        self.report.body_time += t0.elapsed();
        // Closing the length stream tells the dealer this run is over (it then makes the
        // next run's material, see `session::dealer`).
        self.len_sink = None;
        let d = self.peer.stats().since(before);
        self.report.body.rounds += d.rounds;
        self.report.body.sent += d.sent;
        self.report.body.received += d.received;
        self.report.dealer_bytes = self.material.dealer_bytes();
        self.report.peak_memory = self.report.peak_memory.max(self.store.peak());
        Ok(())
    }

    /// The steps of a pruned instance from instruction `from`: planned by the JIT when its
    /// elementwise work repays planning (see `jit::WORTH_PLANNING`), else interpreted.
    fn instance_steps(&mut self, inst: &Program, from: usize) -> Steps {
        #[cfg(feature = "jit")]
        {
            let c = match (&mut self.jit, self.jit_on) {
                (Some(j), true) => {
                    let before = j.distinct;
                    let (c, t) = j.segment(inst, from);
                    self.report.jit_instance_time += t;
                    self.report.jit_compiled_in_body += j.distinct - before;
                    self.report.jit_kernels += c.as_ref().map_or(0, |c| c.plan.kernels.len());
                    c
                }
                _ => None,
            };
            self.steps(inst, "body", from, c)
        }
        #[cfg(not(feature = "jit"))]
        self.steps(inst, "body", from, None)
    }

    /// One round outside the program (a session's control messages between inferences): sends
    /// `msg`, returns the peer's message of at most `max` bytes. Counted in neither the setup
    /// nor the body.
    pub fn control(&mut self, msg: Vec<u8>, max: u64) -> Result<Vec<u8>, VmError> {
        let mut got = Vec::new();
        self.peer.exchange_into(Outgoing::Bytes(msg), Expect::AtMost(max), &mut |p| {
            got.extend_from_slice(p)
        })?;
        Ok(got)
    }

    /// The setup's round played from a recording (a server replaying the weights it masked
    /// once for its epoch to a new client): sends `len` bytes of `file` as its message and
    /// requires an empty one from the peer. Counted as the setup.
    pub fn replay_setup(
        &mut self,
        file: Box<dyn std::io::Read + Send>,
        len: u64,
    ) -> Result<(), VmError> {
        let before = self.peer.stats();
        self.peer.exchange_into(Outgoing::File(file, len), Expect::Exactly(0), &mut |_| {})?;
        self.report.setup = self.peer.stats().since(before);
        Ok(())
    }

    /// The buffers this party keeps from the setup for the body (a client's masked weights),
    /// with their data: what a returning client caches. Never print them.
    pub fn setup_results(&self) -> Vec<(Buf, &[u64])> {
        setup_results(self.prog, self.me)
            .into_iter()
            .map(|b| (b, &self.store.bufs[b.0 as usize][..]))
            .collect()
    }

    /// Restores the setup's results from a cache instead of running the setup: `data` must
    /// hold exactly [`Self::setup_results`]' buffers with their lengths.
    pub fn restore_setup(&mut self, data: Vec<(Buf, Vec<u64>)>) -> Result<(), VmError> {
        self.reset_len();
        let want = setup_results(self.prog, self.me);
        let bad = |msg: String| VmError::Tensor {
            what: "cached setup",
            name: "masked weights".into(),
            msg,
        };
        if data.len() != want.len() {
            return Err(bad(format!("{} buffers, the program keeps {}", data.len(), want.len())));
        }
        for ((b, v), w) in data.into_iter().zip(want) {
            if b != w || v.len() != self.words(b.0 as usize) {
                return Err(bad(format!("{b} of {} words does not fit the program", v.len())));
            }
            self.store.put_new(b.0 as usize, v)?;
        }
        Ok(())
    }

    /// Restores the setup's results as views of a mapped cache file: `bufs` gives each of
    /// [`Self::setup_results`]' buffers its word offset and length in `map` (checked by the
    /// reader to lie in it, 8-aligned).
    pub fn restore_setup_mapped(
        &mut self,
        map: Arc<memmap2::Mmap>,
        bufs: &[(Buf, usize, usize)],
    ) -> Result<(), VmError> {
        self.reset_len();
        let want = setup_results(self.prog, self.me);
        let bad = |msg: String| VmError::Tensor {
            what: "cached setup",
            name: "masked weights".into(),
            msg,
        };
        if bufs.len() != want.len() {
            return Err(bad(format!("{} buffers, the program keeps {}", bufs.len(), want.len())));
        }
        for (&(b, at, len), w) in bufs.iter().zip(want) {
            if b != w || len != self.words(b.0 as usize) || 8 * (at + len) > map.len() {
                return Err(bad(format!("{b} of {len} words does not fit the program")));
            }
            self.store.map(b.0 as usize, map.clone(), at, len);
        }
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
                data: self.store.bufs[o.buf.0 as usize]
                    .iter()
                    .map(|&v| ring::decode(v, o.frac_bits))
                    .collect(),
            })
            .collect()
    }

    /// This party's own array of buffer `b` (for tests that compare executions; a value is
    /// gone after its last use unless [`Self::keep_values`]). It holds this party's share:
    /// never print it.
    pub fn raw_buffer(&self, b: Buf) -> Option<&[u64]> {
        self.store.bufs.get(b.0 as usize).map(|v| &v[..])
    }

    /// The measurements so far.
    pub fn report(&self) -> PartyReport {
        let mut r = self.report.clone();
        r.dealer_bytes = self.material.dealer_bytes();
        r.peak_memory = r.peak_memory.max(self.store.peak());
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

    /// Gives buffer `b` an array before a step writes it.
    fn ensure(&mut self, b: Buf, zero: bool) -> Result<(), VmError> {
        let i = b.0 as usize;
        if self.foreign[i] {
            return Ok(());
        }
        let w = self.words(i);
        self.store.ensure(i, w, zero)
    }

    /// Runs `section` of `prog` as `steps`; stops early at a `setlen` and returns its index
    /// and the length it sets.
    fn run_code(
        &mut self,
        section: &'static str,
        prog: &Code<'p>,
        steps: &Steps,
        timed: bool,
    ) -> Result<Option<(usize, u32)>, VmError> {
        let (code, tags) = match section {
            "setup" => (&prog.setup, &prog.setup_tags),
            _ => (&prog.body, &prog.body_tags),
        };
        let total = code.len();
        let from = match steps.units.first() {
            Some(Unit::Instr(i)) => *i,
            _ => 0,
        };
        let (mut done, mut reported) = (from, from);
        let mut last = Instant::now();
        for (step, &unit) in steps.units.iter().enumerate() {
            for &(b, zero) in steps.writes(step) {
                self.ensure(b, zero)?;
            }
            let (index, local, elementwise, op) = match unit {
                Unit::Instr(index) => {
                    let ins = &code[index];
                    let at = At { section, index };
                    done += 1;
                    match ins.visit_party(&mut Exec { vm: self, at, prog })? {
                        Flow::Next => {}
                        Flow::Waited(t) => {
                            if timed {
                                self.report.wait_time += t;
                            }
                        }
                        Flow::SetLen(n) => {
                            self.free_after(steps, step);
                            return Ok(Some((index, n)));
                        }
                    }
                    let class = ins.class();
                    let local = match class {
                        Class::Local | Class::Elementwise | Class::Comm => true,
                        Class::Exchange | Class::Dealer | Class::Control => false,
                    };
                    (index, local, class == Class::Elementwise, ins.name())
                }
                #[cfg_attr(not(feature = "jit"), allow(unused_variables))]
                Unit::Kernel(k) => {
                    #[cfg(feature = "jit")]
                    {
                        let c = steps.compiled.as_ref().expect("kernels come from a plan");
                        let kernel = &c.plan.kernels[k];
                        let ran = c.fns[k]
                            .is_some_and(|f| crate::jit::run(kernel, f, &mut self.store.bufs));
                        if ran {
                            self.report.jit_runs.0 += 1;
                        } else {
                            self.report.jit_runs.1 += 1;
                            for &i in &kernel.members {
                                let mut w = Vec::new();
                                lifetime::local_writes(prog, &code[i], self.me, &mut w);
                                for b in w {
                                    self.ensure(b, false)?;
                                }
                                let at = At { section, index: i };
                                code[i].visit_party(&mut Exec { vm: self, at, prog })?;
                            }
                        }
                        done += kernel.members.len();
                        (kernel.members.last().copied().unwrap_or(0), true, true, FUSED)
                    }
                    #[cfg(not(feature = "jit"))]
                    unreachable!("kernels exist only with the JIT")
                }
            };
            self.free_after(steps, step);
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
                let end = step + 1 == steps.units.len();
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

    /// Returns the values that die after `step` to the pool.
    fn free_after(&mut self, steps: &Steps, step: usize) {
        if self.keep_all {
            return;
        }
        for &b in steps.deaths.after(step) {
            self.store.free(b.0 as usize);
        }
    }

    /// Completes the round: sends the queued parts, and receives the peer's message straight
    /// into the destinations, a part at a time (the message is never held whole).
    fn round(&mut self, at: At) -> Result<(), VmError> {
        let msg = std::mem::take(&mut self.out);
        let pending = std::mem::take(&mut self.pending);
        let needs: Vec<usize> = pending.iter().map(|p| p.need(&self.store)).collect();
        let expect: u64 = needs.iter().map(|&n| n as u64).sum();
        let store = &mut self.store;
        let (mut k, mut staged) = (0usize, Vec::new());
        let mut sink = |mut piece: &[u8]| {
            while !piece.is_empty() || (k < needs.len() && needs[k] == 0) {
                if k >= needs.len() {
                    return;
                }
                let want = needs[k] - staged.len();
                if staged.is_empty() && piece.len() >= want {
                    pending[k].complete(&piece[..want], store);
                    piece = &piece[want..];
                    k += 1;
                    continue;
                }
                let n = want.min(piece.len());
                staged.extend_from_slice(&piece[..n]);
                piece = &piece[n..];
                if staged.len() == needs[k] {
                    pending[k].complete(&staged, store);
                    staged.clear();
                    k += 1;
                }
            }
        };
        let r = self.peer.exchange_into(Outgoing::Bytes(msg), Expect::Exactly(expect), &mut sink);
        sink(&[]);
        r.map_err(|e| match e {
            crate::net::TransportError::Malformed { .. } => {
                VmError::Protocol { section: at.section, index: at.index, msg: e.to_string() }
            }
            e => e.into(),
        })
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
        std::mem::take(&mut self.store.bufs[d.0 as usize]).into_vec()
    }

    fn put(&mut self, d: Buf, v: Vec<u64>) {
        self.store.bufs[d.0 as usize] = Slot::Own(v);
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
        kernels::unary(&mut dv, &self.store.bufs[a.0 as usize], f);
        self.put(d, dv);
    }
}

/// The buffers party `me` keeps from the setup for the body: what it computed or received
/// there and reads later (a client's masked weights).
pub fn setup_results(p: &Program, me: Party) -> Vec<Buf> {
    let keep = lifetime::persistent(p, me);
    let mut loaded = vec![false; p.buffers.len()];
    for io in p.weights.iter().chain(&p.inputs).chain(&p.outputs) {
        loaded[io.buf.0 as usize] = true;
    }
    for c in &p.consts {
        loaded[c.buf.0 as usize] = true;
    }
    let mut seen = vec![false; p.buffers.len()];
    let mut out = Vec::new();
    let mut w = Vec::new();
    for ins in &p.setup {
        w.clear();
        lifetime::local_writes(p, ins, me, &mut w);
        for &b in &w {
            let i = b.0 as usize;
            if keep[i] && !loaded[i] && !seen[i] {
                seen[i] = true;
                out.push(b);
            }
        }
    }
    out
}

/// A tensor encoded for its declaration: reals in fixed point with the declaration's
/// fractional bits, integers exactly.
pub fn encode(io: &veil_isa::IoDecl, v: &Values) -> Result<Vec<u64>, String> {
    let want = io.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d as usize));
    let want = want.ok_or_else(|| format!("shape {:?} overflows", io.shape))?;
    if v.len() != want {
        return Err(format!(
            "has {} elements, the program needs shape {:?} ({want})",
            v.len(),
            io.shape
        ));
    }
    let f = io.frac_bits;
    let real = |x: f64| {
        if ring::fits(x, f, 8) {
            Ok(ring::encode(x, f))
        } else {
            Err(format!("value {x} does not fit fixed point with {f} fractional bits"))
        }
    };
    match v {
        Values::F32(x) => x.iter().map(|&x| real(x as f64)).collect(),
        Values::F64(x) => x.iter().map(|&x| real(x)).collect(),
        Values::I64(x) => Ok(x.iter().map(|&x| (x as u64).wrapping_shl(f as u32)).collect()),
    }
}

/// A server's weights for `prog`, encoded once and shared by all its sessions
/// ([`PartyVm::share_weights`]).
pub fn encode_weights(
    prog: &Program,
    me: Party,
    weights: &[(String, Values)],
) -> Result<SharedWeights, VmError> {
    let mut out = Vec::new();
    for io in &prog.weights {
        let holds = match prog.buffers[io.buf.0 as usize].kind {
            Kind::Public => true,
            Kind::Private(p) => p == me,
            _ => false,
        };
        if !holds {
            continue;
        }
        let err = |msg: String| VmError::Tensor { what: "weight", name: io.name.clone(), msg };
        let v = weights.iter().find(|(n, _)| n == &io.name).map(|(_, v)| v).ok_or_else(|| {
            err(format!("missing (the program needs it with shape {:?})", io.shape))
        })?;
        out.push((io.buf, Arc::new(encode(io, v).map_err(err)?)));
    }
    Ok(out)
}
