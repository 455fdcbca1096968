//! [`ProgramBuilder`]: builds a [`Program`] from protocol-level calls.
//!
//! Callers ask for operations (`mul`, `trunc`, `drelu`, `matmul_priv`, ...); the builder
//! expands each into instructions and schedules them. Scheduling is ASAP by communication
//! depth, as MP-SPDZ's merger does: an instruction runs in the phase where its last input
//! becomes available; an `open`/`send`/`reveal` issued in phase `p` makes its result available
//! in phase `p + 1`; one `exchange` closes each phase that communicates. So every independent
//! opening at the same depth shares one round, and the round count is the number of distinct
//! communication depths. Dealer instructions depend on no online data and are placed as late as
//! possible (in the phase of their first consumer), so material is drawn just before use.
//!
//! Buffers are SSA while building; [`ProgramBuilder::finish`] reuses physical buffers whose
//! values are dead, keyed by kind and length, so a 12-layer model does not hold every
//! intermediate at once.

mod argmax;
mod arith;
mod compare;
mod masked;
mod prune;
mod weights;

pub use masked::Masked;
pub use prune::{Compaction, THETA_BITS};

use crate::operand::{Buf, Party};
use crate::ops::Instr;
use crate::program::{BufDecl, ConstInit, ConstOrigin, IoDecl, Kind, Program, Tag};
use std::collections::HashMap;

/// Which part of the program instructions go to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Section {
    /// Once per program load.
    Setup,
    /// Once per inference.
    Body,
}

#[derive(Clone, Debug)]
struct Item {
    instr: Instr,
    phase: u32,
    tag: u32,
}

/// Knobs for the comparison protocol.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CompareParams {
    /// Values compared must satisfy `-2^(bits-1) ≤ x ≤ 2^(bits-1) - 2^ignore` in the ring
    /// (fixed-point encoded): within `2^ignore` below the top, the ignored bits misread the sign.
    pub bits: u8,
    /// Low bits ignored: the sign is exact whenever `|x| ≥ 2^ignore` (ring units).
    pub ignore: u8,
    /// Digit width of the dealer's comparison tables (2^width bits per digit and element).
    pub digit: u8,
}

impl Default for CompareParams {
    fn default() -> Self {
        CompareParams { bits: 36, ignore: 8, digit: 4 }
    }
}

impl CompareParams {
    /// The row maximum's comparisons at `frac_bits` fractional bits: differences below 2^10 = 1024
    /// (bits = f + 11), read to 2^-4 (ignore = f − 4), in two digits of 7 bits.
    ///
    /// A maximum off by less than 2^-4 per tournament level is as good as exact for what it is
    /// used for: softmax is shift-invariant, and 7 levels put the row's top at most 0.44 above
    /// the maximum found, which keeps its sum below 1.55·n and so inside the reciprocal's
    /// convergence (x·y0 < 2). The 14 bits left make two digits, so every level's comparison is
    /// one opening and one AND round fused with the selection (2 rounds a level, not 3), for
    /// tables of 2·2^7 bits per digit: the dealer bytes of four 5-bit digits.
    pub fn for_max(frac_bits: u8) -> CompareParams {
        CompareParams {
            bits: (frac_bits + 11).min(64),
            ignore: frac_bits.saturating_sub(4),
            digit: 7,
        }
    }

    /// These parameters for a comparison allowed to misjudge values within `slack` of its
    /// threshold, on values at `scale` fractional bits: the bits below the slack are ignored
    /// (never more than leave 3), and digits are at least 5 bits wide, which takes the digit
    /// tree one AND round shorter where the ignored bits allow it (`drelu(x, slack)`).
    pub fn with_slack(self, slack: f64, scale: u8) -> CompareParams {
        let below = (slack.log2() + scale as f64).floor();
        let ignore = if below.is_finite() { below.clamp(0.0, 60.0) as u8 } else { 0 };
        let ignore = ignore.max(self.ignore).min(self.bits.saturating_sub(3));
        CompareParams { bits: self.bits, ignore, digit: self.digit.max(5) }
    }
}

/// Builds a program: allocates buffers, expands protocols, schedules rounds.
pub struct ProgramBuilder {
    frac_bits: u8,
    bufs: Vec<BufDecl>,
    ready: Vec<u32>,
    defined_in: Vec<Section>,
    dealer_known: Vec<bool>,
    setup: Vec<Item>,
    body: Vec<Item>,
    section: Section,
    consts: Vec<ConstInit>,
    const_origins: Vec<ConstOrigin>,
    inputs: Vec<IoDecl>,
    weights: Vec<IoDecl>,
    outputs: Vec<IoDecl>,
    meta: Vec<(String, String)>,
    tags: Vec<Tag>,
    tag_ids: HashMap<Tag, u32>,
    cur_tag: u32,
    masked_cache: HashMap<(Buf, u8, u8), Masked>,
    /// The share of each truncating opening (`trunc_w`), so that a value truncated twice is
    /// one buffer and what is cached by buffer (a weight product's send) is found again.
    trunc_cache: HashMap<(Buf, u8, u8), Buf>,
    /// What each truncation's share buffer truncates: `(x, t, w)` of `trunc_w`.
    trunc_origin: HashMap<Buf, (Buf, u8, u8)>,
    weight_masks: HashMap<Buf, (Buf, Buf)>,
    tables_cache: HashMap<(Buf, u8, u8), (Buf, Buf)>,
    /// Dealer products already made (a square and a cube of one opening share `base²`).
    dprod_cache: HashMap<(Buf, Buf, u32, u8), Buf>,
    activation_cache: HashMap<(Buf, Party), (Buf, Buf)>,
    /// Comparison parameters used by `drelu` and everything built on it.
    pub compare: CompareParams,
    /// Comparison parameters of the tournament in [`ProgramBuilder::max_rows`]
    /// ([`CompareParams::for_max`]).
    pub max_compare: CompareParams,
    /// A comparison of few elements may use two wide digits (one AND round); the element
    /// count it judges by is scaled by `len_scale.0 / len_scale.1`. A program compiled at
    /// several lengths (token pruning) scales to its longest, so that the choice, like every
    /// instruction, is the same at every length for buffers that grow with the tokens.
    pub len_scale: (u64, u64),
    /// No body instruction is scheduled before this phase (set by `setlen`).
    floor: u32,
}

impl ProgramBuilder {
    /// Runs `f` with the comparison parameters `params`, the current ones restored after: for a
    /// protocol whose comparisons need other ranges or digits than the program's default.
    pub fn with_compare<T>(&mut self, params: CompareParams, f: impl FnOnce(&mut Self) -> T) -> T {
        let saved = std::mem::replace(&mut self.compare, params);
        let r = f(self);
        self.compare = saved;
        r
    }

    /// A builder for fixed point with `frac_bits` fractional bits.
    pub fn new(frac_bits: u8) -> ProgramBuilder {
        let mut b = ProgramBuilder {
            frac_bits,
            bufs: Vec::new(),
            ready: Vec::new(),
            defined_in: Vec::new(),
            dealer_known: Vec::new(),
            setup: Vec::new(),
            body: Vec::new(),
            section: Section::Body,
            consts: Vec::new(),
            const_origins: Vec::new(),
            inputs: Vec::new(),
            weights: Vec::new(),
            outputs: Vec::new(),
            meta: Vec::new(),
            tags: Vec::new(),
            tag_ids: HashMap::new(),
            cur_tag: 0,
            masked_cache: HashMap::new(),
            trunc_cache: HashMap::new(),
            trunc_origin: HashMap::new(),
            weight_masks: HashMap::new(),
            tables_cache: HashMap::new(),
            dprod_cache: HashMap::new(),
            activation_cache: HashMap::new(),
            compare: CompareParams::default(),
            max_compare: CompareParams::for_max(frac_bits),
            len_scale: (1, 1),
            floor: 0,
        };
        b.set_tag("model", "other");
        b
    }

    /// Fixed-point fractional bits.
    pub fn frac_bits(&self) -> u8 {
        self.frac_bits
    }

    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, value: &str) {
        self.meta.push((key.to_string(), value.to_string()));
    }

    /// Labels the instructions emitted from now on, for cost reports.
    pub fn set_tag(&mut self, layer: &str, op: &str) {
        let t = Tag { layer: layer.to_string(), op: op.to_string() };
        let next = self.tags.len() as u32;
        let id = *self.tag_ids.entry(t.clone()).or_insert(next);
        if id == next {
            self.tags.push(t);
        }
        self.cur_tag = id;
    }

    /// The current tag's layer and op names.
    pub fn tag(&self) -> (&str, &str) {
        let t = &self.tags[self.cur_tag as usize];
        (&t.layer, &t.op)
    }

    /// Declares a new buffer.
    pub fn buf(&mut self, kind: Kind, len: u32) -> Buf {
        let b = Buf(self.bufs.len() as u32);
        self.bufs.push(BufDecl { kind, len });
        self.ready.push(0);
        self.defined_in.push(self.section);
        self.dealer_known.push(false);
        b
    }

    /// Kind of a buffer.
    pub fn kind(&self, b: Buf) -> Kind {
        self.bufs[b.0 as usize].kind
    }

    /// Length of a buffer (elements, or bits).
    pub fn len(&self, b: Buf) -> u32 {
        self.bufs[b.0 as usize].len
    }

    /// A public buffer holding constant ring elements made by the compiler (no weight in them).
    pub fn constant(&mut self, data: Vec<u64>) -> Buf {
        self.constant_from(data, ConstOrigin::Program)
    }

    /// A public buffer holding constant ring elements computed as `origin` says.
    pub fn constant_from(&mut self, data: Vec<u64>, origin: ConstOrigin) -> Buf {
        let b = self.buf(Kind::Public, data.len() as u32);
        self.consts.push(ConstInit { buf: b, data });
        self.const_origins.push(origin);
        b
    }

    /// Declares an input supplied by `party` at every run (a private buffer of that party).
    pub fn input(&mut self, name: &str, party: Party, shape: &[u32], frac_bits: u8) -> Buf {
        let b = self.buf(Kind::Private(party), shape.iter().product());
        self.inputs.push(IoDecl {
            name: name.into(),
            buf: b,
            party,
            frac_bits,
            shape: shape.to_vec(),
        });
        b
    }

    /// Declares a weight supplied by `party` at load time; `public` weights are loaded by both.
    pub fn weight(
        &mut self,
        name: &str,
        party: Party,
        public: bool,
        shape: &[u32],
        frac_bits: u8,
    ) -> Buf {
        let kind = if public { Kind::Public } else { Kind::Private(party) };
        let b = self.buf(kind, shape.iter().product());
        self.defined_in[b.0 as usize] = Section::Setup;
        self.weights.push(IoDecl {
            name: name.into(),
            buf: b,
            party,
            frac_bits,
            shape: shape.to_vec(),
        });
        b
    }

    /// Reveals the share `x` to `party` as a named output.
    ///
    /// Rounds: 1. Sends: 8 bytes per element from the other party.
    pub fn output(
        &mut self,
        name: &str,
        x: Buf,
        party: Party,
        shape: &[u32],
        frac_bits: u8,
    ) -> Buf {
        let d = self.buf(Kind::Private(party), self.len(x));
        self.emit(Instr::Reveal { d, a: x, to: party });
        self.outputs.push(IoDecl {
            name: name.into(),
            buf: d,
            party,
            frac_bits,
            shape: shape.to_vec(),
        });
        d
    }

    /// Runs `f` with instructions going to the setup section (the weight masks of an epoch).
    pub fn in_setup<T>(&mut self, f: impl FnOnce(&mut ProgramBuilder) -> T) -> T {
        let prev = std::mem::replace(&mut self.section, Section::Setup);
        let r = f(self);
        self.section = prev;
        r
    }

    /// The round after which `b` is available (0: before the first exchange).
    pub fn ready_phase(&self, b: Buf) -> u32 {
        self.ready[b.0 as usize]
    }

    /// Appends an instruction to the current section and schedules it.
    pub fn emit(&mut self, instr: Instr) {
        let bufs = instr.buffers();
        let dealer = instr.is_dealer();
        let comm = instr.is_comm();
        let mut phase = 0;
        for &(b, written) in &bufs {
            if !written && self.defined_in[b.0 as usize] == self.section {
                phase = phase.max(self.ready[b.0 as usize]);
            }
        }
        if dealer {
            phase = 0;
        } else if self.section == Section::Body {
            phase = phase.max(self.floor);
        }
        let done = if comm { phase + 1 } else { phase };
        for &(b, written) in &bufs {
            if written {
                let i = b.0 as usize;
                self.ready[i] = self.ready[i].max(done);
                self.dealer_known[i] = dealer;
                self.defined_in[i] = self.section;
            }
        }
        let item = Item { instr, phase, tag: self.cur_tag };
        match self.section {
            Section::Setup => self.setup.push(item),
            Section::Body => self.body.push(item),
        }
    }

    /// True when the buffer's full value is known to the dealer.
    pub fn is_dealer_known(&self, b: Buf) -> bool {
        self.dealer_known[b.0 as usize]
    }

    /// Schedules, allocates physical buffers and returns the program.
    pub fn finish(self) -> Program {
        allocate(self.finish_ssa(), None)
    }

    /// The scheduled program before physical buffers are shared: every SSA buffer is its own
    /// buffer. [`allocate`] turns it into what [`ProgramBuilder::finish`] returns. Compiling
    /// for several sequence lengths compares these, whose buffer ids do not depend on sizes.
    pub fn finish_ssa(mut self) -> Program {
        let nbufs = self.bufs.len();
        let setup = schedule(std::mem::take(&mut self.setup), nbufs);
        let body = schedule(std::mem::take(&mut self.body), nbufs);
        Program {
            frac_bits: self.frac_bits,
            meta: self.meta,
            buffers: self.bufs,
            consts: self.consts,
            const_origins: self.const_origins,
            inputs: self.inputs,
            weights: self.weights,
            outputs: self.outputs,
            tags: self.tags,
            setup_tags: setup.iter().map(|i| i.tag).collect(),
            setup: setup.into_iter().map(|i| i.instr).collect(),
            body_tags: body.iter().map(|i| i.tag).collect(),
            body: body.into_iter().map(|i| i.instr).collect(),
            dynamic: None,
        }
    }
}

/// Maps the SSA buffers of `p` (from [`ProgramBuilder::finish_ssa`]) to physical buffers,
/// reusing one whose value is dead for a later value of the same kind and length class:
/// `class[i]` when given (buffers whose lengths vary alike with the sequence length), else the
/// length. Returns the program and, per SSA buffer, its physical buffer.
pub fn allocate_mapped(p: Program, class: Option<&[u64]>) -> (Program, Vec<Option<Buf>>) {
    let nbufs = p.buffers.len();
    let mut pinned = vec![false; nbufs];
    for io in p.inputs.iter().chain(&p.weights).chain(&p.outputs) {
        pinned[io.buf.0 as usize] = true;
    }
    for c in &p.consts {
        pinned[c.buf.0 as usize] = true;
    }
    // Values written in setup and read in the body live across the whole body.
    let mut written_in_setup = vec![false; nbufs];
    for ins in &p.setup {
        for (b, w) in ins.buffers() {
            if w {
                written_in_setup[b.0 as usize] = true;
            }
        }
    }
    for ins in &p.body {
        for (b, w) in ins.buffers() {
            if !w && written_in_setup[b.0 as usize] {
                pinned[b.0 as usize] = true;
            }
        }
    }
    let keys: Vec<u64> = match class {
        Some(c) => c.to_vec(),
        None => p.buffers.iter().map(|b| b.len as u64).collect(),
    };
    let mut alloc = Allocator::new(&p.buffers, &pinned, keys);
    let setup = alloc.run(p.setup);
    let body = alloc.run(p.body);
    let map =
        |b: Buf, alloc: &Allocator| alloc.fixed[b.0 as usize].expect("pinned buffers are mapped");
    let consts = p
        .consts
        .iter()
        .map(|c| ConstInit { buf: map(c.buf, &alloc), data: c.data.clone() })
        .collect();
    let remap_io = |l: &[IoDecl], alloc: &Allocator| {
        l.iter().map(|io| IoDecl { buf: map(io.buf, alloc), ..io.clone() }).collect::<Vec<_>>()
    };
    let (inputs, weights, outputs) =
        (remap_io(&p.inputs, &alloc), remap_io(&p.weights, &alloc), remap_io(&p.outputs, &alloc));
    let prog = Program {
        frac_bits: p.frac_bits,
        meta: p.meta,
        buffers: alloc.physical,
        consts,
        const_origins: p.const_origins,
        inputs,
        weights,
        outputs,
        tags: p.tags,
        setup_tags: p.setup_tags,
        setup,
        body_tags: p.body_tags,
        body,
        dynamic: None,
    };
    (prog, alloc.fixed)
}

/// [`allocate_mapped`] without the map.
pub fn allocate(p: Program, class: Option<&[u64]>) -> Program {
    allocate_mapped(p, class).0
}

/// Orders one section by phase, places dealer instructions and local computations just in
/// time, and inserts one `exchange` after each phase that communicates.
///
/// Only messages fix a phase; everything else runs as late as its first reader allows (never
/// across a `setlen`, after which sizes change): a value that waits for a later round is
/// computed when it is needed, not held from the start (the client's products of its masks
/// with the masked weights of every layer no longer live through the whole body).
fn schedule(mut items: Vec<Item>, nbufs: usize) -> Vec<Item> {
    let setlens: Vec<u32> =
        items.iter().filter(|i| matches!(i.instr, Instr::SetLen { .. })).map(|i| i.phase).collect();
    let mut first_read = vec![u32::MAX; nbufs];
    for it in items.iter_mut().rev() {
        let bufs = it.instr.buffers();
        let dealer = it.instr.is_dealer();
        let movable = dealer || !(it.instr.is_comm() || matches!(it.instr, Instr::SetLen { .. }));
        if movable {
            let p = bufs
                .iter()
                .filter(|(_, w)| *w)
                .map(|(b, _)| first_read[b.0 as usize])
                .min()
                .unwrap_or(u32::MAX);
            if dealer {
                it.phase = if p == u32::MAX { 0 } else { p };
            } else if p != u32::MAX && p > it.phase {
                // Not past the next `setlen`: the value must be computed at this length.
                let barrier = setlens.iter().copied().filter(|&s| s > it.phase).min();
                it.phase = barrier.map_or(p, |s| p.min(s - 1)).max(it.phase);
            }
        }
        for (b, w) in bufs {
            if !w {
                first_read[b.0 as usize] = first_read[b.0 as usize].min(it.phase);
            }
        }
    }
    let max_phase = items.iter().map(|i| i.phase).max().unwrap_or(0) as usize;
    let mut by_phase: Vec<Vec<Item>> = vec![Vec::new(); max_phase + 1];
    for it in items {
        by_phase[it.phase as usize].push(it);
    }
    let mut out = Vec::new();
    for (p, group) in by_phase.into_iter().enumerate() {
        let communicates = group.iter().any(|i| i.instr.is_comm());
        let tag = group.iter().rev().find(|i| i.instr.is_comm()).map(|i| i.tag);
        out.extend(draws_just_before_use(group, nbufs));
        if communicates {
            out.push(Item { instr: Instr::Exchange {}, phase: p as u32, tag: tag.unwrap_or(0) });
        }
    }
    out
}

/// Orders one phase: the rest in program order, each dealer draw just before the first
/// instruction that reads what it draws (after the draws it reads itself, as the dealer
/// walks the program in order), draws nothing in the phase reads first. A phase's masks are
/// then not all live at once: the setup, one phase, held every weight's mask before.
fn draws_just_before_use(group: Vec<Item>, nbufs: usize) -> Vec<Item> {
    let mut producer: Vec<Option<usize>> = vec![None; nbufs];
    let mut slots: Vec<Option<Item>> = Vec::with_capacity(group.len());
    for (k, it) in group.into_iter().enumerate() {
        if it.instr.is_dealer() {
            it.instr.each_buffer(|b, w| {
                if w {
                    producer[b.0 as usize] = Some(k);
                }
            });
        }
        slots.push(Some(it));
    }
    let mut out = Vec::with_capacity(slots.len());
    fn place(
        k: usize,
        slots: &mut [Option<Item>],
        producer: &[Option<usize>],
        out: &mut Vec<Item>,
    ) {
        let Some(it) = slots[k].take() else { return };
        let mut inputs = Vec::new();
        it.instr.each_buffer(|b, w| {
            if !w {
                if let Some(j) = producer[b.0 as usize] {
                    inputs.push(j);
                }
            }
        });
        inputs.sort_unstable();
        for j in inputs {
            place(j, slots, producer, out);
        }
        out.push(it);
    }
    // Draws no instruction of the phase reads come first, as before.
    let mut read = vec![false; slots.len()];
    for it in slots.iter().flatten() {
        it.instr.each_buffer(|b, w| {
            if let (false, Some(j)) = (w, producer[b.0 as usize]) {
                read[j] = true;
            }
        });
    }
    for k in 0..slots.len() {
        let unread = slots[k].as_ref().is_some_and(|i| i.instr.is_dealer()) && !read[k];
        if unread {
            place(k, &mut slots, &producer, &mut out);
        }
    }
    for k in 0..slots.len() {
        if slots[k].as_ref().is_some_and(|i| !i.instr.is_dealer()) {
            place(k, &mut slots, &producer, &mut out);
        }
    }
    // Draws read only by draws placed already are placed; anything left keeps its order.
    for k in 0..slots.len() {
        place(k, &mut slots, &producer, &mut out);
    }
    out
}

/// Maps SSA buffers to physical buffers, reusing a physical buffer of the same kind and
/// length once every read of its previous value is done.
struct Allocator {
    decls: Vec<BufDecl>,
    pinned: Vec<bool>,
    fixed: Vec<Option<Buf>>,
    physical: Vec<BufDecl>,
    keys: Vec<u64>,
    free: HashMap<(Kind, u64), Vec<Buf>>,
}

impl Allocator {
    fn new(decls: &[BufDecl], pinned: &[bool], keys: Vec<u64>) -> Allocator {
        let mut a = Allocator {
            decls: decls.to_vec(),
            pinned: pinned.to_vec(),
            fixed: vec![None; decls.len()],
            physical: Vec::new(),
            keys,
            free: HashMap::new(),
        };
        for (i, &p) in pinned.iter().enumerate() {
            if p {
                a.fixed[i] = Some(a.new_physical(i));
            }
        }
        a
    }

    fn new_physical(&mut self, logical: usize) -> Buf {
        let b = Buf(self.physical.len() as u32);
        self.physical.push(self.decls[logical].clone());
        b
    }

    fn run(&mut self, items: Vec<Instr>) -> Vec<Instr> {
        let mut last_use = vec![usize::MAX; self.decls.len()];
        for (i, it) in items.iter().enumerate() {
            for (b, _) in it.buffers() {
                last_use[b.0 as usize] = i;
            }
        }
        // A message's destination is written, and its source read again, at the next
        // exchange: keep both alive until then.
        let mut next_exchange = items.len();
        for i in (0..items.len()).rev() {
            if matches!(items[i], Instr::Exchange {}) {
                next_exchange = i;
            }
            if items[i].is_comm() {
                for (b, _) in items[i].buffers() {
                    let l = &mut last_use[b.0 as usize];
                    *l = (*l).max(next_exchange);
                }
            }
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, mut it) in items.into_iter().enumerate() {
            let bufs = it.buffers();
            for &(b, _) in &bufs {
                let l = b.0 as usize;
                if self.fixed[l].is_none() {
                    let key = (self.decls[l].kind, self.keys[l]);
                    let phys = match self.free.get_mut(&key).and_then(|v| v.pop()) {
                        Some(p) => p,
                        None => self.new_physical(l),
                    };
                    self.fixed[l] = Some(phys);
                }
            }
            remap(&mut it, &self.fixed);
            out.push(it);
            for &(b, _) in &bufs {
                let l = b.0 as usize;
                if last_use[l] == i && !self.pinned[l] {
                    if let Some(p) = self.fixed[l] {
                        let key = (self.decls[l].kind, self.keys[l]);
                        let list = self.free.entry(key).or_default();
                        if !list.contains(&p) {
                            list.push(p);
                        }
                    }
                }
            }
        }
        out
    }
}

fn remap(ins: &mut Instr, map: &[Option<Buf>]) {
    let m = |b: &mut Buf| *b = map[b.0 as usize].expect("every used buffer is mapped");
    use Instr::*;
    match ins {
        Add { d, a, b, .. }
        | Sub { d, a, b, .. }
        | Mul { d, a, b, .. }
        | MatMul { d, a, b, .. } => {
            m(d);
            m(a);
            m(b);
        }
        DProd { d, a, b, .. }
        | DMatMul { d, a, b, .. }
        | XorB { d, a, b }
        | AndB { d, a, b }
        | DAnd { d, a, b } => {
            m(d);
            m(a);
            m(b);
        }
        Neg { d, a }
        | AddImm { d, a, .. }
        | MulImm { d, a, .. }
        | Shl { d, a, .. }
        | Sum { d, a, .. }
        | Copy { d, a, .. }
        | NotB { d, a }
        | BitOf { d, a, .. }
        | Open { d, a, .. }
        | OpenB { d, a }
        | Send { d, a, .. }
        | Reveal { d, a, .. }
        | DBit { d, a, .. }
        | CumSum { d, a, .. }
        | DBit2A { d, a } => {
            m(d);
            m(a);
        }
        TruncPost { c2, pk, s, c, rhi, m: mm, .. } => {
            m(c2);
            m(pk);
            m(s);
            m(c);
            m(rhi);
            m(mm);
        }
        Sel { d, e, a, b } => {
            m(d);
            m(e);
            m(a);
            m(b);
        }
        Lookup { d, table, idx, .. } => {
            m(d);
            m(table);
            m(idx);
        }
        DTrunc { hi, msb, a, .. } => {
            m(hi);
            m(msb);
            m(a);
        }
        DTable { lt, eq, a, .. } => {
            m(lt);
            m(eq);
            m(a);
        }
        DCase { d, a, b, g, k } => {
            for x in [d, a, b, g, k] {
                m(x);
            }
        }
        DMask { d } | DPriv { d } | DBits { d } => m(d),
        SetLen { a, .. } => m(a),
        Exchange {} => {}
    }
}
