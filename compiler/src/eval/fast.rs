//! f32 matrix products for the client's plaintext part: a public frozen prefix is the same
//! computation an f32 runtime (onnxruntime, PyTorch) does, so it needs no f64 accumulation, and
//! it sits on the client's critical path before the session starts. Rows are split across
//! threads.

use crate::ir::{Data, Tensor, TensorType};

/// `a · b` in f32 when both are f32 and `b`'s batch is 1 or equal to `a`'s (the shapes of
/// linear layers and attention); `None` for anything else (the reference kernel runs).
pub fn matmul_f32(a: &Tensor, b: &Tensor, ty: &TensorType) -> Option<Tensor> {
    let (Data::F32(av), Data::F32(bv)) = (&a.data, &b.data) else { return None };
    if a.shape.len() < 2 || b.shape.len() < 2 {
        return None;
    }
    let (m, k) = (a.shape[a.shape.len() - 2], a.shape[a.shape.len() - 1]);
    let (k2, n) = (b.shape[b.shape.len() - 2], b.shape[b.shape.len() - 1]);
    let (ba, bb) = (av.len() / (m * k).max(1), bv.len() / (k2 * n).max(1));
    if k != k2 || !(bb == 1 || bb == ba) || ty.numel() != ba * m * n {
        return None;
    }
    let mut out = vec![0f32; ba * m * n];
    let rows = ba * m;
    let threads =
        std::thread::available_parallelism().map_or(1, |t| t.get()).min(rows.max(1)).min(16);
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (c, chunk) in out.chunks_mut(per * n).enumerate() {
            s.spawn(move || {
                for (r, dst) in chunk.chunks_mut(n).enumerate() {
                    let row = c * per + r;
                    let (batch, i) = (row / m, row % m);
                    let arow = &av[(batch * m + i) * k..(batch * m + i + 1) * k];
                    let b0 = if bb == 1 { 0 } else { batch * k * n };
                    for (p, &x) in arow.iter().enumerate() {
                        if x == 0.0 {
                            continue;
                        }
                        let brow = &bv[b0 + p * n..b0 + (p + 1) * n];
                        for (d, &y) in dst.iter_mut().zip(brow) {
                            *d += x * y;
                        }
                    }
                }
            });
        }
    });
    Some(Tensor::f32(ty.shape.clone(), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Op};

    #[test]
    fn agrees_with_the_reference_kernel() {
        let mut r = crate::weights::SplitMix(3);
        let mut t = |shape: Vec<usize>| {
            let n = shape.iter().product();
            Tensor::f32(shape, (0..n).map(|_| r.normal() as f32).collect())
        };
        // A linear layer (shared 2-D weight) and attention (matching batch).
        for (a, b, out) in [
            (t(vec![1, 37, 64]), t(vec![64, 29]), vec![1, 37, 29]),
            (t(vec![3, 17, 8]), t(vec![3, 8, 17]), vec![3, 17, 17]),
        ] {
            let ty = TensorType::new(DType::F32, out);
            let fast = matmul_f32(&a, &b, &ty).expect("fast path");
            let want = super::super::eval_op(&Op::MatMul, &[&a, &b], &ty).unwrap();
            let (f, w) = (fast.to_f64_vec(), want.to_f64_vec());
            let err = f.iter().zip(&w).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(err < 1e-5, "max abs difference {err}");
        }
        // A broadcast the fast path does not cover falls back (None).
        let ty = TensorType::new(DType::F32, vec![2, 3, 5]);
        assert!(matmul_f32(&t(vec![1, 3, 4]), &t(vec![2, 4, 5]), &ty).is_none());
    }
}
