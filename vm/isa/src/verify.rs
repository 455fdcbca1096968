//! The leakage analysis a party runs on a program it did not compile: what the program
//! reveals, and a refusal, naming the instruction, of one that reveals more.
//!
//! The analysis is one forward pass over the setup and body sections (straight-line code), so
//! its cost is linear in the program's size. It tracks, for the value each buffer holds at
//! each point, whether it is *masked*: `z ± m` (or `z ⊕ m` on bits) for a fresh dealer mask
//! `m` (`dmask`, `dbits`, `dpriv`) that neither `z` nor any earlier message contains, and
//! which still-unused masks it depends on. The rules:
//!
//! - An `open` must open a value masked by a `dmask`, an `open_b` one masked by a `dbits`, and
//!   a `send` from party `p` one masked by a `dmask` or by a `dpriv` of `p` (or send public
//!   data). Each mask serves one message: the message *spends* it, and a later message whose
//!   mask is spent, or whose mask already appeared in an earlier message, is refused.
//! - Besides, only two things become known: declared outputs, revealed to the client alone and
//!   once per run, and the kept-token counts of token pruning: an `open` of one element
//!   without a mask whose result feeds only the next `setlen`.
//! - Masks drawn in the setup are drawn once per program load, so they mask no opening in the
//!   body (every inference would reuse them).
//! - No constant is computed from a private weight ([`ConstOrigin`]).
//!
//! Why that suffices (semi-honest parties, non-colluding dealer): order the messages as the
//! program sends them. The `k`-th is `z_k + m_k`, where `m_k` (the receiver's unknown part of
//! the mask: the other party's share of a `dmask`, the sender's `dpriv`) is uniform, appears in
//! no earlier message and not in `z_k`. So given everything the receiver held before, the
//! message is uniform, and by induction the whole transcript is independent of the other
//! party's secrets. The outputs and counts are what the program declares it reveals.

use crate::operand::{Buf, Party, SlotMut};
use crate::ops::Instr;
use crate::program::{ConstOrigin, Kind, Program};
use crate::validate::{validate, ValidateError};
use crate::Poly;
use std::cell::Cell;
use std::fmt;

/// Why a program was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The program is malformed (the file's fault; see [`crate::validate`]).
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    /// An instruction would reveal more than the program declares.
    #[error("the program would leak at {section} #{index} `{disas}`: {why}")]
    Leak {
        /// `setup` or `body`.
        section: &'static str,
        /// Index of the instruction in its section.
        index: usize,
        /// Its disassembly.
        disas: String,
        /// What it would reveal, and why that is not allowed.
        why: String,
    },
    /// A declaration outside the code would leak (a constant, an output for the server).
    #[error("the program would leak: {0}")]
    Declaration(String),
}

/// A declared output the program reveals to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevealedOutput {
    /// The output's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<u32>,
    /// Body index of the `reveal`.
    pub at: usize,
}

/// A kept-token count of token pruning, opened to both parties and given to the dealer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevealedCount {
    /// Body index of the `open` of the count.
    pub open: usize,
    /// Body index of the `setlen` it feeds.
    pub setlen: usize,
}

/// What a verified program reveals, beyond messages that are uniform to their receiver.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Reveals {
    /// Declared outputs revealed to the client (each once per run).
    pub outputs: Vec<RevealedOutput>,
    /// Kept-token counts opened to both parties (and the dealer), in body order.
    pub counts: Vec<RevealedCount>,
    /// The largest count (the program's maximum sequence length), when there are counts.
    pub max_len: Option<u32>,
    /// Public weights the program's constants are computed from (sorted, deduplicated): they
    /// are in the program in the clear.
    pub public_weights: Vec<String>,
    /// Masked openings (`open`, `open_b`) checked, setup and body.
    pub masked_openings: usize,
    /// Masked messages (`send`) checked, setup and body.
    pub masked_sends: usize,
}

impl fmt::Display for Reveals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this program reveals:")?;
        if self.outputs.is_empty() && self.counts.is_empty() {
            f.write_str(" nothing")?;
        }
        for o in &self.outputs {
            write!(f, "\n  to the client: output `{}` {:?}", o.name, o.shape)?;
        }
        if !self.counts.is_empty() {
            let at: Vec<String> = self.counts.iter().map(|c| format!("#{}", c.open)).collect();
            write!(
                f,
                "\n  to the client, the server and the dealer: the number of tokens kept at {} \
                 pruning point{} (body {}), each at most {}",
                self.counts.len(),
                if self.counts.len() == 1 { "" } else { "s" },
                at.join(", "),
                self.max_len.map_or("?".into(), |m| m.to_string())
            )?;
        }
        write!(
            f,
            "\n  nothing else: {} openings and {} messages each masked by fresh dealer randomness",
            self.masked_openings, self.masked_sends
        )?;
        if !self.public_weights.is_empty() {
            write!(
                f,
                "\n  the program's constants include {} public weight{} in the clear: {}",
                self.public_weights.len(),
                if self.public_weights.len() == 1 { "" } else { "s" },
                abbreviate(&self.public_weights, 8)
            )?;
        }
        Ok(())
    }
}

fn abbreviate(names: &[String], n: usize) -> String {
    let mut s = names.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > n {
        s.push_str(&format!(", … ({} in all)", names.len()));
    }
    s
}

/// Checks that `p` reveals nothing but its declared outputs (to the client) and pruning counts,
/// and returns what it reveals. Runs [`validate`] first. See the module docs for the rules.
pub fn verify(p: &Program) -> Result<Reveals, VerifyError> {
    validate(p)?;
    let mut v = Verifier::new(p);
    v.declarations()?;
    for (section, code) in [("setup", &p.setup), ("body", &p.body)] {
        v.section = section;
        if section == "body" {
            v.end_setup();
        }
        for (i, ins) in code.iter().enumerate() {
            v.index = i;
            v.step(ins).map_err(|why| VerifyError::Leak {
                section,
                index: i,
                disas: ins.disas(),
                why,
            })?;
        }
        v.end_section().map_err(|(index, why)| VerifyError::Leak {
            section,
            index,
            disas: code.get(index).map(Instr::disas).unwrap_or_default(),
            why,
        })?;
    }
    Ok(v.reveals)
}

/// Which party may not know a mask's value.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum MaskKind {
    /// `dmask`: shares of a value neither party knows.
    Shared,
    /// `dbits`: XOR shares of bits neither party knows.
    Bits,
    /// `dpriv`: known to this party (and the dealer) only.
    Private(Party),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum MaskState {
    /// Drawn, in no message yet: may mask one.
    Fresh,
    /// Masked the message at (section, index).
    Spent(&'static str, usize),
    /// Appeared in the message at (section, index) without masking it, or cannot be relied on.
    Used(&'static str, usize, &'static str),
}

struct Mask {
    kind: MaskKind,
    section: &'static str,
    index: usize,
    state: MaskState,
}

/// The abstract value of a buffer: the fresh mask it is masked by, if any, and the other fresh
/// masks it depends on.
#[derive(Clone, Debug, Default)]
struct Abs {
    mask: Option<u32>,
    taint: Vec<u32>,
}

/// What copies into part of a buffer wrote since its last whole write.
struct Partial {
    /// What they wrote depends on.
    new: Abs,
    /// The element ranges they wrote (sorted, disjoint, merged) at each checked length, unless
    /// unknown.
    covered: Option<Vec<Vec<(u64, u64)>>>,
}

/// The element ranges a copy writes at one checked length, and its destination's length then.
type Coverage = (Vec<(u64, u64)>, u64);

/// Runs one copy may write before the coverage of its destination is no longer tracked.
const MAX_RUNS: u64 = 1 << 16;

/// Runs all copies of a program may write before coverage is no longer tracked at all: the
/// analysis stays linear-time whatever a hostile program's copies look like (BERT-base's
/// copies write a few hundred runs, a pruned BERT-tiny's about 1300 at all checked lengths).
const RUN_BUDGET: u64 = 1 << 26;

/// The element ranges `[lo, hi)` a strided write of `shape` at `off` with `strides` touches,
/// sorted and merged; None when they are too many (or more than `budget` allows, which they
/// use up), the strides are not positive or the positions overflow.
fn write_runs(
    off: u32,
    shape: &[u32],
    strides: &[i64],
    budget: &Cell<u64>,
) -> Option<Vec<(u64, u64)>> {
    if shape.contains(&0) {
        return Some(Vec::new());
    }
    let mut dims: Vec<(u64, u64)> = Vec::new();
    for (&n, &s) in shape.iter().zip(strides) {
        if n > 1 {
            dims.push((u64::try_from(s).ok().filter(|&s| s > 0)?, n as u64));
        }
    }
    dims.sort_unstable();
    // The innermost dims that are contiguous form one run.
    let mut run = 1u64;
    let mut k = 0;
    while k < dims.len() && dims[k].0 == run {
        run = run.checked_mul(dims[k].1)?;
        k += 1;
    }
    let outer = &dims[k..];
    let count = outer.iter().try_fold(1u64, |a, &(_, n)| a.checked_mul(n))?;
    if count > MAX_RUNS || count > budget.get() {
        return None;
    }
    budget.set(budget.get() - count);
    let mut runs = Vec::with_capacity(count as usize);
    let mut idx = vec![0u64; outer.len()];
    for _ in 0..count {
        let start = outer
            .iter()
            .zip(&idx)
            .try_fold(off as u64, |acc, (&(s, _), &x)| acc.checked_add(s.checked_mul(x)?))?;
        runs.push((start, start.checked_add(run)?));
        for (x, &(_, n)) in idx.iter_mut().zip(outer) {
            *x += 1;
            if *x < n {
                break;
            }
            *x = 0;
        }
    }
    Some(union(Vec::new(), runs))
}

/// The union of two sets of ranges, sorted and merged.
fn union(mut a: Vec<(u64, u64)>, b: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    a.extend(b);
    a.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(a.len());
    for (lo, hi) in a {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// A value that depends on more fresh masks than this is not tracked further: its masks are
/// marked used (conservative; the builder's values depend on a handful).
const MAX_TAINT: usize = 64;

struct Verifier<'p> {
    p: &'p Program,
    section: &'static str,
    index: usize,
    vals: Vec<Abs>,
    masks: Vec<Mask>,
    /// Per buffer: the index of a pending message reading it (written before the exchange?).
    pending_src: Vec<Option<usize>>,
    pending_list: Vec<Buf>,
    /// Per buffer: the index of the unmasked `open` whose result it holds, until its `setlen`.
    count: Vec<Option<usize>>,
    /// Per buffer: the output it is the buffer of.
    output_of: Vec<Option<usize>>,
    /// Per buffer: its length as a function of the pruned length, when it varies.
    poly: Vec<Option<Poly>>,
    /// Per body instruction: its size fields that vary with the pruned length (slot, size).
    fields: Vec<Vec<(u32, Poly)>>,
    /// The lengths at which copies are checked to cover their destination: the program's own
    /// sizes, and for a dynamic program a spread of pruned lengths too.
    lens: Vec<u32>,
    /// Per buffer: copies into part of it since its last whole write.
    partial: Vec<Option<Box<Partial>>>,
    /// What is left of [`RUN_BUDGET`].
    budget: Cell<u64>,
    revealed: Vec<bool>,
    reveals: Reveals,
}

impl<'p> Verifier<'p> {
    fn new(p: &'p Program) -> Verifier<'p> {
        let n = p.buffers.len();
        let mut output_of = vec![None; n];
        for (i, o) in p.outputs.iter().enumerate() {
            output_of[o.buf.0 as usize] = Some(i);
        }
        let mut poly = vec![None; n];
        for (b, q) in p.dynamic.iter().flat_map(|d| &d.buffers) {
            if let Some(x) = poly.get_mut(b.0 as usize) {
                *x = Some(*q);
            }
        }
        let mut fields = vec![Vec::new(); p.body.len()];
        for f in p.dynamic.iter().flat_map(|d| &d.fields) {
            if let Some(x) = fields.get_mut(f.instr as usize) {
                x.push((f.slot, f.poly));
            }
        }
        let lens = match &p.dynamic {
            None => vec![0],
            Some(d) => {
                let m = d.max_len;
                let near = [m.saturating_sub(3), m.saturating_sub(2), m.saturating_sub(1), m];
                let mut l: Vec<u32> = [1, 2, 3, 4, 5, 7, 8, m / 4, m / 2]
                    .into_iter()
                    .chain(near)
                    .filter(|&n| (1..=m).contains(&n))
                    .collect();
                l.sort_unstable();
                l.dedup();
                l
            }
        };
        Verifier {
            p,
            poly,
            fields,
            lens,
            partial: (0..n).map(|_| None).collect(),
            budget: Cell::new(RUN_BUDGET),
            section: "header",
            index: 0,
            vals: vec![Abs::default(); n],
            masks: Vec::new(),
            pending_src: vec![None; n],
            pending_list: Vec::new(),
            count: vec![None; n],
            output_of,
            revealed: vec![false; p.outputs.len()],
            reveals: Reveals {
                max_len: p.dynamic.as_ref().map(|d| d.max_len),
                ..Reveals::default()
            },
        }
    }

    fn declarations(&mut self) -> Result<(), VerifyError> {
        let p = self.p;
        if p.const_origins.len() > p.consts.len() {
            return Err(VerifyError::Declaration(format!(
                "{} constant origins for {} constants",
                p.const_origins.len(),
                p.consts.len()
            )));
        }
        let mut public = Vec::new();
        for (i, c) in p.consts.iter().enumerate() {
            match p.const_origin(i) {
                ConstOrigin::Program => {}
                ConstOrigin::PublicWeights(names) => public.extend(names.iter().cloned()),
                ConstOrigin::PrivateWeight { party, name } => {
                    return Err(VerifyError::Declaration(format!(
                        "constant {} ({} values) is computed from the {party}'s private weight \
                         `{name}`, and constants reach the client and the dealer in the clear",
                        c.buf,
                        c.data.len()
                    )))
                }
            }
        }
        public.sort();
        public.dedup();
        self.reveals.public_weights = public;
        for o in &p.outputs {
            if o.party != Party::Client {
                return Err(VerifyError::Declaration(format!(
                    "output `{}` is declared for the {}: outputs go to the client only",
                    o.name, o.party
                )));
            }
        }
        Ok(())
    }

    /// Setup masks are drawn once per load: nothing in the body may rely on them being fresh.
    fn end_setup(&mut self) {
        for m in &mut self.masks {
            if m.state == MaskState::Fresh {
                m.state = MaskState::Used("setup", m.index, "drawn once in the setup");
            }
        }
    }

    fn end_section(&mut self) -> Result<(), (usize, String)> {
        if let Some(at) = self.count.iter().flatten().next() {
            return Err((
                *at,
                "opens a value without a mask that no `setlen` uses as the kept-token count".into(),
            ));
        }
        self.count.iter_mut().for_each(|c| *c = None);
        Ok(())
    }

    fn fresh(&self, m: u32) -> bool {
        self.masks[m as usize].state == MaskState::Fresh
    }

    /// The buffer's value with the masks it depends on that are no longer fresh dropped (its
    /// mask is kept, fresh or not, so a refusal can say what became of it).
    fn read(&self, b: Buf) -> Abs {
        let a = &self.vals[b.0 as usize];
        Abs { mask: a.mask, taint: a.taint.iter().copied().filter(|&m| self.fresh(m)).collect() }
    }

    /// A value computed from `ins` in no invertible way: it depends on every fresh mask of
    /// every input and is masked by none.
    fn mix(&mut self, ins: &[Abs]) -> Abs {
        let mut taint: Vec<u32> = Vec::new();
        for a in ins {
            taint.extend(a.mask.filter(|&m| self.fresh(m)));
            taint.extend_from_slice(&a.taint);
        }
        taint.sort_unstable();
        taint.dedup();
        if taint.len() > MAX_TAINT {
            for &m in &taint {
                self.use_mask(m, "mixed into a value depending on too many fresh masks to track");
            }
            taint.clear();
        }
        Abs { mask: None, taint }
    }

    /// `a ± b` (or `a ⊕ b`): still masked by the mask of one operand when the other does not
    /// contain it; `b_full` says whether `b` has one element per element of the result.
    fn combine(&mut self, a: Abs, b: Abs, b_full: bool) -> Abs {
        let free_of = |x: &Abs, m: u32| x.mask != Some(m) && !x.taint.contains(&m);
        let (fa, fb) = (a.mask.filter(|&m| self.fresh(m)), b.mask.filter(|&m| self.fresh(m)));
        let pick = match (fa, fb) {
            (Some(m), _) if free_of(&b, m) => Some(m),
            (_, Some(m)) if b_full && free_of(&a, m) => Some(m),
            // No fresh mask: keep a spent one only to name it if the value is ever sent.
            (None, None) => a.mask.or(b.mask.filter(|_| b_full)),
            _ => None,
        };
        let mut r = self.mix(&[a, b]);
        if let Some(m) = pick {
            r.taint.retain(|&x| x != m);
            r.mask = Some(m);
        }
        r
    }

    fn use_mask(&mut self, m: u32, why: &'static str) {
        let (s, i) = (self.section, self.index);
        let mk = &mut self.masks[m as usize];
        if mk.state == MaskState::Fresh {
            mk.state = MaskState::Used(s, i, why);
        }
    }

    /// Lengths equal now and at every pruned length.
    fn same_extent(&self, a: Buf, b: Buf) -> bool {
        let (a, b) = (a.0 as usize, b.0 as usize);
        self.p.buffers[a].len == self.p.buffers[b].len && self.poly[a] == self.poly[b]
    }

    /// The ranges of `d` the copy `ins` writes and `d`'s length, at each length of
    /// `self.lens` (None: unknown).
    fn copy_runs(&self, ins: &Instr, d: Buf) -> Option<Vec<Coverage>> {
        let fields = match self.section {
            "body" => self.fields.get(self.index).map(Vec::as_slice).unwrap_or(&[]),
            _ => &[],
        };
        let mut out = Vec::with_capacity(self.lens.len());
        for &n in &self.lens {
            let mut at = ins.clone();
            if !fields.is_empty() {
                let mut slots: Vec<Option<SlotMut>> =
                    at.slots_mut().into_iter().map(Some).collect();
                for &(slot, poly) in fields {
                    let v = poly.at(n)?;
                    slots.get_mut(slot as usize)?.take()?.set(v).ok()?;
                }
            }
            let Instr::Copy { d_off, shape, d_strides, .. } = &at else { return None };
            let len = match (self.poly[d.0 as usize], self.section) {
                (Some(p), "body") => u64::try_from(p.at(n)?).ok()?,
                _ => self.p.buffers[d.0 as usize].len as u64,
            };
            out.push((write_runs(*d_off, &shape.0, &d_strides.0, &self.budget)?, len));
        }
        Some(out)
    }

    /// A copy of a value `v` into part of `d`, at the element ranges `runs` at each checked
    /// length (None: unknown). Until copies have covered all of `d` at every checked length,
    /// its value also depends on what it held before (a reused buffer's stale elements): only
    /// a complete cover forgets the old value.
    fn copy_into(&mut self, d: Buf, v: Abs, runs: Option<Vec<Coverage>>) -> Result<(), String> {
        let i = d.0 as usize;
        let mut part = match self.partial[i].take() {
            Some(p) => p,
            None => Box::new(Partial {
                new: Abs::default(),
                covered: Some(vec![Vec::new(); self.lens.len()]),
            }),
        };
        part.new = self.mix(&[std::mem::take(&mut part.new), v.clone()]);
        let mut full = true;
        part.covered = match (part.covered.take(), runs) {
            (Some(c), Some(r)) => Some(
                c.into_iter()
                    .zip(r)
                    .map(|(c, (r, len))| {
                        let u = union(c, r);
                        full &= len == 0 || u == [(0, len)];
                        u
                    })
                    .collect(),
            ),
            _ => None,
        };
        if full && part.covered.is_some() {
            return self.write(d, part.new);
        }
        let seen = self.read(d);
        let visible = self.mix(&[seen, v]);
        self.write(d, visible)?;
        self.partial[i] = Some(part);
        Ok(())
    }

    fn write(&mut self, b: Buf, v: Abs) -> Result<(), String> {
        let i = b.0 as usize;
        self.partial[i] = None;
        if let Some(at) = self.pending_src[i] {
            return Err(format!(
                "overwrites {b} while the message of {} that reads it awaits its exchange",
                self.at(self.section, at)
            ));
        }
        if let Some(at) = self.count[i] {
            return Err(format!(
                "overwrites {b}, opened without a mask at #{at} as a kept-token count, before \
                 any `setlen` used it"
            ));
        }
        self.vals[i] = v;
        Ok(())
    }

    fn describe_mask(&self, m: u32) -> String {
        let mk = &self.masks[m as usize];
        let code = if mk.section == "setup" { &self.p.setup } else { &self.p.body };
        let d = code.get(mk.index).map(Instr::disas).unwrap_or_default();
        format!("the mask from {} #{} `{d}`", mk.section, mk.index)
    }

    fn at(&self, section: &'static str, index: usize) -> String {
        let code = if section == "setup" { &self.p.setup } else { &self.p.body };
        let d = code.get(index).map(Instr::disas).unwrap_or_default();
        format!("{section} #{index} `{d}`")
    }

    /// Why the value in `a` is not masked by a fresh mask of a kind in `ok`.
    fn unmasked(&self, a: Buf, ok: &[MaskKind]) -> String {
        let raw = &self.vals[a.0 as usize];
        let Some(m) = raw.mask else {
            return format!("{a} is not masked by fresh dealer randomness");
        };
        let mk = &self.masks[m as usize];
        let mask = self.describe_mask(m);
        match &mk.state {
            MaskState::Spent(s, i) => format!(
                "{a} is masked by {mask}, which already masked the message at {}: one mask \
                 used twice reveals the difference of the two values",
                self.at(s, *i)
            ),
            MaskState::Used(s, i, why) => {
                format!("{a} is masked by {mask}, which is not fresh: {why} at {}", self.at(s, *i))
            }
            MaskState::Fresh if !ok.contains(&mk.kind) => format!(
                "{a} is masked by {mask}, {}",
                match mk.kind {
                    MaskKind::Private(p) => format!(
                        "which only the {p} does not know: the {} would see the rest unmasked",
                        p.other()
                    ),
                    _ => "which is of the wrong kind for this message".into(),
                }
            ),
            MaskState::Fresh => format!("{a} is not masked by fresh dealer randomness"),
        }
    }

    /// Spends the mask of `a`'s value (of a kind in `ok`) on this message; every other fresh
    /// mask the value depends on is used up by it.
    fn message(&mut self, a: Buf, ok: &[MaskKind]) -> Result<(), String> {
        let v = self.read(a);
        match v.mask {
            Some(m) if self.fresh(m) && ok.contains(&self.masks[m as usize].kind) => {
                let here = MaskState::Spent(self.section, self.index);
                self.masks[m as usize].state = here;
                for t in v.taint {
                    self.use_mask(t, "appeared in an earlier message");
                }
                Ok(())
            }
            _ => Err(self.unmasked(a, ok)),
        }
    }

    fn pending(&mut self, a: Buf) {
        self.pending_src[a.0 as usize] = Some(self.index);
        self.pending_list.push(a);
    }

    fn step(&mut self, ins: &Instr) -> Result<(), String> {
        use Instr::*;
        let bufs = ins.buffers();
        for &(b, written) in &bufs {
            if !written {
                if let (Some(at), false) = (self.count[b.0 as usize], matches!(ins, SetLen { .. }))
                {
                    return Err(format!(
                        "reads {b}, opened without a mask at body #{at}: only a kept-token count \
                         may be opened so, and its only use is the next `setlen`"
                    ));
                }
            }
        }
        match ins {
            DMask { d } | DBits { d } | DPriv { d } => {
                let kind = match (ins, self.p.buffers[d.0 as usize].kind) {
                    (DMask { .. }, _) => MaskKind::Shared,
                    (DBits { .. }, _) => MaskKind::Bits,
                    (_, Kind::Private(p)) => MaskKind::Private(p),
                    (_, k) => return Err(format!("a private mask in a {k} buffer")),
                };
                let m = self.masks.len() as u32;
                self.masks.push(Mask {
                    kind,
                    section: self.section,
                    index: self.index,
                    state: MaskState::Fresh,
                });
                self.write(*d, Abs { mask: Some(m), taint: Vec::new() })?;
            }
            Add { d, a, b, .. } | Sub { d, a, b, .. } => {
                let (va, vb) = (self.read(*a), self.read(*b));
                let r = self.combine(va, vb, self.same_extent(*a, *b));
                self.write(*d, r)?;
            }
            XorB { d, a, b } => {
                let (va, vb) = (self.read(*a), self.read(*b));
                let r = self.combine(va, vb, true);
                self.write(*d, r)?;
            }
            Neg { d, a } | AddImm { d, a, .. } | NotB { d, a } => {
                let r = self.read(*a);
                self.write(*d, r)?;
            }
            Open { d, a, .. } => {
                let counted = match self.message(*a, &[MaskKind::Shared]) {
                    Ok(()) => {
                        self.reveals.masked_openings += 1;
                        false
                    }
                    Err(why) => {
                        self.count_open(*a, why)?;
                        true
                    }
                };
                self.pending(*a);
                self.write(*d, Abs::default())?;
                if counted {
                    self.count[d.0 as usize] = Some(self.index);
                }
            }
            OpenB { d, a } => {
                self.message(*a, &[MaskKind::Bits])?;
                self.reveals.masked_openings += 1;
                self.pending(*a);
                self.write(*d, Abs::default())?;
            }
            Send { d, a, from } => {
                if self.p.buffers[a.0 as usize].kind != Kind::Public {
                    self.message(*a, &[MaskKind::Shared, MaskKind::Private(*from)]).map_err(
                        |why| {
                            format!("the {from} sends its {a} to the {}, but {why}", from.other())
                        },
                    )?;
                    self.reveals.masked_sends += 1;
                }
                self.write(*d, Abs::default())?;
            }
            Reveal { d, a, to } => {
                self.reveal(*d, *a, *to)?;
                self.pending(*a);
                self.write(*d, Abs::default())?;
            }
            Exchange {} => {
                for b in std::mem::take(&mut self.pending_list) {
                    self.pending_src[b.0 as usize] = None;
                }
            }
            SetLen { a, frac } => {
                let Some(open) = self.count[a.0 as usize].take() else {
                    return Err(format!(
                        "sets the length from {a}, which is not a kept-token count opened for \
                         it: the dealer learns the length"
                    ));
                };
                if *frac != 0 {
                    return Err(format!(
                        "the count in {a} has {frac} fractional bits, which the opening at body \
                         #{open} would reveal besides the count"
                    ));
                }
                self.reveals.counts.push(RevealedCount { open, setlen: self.index });
            }
            // Everything else computes what it writes from what it reads, and reveals nothing
            // itself.
            Mul { .. }
            | MulImm { .. }
            | Shl { .. }
            | MatMul { .. }
            | Sum { .. }
            | CumSum { .. }
            | Copy { .. }
            | TruncPost { .. }
            | Sel { .. }
            | AndB { .. }
            | Lookup { .. }
            | BitOf { .. }
            | DProd { .. }
            | DMatMul { .. }
            | DTrunc { .. }
            | DAnd { .. }
            | DTable { .. }
            | DBit { .. }
            | DBit2A { .. }
            | DCase { .. } => {
                let reads: Vec<Abs> =
                    bufs.iter().filter(|(_, w)| !w).map(|&(b, _)| self.read(b)).collect();
                let r = self.mix(&reads);
                if let Copy { d, .. } = ins {
                    let runs = self.copy_runs(ins, *d);
                    self.copy_into(*d, r, runs)?;
                } else {
                    for &(b, written) in &bufs {
                        if written {
                            self.write(b, r.clone())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One element, the same length at every pruned length, in the body of a program with a
    /// dynamic section: the only shape a kept-token count has.
    fn is_count_candidate(&self, a: Buf) -> bool {
        let static_len = self.p.dynamic.is_some() && self.poly[a.0 as usize].is_none();
        self.section == "body" && static_len && self.p.buffers[a.0 as usize].len == 1
    }

    /// An `open` without a fresh mask: allowed only as a kept-token count.
    fn count_open(&mut self, a: Buf, why: String) -> Result<(), String> {
        if self.vals[a.0 as usize].mask.is_some() {
            return Err(why);
        }
        if !self.is_count_candidate(a) {
            let hint = if self.p.buffers[a.0 as usize].len > 1 && self.p.dynamic.is_some() {
                " (a kept-token count is one element; this opens more)"
            } else {
                ""
            };
            return Err(format!(
                "{why}: both parties would see it, and only a kept-token count of token \
                 pruning may be opened without a mask{hint}"
            ));
        }
        let v = self.read(a);
        for m in v.mask.into_iter().chain(v.taint) {
            self.use_mask(m, "appeared in an opened kept-token count");
        }
        Ok(())
    }

    fn reveal(&mut self, d: Buf, a: Buf, to: Party) -> Result<(), String> {
        if to != Party::Client {
            return Err(format!(
                "reveals {a} to the {to}: the program may reveal only its declared outputs, and \
                 only to the client"
            ));
        }
        if self.section != "body" {
            return Err("reveals in the setup: outputs are revealed by the body".into());
        }
        let Some(o) = self.output_of[d.0 as usize] else {
            return Err(format!(
                "reveals {a} into {d}, which is not the buffer of a declared output"
            ));
        };
        if self.revealed[o] {
            return Err(format!(
                "reveals output `{}` a second time in one run",
                self.p.outputs[o].name
            ));
        }
        self.revealed[o] = true;
        let out = &self.p.outputs[o];
        self.reveals.outputs.push(RevealedOutput {
            name: out.name.clone(),
            shape: out.shape.clone(),
            at: self.index,
        });
        let v = self.read(a);
        for m in v.mask.into_iter().chain(v.taint) {
            self.use_mask(m, "appeared in a revealed output");
        }
        Ok(())
    }
}
