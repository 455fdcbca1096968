//! Comparison (DReLU), AND gates, bit-to-arithmetic conversion, selection, ReLU and max.
//!
//! # DReLU by mask-and-compare with dealer tables
//! For a masked `x = c - s` with `|x| < 2^(n-1)`: `u = x + 2^(n-1)` lies in `[0, 2^n)` and
//! `x ≥ 0` iff bit `n-1` of `u = C - S (mod 2^n)` is set, where `C = c + 2^(n-1)` is public
//! and `S = s mod 2^n` is dealer-known (for a truncating opening `s ≡ r >> t mod 2^n`). That
//! bit is `C[n-1] ⊕ S[n-1] ⊕ [C mod 2^(n-1) < S mod 2^(n-1)]`. The borrow comparison of a
//! public and a dealer-known number is split into digits: the dealer secret-shares, per digit,
//! the tables `lt[c] = [c < v]` and `eq[c] = [c = v]` of the mask's digit `v`; each party looks
//! up its share at the public digit of `C` (local), and a log-depth tree of AND gates combines
//! digits from the top. The lowest `ignore` bits are skipped: the result is exact whenever
//! `|x| ≥ 2^ignore` ring units (for ReLU, max and thresholds a near-zero difference makes
//! either answer correct to within that amount) and `x ≤ 2^(n-1) - 2^ignore`: skipping them
//! misreads the borrow when the low `n-1` bits of `u` are less than `2^ignore` below a
//! multiple of `2^(n-1)`, which is `x` just below 0 and also `x` just below the top.
//!
//! Why not function secret sharing (a DCF key per comparison, as SIGMA)? On a CPU a DCF
//! costs about `n` AES calls per party per comparison and ~0.5 KB of dealer key; the tables
//! cost a few bytes of dealer material and table lookups, for ~11 bytes online instead of 8 and
//! `log2(digits)` more rounds. Tables of one mask serve any number of comparisons of the same
//! masked value against different public thresholds.

use super::{Masked, ProgramBuilder};

/// A comparison before its last AND gate (see [`ProgramBuilder::drelu_arith`]).
struct Tree {
    msb_pub: Buf,
    msb_sec: Buf,
    last: Last,
}

/// What the digit tree leaves: no digit, one, or the two inputs of the last gate
/// `lt_h ⊕ (eq_h ∧ lt_l)`.
enum Last {
    Zero,
    One(Buf),
    Two { lt_h: Buf, eq_h: Buf, lt_l: Buf },
}
use crate::operand::Buf;
use crate::ops::Instr;
use crate::program::Kind;

impl ProgramBuilder {
    fn bits_buf(&mut self, kind: Kind, n: u32) -> Buf {
        self.buf(kind, n)
    }

    /// `a ⊕ b` of bit vectors (local).
    pub fn xor_bits_pub(&mut self, a: Buf, b: Buf) -> Buf {
        self.xor_bits(a, b)
    }

    fn xor_bits(&mut self, a: Buf, b: Buf) -> Buf {
        let kind = if self.kind(a) == Kind::Bits || self.kind(b) == Kind::Bits {
            Kind::Bits
        } else {
            Kind::PubBits
        };
        let d = self.bits_buf(kind, self.len(a));
        self.emit(Instr::XorB { d, a, b });
        d
    }

    fn and_local(&mut self, a: Buf, b: Buf) -> Buf {
        let kind = if self.kind(a) == Kind::Bits || self.kind(b) == Kind::Bits {
            Kind::Bits
        } else {
            Kind::PubBits
        };
        let d = self.bits_buf(kind, self.len(a));
        self.emit(Instr::AndB { d, a, b });
        d
    }

    fn open_bits(&mut self, a: Buf) -> Buf {
        let d = self.bits_buf(Kind::PubBits, self.len(a));
        self.emit(Instr::OpenB { d, a });
        d
    }

    fn dealer_bits(&mut self, n: u32) -> Buf {
        let d = self.bits_buf(Kind::Bits, n);
        self.emit(Instr::DBits { d });
        d
    }

    /// `x ∧ y1` and `x ∧ y2` for XOR-shared bits, sharing the opening of `x`.
    ///
    /// Beaver AND: with dealer bits `a`, `b_i` and shares of `a ∧ b_i`, open `x ⊕ a` and
    /// `y_i ⊕ b_i`; then `x ∧ y_i = a∧b_i ⊕ D∧b_i ⊕ E_i∧a ⊕ D∧E_i`.
    /// Rounds: 1. Sends: 3 bits per element each way. Dealer: 2 correction bits per element.
    pub fn and_bits2(&mut self, x: Buf, y1: Buf, y2: Buf) -> (Buf, Buf) {
        let n = self.len(x);
        let a = self.dealer_bits(n);
        let dx = self.xor_bits(x, a);
        let d = self.open_bits(dx);
        let mut out = [Buf(0); 2];
        for (i, y) in [y1, y2].into_iter().enumerate() {
            out[i] = self.and_with_opened(a, d, y);
        }
        (out[0], out[1])
    }

    /// `x ∧ y` for XOR-shared bits (Beaver AND). Rounds: 1. Sends: 2 bits per element each way.
    pub fn and_bits(&mut self, x: Buf, y: Buf) -> Buf {
        let n = self.len(x);
        let a = self.dealer_bits(n);
        let dx = self.xor_bits(x, a);
        let d = self.open_bits(dx);
        self.and_with_opened(a, d, y)
    }

    fn and_with_opened(&mut self, a: Buf, d: Buf, y: Buf) -> Buf {
        let n = self.len(y);
        let b = self.dealer_bits(n);
        let c = self.bits_buf(Kind::Bits, n);
        self.emit(Instr::DAnd { d: c, a, b });
        let ey = self.xor_bits(y, b);
        let e = self.open_bits(ey);
        let t1 = self.and_local(d, b);
        let t2 = self.and_local(e, a);
        let t3 = self.and_local(d, e);
        let z = self.xor_bits(c, t1);
        let z = self.xor_bits(z, t2);
        self.xor_bits(z, t3)
    }

    /// XOR-shared bits `[x - threshold ≥ 0]` for a masked `x` (threshold in the ring units of
    /// `x`). See the module docs; parameters from [`ProgramBuilder::compare`].
    ///
    /// Rounds: `ceil(log2(digits))` AND rounds, where `digits = ceil((bits - 1 - ignore) /
    /// digit)` (3 with the defaults). Sends: about 4 bits per AND per element each way.
    /// Dealer: `2·digits·2^digit + 1` table bits and 2 bits per AND, per element.
    pub fn drelu(&mut self, x: &Masked, threshold: u64) -> Buf {
        let tree = self.drelu_tree(x, threshold);
        let b = self.xor_bits(tree.msb_pub, tree.msb_sec);
        let borrow = match tree.last {
            Last::Zero => return b,
            Last::One(lt) => lt,
            Last::Two { lt_h, eq_h, lt_l } => {
                let carry = self.and_bits(eq_h, lt_l);
                self.xor_bits(lt_h, carry)
            }
        };
        self.xor_bits(b, borrow)
    }

    /// `[x - threshold ≥ 0]` as arithmetic shares (0/1 in Z_2^64), and with `y` also the
    /// shares of that bit times `y`, in the rounds of [`Self::drelu`] alone: the comparison's
    /// last AND gate is fused with the conversion (and the selection).
    ///
    /// The last gate is `lt_h ⊕ (eq_h ∧ lt_l)`, XORed with the mask's msb `k` and the public
    /// msb `P`. With dealer bits `a`, `b`, `g`, the parties open `D = eq_h ⊕ a`,
    /// `E = lt_l ⊕ b` and `F = lt_h ⊕ g` together; then the bit is
    /// `P ⊕ F ⊕ h_DE` with `h_DE = g ⊕ k ⊕ ((D ⊕ a) ∧ (E ⊕ b))`, dealer-known for each of
    /// the four cases of `(D, E)`. The dealer deals the four cases as arithmetic shares
    /// (`dcase`) and their products with `y`'s mask (`dprod`); the parties pick the case and
    /// flip by `P ⊕ F` locally.
    /// Rounds: those of the digit tree, the last AND round included (one fewer than
    /// `drelu` + `b2a` or `select`). Sends: 3 bits per element each way in the last round.
    /// Dealer: 4 words per element (8 with `y`, 12 if `y` was truncated).
    pub fn drelu_arith(
        &mut self,
        x: &Masked,
        threshold: u64,
        y: Option<&Masked>,
    ) -> (Buf, Option<Buf>) {
        let tree = self.drelu_tree(x, threshold);
        let Last::Two { lt_h, eq_h, lt_l } = tree.last else {
            // One digit or none: no AND gate to fuse with.
            let bits = self.drelu(x, threshold);
            let sel = y.map(|y| self.select(bits, y));
            return (self.b2a(bits), sel);
        };
        let n = self.len(lt_h);
        let [a, b, g] = [(); 3].map(|_| self.dealer_bits(n));
        let d_open = self.xor_bits(eq_h, a);
        let e_open = self.xor_bits(lt_l, b);
        let f_open = self.xor_bits(lt_h, g);
        let (dd, ee, ff) = (self.open_bits(d_open), self.open_bits(e_open), self.open_bits(f_open));
        let cases = self.buf(Kind::Share, 4 * n);
        self.emit(Instr::DCase { d: cases, a, b, g, k: tree.msb_sec });
        let flip = self.xor_bits(tree.msb_pub, ff);
        let h = self.pick_case(cases, n, dd, ee);
        let nh = self.neg(h);
        let one_minus = self.add_imm(nh, 1);
        let bit = self.buf(Kind::Share, n);
        self.emit(Instr::Sel { d: bit, e: flip, a: one_minus, b: h });
        let prod = y.map(|y| {
            // h·y = h·c − h·s, with s = base − pk·m after a truncating opening.
            let mut hs_all = self.dprod(cases, y.base, 1);
            if let Some((pk, m)) = y.wrap {
                let p = self.dprod_low(cases, m, 1, y.wrap_bits());
                let q = self.mul_local(p, pk, 1);
                hs_all = self.sub(hs_all, q);
            }
            let hs = self.pick_case(hs_all, n, dd, ee);
            let hc = self.mul_local(h, y.c, 1);
            let hy = self.sub(hc, hs);
            let ys = self.to_share(y);
            let y_minus = self.sub(ys, hy);
            let out = self.buf(Kind::Share, n);
            self.emit(Instr::Sel { d: out, e: flip, a: y_minus, b: hy });
            out
        });
        (bit, prod)
    }

    /// The entry of a `dcase` (or of a product of it) for each element's opened `(D, E)`.
    fn pick_case(&mut self, cases: Buf, n: u32, dd: Buf, ee: Buf) -> Buf {
        let c = [0, 1, 2, 3].map(|i| self.view(cases, i * n, &[n], &[1]));
        let sel = |s: &mut Self, e: Buf, a: Buf, b: Buf| {
            let d = s.buf(Kind::Share, n);
            s.emit(Instr::Sel { d, e, a, b });
            d
        };
        let d0 = sel(self, ee, c[1], c[0]);
        let d1 = sel(self, ee, c[3], c[2]);
        sel(self, dd, d1, d0)
    }

    /// The comparison up to its last AND gate: the public and the mask's msb, and what the
    /// digit tree leaves for the last gate.
    fn drelu_tree(&mut self, x: &Masked, threshold: u64) -> Tree {
        let len = self.len(x.c);
        let mut p = self.compare;
        // After a truncating or narrow opening the mask is known modulo 2^(w-t) only.
        let n = if x.wrap.is_none() { p.bits } else { p.bits.min(x.w - x.t) };
        assert!((2..=64).contains(&n), "comparison width must be in 2..=64");
        // Few elements (a per-row comparison): two wide digits, one AND round, while the
        // tables stay small (at most 2^26 table bits, 8 MB, per comparison of the buffer).
        let span = (n - 1).saturating_sub(p.ignore);
        let two = span.div_ceil(2);
        let judged = len as u64 * self.len_scale.0 / self.len_scale.1.max(1);
        if two > p.digit && two <= 16 && judged << (two + 2) <= 1 << 26 {
            p.digit = two;
        }
        let top = if n == 64 { 0 } else { 1u64 << (n - 1) };
        let c = self.add_imm(x.c, top.wrapping_sub(threshold));
        let msb_pub = self.bits_buf(Kind::PubBits, len);
        self.emit(Instr::BitOf { d: msb_pub, a: c, bit: n - 1 });
        let msb_sec = self.mask_bit(x.base, n - 1);
        let mut digits = Vec::new();
        let mut shift = p.ignore;
        while shift < n - 1 {
            let w = p.digit.min(n - 1 - shift);
            digits.push((shift, w));
            shift += w;
        }
        // (lt, eq) per digit, most significant first.
        let mut level: Vec<(Buf, Option<Buf>)> = Vec::new();
        for &(shift, w) in digits.iter().rev() {
            let (lt_t, eq_t) = self.mask_tables(x.base, shift, w);
            let lt = self.lookup(lt_t, c, shift, w);
            let eq = self.lookup(eq_t, c, shift, w);
            level.push((lt, Some(eq)));
        }
        // Every AND level but the last: the last gate is the caller's.
        while level.len() > 2 {
            let last_round = level.len() <= 2;
            let mut next = Vec::new();
            let mut it = level.chunks(2);
            for pair in &mut it {
                match pair {
                    [(lt_h, Some(eq_h)), (lt_l, eq_l)] => {
                        let need_eq = !last_round && eq_l.is_some();
                        let (carry, eq) = if need_eq {
                            let (c1, e1) = self.and_bits2(*eq_h, *lt_l, eq_l.expect("checked"));
                            (c1, Some(e1))
                        } else {
                            (self.and_bits(*eq_h, *lt_l), None)
                        };
                        next.push((self.xor_bits(*lt_h, carry), eq));
                    }
                    [single] => next.push(*single),
                    _ => unreachable!("only the lowest digit lacks an eq table"),
                }
            }
            level = next;
        }
        let last = match level.as_slice() {
            [] => Last::Zero,
            [(lt, _)] => Last::One(*lt),
            [(lt_h, Some(eq_h)), (lt_l, _)] => Last::Two { lt_h: *lt_h, eq_h: *eq_h, lt_l: *lt_l },
            _ => unreachable!("the loop leaves at most two digits, the higher with an eq"),
        };
        Tree { msb_pub, msb_sec, last }
    }

    fn lookup(&mut self, table: Buf, idx: Buf, shift: u8, width: u8) -> Buf {
        let d = self.bits_buf(Kind::Bits, self.len(idx));
        self.emit(Instr::Lookup { d, table, idx, shift, width });
        d
    }

    fn mask_bit(&mut self, base: Buf, bit: u8) -> Buf {
        let d = self.bits_buf(Kind::Bits, self.len(base));
        self.emit(Instr::DBit { d, a: base, bit });
        d
    }

    /// The dealer's comparison tables of one digit of a mask. Cached: every comparison of the
    /// same masked value reuses them.
    fn mask_tables(&mut self, base: Buf, shift: u8, width: u8) -> (Buf, Buf) {
        if let Some(&t) = self.tables_cache.get(&(base, shift, width)) {
            return t;
        }
        let n = self.len(base) << width;
        let lt = self.bits_buf(Kind::Bits, n);
        let eq = self.bits_buf(Kind::Bits, n);
        self.emit(Instr::DTable { lt, eq, a: base, shift, width });
        self.tables_cache.insert((base, shift, width), (lt, eq));
        (lt, eq)
    }

    /// Arithmetic shares (0/1 in Z_2^64) of XOR-shared bits.
    ///
    /// With a dealer bit `β` (XOR- and arithmetically shared), open `e = b ⊕ β`; then
    /// `b = e ? 1 - β : β`. Rounds: 1. Sends: 1 bit per element each way.
    pub fn b2a(&mut self, b: Buf) -> Buf {
        let (e, beta) = self.open_flip(b);
        let nb = self.neg(beta);
        let one_minus = self.add_imm(nb, 1);
        let d = self.buf(Kind::Share, self.len(b));
        self.emit(Instr::Sel { d, e, a: one_minus, b: beta });
        d
    }

    fn open_flip(&mut self, b: Buf) -> (Buf, Buf) {
        let n = self.len(b);
        let beta = self.dealer_bits(n);
        let beta_a = self.buf(Kind::Share, n);
        self.emit(Instr::DBit2A { d: beta_a, a: beta });
        let x = self.xor_bits(b, beta);
        let e = self.open_bits(x);
        (e, beta_a)
    }

    /// `b · y` for XOR-shared bits `b` and a masked `y`.
    ///
    /// Open `e = b ⊕ β`; `β·y = β·c - β·s` with `β·s` from the dealer; then
    /// `b·y = e ? y - β·y : β·y`. Rounds: 1. Sends: 1 bit per element each way. Dealer: 1
    /// correction word per element (2 if `y` was truncated) plus the bit.
    pub fn select(&mut self, b: Buf, y: &Masked) -> Buf {
        let (e, beta_a) = self.open_flip(b);
        let bc = self.mul_local(beta_a, y.c, 1);
        let mut bs = self.dprod(beta_a, y.base, 1);
        if let Some((pk, m)) = y.wrap {
            let p = self.dprod_low(beta_a, m, 1, y.wrap_bits());
            let q = self.mul_local(p, pk, 1);
            bs = self.sub(bs, q);
        }
        let by = self.sub(bc, bs);
        let ys = self.to_share(y);
        let y_minus = self.sub(ys, by);
        let d = self.buf(Kind::Share, self.len(b));
        self.emit(Instr::Sel { d, e, a: y_minus, b: by });
        d
    }

    /// `max(x / 2^t, 0)` (within 1.5 ulp when `t > 0`). Rounds: 1 (opening) + DReLU + 1 (select).
    pub fn relu(&mut self, x: Buf, t: u8) -> Buf {
        let m = self.masked_open(x, t);
        let b = self.drelu(&m, 0);
        self.select(b, &m)
    }

    /// Elementwise `max(a, b)` of shares, and the arithmetic shares (0/1) of `[a ≥ b]`.
    pub fn max_pair(&mut self, a: Buf, b: Buf) -> (Buf, Buf) {
        let diff = self.sub(a, b);
        // The comparison assumes |a − b| < 2^(bits−1); an opening one bit wider holds exactly
        // that (|x| < 2^(w−2)), so the difference is opened in bits + 1 bits, not 64.
        let w = (self.compare.bits + 1).min(64);
        let m = self.masked_open_w(diff, 0, w);
        let (bit, sel) = self.drelu_arith(&m, 0, Some(&m));
        (self.add(b, sel.expect("asked for the selection")), bit)
    }

    /// Maximum of each row of a `rows × len` share, as a tournament tree of `ceil(log2 len)`
    /// levels of [`Self::max_pair`], with the comparison parameters in
    /// [`ProgramBuilder::max_compare`]: the result is within `2^ignore` ring units of the true
    /// maximum (one of the row's values) for rows whose differences are below
    /// `2^(bits-1) - 2^ignore`.
    pub fn max_rows(&mut self, x: Buf, rows: u32, len: u32) -> Buf {
        self.with_compare(self.max_compare, |b| b.max_rows_with_current(x, rows, len))
    }

    fn max_rows_with_current(&mut self, x: Buf, rows: u32, len: u32) -> Buf {
        let (mut cur, mut cur_len) = (x, len);
        // When x is a truncation (attention's scores), the first level's differences are taken
        // before it and truncated by their own openings, in the round that truncates x: one
        // round fewer. Each difference of two values below 2^(w−2) must stay below 2^(w−2)
        // too, so those values get half the range (w one bit wider, up to 64), and below the
        // comparison's own 2^(bits−1) after the truncation, with a bit for the carry the
        // truncating opening may lose (w at most t + bits + 2).
        let mut raw = self.trunc_origin.get(&x).copied();
        while cur_len > 1 {
            let half = cur_len / 2;
            let row = cur_len as i64;
            let a = self.view(cur, 0, &[rows, half], &[row, 2]);
            let b = self.view(cur, 1, &[rows, half], &[row, 2]);
            let (m, _) = match raw.take() {
                Some((src, t, w)) => {
                    let ra = self.view(src, 0, &[rows, half], &[row, 2]);
                    let rb = self.view(src, 1, &[rows, half], &[row, 2]);
                    let diff = self.sub(ra, rb);
                    let w = (w + 1).min(t + self.compare.bits + 2).min(64);
                    let m = self.masked_open_w(diff, t, w);
                    let (bit, sel) = self.drelu_arith(&m, 0, Some(&m));
                    (self.add(b, sel.expect("asked for the selection")), bit)
                }
                None => self.max_pair(a, b),
            };
            if cur_len % 2 == 1 {
                let last = self.view(cur, cur_len - 1, &[rows, 1], &[row, 1]);
                cur = self.concat(&[(m, vec![rows, half]), (last, vec![rows, 1])], 1);
                cur_len = half + 1;
            } else {
                cur = m;
                cur_len = half;
            }
        }
        cur
    }
}
