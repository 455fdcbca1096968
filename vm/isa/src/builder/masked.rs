//! Masked openings and the products built on them (Beaver multiplication with reusable
//! openings, squares, matrix products, truncation).
//!
//! A [`Masked`] value is a secret `x` held as a public `c` both parties know and a sharing of a
//! mask `s` with `x = c - s`. Opening `x + r` for a fresh dealer mask `r` produces one; any
//! number of products can then use it, each paying only for dealer material, so a value that
//! feeds several products is opened once. The opening can also truncate: with `t > 0` the
//! masked value is `x >> t` (up to +1 ulp), which folds the truncation after a product into the
//! opening the next product needs anyway.

use super::ProgramBuilder;
use crate::operand::Buf;
use crate::ops::Instr;
use crate::program::Kind;

/// A secret value in masked form: `x = c - s` (`x >> t` when truncated), see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masked {
    /// Public part.
    pub c: Buf,
    /// Share of the mask.
    pub s: Buf,
    /// Bits truncated by the opening (0 = none).
    pub t: u8,
    /// Dealer-known mask base: `r` when `t = 0`, `r >> t` otherwise.
    pub base: Buf,
    /// When `t > 0`: the public wrap factor `pk` and dealer-known shares `m` of `msb(r)`, with
    /// `s = base - pk·m`.
    pub wrap: Option<(Buf, Buf)>,
}

impl ProgramBuilder {
    /// Opens `x + r` for a fresh dealer mask `r`, truncating by `t` bits when `t > 0`.
    /// Cached: opening the same buffer with the same `t` again returns the first opening.
    ///
    /// 1. Dealer: shares of `r`; when `t > 0` also of `r >> t` and `msb(r)`.
    /// 2. Both parties send their share of `x + r` (plus `2^62` from the client when `t > 0`,
    ///    so that the opened value is a non-negative integer below `2^63` for `|x| < 2^62`).
    /// 3. When `t > 0`: `c = (opened >> t) - 2^(62-t)` and `s = (r >> t) - pk·msb(r)` with
    ///    `pk = (1 - msb(opened))·2^(64-t)` correcting the wrap of `x + r` modulo `2^64`.
    ///
    /// Rounds: 1. Sends: 8 bytes per element each way. Dealer: nothing for `t = 0`, else two
    /// correction words per element. Error (t > 0): `c - s - (x >> t) ∈ {0, 1}` ulp, never more,
    /// for `|x| < 2^62`.
    pub fn masked_open(&mut self, x: Buf, t: u8) -> Masked {
        if let Some(m) = self.masked_cache.get(&(x, t)) {
            return m.clone();
        }
        assert!(self.kind(x).is_share_like(), "masked_open needs a share");
        let n = self.len(x);
        let r = self.buf(Kind::Share, n);
        self.emit(Instr::DMask { d: r });
        let mut y = self.add(x, r);
        if t > 0 {
            y = self.add_imm(y, 1 << 62);
        }
        let c = self.buf(Kind::Public, n);
        self.emit(Instr::Open { d: c, a: y, bits: 64 });
        let m = if t == 0 {
            Masked { c, s: r, t, base: r, wrap: None }
        } else {
            let rhi = self.buf(Kind::Share, n);
            let msb = self.buf(Kind::Share, n);
            self.emit(Instr::DTrunc { hi: rhi, msb, a: r, t });
            let c2 = self.buf(Kind::Public, n);
            let pk = self.buf(Kind::Public, n);
            let s = self.buf(Kind::Share, n);
            self.emit(Instr::TruncPost { c2, pk, s, c, rhi, m: msb, t });
            Masked { c: c2, s, t, base: rhi, wrap: Some((pk, msb)) }
        };
        self.masked_cache.insert((x, t), m.clone());
        m
    }

    /// The share `c - s` of a masked value (truncated when the opening truncated). Local.
    pub fn to_share(&mut self, m: &Masked) -> Buf {
        self.sub(m.c, m.s)
    }

    /// Truncates the share `x` by `t` bits (`x >> t` up to +1 ulp); see [`Self::masked_open`].
    ///
    /// Rounds: 1. Sends: 8 bytes per element each way.
    pub fn trunc(&mut self, x: Buf, t: u8) -> Buf {
        if t == 0 {
            return x;
        }
        let m = self.masked_open(x, t);
        self.to_share(&m)
    }

    /// Shares of `s_x · s_y` (`y` broadcast by `inner`), from dealer products of the masks.
    fn mask_product(&mut self, x: &Masked, y: &Masked, inner: u32) -> Buf {
        assert!(x.t as u32 + y.t as u32 <= 64, "truncations of both factors exceed 64 bits");
        let mut acc = self.dprod(x.base, y.base, inner);
        if let Some((pk_y, m_y)) = y.wrap {
            let p = self.dprod(x.base, m_y, inner);
            let q = self.mul_local(p, pk_y, inner);
            acc = self.sub(acc, q);
        }
        if let Some((pk_x, m_x)) = x.wrap {
            let p = self.dprod(m_x, y.base, inner);
            let q = self.mul_local(p, pk_x, 1);
            acc = self.sub(acc, q);
        }
        acc
    }

    /// Shares of the product of dealer-known `a` and `b` (`b` broadcast).
    pub fn dprod(&mut self, a: Buf, b: Buf, inner: u32) -> Buf {
        let d = self.buf(Kind::Share, self.len(a));
        self.emit(Instr::DProd { d, a, b, inner });
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
    /// Rounds: 1 (0 if both were opened before). Sends: 8 bytes per fresh operand element each
    /// way.
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
        let mut s2 = self.dprod(x.base, x.base, 1);
        if let Some((pk, m)) = x.wrap {
            assert!(2 * x.t as u32 <= 64, "square of a value truncated by more than 32 bits");
            let p = self.dprod(x.base, m, 1);
            let q = self.mul_local(p, pk, 1);
            let q2 = self.shl(q, 1);
            s2 = self.sub(s2, q2);
        }
        let a = self.sub(c2, cs2);
        self.add(a, s2)
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
        assert!(x.t == 0 && y.t == 0, "matmul operands must be opened without truncation");
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
