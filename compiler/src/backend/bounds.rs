//! Bounds on the magnitude of values, so that a masked opening can be made modulo `2^w` for
//! the smallest `w` that still holds the value (`masked_open_w`): fewer bytes on the wire for
//! the same protocol.
//!
//! The sources are the stdlib's `bounded(x, b)` promises (`Op::Bounded`: an exponential's base
//! is in [0, 1], a softmax probability at most 1, a normalised row at most √n), constants and
//! comparison bits; the bounds then follow the arithmetic (a product of bounded values is
//! bounded by the product of the bounds, a sum of `n` terms by `n` times the bound, ...). A
//! value with no bound is opened over the whole ring, as before. The bounds are in real units;
//! the lowering turns them into ring magnitudes at each value's scale.

use std::collections::HashMap;

use crate::ir::{Graph, Op, Value, ValueDef};

/// Real-valued bounds `|x| ≤ b` for the values that have one. `token_len = (n, max)` when `g`
/// is a pruned program's model at length `n` of `max`: every sum is bounded as one over at
/// least `max` terms, so that the program (its opening widths) is the same at every length.
pub fn value_bounds(g: &Graph, token_len: Option<(usize, usize)>) -> HashMap<Value, f64> {
    let mut bounds: HashMap<Value, f64> = HashMap::new();
    for &n in &g.order {
        let nd = &g.nodes[n];
        let arg = |i: usize| -> Option<f64> {
            let v = *nd.args.get(i)?;
            if let Some(&b) = bounds.get(&v) {
                return Some(b);
            }
            if let ValueDef::Const(t) = &g.values[v].def {
                return (0..t.numel())
                    .map(|i| t.get_f64(i).abs())
                    .try_fold(0.0f64, |m, x| x.is_finite().then_some(m.max(x)));
            }
            g.ty(v).dtype.eq(&crate::ir::DType::Bool).then_some(1.0)
        };
        let both = |f: fn(f64, f64) -> f64| Some(f(arg(0)?, arg(1)?));
        let b = match &nd.op {
            Op::Bounded { abs } => Some(arg(0).map_or(*abs, |b| b.min(*abs))),
            Op::Drelu { .. } => Some(1.0),
            Op::Add | Op::Sub => both(|a, b| a + b),
            Op::Mul => both(|a, b| a * b),
            Op::Max | Op::Min => both(f64::max),
            Op::Div => match g.const_data(nd.args[1]) {
                Some(c) if c.numel() == 1 && c.get_f64(0) != 0.0 => {
                    arg(0).map(|a| a / c.get_f64(0).abs())
                }
                _ => None,
            },
            Op::Neg
            | Op::Abs
            | Op::Relu
            | Op::ReduceMean { .. }
            | Op::ReduceMax { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Expand { .. } => arg(0),
            Op::Cast { to } if to.is_float() => arg(0),
            Op::Clip { min, max } if min.is_finite() && max.is_finite() => {
                Some(arg(0).map_or(min.abs().max(max.abs()), |b| b.min(min.abs().max(max.abs()))))
            }
            Op::ReduceSum { axes, .. } => {
                let shape = &g.ty(nd.args[0]).shape;
                let n: usize = axes
                    .iter()
                    .map(|&a| token_len.map_or(shape[a], |(_, max)| shape[a].max(max)))
                    .product();
                arg(0).map(|b| b * n as f64)
            }
            Op::Concat { .. } => {
                (0..nd.args.len()).map(arg).try_fold(0.0f64, |m, b| Some(m.max(b?)))
            }
            _ => None,
        };
        if let Some(b) = b.filter(|b| b.is_finite()) {
            bounds.insert(nd.result, b);
        }
    }
    bounds
}

/// The opening width for a ring value `|x| ≤ m`: the smallest `w` with `|x| < 2^(w-2)` after
/// a 1% margin for the approximations' and truncations' errors (plus a few ulps), and
/// `2^(t+1)` more for a truncation by `t` bits (its opening drops the low `t` bits, whose
/// carry it may lose), at least `t + 4` (which that already implies), at most 64.
pub fn opening_width(m: f64, t: u8) -> u8 {
    let drop = if t > 0 { 2f64.powi(t as i32 + 1) } else { 0.0 };
    let m = m * 1.01 + 4.0 + drop;
    let k = if m >= 2f64.powi(62) { 62 } else { m.log2().floor() as u32 + 1 };
    let least = if t > 0 { t as u32 + 4 } else { 3 };
    (k + 2).clamp(least, 64) as u8
}

#[cfg(test)]
mod tests {
    use super::opening_width;

    #[test]
    fn width_holds_the_bound_with_two_bits_of_headroom() {
        // y ∈ [0, 1] at 23 fractional bits: 2^23 needs 24 bits, plus sign and headroom.
        assert_eq!(opening_width((1u64 << 23) as f64, 7), 26);
        // A product of two such values at 32 bits.
        assert_eq!(opening_width((1u64 << 32) as f64, 16), 35);
        // Narrower than the truncation allows: widened to hold the dropped bits' lost carry.
        assert_eq!(opening_width(8.0, 16), 20);
        assert_eq!(opening_width(1e30, 0), 64);
        for m in [1.0, 3.0, 1000.0, 123456789.0, 2f64.powi(40)] {
            let w = opening_width(m, 0);
            assert!(m * 1.01 < 2f64.powi(w as i32 - 2), "{m} in {w} bits");
            // A truncating opening loses up to 2^(t+1) with the carry of the bits it drops.
            for t in [1u8, 8, 16, 32] {
                let w = opening_width(m, t);
                let lost = 2f64.powi(t as i32 + 1);
                assert!(m * 1.01 + lost < 2f64.powi(w as i32 - 2), "{m} in {w} bits, t = {t}");
            }
        }
    }
}
