//! Encrypted token pruning (CipherPrune): after a layer's attention, the tokens that receive
//! little attention are dropped and the rest of the model runs on fewer tokens.
//!
//! - [`PruneConfig`]: the thresholds file (`--prune FILE.json`).
//! - [`cuts`]: where each pruning point goes and which values cross it, found by comparing the
//!   model imported at two sequence lengths.
//! - [`insert`]: the `prune_keep` / `compact` / `shrink` nodes at each point.
//! - [`reference`]: the plaintext pruned run (the model at each revealed length).
//! - [`calibrate`]: thresholds that keep a target fraction of tokens on sample inputs.
//!
//! The rule: token `j` stays when its mean attention received, `m_j = S_j / T` with `S_j` the
//! attention probability mass on key `j` summed over heads and query rows and `T = Σ S`, is at
//! least θ (uniform attention gives `m_j = 1/n`), or when it is one of the first `protect`
//! tokens. Only the number of kept tokens is revealed.

pub mod calibrate;
pub mod cuts;
pub mod insert;
pub mod reference;

use crate::ir::{Data, Tensor, TensorType};
use serde::{Deserialize, Serialize};

/// Fractional bits of a threshold as the program compares it (see the VM builder).
pub const THETA_BITS: u8 = veil_isa::builder::THETA_BITS;

/// The thresholds file.
///
/// ```json
/// { "theta": [0.0059, 0.0061, null, 0.0072], "protect": 1 }
/// ```
/// `theta[i]` is the threshold on the mean attention received after the `i`-th attention
/// layer (null or missing: no pruning there); `protect` leading tokens (the CLS token of a
/// classifier) are never pruned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneConfig {
    /// One threshold per attention layer, in model order.
    pub theta: Vec<Option<f64>>,
    /// Leading tokens that always stay.
    #[serde(default = "one")]
    pub protect: usize,
}

fn one() -> usize {
    1
}

impl PruneConfig {
    /// Reads and checks a thresholds file.
    pub fn from_json(text: &str) -> Result<PruneConfig, String> {
        let c: PruneConfig = serde_json::from_str(text).map_err(|e| {
            format!("{e} (expected {{\"theta\": [0.006, null, ...], \"protect\": 1}})")
        })?;
        for (i, t) in c.theta.iter().enumerate() {
            if let Some(t) = t {
                if !(0.0..=1.0).contains(t) {
                    return Err(format!("theta[{i}] = {t}: a mean attention lies in [0, 1]"));
                }
            }
        }
        if c.theta.iter().all(|t| t.is_none()) {
            return Err("no threshold: every entry of `theta` is null".into());
        }
        if c.protect == 0 {
            return Err(
                "`protect` must be at least 1, so that a pruned sequence is never empty".into()
            );
        }
        Ok(c)
    }

    /// The threshold of layer `i` as the program compares it (on the 2^-24 grid).
    pub fn theta(&self, i: usize) -> Option<f64> {
        self.theta.get(i).copied().flatten().map(quantize)
    }
}

/// θ rounded to the grid the program compares on.
pub fn quantize(theta: f64) -> f64 {
    let s = (1u64 << THETA_BITS) as f64;
    (theta * s).round() / s
}

/// Mean attention received per key (`axis` of `probs`): `S_j / T`.
pub fn scores(probs: &[f64], shape: &[usize], axis: usize) -> Vec<f64> {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut s = vec![0.0; n];
    for (i, &p) in probs.iter().enumerate() {
        s[(i / inner) % n] += p;
    }
    let t: f64 = s.iter().sum();
    s.iter().map(|&x| if t > 0.0 { x / t } else { 0.0 }).collect()
}

/// Which keys stay: mean attention ≥ θ, or among the first `protect`.
pub fn rule(probs: &[f64], shape: &[usize], axis: usize, theta: f64, protect: usize) -> Vec<bool> {
    keep_of(&scores(probs, shape, axis), theta, protect)
}

/// [`rule`] on the mean attentions `scores`.
pub fn keep_of(scores: &[f64], theta: f64, protect: usize) -> Vec<bool> {
    scores.iter().enumerate().map(|(j, &m)| j < protect || m >= theta).collect()
}

/// `x` with the slices along `axis` whose `keep` is set moved to the front in order; the rest
/// zero (`pad`, same shape) or dropped. Exact for every element type.
pub fn compact(x: &Tensor, axis: usize, keep: &[bool], pad: bool) -> Tensor {
    let n = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let kept: Vec<usize> = (0..n).filter(|&j| keep[j]).collect();
    let rows = if pad { n } else { kept.len() };
    fn moved<T: Copy + Default>(
        src: &[T],
        g: (usize, usize, usize, usize),
        kept: &[usize],
    ) -> Vec<T> {
        let (outer, n, rows, inner) = g;
        let mut out = vec![T::default(); outer * rows * inner];
        for o in 0..outer {
            for (t, &j) in kept.iter().enumerate() {
                let (d, s) = ((o * rows + t) * inner, (o * n + j) * inner);
                out[d..d + inner].copy_from_slice(&src[s..s + inner]);
            }
        }
        out
    }
    let g = (outer, n, rows, inner);
    let data = match &x.data {
        Data::F32(v) => Data::F32(moved(v, g, &kept)),
        Data::F64(v) => Data::F64(moved(v, g, &kept)),
        Data::I64(v) => Data::I64(moved(v, g, &kept)),
        Data::Bool(v) => Data::Bool(moved(v, g, &kept)),
    };
    let mut shape = x.shape.clone();
    shape[axis] = rows;
    Tensor { dtype: x.dtype, shape, data }
}

/// The type of `t` with `axis` resized to `n`.
pub fn resized(t: &TensorType, axis: usize, n: usize) -> TensorType {
    let mut shape = t.shape.clone();
    shape[axis] = n;
    TensorType::new(t.dtype, shape)
}
