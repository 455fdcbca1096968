//! Thresholds from sample inputs (`veil calibrate --prune-keep F`): at each pruning point, in
//! model order, the threshold that keeps the fraction `F` of the non-protected tokens reaching
//! it, pooled over the samples (within 2% of the count, where neighbouring scores are furthest
//! apart), halfway between the last kept and the first dropped score.

use super::cuts::Cut;
use super::reference::{GraphAt, Stepper};
use super::{quantize, PruneConfig, PruneError};
use crate::ir::Tensor;
use std::collections::HashMap;

/// Calibrated thresholds and what they do on the samples.
pub struct Calibrated {
    /// The thresholds (null where the fraction kept is 1: no pruning point there).
    pub config: PruneConfig,
    /// The length the samples start at.
    pub n: usize,
    /// Per sample, the token count after each pruning point of its pruned run.
    pub lengths: Vec<Vec<usize>>,
    /// Per pruning point (model order): its layer, and the threshold's distance to the nearest
    /// pooled score relative to that score (how far a two-party score may stray from the
    /// plaintext one before a token crosses).
    pub margins: Vec<(usize, f64)>,
}

/// The relative margin a threshold keeps from every calibration score when the scores allow it:
/// the two-party scores carry the softmax's fixed-point error (a few units of 2^-16 per
/// probability), and a token closer than this to the threshold may land on the other side.
/// At 128 tokens the calibrated thresholds kept about 3e-4 and every two-party run kept the
/// plaintext run's counts; at 512 tokens one sat 5e-5 from a score and a run did not.
pub const MIN_MARGIN: f64 = 1e-4;

/// Thresholds for `cuts` keeping `keep[i]` (or the last entry) of the tokens at point `i`; a
/// fraction of 1 puts no point there.
pub fn thresholds(
    graph_at: &GraphAt<'_>,
    n: usize,
    cuts: &[Cut],
    keep: &[f64],
    protect: usize,
    samples: &[HashMap<String, Tensor>],
) -> Result<Calibrated, PruneError> {
    if samples.is_empty() {
        return Err(PruneError::NoSamples);
    }
    if let Some(&f) = keep.iter().find(|f| !(0.0..=1.0).contains(*f)) {
        return Err(PruneError::KeepFraction(f));
    }
    let mut steppers = samples
        .iter()
        .map(|s| Stepper::new(graph_at, n, cuts, s))
        .collect::<Result<Vec<_>, _>>()?;
    let layers = cuts.iter().map(|c| c.layer + 1).max().unwrap_or(0);
    let mut theta = vec![None; layers];
    let mut margins = Vec::new();
    for (i, c) in cuts.iter().enumerate() {
        let f = keep.get(i).or(keep.last()).copied().unwrap_or(1.0);
        if f >= 1.0 {
            continue;
        }
        let mut pool = Vec::new();
        for s in steppers.iter_mut() {
            let sc = s.scores_at(c)?;
            pool.extend_from_slice(&sc[protect.min(sc.len())..]);
        }
        pool.sort_by(|a, b| b.total_cmp(a));
        let t = split(&pool, f);
        margins.push((c.layer, margin(&pool, t)));
        theta[c.layer] = Some(t);
        for s in steppers.iter_mut() {
            s.apply(c, t, protect)?;
        }
    }
    let lengths = steppers.into_iter().map(|s| s.lengths).collect();
    Ok(Calibrated { config: PruneConfig { theta, protect }, n, lengths, margins })
}

/// The distance from `t` to the nearest score of `pool`, relative to that score.
fn margin(pool: &[f64], t: f64) -> f64 {
    pool.iter().map(|&p| (p - t).abs() / p.abs().max(1e-12)).fold(f64::INFINITY, f64::min)
}

/// The threshold keeping about the fraction `f` of the scores `pool` (sorted, largest first):
/// within 2% of the target count, the split where neighbouring scores are furthest apart
/// (relative gap), halfway between them, so a fixed-point error cannot move a token across.
/// When no split there keeps [`MIN_MARGIN`] from both neighbours (nearly equal scores: 512
/// tokens of random weights), the window widens to 5, 10 and 20% of the count, and the
/// nearest split that does is taken; with none at all, the widest one within 20%.
fn split(pool: &[f64], f: f64) -> f64 {
    let kc = ((f * pool.len() as f64).round() as usize).min(pool.len());
    match (kc, pool.len()) {
        (_, 0) => 0.0,
        (0, _) => quantize((pool[0] * 1.5 + 1e-6).min(1.0)),
        (k, len) if k == len => quantize(pool[len - 1] * 0.5),
        (k, len) => {
            let gap = |i: usize| (pool[i - 1] - pool[i]) / pool[i - 1].max(1e-12);
            // Relative half-gap of the split before index i: the margin its midpoint keeps.
            let half = |i: usize| (pool[i - 1] - pool[i]) / (pool[i - 1] + pool[i]).max(1e-12);
            // Splits within `slack` places of the target count.
            let window = |slack: usize| k.saturating_sub(slack).max(1)..=(k + slack).min(len - 1);
            let widest = |slack: usize| {
                window(slack)
                    .max_by(|&a, &b| {
                        gap(a).total_cmp(&gap(b)).then(b.abs_diff(k).cmp(&a.abs_diff(k)))
                    })
                    .unwrap_or(k)
            };
            let first = widest((len / 50).max(1));
            let best = if half(first) >= MIN_MARGIN {
                first
            } else {
                [20, 10, 5]
                    .iter()
                    .find_map(|&d| {
                        window((len / d).max(1))
                            .filter(|&i| half(i) >= MIN_MARGIN)
                            .min_by_key(|&i| i.abs_diff(k))
                    })
                    .unwrap_or_else(|| widest((len / 5).max(1)))
            };
            quantize((pool[best - 1] + pool[best]) / 2.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_keeps_the_fraction_at_the_widest_nearby_gap() {
        let pool = [0.5, 0.4, 0.39, 0.2, 0.19, 0.18];
        // Half is 3; within one of it the widest relative gap is between 0.39 and 0.2.
        let t = split(&pool, 0.5);
        assert!(0.2 < t && t < 0.39, "{t}");
        // Rounding up to every score, or down to none, or a single score.
        assert!(split(&pool, 0.99) <= 0.18);
        assert!(split(&pool, 0.0) > 0.5);
        assert!(split(&[0.3], 0.5) <= 0.3);
        assert_eq!(split(&[], 0.5), 0.0);
    }

    #[test]
    fn nearly_equal_scores_move_the_split_to_the_nearest_gap_with_a_margin() {
        // 100 scores 1e-7 apart around 0.002, except one gap of 1e-5 eight places from the
        // target count (50): within 2% (one place either side) no split keeps 1e-4.
        let mut pool: Vec<f64> = (0..100).map(|i| 0.003 - i as f64 * 1e-7).collect();
        for p in pool.iter_mut().skip(58) {
            *p -= 1e-5;
        }
        let t = split(&pool, 0.5);
        assert!(pool[57] > t && t > pool[58], "{t}: between 57 and 58");
        assert!(super::margin(&pool, t) >= super::MIN_MARGIN * 0.9);
        // Negative control: without the gap, nothing keeps the margin and the split stays
        // within 20% of the count.
        let flat: Vec<f64> = (0..100).map(|i| 0.003 - i as f64 * 1e-7).collect();
        let t = split(&flat, 0.5);
        let kept = flat.iter().filter(|&&p| p > t).count();
        assert!((30..=70).contains(&kept), "{kept}");
    }
}
