//! Local arithmetic and data movement: no communication, no dealer material.

use super::ProgramBuilder;
use crate::operand::{Buf, Dims, Strides};
use crate::ops::Instr;
use crate::program::Kind;
use crate::validate::combine;

impl ProgramBuilder {
    fn binary(&mut self, a: Buf, b: Buf, inner: u32, make: fn(Buf, Buf, Buf, u32) -> Instr) -> Buf {
        let kind = combine(self.kind(a), self.kind(b));
        let d = self.buf(kind, self.len(a));
        self.emit(make(d, a, b, inner));
        d
    }

    /// `a + b`, `b` broadcast as in the `add` instruction.
    pub fn add_b(&mut self, a: Buf, b: Buf, inner: u32) -> Buf {
        self.binary(a, b, inner, |d, a, b, inner| Instr::Add { d, a, b, inner })
    }

    /// `a + b` (same length).
    pub fn add(&mut self, a: Buf, b: Buf) -> Buf {
        self.add_b(a, b, 1)
    }

    /// `a - b`, `b` broadcast.
    pub fn sub_b(&mut self, a: Buf, b: Buf, inner: u32) -> Buf {
        self.binary(a, b, inner, |d, a, b, inner| Instr::Sub { d, a, b, inner })
    }

    /// `a - b` (same length).
    pub fn sub(&mut self, a: Buf, b: Buf) -> Buf {
        self.sub_b(a, b, 1)
    }

    /// Local product `a · b` (`b` broadcast); at most one operand may be a genuine share.
    pub fn mul_local(&mut self, a: Buf, b: Buf, inner: u32) -> Buf {
        self.binary(a, b, inner, |d, a, b, inner| Instr::Mul { d, a, b, inner })
    }

    /// `-a`.
    pub fn neg(&mut self, a: Buf) -> Buf {
        let d = self.buf(self.kind(a), self.len(a));
        self.emit(Instr::Neg { d, a });
        d
    }

    /// `a + imm`.
    pub fn add_imm(&mut self, a: Buf, imm: u64) -> Buf {
        let d = self.buf(self.kind(a), self.len(a));
        self.emit(Instr::AddImm { d, a, imm });
        d
    }

    /// `a · imm` (wrapping; pass a negative factor as `i64 as u64`).
    pub fn mul_imm(&mut self, a: Buf, imm: u64) -> Buf {
        let d = self.buf(self.kind(a), self.len(a));
        self.emit(Instr::MulImm { d, a, imm });
        d
    }

    /// `a · 2^bits` (exact rescaling up).
    pub fn shl(&mut self, a: Buf, bits: u8) -> Buf {
        if bits == 0 {
            return a;
        }
        let d = self.buf(self.kind(a), self.len(a));
        self.emit(Instr::Shl { d, a, bits });
        d
    }

    /// Local batched matrix product (see the `matmul` instruction).
    pub fn matmul_local(&mut self, a: Buf, b: Buf, batch: u32, m: u32, k: u32, n: u32) -> Buf {
        let kind = combine(self.kind(a), self.kind(b));
        let d = self.buf(kind, batch * m * n);
        self.emit(Instr::MatMul { d, a, b, batch, m, k, n });
        d
    }

    /// Sums the middle axis of an `outer × mid × inner` view.
    pub fn sum(&mut self, a: Buf, outer: u32, mid: u32, inner: u32) -> Buf {
        let d = self.buf(self.kind(a), outer * inner);
        self.emit(Instr::Sum { d, a, outer, mid, inner });
        d
    }

    /// Strided copy of `shape` elements from `a` into `d` (see the `copy` instruction).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_into(
        &mut self,
        d: Buf,
        d_off: u32,
        a: Buf,
        a_off: u32,
        shape: &[u32],
        ds: &[i64],
        as_: &[i64],
    ) {
        self.emit(Instr::Copy {
            d,
            d_off,
            a,
            a_off,
            shape: Dims(shape.to_vec()),
            d_strides: Strides(ds.to_vec()),
            a_strides: Strides(as_.to_vec()),
        });
    }

    /// A new buffer of `a`'s kind holding the strided view `a[off + x·strides]` for
    /// `x < shape`, row-major.
    pub fn view(&mut self, a: Buf, off: u32, shape: &[u32], strides: &[i64]) -> Buf {
        let n: u32 = shape.iter().product();
        let d = self.buf(self.kind(a), n);
        let ds = row_major_strides(shape);
        self.copy_into(d, 0, a, off, shape, &ds, strides);
        d
    }

    /// Permutes dimensions: output dim `i` is input dim `perm[i]`.
    pub fn transpose(&mut self, a: Buf, shape: &[u32], perm: &[usize]) -> Buf {
        let st = row_major_strides(shape);
        let out_shape: Vec<u32> = perm.iter().map(|&p| shape[p]).collect();
        let strides: Vec<i64> = perm.iter().map(|&p| st[p]).collect();
        self.view(a, 0, &out_shape, &strides)
    }

    /// Strided slice: per dim, `len[d]` elements from `start[d]` with step `step[d]`.
    pub fn slice(
        &mut self,
        a: Buf,
        shape: &[u32],
        start: &[u32],
        step: &[i64],
        len: &[u32],
    ) -> Buf {
        let st = row_major_strides(shape);
        let off: i64 = start.iter().zip(&st).map(|(&s, &t)| s as i64 * t).sum();
        let strides: Vec<i64> = step.iter().zip(&st).map(|(&s, &t)| s * t).collect();
        self.view(a, off as u32, len, &strides)
    }

    /// Broadcasts `a` of shape `from` (right-aligned, numpy rules) to shape `to`.
    pub fn broadcast(&mut self, a: Buf, from: &[u32], to: &[u32]) -> Buf {
        let st = row_major_strides(from);
        let pad = to.len() - from.len();
        let strides: Vec<i64> = (0..to.len())
            .map(|i| if i < pad || from[i - pad] == 1 { 0 } else { st[i - pad] })
            .collect();
        self.view(a, 0, to, &strides)
    }

    /// Concatenates buffers of the given shapes along `axis` (all must share one kind).
    pub fn concat(&mut self, parts: &[(Buf, Vec<u32>)], axis: usize) -> Buf {
        let mut out_shape = parts[0].1.clone();
        out_shape[axis] = parts.iter().map(|(_, s)| s[axis]).sum();
        let kind = self.kind(parts[0].0);
        let d = self.buf(kind, out_shape.iter().product());
        let ds = row_major_strides(&out_shape);
        let mut offset = 0u32;
        for (b, shape) in parts {
            let src = row_major_strides(shape);
            self.copy_into(d, offset * ds[axis] as u32, *b, 0, shape, &ds, &src);
            offset += shape[axis];
        }
        d
    }

    /// A fresh public buffer of `len` copies of `value`.
    pub fn splat(&mut self, value: u64, len: u32) -> Buf {
        self.constant(vec![value; len as usize])
    }

    /// Converts a share-like buffer (share or private) to a plain share buffer of the same
    /// values (no copy when it already is one).
    pub fn as_share(&mut self, a: Buf) -> Buf {
        assert!(self.kind(a).is_share_like(), "as_share needs a share or private buffer");
        if self.kind(a) == Kind::Share {
            return a;
        }
        let d = self.buf(Kind::Share, self.len(a));
        let n = self.len(a);
        self.copy_into(d, 0, a, 0, &[n], &[1], &[1]);
        d
    }
}

/// Row-major strides of a shape.
pub fn row_major_strides(shape: &[u32]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1] as i64;
    }
    s
}
