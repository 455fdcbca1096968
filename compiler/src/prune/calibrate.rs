//! Thresholds from sample inputs (`veil calibrate --prune-keep F`): at each pruning point, in
//! model order, the threshold that keeps the fraction `F` of the non-protected tokens reaching
//! it, pooled over the samples (within 2% of the count, where neighbouring scores are furthest
//! apart), halfway between the last kept and the first dropped score.

use super::cuts::Cut;
use super::reference::{GraphAt, Stepper};
use super::{quantize, PruneConfig};
use crate::ir::Tensor;
use std::collections::HashMap;

/// Thresholds for `cuts` keeping `keep[i]` (or the last entry) of the tokens at point `i`.
pub fn thresholds(
    graph_at: &GraphAt<'_>,
    n: usize,
    cuts: &[Cut],
    keep: &[f64],
    protect: usize,
    samples: &[HashMap<String, Tensor>],
) -> Result<PruneConfig, String> {
    if samples.is_empty() {
        return Err("no sample inputs".into());
    }
    if let Some(f) = keep.iter().find(|f| !(0.0..=1.0).contains(*f)) {
        return Err(format!("keep fraction {f} outside [0, 1]"));
    }
    let mut steppers =
        samples.iter().map(|s| Stepper::new(graph_at, n, s)).collect::<Result<Vec<_>, _>>()?;
    let layers = cuts.iter().map(|c| c.layer + 1).max().unwrap_or(0);
    let mut theta = vec![None; layers];
    for (i, c) in cuts.iter().enumerate() {
        let f = keep.get(i).or(keep.last()).copied().unwrap_or(1.0);
        let mut pool = Vec::new();
        for s in steppers.iter_mut() {
            let sc = s.scores_at(c)?;
            pool.extend_from_slice(&sc[protect.min(sc.len())..]);
        }
        pool.sort_by(|a, b| b.total_cmp(a));
        let kc = ((f * pool.len() as f64).round() as usize).min(pool.len());
        let t = match (kc, pool.len()) {
            (_, 0) => 0.0,
            (0, _) => quantize((pool[0] * 1.5 + 1e-6).min(1.0)),
            (k, len) if k == len => quantize(pool[len - 1] * 0.5),
            (k, len) => {
                // Within 2% of the target count, split where neighbouring scores are furthest
                // apart: the two-party run's fixed-point error cannot move a token across.
                let slack = (len / 50).max(1);
                let lo = k.saturating_sub(slack).max(1);
                let hi = (k + slack).min(len - 1);
                let best = (lo..=hi)
                    .max_by(|&a, &b| {
                        let gap = |i: usize| (pool[i - 1] - pool[i]) / pool[i - 1].max(1e-12);
                        gap(a).total_cmp(&gap(b)).then(b.abs_diff(k).cmp(&a.abs_diff(k)))
                    })
                    .unwrap_or(k);
                quantize((pool[best - 1] + pool[best]) / 2.0)
            }
        };
        theta[c.layer] = Some(t);
        for s in steppers.iter_mut() {
            s.apply(c, t, protect)?;
        }
    }
    Ok(PruneConfig { theta, protect })
}
