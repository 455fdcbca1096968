//! Load-time validation: every buffer id in range, every length and kind consistent with its
//! instruction, dealer instructions fed only dealer-known values, opens completed by an
//! exchange before use. After validation the VM may index buffers without further checks.

use crate::class::Class;
use crate::operand::Buf;
use crate::ops::Instr;
use crate::program::{Kind, Program, MAX_BUF_LEN};
use std::fmt;

/// Everything wrong with a program, each message naming the section, instruction index and
/// mnemonic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateError(pub Vec<String>);

impl fmt::Display for ValidateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid program ({} problems):", self.0.len())?;
        for e in self.0.iter().take(20) {
            write!(f, "\n  {e}")?;
        }
        if self.0.len() > 20 {
            write!(f, "\n  ... and {} more", self.0.len() - 20)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidateError {}

/// The kind of the result of an elementwise or matrix operation on `a` and `b`: public only if
/// both are, private to `p` if every operand is public or private to `p`, a share otherwise.
pub fn combine(a: Kind, b: Kind) -> Kind {
    match (a, b) {
        (Kind::Public, Kind::Public) => Kind::Public,
        (Kind::Private(p), Kind::Public) | (Kind::Public, Kind::Private(p)) => Kind::Private(p),
        (Kind::Private(p), Kind::Private(q)) if p == q => Kind::Private(p),
        _ => Kind::Share,
    }
}

/// True when a value of kind `have` may be stored in a buffer of kind `dst`: the same kind, or
/// a private value (a sharing whose other share is zero) stored as a share.
pub fn storable(have: Kind, dst: Kind) -> bool {
    have == dst || (dst == Kind::Share && have.is_share_like())
}

pub(crate) struct Checker<'a> {
    p: &'a Program,
    pub(crate) errs: Vec<String>,
    /// Buffers whose value a dealer instruction wrote: the only state besides pending opens
    /// carried from one instruction to the next, and it depends on instruction classes and
    /// buffer ids only, never on sizes.
    pub(crate) dealer_known: Vec<bool>,
    pending: Vec<bool>,
    pub(crate) any_pending: bool,
    pub(crate) section: &'static str,
    pub(crate) index: usize,
    pub(crate) name: &'static str,
    /// Checking an instance of a dynamic program at a shorter length.
    instance: bool,
}

impl Checker<'_> {
    fn err(&mut self, msg: impl fmt::Display) {
        let m = format!("{} #{} `{}`: {msg}", self.section, self.index, self.name);
        self.errs.push(m);
    }

    fn kind(&self, b: Buf) -> Kind {
        self.p.buffers[b.0 as usize].kind
    }

    fn len(&self, b: Buf) -> u64 {
        self.p.buffers[b.0 as usize].len as u64
    }

    fn want(&mut self, b: Buf, ok: bool, what: &str) {
        if !ok {
            let k = self.kind(b);
            self.err(format_args!("{b} is {k}[{}], expected {what}", self.len(b)));
        }
    }

    fn ring(&mut self, b: Buf) {
        let k = self.kind(b);
        self.want(b, k.is_ring(), "a ring buffer");
    }

    fn same_len(&mut self, bufs: &[Buf]) {
        let l0 = self.len(bufs[0]);
        if bufs.iter().any(|&b| self.len(b) != l0) {
            let lens: Vec<String> = bufs.iter().map(|&b| format!("{b}[{}]", self.len(b))).collect();
            self.err(format_args!("lengths differ: {}", lens.join(", ")));
        }
    }

    fn broadcast(&mut self, d: Buf, a: Buf, b: Buf, inner: u32) {
        self.same_len(&[d, a]);
        let (la, lb) = (self.len(a), self.len(b));
        // Empty over empty is a no-op (a zero-size tensor of the model).
        let empty = la == 0 && lb == 0;
        if inner == 0 || (!empty && (lb == 0 || la % (lb * inner as u64) != 0)) {
            self.err(format_args!(
                "{b}[{lb}] with inner={inner} does not broadcast over {a}[{la}]"
            ));
        }
    }

    fn dealer(&mut self, b: Buf) {
        if !self.dealer_known[b.0 as usize] {
            self.err(format_args!(
                "{b} is not dealer-known (it must be written by a dealer instruction)"
            ));
        }
    }

    fn result_kind(&mut self, d: Buf, have: Kind) {
        let k = self.kind(d);
        if !storable(have, k) {
            self.err(format_args!("result is {have} but {d} is {k}"));
        }
    }

    /// The element count of a `what` view with dimensions `dims`, reporting an overflow. Every
    /// product of the non-zero dimensions must stay within [`MAX_BUF_LEN`]: a view that fits no
    /// buffer is wrong anyway, and a kernel never loops more often than a buffer is long, even
    /// over an empty view.
    fn extent(&mut self, what: &str, dims: &[u64]) -> Option<u64> {
        let nonzero = dims
            .iter()
            .filter(|&&x| x != 0)
            .try_fold(1u64, |acc, &x| acc.checked_mul(x).filter(|&p| p <= MAX_BUF_LEN as u64));
        match nonzero {
            Some(p) if !dims.contains(&0) => Some(p),
            Some(_) => Some(0),
            None => {
                let ds: Vec<String> = dims.iter().map(u64::to_string).collect();
                self.err(format_args!(
                    "{what} = {} overflows the largest buffer (2^31 elements)",
                    ds.join("×")
                ));
                None
            }
        }
    }

    fn matmul_dims(&mut self, d: Buf, a: Buf, b: Buf, dims: [u32; 4]) {
        let [batch, m, k, n] = dims.map(|x| x as u64);
        let Some(bmn) = self.extent("batch·m·n", &[batch, m, n]) else { return };
        // An operand shared by the whole batch may be far smaller than batch times its size.
        let ok = |len: u64, per: u64| len == per || Some(len) == batch.checked_mul(per);
        if batch == 0 || !ok(self.len(a), m * k) || !ok(self.len(b), k * n) || self.len(d) != bmn {
            self.err(format_args!(
                "dims batch={batch} m={m} k={k} n={n} do not fit {a}[{}] · {b}[{}] -> {d}[{}]",
                self.len(a),
                self.len(b),
                self.len(d)
            ));
        }
    }

    fn copy_bounds(&mut self, b: Buf, off: u32, shape: &[u32], strides: &[i64]) {
        if shape.len() != strides.len() {
            self.err("shape and strides have different ranks");
            return;
        }
        if shape.contains(&0) {
            return;
        }
        let (mut lo, mut hi) = (off as i128, off as i128);
        for (&s, &st) in shape.iter().zip(strides) {
            let span = (s as i128 - 1) * st as i128;
            if span < 0 {
                lo += span;
            } else {
                hi += span;
            }
        }
        if lo < 0 || hi >= self.len(b) as i128 {
            self.err(format_args!("strided access [{lo}, {hi}] is outside {b}[{}]", self.len(b)));
        }
    }

    /// A local product is a sharing of the product unless both factors are genuine shares.
    fn local_product(&mut self, ka: Kind, kb: Kind) {
        if ka == Kind::Share && kb == Kind::Share {
            self.err(
                "local product of two shares is not a sharing of their product (use a protocol)",
            );
        }
    }

    pub(crate) fn check(&mut self, ins: &Instr) {
        use Instr::*;
        let bufs = ins.buffers();
        for &(b, _) in &bufs {
            if b.0 as usize >= self.p.buffers.len() {
                self.err(format_args!("{b} is out of range ({} buffers)", self.p.buffers.len()));
                return;
            }
        }
        for (i, &(w, written)) in bufs.iter().enumerate() {
            if written && bufs.iter().any(|&(r, wr)| !wr && r == w) {
                self.err(format_args!("{w} is both read and written"));
            }
            if written && bufs[..i].iter().any(|&(r, wr)| wr && r == w) {
                self.err(format_args!("{w} is written twice"));
            }
        }
        for &(r, written) in &bufs {
            if !written && self.pending[r.0 as usize] {
                self.err(format_args!("{r} is read before the exchange that completes its open"));
            }
        }
        match ins {
            Add { d, a, b, inner } | Sub { d, a, b, inner } => {
                self.ring(*a);
                self.ring(*b);
                self.broadcast(*d, *a, *b, *inner);
                let have = combine(self.kind(*a), self.kind(*b));
                self.result_kind(*d, have);
            }
            Mul { d, a, b, inner } => {
                self.ring(*a);
                self.ring(*b);
                self.broadcast(*d, *a, *b, *inner);
                let (ka, kb) = (self.kind(*a), self.kind(*b));
                self.local_product(ka, kb);
                self.result_kind(*d, combine(ka, kb));
            }
            MatMul { d, a, b, batch, m, k, n } => {
                self.ring(*a);
                self.ring(*b);
                self.matmul_dims(*d, *a, *b, [*batch, *m, *k, *n]);
                let (ka, kb) = (self.kind(*a), self.kind(*b));
                self.local_product(ka, kb);
                self.result_kind(*d, combine(ka, kb));
            }
            Neg { d, a } | AddImm { d, a, .. } | MulImm { d, a, .. } | Shl { d, a, .. } => {
                self.ring(*a);
                self.same_len(&[*d, *a]);
                let k = self.kind(*a);
                self.result_kind(*d, k);
                if let Shl { bits, .. } = ins {
                    if *bits > 63 {
                        self.err("shift must be below 64");
                    }
                }
            }
            Sum { d, a, outer, mid, inner } => {
                self.ring(*a);
                let (o, m, i) = (*outer as u64, *mid as u64, *inner as u64);
                if let Some(n) = self.extent("outer·mid·inner", &[o, m, i]) {
                    if self.len(*a) != n || self.len(*d) != o * i {
                        self.err(format_args!(
                            "{outer}×{mid}×{inner} view does not fit {a} -> {d}"
                        ));
                    }
                }
                let k = self.kind(*a);
                self.result_kind(*d, k);
            }
            CumSum { d, a, outer, mid, inner } => {
                self.ring(*a);
                self.same_len(&[*d, *a]);
                let (o, m, i) = (*outer as u64, *mid as u64, *inner as u64);
                if let Some(n) = self.extent("outer·mid·inner", &[o, m, i]) {
                    if self.len(*a) != n {
                        self.err(format_args!("{outer}×{mid}×{inner} view does not fit {a}"));
                    }
                }
                let k = self.kind(*a);
                self.result_kind(*d, k);
            }
            SetLen { a, frac } => {
                let k = self.kind(*a);
                self.want(*a, k == Kind::Public && self.len(*a) >= 1, "a public count");
                if *frac > 62 {
                    self.err("at most 62 fractional bits");
                }
                if self.section != "body" || !(self.instance || self.p.dynamic.is_some()) {
                    self.err("only the body of a program with a dynamic section sets a length");
                }
                if self.any_pending {
                    self.err("sets a length while an opening awaits its exchange");
                }
            }
            Copy { d, d_off, a, a_off, shape, d_strides, a_strides } => {
                self.ring(*a);
                let (kd, ka) = (self.kind(*d), self.kind(*a));
                if !storable(ka, kd) {
                    self.err(format_args!("copies {ka} into {kd}"));
                }
                if shape.0.len() > 8 {
                    self.err("rank above 8");
                    return;
                }
                let dims: Vec<u64> = shape.0.iter().map(|&x| x as u64).collect();
                let Some(n) = self.extent("the copy's shape", &dims) else { return };
                // A copy writes each element of `d` at most once; more elements than `d`
                // holds is a hostile shape (and a near-endless loop over stride-0 axes).
                if n > self.len(*d) {
                    self.err(format_args!(
                        "copies {n} elements ({:?}) into {d}[{}]",
                        shape.0,
                        self.len(*d)
                    ));
                }
                self.copy_bounds(*d, *d_off, &shape.0, &d_strides.0);
                self.copy_bounds(*a, *a_off, &shape.0, &a_strides.0);
            }
            TruncPost { c2, pk, s, c, rhi, m, t, w } => {
                self.same_len(&[*c2, *pk, *s, *c, *rhi, *m]);
                for b in [*c2, *pk, *c] {
                    let k = self.kind(b);
                    self.want(b, k == Kind::Public, "public");
                }
                for b in [*s, *rhi, *m] {
                    let k = self.kind(b);
                    self.want(b, k.is_share_like(), "a share");
                }
                if !(3..=64).contains(w) || *t as u32 + 2 > *w as u32 || (*t == 0 && *w == 64) {
                    self.err("needs 3 ≤ w ≤ 64 and t ≤ w - 2, and t > 0 when w = 64");
                }
            }
            Sel { d, e, a, b } => {
                self.same_len(&[*d, *e, *a, *b]);
                let (ke, ka, kb) = (self.kind(*e), self.kind(*a), self.kind(*b));
                self.want(*e, ke == Kind::PubBits, "pubbits");
                self.ring(*a);
                self.ring(*b);
                let have = if ka == kb { ka } else { combine(ka, kb) };
                if ka != kb && (ka == Kind::Public || kb == Kind::Public) {
                    self.err(format_args!(
                        "selects between {ka} and {kb}: both sides must have one kind"
                    ));
                }
                self.result_kind(*d, have);
            }
            XorB { d, a, b } | AndB { d, a, b } => {
                self.same_len(&[*d, *a, *b]);
                let (ka, kb) = (self.kind(*a), self.kind(*b));
                self.want(*a, ka.is_bits(), "bits");
                self.want(*b, kb.is_bits(), "bits");
                if matches!(ins, AndB { .. }) && ka == Kind::Bits && kb == Kind::Bits {
                    self.err(
                        "and of two shared bit vectors needs the AND protocol, not a local and",
                    );
                }
                let have =
                    if ka == Kind::Bits || kb == Kind::Bits { Kind::Bits } else { Kind::PubBits };
                self.result_kind(*d, have);
            }
            NotB { d, a } => {
                self.same_len(&[*d, *a]);
                let k = self.kind(*a);
                self.want(*a, k.is_bits(), "bits");
                self.result_kind(*d, k);
            }
            Lookup { d, table, idx, shift, width } => {
                self.same_len(&[*d, *idx]);
                let (kt, ki) = (self.kind(*table), self.kind(*idx));
                self.want(*table, kt.is_bits(), "bits");
                self.want(*idx, ki == Kind::Public, "public");
                self.result_kind(*d, kt);
                if !(1..=16).contains(width) || *shift > 63 {
                    self.err("width must be in 1..=16 and shift below 64");
                } else if self.len(*table) != self.len(*idx) << width {
                    self.err(format_args!("table {table} must hold 2^{width} bits per element"));
                }
            }
            BitOf { d, a, bit } => {
                self.same_len(&[*d, *a]);
                let (kd, ka) = (self.kind(*d), self.kind(*a));
                self.want(*d, kd == Kind::PubBits, "pubbits");
                self.want(*a, ka == Kind::Public, "public");
                if *bit > 63 {
                    self.err("bit must be below 64");
                }
            }
            Open { d, a, bits, lo } => {
                self.same_len(&[*d, *a]);
                let (kd, ka) = (self.kind(*d), self.kind(*a));
                self.want(*d, kd == Kind::Public, "public");
                self.want(*a, ka.is_share_like(), "a share");
                if !(1..=64).contains(bits) {
                    self.err("bits must be in 1..=64");
                }
                if lo >= bits {
                    self.err("lo must be below bits (at least one bit is sent)");
                }
            }
            OpenB { d, a } => {
                self.same_len(&[*d, *a]);
                let (kd, ka) = (self.kind(*d), self.kind(*a));
                self.want(*d, kd == Kind::PubBits, "pubbits");
                self.want(*a, ka == Kind::Bits, "bits");
            }
            Send { d, a, from } => {
                self.same_len(&[*d, *a]);
                let (kd, ka) = (self.kind(*d), self.kind(*a));
                self.want(*d, kd == Kind::Private(from.other()), "private to the receiver");
                let readable =
                    matches!(ka, Kind::Share | Kind::Public) || ka == Kind::Private(*from);
                self.want(*a, readable, "a ring buffer the sender holds");
            }
            Reveal { d, a, to } => {
                self.same_len(&[*d, *a]);
                let (kd, ka) = (self.kind(*d), self.kind(*a));
                self.want(*d, kd == Kind::Private(*to), "private to the receiver");
                self.want(*a, ka.is_share_like(), "a share");
            }
            Exchange {} => {}
            DMask { d } => {
                let k = self.kind(*d);
                self.want(*d, k == Kind::Share, "a share");
            }
            DPriv { d } => {
                let k = self.kind(*d);
                self.want(*d, matches!(k, Kind::Private(_)), "private");
            }
            DProd { d, a, b, inner, bits } => {
                self.dealer(*a);
                self.dealer(*b);
                self.ring(*a);
                self.ring(*b);
                self.broadcast(*d, *a, *b, *inner);
                if !(1..=64).contains(bits) {
                    self.err("needs 1 ≤ bits ≤ 64");
                }
                let k = self.kind(*d);
                self.want(*d, k == Kind::Share, "a share");
            }
            DMatMul { d, a, b, batch, m, k, n } => {
                self.dealer(*a);
                self.dealer(*b);
                self.ring(*a);
                self.ring(*b);
                self.matmul_dims(*d, *a, *b, [*batch, *m, *k, *n]);
                let kd = self.kind(*d);
                self.want(*d, kd == Kind::Share, "a share");
            }
            DTrunc { hi, msb, a, t, w } => {
                self.dealer(*a);
                self.ring(*a);
                self.same_len(&[*hi, *msb, *a]);
                for b in [*hi, *msb] {
                    let k = self.kind(b);
                    self.want(b, k == Kind::Share, "a share");
                }
                if !(1..=64).contains(w) || *t >= *w {
                    self.err("needs 1 ≤ w ≤ 64 and t < w");
                }
            }
            DBits { d } => {
                let k = self.kind(*d);
                self.want(*d, k == Kind::Bits, "bits");
            }
            DAnd { d, a, b } => {
                self.dealer(*a);
                self.dealer(*b);
                self.same_len(&[*d, *a, *b]);
                for x in [*d, *a, *b] {
                    let k = self.kind(x);
                    self.want(x, k == Kind::Bits, "bits");
                }
            }
            DTable { lt, eq, a, shift, width } => {
                self.dealer(*a);
                self.ring(*a);
                for x in [*lt, *eq] {
                    let k = self.kind(x);
                    self.want(x, k == Kind::Bits, "bits");
                }
                if !(1..=16).contains(width) || *shift > 63 {
                    self.err("width must be in 1..=16 and shift below 64");
                } else if self.len(*lt) != self.len(*a) << width
                    || self.len(*eq) != self.len(*a) << width
                {
                    self.err(format_args!("tables must hold 2^{width} bits per element of {a}"));
                }
            }
            DBit { d, a, bit } => {
                self.dealer(*a);
                self.ring(*a);
                self.same_len(&[*d, *a]);
                let k = self.kind(*d);
                self.want(*d, k == Kind::Bits, "bits");
                if *bit > 63 {
                    self.err("bit must be below 64");
                }
            }
            DCase { d, a, b, g, k } => {
                for x in [*a, *b, *g, *k] {
                    self.dealer(x);
                    let kx = self.kind(x);
                    self.want(x, kx == Kind::Bits, "bits");
                }
                self.same_len(&[*a, *b, *g, *k]);
                let kd = self.kind(*d);
                self.want(*d, kd == Kind::Share, "a share");
                if self.len(*d) != 4 * self.len(*a) {
                    self.err(format_args!("{d} must hold the 4 cases of each element of {a}"));
                }
            }
            DBit2A { d, a } => {
                self.dealer(*a);
                self.same_len(&[*d, *a]);
                let (kd, ka) = (self.kind(*d), self.kind(*a));
                self.want(*d, kd == Kind::Share, "a share");
                self.want(*a, ka == Kind::Bits, "bits");
            }
        }
        self.flow_of(ins, &bufs);
    }

    /// Only the state updates of [`Self::check`], for instructions checked before (at another
    /// length: the state does not depend on sizes). Ids out of range are skipped (`check`
    /// refused them).
    pub(crate) fn flow(&mut self, ins: &Instr) {
        let bufs = ins.buffers();
        if bufs.iter().all(|&(b, _)| (b.0 as usize) < self.p.buffers.len()) {
            self.flow_of(ins, &bufs);
        }
    }

    /// State updates: dealer-known-ness and pending opens.
    fn flow_of(&mut self, ins: &Instr, bufs: &[(Buf, bool)]) {
        let class = ins.class();
        for &(b, written) in bufs {
            if written {
                self.dealer_known[b.0 as usize] = class == Class::Dealer;
            }
        }
        match class {
            // What a message part writes arrives at the exchange.
            Class::Comm => {
                for &(b, written) in bufs {
                    if written {
                        self.pending[b.0 as usize] = true;
                        self.any_pending = true;
                    }
                }
            }
            Class::Exchange => {
                self.pending.iter_mut().for_each(|p| *p = false);
                self.any_pending = false;
            }
            Class::Local | Class::Elementwise | Class::Dealer | Class::Control => {}
        }
    }
}

/// Checks the whole program. On success the VM may run it without bounds checks on buffer ids.
pub fn validate(p: &Program) -> Result<(), ValidateError> {
    check_program(p, false)
}

/// Checks an instance of a dynamic program ([`crate::Dynamic::instantiate`]): as [`validate`],
/// except that inputs and weights (loaded at the maximum length) may be longer than their
/// buffers now are.
pub fn validate_instance(p: &Program) -> Result<(), ValidateError> {
    check_program(p, true)
}

fn check_program(p: &Program, instance: bool) -> Result<(), ValidateError> {
    let mut c = Checker::new(p, instance);
    c.header();
    if let (Some(d), false) = (&p.dynamic, instance) {
        d.check(p, &mut c.errs);
    }
    for (sec, code, tags) in [("setup", &p.setup, &p.setup_tags), ("body", &p.body, &p.body_tags)] {
        c.tags(sec, code, tags);
        c.section = sec;
        for (i, ins) in code.iter().enumerate() {
            c.index = i;
            c.name = ins.name();
            c.check(ins);
        }
        if c.any_pending {
            c.errs.push(format!("{sec} ends with opens that no exchange completes"));
        }
    }
    c.finish()
}

impl<'a> Checker<'a> {
    pub(crate) fn new(p: &'a Program, instance: bool) -> Checker<'a> {
        Checker {
            p,
            errs: Vec::new(),
            dealer_known: vec![false; p.buffers.len()],
            pending: vec![false; p.buffers.len()],
            any_pending: false,
            section: "header",
            index: 0,
            name: "",
            instance,
        }
    }

    pub(crate) fn finish(self) -> Result<(), ValidateError> {
        if self.errs.is_empty() {
            Ok(())
        } else {
            Err(ValidateError(self.errs))
        }
    }

    /// A section's tags: one per instruction, each in range.
    pub(crate) fn tags(&mut self, sec: &str, code: &[Instr], tags: &[u32]) {
        let p = self.p;
        if code.len() != tags.len() {
            self.errs.push(format!(
                "{sec} has {} instructions but {} tags",
                code.len(),
                tags.len()
            ));
        }
        if let Some(t) = tags.iter().find(|&&t| t as usize >= p.tags.len()) {
            self.errs.push(format!("{sec} uses tag {t} but the program has {} tags", p.tags.len()));
        }
    }

    /// What does not depend on instructions: fractional bits, buffer lengths, constants,
    /// inputs, weights and outputs.
    pub(crate) fn header(&mut self) {
        let (p, instance, c) = (self.p, self.instance, self);
        if !(1..=30).contains(&p.frac_bits) {
            c.errs.push(format!("fixed-point fractional bits {} outside 1..=30", p.frac_bits));
        }
        for (i, b) in p.buffers.iter().enumerate() {
            if b.len > MAX_BUF_LEN {
                c.errs.push(format!("buffer b{i} is too long ({})", b.len));
            }
        }
        for ci in &p.consts {
            match p.buf(ci.buf) {
                Some(d) if d.kind == Kind::Public && d.len as usize == ci.data.len() => {}
                Some(d) => c.errs.push(format!(
                    "constant for {} holds {} values but the buffer is {}[{}]",
                    ci.buf,
                    ci.data.len(),
                    d.kind,
                    d.len
                )),
                None => c.errs.push(format!("constant for missing buffer {}", ci.buf)),
            }
        }
        let io_lists = [("input", &p.inputs), ("weight", &p.weights), ("output", &p.outputs)];
        for (what, list) in io_lists {
            for io in list.iter() {
                let numel = io
                    .shape
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
                    .filter(|&n| n <= MAX_BUF_LEN as u64);
                match (p.buf(io.buf), numel) {
                    (None, _) => {
                        c.errs.push(format!("{what} `{}` uses missing buffer {}", io.name, io.buf))
                    }
                    (Some(_), None) => c.errs.push(format!(
                    "{what} `{}` of shape {:?} has more elements than the largest buffer (2^31)",
                    io.name, io.shape
                )),
                    (Some(d), Some(numel)) => {
                        let kind_ok = d.kind == Kind::Private(io.party)
                            || (what == "weight" && d.kind == Kind::Public);
                        let shrunk = instance && what != "output" && (d.len as u64) < numel;
                        if !kind_ok || (d.len as u64 != numel && !shrunk) {
                            c.errs.push(format!(
                                "{what} `{}` of shape {:?} for the {} does not fit {} ({}[{}])",
                                io.name, io.shape, io.party, io.buf, d.kind, d.len
                            ));
                        }
                    }
                }
                if io.frac_bits > 62 {
                    c.errs.push(format!(
                        "{what} `{}` has {} fractional bits (at most 62)",
                        io.name, io.frac_bits
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operand::{Dims, Strides};
    use crate::program::{BufDecl, IoDecl, Tag};
    use crate::Party;

    /// A program of `bufs` (kind, length) running `setup`.
    fn program(bufs: &[(Kind, u32)], setup: Vec<Instr>) -> Program {
        Program {
            frac_bits: 16,
            buffers: bufs.iter().map(|&(kind, len)| BufDecl { kind, len }).collect(),
            tags: vec![Tag { layer: "model".into(), op: "test".into() }],
            setup_tags: vec![0; setup.len()],
            setup,
            ..Program::default()
        }
    }

    fn first_error(p: &Program) -> String {
        let e = validate(p).expect_err("the program must be refused");
        e.0[0].clone()
    }

    #[test]
    fn a_batch_of_2_31_by_2_17_by_2_16_does_not_wrap_to_zero() {
        // batch·m·n = 2^64 wrapped to 0 and matched the empty result: the dealer then ran 2^31
        // products and indexed past the end.
        let (batch, m, k, n) = (1 << 31, 1 << 17, 0, 1 << 16);
        let share = (Kind::Share, 0);
        let p = program(
            &[share, share, share],
            vec![
                Instr::DMask { d: Buf(0) },
                Instr::DMask { d: Buf(1) },
                Instr::DMatMul { d: Buf(2), a: Buf(0), b: Buf(1), batch, m, k, n },
            ],
        );
        let e = first_error(&p);
        assert!(
            e.starts_with("setup #2 `dmatmul`: batch·m·n = 2147483648×131072×65536 overflows"),
            "{e}"
        );
        let public = (Kind::Public, 0);
        let p = program(
            &[public, public, public],
            vec![Instr::MatMul { d: Buf(2), a: Buf(0), b: Buf(1), batch, m, k, n }],
        );
        assert!(first_error(&p).contains("`matmul`: batch·m·n = 2147483648×131072×65536"));
    }

    #[test]
    fn a_batched_product_that_fits_validates() {
        let p = program(
            &[(Kind::Public, 2 * 3 * 4), (Kind::Public, 4 * 5), (Kind::Public, 2 * 3 * 5)],
            vec![Instr::MatMul { d: Buf(2), a: Buf(0), b: Buf(1), batch: 2, m: 3, k: 4, n: 5 }],
        );
        validate(&p).unwrap();
        // Logits of 128 tokens against a shared 768×50257 matrix: batch·k·n is past 2^31, but
        // only the result is materialised per batch.
        let (batch, k, n) = (128, 768, 50257);
        let p = program(
            &[(Kind::Public, batch * k), (Kind::Public, k * n), (Kind::Public, batch * n)],
            vec![Instr::MatMul { d: Buf(2), a: Buf(0), b: Buf(1), batch, m: 1, k, n }],
        );
        validate(&p).unwrap();
    }

    #[test]
    fn sum_and_cumsum_views_are_checked_products() {
        let empty = (Kind::Public, 0);
        // 2^22·2^21·2^21 = 2^64 wrapped to 0 and fitted empty buffers.
        let (outer, mid, inner) = (1 << 22, 1 << 21, 1 << 21);
        let p = program(
            &[empty, empty],
            vec![Instr::CumSum { d: Buf(1), a: Buf(0), outer, mid, inner }],
        );
        assert!(first_error(&p)
            .contains("`cumsum`: outer·mid·inner = 4194304×2097152×2097152 overflows"));
        let p =
            program(&[empty, empty], vec![Instr::Sum { d: Buf(1), a: Buf(0), outer, mid, inner }]);
        assert!(first_error(&p).contains("`sum`: outer·mid·inner"));
        // An empty view that would still loop 2^64 times over its outer axes.
        let (outer, mid, inner) = (u32::MAX, u32::MAX, 0);
        let p =
            program(&[empty, empty], vec![Instr::Sum { d: Buf(1), a: Buf(0), outer, mid, inner }]);
        assert!(first_error(&p).contains("4294967295×4294967295×0 overflows"));
    }

    #[test]
    fn a_copy_never_writes_more_elements_than_its_destination_holds() {
        let one = (Kind::Public, 1);
        let copy = |shape: Vec<u32>| {
            let r = shape.len();
            Instr::Copy {
                d: Buf(1),
                d_off: 0,
                a: Buf(0),
                a_off: 0,
                shape: Dims(shape),
                d_strides: Strides(vec![0; r]),
                a_strides: Strides(vec![0; r]),
            }
        };
        // In bounds (every stride is 0), but 2^80 iterations overflow the kernel's count.
        let p = program(&[one, one], vec![copy(vec![1 << 16; 5])]);
        assert!(first_error(&p)
            .contains("`copy`: the copy's shape = 65536×65536×65536×65536×65536 overflows"));
        let p = program(&[one, one], vec![copy(vec![4])]);
        assert!(first_error(&p).contains("copies 4 elements ([4]) into b1[1]"));
        validate(&program(&[one, one], vec![copy(vec![1])])).unwrap();
    }

    #[test]
    fn an_input_shape_whose_product_wraps_is_refused() {
        let mut p = program(&[(Kind::Private(Party::Client), 0)], vec![]);
        p.inputs.push(IoDecl {
            name: "x".into(),
            buf: Buf(0),
            party: Party::Client,
            frac_bits: 16,
            shape: vec![1 << 16; 4],
        });
        let e = validate(&p).unwrap_err().to_string();
        assert!(e.contains("input `x` of shape [65536, 65536, 65536, 65536] has more elements than the largest buffer"), "{e}");
    }
}
