//! The dealer: walks the program and generates every party's correlated randomness.
//!
//! It mirrors both parties' PRGs (it chose their seeds), so it knows the full value of every
//! dealer-known buffer; for each correlated output it sends the server the correction that
//! turns the client's PRG draw into a sharing of the right value. It never sees a message
//! between the parties, inputs, weights or outputs.
//!
//! The setup (the masks of the server's weights) is dealt once per *epoch* from the server's
//! epoch seed ([`Base`]); each inference's body is dealt from fresh seeds on top of it, so
//! the material of many inferences can be made ahead of time, before any input exists.

use crate::ahead::{self, Ahead, Plan, Step};
use crate::bits;
use crate::error::VmError;
use crate::kernels;
use crate::net::FrameSink;
use crate::net::FrameSource;
use crate::prg::{Prg, Seed};
use std::sync::Arc;
use veil_isa::{Buf, Class, DealerVisitor, Instr, Kind, Party, Program};

/// Why a program's setup cannot be dealt once per epoch, if it cannot: it may only draw the
/// server's private masks (what the compiler emits to mask the server's weights), so that it
/// depends on nothing of a client's.
pub fn epoch_setup_problem(p: &Program) -> Option<String> {
    for (i, ins) in p.setup.iter().enumerate() {
        let bad = match ins.class() {
            Class::Dealer => !matches!(ins, Instr::DPriv { d }
                if p.buffers[d.0 as usize].kind == Kind::Private(Party::Server)),
            Class::Comm => !matches!(ins, Instr::Send { from: Party::Server, .. }),
            Class::Local | Class::Elementwise | Class::Exchange | Class::Control => false,
        };
        if bad {
            return Some(format!(
                "setup instruction #{i} `{}`: a setup may only mask the server's weights (its \
                 material must not depend on a client)",
                ins.disas()
            ));
        }
    }
    None
}

/// What an epoch's setup leaves the dealer: the values of the server's weight masks, which
/// the material of every inference of the epoch is made against.
pub struct Base {
    known: Vec<Option<Vec<u64>>>,
}

impl Base {
    /// Deals the setup of `prog` (see [`epoch_setup_problem`]) from the server's epoch seed
    /// and keeps what the body's dealer instructions read.
    pub fn new(prog: &Program, server_seed: Seed) -> Result<Base, VmError> {
        if let Some(why) = epoch_setup_problem(prog) {
            return Err(VmError::Dealer { section: "setup", index: 0, name: "setup", msg: why });
        }
        let mut prg = Prg::new(server_seed);
        let mut known: Vec<Option<Vec<u64>>> = vec![None; prog.buffers.len()];
        for (i, ins) in prog.setup.iter().enumerate() {
            if let Instr::DPriv { d } = ins {
                let n = prog.buffers[d.0 as usize].len as usize;
                prg.at(true, i, 0);
                known[d.0 as usize] = Some(prg.words(n));
            } else {
                for (b, w) in ins.buffers() {
                    if w {
                        known[b.0 as usize] = None;
                    }
                }
            }
        }
        // Keep only what a body dealer instruction reads before the body overwrites it.
        let mut wanted = vec![false; prog.buffers.len()];
        let mut overwritten = vec![false; prog.buffers.len()];
        for ins in &prog.body {
            for (b, w) in ins.buffers() {
                let i = b.0 as usize;
                if w {
                    overwritten[i] = true;
                } else if ins.is_dealer() && !overwritten[i] {
                    wanted[i] = true;
                }
            }
        }
        for (k, v) in known.iter_mut().enumerate() {
            if !wanted[k] {
                *v = None;
            }
        }
        Ok(Base { known })
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> u64 {
        self.known.iter().flatten().map(|v| 8 * v.len() as u64).sum()
    }
}

/// The dealer's state for one inference.
pub struct Dealer<'p> {
    prog: &'p Program,
    prg: [Prg; 2],
    base: Arc<Base>,
    known: Vec<Option<Vec<u64>>>,
    /// Buffers the body wrote since the setup: their base value is gone.
    shadowed: Vec<bool>,
    sink: Box<dyn FrameSink>,
    /// The client's stream of the lengths a dynamic program sets.
    lengths: Option<Box<dyn FrameSource>>,
    /// Per body instruction, the dealer-known values it reads for the last time.
    last_reads: Vec<Vec<Buf>>,
    /// The client's draws, then the corrections, of one ring part: kept across instructions
    /// (a fresh vector per part, megabytes each, was page faults and zeroing in the profile).
    scratch: Vec<u64>,
    /// The instruction being dealt (setup?, index): its outputs' PRG streams.
    at: (bool, usize),
    /// Material made before the query (a dynamic program), cut to the live lengths.
    ahead: Option<Ahead>,
    /// Making [`Ahead`] material: the plan and, per body instruction, the frame it stores.
    recording: Option<(Arc<Plan>, Recorded)>,
}

/// Per body instruction, the frame recorded for it.
type Recorded = Vec<Option<Vec<u8>>>;

/// The sink of a dealer that records its frames instead of sending them.
struct NoSink;

impl FrameSink for NoSink {
    fn send_frame(&mut self, _: Vec<u8>) -> Result<(), crate::net::TransportError> {
        Ok(())
    }
    fn bytes(&self) -> u64 {
        0
    }
}

/// For each instruction of `code`, the buffers a dealer instruction there reads for the last
/// time before they are overwritten or the section ends.
fn last_dealer_reads(code: &[Instr], n: usize) -> Vec<Vec<Buf>> {
    let mut out = vec![Vec::new(); code.len()];
    let mut live = vec![false; n];
    for (i, ins) in code.iter().enumerate().rev() {
        let bufs = ins.buffers();
        for &(b, w) in &bufs {
            if w {
                live[b.0 as usize] = false;
            }
        }
        if ins.is_dealer() {
            for &(b, w) in &bufs {
                if !w && !live[b.0 as usize] {
                    live[b.0 as usize] = true;
                    out[i].push(b);
                }
            }
        }
    }
    out
}

impl<'p> Dealer<'p> {
    /// A dealer for one inference of `prog` against the epoch's `base`, whose parties were
    /// given `seeds` (client, server) for the body, streaming corrections to the server
    /// through `sink`.
    pub fn new(
        prog: &'p Program,
        base: Arc<Base>,
        seeds: [Seed; 2],
        sink: Box<dyn FrameSink>,
    ) -> Dealer<'p> {
        Dealer {
            prog,
            prg: [Prg::new(seeds[0]), Prg::new(seeds[1])],
            base,
            known: vec![None; prog.buffers.len()],
            shadowed: vec![false; prog.buffers.len()],
            sink,
            lengths: None,
            last_reads: last_dealer_reads(&prog.body, prog.buffers.len()),
            scratch: Vec::new(),
            at: (false, 0),
            ahead: None,
            recording: None,
        }
    }

    /// A dealer for one inference whose material was made before the query ([`Ahead`]):
    /// what the plan stores is cut from it, the rest is dealt live.
    pub fn with_ahead(
        prog: &'p Program,
        base: Arc<Base>,
        ahead: Ahead,
        sink: Box<dyn FrameSink>,
    ) -> Result<Dealer<'p>, VmError> {
        if ahead.frames.len() != prog.body.len() || ahead.plan.steps.len() != prog.body.len() {
            return Err(VmError::Dealer {
                section: "body",
                index: 0,
                name: "body",
                msg: "the material made ahead is for another program".into(),
            });
        }
        let mut d = Dealer::new(prog, base, ahead.seeds, sink);
        d.ahead = Some(ahead);
        Ok(d)
    }

    /// A dealer that records the frames `plan` stores instead of sending anything.
    pub(crate) fn recording(
        prog: &'p Program,
        base: Arc<Base>,
        seeds: [Seed; 2],
        plan: Arc<Plan>,
    ) -> Dealer<'p> {
        let mut d = Dealer::new(prog, base, seeds, Box::new(NoSink));
        d.recording = Some((plan, vec![None; prog.body.len()]));
        d
    }

    /// Deals the whole body at the loaded program's lengths, every `setlen` keeping them.
    pub(crate) fn deal_whole_body(&mut self) -> Result<(), VmError> {
        let p = self.prog;
        let mut from = 0;
        while let Some(index) = self.deal(p, &p.body, from, "body")? {
            from = index + 1;
        }
        Ok(())
    }

    /// The frames recorded by [`Dealer::recording`].
    pub(crate) fn take_recorded(&mut self) -> Vec<Option<Vec<u8>>> {
        self.recording.take().map(|(_, f)| f).unwrap_or_default()
    }

    /// Where the client reports each sequence length a dynamic program sets.
    pub fn set_lengths(&mut self, src: Box<dyn FrameSource>) {
        self.lengths = Some(src);
    }

    /// Bytes sent to the server so far.
    pub fn bytes(&self) -> u64 {
        self.sink.bytes()
    }

    /// Generates the material of one run of the body. At each `setlen` of a dynamic program
    /// it waits for the length from the client and goes on with the program at that length
    /// (lengths only shrink).
    pub fn deal_body(&mut self) -> Result<(), VmError> {
        let p = self.prog;
        let mut inst: Option<Program> = None;
        let mut checked: Option<veil_isa::Segments> = None;
        let mut from = 0;
        let mut now = p.dynamic.as_ref().map_or(0, |d| d.max_len);
        loop {
            let prog = inst.as_ref().unwrap_or(p);
            let Some(index) = self.deal(prog, &prog.body, from, "body")? else { return Ok(()) };
            let err = |msg: String| VmError::Dealer { section: "body", index, name: "setlen", msg };
            let d = p.dynamic.as_ref().ok_or_else(|| err("no dynamic section".into()))?;
            // The server needs everything dealt so far to reach the point that reveals the
            // length: push it out before waiting.
            self.sink.flush()?;
            let src = self
                .lengths
                .as_mut()
                .ok_or_else(|| err("no length stream from the client".into()))?;
            let f = src.recv_exact(8).map_err(|e| err(format!("the client's length: {e}")))?;
            let n = u64::from_le_bytes(f.as_slice().try_into().expect("8 bytes"));
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            // Only the segment this instance deals, from `index + 1` through its next
            // `setlen`, is checked (the loaded program was validated whole).
            let next = index + 1;
            let seg = checked.get_or_insert_with(|| veil_isa::Segments::at(p, next));
            // Resized in place; the first `setlen` starts from a copy of the program.
            let mut q = inst.take().unwrap_or_else(|| Program { dynamic: None, ..p.clone() });
            d.shrink_segment(p, &mut q, now, n, next, seg).map_err(err)?;
            now = n;
            for (k, b) in q.buffers.iter().enumerate() {
                if let Some(v) = self.known[k].as_mut() {
                    v.truncate(b.kind.words(b.len));
                }
            }
            inst = Some(q);
            from = index + 1;
        }
    }

    /// Waits until the client closes its stream of lengths (its run is over), or it fails
    /// or times out.
    pub fn await_client_end(&mut self) {
        if let Some(src) = self.lengths.as_mut() {
            while src.recv_frame().is_ok() {}
        }
    }

    /// Sends the end-of-stream marker.
    pub fn finish(&mut self) -> Result<(), VmError> {
        match self.sink.send_frame(Vec::new()) {
            // Only a server that prefetches waits for the marker; one that streamed its
            // material (a dynamic program) may already have finished and gone.
            Err(crate::net::TransportError::Closed { .. }) if self.prog.dynamic.is_some() => Ok(()),
            r => Ok(r?),
        }
    }

    fn val(
        &self,
        b: Buf,
        section: &'static str,
        index: usize,
        name: &'static str,
    ) -> Result<&[u64], VmError> {
        let i = b.0 as usize;
        let base = if self.shadowed[i] { None } else { self.base.known[i].as_deref() };
        self.known[i].as_deref().or(base).ok_or(VmError::Dealer {
            section,
            index,
            name,
            msg: format!("{b} is not dealer-known"),
        })
    }

    /// Party `party`'s PRG (client 0, server 1) at output `part` of the instruction dealt.
    fn stream(&mut self, party: usize, part: u8) -> &mut Prg {
        let g = &mut self.prg[party];
        g.at(self.at.0, self.at.1, part);
        g
    }

    /// Sends one frame correcting the client's draws for `parts`, each drawn exactly as the
    /// client draws it: ring parts with `fill`, bit parts (with their bit count) with `bits`.
    fn correct(&mut self, parts: &[(&[u64], Width)]) -> Result<(), VmError> {
        let total: usize = parts.iter().map(|(v, _)| v.len()).sum();
        let mut frame = Vec::with_capacity(total * 8);
        for (k, &(value, width)) in parts.iter().enumerate() {
            self.prg[0].at(self.at.0, self.at.1, k as u8);
            match width {
                Width::Ring(bits) => {
                    let corr = &mut self.scratch;
                    corr.resize(value.len(), 0);
                    self.prg[0].fill(corr);
                    for (c, &v) in corr.iter_mut().zip(value) {
                        *c = v.wrapping_sub(*c);
                    }
                    bits::pack(corr, bits, &mut frame);
                }
                Width::Bits(n) => {
                    let mine = self.prg[0].bits(n);
                    let mut w: Vec<u64> = value.iter().zip(&mine).map(|(v, c)| v ^ c).collect();
                    bits::clear_tail(&mut w, n);
                    for x in w {
                        frame.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        if let Some((plan, frames)) = self.recording.as_mut() {
            if !self.at.0 && plan.steps[self.at.1] == Step::Stored {
                frames[self.at.1] = Some(frame);
            }
            return Ok(());
        }
        self.sink.send_frame(frame)?;
        Ok(())
    }

    /// Sends the stored frame of body instruction `index` cut to its lengths in `p`, or does
    /// nothing for a skipped one; false for a live one.
    fn send_ahead(&mut self, p: &Program, ins: &Instr, index: usize) -> Result<bool, VmError> {
        let Some(ahead) = self.ahead.as_mut() else { return Ok(false) };
        let err = |msg: String| VmError::Dealer { section: "body", index, name: ins.name(), msg };
        match ahead.plan.steps[index] {
            Step::Live => return Ok(false),
            Step::Skip => {}
            Step::Stored => {
                let f = ahead.frames[index]
                    .take()
                    .ok_or_else(|| err("its stored frame was used already".into()))?;
                let parts = veil_isa::cost::correction_parts;
                let f = ahead::cut(f, &parts(ins, self.prog), &parts(ins, p)).map_err(err)?;
                self.sink.send_frame(f)?;
            }
        }
        // What it writes is not known to this dealer: only a live instruction reads values,
        // and none reads these (see `Plan`).
        ins.each_buffer(|b, w| {
            if w {
                self.known[b.0 as usize] = None;
            }
        });
        Ok(true)
    }

    /// Deals `code` (a section of `p`) from instruction `from`; stops at a `setlen` and
    /// returns its index.
    fn deal(
        &mut self,
        p: &Program,
        code: &[Instr],
        from: usize,
        section: &'static str,
    ) -> Result<Option<usize>, VmError> {
        for (index, ins) in code.iter().enumerate().skip(from) {
            // What it writes replaces whatever the setup left in those buffers.
            ins.each_buffer(|b, w| {
                if w {
                    self.shadowed[b.0 as usize] = true;
                }
            });
            let name = ins.name();
            self.at = (section == "setup", index);
            if section == "body" && self.send_ahead(p, ins, index)? {
                for b in self.last_reads.get(index).into_iter().flatten() {
                    self.known[b.0 as usize] = None;
                }
                continue;
            }
            match ins.visit_dealer(&mut Deal { dealer: self, p, section, index, name })? {
                Dealt::Stop => return Ok(Some(index)),
                Dealt::Online => {}
                Dealt::Drawn => {
                    // A pruned instance keeps the loaded program's instruction indices.
                    for b in self.last_reads.get(index).into_iter().flatten() {
                        self.known[b.0 as usize] = None;
                    }
                }
            }
        }
        Ok(None)
    }
}

/// How a correction is sent: ring words, of which only the low `bits` are sent (the receiver
/// uses no more), or `n` packed bits.
#[derive(Clone, Copy)]
enum Width {
    Ring(u8),
    Bits(usize),
}

/// What the dealer did with an instruction.
enum Dealt {
    /// A party's online instruction: what it writes is no longer known.
    Online,
    /// Made the instruction's material.
    Drawn,
    /// A `setlen`: the rest of the section waits for the length.
    Stop,
}

/// The dealer at one instruction of a section of `p`.
struct Deal<'a, 'p> {
    dealer: &'a mut Dealer<'p>,
    p: &'a Program,
    section: &'static str,
    index: usize,
    name: &'static str,
}

impl Deal<'_, '_> {
    fn len(&self, b: Buf) -> usize {
        self.p.buffers[b.0 as usize].len as usize
    }

    fn val(&self, b: Buf) -> Result<&[u64], VmError> {
        self.dealer.val(b, self.section, self.index, self.name)
    }

    /// Keeps the full value of a correlated output, after correcting the client's draw of it.
    fn ring(&mut self, d: Buf, v: Vec<u64>) -> Result<Dealt, VmError> {
        self.dealer.correct(&[(&v, Width::Ring(64))])?;
        self.dealer.known[d.0 as usize] = Some(v);
        Ok(Dealt::Drawn)
    }

    /// As [`Deal::ring`], for packed bits.
    fn bits(&mut self, d: Buf, v: Vec<u64>) -> Result<Dealt, VmError> {
        self.dealer.correct(&[(&v, Width::Bits(self.len(d)))])?;
        self.dealer.known[d.0 as usize] = Some(v);
        Ok(Dealt::Drawn)
    }
}

impl DealerVisitor for Deal<'_, '_> {
    type Out = Result<Dealt, VmError>;

    fn online(&mut self, ins: &Instr) -> Self::Out {
        let d = &mut *self.dealer;
        ins.each_buffer(|b, w| {
            if w {
                d.known[b.0 as usize] = None;
            }
        });
        Ok(Dealt::Online)
    }

    fn setlen(&mut self, _: Buf, _: u8) -> Self::Out {
        Ok(Dealt::Stop)
    }

    fn dmask(&mut self, d: Buf) -> Self::Out {
        let n = self.len(d);
        let (c, s) = (self.dealer.stream(0, 0).words(n), self.dealer.stream(1, 0).words(n));
        let v = c.iter().zip(&s).map(|(a, b)| a.wrapping_add(*b)).collect();
        self.dealer.known[d.0 as usize] = Some(v);
        Ok(Dealt::Drawn)
    }

    fn dpriv(&mut self, d: Buf) -> Self::Out {
        let owner = match self.p.buffers[d.0 as usize].kind {
            Kind::Private(o) => o,
            _ => Party::Client,
        };
        let n = self.len(d);
        self.dealer.known[d.0 as usize] = Some(self.dealer.stream(owner.index(), 0).words(n));
        Ok(Dealt::Drawn)
    }

    fn dbits(&mut self, d: Buf) -> Self::Out {
        let n = self.len(d);
        let (c, s) = (self.dealer.stream(0, 0).bits(n), self.dealer.stream(1, 0).bits(n));
        self.dealer.known[d.0 as usize] = Some(c.iter().zip(&s).map(|(a, b)| a ^ b).collect());
        Ok(Dealt::Drawn)
    }

    fn dprod(&mut self, d: Buf, a: Buf, b: Buf, inner: u32, bits: u8) -> Self::Out {
        let mut v = vec![0u64; self.len(d)];
        let (av, bv) = (self.val(a)?, self.val(b)?);
        kernels::binary(&mut v, av, bv, inner as usize, |x, y| x.wrapping_mul(y));
        self.dealer.correct(&[(&v, Width::Ring(bits))])?;
        self.dealer.known[d.0 as usize] = Some(v);
        Ok(Dealt::Drawn)
    }

    fn dmatmul(&mut self, d: Buf, a: Buf, b: Buf, batch: u32, m: u32, k: u32, n: u32) -> Self::Out {
        let mut v = vec![0u64; self.len(d)];
        let (av, bv) = (self.val(a)?, self.val(b)?);
        let [batch, m, k, n] = [batch, m, k, n].map(|x| x as usize);
        kernels::matmul(&mut v, av, bv, batch, m, k, n);
        self.ring(d, v)
    }

    fn dtrunc(&mut self, hi: Buf, msb: Buf, a: Buf, t: u8, w: u8) -> Self::Out {
        let av = self.val(a)?;
        let wmask = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
        let h: Vec<u64> = av.iter().map(|x| (x & wmask) >> t).collect();
        let m: Vec<u64> = av.iter().map(|x| (x >> (w - 1)) & 1).collect();
        let mb = veil_isa::cost::msb_share_bits(t, w);
        self.dealer.correct(&[(&h, Width::Ring(64)), (&m, Width::Ring(mb))])?;
        self.dealer.known[hi.0 as usize] = Some(h);
        self.dealer.known[msb.0 as usize] = Some(m);
        Ok(Dealt::Drawn)
    }

    fn dand(&mut self, d: Buf, a: Buf, b: Buf) -> Self::Out {
        let v = self.val(a)?.iter().zip(self.val(b)?).map(|(x, y)| x & y).collect();
        self.bits(d, v)
    }

    fn dbit(&mut self, d: Buf, a: Buf, bit: u8) -> Self::Out {
        let av = self.val(a)?;
        let mut v = vec![0u64; av.len().div_ceil(64)];
        for (i, x) in av.iter().enumerate() {
            if (x >> bit) & 1 == 1 {
                bits::set(&mut v, i, true);
            }
        }
        self.bits(d, v)
    }

    fn dtable(&mut self, lt: Buf, eq: Buf, a: Buf, shift: u8, width: u8) -> Self::Out {
        let av = self.val(a)?;
        let (lv, ev) = tables(av, shift, width);
        let (nl, ne) = (self.len(lt), self.len(eq));
        self.dealer.correct(&[(&lv, Width::Bits(nl)), (&ev, Width::Bits(ne))])?;
        self.dealer.known[lt.0 as usize] = Some(lv);
        self.dealer.known[eq.0 as usize] = Some(ev);
        Ok(Dealt::Drawn)
    }

    fn dcase(&mut self, d: Buf, a: Buf, b: Buf, g: Buf, k: Buf) -> Self::Out {
        let n = self.len(a);
        let v = cases(self.val(a)?, self.val(b)?, self.val(g)?, self.val(k)?, n);
        // Each case its own part (and PRG stream), so a shorter run's cases are prefixes.
        let q = v.len() / 4;
        let parts: Vec<(&[u64], Width)> =
            v.chunks(q.max(1)).map(|c| (c, Width::Ring(64))).collect();
        self.dealer.correct(&parts)?;
        self.dealer.known[d.0 as usize] = Some(v);
        Ok(Dealt::Drawn)
    }

    fn dbit2a(&mut self, d: Buf, a: Buf) -> Self::Out {
        let av = self.val(a)?;
        let v = (0..self.len(d)).map(|i| bits::get(av, i) as u64).collect();
        self.ring(d, v)
    }
}

/// The four cases of a final AND gate (see `Instr::DCase`), case-major.
pub fn cases(a: &[u64], b: &[u64], g: &[u64], k: &[u64], n: usize) -> Vec<u64> {
    let mut v = vec![0u64; 4 * n];
    for i in 0..n {
        let [ai, bi, gi, ki] = [a, b, g, k].map(|x| bits::get(x, i));
        for (c, (dd, ee)) in
            [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate()
        {
            v[c * n + i] = (gi ^ ki ^ ((dd ^ ai) & (ee ^ bi))) as u64;
        }
    }
    v
}

/// The comparison tables of digit `(a >> shift) mod 2^width` of each element: bit
/// `i·2^w + c` of `lt` is `[c < v_i]`, of `eq` is `[c = v_i]`.
pub fn tables(a: &[u64], shift: u8, width: u8) -> (Vec<u64>, Vec<u64>) {
    let per = 1usize << width;
    let nbits = a.len() * per;
    let mut lt = vec![0u64; nbits.div_ceil(64)];
    let mut eq = vec![0u64; nbits.div_ceil(64)];
    let mask = (per - 1) as u64;
    for (i, &x) in a.iter().enumerate() {
        let v = ((x >> shift) & mask) as usize;
        let base = i * per;
        if per <= 64 {
            // The element's whole table fits in one word at a multiple of its size.
            let lt_bits = if v == 64 { u64::MAX } else { (1u64 << v) - 1 };
            let (w, off) = (base / 64, base % 64);
            lt[w] |= lt_bits << off;
            eq[w] |= 1u64 << (off + v);
        } else {
            for c in 0..v {
                bits::set(&mut lt, base + c, true);
            }
            bits::set(&mut eq, base + v, true);
        }
    }
    (lt, eq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_mark_smaller_and_equal_digits() {
        let (lt, eq) = tables(&[0x35, 0x0], 4, 4); // digits 3 and 0
        for c in 0..16 {
            assert_eq!(bits::get(&lt, c), c < 3);
            assert_eq!(bits::get(&eq, c), c == 3);
            assert!(!bits::get(&lt, 16 + c));
            assert_eq!(bits::get(&eq, 16 + c), c == 0);
        }
    }
}
