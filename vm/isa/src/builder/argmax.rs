//! Secure argmax with index tracking and the one-hot encoding of a secret index: what greedy
//! decoding needs to pick the next token and gather its embedding without revealing it.

use super::{CompareParams, ProgramBuilder};
use crate::operand::Buf;

/// Bits of an opening that carries differences of indices below `len` (|d| < 2^(w-2)).
fn index_width(len: u32) -> u8 {
    (34 - len.max(2).leading_zeros()).clamp(4, 62) as u8
}

impl ProgramBuilder {
    /// The maximum of each row of a `rows × len` share and the index of its first occurrence
    /// (a share of an integer, scale 0), by a tournament that carries each candidate's index
    /// with its value.
    ///
    /// Each of the `ceil(log2 len)` levels compares disjoint pairs (left = lower indices, which
    /// wins ties) with `params` and selects value and index by the same comparison bit; the
    /// index difference is opened narrowly (a few bits) in the same round as the value
    /// difference. Rounds per level: 1 opening + DReLU + 1 (both selects). Sends per pair: the
    /// value opening (8 bytes), the index opening (`index_width` bits), DReLU, 2 select bits.
    pub fn argmax_rows(
        &mut self,
        x: Buf,
        rows: u32,
        len: u32,
        params: CompareParams,
    ) -> (Buf, Buf) {
        self.with_compare(params, |b| b.argmax_rows_with_current(x, rows, len))
    }

    /// [`Self::argmax_rows`] with the comparison parameters in force.
    fn argmax_rows_with_current(&mut self, x: Buf, rows: u32, len: u32) -> (Buf, Buf) {
        let positions: Vec<u64> = (0..rows).flat_map(|_| 0..len as u64).collect();
        let pub_idx = self.constant(positions);
        let x = self.as_share(x);
        let zero = self.mul_imm(x, 0);
        let mut idx = self.add(zero, pub_idx);
        let (mut cur, mut cur_len) = (x, len);
        let w = index_width(len);
        while cur_len > 1 {
            let half = cur_len / 2;
            let row = cur_len as i64;
            let a = self.view(cur, 0, &[rows, half], &[row, 2]);
            let b = self.view(cur, 1, &[rows, half], &[row, 2]);
            let ia = self.view(idx, 0, &[rows, half], &[row, 2]);
            let ib = self.view(idx, 1, &[rows, half], &[row, 2]);
            let diff = self.sub(a, b);
            let m = self.masked_open(diff, 0);
            let idiff = self.sub(ia, ib);
            let mi = self.masked_open_w(idiff, 0, w);
            let bit = self.drelu(&m, 0);
            let sel = self.select(bit, &m);
            let isel = self.select(bit, &mi);
            let mut val = self.add(b, sel);
            let mut ix = self.add(ib, isel);
            if cur_len % 2 == 1 {
                let last = self.view(cur, cur_len - 1, &[rows, 1], &[row, 1]);
                let ilast = self.view(idx, cur_len - 1, &[rows, 1], &[row, 1]);
                val = self.concat(&[(val, vec![rows, half]), (last, vec![rows, 1])], 1);
                ix = self.concat(&[(ix, vec![rows, half]), (ilast, vec![rows, 1])], 1);
                cur_len = half + 1;
            } else {
                cur_len = half;
            }
            cur = val;
            idx = ix;
        }
        (cur, idx)
    }

    /// Each row of a `rows × len` share with every entry below the row's `k`-th largest
    /// lowered by `big` (ring units of `x`; entries equal to it are kept): top-k filtering
    /// before sampling. `k - 1` rounds of argmax remove the largest entries (each lowered by
    /// `big` through its one-hot), a last tournament gives the `k`-th largest `t`, and one
    /// comparison `[x ≥ t]` per entry decides. Needs the row's range below `big` and
    /// `|x| < 2^(params.bits - 2)`.
    pub fn keep_top_k(
        &mut self,
        x: Buf,
        rows: u32,
        len: u32,
        k: u32,
        params: CompareParams,
        big: u64,
    ) -> Buf {
        let x = self.as_share(x);
        let mut cur = x;
        for _ in 1..k.min(len) {
            let (_, idx) = self.argmax_rows(cur, rows, len, params);
            let oh = self.one_hot_secret(idx, len);
            let drop = self.mul_imm(oh, big);
            cur = self.sub(cur, drop);
        }
        let (t, _) = self.argmax_rows(cur, rows, len, params);
        let diff = self.sub_b(x, t, len);
        let m = self.masked_open(diff, 0);
        let (keep, _) = self.with_compare(params, |b| b.drelu_arith(&m, 0, None));
        let lift = self.mul_imm(keep, big);
        let lowered = self.add_imm(x, big.wrapping_neg());
        self.add(lowered, lift)
    }

    /// Shares of `[idx_i ≥ j]` for `j = 1 ..= t` (`n × t`, 0/1 at scale 0) for a share of
    /// integers `idx`: one `w`-bit opening of `idx − j` per entry and an exact DReLU, valid for
    /// `|idx − j| < 2^(w−2)`. The thresholds are one row (`−1 … −t`) broadcast over the rows,
    /// so a shorter one is its prefix (what a pruned program's lengths need).
    pub(super) fn at_least(&mut self, idx: Buf, t: u32, w: u8) -> Buf {
        let n = self.len(idx);
        let idx = self.as_share(idx);
        let wide = self.broadcast(idx, &[n, 1], &[n, t]);
        let row: Vec<u64> = (1..=t as u64).map(|j| j.wrapping_neg()).collect();
        let row = self.constant(row);
        let y = self.add_b(wide, row, 1);
        let m = self.masked_open_w(y, 0, w);
        let params = CompareParams { bits: w, ignore: 0, digit: 4 };
        // The conversion to arithmetic shares rides the comparison's last AND round.
        self.with_compare(params, |b| b.drelu_arith(&m, 0, None).0)
    }

    /// Shares of `one_hot(idx, depth)` (`n × depth`, 0/1 at scale 0) for a secret integer index
    /// share `idx` of `n` elements, assumed in `[0, depth)`.
    ///
    /// `[idx ≥ j]` for `j = 1 … depth-1` from one narrow opening of `idx - j` each (exact
    /// comparisons: no ignored bits), then `one_hot_j = [idx ≥ j] - [idx ≥ j+1]` locally with
    /// `[idx ≥ 0] = 1`, `[idx ≥ depth] = 0`. Rounds: 1 opening + DReLU (the bit becomes a ring
    /// share in its last AND round). Sends per element and threshold: `index_width(depth)`
    /// bits + the DReLU's.
    pub fn one_hot_secret(&mut self, idx: Buf, depth: u32) -> Buf {
        let n = self.len(idx);
        let idx = self.as_share(idx);
        // Fresh buffers may be reused storage: zeros are made, not declared.
        let zero = self.mul_imm(idx, 0);
        let one_pub = self.splat(1, n);
        let one = self.add(zero, one_pub);
        if depth == 1 {
            return one;
        }
        let t = depth - 1;
        let ge = self.at_least(idx, t, index_width(depth));
        let hi = self.concat(&[(one, vec![n, 1]), (ge, vec![n, t])], 1);
        let lo = self.concat(&[(ge, vec![n, t]), (zero, vec![n, 1])], 1);
        self.sub(hi, lo)
    }
}
