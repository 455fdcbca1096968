//! A comparison-free first guess for Newton's inverse square root on a known range, and the
//! number of iterations that range needs.
//!
//! Newton's step for `1/√x` is `y ← y·(3 − x·y²)/2`. In terms of `u = x·y²` (1 at the root) one
//! step maps `u` to `g(u) = u·(3 − u)²/4`, which sends every `u ∈ (0, 3)` into `(0, 1]` and
//! then converges quadratically. So a first guess needs no accuracy, only `x·y0² ∈ (0, 3)`
//! over the whole range; the closer to 1, the fewer steps. veil's guess is affine in `x`,
//! `y0 = a + b·x`, so it costs no comparison, no lookup and no round: only a public scaling of
//! the share. On `[1, R]` (any range scales to it: `x → λx`, `y → y/√λ`) the minimax choice
//! of `|1 − u0|` equioscillates at three points: `u0(1) = u0(R) = 1 − δ` (the two ends)
//! and `u0(x*) = 1 + δ` at the interior peak `x* = a/(3|b|)`. The first condition gives
//! `a = |b|·(R + √R + 1)`, the second `|b|² = 2 / ((4/27)(R + √R + 1)³ + (R + √R)²)`, so the
//! fit is closed-form and `δ < 1` for every `R`: the iteration always converges on the range.
//! Outside it, `y0` falls and then turns negative at `x = (R + √R + 1)·lo`, so Newton diverges:
//! the range must hold every input, which is why the compiler takes it from calibration and
//! widens it by a margin.

/// Most Newton iterations a call site may need; a wider range is refused.
pub const MAX_ITERATIONS: u32 = 12;

/// The fitted guess `y0 = a + b·x` for `x ∈ [lo, hi]`, and its worst `|1 − x·y0²|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RsqrtGuess {
    /// Constant term.
    pub a: f64,
    /// Slope (negative).
    pub b: f64,
    /// Worst `|1 − x·y0²|` on the range (< 1).
    pub delta: f64,
}

/// The minimax affine guess on `[lo, hi]` (see the module docs). `None` unless
/// `0 < lo < hi` and both are finite.
pub fn guess(lo: f64, hi: f64) -> Option<RsqrtGuess> {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return None;
    }
    let r = hi / lo;
    let s = r.sqrt();
    let big = r + s + 1.0;
    let beta = (2.0 / ((4.0 / 27.0) * big.powi(3) + (r + s).powi(2))).sqrt();
    let delta = 1.0 - beta * beta * (r + s).powi(2);
    // Back from [1, R] to [lo, hi]: y(x) = y1(x/lo)/√lo.
    Some(RsqrtGuess { a: beta * big / lo.sqrt(), b: -beta / (lo * lo.sqrt()), delta })
}

/// Worst relative error of `y` after `k` Newton steps from a guess with worst `|1 − u0|` of
/// `delta`, in exact arithmetic: `g` is increasing on `(0, 1)` and `g(1 − e) < g(1 + e) ≤ 1`,
/// so the worst case starts at `u0 = 1 − delta`.
pub fn error_after(delta: f64, k: u32) -> f64 {
    let mut u = 1.0 - delta;
    for _ in 0..k {
        u = u * (3.0 - u) * (3.0 - u) / 4.0;
    }
    (1.0 - u.sqrt()).abs()
}

/// The fewest Newton steps whose worst relative error on `[lo, hi]` is at most `rel`, or
/// `None` when more than [`MAX_ITERATIONS`] are needed (or the range is invalid).
pub fn iterations(lo: f64, hi: f64, rel: f64) -> Option<u32> {
    let g = guess(lo, hi)?;
    (0..=MAX_ITERATIONS).find(|&k| error_after(g.delta, k) <= rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sweeps the range in f64: the fit's claims hold at every point.
    fn worst(lo: f64, hi: f64, k: u32) -> (f64, f64) {
        let g = guess(lo, hi).unwrap();
        let (mut du, mut rel) = (0.0f64, 0.0f64);
        for i in 0..=20000 {
            let x = lo * (hi / lo).powf(i as f64 / 20000.0);
            let mut y = g.a + g.b * x;
            du = du.max((1.0 - x * y * y).abs());
            for _ in 0..k {
                y = y * (3.0 - x * y * y) / 2.0;
            }
            rel = rel.max((y * x.sqrt() - 1.0).abs());
        }
        (du, rel)
    }

    #[test]
    fn the_guess_equioscillates_and_converges_on_its_range() {
        for (lo, hi) in [(1.0, 4.0), (1.0, 65.0), (0.01, 50.0), (0.3, 0.31), (2e-5, 3e-3)] {
            let g = guess(lo, hi).unwrap();
            assert!(g.delta > 0.0 && g.delta < 1.0, "{lo}..{hi}: δ = {}", g.delta);
            let (du, _) = worst(lo, hi, 0);
            assert!((du - g.delta).abs() < 1e-6, "{lo}..{hi}: swept {du}, claimed {}", g.delta);
            let k = iterations(lo, hi, 1e-4).unwrap();
            let (_, rel) = worst(lo, hi, k);
            assert!(rel <= 1e-4 * 1.0001, "{lo}..{hi}: {k} steps give {rel}");
            if k > 0 {
                // One step fewer would not do: the count is the least.
                assert!(worst(lo, hi, k - 1).1 > 1e-4);
            }
        }
    }

    #[test]
    fn narrow_ranges_need_few_steps_and_wide_ones_are_refused() {
        assert_eq!(iterations(1.0, 4.0, 1e-3), Some(2));
        assert_eq!(iterations(1.0, 65.0, 1e-3), Some(5));
        assert_eq!(iterations(1e-6, 1e6, 1e-3), None);
        assert_eq!(iterations(0.0, 1.0, 1e-3), None);
        assert_eq!(iterations(2.0, 1.0, 1e-3), None);
    }
}
