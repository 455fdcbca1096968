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

use crate::ir::shape::ShapeError;
use crate::ir::{Data, Tensor, TensorType};
use serde::{Deserialize, Serialize};

/// Why token pruning could not find, place, run or compile its points: names the value, node,
/// layer or length concerned.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The model could not be loaded at a sequence length.
    #[error("{error}")]
    Load {
        /// The sequence length.
        len: usize,
        /// Why (the front end's or recipe's error).
        error: reference::GraphError,
    },
    /// The thresholds file is not JSON of the expected form.
    #[error("{error} (expected {{\"theta\": [0.006, null, ...], \"protect\": 1}})")]
    Json {
        /// The parser's error.
        error: serde_json::Error,
    },
    /// A threshold outside [0, 1].
    #[error("theta[{layer}] = {theta}: a mean attention lies in [0, 1]")]
    Theta {
        /// Its index.
        layer: usize,
        /// Its value.
        theta: f64,
    },
    /// Every threshold is null.
    #[error("no threshold: every entry of `theta` is null")]
    NoThreshold,
    /// `protect` is 0.
    #[error("`protect` must be at least 1, so that a pruned sequence is never empty")]
    Protect,
    /// A pruning point at a layer the thresholds do not cover.
    #[error("a cut without a threshold (attention layer {layer})")]
    CutWithoutThreshold {
        /// The layer.
        layer: usize,
    },
    /// Calibration without samples.
    #[error("no sample inputs")]
    NoSamples,
    /// A fraction of tokens to keep outside [0, 1].
    #[error("keep fraction {0} outside [0, 1]")]
    KeepFraction(f64),
    /// The model is too short to prune.
    #[error("pruning needs at least 8 tokens, the model has {0}")]
    TooShort(usize),
    /// A value's rank depends on the sequence length.
    #[error("`{value}` changes rank with the sequence length")]
    RankChanges {
        /// The value.
        value: String,
    },
    /// The node count depends on the sequence length.
    #[error(
        "the model has {a} nodes at one length and {b} at another: its structure depends on \
         the sequence length"
    )]
    NodeCount {
        /// Nodes at one length.
        a: usize,
        /// Nodes at the other.
        b: usize,
    },
    /// A node differs between sequence lengths.
    #[error("node `{node}` differs between sequence lengths")]
    NodeDiffers {
        /// The node.
        node: String,
    },
    /// No shape follows the sequence length.
    #[error(
        "no shape changes between {n} and {} tokens: the model's sequence length is fixed \
         (an ONNX export with a fixed sequence axis? export it with a dynamic one)",
        n - 1
    )]
    FixedLength {
        /// The length.
        n: usize,
    },
    /// A model output carries the token axis.
    #[error(
        "output `{output}` has a token axis: pruned tokens would be missing from it (prune a \
         model that outputs a pooled or CLS row)"
    )]
    OutputTokenAxis {
        /// The output.
        output: String,
    },
    /// No attention softmax.
    #[error(
        "the model has no attention softmax (over keys of a token × token score), nor its \
         `--nonlinear smu` form"
    )]
    NoAttention,
    /// A threshold for an attention layer the model does not have.
    #[error(
        "threshold for attention layer {layer}, but the model has {count} attention softmaxes"
    )]
    NoSuchLayer {
        /// The layer.
        layer: usize,
        /// How many the model has.
        count: usize,
    },
    /// No place for the point after a layer.
    #[error("no pruning point after attention layer {layer}: {why}")]
    NoPoint {
        /// The layer.
        layer: usize,
        /// Why not (names the value in the way).
        why: String,
    },
    /// A pruning node did not fit its arguments (a bug).
    #[error("node `{node}`: {error}")]
    Shape {
        /// The node.
        node: String,
        /// The shape error.
        error: ShapeError,
    },
    /// The node a point is anchored at left the order (a bug).
    #[error("anchor vanished (attention layer {layer})")]
    AnchorVanished {
        /// The layer.
        layer: usize,
    },
    /// Evaluation of the plaintext pruned run failed.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// A value the pruned run needs is not computed.
    #[error("`{0}` is not available")]
    Unavailable(String),
    /// A point in layers the client runs in plaintext.
    #[error(
        "the pruning point `{node}` falls in layers the client runs in the clear (their \
         weights are public): give those layers no threshold (null)"
    )]
    ClientSide {
        /// The `prune_keep` node.
        node: String,
    },
    /// The programs at the probe lengths differ by more than sizes.
    #[error("the program is not the same at every sequence length: {0}")]
    Template(String),
    /// The template does not instantiate at a length.
    #[error("at {len} tokens: {error}")]
    Instantiate {
        /// The length.
        len: u32,
        /// The instantiation's error.
        error: String,
    },
    /// The template's instance at a length is invalid.
    #[error("the program at {len} tokens is invalid: {error}")]
    Instance {
        /// The length.
        len: u32,
        /// The validator's error.
        error: veil_isa::validate::ValidateError,
    },
}

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
    /// The thresholds as compact JSON (what a program's metadata and a calibration record).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the config serialises")
    }

    /// Reads and checks a thresholds file.
    pub fn from_json(text: &str) -> Result<PruneConfig, PruneError> {
        let c: PruneConfig =
            serde_json::from_str(text).map_err(|error| PruneError::Json { error })?;
        for (layer, t) in c.theta.iter().enumerate() {
            if let Some(&theta) = t.as_ref() {
                if !(0.0..=1.0).contains(&theta) {
                    return Err(PruneError::Theta { layer, theta });
                }
            }
        }
        if c.theta.iter().all(|t| t.is_none()) {
            return Err(PruneError::NoThreshold);
        }
        if c.protect == 0 {
            return Err(PruneError::Protect);
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
