//! Masked openings and the products built on them (Beaver multiplication with reusable
//! openings, squares, matrix products, truncation).
//!
//! A [`Masked`] value is a secret `x` held as a public `c` both parties know and a sharing of a
//! mask `s` with `x = c - s`. Opening `x + r` for a fresh dealer mask `r` produces one; any
//! number of products can then use it, each paying only for dealer material, so a value that
//! feeds several products is opened once. The opening can also truncate: with `t > 0` the
//! masked value is `x / 2^t` (within 1.5 ulp), which folds the truncation after a product into the
//! opening the next product needs anyway, and sends only the bits it keeps.

use super::ProgramBuilder;
use crate::operand::Buf;
use crate::ops::Instr;
use crate::program::Kind;

impl Masked {
    /// The bits of a product with the wrap bit `m` that matter once multiplied by the wrap
    /// factor `pk`, a multiple of `2^(w-t)`.
    pub fn wrap_bits(&self) -> u8 {
        64 - (self.w - self.t)
    }
}

/// A secret value in masked form: `x = c - s` (`x / 2^t` within 1.5 ulp when truncated), see
/// the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masked {
    /// Public part.
    pub c: Buf,
    /// Share of the mask.
    pub s: Buf,
    /// Bits truncated by the opening (0 = none).
    pub t: u8,
    /// Width of the opening: `x + r` was opened modulo `2^w` (64 = the whole ring).
    pub w: u8,
    /// Dealer-known mask base: `r` when `t = 0`, `r >> t` otherwise.
    pub base: Buf,
    /// When `t > 0`: the public wrap factor `pk` and dealer-known shares `m` of `msb(r)`, with
    /// `s = base - pk·m`.
    pub wrap: Option<(Buf, Buf)>,
}

impl ProgramBuilder {
    /// Opens `x + r` over the whole ring for a fresh dealer mask `r`, truncating by `t` bits
    /// when `t > 0`; see [`Self::masked_open_w`]. Requires `|x| < 2^62` (`2^62 - 2^(t+1)` when
    /// truncating).
    pub fn masked_open(&mut self, x: Buf, t: u8) -> Masked {
        self.masked_open_w(x, t, 64)
    }

    /// Opens `x + r mod 2^w` for a fresh dealer mask `r`, truncating by `t` bits.
    /// Cached: opening the same buffer with the same `t` and `w` again returns the first
    /// opening.
    ///
    /// 1. Dealer: shares of `r`; unless `w = 64` and `t = 0`, also of `(r mod 2^w) >> t` and
    ///    bit `w-1` of `r`.
    /// 2. Both parties send bits `t..w` of their share of `x + r` (plus `2^(w-2) + 2^(t-1)`
    ///    from the client, `2^(w-2)` when `t = 0`): the low `t` bits, which the truncation
    ///    drops, are not sent. The sum of the two high parts is `x' + r mod 2^w` without its
    ///    low bits and less the carry out of them, with `0 ≤ x' < 2^(w-1)`.
    /// 3. `c = (opened >> t) - 2^(w-2-t)` and `s = ((r mod 2^w) >> t) - pk·bit(r, w-1)` with
    ///    `pk = (1 - bit(opened, w-1))·2^(w-t)` correcting the wrap of `x' + r` modulo `2^w`.
    ///
    /// Rounds: 1. Sends: `w - t` bits per element each way. Dealer: nothing for `w = 64, t = 0`,
    /// else two correction words per element. Error: none for `t = 0`; for `t > 0`,
    /// `c - s` is within 1.5 ulp of `x / 2^t` and unbiased to `2^-(t+1)` ulp (the dropped low
    /// parts, 2^t on average, are what the client's `2^(t-1)` and the mask's low bits make up), for
    /// `|x| < 2^(w-2) - 2^(t+1)`: a narrower opening is cheaper but trusts a tighter bound.
    pub fn masked_open_w(&mut self, x: Buf, t: u8, w: u8) -> Masked {
        if let Some(m) = self.masked_cache.get(&(x, t, w)) {
            return m.clone();
        }
        assert!(self.kind(x).is_share_like(), "masked_open needs a share");
        // A truncating opening loses up to 2^(t+1) with the carry of its dropped bits: below
        // t + 4 bits its domain |x| < 2^(w-2) - 2^(t+1) would be (nearly) empty.
        let least = if t > 0 { t as u32 + 4 } else { 3 };
        assert!(
            (least..=64).contains(&(w as u32)),
            "bad opening width {w} for truncation {t} (at least {least})"
        );
        let n = self.len(x);
        let r = self.buf(Kind::Share, n);
        self.emit(Instr::DMask { d: r });
        let mut y = self.add(x, r);
        let plain = t == 0 && w == 64;
        if !plain {
            // The low t bits are not sent (trunc_post never reads them); the sum of the two
            // shares' dropped parts, 2^t on average, is taken back by adding half of it
            // twice over here: r's own low bits supply the other half.
            let centre = if t > 0 { 1u64 << (t - 1) } else { 0 };
            y = self.add_imm(y, (1 << (w - 2)) + centre);
        }
        let c = self.buf(Kind::Public, n);
        self.emit(Instr::Open { d: c, a: y, bits: w, lo: t });
        let m = if plain {
            Masked { c, s: r, t, w, base: r, wrap: None }
        } else {
            let rhi = self.buf(Kind::Share, n);
            let msb = self.buf(Kind::Share, n);
            self.emit(Instr::DTrunc { hi: rhi, msb, a: r, t, w });
            let c2 = self.buf(Kind::Public, n);
            let pk = self.buf(Kind::Public, n);
            let s = self.buf(Kind::Share, n);
            self.emit(Instr::TruncPost { c2, pk, s, c, rhi, m: msb, t, w });
            Masked { c: c2, s, t, w, base: rhi, wrap: Some((pk, msb)) }
        };
        self.masked_cache.insert((x, t, w), m.clone());
        m
    }

    /// The share `c - s` of a masked value (truncated when the opening truncated). Local.
    pub fn to_share(&mut self, m: &Masked) -> Buf {
        self.sub(m.c, m.s)
    }

    /// Truncates the share `x` by `t` bits (`x / 2^t` within 1.5 ulp); see
    /// [`Self::masked_open_w`].
    ///
    /// Rounds: 1. Sends: `64 - t` bits per element each way.
    pub fn trunc(&mut self, x: Buf, t: u8) -> Buf {
        self.trunc_w(x, t, 64)
    }

    /// As [`Self::trunc`], opening modulo `2^w` (see [`Self::masked_open_w`]). Cached: the
    /// same truncation again returns the same buffer.
    pub fn trunc_w(&mut self, x: Buf, t: u8, w: u8) -> Buf {
        if t == 0 {
            return x;
        }
        if let Some(&b) = self.trunc_cache.get(&(x, t, w)) {
            return b;
        }
        let m = self.masked_open_w(x, t, w);
        let b = self.to_share(&m);
        self.trunc_cache.insert((x, t, w), b);
        self.trunc_origin.insert(b, (x, t, w));
        b
    }

    /// Shares of `s_x · s_y` (`y` broadcast by `inner`), from dealer products of the masks:
    /// `s = base - pk·m` for each, so
    /// `s_x s_y = bx·by - pk_y·(bx·m_y) - pk_x·(m_x·by) + pk_x pk_y·(m_x·m_y)`, where the last term
    /// vanishes in Z_2^64 when `(w_x - t_x) + (w_y - t_y) ≥ 64`.
    fn mask_product(&mut self, x: &Masked, y: &Masked, inner: u32) -> Buf {
        let mut acc = self.dprod(x.base, y.base, inner);
        if let Some((pk_y, m_y)) = y.wrap {
            let p = self.dprod_low(x.base, m_y, inner, y.wrap_bits());
            let q = self.mul_local(p, pk_y, inner);
            acc = self.sub(acc, q);
        }
        if let Some((pk_x, m_x)) = x.wrap {
            let p = self.dprod_low(m_x, y.base, inner, x.wrap_bits());
            let q = self.mul_local(p, pk_x, 1);
            acc = self.sub(acc, q);
        }
        if let (Some((pk_x, m_x)), Some((pk_y, m_y))) = (x.wrap, y.wrap) {
            if ((x.w - x.t) as u32 + (y.w - y.t) as u32) < 64 {
                let bits = 64 - (x.w - x.t) - (y.w - y.t);
                let mm = self.dprod_low(m_x, m_y, inner, bits);
                let pp = self.mul_local(pk_x, pk_y, inner);
                let q = self.mul_local(mm, pp, 1);
                acc = self.add(acc, q);
            }
        }
        acc
    }

    /// Shares of the product of dealer-known `a` and `b` (`b` broadcast).
    pub fn dprod(&mut self, a: Buf, b: Buf, inner: u32) -> Buf {
        self.dprod_low(a, b, inner, 64)
    }

    /// As [`Self::dprod`], correct modulo `2^bits` only: for a product the caller multiplies
    /// by a multiple of `2^(64-bits)` (a wrap factor), so the dealer sends less.
    pub fn dprod_low(&mut self, a: Buf, b: Buf, inner: u32, bits: u8) -> Buf {
        if let Some(&d) = self.dprod_cache.get(&(a, b, inner, bits)) {
            return d;
        }
        let d = self.buf(Kind::Share, self.len(a));
        self.emit(Instr::DProd { d, a, b, inner, bits });
        self.dprod_cache.insert((a, b, inner, bits), d);
        d
    }

    /// Product of two masked values (`y` broadcast by `inner`); the result carries the sum of
    /// their fractional bits.
    ///
    /// `x·y = cx·cy - cx·sy - cy·sx + sx·sy`, the last term from dealer products of the masks.
    /// Rounds: 0 (given the openings). Dealer: 1 correction word per element (3 when both
    /// openings truncated).
    pub fn mul_masked(&mut self, x: &Masked, y: &Masked, inner: u32) -> Buf {
        let t1 = self.mul_local(x.c, y.c, inner);
        let t2 = self.mul_local(x.c, y.s, inner);
        let t3 = self.mul_local(x.s, y.c, inner);
        let sxy = self.mask_product(x, y, inner);
        let a = self.sub(t1, t2);
        let b = self.sub(a, t3);
        self.add(b, sxy)
    }

    /// Beaver multiplication of shares `x >> tx` and `y >> ty` (`y` broadcast by `inner`):
    /// masked openings (reused when cached) and a local product.
    ///
    /// Rounds: 1 (0 if both were opened before). Sends: `64 - t` bits per fresh operand element
    /// each way.
    pub fn mul(&mut self, x: Buf, tx: u8, y: Buf, ty: u8, inner: u32) -> Buf {
        let mx = self.masked_open(x, tx);
        let my = self.masked_open(y, ty);
        self.mul_masked(&mx, &my, inner)
    }

    /// Square of a masked value: `c² - 2c·s + s²`.
    ///
    /// Rounds: 0 (given the opening). Dealer: 1 correction word per element (2 if truncated).
    pub fn square_masked(&mut self, x: &Masked) -> Buf {
        let c2 = self.mul_local(x.c, x.c, 1);
        let cs = self.mul_local(x.c, x.s, 1);
        let cs2 = self.shl(cs, 1);
        let (s2, _) = self.mask_square(x);
        let a = self.sub(c2, cs2);
        self.add(a, s2)
    }

    /// Shares of `s²` for the mask `s = base − pk·m` of `x` (just `base²` without a wrap):
    /// `base² − 2pk·(base·m) + pk²·m`, `m` a bit so `m² = m`, and the `pk²` term vanishing
    /// in Z_2^64 once `2(w − t) ≥ 64`; also `pk²` when that term is there. Its dealer
    /// products are cached, so a square and a cube of one opening share them.
    fn mask_square(&mut self, x: &Masked) -> (Buf, Option<Buf>) {
        let mut s2 = self.dprod(x.base, x.base, 1);
        let mut pk2 = None;
        if let Some((pk, m)) = x.wrap {
            let p = self.dprod_low(x.base, m, 1, x.wrap_bits());
            let q = self.mul_local(p, pk, 1);
            let q2 = self.shl(q, 1);
            s2 = self.sub(s2, q2);
            if (2 * (x.w - x.t) as u32) < 64 {
                let pp = self.mul_local(pk, pk, 1);
                let q = self.mul_local(m, pp, 1);
                s2 = self.add(s2, q);
                pk2 = Some(pp);
            }
        }
        (s2, pk2)
    }

    /// Cube of a masked value: `c³ − 3c²·s + 3c·s² − s³`, with `s = base − pk·m` after a
    /// truncating opening, so `s² = base² − 2pk·(base·m) + pk²·m` and
    /// `s³ = base³ − 3pk·(base²·m) + 3pk²·(base·m) − pk³·m` (`m` a bit, so `m^j = m`; the
    /// powers of `pk`, a multiple of `2^(w−t)`, vanish in Z_2^64 once their exponent reaches
    /// 64). The result carries three times the opening's fractional bits.
    ///
    /// Rounds: 0 (given the opening). Dealer: 2 correction words per element (`base²` shared
    /// with a square of the same opening, `base³`), 2 narrow ones if truncated.
    pub fn cube_masked(&mut self, x: &Masked) -> Buf {
        let c2 = self.mul_local(x.c, x.c, 1);
        let c3 = self.mul_local(c2, x.c, 1);
        let (s2, pk2) = self.mask_square(x);
        let b2 = self.dprod(x.base, x.base, 1);
        let mut s3 = self.dprod(b2, x.base, 1);
        if let Some((pk, m)) = x.wrap {
            let span = (x.w - x.t) as u32;
            // The same (cached) dealer product as in `mask_square`.
            let bm = self.dprod_low(x.base, m, 1, x.wrap_bits());
            let b2m = self.dprod_low(b2, m, 1, x.wrap_bits());
            let pk_b2m = self.mul_local(b2m, pk, 1);
            let pk_b2m3 = self.mul_imm(pk_b2m, 3);
            s3 = self.sub(s3, pk_b2m3);
            if let Some(pp) = pk2 {
                let ppbm = self.mul_local(bm, pp, 1);
                let ppbm3 = self.mul_imm(ppbm, 3);
                s3 = self.add(s3, ppbm3);
                if 3 * span < 64 {
                    let ppp = self.mul_local(pp, pk, 1);
                    let pppm = self.mul_local(m, ppp, 1);
                    s3 = self.sub(s3, pppm);
                }
            }
        }
        // c³ − 3c²·s + 3c·s² − s³
        let c2s = self.mul_local(x.s, c2, 1);
        let c2s3 = self.mul_imm(c2s, 3);
        let cs2 = self.mul_local(s2, x.c, 1);
        let cs23 = self.mul_imm(cs2, 3);
        let a = self.sub(c3, c2s3);
        let a = self.add(a, cs23);
        self.sub(a, s3)
    }

    /// `a·z²` for masked values `a` and `z` of the same length, from their openings alone (no
    /// opening of `z²`), given `zz`, the shares of `z²` from z's opening
    /// ([`Self::square_masked`]): `ca·z² − sa·cz² + 2cz·(sa·sz) − sa·sz²`, where `sa·sz²`, with
    /// `s = base − pk·m` for each truncating opening, expands to dealer products of the bases and
    /// wrap bits times public powers of the wrap factors (the terms whose power of `2^(w−t)`
    /// reaches 2^64 vanish). The result carries `a`'s fractional bits plus twice `z`'s.
    ///
    /// Rounds: 0 (given the openings). Dealer: 2 correction words per element without wraps
    /// (`sa·sz`, `sa·sz²`; `sz²` shared with a square of `z`), up to 7 narrow ones with them.
    pub fn mul_square_masked(&mut self, a: &Masked, z: &Masked, zz: Buf) -> Buf {
        assert_eq!(self.len(a.c), self.len(z.c), "mul_square_masked needs equal lengths");
        let cz2 = self.mul_local(z.c, z.c, 1);
        let sasz = self.mask_product(a, z, 1);
        let sasz2 = self.mask_times_square(a, z);
        let t1 = self.mul_local(zz, a.c, 1);
        let t2 = self.mul_local(a.s, cz2, 1);
        let t3 = self.mul_local(sasz, z.c, 1);
        let t3 = self.shl(t3, 1);
        let acc = self.sub(t1, t2);
        let acc = self.add(acc, t3);
        self.sub(acc, sasz2)
    }

    /// Shares of `sa·sz²` for the masks of `a` and `z` (see [`Self::mul_square_masked`]):
    /// with `sa = Ba − Pa·Ma` and `sz² = Bz² − 2Pz·(Bz·Mz) + Pz²·Mz` (`M` a bit),
    /// `Ba·Bz² − 2Pz·(Ba·Bz·Mz) + Pz²·(Ba·Mz) − Pa·(Ma·Bz²) + 2PaPz·(Ma·Bz·Mz) − PaPz²·(Ma·Mz)`,
    /// each dealer product needed only modulo 2^64 over its public factor's power of two.
    fn mask_times_square(&mut self, a: &Masked, z: &Masked) -> Buf {
        // Span of a wrap factor: `pk` is a multiple of 2^span.
        let span = |m: &Masked| (m.w - m.t) as u32;
        // Bits of a dealer product that survive a factor `Pa^i·Pz^j`, if any.
        let bits = |i: u32, j: u32| -> Option<u8> {
            let gone =
                i * span(a) * (a.wrap.is_some() as u32) + j * span(z) * (z.wrap.is_some() as u32);
            (gone < 64).then(|| (64 - gone) as u8)
        };
        let bz2 = self.dprod(z.base, z.base, 1);
        let mut acc = self.dprod(a.base, bz2, 1);
        if let Some((pz, mz)) = z.wrap {
            if let Some(b) = bits(0, 1) {
                let bzmz = self.dprod_low(z.base, mz, 1, b);
                let t = self.dprod_low(a.base, bzmz, 1, b);
                let t = self.mul_local(t, pz, 1);
                let t = self.shl(t, 1);
                acc = self.sub(acc, t);
            }
            if let Some(b) = bits(0, 2) {
                let t = self.dprod_low(a.base, mz, 1, b);
                let pz2 = self.mul_local(pz, pz, 1);
                let t = self.mul_local(t, pz2, 1);
                acc = self.add(acc, t);
            }
        }
        if let Some((pa, ma)) = a.wrap {
            if let Some(b) = bits(1, 0) {
                let t = self.dprod_low(ma, bz2, 1, b);
                let t = self.mul_local(t, pa, 1);
                acc = self.sub(acc, t);
            }
            if let Some((pz, mz)) = z.wrap {
                if let Some(b) = bits(1, 1) {
                    let bzmz = self.dprod_low(z.base, mz, 1, bits(0, 1).unwrap_or(b));
                    let t = self.dprod_low(ma, bzmz, 1, b);
                    let papz = self.mul_local(pa, pz, 1);
                    let t = self.mul_local(t, papz, 1);
                    let t = self.shl(t, 1);
                    acc = self.add(acc, t);
                }
                if let Some(b) = bits(1, 2) {
                    let t = self.dprod_low(ma, mz, 1, b);
                    let papz = self.mul_local(pa, pz, 1);
                    let papz2 = self.mul_local(papz, pz, 1);
                    let t = self.mul_local(t, papz2, 1);
                    acc = self.sub(acc, t);
                }
            }
        }
        acc
    }

    /// Square of the share `x >> t`. Rounds: 1 (0 if opened before).
    pub fn square(&mut self, x: Buf, t: u8) -> Buf {
        let m = self.masked_open(x, t);
        self.square_masked(&m)
    }

    /// Batched matrix product of masked, untruncated operands (see the `matmul` instruction
    /// for `batch`, `m`, `k`, `n`; either operand may be shared across the batch).
    ///
    /// `X·Y = Cx·(Cy - Sy) - Sx·Cy + Rx·Ry`: two local matrix products per party and one dealer
    /// matrix product. Rounds: 0 (given the openings). Dealer: `batch·m·n` correction words.
    pub fn matmul_masked(
        &mut self,
        x: &Masked,
        y: &Masked,
        batch: u32,
        m: u32,
        k: u32,
        n: u32,
    ) -> Buf {
        assert!(
            x.wrap.is_none() && y.wrap.is_none(),
            "matmul operands must be opened over the whole ring without truncation"
        );
        let y_share = self.to_share(y);
        let t1 = self.matmul_local(x.c, y_share, batch, m, k, n);
        let t2 = self.matmul_local(x.s, y.c, batch, m, k, n);
        let rr = self.buf(Kind::Share, batch * m * n);
        self.emit(Instr::DMatMul { d: rr, a: x.base, b: y.base, batch, m, k, n });
        let a = self.sub(t1, t2);
        self.add(a, rr)
    }

    /// Batched matrix product of the shares `x` and `y` (Beaver with matrix triples).
    ///
    /// Rounds: 1 (0 if both were opened before). Sends: 8 bytes per element of each fresh
    /// operand each way.
    pub fn matmul(&mut self, x: Buf, y: Buf, batch: u32, m: u32, k: u32, n: u32) -> Buf {
        let mx = self.masked_open(x, 0);
        let my = self.masked_open(y, 0);
        self.matmul_masked(&mx, &my, batch, m, k, n)
    }
}
