//! Merged LoRA (Marill): a fine-tuned checkpoint whose matrix differs from the open base by a
//! low-rank update, `W = W0 + A·B`, is compiled as `x·W0 + (x·A)·B` — a product with a public
//! weight (local on shares) plus two thin private products — instead of one private product.
//!
//! The factors are recovered from `Δ = W − W0` with a randomized range finder: for a Gaussian
//! `Ω` (n × r), `Q = orth(Δ·Ω)` spans Δ's column space whenever rank Δ ≤ r (with probability
//! 1), and `Δ = Q·(Qᵀ·Δ)`. A weight is split only when the residual `Δ − Q·QᵀΔ` is below
//! [`TOLERANCE`] of the weight's largest entry, i.e. when the split is the same function up to
//! f32 rounding (far below the fixed-point encoding's 2^-16), so the compiled model is exactly
//! the checkpoint's.

use crate::ir::{Graph, Op, Tensor, Value, ValueDef};
use crate::weights::SplitMix;
use std::collections::HashMap;

/// Largest residual entry allowed, relative to the largest entry of the fine-tuned weight.
pub const TOLERANCE: f64 = 1e-5;

/// One split weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// The fine-tuned weight's name.
    pub name: String,
    /// The base tensor's name (the public product's weight is named `<name>.base`).
    pub base: String,
    /// The update's rank (≤ the requested rank).
    pub rank: usize,
    /// Largest residual entry, relative to the weight's largest entry.
    pub residual: f64,
}

/// Why low-rank splitting failed.
#[derive(Debug, thiserror::Error)]
pub enum LowRankError {
    /// A rank of 0.
    #[error("--lora-rank must be at least 1")]
    ZeroRank,
    /// A node of the rewrite does not fit its arguments (a bug).
    #[error("splitting `{weight}`: node `{node}`: {error}")]
    Shape {
        /// The weight being split.
        weight: String,
        /// The node.
        node: String,
        /// The shape error.
        error: crate::ir::shape::ShapeError,
    },
}

/// What became of each candidate: split, or why not.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Weights compiled as public base plus thin private factors.
    pub split: Vec<Split>,
    /// (weight, reason) for matrices with a same-shaped base that were left whole.
    pub kept: Vec<(String, String)>,
}

/// Splits every private matrix of `g` that has a same-named, same-shaped tensor in `base` and
/// differs from it by an update of rank ≤ `rank`. `is_public` says which weights are already
/// public (they are left alone). The new weights are `<name>.base` (public: the caller adds it
/// to the public set), `<name>.lora_a` and `<name>.lora_b` (private).
pub fn split_low_rank(
    g: &mut Graph,
    base: &[(String, Tensor)],
    rank: usize,
    is_public: &dyn Fn(&str) -> bool,
) -> Result<Outcome, LowRankError> {
    if rank == 0 {
        return Err(LowRankError::ZeroRank);
    }
    let alias = crate::frontend::weight_names::descriptive_names(g);
    let by_name: HashMap<&str, &Tensor> = base.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Outcome::default();
    let weights: Vec<Value> = g.weights();
    for w in weights {
        let name = g.values[w].name.clone();
        let ValueDef::Weight(t) = &g.values[w].def else { continue };
        let t = t.clone();
        if is_public(&name) || t.shape.len() != 2 || !t.dtype.is_float() {
            continue;
        }
        let names = [Some(name.as_str()), alias.get(&w).map(String::as_str)];
        let Some((bname, b)) = names
            .into_iter()
            .flatten()
            .find_map(|n| by_name.get(n).filter(|b| b.shape == t.shape).map(|b| (n, *b)))
        else {
            continue;
        };
        let bname = bname.to_string();
        if !matmul_rhs_only(g, w) {
            out.kept.push((name, "used other than as the right operand of a matmul".into()));
            continue;
        }
        let (k, n) = (t.shape[0], t.shape[1]);
        let wv = t.to_f64_vec();
        let delta: Vec<f64> = wv.iter().zip(b.to_f64_vec()).map(|(a, b)| a - b).collect();
        if delta.iter().all(|&d| d == 0.0) {
            // Equal to the base: public by content, not an update.
            continue;
        }
        let scale = wv.iter().fold(0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
        let Some((q, r, bt, residual)) = factor(&delta, k, n, rank, scale, &name) else {
            out.kept.push((name, format!("differs from the base by more than rank {rank}")));
            continue;
        };
        // Balance the factors' magnitudes: both are encoded with the same 2^-f resolution,
        // and an orthonormal Q alone has entries ≈ 1/√k.
        let peak = |v: &[f64]| v.iter().fold(0f64, |m, x| m.max(x.abs())).max(f64::MIN_POSITIVE);
        let c = (peak(&bt) / peak(&q)).sqrt();
        let a = Tensor::f32(vec![k, r], q.iter().map(|&v| (v * c) as f32).collect());
        let bm = Tensor::f32(vec![r, n], bt.iter().map(|&v| (v / c) as f32).collect());
        rewrite(g, w, &name, b.clone(), a, bm)?;
        out.split.push(Split { name, base: bname, rank: r, residual });
    }
    Ok(out)
}

/// True when every use of `w` is as the second argument of a matmul (and it is no output).
fn matmul_rhs_only(g: &Graph, w: Value) -> bool {
    let mut used = false;
    for &n in &g.order {
        let nd = &g.nodes[n];
        for (i, &a) in nd.args.iter().enumerate() {
            if a == w {
                if !(matches!(nd.op, Op::MatMul) && i == 1) {
                    return false;
                }
                used = true;
            }
        }
    }
    used && !g.outputs.contains(&w)
}

/// `Δ ≈ Q·B` with Q (k × r) orthonormal, B = QᵀΔ (r × n); `None` when the residual is too big.
/// Returns (Q, r, B, residual relative to `scale`).
#[allow(clippy::type_complexity)]
fn factor(
    delta: &[f64],
    k: usize,
    n: usize,
    rank: usize,
    scale: f64,
    name: &str,
) -> Option<(Vec<f64>, usize, Vec<f64>, f64)> {
    let mut rng = SplitMix(0x10_4a ^ name.len() as u64);
    // Y = Δ·Ω, column-major columns of length k.
    let mut cols: Vec<Vec<f64>> = Vec::new();
    // A direction of Δ·Ω shorter than this is f32 rounding of the merged weight (entries
    // ≈ 6e-8 of the largest, giving |e·ω| ≈ 6e-8·scale·√(kn)), not part of the update.
    let noise = 0.1 * TOLERANCE * scale * ((k * n) as f64).sqrt();
    for _ in 0..rank.min(k).min(n) {
        let omega: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mut y: Vec<f64> =
            (0..k).map(|i| (0..n).map(|j| delta[i * n + j] * omega[j]).sum()).collect();
        // Gram–Schmidt twice against the kept columns: once is not enough in floating point.
        for _ in 0..2 {
            for c in &cols {
                let d: f64 = c.iter().zip(&y).map(|(a, b)| a * b).sum();
                y.iter_mut().zip(c).for_each(|(v, c)| *v -= d * c);
            }
        }
        let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > noise {
            y.iter_mut().for_each(|v| *v /= norm);
            cols.push(y);
        }
    }
    let r = cols.len().max(1);
    if cols.is_empty() {
        cols.push(vec![0.0; k]);
    }
    // B = Qᵀ·Δ (r × n), then the largest entry of Δ − Q·B.
    let mut bm = vec![0f64; r * n];
    for (c, col) in cols.iter().enumerate() {
        for i in 0..k {
            let q = col[i];
            if q != 0.0 {
                for j in 0..n {
                    bm[c * n + j] += q * delta[i * n + j];
                }
            }
        }
    }
    let mut worst = 0f64;
    for i in 0..k {
        for j in 0..n {
            let approx: f64 = (0..r).map(|c| cols[c][i] * bm[c * n + j]).sum();
            worst = worst.max((delta[i * n + j] - approx).abs());
        }
    }
    let residual = worst / scale;
    if residual > TOLERANCE {
        return None;
    }
    let mut q = vec![0f64; k * r];
    for (c, col) in cols.iter().enumerate() {
        for i in 0..k {
            q[i * r + c] = col[i];
        }
    }
    Some((q, r, bm, residual))
}

/// Replaces every `x·W` by `x·W0 + (x·A)·B`, the new nodes where the old product was.
fn rewrite(
    g: &mut Graph,
    w: Value,
    name: &str,
    w0: Tensor,
    a: Tensor,
    b: Tensor,
) -> Result<(), LowRankError> {
    let (w0v, av, bv) = (
        g.add_weight(&format!("{name}.base"), w0),
        g.add_weight(&format!("{name}.lora_a"), a),
        g.add_weight(&format!("{name}.lora_b"), b),
    );
    let users: Vec<_> = g.order.iter().copied().filter(|&n| g.nodes[n].args.contains(&w)).collect();
    for n in users {
        let (x, old, nname) = (g.nodes[n].args[0], g.nodes[n].result, g.nodes[n].name.clone());
        let rname = g.values[old].name.clone();
        let before = g.order.len();
        let mut add = |suffix: &str, op: Op, args: &[Value], result: String| {
            let node = format!("{nname}.{suffix}");
            g.add_node(&node, op, args, &result).map_err(|error| LowRankError::Shape {
                weight: name.to_string(),
                node,
                error,
            })
        };
        let p0 = add("base", Op::MatMul, &[x, w0v], format!("{rname}.base"))?;
        let p1 = add("lora_a", Op::MatMul, &[x, av], format!("{rname}.xa"))?;
        let p2 = add("lora_b", Op::MatMul, &[p1, bv], format!("{rname}.xab"))?;
        let s = add("lora", Op::Add, &[p0, p2], format!("{rname}.lora"))?;
        g.move_before(before, n);
        g.replace_uses(old, s);
    }
    g.remove_dead_nodes();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(r: &mut SplitMix, n: usize, s: f64) -> Vec<f64> {
        (0..n).map(|_| r.normal() * s).collect()
    }

    #[test]
    fn recovers_a_rank_3_update_and_refuses_a_full_rank_one() {
        let (k, n) = (40, 24);
        let mut r = SplitMix(9);
        let (a, b) = (gaussian(&mut r, k * 3, 0.1), gaussian(&mut r, 3 * n, 0.1));
        let delta: Vec<f64> = (0..k * n)
            .map(|ij| (0..3).map(|c| a[(ij / n) * 3 + c] * b[c * n + ij % n]).sum())
            .collect();
        let (q, rank, bm, res) = factor(&delta, k, n, 8, 1.0, "w").expect("low rank");
        assert_eq!(rank, 3);
        assert!(res < 1e-12, "residual {res}");
        for i in 0..k {
            for j in 0..n {
                let v: f64 = (0..rank).map(|c| q[i * rank + c] * bm[c * n + j]).sum();
                assert!((v - delta[i * n + j]).abs() < 1e-12);
            }
        }
        let full = gaussian(&mut r, k * n, 0.01);
        assert!(factor(&full, k, n, 8, 1.0, "w").is_none());
    }
}
