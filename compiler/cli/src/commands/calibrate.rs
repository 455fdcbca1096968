//! `veil calibrate`: the value ranges of a model's nonlinear sites on sample inputs, for the
//! comparison-free inverse square roots of `veil compile --nonlinear smu --calibration FILE`.

use crate::model::{random_reals, samples_in, ModelArgs};
use crate::nonlinear::{Nonlinear, NonlinearArgs};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use veil_compiler::compile::calibrate::{calibrate, Calibration};
use veil_compiler::ir::{Graph, Tensor};
use veil_compiler::recipe::Recipe;

/// Arguments of `veil calibrate`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx or .veil).
    pub file: PathBuf,
    /// Sample inputs: a directory of `<input name>.npy` files (one sample), or of
    /// subdirectories each holding one sample's files.
    #[arg(long, value_name = "DIR", required_unless_present = "random_inputs")]
    pub inputs: Option<PathBuf>,
    /// Draw the samples at random instead: reals N(0, 1), token ids uniform over the table they
    /// index, attention masks all ones; sample k from seed SEED + k (sample 0 is what
    /// `veil run --random-inputs SEED` feeds).
    #[arg(long, value_name = "SEED", conflicts_with = "inputs")]
    pub random_inputs: Option<u64>,
    /// Number of random samples.
    #[arg(long, default_value_t = 4, requires = "random_inputs")]
    pub samples: usize,
    /// Where to write the calibration (JSON).
    #[arg(short, long, value_name = "FILE.json")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub nonlinear: NonlinearArgs,
    /// Write token-pruning thresholds (for `veil compile --prune`) instead of value ranges:
    /// after each attention layer keep this fraction of the tokens that reach it (one value for
    /// every layer, or one per layer separated by commas; 1 = no pruning there), chosen in
    /// plaintext on the samples.
    #[arg(long, value_name = "F[,F...]", value_delimiter = ',')]
    pub prune_keep: Vec<f64>,
    /// With --prune-keep: leading tokens never pruned (the CLS token of a classifier).
    #[arg(long, default_value_t = 1, requires = "prune_keep")]
    pub protect: usize,
    /// Measure the ranges over the plaintext run pruned with these thresholds (a file from
    /// --prune-keep): what `veil compile --nonlinear smu --prune THR.json` needs, since a
    /// pruned row sums fewer terms than a full one.
    #[arg(long, value_name = "THR.json", conflicts_with = "prune_keep")]
    pub prune: Option<PathBuf>,
}

/// Random real samples (as `veil run --random-inputs`): sample k from seed + k.
pub fn random_samples(g: &Graph, seed: u64, n: usize) -> Result<Vec<HashMap<String, Tensor>>> {
    if n == 0 {
        bail!("--samples must be at least 1");
    }
    (0..n as u64).map(|k| random_reals(g, seed.wrapping_add(k), "--inputs DIR")).collect()
}

/// Calibrates and writes the file.
pub fn run(a: Args) -> Result<()> {
    let samples = |g: &Graph| match (&a.inputs, a.random_inputs) {
        (Some(dir), _) => samples_in(g, dir),
        (None, Some(seed)) => random_samples(g, seed, a.samples),
        (None, None) => bail!("give sample inputs with --inputs DIR or --random-inputs SEED"),
    };
    let t0 = std::time::Instant::now();
    if !a.prune_keep.is_empty() {
        return prune_thresholds(&a, samples, t0);
    }
    let c = match &a.prune {
        Some(thr) => {
            calibrate_pruned_file(&a.file, &a.model, &a.nonlinear, thr, samples, &a.output)?
        }
        None => calibrate_file(&a.file, &a.model, &a.nonlinear, samples, &a.output)?,
    };
    eprintln!("calibrated on {} sample(s) in {:.2} s", c.samples, t0.elapsed().as_secs_f64());
    print!("{}", describe(&c));
    println!("wrote {}", a.output.display());
    Ok(())
}

/// `--prune-keep`: thresholds per attention layer, written as a `--prune` file.
fn prune_thresholds(
    a: &Args,
    samples: impl FnOnce(&Graph) -> Result<Vec<HashMap<String, Tensor>>>,
    t0: std::time::Instant,
) -> Result<()> {
    let recipe = plain_recipe(&a.file, &a.model, &a.nonlinear)?;
    let c = crate::prune::calibrate(&recipe, &a.prune_keep, a.protect, samples)?;
    write_json(&a.output, &c.config)?;
    eprintln!("calibrated on {} sample(s) in {:.2} s", c.lengths.len(), t0.elapsed().as_secs_f64());
    for (i, l) in c.lengths.iter().enumerate() {
        println!(
            "sample {i}: tokens {} → {}",
            c.n,
            l.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" → ")
        );
    }
    for &(layer, m) in &c.margins {
        let warn = if m < veil_compiler::prune::calibrate::MIN_MARGIN {
            " — closer than the two-party scores' error may allow: a two-party run can keep \
             other tokens than the plaintext one here (more samples spread the scores)"
        } else {
            ""
        };
        println!("point after layer {layer}: the nearest score is {m:.1e} of itself away{warn}");
    }
    println!("wrote {}", a.output.display());
    Ok(())
}

/// Calibrates `file` (rewritten for `na`) on the samples `samples` draws for its graph, and
/// writes the file to `out`.
pub fn calibrate_file(
    file: &Path,
    margs: &ModelArgs,
    na: &NonlinearArgs,
    samples: impl FnOnce(&Graph) -> Result<Vec<HashMap<String, Tensor>>>,
    out: &Path,
) -> Result<Calibration> {
    let recipe = plain_recipe(file, margs, na)?;
    let original = recipe.load()?.graph;
    let mut g = original.clone();
    let changed = recipe.rewrite(&mut g)?;
    let samples = samples(&g)?;
    let compare = (na.nonlinear == Nonlinear::Smu && changed > 0).then_some(&original);
    let c = calibrate(&g, compare, &samples, &recipe.nonlinear.label())
        .with_context(|| format!("calibrating {}", file.display()))?;
    write_json(out, &c)?;
    Ok(c)
}

/// `--prune THR.json`: the ranges of `file` (rewritten for `na`) over its plaintext run
/// pruned by the thresholds in `thr`, on the samples `samples` draws; written to `out`.
pub fn calibrate_pruned_file(
    file: &Path,
    margs: &ModelArgs,
    na: &NonlinearArgs,
    thr: &Path,
    samples: impl FnOnce(&Graph) -> Result<Vec<HashMap<String, Tensor>>>,
    out: &Path,
) -> Result<Calibration> {
    let cfg = crate::prune::read_config(thr)?;
    let recipe = Recipe { prune: Some(cfg.clone()), ..plain_recipe(file, margs, na)? };
    let lengths = recipe.lengths();
    let original = lengths.load()?;
    let n = crate::prune::max_len(file, &original)?;
    let mut g = original.graph.clone();
    let changed = recipe.rewrite(&mut g)?;
    let samples = samples(&g)?;
    lengths.keep(n, g);
    let graph_at = lengths.graph_at();
    let cuts = veil_compiler::compile::pruned::cuts(&graph_at, n, &cfg)
        .with_context(|| format!("{}: the pruning points of {}", file.display(), thr.display()))?;
    let compare = (na.nonlinear == Nonlinear::Smu && changed > 0).then_some(&original.graph);
    let c = veil_compiler::compile::calibrate::calibrate_pruned(
        &graph_at,
        n,
        &cuts,
        &cfg,
        compare,
        &samples,
        &recipe.nonlinear.label(),
    )
    .with_context(|| format!("calibrating {} pruned by {}", file.display(), thr.display()))?;
    write_json(out, &c)?;
    Ok(c)
}

/// Calibrates `file` on `n` random samples from `seed` and writes the file (for `veil bench`).
pub fn calibrate_random(
    file: &Path,
    margs: &ModelArgs,
    na: &NonlinearArgs,
    seed: u64,
    n: usize,
    out: &Path,
) -> Result<Calibration> {
    calibrate_file(file, margs, na, |g| random_samples(g, seed, n), out)
}

/// Writes through a temporary file, so a failed write leaves nothing half-written.
pub fn write_json(path: &Path, c: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(c)?;
    let tmp = path.with_extension("json.partial");
    let written =
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display())).and_then(
            |_| std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display())),
        );
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The recipe of a plain forward pass of `file` rewritten as `na` says (what calibration
/// measures).
pub fn plain_recipe(file: &Path, margs: &ModelArgs, na: &NonlinearArgs) -> Result<Recipe> {
    Ok(Recipe { nonlinear: na.recipe(None, 1.5), ..Recipe::new(margs.spec(file)?) })
}

/// Per-kind summary lines: how many sites, the widest range.
pub fn describe(c: &Calibration) -> String {
    let mut by: std::collections::BTreeMap<&str, (usize, f64, f64)> = Default::default();
    for s in c.sites.values() {
        let e = by.entry(&s.op).or_insert((0, f64::INFINITY, f64::NEG_INFINITY));
        e.0 += 1;
        e.1 = e.1.min(s.min);
        e.2 = e.2.max(s.max);
    }
    let mut out = format!("model `{}`, nonlinear `{}`:\n", c.model, c.nonlinear);
    for (op, (n, lo, hi)) in by {
        let what = if op == "layer_norm" { "row variance + eps" } else { "argument" };
        out.push_str(&format!("  {n} × {op}: {what} in [{lo:.4}, {hi:.4}]\n"));
    }
    if c.prune.is_some() {
        out.push_str("  over the plaintext pruned run (every length it reaches)\n");
    }
    if let Some(f) = &c.function_change {
        let what = if c.prune.is_some() {
            "the rewrite and the pruning change"
        } else {
            "the rewrite changes"
        };
        out.push_str(&format!(
            "  {what} the outputs by up to {:.3e} ({:.2e} of max |y| = {:.3})\n",
            f.max_abs,
            f.max_abs / f.max_ref.max(1e-30),
            f.max_ref
        ));
    }
    out
}
