//! Local compute kernels over ring buffers. Tight loops, no allocation, no bounds surprises:
//! the program was validated, so lengths and indices are known to fit.

use rayon::prelude::*;

/// `d[i] = f(a[i], b[(i / inner) % b.len()])` without a division per element.
#[inline]
pub fn binary(
    d: &mut [u64],
    a: &[u64],
    b: &[u64],
    inner: usize,
    f: impl Fn(u64, u64) -> u64 + Copy,
) {
    if b.len() == a.len() && inner == 1 {
        for ((d, &x), &y) in d.iter_mut().zip(a).zip(b) {
            *d = f(x, y);
        }
        return;
    }
    let block = b.len() * inner;
    for (dc, ac) in d.chunks_mut(block).zip(a.chunks(block)) {
        for (j, &y) in b.iter().enumerate() {
            let r = j * inner..(j + 1) * inner;
            for (d, &x) in dc[r.clone()].iter_mut().zip(&ac[r]) {
                *d = f(x, y);
            }
        }
    }
}

/// `d[i] = f(a[i])`.
#[inline]
pub fn unary(d: &mut [u64], a: &[u64], f: impl Fn(u64) -> u64) {
    for (d, &x) in d.iter_mut().zip(a) {
        *d = f(x);
    }
}

/// Batched `m×k · k×n` product in Z_2^64; an operand holding a single matrix is shared by
/// every batch.
pub fn matmul(d: &mut [u64], a: &[u64], b: &[u64], batch: usize, m: usize, k: usize, n: usize) {
    let a_step = if a.len() == m * k { 0 } else { m * k };
    let b_step = if b.len() == k * n { 0 } else { k * n };
    for bi in 0..batch {
        let a = &a[bi * a_step..bi * a_step + m * k];
        let b = &b[bi * b_step..bi * b_step + k * n];
        let d = &mut d[bi * m * n..(bi + 1) * m * n];
        matmul_one(d, a, b, m, k, n);
    }
}

/// Rows and columns of the register tile with AVX-512: 8×16 accumulators are 16 of its 32
/// vector registers, so each loaded row of `b` is used for 8 products before it is dropped.
const MR: usize = 8;
const NR: usize = 16;
/// The tile for AVX2 (16 vector registers of 4 lanes, no 64-bit multiply: emulated) and for
/// the portable path: a tile that fits the registers instead of spilling 128 accumulators.
const MR_NARROW: usize = 4;
const NR_NARROW: usize = 8;
/// Depth of a pass: 256 rows of a 16-column strip of `b` (32 KiB) stay in L1 while every
/// row tile of the task uses them.
const KC: usize = 256;
/// Columns of a block: its `KC × NC` panel of `b` (512 KiB) and the task's rows of `d` stay in
/// L2 across the depth passes.
const NC: usize = 256;

/// Columns `off..` of a row-major matrix `b` whose rows are `ld` long (column 0 of a product
/// is column `off` of `b`).
#[derive(Clone, Copy)]
struct Cols<'a> {
    b: &'a [u64],
    ld: usize,
    off: usize,
}

fn matmul_one(d: &mut [u64], a: &[u64], b: &[u64], m: usize, k: usize, n: usize) {
    if n == 0 || m == 0 {
        return;
    }
    // Fewer rows than a register tile (a decoded token): one thread streaming the weights is
    // bound by memory already; splitting them between threads measured no faster.
    let parallel = m * k * n >= 1 << 20 && m >= MR;
    let threads = if parallel { rayon::current_num_threads().max(1) } else { 1 };
    let whole = Cols { b, ld: n, off: 0 };
    if threads == 1 {
        rows_product(d, n, a, whole, m, k, n);
        return;
    }
    if n < threads * NC {
        // Few columns: the rows split instead, in as few tasks as there are threads.
        let per = m.div_ceil(threads).next_multiple_of(MR).min(m);
        d.par_chunks_mut(per * n).enumerate().for_each(|(ci, dc)| {
            let (r0, rows) = (ci * per, dc.len() / n);
            rows_product(dc, n, &a[r0 * k..(r0 + rows) * k], whole, rows, k, n);
        });
        return;
    }
    // The columns split among the threads, each computing every row for its columns: `b`
    // (the weights, usually) is read once in all, and each panel of it serves every row. A
    // product with few rows (a pruned sequence, one decoded token) is bound by reading `b`;
    // splitting the rows would read it once per task.
    let per = n.div_ceil(threads).next_multiple_of(NR);
    let blocks: Vec<(usize, Vec<u64>)> = (0..n)
        .step_by(per)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|c0| {
            let w = per.min(n - c0);
            let mut blk = vec![0u64; m * w];
            rows_product(&mut blk, w, a, Cols { b, ld: n, off: c0 }, m, k, w);
            (c0, blk)
        })
        .collect();
    for (c0, blk) in blocks {
        let w = blk.len() / m;
        for (dr, br) in d.chunks_mut(n).zip(blk.chunks(w)) {
            dr[c0..c0 + w].copy_from_slice(br);
        }
    }
}

fn rows_product(
    d: &mut [u64],
    ldd: usize,
    a: &[u64],
    b: Cols<'_>,
    rows: usize,
    k: usize,
    n: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512f")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { rows_product_avx512(d, ldd, a, b, rows, k, n) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { rows_product_avx2(d, ldd, a, b, rows, k, n) };
            return;
        }
    }
    rows_product_generic::<MR_NARROW, NR_NARROW>(d, ldd, a, b, rows, k, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_product_avx2(
    d: &mut [u64],
    ldd: usize,
    a: &[u64],
    b: Cols<'_>,
    rows: usize,
    k: usize,
    n: usize,
) {
    rows_product_generic::<MR_NARROW, NR_NARROW>(d, ldd, a, b, rows, k, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn rows_product_avx512(
    d: &mut [u64],
    ldd: usize,
    a: &[u64],
    b: Cols<'_>,
    rows: usize,
    k: usize,
    n: usize,
) {
    rows_product_generic::<MR, NR>(d, ldd, a, b, rows, k, n)
}

/// `d = a · b` for `a` of `rows × k` and `b` of `k × n`: `MR × NR` tiles in registers (the
/// last rows in halving tiles), the ragged right edge with a plain loop; fewer than `MR` rows
/// stream `b` row by row.
#[inline(always)]
fn rows_product_generic<const MR: usize, const NR: usize>(
    d: &mut [u64],
    ldd: usize,
    a: &[u64],
    b: Cols<'_>,
    rows: usize,
    k: usize,
    n: usize,
) {
    d.fill(0);
    if rows < MR {
        // Too few rows for a register tile: `edge` streams each row of `b` once into every row.
        edge(d, ldd, a, b, 0..rows, 0..n, k);
        return;
    }
    let nf = n - n % NR;
    for cb in (0..nf).step_by(NC) {
        let ce = (cb + NC).min(nf);
        for k0 in (0..k).step_by(KC) {
            let ks = k0..(k0 + KC).min(k);
            for c0 in (cb..ce).step_by(NR) {
                let mut r0 = 0;
                while r0 + MR <= rows {
                    tile::<MR, NR>(d, ldd, a, b, r0, c0, ks.clone(), k);
                    r0 += MR;
                }
                // The rows left over (fewer than MR) in tiles of 4, 2 and 1 rows.
                if MR > 4 && r0 + 4 <= rows {
                    tile::<4, NR>(d, ldd, a, b, r0, c0, ks.clone(), k);
                    r0 += 4;
                }
                if MR > 2 && r0 + 2 <= rows {
                    tile::<2, NR>(d, ldd, a, b, r0, c0, ks.clone(), k);
                    r0 += 2;
                }
                if r0 < rows {
                    tile::<1, NR>(d, ldd, a, b, r0, c0, ks.clone(), k);
                }
            }
        }
    }
    edge(d, ldd, a, b, 0..rows, nf..n, k);
}

/// Adds the `MR × NR` tile at `(r0, c0)` of `a[.., ks] · b[ks, ..]` to `d`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<const MR: usize, const NR: usize>(
    d: &mut [u64],
    ldd: usize,
    a: &[u64],
    b: Cols<'_>,
    r0: usize,
    c0: usize,
    ks: std::ops::Range<usize>,
    k: usize,
) {
    let mut acc = [[0u64; NR]; MR];
    let arows: [&[u64]; MR] =
        std::array::from_fn(|r| &a[(r0 + r) * k + ks.start..(r0 + r) * k + ks.end]);
    for (j, p) in ks.enumerate() {
        let at = p * b.ld + b.off + c0;
        let bv: &[u64; NR] = b.b[at..at + NR].try_into().expect("NR columns");
        for r in 0..MR {
            let av = arows[r][j];
            for c in 0..NR {
                acc[r][c] = acc[r][c].wrapping_add(av.wrapping_mul(bv[c]));
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let drow = &mut d[(r0 + r) * ldd + c0..(r0 + r) * ldd + c0 + NR];
        for (x, &y) in drow.iter_mut().zip(acc) {
            *x = x.wrapping_add(y);
        }
    }
}

/// Adds `a[rs, ..] · b[.., cs]` to `d[rs, cs]`.
#[inline(always)]
fn edge(
    d: &mut [u64],
    ldd: usize,
    a: &[u64],
    b: Cols<'_>,
    rs: std::ops::Range<usize>,
    cs: std::ops::Range<usize>,
    k: usize,
) {
    if cs.is_empty() {
        return;
    }
    // Weight row outside, output rows inside: each row of `b` is read once, in order.
    for p in 0..k {
        let brow = &b.b[p * b.ld + b.off + cs.start..p * b.ld + b.off + cs.end];
        for r in rs.clone() {
            let av = a[r * k + p];
            for (x, &y) in d[r * ldd + cs.start..r * ldd + cs.end].iter_mut().zip(brow) {
                *x = x.wrapping_add(av.wrapping_mul(y));
            }
        }
    }
}

/// `d[o, i] = Σ_j a[o, j, i]`.
pub fn sum(d: &mut [u64], a: &[u64], outer: usize, mid: usize, inner: usize) {
    d.fill(0);
    for o in 0..outer {
        let dr = &mut d[o * inner..(o + 1) * inner];
        for j in 0..mid {
            let ar = &a[(o * mid + j) * inner..(o * mid + j + 1) * inner];
            for (x, &y) in dr.iter_mut().zip(ar) {
                *x = x.wrapping_add(y);
            }
        }
    }
}

/// Inclusive prefix sum along the middle axis of an `outer × mid × inner` view.
pub fn cumsum(d: &mut [u64], a: &[u64], outer: usize, mid: usize, inner: usize) {
    for o in 0..outer {
        for j in 0..mid {
            let at = (o * mid + j) * inner;
            for i in 0..inner {
                let prev = if j == 0 { 0 } else { d[at - inner + i] };
                d[at + i] = prev.wrapping_add(a[at + i]);
            }
        }
    }
}

/// Strided copy: for every index vector `x < shape`,
/// `d[d_off + x·ds] = a[a_off + x·as_]`. Contiguous innermost runs become slice copies.
pub fn copy(
    d: &mut [u64],
    d_off: usize,
    a: &[u64],
    a_off: usize,
    shape: &[u32],
    ds: &[i64],
    as_: &[i64],
) {
    let rank = shape.len();
    if rank == 0 {
        d[d_off] = a[a_off];
        return;
    }
    if shape.contains(&0) {
        return;
    }
    let last = rank - 1;
    let inner = shape[last] as usize;
    let contiguous = ds[last] == 1 && as_[last] == 1;
    let outer: usize = shape[..last].iter().map(|&s| s as usize).product();
    let mut idx = vec![0u32; last];
    for _ in 0..outer {
        let mut do_ = d_off as i64;
        let mut ao = a_off as i64;
        for (i, &x) in idx.iter().enumerate() {
            do_ += x as i64 * ds[i];
            ao += x as i64 * as_[i];
        }
        if contiguous {
            let (do_, ao) = (do_ as usize, ao as usize);
            d[do_..do_ + inner].copy_from_slice(&a[ao..ao + inner]);
        } else {
            for j in 0..inner as i64 {
                d[(do_ + j * ds[last]) as usize] = a[(ao + j * as_[last]) as usize];
            }
        }
        for i in (0..last).rev() {
            idx[i] += 1;
            if idx[i] < shape[i] {
                break;
            }
            idx[i] = 0;
        }
    }
}

/// Table lookup on packed bits: bit `i` of `d` is bit `(i << w) + ((idx[i] >> shift) mod 2^w)`
/// of `table`. `d` holds `ceil(len(idx) / 64)` words.
pub fn lookup(d: &mut [u64], table: &[u64], idx: &[u64], shift: u32, w: u32) {
    let mask = (1u64 << w) - 1;
    if w <= 6 {
        // 64 elements use exactly 2^w table words and each element's row lies within one
        // word, so an output word is built in a register from its own slice of the table.
        let per = 64 >> w;
        for ((o, xs), tw) in d.iter_mut().zip(idx.chunks(64)).zip(table.chunks(1 << w)) {
            let mut acc = 0u64;
            for (k, (xc, &t)) in xs.chunks(per).zip(tw).enumerate() {
                let mut part = 0u64;
                for (j, &x) in xc.iter().enumerate() {
                    let c = (x >> shift) & mask;
                    part |= ((t >> ((j << w) as u64 + c)) & 1) << j;
                }
                acc |= part << (k * per);
            }
            *o = acc;
        }
    } else {
        for ((o, xs), i0) in d.iter_mut().zip(idx.chunks(64)).zip((0..).step_by(64)) {
            let mut acc = 0u64;
            for (j, &x) in xs.iter().enumerate() {
                let c = ((x >> shift) & mask) as usize;
                let pos = ((i0 + j) << w) + c;
                acc |= ((table[pos >> 6] >> (pos & 63)) & 1) << j;
            }
            *o = acc;
        }
    }
    for o in d.iter_mut().skip(idx.len().div_ceil(64)) {
        *o = 0;
    }
}

/// Bit `i` of `d` is bit `bit` of `a[i]`.
pub fn bit_of(d: &mut [u64], a: &[u64], bit: u32) {
    for (o, xs) in d.iter_mut().zip(a.chunks(64)) {
        let mut acc = 0u64;
        for (j, &x) in xs.iter().enumerate() {
            acc |= ((x >> bit) & 1) << j;
        }
        *o = acc;
    }
    for o in d.iter_mut().skip(a.len().div_ceil(64)) {
        *o = 0;
    }
}

/// `d[i] = a[i]` where bit `i` of `e` is set, else `b[i]`.
pub fn sel(d: &mut [u64], e: &[u64], a: &[u64], b: &[u64]) {
    for (((dc, ac), bc), &ew) in d.chunks_mut(64).zip(a.chunks(64)).zip(b.chunks(64)).zip(e) {
        for (j, ((o, &x), &y)) in dc.iter_mut().zip(ac).zip(bc).enumerate() {
            // All ones or all zeros: a branch on random bits would mispredict half the time.
            let m = ((ew >> j) & 1).wrapping_neg();
            *o = (x & m) | (y & !m);
        }
    }
}

/// `trunc_post`'s constants for a `w`-bit opening truncated by `t` bits: the mask of the low
/// `w` bits, the offset `2^(w-2-t)` taken off the shifted opening, and the wrap `2^(w-t)` (0
/// when it is the whole ring). One definition for the interpreter and the JIT, which must agree
/// bit for bit. Needs `3 ≤ w ≤ 64` and `t + 2 ≤ w` (what the validator allows).
pub fn trunc_post_constants(t: u32, w: u32) -> (u64, u64, u64) {
    let wmask = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
    let off = 1u64 << (w - 2 - t);
    let k = if w - t == 64 { 0 } else { 1u64 << (w - t) };
    (wmask, off, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_naive() {
        // Ragged edges, several depth passes, the parallel path, and a shared operand.
        // Threads split the columns (n ≥ 512) or the rows; rows left over from the 8-row tile
        // take the 4-, 2- and 1-row tiles; fewer than 8 rows stream `b` on one thread.
        let cases = [
            (1, 9, 13, 300),
            (1, 37, 600, 70),
            (3, 16, 257, 16),
            (2, 1, 1, 1),
            (1, 13, 200, 600),
            (1, 7, 160, 1030),
            (2, 3, 300, 1200),
            (1, 1, 3000, 700),
            (1, 5, 700, 1000),
            (1, 15, 100, 700),
        ];
        for (batch, m, k, n) in cases {
            let a = crate::testdata::xorshift_words(batch * m * k, (m * k) as u64);
            let b = crate::testdata::xorshift_words(k * n, (k * n) as u64 + 1);
            let mut d = vec![u64::MAX; batch * m * n];
            matmul(&mut d, &a, &b, batch, m, k, n);
            for bi in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0u64;
                        for p in 0..k {
                            let x = a[(bi * m + i) * k + p];
                            s = s.wrapping_add(x.wrapping_mul(b[p * n + j]));
                        }
                        assert_eq!(d[(bi * m + i) * n + j], s, "{batch}×{m}×{k}×{n}");
                    }
                }
            }
        }
    }

    #[test]
    fn broadcast_binary() {
        let a = [1, 2, 3, 4, 5, 6];
        let mut d = [0; 6];
        binary(&mut d, &a, &[10, 20], 1, |x, y| x + y);
        assert_eq!(d, [11, 22, 13, 24, 15, 26]);
        binary(&mut d, &a, &[10, 20], 3, |x, y| x + y);
        assert_eq!(d, [11, 12, 13, 24, 25, 26]);
    }

    #[test]
    fn bit_kernels_match_bit_by_bit() {
        use crate::bits;
        for (case, n) in [0usize, 1, 63, 64, 65, 200, 1000].into_iter().enumerate() {
            let words = n.div_ceil(64);
            let seed = case as u64 * 10;
            let a = crate::testdata::xorshift_words(n, seed + 1);
            for width in 1..=12u32 {
                for shift in [0u32, 5, 60 - width, 64 - width] {
                    let table = crate::testdata::xorshift_words(
                        (n << width).div_ceil(64),
                        seed + width as u64,
                    );
                    let mut want = vec![0; words];
                    for (i, &x) in a.iter().enumerate() {
                        let c = ((x >> shift) & ((1 << width) - 1)) as usize;
                        bits::set(&mut want, i, bits::get(&table, (i << width) + c));
                    }
                    let mut got = vec![u64::MAX; words];
                    lookup(&mut got, &table, &a, shift, width);
                    assert_eq!(got, want, "lookup n={n} width={width} shift={shift}");
                }
            }
            for bit in [0u32, 17, 63] {
                let mut want = vec![0; words];
                for (i, &x) in a.iter().enumerate() {
                    bits::set(&mut want, i, (x >> bit) & 1 == 1);
                }
                let mut got = vec![u64::MAX; words];
                bit_of(&mut got, &a, bit);
                assert_eq!(got, want, "bit_of n={n} bit={bit}");
            }
            let (b, mut e) = (
                crate::testdata::xorshift_words(n, seed + 2),
                crate::testdata::xorshift_words(words, seed + 3),
            );
            bits::clear_tail(&mut e, n);
            let want: Vec<u64> =
                (0..n).map(|i| if bits::get(&e, i) { a[i] } else { b[i] }).collect();
            let mut got = vec![0; n];
            sel(&mut got, &e, &a, &b);
            assert_eq!(got, want, "sel n={n}");
        }
    }

    #[test]
    fn strided_copy_transposes() {
        let a: Vec<u64> = (0..6).collect(); // 2x3
        let mut d = vec![0; 6];
        copy(&mut d, 0, &a, 0, &[3, 2], &[2, 1], &[1, 3]);
        assert_eq!(d, vec![0, 3, 1, 4, 2, 5]);
    }
}
