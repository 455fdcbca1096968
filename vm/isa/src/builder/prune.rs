//! Encrypted token pruning: which tokens stay (a secret comparison of importance scores with a
//! public threshold), oblivious compaction of the kept rows to the front in their order, the
//! revealed count, and `setlen`.
//!
//! Only the count is opened in the clear. The comparison and the one-hot positions are
//! computed on fresh masks (narrow openings of masked differences, dealer comparison tables),
//! so each party's messages are uniform whatever tokens are kept.

use super::{CompareParams, Item, ProgramBuilder, Section};
use crate::operand::Buf;
use crate::ops::Instr;
use crate::program::Kind;

/// Fractional bits of a pruning threshold in [`ProgramBuilder::prune_keep`].
pub const THETA_BITS: u8 = 24;
/// Where compaction sends a dropped token: past every position (tokens < 2^14).
const DROPPED: u64 = 1 << 14;
/// Opening width for the position comparisons: |idx - t| < 2^15 = 2^(w-2).
const POS_WIDTH: u8 = 17;
/// Digit width of the keep comparison (49 compared bits: 4 digits, 2 AND rounds).
const KEEP_DIGIT: u8 = 13;

/// The kept tokens' destination matrix, opened once for every compacted tensor.
pub struct Compaction {
    /// `Qᵀ` (`n × n`, 0/1 integers, scale 0): row `t` selects the token that lands at `t`.
    q: super::Masked,
    /// `Qᵀ` as a share, for public operands.
    qt: Buf,
    /// Sequence length before pruning.
    n: u32,
    /// Number of kept tokens, shared (scale 0).
    pub count: Buf,
}

impl ProgramBuilder {
    /// Inclusive prefix sum along the middle axis of an `outer × mid × inner` view. Local.
    pub fn cumsum(&mut self, a: Buf, outer: u32, mid: u32, inner: u32) -> Buf {
        let d = self.buf(self.kind(a), self.len(a));
        self.emit(Instr::CumSum { d, a, outer, mid, inner });
        d
    }

    /// Which of `n` tokens stay: `keep_j = [S_j·2^g ≥ θ_g·T]` where `S` (`n` values) is the
    /// attention each token receives, `T` (one value) their total (both shares at any common
    /// scale whose magnitude stays below 2^30) and `θ_g` the threshold with [`THETA_BITS`]
    /// fractional bits, i.e. the token's mean attention is at least θ. The first `protect`
    /// tokens always stay, and θ = 0 keeps every token without a comparison (a mean attention
    /// is never below 0, but the fixed-point score of a token no one attends to may come out
    /// a few ulps below it: each probability's truncation is within 1.5 ulp either way).
    /// Returns shares of 0/1 (scale 0).
    ///
    /// Rounds: one opening and a DReLU (58-bit) of two AND rounds, the conversion to
    /// arithmetic shares fused with the last; none for θ = 0. No constant depends on `n`
    /// except prefixes.
    pub fn prune_keep(&mut self, s: Buf, total: Buf, theta_g: u64, protect: u32) -> Buf {
        let n = self.len(s);
        let s = self.as_share(s);
        if theta_g == 0 {
            let zero = self.mul_imm(s, 0);
            return self.add_imm(zero, 1);
        }
        let total = self.as_share(total);
        let scaled = self.shl(s, THETA_BITS);
        let bar = self.mul_imm(total, theta_g);
        let x = self.sub_b(scaled, bar, 1);
        let m = self.masked_open(x, 0);
        // One comparison per token: wide digits cost little table (4 digits of 13 bits,
        // 8 KB of dealer bits per token) and take the digit tree from 4 AND rounds to 2.
        let params = CompareParams { bits: 58, ignore: 8, digit: KEEP_DIGIT };
        let (keep, _) = self.with_compare(params, |b| b.drelu_arith(&m, 0, None));
        if protect == 0 {
            return keep;
        }
        // keep·[j ≥ P] + [j < P]: prefix-stable constants (the same start at every length).
        let first: Vec<u64> = (0..n).map(|j| (j < protect) as u64).collect();
        let rest: Vec<u64> = first.iter().map(|&f| 1 - f).collect();
        let first = self.constant(first);
        let rest = self.constant(rest);
        let kept = self.mul_local(keep, rest, 1);
        self.add(kept, first)
    }

    /// `[idx_j == t]` for `t < depth` (`n × depth`, 0/1, scale 0) for shares of integers
    /// `0 ≤ idx < 2^15`; rows with `idx ≥ depth` are zero.
    ///
    /// `[idx ≥ t]` for `t = 1 ..= depth` (`at_least`, [`POS_WIDTH`]-bit openings), then
    /// differences of neighbours.
    pub fn one_hot_bounded(&mut self, idx: Buf, depth: u32) -> Buf {
        let n = self.len(idx);
        let idx = self.as_share(idx);
        let ge = self.at_least(idx, depth, POS_WIDTH);
        // hi = [1, ge_1 … ge_depth] cut to depth columns; one_hot_t = hi_t − ge_{t+1}.
        let zero = self.mul_imm(idx, 0);
        let one = self.add_imm(zero, 1);
        let hi = self.concat(&[(one, vec![n, 1]), (ge, vec![n, depth])], 1);
        let hi = self.view(hi, 0, &[n, depth], &[depth as i64 + 1, 1]);
        self.sub(hi, ge)
    }

    /// Plans the compaction of `n` tokens by the shared 0/1 `keep` (from
    /// [`ProgramBuilder::prune_keep`]): kept token `j` goes to position `Σ_{i<j} keep_i`.
    ///
    /// Cost: `n²` comparisons of [`POS_WIDTH`] bits (two-ish rounds), one opening of the
    /// `n × n` destination matrix (shared by every tensor compacted with it).
    pub fn compaction(&mut self, keep: Buf) -> Compaction {
        let n = self.len(keep);
        let incl = self.cumsum(keep, 1, n, 1);
        let before = self.sub(incl, keep);
        // Dropped tokens go past the end: idx = before + DROPPED·(1 − keep).
        let off = self.mul_imm(keep, DROPPED.wrapping_neg());
        let off = self.add_imm(off, DROPPED);
        let idx = self.add(before, off);
        let q = self.one_hot_bounded(idx, n);
        let qt = self.transpose(q, &[n, n], &[1, 0]);
        let count = self.sum(keep, 1, n, 1);
        let q = self.masked_open(qt, 0);
        Compaction { q, qt, n, count }
    }

    /// `x` (`n` rows of `row` elements, any kind) with the kept rows moved to the front in
    /// their order and zeros after. Scale unchanged (the matrix holds integers).
    pub fn compact_rows(&mut self, c: &Compaction, x: Buf, row: u32) -> Buf {
        let n = c.n;
        match self.kind(x) {
            Kind::Public => self.matmul_local(c.qt, x, 1, n, n, row),
            _ => {
                let x = self.as_share(x);
                let mx = self.masked_open(x, 0);
                self.matmul_masked(&c.q, &mx, 1, n, n, row)
            }
        }
    }

    /// Reveals the shared count (an integer at scale `frac`) to both parties and continues the
    /// body at that sequence length: `setlen` gets a phase of its own after every instruction
    /// so far, and nothing emitted later is scheduled before it.
    pub fn set_len(&mut self, count: Buf, frac: u8) {
        assert_eq!(self.section, Section::Body, "setlen belongs to the body");
        let d = self.buf(Kind::Public, 1);
        self.emit(Instr::Open { d, a: count, bits: 64, lo: 0 });
        let last = self.body.iter().map(|i| i.phase + i.instr.is_comm() as u32).max();
        let phase = last.unwrap_or(0) + 1;
        self.body.push(Item { instr: Instr::SetLen { a: d, frac }, phase, tag: self.cur_tag });
        self.floor = phase + 1;
        // Openings cached before the new length must not be reused after it.
        self.masked_cache.clear();
        self.trunc_cache.clear();
        self.trunc_origin.clear();
        self.tables_cache.clear();
        self.dprod_cache.clear();
        self.activation_cache.clear();
    }
}
