//! Calibration: the value ranges a model's nonlinear sites see on sample inputs, measured in
//! plaintext, for the comparison-free inverse square roots of `--nonlinear smu`.
//!
//! A site is a node whose lowering needs a range: SMU-1 (its argument, for |x| ≤ m), a
//! reciprocal or square root (its argument), a layer norm (each row's variance plus eps), and,
//! for the record, GELU and softmax arguments. Ranges are keyed by node (name and layer), so calibrate
//! and compile must see the same graph: the same model, the same `--nonlinear` flags.

use crate::eval::{run_values, EvalError};
use crate::ir::{Graph, Node, Op, Tensor, Value};
use crate::prune::cuts::Cut;
use crate::prune::reference::{graph_at_len, run_watching, GraphAt};
use crate::prune::{PruneConfig, PruneError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Format version written into every calibration file.
pub const VERSION: u32 = 1;

/// One site's observed range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Site {
    /// Operator kind (`smu1`, `reciprocal`, `sqrt`, `layer_norm` (of var + eps), `gelu`,
    /// `softmax`).
    pub op: String,
    /// Smallest value seen.
    pub min: f64,
    /// Largest value seen.
    pub max: f64,
}

/// How far a rewrite moved the model's outputs on the calibration inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionChange {
    /// Largest absolute difference over all outputs and samples.
    pub max_abs: f64,
    /// Largest |output| of the original model.
    pub max_ref: f64,
}

/// A calibration file (`veil calibrate … -o FILE.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// [`VERSION`].
    pub version: u32,
    /// The model's name.
    pub model: String,
    /// The nonlinear mode the graph was rewritten for (`exact` or `smu α μ`).
    pub nonlinear: String,
    /// Number of sample inputs.
    pub samples: usize,
    /// Ranges by site key ([`crate::ir::Provenance::key`]).
    pub sites: BTreeMap<String, Site>,
    /// With a rewrite that changes the function: how much, against the original model (with
    /// `prune`, the original unpruned: the rewrite's and the pruning's change together).
    pub function_change: Option<FunctionChange>,
    /// Calibrated over the plaintext pruned run with these thresholds (a `--prune` file's
    /// JSON): a pruned row's sums and variances differ from the full-length run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<String>,
}

impl Calibration {
    /// The file's contents for model `g` (its name recorded).
    fn new(
        g: &Graph,
        nonlinear: &str,
        samples: usize,
        sites: BTreeMap<String, Site>,
        function_change: Option<FunctionChange>,
        prune: Option<String>,
    ) -> Calibration {
        let (version, model, nonlinear) = (VERSION, g.name.clone(), nonlinear.to_string());
        Calibration { version, model, nonlinear, samples, sites, function_change, prune }
    }

    /// The (min, max) of every site, as the nonlinear lowering takes them.
    pub fn ranges(&self) -> BTreeMap<String, (f64, f64)> {
        self.sites.iter().map(|(k, s)| (k.clone(), (s.min, s.max))).collect()
    }
}

/// The argument a site's range describes, and its kind.
fn site(op: &Op) -> Option<&'static str> {
    let measured = matches!(
        op,
        Op::Smu1 { .. }
            | Op::Reciprocal
            | Op::Sqrt
            | Op::LayerNorm { .. }
            | Op::Gelu { .. }
            | Op::Softmax { .. }
    );
    measured.then(|| op.name())
}

/// Row variances (over the last axis) plus `eps`.
fn row_variances(t: &Tensor, eps: f64) -> Vec<f64> {
    let v = t.to_f64_vec();
    let n = t.shape.last().copied().unwrap_or(1).max(1);
    v.chunks(n)
        .map(|r| {
            let mean = r.iter().sum::<f64>() / n as f64;
            r.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64 + eps
        })
        .collect()
}

/// A site's key (as the compiler looks it up), kind and, for a layer norm, its eps.
type SiteOf = (String, &'static str, Option<f64>);

/// The sites of `g` (with layers assigned, as the compiler keys them), by node.
fn sites_of(g: &Graph) -> HashMap<Node, SiteOf> {
    let mut named = g.clone();
    crate::compile::layers::assign_layers(&mut named);
    let mut of = HashMap::new();
    for &n in &named.order {
        let nd = &named.nodes[n];
        if let Some(kind) = site(&nd.op) {
            let eps = match nd.op {
                Op::LayerNorm { eps, .. } => Some(eps as f64),
                _ => None,
            };
            of.insert(n, (nd.prov.key(&nd.name), kind, eps));
        }
    }
    of
}

/// Widens site `key`'s range to cover its argument `t`.
fn record(sites: &mut BTreeMap<String, Site>, (key, kind, eps): &SiteOf, t: &Tensor) {
    let v = match eps {
        Some(e) => row_variances(t, *e),
        None => t.to_f64_vec(),
    };
    let (lo, hi) =
        v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let s = sites.entry(key.clone()).or_insert(Site {
        op: kind.to_string(),
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    });
    s.min = s.min.min(lo);
    s.max = s.max.max(hi);
}

/// Widens `change` by the difference of `got` from `want`.
fn compare(change: &mut FunctionChange, got: &[Tensor], want: &[Tensor]) {
    for (got, want) in got.iter().zip(want) {
        for (a, b) in got.to_f64_vec().iter().zip(want.to_f64_vec()) {
            change.max_abs = change.max_abs.max((a - b).abs());
            change.max_ref = change.max_ref.max(b.abs());
        }
    }
}

/// Measures every site of `g` over `samples` (inputs by name). `original`, when given, is the
/// model before a function-changing rewrite: its outputs are compared with `g`'s.
pub fn calibrate(
    g: &Graph,
    original: Option<&Graph>,
    samples: &[HashMap<String, Tensor>],
    nonlinear: &str,
) -> Result<Calibration, EvalError> {
    let of: Vec<(Value, SiteOf)> = {
        let mut by_node = sites_of(g);
        g.order.iter().filter_map(|n| Some((g.nodes[*n].args[0], by_node.remove(n)?))).collect()
    };
    let mut wanted: Vec<Value> = of.iter().map(|(v, _)| *v).collect();
    let outputs = g.outputs.len();
    wanted.extend(g.outputs.iter().copied());
    let mut sites: BTreeMap<String, Site> = BTreeMap::new();
    let mut change = original.map(|_| FunctionChange { max_abs: 0.0, max_ref: 0.0 });
    for inputs in samples {
        let vals = run_values(g, inputs, &wanted)?;
        let (args, outs) = vals.split_at(vals.len() - outputs);
        for ((_, site), t) in of.iter().zip(args) {
            record(&mut sites, site, t);
        }
        if let (Some(orig), Some(c)) = (original, change.as_mut()) {
            compare(c, outs, &crate::eval::run(orig, inputs)?);
        }
    }
    Ok(Calibration::new(g, nonlinear, samples.len(), sites, change, None))
}

/// [`calibrate`] over the plaintext pruned run of the model (`graph_at`, at length `n`, with
/// pruning points `cuts` and thresholds `cfg`): each site's range covers every length the
/// run reaches. `original`, when given, is the model before the rewrite at length `n`,
/// unpruned.
pub fn calibrate_pruned(
    graph_at: &GraphAt<'_>,
    n: usize,
    cuts: &[Cut],
    cfg: &PruneConfig,
    original: Option<&Graph>,
    samples: &[HashMap<String, Tensor>],
    nonlinear: &str,
) -> Result<Calibration, PruneError> {
    let g = graph_at_len(graph_at, n)?;
    let of = sites_of(&g);
    let mut sites: BTreeMap<String, Site> = BTreeMap::new();
    let mut change = original.map(|_| FunctionChange { max_abs: 0.0, max_ref: 0.0 });
    for inputs in samples {
        let mut watch = |_: &Graph, nd: Node, args: &[&Tensor]| {
            if let (Some(site), Some(t)) = (of.get(&nd), args.first()) {
                record(&mut sites, site, t);
            }
        };
        let run = run_watching(graph_at, n, cuts, cfg, inputs, &mut watch)?;
        if let (Some(orig), Some(c)) = (original, change.as_mut()) {
            compare(c, &run.outputs, &crate::eval::run(orig, inputs)?);
        }
    }
    Ok(Calibration::new(&g, nonlinear, samples.len(), sites, change, Some(cfg.to_json())))
}

/// Reads a calibration file written by `veil calibrate`.
pub fn read(path: &std::path::Path) -> Result<Calibration, crate::file_error::FileError> {
    use crate::file_error::FileError;
    let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
    let c: Calibration = serde_json::from_str(&text).map_err(|e| {
        FileError::format(path, format!("not a calibration file written by `veil calibrate`: {e}"))
    })?;
    if c.version != VERSION {
        return Err(FileError::format(
            path,
            format!("calibration format {} (this veil reads {VERSION})", c.version),
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, TensorType};

    #[test]
    fn ranges_cover_every_sample_and_layer_norm_sees_variances() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::new(DType::F32, vec![2, 4]));
        let s = g.add_const("s", Tensor::f32(vec![4], vec![1.0; 4]));
        let y = g.add_node("ln", Op::LayerNorm { axis: 1, eps: 0.5 }, &[x, s], "y").unwrap();
        let z = g.add_node("act", Op::Smu1 { alpha: 0.0, mu: 1.0 }, &[y], "z").unwrap();
        g.outputs.push(z);
        let sample = |v: Vec<f32>| HashMap::from([("x".to_string(), Tensor::f32(vec![2, 4], v))]);
        let c = calibrate(
            &g,
            None,
            &[
                sample(vec![1., 1., 1., 1., 0., 2., 0., 2.]),
                sample(vec![0., 4., 0., 4., 3., 3., 3., 3.]),
            ],
            "exact",
        )
        .unwrap();
        // Variances 0, 1, 4, 0 (+ eps 0.5).
        assert_eq!(c.sites["ln"], Site { op: "layer_norm".into(), min: 0.5, max: 4.5 });
        assert_eq!(c.sites["act"].op, "smu1");
        // Normalised rows ±2/√4.5 at most.
        assert!(c.sites["act"].min < -0.9 && c.sites["act"].max > 0.9);
        assert!(c.sites["act"].max < 0.95);
        assert_eq!(c.samples, 2);
        assert!(c.function_change.is_none());
    }

    #[test]
    fn a_pruned_calibration_covers_the_shorter_rows_after_the_point() {
        // Two SMU attentions; pruning after the first leaves the second summing fewer keys,
        // whose reciprocal then sees smaller sums than any full-length run.
        use crate::prune::cuts::{find, tests::attention};
        let n = 8;
        let graph_at = |len: usize| Ok(attention(len, true));
        let cuts = find(&attention(n, true), &attention(n - 1, true), n, Some(&[0])).unwrap();
        let cfg = PruneConfig { theta: vec![Some(0.12), None], protect: 1 };
        let x: Vec<f32> = (0..n * 4).map(|i| ((i * 37 % 23) as f32 - 11.0) / 8.0).collect();
        let sample = HashMap::from([("x".to_string(), Tensor::f32(vec![n, 4], x))]);
        let samples = [sample];
        let full = calibrate(&attention(n, true), None, &samples, "smu 0 1").unwrap();
        let pruned =
            calibrate_pruned(&graph_at, n, &cuts, &cfg, None, &samples, "smu 0 1").unwrap();
        let run = crate::prune::reference::run(&graph_at, n, &cuts, &cfg, &samples[0]).unwrap();
        assert!(run.lengths[0] < n, "the point prunes: {:?}", run.lengths);
        let key = "attn2::softmax/recip";
        let (f, p) = (&full.sites[key], &pruned.sites[key]);
        assert!(p.min < f.min, "pruned {p:?} against full {f:?}");
        // Before the point the two runs see the same values.
        assert_eq!(full.sites["attn::softmax/recip"], pruned.sites["attn::softmax/recip"]);
        assert_eq!(pruned.prune.as_deref(), Some(cfg.to_json().as_str()));
    }
}
